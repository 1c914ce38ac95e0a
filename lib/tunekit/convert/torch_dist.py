"""NeMo `model_weights/`: a Megatron-core torch_dist checkpoint, written and read one layer at a time.

On disk (what Megatron-core's `dist_checkpointing.save` writes, checked in the tests against its
own output): `.metadata` (torch.distributed.checkpoint metadata), `__0_*.distcp` (tensor data),
`common.pt` (non-sharded state: empty for weights, the Lightning trainer state in a NeMo training
checkpoint; read by `common_state`) and `metadata.json` (the backend name).

Writing goes through torch.distributed.checkpoint with a planner that produces each chunk only
when the writer asks for it, so memory holds one tensor, not the model; Megatron's own writer
materialises the whole state dict first (and spawns a process). Reading uses Megatron-core's
`dist_checkpointing.load`, asking for one layer at a time, so any tensor/pipeline-parallel layout
the official kit trained with is resharded by Megatron itself.
"""
from __future__ import annotations

import io
import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.distributed.checkpoint.default_planner import create_default_global_save_plan
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex,
                                                   TensorProperties)
from torch.distributed.checkpoint.planner import (SavePlan, SavePlanner, TensorWriteData, WriteItem,
                                                  WriteItemType)

from ..errors import UserError
from .layout import GLOBAL_RULES, LAYER_RULES, LlamaSpec, Rule, extra_state_keys, nemo_expected

METADATA_JSON = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                 "common_backend": "torch", "common_backend_version": 1}
# Key prefixes under which a GPT's weights may sit: NeMo 1 (`model.`), NeMo 2 (`module.`),
# Megatron-LM (none). The first one that holds the embedding wins.
KNOWN_PREFIXES = ("model.", "module.", "model.module.", "")


# ---------------------------------------------------------------- writing
@dataclass(frozen=True)
class Chunk:
    """One piece of one tensor in the checkpoint, produced lazily by `make`, which must return a
    tensor nothing else uses: the writer frees its bytes once they are written."""

    fqn: str
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    make: Callable[[], torch.Tensor]
    stacked: bool


def plan_chunks(spec: LlamaSpec, fetch: Callable[[Rule, int | None, int | None], torch.Tensor],
                prefix: str = "model.") -> list[Chunk]:
    """Every chunk Megatron-core would write for this model, in layer order.

    `fetch(rule, layer, part)` returns the NeMo tensor of `rule` for `layer` (None for global
    tensors); for "rows" rules it is called per part (fc1: gate, then up), which is both how
    Megatron shards SwiGLU and what lets the writer avoid concatenating them.
    """
    chunks: list[Chunk] = []

    def add(rule: Rule, layer: int | None) -> None:
        shape = rule.shape(spec)
        gshape = rule.global_shape(spec)
        lead = (layer,) if rule.stacked else ()
        one = (1,) if rule.stacked else ()
        if rule.join == "rows":
            row = 0
            for part in range(len(rule.hf)):
                psh = rule.hf_shape(spec, part)
                chunks.append(Chunk(rule.nemo_key(prefix), gshape, lead + (row,) + (0,) * (len(psh) - 1),
                                    one + psh, _bind(fetch, rule, layer, part), rule.stacked))
                row += psh[0]
        else:
            chunks.append(Chunk(rule.nemo_key(prefix), gshape, lead + (0,) * len(shape), one + shape,
                                _bind(fetch, rule, layer, None), rule.stacked))

    add(GLOBAL_RULES[0], None)
    for layer in range(spec.num_layers):
        for rule in LAYER_RULES:
            add(rule, layer)
    for rule in GLOBAL_RULES[1:]:
        add(rule, None)
    return chunks


def _bind(fetch, rule, layer, part):
    return lambda: fetch(rule, layer, part)


def _extra_state_bytes() -> bytes:
    # Megatron stores a ShardedObject as torch.save([obj]); None = no FP8 state.
    buf = io.BytesIO()
    torch.save([None], buf)
    return buf.getvalue()


