"""HF <-> NeMo conversion: resolve the input, check it, stream the weights, verify, publish atomically.

    hf_to_nemo("tiny", "out/nemo")                 # -> model_config.yaml, model_weights/, tokenizer/
    nemo_to_hf("/groups/x/sft_out", "out/hf")      # picks step=*-last, -> HF dir with chat template

Both build the output under `<dst>.tmp-<pid>` and rename it into place only after verification
passed (`verify.py`: every tensor mapped back bit for bit as it is produced, the written bytes read
back once against checksums taken while writing, and the logits check), so a killed or failed
conversion never leaves a folder that looks complete.
Memory stays near one tensor (writing) or one layer (reading) plus the largest single tensor
(the embedding), not the model; the logits check loads one fp32 model at a time (verify.py).
"""
from __future__ import annotations

import contextlib
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..errors import UserError
from ..paths import resolve
from ..runtime import progress
from . import configs, hf_files, sources, verify
from .common_state import non_model_entries
from .durable import synced_meanwhile
from .layout import RULES, LlamaSpec, Rule, extra_state_keys, read_groups
from .megatron_cpu import megatron_on_cpu, prefetch_megatron, prefetch_wait_s
from .safetensors_io import ShardWriter
from .torch_dist import NemoWeights, plan_chunks, verify_written, write_weights

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_CHOICES = ("auto", "bf16", "fp32")
RECORD = "tunekit_conversion.json"  # provenance file written into every output


@dataclass
class ConversionResult:
    """What a conversion did: `summary` (JSON-able, also written to the output) and a logits sample."""

    summary: dict[str, Any]
    output: Path
    sample_logits: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)


def out_dtype(name: str, source: torch.dtype) -> tuple[str, torch.dtype]:
    """The output dtype: "bf16", "fp32", or "auto" = the source's (fp16 -> fp32, which is exact)."""
    if name not in DTYPE_CHOICES:
        raise UserError(f"dtype {name!r} is not one of {', '.join(DTYPE_CHOICES)}")
    if name == "auto":
        name = "bf16" if source == torch.bfloat16 else "fp32"
    return name, DTYPES[name]


def _prepare_dst(dst: str | Path, src_dir: Path, overwrite: bool) -> Path:
    if not str(dst).strip():
        raise UserError("destination is empty (give the folder to write)")
    # A destination does not exist yet: relative means relative to the current directory.
    path = resolve(str(dst), Path.cwd())
    if path.exists() and not overwrite:
        raise UserError(f"{path}: already exists (choose another destination, or pass --overwrite / "
                        "overwrite=True to replace it)")
    src = src_dir.resolve()
    # Replacing dst must never remove the source (dst == source, or a folder containing it).
    if path == src or path in src.parents:
        raise UserError(f"{path}: contains the source {src} (write somewhere else)")
    return path


def check_disk_space(dst: Path, need: int) -> None:
    """Refuse to start when the destination's filesystem cannot hold the output (plus 2% + 64 MB)."""
    probe = dst
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    want = int(need * 1.02) + 64 * 2**20
    if free < want:
        raise UserError(f"{dst}: not enough disk space ({free / 2**30:.2f} GiB free, the output "
                        f"needs about {want / 2**30:.2f} GiB) (free space or choose another destination)")


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the process's peak resident memory so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bar(total_bytes: int, desc: str):
    bar = progress(total=total_bytes, unit="B", desc=desc)
    bar.unit_scale, bar.unit_divisor = True, 1000  # show kB/MB/GB, not raw byte counts
    return bar


def _weights_bytes(spec: LlamaSpec, dtype: torch.dtype) -> int:
    return hf_files.total_bytes([r.global_shape(spec) for r in RULES], dtype)


