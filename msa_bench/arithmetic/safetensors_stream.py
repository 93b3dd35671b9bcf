"""Reading and writing safetensors files a slice at a time, with plain file I/O and no memory mapping.

Why not ``safe_open`` and ``save_file``: ``safe_open`` memory-maps the file, and every page a tensor read touches
stays resident (and counts in the process's RSS) until the handle is closed; ``save_file`` needs every tensor of a
file in memory at once. Combining four checkpoints with them holds about two models. Here a read copies just the
requested rows into a fresh tensor (the page cache holds the file, not this process), and a file is written header
first, then each tensor's bytes in order, so that memory stays near the slice at hand.

The bytes written are those ``save_file`` writes for the same tensors and metadata: tensors in the order safetensors
itself sorts them (asked of the library, so a new safetensors version's order is followed), offsets back to back, the
header as compact JSON padded with spaces to a multiple of 8 bytes. Only ``__metadata__`` with several keys may come
out in another order: safetensors writes those keys in hash-map order, which differs from one call to the next.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch
from safetensors.torch import save as serialize_to_bytes

from msa_bench.errors import StateArithmeticError

# The safetensors dtype names torch can hold, and the torch dtype of each.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

_HEADER_LENGTH_BYTES = 8  # a little-endian u64, then the JSON header
_HEADER_ALIGNMENT = 8  # the JSON header is padded with spaces to this many bytes


def torch_dtype(dtype: str, name: str, path: Path) -> torch.dtype:
    if dtype not in TORCH_DTYPES:
        raise StateArithmeticError(
            f"tensor {name!r} in {path} has safetensors dtype {dtype}, which state arithmetic cannot read; "
            f"supported: {', '.join(TORCH_DTYPES)}"
        )
    return TORCH_DTYPES[dtype]


def _require_little_endian() -> None:
    # safetensors stores little-endian values, and the raw bytes are reinterpreted in place here.
    if sys.byteorder != "little":
        raise StateArithmeticError(
            f"streaming safetensors I/O needs a little-endian machine; this one is {sys.byteorder}-endian"
        )


def data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Every tensor's (start, end) byte offsets in the file at ``path``, from its header (already validated by
    safetensors when the checkpoint's layout was read)."""
    with open(path, "rb") as file:
        (header_length,) = struct.unpack("<Q", file.read(_HEADER_LENGTH_BYTES))
        header = json.loads(file.read(header_length))
    data_start = _HEADER_LENGTH_BYTES + header_length
    return {
        name: (data_start + entry["data_offsets"][0], data_start + entry["data_offsets"][1])
        for name, entry in header.items()
        if name != "__metadata__"
    }


def rows_of(shape: Sequence[int]) -> int:
    """How many slices along the first dimension a tensor of ``shape`` has (1 for a scalar)."""
    return shape[0] if shape else 1


