"""Streaming safetensors: read one tensor at a time, write shards tensor by tensor.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw bytes. The conversion reads a tensor by mapping exactly its bytes
(`map_tensor`): no read into fresh memory, and writing it elsewhere is one copy from the page
cache; the mapping ends with the tensor, so resident memory stays at the tensors in use
(`safetensors.safe_open` maps whole files and makes RSS grow with every tensor touched). Headers
are checked against the file size first, so a truncated download or copy is reported by name
instead of failing deep inside a read.
"""
from __future__ import annotations

import json
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
CODES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """Where one tensor lives: file, dtype, shape, absolute byte range."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: Path) -> dict[str, Entry]:
    """Parse a safetensors file's header; UserError if it is not one or is truncated."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{path}: truncated safetensors file ({size} bytes) (copy it again)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise UserError(f"{path}: truncated or not a safetensors file (header of {n} bytes "
                            f"in a {size}-byte file) (copy it again)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: corrupt safetensors header (copy it again)") from None
    header.pop("__metadata__", None)
    out: dict[str, Entry] = {}
    end_max = 0
    for name, info in header.items():
        if info.get("dtype") not in DTYPES:
            raise UserError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        a, b = info["data_offsets"]
        out[name] = Entry(path, DTYPES[info["dtype"]], tuple(info["shape"]), 8 + n + a, 8 + n + b)
        end_max = max(end_max, 8 + n + b)
    if end_max > size:
        raise UserError(f"{path}: truncated: the header needs {end_max} bytes, the file has {size} "
                        "(the copy or download did not finish; copy it again)")
    return out


def read_tensor(entry: Entry) -> torch.Tensor:
    """Read one tensor from its file into fresh memory (no mmap)."""
    nbytes = entry.end - entry.start
    # torch.empty, not bytearray: no zero-filling of memory that the read overwrites at once.
    out = torch.empty(nbytes, dtype=torch.uint8)
    with open(entry.path, "rb", buffering=0) as f:
        f.seek(entry.start)
        view, got = raw_view(out), 0
        while got < nbytes:   # one read(2) returns at most ~2 GiB
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    if got != nbytes:
        raise UserError(f"{entry.path}: truncated while reading (copy it again)")
    return out.view(entry.dtype).reshape(entry.shape)


def map_bytes(path: Path, start: int, end: int) -> torch.Tensor:
    """Bytes [start, end) of a file as a uint8 tensor backed by a private read-only-in-practice
    mapping of the file (no copy: its pages are the page cache's). Nothing else is mapped, so the
    mapping ends with the tensor. Writing such a tensor to another file copies page cache to page
    cache in the kernel; going through a fresh anonymous buffer first costs a second copy (and, on
    virtual machines like the test VM, runs ~15x slower: see docs/nemo.md)."""
    import mmap

    if end <= start:
        return torch.empty(0, dtype=torch.uint8)
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < end:
            raise UserError(f"{path}: truncated while reading (copy it again)")
        # ACCESS_COPY: a writable (copy-on-write) view, as torch.frombuffer wants; nothing writes it.
        m = mmap.mmap(f.fileno(), end - base, access=mmap.ACCESS_COPY, offset=base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "non-writable buffer": it is writable (copy-on-write)
        return torch.frombuffer(memoryview(m)[start - base:end - base], dtype=torch.uint8)


def map_tensor(entry: Entry) -> torch.Tensor:
    """One tensor as a view of its file's bytes (`map_bytes`): no read, no copy, RSS = pages touched."""
    raw = map_bytes(entry.path, entry.start, entry.end)
    return raw.view(entry.dtype).reshape(entry.shape)


def is_mapped(t: torch.Tensor) -> bool:
    """True for a tensor made by `map_bytes` (its storage cannot be resized, unlike torch's own)."""
    return not t.untyped_storage().resizable()


def drop_pages(t: torch.Tensor) -> None:
    """Let the kernel unmap the pages of a `map_bytes` tensor that was fully used (they stay in the
    page cache; touching the tensor again would fault them back in). Keeps RSS at one tensor while
    a writer still holds references to everything it wrote."""
    import ctypes
    import mmap

    if not is_mapped(t) or t.numel() == 0:
        return
    page = mmap.PAGESIZE
    a = -(-t.data_ptr() // page) * page
    b = (t.data_ptr() + t.numel() * t.element_size()) // page * page
    if b > a:
        ctypes.CDLL(None, use_errno=True).madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), mmap.MADV_DONTNEED)


def read_rows(entry: Entry, start: int, stop: int) -> torch.Tensor:
    """Read rows [start, stop) of a tensor's first axis (bounded memory for huge tensors)."""
    itemsize = torch.empty((), dtype=entry.dtype).element_size()
    row = itemsize
    for s in entry.shape[1:]:
        row *= s
    nbytes = (stop - start) * row
    buf = bytearray(nbytes)
    with open(entry.path, "rb") as f:
        f.seek(entry.start + start * row)
        got = f.readinto(buf)
    if got != nbytes:
        raise UserError(f"{entry.path}: truncated while reading (copy it again)")
    shape = (stop - start, *entry.shape[1:])
    return torch.frombuffer(buf, dtype=entry.dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=entry.dtype)


