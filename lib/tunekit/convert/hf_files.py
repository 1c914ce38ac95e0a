"""The HF side of a conversion: read weights tensor by tensor, write config, generation config and
tokenizer (with the kit's chat template, so `apply_chat_template` reproduces the training prompt;
portable to transformers 4.47 / 4.57 via `tunekit.model.portable`), and the reference HF model
that a NeMo dir's `tokenizer.type` names (`write_reference_model`).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

import torch

from .. import atomic
from ..errors import UserError
from . import safetensors_io as st
from .configs import read_json
from .layout import HF_IGNORED_SUFFIXES, LlamaSpec, hf_expected

# Files that make up an HF tokenizer (copied verbatim, so nothing is re-serialised differently).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "vocab.json", "merges.txt")


class HFWeights:
    """The weights of an HF model dir (safetensors, sharded or not), read one tensor at a time."""

    def __init__(self, model_dir: Path):
        self.dir = model_dir
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise UserError(f"{index}: no weight_map (the index file is damaged; copy it again)")
            files = sorted(set(weight_map.values()))
        elif (model_dir / "model.safetensors").exists():
            weight_map, files = None, ["model.safetensors"]
        elif list(model_dir.glob("*.bin")):
            raise UserError(f"{model_dir}: only PyTorch .bin weights found (save the model with "
                            "safetensors: `model.save_pretrained(dir, safe_serialization=True)`)")
        else:
            raise UserError(f"{model_dir}: no model.safetensors or model.safetensors.index.json "
                            "(is this an HF model directory?)")
        self.entries: dict[str, st.Entry] = {}
        for name in files:
            path = model_dir / name
            if not path.exists():
                raise UserError(f"{path}: missing (listed in model.safetensors.index.json; copy it again)")
            for key, entry in st.read_header(path).items():
                if key in self.entries:
                    raise UserError(f"{path}: tensor {key!r} also in {self.entries[key].path.name}")
                self.entries[key] = entry
        if weight_map is not None:
            for key, fname in weight_map.items():
                if key not in self.entries:
                    raise UserError(f"{model_dir / fname}: tensor {key!r} listed in the index is missing")
        self.ignored = sorted(k for k in self.entries if k.endswith(HF_IGNORED_SUFFIXES))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the embedding (the model's storage dtype)."""
        e = self.entries.get("model.embed_tokens.weight")
        return e.dtype if e else next(iter(self.entries.values())).dtype

    def check(self, spec: LlamaSpec) -> None:
        """Every expected tensor present with its shape, nothing unknown; else UserError naming it."""
        want = hf_expected(spec)
        have = {k: e for k, e in self.entries.items() if k not in self.ignored}
        missing = [k for k in want if k not in have]
        if missing:
            raise UserError(f"{self.dir}: tensor {missing[0]!r} is missing"
                            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} "
                            "(the weights do not match config.json; copy the model again)")
        unknown = sorted(k for k in have if k not in want)
        if unknown:
            raise UserError(f"{have[unknown[0]].path}: unknown tensor {unknown[0]!r}"
                            f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''} "
                            "(not part of a LLaMA model with this config; nothing is dropped silently)")
        for k, shape in want.items():
            if have[k].shape != shape:
                raise UserError(f"{have[k].path}: tensor {k!r} has shape {list(have[k].shape)}, "
                                f"config.json implies {list(shape)} (config and weights disagree)")
        floats = {e.dtype for e in have.values()}
        if not floats <= {torch.float32, torch.bfloat16, torch.float16}:
            raise UserError(f"{self.dir}: weights must be floating point (found {sorted(map(str, floats))})")

    def get(self, name: str) -> torch.Tensor:
        """One tensor, as a view of its file's bytes (`safetensors_io.map_tensor`: no copy)."""
        return st.map_tensor(self.entries[name])

    def get_row_set(self, name: str, rows: list[int]) -> torch.Tensor:
        """Rows `rows` (sorted, distinct) of one tensor, reading only their bytes."""
        return st.read_row_set(self.entries[name], rows)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Read rows [start, stop) of one tensor."""
        return st.read_rows(self.entries[name], start, stop)


def token_ids(tok) -> dict[str, int | None]:
    """bos/eos/pad ids of a tokenizer (None where it has none)."""
    return {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}


def load_tokenizer(tok_dir: Path):
    """An HF tokenizer from a directory, or a UserError naming it."""
    from ..model.portable import load_tokenizer as load

    return load(tok_dir)


def has_tokenizer(d: Path) -> bool:
    """True if `d` holds HF tokenizer files."""
    return (d / "tokenizer.json").exists() or (d / "tokenizer.model").exists() \
        or (d / "tokenizer_config.json").exists()


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files of an HF dir verbatim; returns the names copied (tests, benchmarks)."""
    dst.mkdir(parents=True, exist_ok=True)
    done = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            done.append(name)
    return done