# ---------------------------------------------------------------- HF -> NeMo
def hf_to_nemo(src: str, dst: str | Path, *, dtype: str = "auto", verify_logits: bool = True,
               overwrite: bool = False, logits_memory_gb: float = verify.LOGITS_MEMORY_GB,
               logits_layers: str = "slice", log=print) -> ConversionResult:
    """Convert an HF LLaMA model ("tiny", HF dir, run dir) into a NeMo dir in the official kit's layout.

    Writes `model_config.yaml`, `model_weights/` (torch_dist) and `tokenizer/`: the HF model that
    `tokenizer.type` names (tokenizer with the kit's chat template, config, weights as hard links
    to the source's), loadable by the official kit's transformers 4.47 and its exporter. Verified
    before publishing: weights bit-exact back to HF, and Megatron-core logits equal HF logits
    (unless verify_logits=False) on the first, middle and last layer (logits_layers="slice"), or on
    every layer in windows that fit `logits_memory_gb` (logits_layers="full").
    """
    t0 = time.time()
    hf_dir = sources.resolve_hf_source(src)
    spec = configs.spec_from_hf_config(configs.read_json(hf_dir / "config.json"), str(hf_dir / "config.json"))
    weights = hf_files.HFWeights(hf_dir)
    weights.check(spec)
    dname, dt = out_dtype(dtype, weights.dtype)
    path = _prepare_dst(dst, hf_dir, overwrite)
    has_tok = hf_files.has_tokenizer(hf_dir)
    need = _weights_bytes(spec, dt) + spec.num_layers * 32768 + 2**20  # + per-chunk headers
    links = hf_files.same_filesystem(hf_dir, path)
    if has_tok and not links:  # the reference model's weights are copied, not linked
        need += sum(f.stat().st_size for f in hf_files.weight_files(hf_dir, weights))
    check_disk_space(path, need)
    log(f"hf-to-nemo: {hf_dir} ({spec.num_params():,} parameters, {str(weights.dtype)[6:]}) -> "
        f"{path} ({dname})")

    trip = verify.RoundTrip(spec, dt)

    def fetch(rule: Rule, layer: int | None, part: int | None) -> torch.Tensor:
        names = rule.hf_names(layer)
        if part is not None:
            t = weights.get(names[part])
            trip.same_part(rule, layer, part, t, t.to(dt))
            return t
        parts = [weights.get(n) for n in names]
        nemo_t = rule.to_nemo(spec, parts)
        trip.hf_to_nemo(rule, layer, parts, nemo_t)  # before it is written: a wrong map stops here
        return nemo_t

    tokenizer = None
    # Megatron-core (imported and set up by megatron_on_cpu, ~3 CPU-s) is needed only by the logits
    # check: writing and the checksum re-read use torch.distributed.checkpoint alone. Its import is
    # started in the background before the write, and the check waits for it.
    with atomic.atomic_dir(path, overwrite=overwrite) as tmp:
        cfg = configs.nemo_config_dict(spec, dname, path / "tokenizer" if has_tok else None)
        _write_yaml(tmp / "model_config.yaml", cfg)
        reference = None
        if has_tok:  # what tokenizer.type names: a whole HF model, as the official exporter needs
            # Its tokenizer (loaded once, for the reference folder) also gives the logits prompts.
            reference, tokenizer = hf_files.write_reference_model(hf_dir, weights, tmp / "tokenizer")
            log(f"hf-to-nemo: tokenizer/ holds the source HF model (weights as {reference}) for "
                "tokenizer.type, as the official scripts expect")
        bar = _bar(_weights_bytes(spec, dt), "hf-to-nemo")
        t_write = time.time()
        try:
            # Megatron's import runs on another core while the bytes are written.
            sums = write_weights(tmp / "model_weights", spec, plan_chunks(spec, fetch), dt,
                                 on_chunk=bar.update, sync=False,
                                 before_fill=prefetch_megatron if verify_logits else lambda: None)
        except BaseException:  # torch's CheckpointException is a BaseException
            if trip.error is not None:  # the writer wraps it: raise the real one
                raise trip.error from None
            raise
        finally:
            bar.close()
        write_s = time.time() - t_write
        written = _dir_bytes(tmp / "model_weights")
        log(f"hf-to-nemo: wrote {written / 1e6:.1f} MB in {write_s:.1f} s; verifying ...")
        t_ver = time.time()
        checks: dict[str, Any] = {}
        with synced_meanwhile([tmp / "model_weights"], checks):   # the disk works while verification runs
            nemo = NemoWeights(tmp / "model_weights")
            nemo.check(spec)
            chunks = verify_written(tmp / "model_weights", sums)
            checks.update({"weights_bit_exact": True, "tensors_compared": trip.compared,
                           "chunks_read_back": chunks, "checksum": "xxh3_128"})
            sample = None
            if verify_logits:
                with megatron_on_cpu():
                    # Megatron's model from the config as written (a wrong field there shows too).
                    as_written = configs.spec_from_nemo_config(configs.read_yaml(tmp / "model_config.yaml"),
                                                               spec.vocab_size, str(tmp / "model_config.yaml"))
                    logits = verify.check_logits(hf_dir, as_written, tmp / "model_weights", tokenizer, dt,
                                                 memory_gb=logits_memory_gb, layers=logits_layers)
                sample = logits.pop("_sample", None)
                checks.update(logits)
                checks["megatron_import_wait_s"] = prefetch_wait_s()
        summary = _summary("hf_to_nemo", str(hf_dir), f"HF model {hf_dir}", path, dname, spec,
                           written, write_s, time.time() - t_ver, time.time() - t0, checks)
        summary.update({"tokenizer_dir": str(path / "tokenizer") if has_tok else None,
                        "tokenizer_dir_weights": reference,
                        "extra_state_objects": len(extra_state_keys(spec))})
        atomic.write_json(tmp / RECORD, summary)
        hf_files.make_readable(tmp)
    log(_verdict(summary))
    return ConversionResult(summary, path, sample)


