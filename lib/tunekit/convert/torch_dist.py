"""NeMo `model_weights/`: a Megatron-core torch_dist checkpoint, written and read one layer at a time.

On disk (what Megatron-core's `dist_checkpointing.save` writes, checked in the tests against its
own output): `.metadata` (torch.distributed.checkpoint metadata), `__0_*.distcp` (tensor data),
`common.pt` (non-sharded state: empty for weights, the Lightning trainer state in a NeMo training
checkpoint; read by `common_state`) and `metadata.json` (the backend name).

Writing: torch.distributed.checkpoint plans the checkpoint and writes `.metadata` and each item's
archive with a hole for its bytes (`LazyPlanner`, `torch.serialization.skip_data`); then each
chunk is made, written into its hole with one pwrite (from the mapped source file where the chunk
is a source tensor as it is) and hashed on the way, and freed: memory holds one tensor, not the
model (Megatron's own writer materialises the whole state dict first and spawns a process).
Reading: where the kit's (or Megatron's TP=1) layout stores each tensor of a layer as whole-row
chunks, they are mapped in place (`NemoWeights.mapped_rows`, `distcp.locate`); any other
tensor/pipeline-parallel layout is read with Megatron-core's `dist_checkpointing.load`, one layer
at a time, so Megatron itself reshards what the official kit trained.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.distributed.checkpoint.default_planner import create_default_global_save_plan
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex,
                                                   TensorProperties)
from torch.distributed.checkpoint.planner import (SavePlan, SavePlanner, TensorWriteData, WriteItem,
                                                  WriteItemType)

from ..errors import UserError
from . import distcp, safetensors_io as st
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
    """A torch.distributed.checkpoint SavePlanner that lays the checkpoint out without its data.

    torch writes each tensor item with `torch.save`, which copies the bytes through memory it
    allocates (and keeps every tensor referenced until the file is closed). Here torch writes
    under `torch.serialization.skip_data`: the metadata, the per-item archives and holes where the
    bytes go; `write_weights` then fills each hole straight from the chunk's tensor (`_fill`),
    which for a chunk that is a view of the source file (`safetensors_io.map_tensor`) means page
    cache to page cache, one tensor at a time. The placeholders handed to torch are never touched,
    so they take no memory."""

    def __init__(self, chunks: list[Chunk], objects: dict[str, bytes], dtype: torch.dtype):
        self.chunks = {(c.fqn, c.offsets): c for c in chunks}
        self.order = chunks
        self.objects = objects
        self.dtype = dtype

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
        return torch.empty(c.sizes, dtype=self.dtype)   # never touched: skip_data leaves a hole

    def transform_object(self, write_item, object):  # noqa: A002 - torch's signature
        return object  # already serialised bytes, like Megatron's MCoreSavePlanner


def _tensor_checksum(t: torch.Tensor) -> str:
    import xxhash

    return xxhash.xxh3_128(st.raw_view(t.contiguous())).hexdigest()


def write_weights(weights_dir: Path, spec: LlamaSpec, chunks: list[Chunk], dtype: torch.dtype,
                  on_chunk: Callable[[int], None] = lambda n: None,
                  sync: bool = True,
                  before_fill: Callable[[], object] = lambda: None) -> dict[tuple[str, tuple[int, ...]], str]:
    """Write a torch_dist checkpoint (the NeMo `model_weights/` folder) from lazily made chunks;
    returns the checksum of every chunk's bytes, taken as they were written.
    sync=False: the files are not fsynced here (the caller does it: `durable.BackgroundSync`).
    before_fill: called once torch has laid the files out, before the bytes are written (the
    write itself imports nothing, so a background import can run beside it)."""
    from torch.distributed import checkpoint as dcp

    weights_dir.mkdir(parents=True, exist_ok=True)
    blob = _extra_state_bytes()
    objects = {key: blob for key in extra_state_keys(spec)}
    planner = LazyPlanner(chunks, objects, dtype)
    writer = _HoleWriter(str(weights_dir), single_file_per_rank=True, thread_count=1, sync_files=False)
    with warnings.catch_warnings():
        # "torch.distributed is disabled ... assuming ... a single process": exactly the intent.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({}, storage_writer=writer, planner=planner, no_dist=True)
    import xxhash  # noqa: F401  (before before_fill: _fill's own imports are then done)

    before_fill()
    sums = _fill(weights_dir, chunks, dtype, on_chunk, sync)
    torch.save({}, weights_dir / "common.pt")
    (weights_dir / "metadata.json").write_text(json.dumps(METADATA_JSON), encoding="utf-8")
    return sums


def _hole_writer_class():
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX, _StorageInfo
    from torch.distributed.checkpoint.storage import WriteResult
    from torch.futures import Future

    class HoleWriter(FileSystemWriter):
        """torch's FileSystemWriter (same planning, file names and `.metadata`), writing one file
        whose tensor items are `torch.save` archives with holes for their bytes (`skip_data`: torch
        seeks over them in a real file; its own writer hands torch.save a stream that cannot)."""

        def write_data(self, plan, planner):
            name = f"{plan.storage_data.prefix}0{DEFAULT_SUFFIX}"
            results = []
            with open(Path(self.path) / name, "wb") as f:
                for item in plan.items:
                    data = planner.resolve_data(item)
                    start = f.tell()
                    if item.type == WriteItemType.BYTE_IO:
                        f.write(data.getbuffer())
                    else:
                        with torch.serialization.skip_data():
                            torch.save(data, f)
                    length = f.tell() - start
                    results.append(WriteResult(index=item.index, size_in_bytes=length,
                                               storage_data=_StorageInfo(name, start, length)))
            fut = Future()
            fut.set_result(results)
            return fut

    return HoleWriter


def _HoleWriter(*args, **kwargs):
    return _hole_writer_class()(*args, **kwargs)


def _fill(weights_dir: Path, chunks: list[Chunk], dtype: torch.dtype, on_chunk: Callable[[int], None],
          sync: bool) -> dict[tuple[str, tuple[int, ...]], str]:
    """Write every chunk's bytes into the hole torch left for it, in file order, hashing them as they
    go; each chunk is made just before and freed just after (memory: one tensor)."""
    import xxhash

    md = read_metadata(weights_dir)
    where: dict[str, list] = {}
    for c in chunks:
        info = md.storage_data[MetadataIndex(c.fqn, torch.Size(c.offsets))]
        where.setdefault(info.relative_path, []).append((info.offset, info.length, c))
    sums: dict[tuple[str, tuple[int, ...]], str] = {}
    for rel, items in where.items():
        items.sort(key=lambda x: x[0])
        with open(weights_dir / rel, "rb") as f, _mapped(f) as (buf, _):   # headers only: where each hole is
            holes = [distcp.locate(buf, offset, length, dtype, c.sizes) for offset, length, c in items]
        fd = os.open(weights_dir / rel, os.O_WRONLY)
        try:
            for (_, _, c), hole in zip(items, holes):
                if hole is None:
                    raise RuntimeError(f"internal: torch wrote {c.fqn} in a layout the kit cannot fill")
                t = c.make().to(dtype).reshape(c.sizes).contiguous()
                data = st.raw_view(t)
                if data.nbytes != hole.nbytes:
                    raise RuntimeError(f"internal: {c.fqn} has {data.nbytes} bytes, {hole.nbytes} planned")
                # Write, then hash the same bytes: hashing first makes the kernel's copy several
                # times slower (measured 6.6-10 s vs 0.9-1.4 s for 1.29 GB on the test VM).
                _pwrite_all(fd, data, hole.start)
                sums[(c.fqn, tuple(c.offsets))] = xxhash.xxh3_128(data).hexdigest()
                # The record's zip CRC-32 (torch wrote the one of an empty record): torch does not
                # check it, but zip tools and other torch builds may.
                crc = struct.pack("<I", zlib.crc32(data))
                for at in hole.crc_at:
                    _pwrite_all(fd, memoryview(crc), at)
                on_chunk(data.nbytes)
                del data
                _free(t)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return sums


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:   # one write(2) moves at most ~2 GiB
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _free(t: torch.Tensor) -> None:
    """Release a written chunk now (the chunk contract: nothing else uses it): its own bytes, or, for
    a view of the source file, its mapped pages (they stay in the page cache)."""
    if st.is_mapped(t):
        st.drop_pages(t)
    elif t.untyped_storage().nbytes() == t.numel() * t.element_size():   # never a view's shared bytes
        t.untyped_storage().resize_(0)


def verify_written(weights_dir: Path, checksums: dict[tuple[str, tuple[int, ...]], str]) -> int:
    """Re-read every tensor chunk written by `write_weights` (its byte range, as torch_dist stores
    it) and compare its checksum with the one taken while writing; returns the chunks checked.
    Only bytes are read back, hashed where they lie in the file (`distcp.locate`): no model, no
    Megatron, no unpickling."""
    import xxhash

    from .failures import VerificationError

    md = read_metadata(weights_dir)
    seen = 0
    by_file: dict[str, list] = {}
    for index, info in md.storage_data.items():
        if (index.fqn, tuple(index.offset or ())) in checksums:
            by_file.setdefault(info.relative_path, []).append((index, info))
    for rel, items in by_file.items():
        with open(weights_dir / rel, "rb") as f, _mapped(f) as (buf, drop):
            for index, info in sorted(items, key=lambda x: x[1].offset):
                chunk = md.state_dict_metadata[index.fqn]
                sizes = next((tuple(c.sizes) for c in chunk.chunks if tuple(c.offsets) == tuple(index.offset)), ())
                where = distcp.locate(buf, info.offset, info.length, chunk.properties.dtype, sizes)
                if where is not None:   # hash the stored bytes in place: no unpickling, no copy
                    got = xxhash.xxh3_128(buf[where.start:where.start + where.nbytes]).hexdigest()
                else:
                    try:
                        t = torch.load(io.BytesIO(buf[info.offset:info.offset + info.length]), weights_only=True)
                    except Exception as exc:  # noqa: BLE001 - any unreadable bytes are a failed check
                        raise VerificationError(f"verification: {weights_dir / rel}: {index.fqn} cannot be read back "
                                                f"({type(exc).__name__}) (the output was not published)") from None
                    got = _tensor_checksum(t.contiguous())
                drop(info.offset, info.offset + info.length)   # RSS stays at one chunk
                if got != checksums[(index.fqn, tuple(index.offset))]:
                    raise VerificationError(f"verification: {weights_dir / rel}: {index.fqn} at {list(index.offset)} "
                                            "reads back different bytes than were written (a disk or filesystem "
                                            "fault; the output was not published)")
                seen += 1
    if seen != len(checksums):
        raise VerificationError(f"verification: {weights_dir}: {len(checksums) - seen} written chunks are not in "
                                "the checkpoint metadata (the output was not published)")
    return seen


@contextlib.contextmanager
def _mapped(f) -> Iterator[tuple[memoryview, Callable[[int, int], None]]]:
    """A whole open file as a read-only memoryview (its page cache pages; nothing is copied), and a
    function that unmaps the pages of a byte range once it has been used (they stay cached)."""
    import mmap

    if os.fstat(f.fileno()).st_size == 0:
        yield memoryview(b""), lambda a, b: None
        return
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(m)

    def drop(a: int, b: int) -> None:
        a -= a % mmap.PAGESIZE
        if b > a:
            m.madvise(mmap.MADV_DONTNEED, a, min(b, len(m)) - a)

    try:
        yield view, drop
    finally:
        view.release()
        m.close()


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

    def mapped_rows(self, spec: LlamaSpec, layer: int | None, rule: Rule) -> list[tuple[int, torch.Tensor]] | None:
        """The stored chunks of `rule`'s tensor for `layer` as (first row, tensor) views of the data
        file (`safetensors_io.map_bytes`: no read, no copy), when they are whole-row blocks of that
        one tensor, as the kit and Megatron at TP=1 store them (fc1: gate rows, then up rows); None
        for any other layout (tensor-parallel column splits, other archives): read it with `read`."""
        key = rule.nemo_key(self.prefix)
        meta = self.metadata.state_dict_metadata[key]
        shape, lead = rule.shape(spec), (1,) if layer is not None else ()
        mine = sorted((tuple(c.offsets), tuple(c.sizes)) for c in meta.chunks
                      if layer is None or c.offsets[0] == layer)
        out, row = [], 0
        for offsets, sizes in mine:
            body_off, body = offsets[len(lead):], sizes[len(lead):]
            if (sizes[:len(lead)] != lead or body_off[0] != row or tuple(body[1:]) != tuple(shape[1:])
                    or any(body_off[1:])):
                return None
            info = self.metadata.storage_data.get(MetadataIndex(key, torch.Size(offsets)))
            if info is None:
                return None
            where = self._locate(info, meta.properties.dtype, sizes)
            if where is None:
                return None
            raw = st.map_bytes(self.dir / info.relative_path, where.start, where.start + where.nbytes)
            out.append((row, raw.view(where.dtype).reshape(body)))
            row += body[0]
        return out if row == shape[0] and out else None

    def _locate(self, info, dtype: torch.dtype, sizes) -> "distcp.Located | None":
        import mmap

        if not hasattr(self, "_maps"):
            self._maps: dict[str, tuple] = {}
        if info.relative_path not in self._maps:
            with open(self.dir / info.relative_path, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[info.relative_path] = (m, memoryview(m))
        m, view = self._maps[info.relative_path]
        found = distcp.locate(view, info.offset, info.length, dtype, tuple(sizes))
        a = info.offset - info.offset % mmap.PAGESIZE
        m.madvise(mmap.MADV_DONTNEED, a, min(info.offset + info.length, len(m)) - a)  # headers read: unmap
        return found

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