class LazyPlanner(SavePlanner):
    """A torch.distributed.checkpoint SavePlanner whose data is made on demand, chunk by chunk."""

    def __init__(self, chunks: list[Chunk], objects: dict[str, bytes], dtype: torch.dtype,
                 on_chunk: Callable[[int], None]):
        self.chunks = {(c.fqn, c.offsets): c for c in chunks}
        self.order = chunks
        self.objects = objects
        self.dtype = dtype
        self.on_chunk = on_chunk
        self.checksums: dict[tuple[str, tuple[int, ...]], str] = {}   # item -> xxh3 of its bytes

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False):
        self.is_coordinator = is_coordinator

    def create_local_plan(self) -> SavePlan:
        items = [WriteItem(index=MetadataIndex(k), type=WriteItemType.BYTE_IO) for k in self.objects]
        for c in self.order:
            items.append(WriteItem(
                index=MetadataIndex(c.fqn, torch.Size(c.offsets)),
                type=WriteItemType.SHARD if c.stacked else WriteItemType.TENSOR,
                tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(offsets=torch.Size(c.offsets), sizes=torch.Size(c.sizes)),
                    properties=TensorProperties(dtype=self.dtype),
                    size=torch.Size(c.global_shape))))
        self.plan = SavePlan(items)
        return self.plan

    def create_global_plan(self, all_plans):
        return create_default_global_save_plan(all_plans)

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        self.plan = new_plan
        return new_plan

    def resolve_data(self, write_item: WriteItem):
        if write_item.tensor_data is None:
            return io.BytesIO(self.objects[write_item.index.fqn])
        c = self.chunks[(write_item.index.fqn, tuple(write_item.index.offset))]
        self.release()
        t = c.make().to(self.dtype).reshape(c.sizes).contiguous()
        if t.untyped_storage().nbytes() != t.nbytes:
            t = t.clone()  # own its bytes exactly (torch's loader would clone it out of our reach)
        self.checksums[(c.fqn, tuple(c.offsets))] = _tensor_checksum(t)
        self.on_chunk(t.numel() * t.element_size())
        self._last = t
        return t

    _last: torch.Tensor | None = None

    def release(self) -> None:
        """Free the bytes of the chunk handed out last. torch's FileSystemWriter asks for the next
        chunk only after writing the previous one, but keeps every tensor it wrote referenced until
        the file is closed (for its safetensors format, unused here): without this, memory grows to
        the whole model during the write instead of one tensor."""
        if self._last is not None:
            self._last.untyped_storage().resize_(0)
            self._last = None

    def transform_object(self, write_item, object):  # noqa: A002 - torch's signature
        return object  # already serialised bytes, like Megatron's MCoreSavePlanner


def _tensor_checksum(t: torch.Tensor) -> str:
    import xxhash

    from .safetensors_io import raw_view

    return xxhash.xxh3_128(raw_view(t.contiguous())).hexdigest()


def write_weights(weights_dir: Path, spec: LlamaSpec, chunks: list[Chunk], dtype: torch.dtype,
                  on_chunk: Callable[[int], None] = lambda n: None,
                  sync: bool = True) -> dict[tuple[str, tuple[int, ...]], str]:
    """Write a torch_dist checkpoint (the NeMo `model_weights/` folder) from lazily made chunks;
    returns the checksum of every chunk's bytes, taken as it was handed to the writer.
    sync=False: the files are not fsynced here (the caller does it: `durable.BackgroundSync`)."""
    from torch.distributed import checkpoint as dcp

    weights_dir.mkdir(parents=True, exist_ok=True)
    blob = _extra_state_bytes()
    objects = {key: blob for key in extra_state_keys(spec)}
    planner = LazyPlanner(chunks, objects, dtype, on_chunk)
    # One writer thread and no copy-ahead (with CUDA present torch would otherwise resolve chunks
    # ahead of writing them): chunks are made and written strictly one after another, which is
    # what lets LazyPlanner.release free each chunk once the next one is asked for.
    writer = dcp.FileSystemWriter(str(weights_dir), single_file_per_rank=True, thread_count=1,
                                  sync_files=sync, per_thread_copy_ahead=0)
    with warnings.catch_warnings():
        # "torch.distributed is disabled ... assuming ... a single process": exactly the intent.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({}, storage_writer=writer, planner=planner, no_dist=True)
    planner.release()
    torch.save({}, weights_dir / "common.pt")
    (weights_dir / "metadata.json").write_text(json.dumps(METADATA_JSON), encoding="utf-8")
    return planner.checksums