class TensorFileReader:
    """Reads rows of tensors from one safetensors file by plain reads at the header's offsets."""

    def __init__(self, path: Path) -> None:
        _require_little_endian()
        self.path = Path(path)
        self._offsets = data_offsets(self.path)
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115  (closed by close())

    def read_rows(self, name: str, dtype: str, shape: Sequence[int], start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (along the first dimension) of tensor ``name``, a fresh tensor of their own."""
        element_type = torch_dtype(dtype, name, self.path)
        row_shape = tuple(shape[1:])
        row_bytes = math.prod(row_shape) * element_type.itemsize
        first_byte = self._offsets[name][0] + start * row_bytes
        buffer = torch.empty((stop - start) * row_bytes, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        self._file.seek(first_byte)
        filled = 0
        while filled < len(view):
            count = self._file.readinto(view[filled:])
            if not count:
                raise StateArithmeticError(
                    f"{self.path} ends inside tensor {name!r}: the file is truncated; rebuild that checkpoint"
                )
            filled += count
        rows = buffer.view(element_type)
        return rows.reshape(tuple(shape)) if not shape else rows.reshape((stop - start, *row_shape))

    def close(self) -> None:
        self._file.close()


def _tensor_order(entries: Mapping[str, tuple[str, tuple[int, ...]]]) -> list[str]:
    """The order save_file lays these tensors out in, asked of safetensors with zero-element stand-ins (its sort
    depends only on dtype and name)."""
    stand_ins = {name: torch.empty((0,), dtype=TORCH_DTYPES[dtype]) for name, (dtype, _) in entries.items()}
    serialized = serialize_to_bytes(stand_ins)
    (header_length,) = struct.unpack("<Q", serialized[:_HEADER_LENGTH_BYTES])
    header = json.loads(serialized[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + header_length])
    return [name for name in header if name != "__metadata__"]


class StreamingSafetensorsWriter:
    """Writes a safetensors file whose tensors are known in advance (name -> (dtype, shape)) one slice at a time.

    Tensors must be written in ``order`` and each one's rows in sequence; ``close`` checks that every byte came. The
    file appears under its name only when complete: it is built as a hidden ``.<name>.partial`` beside it and renamed
    at the end, and removed if the write stops early (``abort``, or an exception in a ``with`` block).
    """

    def __init__(
        self,
        path: Path,
        entries: Mapping[str, tuple[str, tuple[int, ...]]],
        metadata: Mapping[str, str] | None,
    ) -> None:
        _require_little_endian()
        self.path = Path(path)
        self.order = _tensor_order(entries)
        header: dict[str, object] = {} if metadata is None else {"__metadata__": dict(metadata)}
        self._sizes: dict[str, int] = {}
        offset = 0
        for name in self.order:
            dtype, shape = entries[name]
            size = math.prod(shape) * TORCH_DTYPES[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._sizes[name] = size
            offset += size
        encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        encoded += b" " * (-len(encoded) % _HEADER_ALIGNMENT)
        self._partial = self.path.with_name(f".{self.path.name}.partial")
        self._file = open(self._partial, "wb")  # noqa: SIM115  (closed by close() or abort())
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)
        self._next = 0  # index in self.order of the tensor being written
        self._written = 0  # bytes of that tensor written so far

    def write(self, name: str, rows: torch.Tensor) -> None:
        """Append ``rows`` (the next rows of tensor ``name``, in its dtype) to the file."""
        if self._sizes.get(name) == 0:
            return  # a tensor with no values has no bytes: its place in the file is its (empty) offset range
        self._skip_empty_tensors()
        if self._next >= len(self.order) or self.order[self._next] != name:
            expected = self.order[self._next] if self._next < len(self.order) else "nothing (all written)"
            raise StateArithmeticError(
                f"{self.path}: tensor {name!r} written out of order; expected {expected}"
            )
        data = rows.contiguous().reshape(-1).view(torch.uint8).numpy()
        if self._written + data.nbytes > self._sizes[name]:
            raise StateArithmeticError(
                f"{self.path}: more bytes written for tensor {name!r} than its shape holds"
            )
        self._file.write(memoryview(data))
        self._written += data.nbytes
        if self._written == self._sizes[name]:
            self._next, self._written = self._next + 1, 0

    def _skip_empty_tensors(self) -> None:
        while self._next < len(self.order) and self._sizes[self.order[self._next]] == 0:
            self._next += 1

    def close(self) -> None:
        """Finish the file: check completeness, flush, and move it to its name."""
        self._skip_empty_tensors()
        if self._next != len(self.order):
            self.abort()
            raise StateArithmeticError(
                f"{self.path}: tensor {self.order[self._next]!r} and {len(self.order) - self._next - 1} more "
                "were not written; the file was not created"
            )
        self._file.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> StreamingSafetensorsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class RowChunk:
    """Rows ``start:stop`` of a tensor: the unit state arithmetic reads, computes and writes."""

    start: int
    stop: int


def row_chunks(shape: Sequence[int], max_elements: int) -> list[RowChunk]:
    """Split a tensor of ``shape`` along its first dimension into runs of whole rows of at most ``max_elements``
    values each (at least one row per run). A scalar is one run."""
    if not shape:
        return [RowChunk(0, 1)]
    row_elements = max(1, math.prod(shape[1:]))
    rows_per_chunk = max(1, max_elements // row_elements)
    return [
        RowChunk(start, min(start + rows_per_chunk, shape[0])) for start in range(0, shape[0], rows_per_chunk)
    ] or [RowChunk(0, 0)]
