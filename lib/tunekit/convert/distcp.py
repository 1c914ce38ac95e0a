"""Where a tensor's bytes sit inside a torch_dist `.distcp` file, found without loading it.

torch.distributed.checkpoint's FileSystemWriter stores each tensor item as one `torch.save`
archive (an uncompressed zip: `data.pkl` describing the tensor, `data/<key>` holding its storage's
raw bytes) at the byte range `.metadata` records for it. Knowing where the raw bytes are lets
the conversion hash them in place (the checksum re-read) and map them straight into the HF output
(NeMo -> HF) instead of unpickling each item into fresh memory first.

`locate` trusts nothing: the pickle is read with an unpickler that only rebuilds plain tensors
(anything else is refused), the zip record must be stored (not compressed), and the tensor must be
the whole storage, contiguous, with the dtype and shape `.metadata` gives. Anything else returns
None and the caller takes the general path (torch.load / Megatron-core's loader).
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import torch

_STORAGE_DTYPES = {"FloatStorage": torch.float32, "BFloat16Storage": torch.bfloat16,
                   "HalfStorage": torch.float16, "DoubleStorage": torch.float64}


@dataclass(frozen=True)
class Located:
    """A tensor item's raw bytes: absolute [start, start + nbytes) in its file, dtype, shape."""

    start: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    crc_at: tuple[int, int] = (0, 0)   # absolute offsets of the record's CRC-32 (local header, directory)


class _Window(io.RawIOBase):
    """A read-only file object over a slice of a buffer (zipfile reads headers through it)."""

    def __init__(self, view: memoryview):
        self.view, self.pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: len(self.view) + pos}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), len(self.view) - self.pos))
        b[:n] = self.view[self.pos:self.pos + n]
        self.pos += n
        return n


class _Storage:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild(storage, offset, size, stride, *rest):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"not a plain tensor ({module}.{name})")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError("not a plain tensor storage")
        return ("storage", dtype, str(key), int(numel))


def locate(buf: memoryview, offset: int, length: int, dtype: torch.dtype,
           shape: tuple[int, ...]) -> Located | None:
    """The raw bytes of the tensor item stored at [offset, offset + length) of a `.distcp` file
    mapped as `buf`, if it is a plain contiguous `dtype` tensor of `shape`; else None."""
    try:
        zf = zipfile.ZipFile(_Window(buf[offset:offset + length]))
        names = {i.filename.split("/", 1)[-1]: i for i in zf.infolist()}
        obj = _Unpickler(io.BytesIO(zf.read(names["data.pkl"]))).load()   # CRC-checked by zipfile
        if not (isinstance(obj, tuple) and obj[0] == "tensor"):
            return None
        _, (_, sdtype, key, numel), toff, size, stride = obj
        info = names.get(f"data/{key}")
        n = sdtype.itemsize * numel
        want = dtype.itemsize * _prod(shape)
        if (info is None or info.compress_type != zipfile.ZIP_STORED or info.file_size != n or n != want
                or sdtype != dtype or toff != 0 or size != tuple(shape) or stride != _contiguous(shape)):
            return None
        head = buf[offset + info.header_offset:offset + info.header_offset + 30]
        name_len, extra_len = struct.unpack("<HH", bytes(head[26:30]))
        start = offset + info.header_offset + 30 + name_len + extra_len
        entry = zf.start_dir   # the central directory lists the records in order, 46 bytes + names each
        for other in zf.infolist():
            if other is info:
                break
            entry += 46 + len(other.orig_filename.encode()) + len(other.extra) + len(other.comment)
        crc_at = (offset + info.header_offset + 14, offset + entry + 16)
        return Located(start, n, dtype, tuple(shape), crc_at) if start + n <= offset + length else None
    except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError,
            struct.error, IndexError):
        return None


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, step = [], 1
    for s in reversed(shape):
        out.append(step)
        step *= s
    return tuple(reversed(out))
