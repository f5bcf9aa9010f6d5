"""Reading the header of a safetensors file without trusting it: at least as strictly as the safetensors library
checks a file when it opens it, so that nothing that passes here fails there, and every problem is a
:class:`~hf_sparse.errors.FormatError` naming the file and the tensor."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FormatError, quote
from ..nn.description import FIX, dims_ok, is_int

__all__ = ["TensorHeader", "read_safetensors_header"]

#: safetensors dtype codes this loader reads, with their element sizes in bytes.
_CODE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_MAX_HEADER_ITEMS = 8_000_000  # commas: a million tensors' entries, far below what 100 MB could hold


@dataclass(frozen=True)
class TensorHeader:
    """One tensor's entry in a safetensors header: the file's name, the dtype code (``"F32"``, ``"I16"``, ...) and
    the shape."""

    file: str
    dtype: str
    shape: tuple[int, ...]


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {quote(key)}")
        out[key] = value
    return out


def _json_int(text: str) -> int:
    if text.startswith("-"):
        raise ValueError(f"negative number {text}")
    return int(text)


def _json_not_allowed(text: str) -> Any:
    raise ValueError(f"{text} is not an integer")


def _well_formed(x: Any, max_depth: int) -> bool:
    """False if the parsed header nests deeper than ``max_depth`` or a string holds a lone surrogate (invalid UTF-8
    that ``json`` lets through). Iterative: a hostile header cannot make it recurse."""
    stack = [(x, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return False
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return True


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorHeader]:
    """The tensors of a safetensors file, from its header, checked at least as strictly as the safetensors library
    does when it opens the file: nothing that passes here fails there.

    Checks: the 8-byte header length, that the header fits in the file, is UTF-8 JSON without duplicate keys, and
    lists for each tensor a known dtype, a shape of non-negative integers and ``data_offsets`` that match the
    shape's byte size; that the tensors tile the data section exactly (no gap, no overlap) and that the file is
    exactly as long as the header says (a truncated file, or one with trailing bytes, fails).

    Raises:
        FormatError: naming the file, the tensor where one is at fault, and the problem.
    """
    path = Path(path)
    file = path.name

    def error(problem: str, tensor: str | None = None) -> FormatError:
        at = (
            f"tensor {quote(tensor)} in checkpoint file {quote(file)}"
            if tensor is not None
            else f"checkpoint file {quote(file)}"
        )
        return FormatError(f"{at}: {problem}. {FIX}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise error(f"the file is {size} bytes, too short for the 8-byte header length (truncated)")
            n = int.from_bytes(prefix, "little")
            if n > _MAX_HEADER_BYTES:
                raise error(f"the header length field says {n} bytes, more than safetensors' limit of 100,000,000")
            if 8 + n > size:
                raise error(f"the header length field says {n} bytes but only {size - 8} follow it (truncated)")
            raw = fh.read(n)
    except OSError as exc:
        reason = quote(exc.strerror or str(exc))
        raise FormatError(f"checkpoint file {quote(str(path))} cannot be read: {reason}. {FIX}") from None
    if raw.count(b",") > _MAX_HEADER_ITEMS:
        # Bounds what parsing can allocate: a 100 MB header of one long list would be 50 million Python objects.
        raise error(f"the header lists more than {_MAX_HEADER_ITEMS:,} items; no model's header does")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"the header is not valid UTF-8 (byte {exc.start} of {n})") from None
    if not text.startswith("{"):
        raise error("the header does not start with '{' (not a safetensors header)")
    try:
        header = json.loads(
            text,
            object_pairs_hook=_json_pairs,
            parse_int=_json_int,
            parse_float=_json_not_allowed,
            parse_constant=_json_not_allowed,
        )
    except (ValueError, RecursionError) as exc:
        what = "it nests too deeply" if isinstance(exc, RecursionError) else quote(str(exc), 200)
        raise error(f"the header is not valid JSON ({what})") from None
    if not isinstance(header, dict) or not _well_formed(header, 3):
        raise error("the header is not a JSON object of UTF-8 strings, nested at most 3 levels (__metadata__ is flat)")

    out: dict[str, TensorHeader] = {}
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise error(f"__metadata__ must map strings to strings, got {quote(info)}")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise error(f"the entry must have exactly 'dtype', 'shape' and 'data_offsets', got {quote(info)}", key)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _CODE_BYTES:
            raise error(f"unsupported dtype {quote(dtype)} (known: {sorted(_CODE_BYTES)})", key)
        if not dims_ok(shape):
            raise error(f"the shape must be a list of non-negative integers, got {quote(shape)}", key)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)):
            raise error(f"data_offsets must be two non-negative integers, got {quote(offsets)}", key)
        begin, end = offsets
        nbytes = math.prod(shape) * _CODE_BYTES[dtype]
        if end < begin or end - begin != nbytes:
            raise error(
                f"data_offsets {quote(offsets)} span {quote(end - begin)} bytes but shape {quote(shape)} of {dtype} "
                f"needs {nbytes}",
                key,
            )
        out[key] = TensorHeader(file, dtype, tuple(shape))
        spans.append((begin, end, key))

    data_bytes = size - 8 - n
    expected = 0
    for begin, end, key in sorted(spans):
        if begin != expected:
            kind = "overlaps the previous tensor" if begin < expected else "leaves a gap after the previous tensor"
            raise error(
                f"its data starts at byte {quote(begin)} of the data section, expected {expected}: it {kind}", key
            )
        if end > data_bytes:
            raise error(
                f"its data ends at byte {quote(end)} of the data section, which holds only {data_bytes} bytes "
                "(the file is truncated)",
                key,
            )
        expected = end
    if expected != data_bytes:
        raise error(f"{data_bytes - expected} unexpected bytes follow the last tensor's data")
    return out