def write_tokenizer_with_template(tok_dir: Path, dst: Path):
    """Write the tokenizer of `tok_dir` into `dst` with the kit's chat template, loadable in
    transformers 4.47, 4.57 and 5.x (`tunekit.model.portable`); returns the tokenizer."""
    from ..model.portable import publish_tokenizer

    return publish_tokenizer(tok_dir, dst, template="kit")


def weight_files(model_dir: Path, weights: "HFWeights") -> list[Path]:
    """The files holding an HF model's weights (shards and their index)."""
    files = sorted({e.path for e in weights.entries.values()})
    index = model_dir / "model.safetensors.index.json"
    return files + ([index] if index.exists() else [])


def same_filesystem(src: Path, dst: Path) -> bool:
    """True if hard links from `src` into (the nearest existing parent of) `dst` are possible."""
    import os

    probe = dst
    while not probe.exists():
        probe = probe.parent
    return os.stat(src).st_dev == os.stat(probe).st_dev


def write_reference_model(hf_dir: Path, weights: "HFWeights", dst: Path) -> tuple[str, Any]:
    """Write `dst` as a complete HF model equal to `hf_dir`: the folder NeMo's `tokenizer.type` names.

    The official exporter (`convert_llama_nemo_to_hf.py`) calls AutoModelForCausalLM and
    AutoTokenizer.from_pretrained on `tokenizer.type` and replaces the weights, so that folder must
    be a whole model, loadable by transformers 4.47: portable tokenizer with the kit's chat template,
    config.json with the legacy keys 4.x reads, generation config, and the weights as hard links to
    the source's files (no extra disk), or copies where the filesystems differ. Returns ("hard
    links" or "copies", the published tokenizer: the conversion's one tokenizer load).
    """
    import os

    from ..model.portable import publish_tokenizer
    from ..model.portable import portable_model_config

    dst.mkdir(parents=True, exist_ok=True)
    tok = publish_tokenizer(hf_dir, dst, template="kit")
    atomic.write_json(dst / "config.json", portable_model_config(read_json(hf_dir / "config.json")))
    if (hf_dir / "generation_config.json").is_file():
        shutil.copy2(hf_dir / "generation_config.json", dst / "generation_config.json")
    how = "hard links"
    for f in weight_files(hf_dir, weights):
        try:
            os.link(f, dst / f.name)
        except OSError:  # another filesystem, or links not allowed: copy
            shutil.copy2(f, dst / f.name)
            how = "copies"
    return how, tok


def write_generation_config(dst: Path, ids: dict[str, int | None]) -> None:
    """generation_config.json: the ids generation stops and pads on (eos = the tokenizer's eos)."""
    from transformers import GenerationConfig

    gen = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    atomic.write_text(dst / "generation_config.json", gen.to_json_string(use_diff=True))


def make_readable(root: Path) -> None:
    """Give every file and folder under `root` the umask's usual modes (temp files start as 0600).

    Outputs land in shared group folders on ABCI; teammates must be able to read them.
    """
    import os

    mask = os.umask(0)
    os.umask(mask)
    for p in [root, *root.rglob("*")]:
        if p.is_file() and p.stat().st_nlink > 1:
            continue  # a hard link to the source's weights: its mode is the source's, leave it
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def total_bytes(shapes: Iterable[tuple[int, ...]], dtype: torch.dtype) -> int:
    """Bytes of tensors with these shapes in `dtype`."""
    item = torch.empty((), dtype=dtype).element_size()
    total = 0
    for shape in shapes:
        n = item
        for s in shape:
            n *= s
        total += n
    return total