def verify_written(weights_dir: Path, checksums: dict[tuple[str, tuple[int, ...]], str]) -> int:
    """Re-read every tensor chunk written by `write_weights` (its byte range, as torch_dist stores
    it) and compare its checksum with the one taken while writing; returns the chunks checked.
    Only bytes are read back: no model, no Megatron."""
    from .failures import VerificationError

    md = read_metadata(weights_dir)
    seen = 0
    by_file: dict[str, list] = {}
    for index, info in md.storage_data.items():
        if (index.fqn, tuple(index.offset or ())) in checksums:
            by_file.setdefault(info.relative_path, []).append((index, info))
    for rel, items in by_file.items():
        with open(weights_dir / rel, "rb") as f:
            for index, info in sorted(items, key=lambda x: x[1].offset):
                f.seek(info.offset)
                blob = f.read(info.length)
                try:
                    t = torch.load(io.BytesIO(blob), weights_only=True)
                except Exception as exc:  # noqa: BLE001 - any unreadable bytes are a failed check
                    raise VerificationError(f"verification: {weights_dir / rel}: {index.fqn} cannot be read back "
                                            f"({type(exc).__name__}) (the output was not published)") from None
                if _tensor_checksum(t.contiguous()) != checksums[(index.fqn, tuple(index.offset))]:
                    raise VerificationError(f"verification: {weights_dir / rel}: {index.fqn} at {list(index.offset)} "
                                            "reads back different bytes than were written (a disk or filesystem "
                                            "fault; the output was not published)")
                seen += 1
    if seen != len(checksums):
        raise VerificationError(f"verification: {weights_dir}: {len(checksums) - seen} written chunks are not in "
                                "the checkpoint metadata (the output was not published)")
    return seen


# ---------------------------------------------------------------- reading
class NemoWeights:
    """A torch_dist checkpoint: its metadata checked up front, its tensors read layer by layer."""

    def __init__(self, weights_dir: Path):
        self.dir = weights_dir
        self.metadata = read_metadata(weights_dir)
        check_files(weights_dir, self.metadata)
        md = self.metadata.state_dict_metadata
        self.prefix = next((p for p in KNOWN_PREFIXES if f"{p}embedding.word_embeddings.weight" in md),
                           None)
        if self.prefix is None:
            raise UserError(f"{weights_dir}: no embedding.word_embeddings.weight under any known "
                            f"prefix ({', '.join(repr(p) for p in KNOWN_PREFIXES)}) "
                            "(is this the model_weights of a NeMo GPT checkpoint?)")

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.metadata.state_dict_metadata[self.prefix + key].size)

    @property
    def vocab_size(self) -> int:
        return self.shape("embedding.word_embeddings.weight")[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.metadata.state_dict_metadata[
            self.prefix + "embedding.word_embeddings.weight"].properties.dtype

    def check(self, spec: LlamaSpec) -> dict[str, int]:
        """Validate keys and shapes against the spec; returns counts of the non-weight entries skipped.

        Skipped, by category: `_extra_state` objects (TransformerEngine FP8 metadata, no weights),
        optimizer state (`optimizer.*`) and RNG state (`rng_state`) of training checkpoints. Any
        other key, a missing weight or a wrong shape stops the conversion naming the key.
        """
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        want = nemo_expected(spec, self.prefix)
        md = self.metadata.state_dict_metadata
        skipped = {"extra_state": 0, "optimizer": 0, "rng_state": 0}
        for key, meta in md.items():
            if key in want:
                if not isinstance(meta, TensorStorageMetadata):
                    raise UserError(f"{self.dir}: {key!r} is not a tensor (damaged checkpoint?)")
                if tuple(meta.size) != want[key]:
                    raise UserError(f"{self.dir}: tensor {key!r} has shape {list(meta.size)}, "
                                    f"model_config.yaml implies {list(want[key])} "
                                    "(config and weights disagree)")
            elif "._extra_state" in key and key.startswith(self.prefix):
                skipped["extra_state"] += 1
            elif key.startswith("optimizer.") or key.startswith("optimizer_"):
                skipped["optimizer"] += 1
            elif key.startswith("rng_state"):  # Megatron-LM training checkpoints
                skipped["rng_state"] += 1
            else:
                raise UserError(f"{self.dir}: unknown key {key!r} (not a weight of a LLaMA GPT "
                                "model with this config; nothing is dropped silently)")
        missing = [k for k in want if k not in md]
        if missing:
            raise UserError(f"{self.dir}: tensor {missing[0]!r} is missing"
                            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} "
                            "(incomplete checkpoint)")
        return skipped

    def read(self, spec: LlamaSpec, layer: int | None,
             rules: tuple[Rule, ...] | None = None) -> dict[str, torch.Tensor]:
        """The NeMo tensors of one layer (layer axis removed), or the global ones for layer=None.

        `rules` narrows the request (default: all tensors of that layer / all global tensors).
        """
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing.mapping import ShardedTensor

        from .common_state import safe_common_strategy

        if rules is None:
            rules = LAYER_RULES if layer is not None else GLOBAL_RULES
        request = {}
        for rule in rules:
            key = rule.nemo_key(self.prefix)
            dtype = self.metadata.state_dict_metadata[key].properties.dtype
            if layer is None:
                data = torch.empty(rule.shape(spec), dtype=dtype)
                request[rule.nemo] = ShardedTensor.from_rank_offsets(key, data, replica_id=0)
            else:
                # The layer as a [1, ...] slice of axis 0 (not Megatron's prepend_axis form, whose
                # torch ShardedTensor translation cannot express a partial request in a
                # 1-process group); Megatron then reads it as a regular chunk.
                data = torch.empty((1, *rule.shape(spec)), dtype=dtype)
                request[rule.nemo] = ShardedTensor.from_rank_offsets(
                    key, data, (0, layer, spec.num_layers), replica_id=0)
        try:
            # One layer of a stacked tensor is a partial request by design: skip the check that
            # the request covers every tensor completely.
            loaded = dist_checkpointing.load(request, str(self.dir), validate_access_integrity=False,
                                             common_strategy=safe_common_strategy())
        except UserError:
            raise
        except Exception as exc:  # torch/megatron raise many types on damaged data
            where = f"layer {layer}" if layer is not None else "embedding/final norm/output layer"
            raise UserError(f"{self.dir}: cannot read {where} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}) "
                            "(the checkpoint is damaged or incomplete; copy it again)") from None
        return {rule.nemo: loaded[rule.nemo][0] if layer is not None else loaded[rule.nemo]
                for rule in rules}


