"""A GGUF file's header, read in a fraction of a second.

Why not gguf-py's GGUFReader: it builds a numpy view of every key's every array element, and a
tokenizer's 49k tokens and merges take it seconds, paid by every bench, load check and level
lookup (the note on issue 17 has the measured figures). The checks here only need the scalar keys, the tensor table and where the
tensor data ends, so arrays are skipped, not decoded (their element type and length are kept).

The layout (GGUF v2 and v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 key
count; each key: a string name, a u32 value type and the value; each tensor: a string name, u32
dimension count, u64 dimensions, u32 ggml type, u64 offset into the data section; the data section
starts at the next multiple of `general.alignment` (32 when absent). A string is a u64 byte length
and UTF-8 bytes; an array is a u32 element type, a u64 count and the elements.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from edgeft.backends.gguf import GGUF_MAGIC

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class ArrayValue:
    """An array key, skipped: its element type and length."""

    element_type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: the row length first
    ggml_type: int
    offset: int  # from the start of the data section

    def n_bytes(self) -> int:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        return math.prod(self.shape) // block * size


@dataclass(frozen=True)
class Header:
    version: int
    fields: dict[str, object]  # scalars and strings decoded; arrays as ArrayValue
    tensors: tuple[TensorInfo, ...]
    data_start: int

    def data_end(self) -> int:
        """Where the last tensor's bytes end: a file shorter than this is truncated."""
        return max((self.data_start + t.offset + t.n_bytes() for t in self.tensors), default=self.data_start)


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        end = self.pos + n
        if end > len(self.buf):
            raise ValueError(f"a string of {n} bytes runs past the end of the file at byte {self.pos}")
        text = bytes(self.buf[self.pos:end]).decode("utf-8", errors="replace")
        self.pos = end
        return text

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
        if self.pos > len(self.buf):
            raise ValueError("a string array runs past the end of the file")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            element, count = self.take("<I"), self.take("<Q")
            if element in _SCALARS:
                self.pos += struct.calcsize(_SCALARS[element]) * count
            elif element == _STRING:
                self.skip_strings(count)
            else:
                for _ in range(count):  # nested arrays: rare, decoded one by one
                    self.value(element)
            return ArrayValue(element, count)
        raise ValueError(f"unknown value type {kind} at byte {self.pos - 4}")


def read_header(path: Path) -> Header:
    """The header of a GGUF file; ValueError with the reason when it is not one or is cut short."""
    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise ValueError("empty file") from None
    with buf:
        if buf[:4] != GGUF_MAGIC:
            raise ValueError("bad magic number")
        cur = _Cursor(buf)
        cur.pos = 4
        try:
            version = cur.take("<I")
            if version < 2:
                raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
            n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
            fields: dict[str, object] = {}
            for _ in range(n_kv):
                key = cur.string()
                fields[key] = cur.value(cur.take("<I"))
            tensors = []
            for _ in range(n_tensors):
                name = cur.string()
                dims = tuple(cur.take("<Q") for _ in range(cur.take("<I")))
                tensors.append(TensorInfo(name, dims, cur.take("<I"), cur.take("<Q")))
        except struct.error:
            raise ValueError(f"the header ends early, at byte {cur.pos}") from None
        align = fields.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0:
            raise ValueError(f"general.alignment is {align!r}")
        data_start = -(-cur.pos // align) * align
    return Header(version, fields, tuple(tensors), data_start)