# ---------------------------------------------------------------- NeMo -> HF
def nemo_to_hf(src: str, dst: str | Path, *, dtype: str = "auto", checkpoint: str = "last",
               tokenizer: str = "", verify_logits: bool = True, overwrite: bool = False,
               max_shard_gb: float = 5.0, logits_memory_gb: float = verify.LOGITS_MEMORY_GB,
               logits_layers: str = "slice", log=print) -> ConversionResult:
    """Convert a NeMo dir / official-kit training output / run dir of 21 into an HF model dir.

    Writes safetensors (sharded above `max_shard_gb`), config.json, generation_config.json and a
    tokenizer with the kit's chat template (from the NeMo dir's tokenizer, or `tokenizer`: an HF
    dir, a run dir, "tiny" or "llm-jp"). Verified before publishing like `hf_to_nemo`.
    """
    t0 = time.time()
    # Megatron-core (seconds of imports and a process group) is set up only when needed: to read
    # a layout that cannot be mapped (tensor-parallel splits) and for the logits check.
    with contextlib.ExitStack() as megatron:
        entered: list[bool] = []

        def need_megatron() -> None:
            if not entered:
                megatron.enter_context(megatron_on_cpu())
                entered.append(True)

        source = sources.resolve_nemo_source(src, checkpoint)
        log(f"nemo-to-hf: {source.note}")
        cfg = configs.read_yaml(source.config_path)
        nemo = NemoWeights(source.weights_dir)
        spec = configs.spec_from_nemo_config(cfg, nemo.vocab_size, str(source.config_path))
        skipped = nemo.check(spec)
        ignored = non_model_entries(source.weights_dir)
        if ignored:
            log(f"nemo-to-hf: ignoring {len(ignored)} non-model entries stored with the weights "
                f"(training state in common.pt): {', '.join(ignored)}")
        tok_dir = resolve_tokenizer(tokenizer) if tokenizer else sources.tokenizer_dir_of_nemo(source, cfg)
        if tok_dir is None:
            ref = (cfg.get("tokenizer") or {}).get("type")
            where = (f"model_config.yaml's tokenizer.type {ref} does not exist here" if ref else
                     "no tokenizer stored with this checkpoint")
            raise UserError(f"{source.root}: {where} (pass tokenizer=llm-jp / --tokenizer llm-jp for the "
                            "competition's tokenizer, or an HF model dir)")
        dname, dt = out_dtype(dtype, nemo.dtype)
        path = _prepare_dst(dst, source.weights_dir, overwrite)
        if max_shard_gb <= 0:
            raise UserError(f"max_shard_gb must be > 0 (got {max_shard_gb})")
        check_disk_space(path, _weights_bytes(spec, dt) + 2**24)
        log(f"nemo-to-hf: {spec.num_params():,} parameters ({str(nemo.dtype)[6:]}) -> {path} ({dname})")
        with atomic.atomic_dir(path, overwrite=overwrite) as tmp:
            tok = hf_files.write_tokenizer_with_template(tok_dir, tmp)
            ids = hf_files.token_ids(tok)
            plan = hf_write_order(spec)
            writer = ShardWriter(tmp, plan, dt, int(max_shard_gb * 1e9), sync=False)
            if verify_logits:   # its import runs on another core while the weights are written
                prefetch_megatron()
            bar = _bar(writer.total_bytes, "nemo-to-hf")
            t_write = time.time()
            trip = verify.RoundTrip(spec, dt)
            mapped = sum(_write_group(nemo, spec, group, layer, writer, bar, trip, need_megatron)
                         for group, layer in read_groups(spec))
            writer.close()
            bar.close()
            write_s = time.time() - t_write
            atomic.write_json(tmp / "config.json", configs.hf_config_dict(spec, dname, ids))
            hf_files.write_generation_config(tmp, ids)
            log(f"nemo-to-hf: wrote {writer.total_bytes / 1e6:.1f} MB in {write_s:.1f} s; verifying ...")
            t_ver = time.time()
            checks: dict[str, Any] = {}
            with synced_meanwhile([tmp / f for f in writer.files], checks):  # while verification runs
                out = hf_files.HFWeights(tmp)
                out.check(spec)
                writer.verify()
                checks.update({"weights_bit_exact": True, "tensors_compared": trip.compared,
                               "files_read_back": len(writer.checksums), "checksum": "xxh3_128",
                               "tensors_mapped": mapped})
                sample = None
                if verify_logits:
                    need_megatron()
                    logits = verify.check_logits(tmp, spec, source.weights_dir, tok, dt, nemo.prefix,
                                                 memory_gb=logits_memory_gb, layers=logits_layers)
                    sample = logits.pop("_sample", None)
                    checks.update(logits)
                    checks["megatron_import_wait_s"] = prefetch_wait_s()
            summary = _summary("nemo_to_hf", str(source.weights_dir), source.note, path, dname, spec,
                               writer.total_bytes, write_s, time.time() - t_ver, time.time() - t0, checks)
            summary.update({"checkpoint": source.checkpoint, "skipped_entries": skipped,
                            "ignored_non_model_entries": ignored,
                            "tokenizer_from": str(tok_dir), "shards": len(writer.files)})
            atomic.write_json(tmp / RECORD, summary)
            hf_files.make_readable(tmp)
    log(_verdict(summary))
    return ConversionResult(summary, path, sample)