def read_metadata(weights_dir: Path):
    """The `.metadata` of a torch_dist checkpoint, or a UserError saying what is wrong."""
    if not weights_dir.is_dir():
        raise UserError(f"{weights_dir}: not a directory (expected a NeMo model_weights folder)")
    meta_json = weights_dir / "metadata.json"
    if meta_json.exists():
        try:
            backend = json.loads(meta_json.read_text(encoding="utf-8")).get("sharded_backend")
        except json.JSONDecodeError:
            raise UserError(f"{meta_json}: damaged (copy the checkpoint again)") from None
        if backend != "torch_dist":
            raise UserError(f"{weights_dir}: sharded_backend is {backend!r}; only 'torch_dist' is "
                            "supported (re-save it with dist_ckpt_format: torch_dist)")
    path = weights_dir / ".metadata"
    if not path.exists():
        raise UserError(f"{weights_dir}: no .metadata file (not a torch_dist checkpoint, or the "
                        "save did not finish)")
    try:
        blob = path.read_bytes()
        if b"megatron" in blob:  # old checkpoints pickle Megatron classes into .metadata: import
            from .megatron_cpu import import_megatron   # it quietly first (the kit's own need not)

            import_megatron()
        return pickle.loads(blob)
    except Exception as exc:  # EOFError, UnpicklingError, ...: all mean a damaged file
        raise UserError(f"{path}: cannot read ({type(exc).__name__}) (truncated or damaged; "
                        "copy the checkpoint again)") from None


def check_files(weights_dir: Path, metadata) -> None:
    """Every data file the metadata points into exists and is long enough (catches truncation)."""
    if not (weights_dir / "common.pt").is_file():  # Megatron's loader fails on it with an AttributeError
        raise UserError(f"{weights_dir / 'common.pt'}: missing (every torch_dist checkpoint has one; "
                        "the copy is incomplete, copy the checkpoint again)")
    need: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        path = weights_dir / name
        if not path.exists():
            raise UserError(f"{path}: missing (listed in .metadata; copy the checkpoint again)")
        have = path.stat().st_size
        if have < size:
            raise UserError(f"{path}: truncated: {have} bytes, .metadata needs {size} "
                            "(the copy did not finish; copy it again)")
