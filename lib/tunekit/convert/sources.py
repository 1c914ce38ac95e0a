"""Conversion inputs as users have them, resolved to concrete folders (and said which was taken).

NeMo side, any of:
* a NeMo dir: `model_config.yaml` + `model_weights/` (the official converter's output, ours);
* an official-kit training output dir: `model_config.yaml` (or PTL's `hparams.yaml`) next to
  `step=*` checkpoint folders, possibly under `checkpoints/`; `checkpoint="last"` picks the
  `step=*-last` one (no `ln -s ... model_weights` needed), "best" the lowest val loss in the names;
* a checkpoint folder itself (`step=...-last/`, holding `.metadata`), config taken from its parent;
* one of our run dirs (21_convert_hf_to_nemo): its `nemo/`.
HF side: `tunekit.model.resolve_model` ("tiny", an HF model dir, a run dir's `hf_model/`).
Relative paths are taken from the current directory first, then from the repository root.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..paths import repo_root

CONFIG_NAMES = ("model_config.yaml", "hparams.yaml")
_STEP = re.compile(r"step=(\d+)")
_LOSS = re.compile(r"(?:val_loss|validation_loss|val-loss|loss)=([0-9]+(?:\.[0-9]+)?)")


def user_path(text: str) -> Path:
    """A path as the user means it: absolute, `~`, else relative to cwd, else to the repo root."""
    p = Path(text).expanduser()
    if p.is_absolute():
        return p
    here = Path.cwd() / p
    if here.exists():
        return here.resolve()
    return (repo_root() / p).resolve()


@dataclass(frozen=True)
class NemoSource:
    """A resolved NeMo input: where its config and weights are, and a sentence saying what was picked."""

    root: Path
    config_path: Path
    weights_dir: Path
    note: str
    checkpoint: str = ""


def _is_weights(d: Path) -> bool:
    return (d / ".metadata").is_file()


def _weights_in(d: Path) -> Path | None:
    if _is_weights(d):
        return d
    if _is_weights(d / "model_weights"):
        return d / "model_weights"
    return None


def _find_config(dirs: list[Path]) -> Path | None:
    for d in dirs:
        for name in CONFIG_NAMES:
            if (d / name).is_file():
                return d / name
    return None


def _step(d: Path) -> int:
    m = _STEP.search(d.name)
    return int(m.group(1)) if m else -1


def pick_checkpoint(candidates: list[Path], which: str, where: Path) -> tuple[Path, str]:
    """Choose among training checkpoint folders: "last", "best" (lowest loss in the name) or a name."""
    names = ", ".join(sorted(d.name for d in candidates))
    if which not in ("last", "best"):
        for d in candidates:
            if d.name == which:
                return d, f"checkpoint {d.name} (as asked)"
        raise UserError(f"{where}: no checkpoint named {which!r} (found: {names})")
    if which == "last":
        lasts = [d for d in candidates if d.name.endswith("-last")]
        pool = lasts or [d for d in candidates if _step(d) >= 0]
        if not pool:
            raise UserError(f"{where}: cannot tell which checkpoint is the last (no '-last' or "
                            f"'step=N' in {names}) (pass checkpoint=<folder name>)")
        chosen = max(pool, key=_step)
        how = "the '-last' one" if lasts else "the highest step"
        return chosen, f"checkpoint {chosen.name} ({how} of {len(candidates)}: {names})"
    scored = [(float(m.group(1)), d) for d in candidates if (m := _LOSS.search(d.name))]
    if not scored:
        raise UserError(f"{where}: cannot tell which checkpoint is best: no loss in the folder names "
                        f"({names}) (pass checkpoint=<folder name> or checkpoint=last)")
    loss, chosen = min(scored, key=lambda x: (x[0], -_step(x[1])))
    return chosen, f"checkpoint {chosen.name} (lowest loss {loss:g} of {len(candidates)}: {names})"


def resolve_nemo_source(spec: str, checkpoint: str = "last") -> NemoSource:
    """Find the config and weights of a NeMo input (see module doc); UserError if there are none."""
    if not str(spec).strip():
        raise UserError("NeMo source is empty (give a NeMo dir, an official-kit training output "
                        "dir or a run dir of 21_convert_hf_to_nemo)")
    path = user_path(str(spec))
    if not path.exists():
        raise UserError(f"{path}: does not exist (relative paths are taken from the current "
                        "directory, then from the repository root)")
    if path.is_file():
        if path.suffix == ".nemo":
            raise UserError(f"{path}: a packed .nemo archive; unpack it first: "
                            f"`mkdir {path.with_suffix('')} && tar -xf {path} -C {path.with_suffix('')}` "
                            "and convert that folder")
        raise UserError(f"{path}: a file, not a NeMo directory")
    roots = [path / "nemo", path] if (path / "params.json").is_file() else [path]
    for root in roots:
        found = _resolve_root(root, checkpoint)
        if found:
            return found
    raise UserError(f"{path}: neither a NeMo dir (model_config.yaml + model_weights/), nor a training "
                    "output with step=* checkpoints, nor a checkpoint folder (.metadata)")


def _resolve_root(root: Path, checkpoint: str) -> NemoSource | None:
    if not root.is_dir():
        return None
    search = [root, root / "checkpoints"]
    mw = root / "model_weights"
    if _is_weights(mw) and checkpoint == "last":
        cfg = _find_config([root])
        if cfg is None:
            raise UserError(f"{root}: has model_weights/ but no model_config.yaml "
                            "(copy it from the NeMo dir the weights were trained from)")
        target = f" -> {mw.resolve().name}" if mw.is_symlink() else ""
        return NemoSource(root, cfg, mw, f"NeMo dir {root} (model_weights{target})",
                          mw.resolve().name if mw.is_symlink() else "")
    if _is_weights(root):  # the user pointed at a checkpoint folder itself
        cfg = _find_config([root, root.parent, root.parent.parent])
        if cfg is None:
            raise UserError(f"{root}: a checkpoint folder, but no model_config.yaml next to it or in "
                            "its parent (copy the one from the NeMo dir it was trained from)")
        return NemoSource(root.parent, cfg, root, f"checkpoint folder {root} (config {cfg})", root.name)
    candidates = [d for base in search if base.is_dir() for d in sorted(base.iterdir())
                  if d.is_dir() and d.name != "model_weights" and _weights_in(d)]
    if not candidates:
        if _is_weights(mw):  # checkpoint != "last" but only model_weights exists
            raise UserError(f"{root}: checkpoint={checkpoint!r} but this NeMo dir holds only "
                            "model_weights/ (use checkpoint=last)")
        return None
    chosen, why = pick_checkpoint(candidates, checkpoint, root)
    cfg = _find_config([chosen, chosen.parent, root, root.parent])
    if cfg is None:
        raise UserError(f"{root}: training output without model_config.yaml or hparams.yaml "
                        "(copy model_config.yaml from the NeMo dir training started from into it)")
    return NemoSource(root, cfg, _weights_in(chosen), f"training output {root}: {why}", chosen.name)


def resolve_hf_source(spec: str) -> Path:
    """An HF model dir from "tiny", an HF dir or a run dir (see tunekit.model.resolve_model)."""
    from ..model import resolve_model

    text = str(spec).strip()
    if text and text != "tiny":
        p = Path(text).expanduser()
        if not p.is_absolute() and (Path.cwd() / p).exists():
            text = str((Path.cwd() / p).resolve())
    return resolve_model(text)


def tokenizer_dir_of_nemo(src: NemoSource, cfg: dict) -> Path | None:
    """The HF tokenizer stored with a NeMo checkpoint: `tokenizer/` (ours) or the config's path."""
    from .hf_files import has_tokenizer

    for d in (src.root / "tokenizer", src.config_path.parent / "tokenizer"):
        if has_tokenizer(d):
            return d
    tok = cfg.get("tokenizer") or {}
    ref = tok.get("type") if tok.get("library") == "huggingface" else None
    if isinstance(ref, str) and ref:
        p = Path(ref).expanduser()
        p = p if p.is_absolute() else src.root / p
        if p.is_dir() and has_tokenizer(p):
            return p
    return None