def _write_group(nemo: NemoWeights, spec: LlamaSpec, group, layer, writer: ShardWriter, bar,
                 trip: verify.RoundTrip, need_megatron) -> int:
    """Write one layer's (or the global) HF tensors; returns how many came straight from the mapped
    data file. A function of its own so the group's tensors are freed before the next group is read."""
    stored = {rule.nemo: nemo.mapped_rows(spec, layer, rule) for rule in group}
    loaded = [r for r in group if stored[r.nemo] is None]   # other layouts: Megatron-core's loader
    if loaded:
        need_megatron()
    tensors = nemo.read(spec, layer, tuple(loaded)) if loaded else {}
    for rule in group:
        blocks = stored[rule.nemo]
        if blocks is not None and rule.join == "rows" and len(blocks) == len(rule.hf):
            # Stored as one chunk per HF tensor (Megatron's SwiGLU sharding): the parts are the
            # chunks themselves, if their row ranges are the HF tensors' (checked).
            parts = [t for _, t in blocks]
            trip.rows_as_stored(rule, layer, [row for row, _ in blocks], parts)
        else:
            nemo_t = (tensors.pop(rule.nemo) if blocks is None else
                      blocks[0][1] if len(blocks) == 1 else torch.cat([t for _, t in blocks]))
            parts = rule.to_hf(spec, nemo_t)
            trip.nemo_to_hf(rule, layer, nemo_t, parts)  # before it is written: a wrong map stops here
        for name, t in zip(rule.hf_names(layer), parts):
            bar.update(writer.write(name, t))
    return len(group) - len(loaded)


def hf_write_order(spec: LlamaSpec) -> list[tuple[str, tuple[int, ...]]]:
    """HF tensors in the order they are written: global ones first, then layer by layer."""
    plan = []
    for group, layer in read_groups(spec):
        for rule in group:
            for i, name in enumerate(rule.hf_names(layer)):
                plan.append((name, rule.hf_shape(spec, i)))
    return plan


def resolve_tokenizer(spec: str) -> Path:
    """A tokenizer dir from "llm-jp" (the competition's), "tiny", an HF dir or a run dir."""
    from ..model import llmjp_tokenizer_dir, tiny_tokenizer_dir

    text = spec.strip()
    if text in ("llm-jp", "llmjp"):
        return llmjp_tokenizer_dir()
    if text == "tiny":
        return tiny_tokenizer_dir()
    path = sources.user_path(text)
    for d in (path, path / "hf_model", path / "tokenizer", path / "nemo" / "tokenizer"):
        if d.is_dir() and hf_files.has_tokenizer(d):
            return d
    raise UserError(f"tokenizer {spec!r}: no tokenizer files in {path} (give 'llm-jp', 'tiny', "
                    "an HF model/tokenizer dir or a run dir)")


# ---------------------------------------------------------------- helpers
def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    atomic.write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _summary(direction: str, source: str, note: str, out: Path, dname: str, spec: LlamaSpec,
             written: int, write_s: float, verify_s: float, total_s: float,
             checks: dict[str, Any]) -> dict[str, Any]:
    return {
        "direction": direction, "source": source, "source_note": note, "output": str(out),
        "dtype": dname, "parameters": spec.num_params(), "num_layers": spec.num_layers,
        "hidden_size": spec.hidden_size, "vocab_size": spec.vocab_size,
        "bytes_written": written, "write_seconds": round(write_s, 3),
        "write_mb_per_s": round(written / 1e6 / max(write_s, 1e-9), 2),
        "verify_seconds": round(verify_s, 3), "total_seconds": round(total_s, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1), "verification": checks,
    }


def _verdict(summary: dict[str, Any]) -> str:
    v = summary["verification"]
    logits = (f"logits max |diff| {v['logits_max_abs_diff']:.2e} <= {v['logits_tolerance']:.1e}"
              if "logits_max_abs_diff" in v else "logits not checked (verify_logits=False)")
    return (f"{summary['direction']}: verified ({v['tensors_compared']} tensors bit-exact, {logits}) "
            f"-> {summary['output']}")