def read_row_set(entry: Entry, rows: list[int]) -> torch.Tensor:
    """Rows `rows` (sorted, distinct) of a tensor's first axis, reading only their bytes: one
    pread per run of consecutive rows (a vocabulary sample of a large embedding is a few percent
    of it)."""
    row = torch.empty((), dtype=entry.dtype).element_size()
    for s in entry.shape[1:]:
        row *= s
    out = torch.empty((len(rows), *entry.shape[1:]), dtype=entry.dtype)
    view = raw_view(out)
    fd = os.open(entry.path, os.O_RDONLY)
    try:
        k = 0
        while k < len(rows):
            j = k
            while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
                j += 1
            want = (j - k + 1) * row
            got = os.preadv(fd, [view[k * row:k * row + want]], entry.start + rows[k] * row)
            if got != want:
                raise UserError(f"{entry.path}: truncated while reading (copy it again)")
            k = j + 1
    finally:
        os.close(fd)
    return out


def raw_view(t: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory, valid while the tensor lives.
    Unlike `.numpy()`, it leaves the storage resizable, so a writer can free it (torch_dist)."""
    import ctypes

    if not t.is_contiguous():
        raise ValueError("internal: raw_view needs a contiguous tensor")
    n = t.numel() * t.element_size()
    return memoryview((ctypes.c_char * n).from_address(t.data_ptr())).cast("B") if n else memoryview(b"")


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without a copy."""
    t = t.detach().contiguous()
    return memoryview(t.view(torch.uint8).reshape(-1).numpy())


class ShardWriter:
    """Write tensors into safetensors shards in a planned order, one tensor in memory at a time.

    The header of each shard is computed from the plan (names, shapes, dtype) before any data,
    so tensors can be appended as they are produced; `write` checks each against the plan.
    """

    def __init__(self, out_dir: Path, plan: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype,
                 max_shard_bytes: int, sync: bool = True):
        self.out_dir = out_dir
        self.sync = sync   # False: the caller fsyncs the files (durable.BackgroundSync)
        self.dtype = dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        shards: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
        used = 0
        for name, shape in plan:
            n = itemsize
            for s in shape:
                n *= s
            if shards[-1] and used + n > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append((name, shape, n))
            used += n
        self.shards = shards
        total = len(shards)
        self.files = (["model.safetensors"] if total == 1 else
                      [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)])
        self.order = [(i, name, shape) for i, s in enumerate(shards) for name, shape, _ in s]
        self.total_bytes = sum(n for s in shards for _, _, n in s)
        self.checksums: dict[str, str] = {}   # file -> xxh3-128 of its bytes, taken while writing
        self._pos = 0
        self._file = None
        self._hash = None
        self._shard = -1

    def _open(self, i: int) -> None:
        if self._file:
            self._close_file()
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, n in self.shards[i]:
            header[name] = {"dtype": CODES[self.dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes with spaces
        self._file = open(self.out_dir / self.files[i], "wb", buffering=0)  # large writes go straight out
        self._hash = _hasher()
        self._put(struct.pack("<Q", len(blob)) + blob)
        self._shard = i

    def _put(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:  # an unbuffered write may be short
            view = view[self._file.write(view):]
        # Hashed after writing: hashing first makes the kernel's copy of the same (mapped) bytes
        # several times slower on the test VM (torch_dist._fill).
        self._hash.update(data)

    def _close_file(self) -> None:
        if self.sync:
            os.fsync(self._file.fileno())
        self._file.close()
        self.checksums[self.files[self._shard]] = self._hash.hexdigest()
        self._file = None

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Append the next planned tensor; returns its byte count."""
        shard, want, shape = self.order[self._pos]
        if name != want or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"internal: wrote {name} {tuple(tensor.shape)}, planned {want} {shape}")
        if shard != self._shard:
            self._open(shard)
        data = tensor_bytes(tensor.to(self.dtype))
        self._put(data)
        self._pos += 1
        return data.nbytes

    def close(self) -> None:
        """Finish the last shard and write model.safetensors.index.json when sharded."""
        if self._pos != len(self.order):
            raise RuntimeError(f"internal: {len(self.order) - self._pos} planned tensors not written")
        if self._file:
            self._close_file()
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": {name: self.files[i] for i, name, _ in self.order}}
            (self.out_dir / "model.safetensors.index.json").write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def verify(self) -> int:
        """Re-read every written shard and compare its checksum with the one taken while writing;
        returns the bytes read. Raises VerificationError naming a file that differs."""
        from .failures import VerificationError

        import mmap

        total = 0
        for name, want in self.checksums.items():
            h = _hasher()
            with open(self.out_dir / name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size:
                    # Hashed where the bytes lie (no copy into fresh buffers), 64 MB at a time,
                    # each block's pages unmapped after use: RSS stays at one block.
                    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    view = memoryview(m)
                    try:
                        for a in range(0, size, 1 << 26):
                            b = min(size, a + (1 << 26))
                            h.update(view[a:b])
                            m.madvise(mmap.MADV_DONTNEED, a, b - a)
                    finally:
                        view.release()
                        m.close()
                    total += size
            if h.hexdigest() != want:
                raise VerificationError(f"verification: {self.out_dir / name} reads back different bytes "
                                        "than were written (a disk or filesystem fault; the output was not "
                                        "published)")
        return total


def _hasher():
    import xxhash

    return xxhash.xxh3_128()
