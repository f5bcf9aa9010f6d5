"""Lookups and bag reductions in row-wise quantised embedding tables (:class:`~hf_sparse.formats.QRow`): our fused
C++ kernels (``hf_sparse::qrow_lookup`` / ``hf_sparse::qrow_embedding_bag``) where they apply, a pure-PyTorch
reference otherwise.

The kernels dequantise only the rows they read, straight into the float32 output (a table is never expanded as a
whole), prefetch the rows of upcoming lookups and split the bags over threads. They are inference-only: a call that
needs a gradient (``per_sample_weights`` that require grad) runs the reference, which is differentiable with respect
to ``per_sample_weights``. The references are also the test oracle.

Where this torch build has FBGEMM's row-wise ops (``torch.ops.quantized.embedding_bag_{4bit,2bit}_rowwise_offsets``)
and they were measured faster than our kernels, sums go through them instead: FBGEMM's 4- and 2-bit rows are our
rows byte for byte (codes low bits first, then a float16 scale and bias), so the table is handed over as it is, with
no copy. Measured on an AMD EPYC Zen 4 core (1M x 64 table, 4,096 lookups, bags of 1 and 8, hot and cold;
``benchmarks/results/embedding-epyc-zen4-1thread.json``): FBGEMM's JIT-compiled kernels 1.2-1.6x faster than ours
at every bit width (ours waits longer on the random rows' page walks). FBGEMM's byte rows hold float32 scales and
biases, so at 8 bits it needs a converted copy of the table ((cols + 8) bytes a row: about 1.06x the qrow table
itself, kept while the table lives); that copy is made only after :func:`qrow_fbgemm_int8_copy` ``(True)``.
Means (FBGEMM's mode 1 does not compute them as ``F.embedding_bag`` does), bags given by user offsets (checked by our
kernel; FBGEMM's op would take disordered ones), a non-contiguous table and weights that need a gradient stay on our
kernel or the reference. :func:`qrow_path` says which path a call takes, :func:`explain_qrow` why.

Errors match ``torch.nn.functional.embedding_bag``'s kinds: an id outside ``[0, rows)`` raises ``IndexError``, bad
offsets, modes or weights raise ``ValueError``, whichever path runs.
"""

from __future__ import annotations

import os
import weakref

import torch

from ..errors import FormatError
from ..formats import Hot, SparseFormat
from ..formats import lookup_rows as format_rows
from ..formats.qrow import QRow, check_id_range, check_ids, dequantize_rows
from . import _loader

__all__ = [
    "qrow_lookup",
    "qrow_embedding_bag",
    "qrow_lookup_reference",
    "qrow_embedding_bag_reference",
    "explain_qrow",
    "qrow_path",
    "qrow_fbgemm_int8_copy",
    "lookup_rows",
]

_ops = torch.ops.hf_sparse
_MODES = {"sum": 0, "mean": 1}
_BACKENDS = ("fbgemm", "cpu", "reference")
#: FBGEMM's row-wise bag op per bit width (the table layout it takes is ours at 4 and 2 bits).
_FBGEMM_OPS = {
    4: "embedding_bag_4bit_rowwise_offsets",
    2: "embedding_bag_2bit_rowwise_offsets",
    8: "embedding_bag_byte_rowwise_offsets",
}
_fbgemm_state: dict = {"int8_copy": False}
#: FBGEMM byte-row copies of 8-bit tables, per values tensor: (its version counter when copied, the copy).
_byte_copies: weakref.WeakKeyDictionary[torch.Tensor, tuple[int, torch.Tensor]] = weakref.WeakKeyDictionary()


def qrow_fbgemm_int8_copy(enabled: bool) -> None:
    """Let 8-bit sums run FBGEMM's byte kernel (``True``) or keep them on ours (``False``, the default).

    FBGEMM's byte rows hold float32 scales and biases, so the first such call on a table builds and keeps a copy of
    it in that layout: rows x (cols + 8) bytes, about 1.06x the qrow table at 64 columns (the values are the same:
    float16 to float32 is exact)."""
    _fbgemm_state["int8_copy"] = bool(enabled)


def _fbgemm_op(bits: int):
    """FBGEMM's bag op for ``bits`` in this torch build, or None."""
    key = f"op{bits}"
    if key not in _fbgemm_state:
        try:
            _fbgemm_state[key] = getattr(torch.ops.quantized, _FBGEMM_OPS[bits])
        except (AttributeError, RuntimeError):
            _fbgemm_state[key] = None
    return _fbgemm_state[key]


def _fbgemm_table(table: QRow) -> torch.Tensor:
    """The table as FBGEMM's op reads it: ``values`` itself at 4 and 2 bits; at 8 bits the cached byte-row copy."""
    if table.bits != 8:
        return table.values
    values = table.values
    hit = _byte_copies.get(values)
    if hit is not None and hit[0] == values._version:
        return hit[1]
    cols = table.shape[1]
    scale = table.scales().float().reshape(-1, 1)
    bias = table.biases().float().reshape(-1, 1)
    copy = torch.cat([values[:, :cols], torch.cat([scale, bias], 1).view(torch.uint8)], 1).contiguous()
    _byte_copies[values] = (values._version, copy)
    return copy


# --- argument checks shared by both paths -------------------------------------------------------------------------


def _check_table(table: QRow, op: str) -> None:
    if not isinstance(table, QRow):
        raise FormatError(f"{op} needs a qrow table (hf_sparse.formats.QRow), got {type(table).__name__}.")


def _bag_args(
    table: QRow,
    ids: torch.Tensor,
    offsets: torch.Tensor | None,
    mode: str,
    per_sample_weights: torch.Tensor | None,
    include_last_offset: bool,
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None, bool]:
    """(1-D ids, offsets, mode number, 1-D float32 weights or None, include_last_offset), as the op takes them."""
    op = "qrow_embedding_bag"
    _check_table(table, op)
    check_ids(ids, op)
    if mode not in _MODES:
        raise ValueError(f"{op}: mode must be one of {list(_MODES)}, got {mode!r}.")
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(f"{op}: per_sample_weights are only supported with mode 'sum', got mode {mode!r}.")
        if not isinstance(per_sample_weights, torch.Tensor) or not per_sample_weights.is_floating_point():
            raise TypeError(f"{op}: per_sample_weights must be a floating-point tensor.")
        if tuple(per_sample_weights.shape) != tuple(ids.shape):
            raise ValueError(
                f"{op}: per_sample_weights must have the shape of ids {tuple(ids.shape)}, got "
                f"{tuple(per_sample_weights.shape)}."
            )
    if ids.dim() == 2:  # (bags, bag_size): fixed-size bags, as F.embedding_bag takes them
        if offsets is not None:
            raise ValueError(f"{op}: offsets must be None when ids is 2-D (each row of ids is a bag).")
        bags, size = ids.shape
        offsets = torch.arange(0, max(bags * size, 1) if bags else 0, max(size, 1), dtype=ids.dtype, device=ids.device)
        offsets = offsets if size else torch.zeros(bags, dtype=ids.dtype, device=ids.device)
        ids, include_last_offset = ids.reshape(-1), False
        per_sample_weights = per_sample_weights.reshape(-1) if per_sample_weights is not None else None
    elif ids.dim() == 1:
        if offsets is None:
            raise ValueError(f"{op}: 1-D ids need offsets (each bag's start).")
        check_ids(offsets, op, "offsets")
        if offsets.dim() != 1:
            raise ValueError(f"{op}: offsets must be 1-D, got shape {tuple(offsets.shape)}.")
    else:
        raise ValueError(f"{op}: ids must be 1-D (with offsets) or 2-D (bags, bag_size), got {tuple(ids.shape)}.")
    if per_sample_weights is not None:
        per_sample_weights = per_sample_weights.to(torch.float32)
    return ids, offsets, _MODES[mode], per_sample_weights, bool(include_last_offset)


def _bag_bounds(offsets: torch.Tensor, n: int, include_last_offset: bool, op: str) -> torch.Tensor:
    """int64 (bags + 1,) bag boundaries, after the checks the kernel makes (ValueError)."""
    off = offsets.to(torch.int64)
    if include_last_offset and off.numel() == 0:
        raise ValueError(f"{op}: include_last_offset needs at least one offset (the end of the last bag).")
    if off.numel():
        if int(off[0]) != 0:
            raise ValueError(
                f"{op}: offsets[0] must be 0 (the first bag starts at the first index), got {int(off[0])}."
            )
        steps = off[1:] < off[:-1]
        if bool(steps.any()):
            b = int(torch.nonzero(steps)[0]) + 1
            raise ValueError(
                f"{op}: offsets must be non-decreasing, got offsets[{b - 1}] = {int(off[b - 1])} > "
                f"offsets[{b}] = {int(off[b])}."
            )
        if int(off[-1]) > n:
            raise ValueError(f"{op}: offsets[{off.numel() - 1}] = {int(off[-1])} is past the end of the {n} indices.")
        if include_last_offset and int(off[-1]) != n:
            raise ValueError(
                f"{op}: with include_last_offset the last offset must equal the number of indices ({n}), got "
                f"{int(off[-1])}."
            )
    if include_last_offset:
        return off
    return torch.cat([off, off.new_tensor([n])])


# --- references (the fallback and the test oracle) ---------------------------------------------------------------


def _dequantize_rows(table: QRow, ids: torch.Tensor) -> torch.Tensor:
    """float32 (n, cols): ``codes * scale + bias`` of the rows ``ids`` (1-D int64), exactly as the kernels round."""
    return dequantize_rows(table.values[ids], table.bits, table.shape[1])


def qrow_lookup_reference(table: QRow, ids: torch.Tensor) -> torch.Tensor:
    """The rows ``ids`` of a qrow table, in plain PyTorch.

    Shapes:
        table: (rows, cols) qrow. ids: (...) int32/int64. Returns: (..., cols) float32.
    """
    _check_table(table, "qrow_lookup")
    return table.lookup(ids)


def qrow_embedding_bag_reference(
    table: QRow,
    ids: torch.Tensor,
    offsets: torch.Tensor | None = None,
    *,
    mode: str = "sum",
    per_sample_weights: torch.Tensor | None = None,
    include_last_offset: bool = False,
) -> torch.Tensor:
    """``F.embedding_bag`` over a qrow table, in plain PyTorch (differentiable in ``per_sample_weights``).

    Shapes: as :func:`qrow_embedding_bag`.
    """
    op = "qrow_embedding_bag"
    ids, offsets, mode_id, weights, last = _bag_args(
        table, ids, offsets, mode, per_sample_weights, include_last_offset
    )
    bounds = _bag_bounds(offsets, ids.numel(), last, op)
    check_id_range(ids, table.shape[0], op)
    bags, cols = bounds.numel() - 1, table.shape[1]
    counts = torch.diff(bounds)
    flat = ids.to(torch.int64)
    rows = _dequantize_rows(table, flat)
    if weights is not None:
        rows = rows * weights.unsqueeze(1)
    bag_of = torch.repeat_interleave(
        torch.arange(bags, device=rows.device), counts.to(rows.device), output_size=len(flat)
    )
    out = rows.new_zeros(bags, cols).index_add(0, bag_of, rows)
    if mode_id == 1:
        out = out / counts.clamp_min(1).to(out).unsqueeze(1)
    return out


# --- dispatch -------------------------------------------------------------------------------------------------------


def _fbgemm_reasons(table: QRow, mode_id: int) -> list[str]:
    why = []
    if os.environ.get("HF_SPARSE_QROW_FBGEMM") == "0":
        why.append("disabled by HF_SPARSE_QROW_FBGEMM=0")
    if _fbgemm_op(table.bits) is None:
        why.append(f"this torch build has no torch.ops.quantized.{_FBGEMM_OPS[table.bits]}")
    if mode_id != 0:
        why.append("FBGEMM's row-wise ops take sums only here (their mode 1 is not F.embedding_bag's mean)")
    if table.bits == 8 and not _fbgemm_state["int8_copy"]:
        why.append("8-bit rows need FBGEMM's float32-scale copy of the table; see qrow_fbgemm_int8_copy(True)")
    if not table.values.is_contiguous():
        why.append("the table's rows are not contiguous")
    return why


def explain_qrow(
    table: QRow, ids: torch.Tensor, per_sample_weights: torch.Tensor | None = None, *, mode: str = "sum"
) -> dict[str, list]:
    """For each backend (``"fbgemm"``, ``"cpu"``, ``"reference"``), why it cannot run a lookup in ``table`` (empty:
    it can). The first one that can is the one a call without ``backend`` takes (:func:`qrow_path`)."""
    why = []
    devices = {t.device.type for t in (table.values, ids)}
    if devices != {"cpu"}:
        why.append(f"the table and ids must be on the CPU, got {sorted(devices)}")
    if per_sample_weights is not None and per_sample_weights.requires_grad and torch.is_grad_enabled():
        why.append("per_sample_weights require grad and the kernel has no gradient formula")
    fbgemm = list(why) + _fbgemm_reasons(table, _MODES.get(mode, -1))
    if not _loader.load():
        why.append(f"the C++ ops are not available: {_loader.status()['reason']}")
    return {"fbgemm": fbgemm, "cpu": why, "reference": []}


def qrow_path(
    table: QRow, ids: torch.Tensor, per_sample_weights: torch.Tensor | None = None, *, mode: str = "sum"
) -> str:
    """The backend a lookup or bag call without ``backend`` takes: ``"fbgemm"``, ``"cpu"`` or ``"reference"``.

    FBGEMM takes lookups (:func:`qrow_lookup`) and fixed-size bags (2-D ids); bags given by 1-D ids and offsets run
    our kernel, which checks the offsets (``qrow_path`` of 1-D ids describes the 2-D / lookup case)."""
    why = explain_qrow(table, ids, per_sample_weights, mode=mode)
    return next(name for name in _BACKENDS if not why[name])


def _choose(table: QRow, ids: torch.Tensor, weights: torch.Tensor | None, mode_id: int, backend: str | None, op: str):
    if backend is None:
        # The common case, on every lookup: the same conditions as explain_qrow's, without building the reasons
        # (this runs per call, and a lookup of a few rows takes microseconds).
        if not (
            ids.is_cpu
            and table.values.is_cpu
            and (weights is None or not (weights.requires_grad and torch.is_grad_enabled()))
        ):
            return "reference"
        if (
            mode_id == 0
            and (table.bits != 8 or _fbgemm_state["int8_copy"])
            and _fbgemm_op(table.bits) is not None
            and table.values.is_contiguous()
            and os.environ.get("HF_SPARSE_QROW_FBGEMM") != "0"
        ):
            return "fbgemm"
        return "cpu" if _loader.load() else "reference"
    if backend not in _BACKENDS:
        raise FormatError(f"{op}: unknown backend {backend!r}; choose one of {list(_BACKENDS)}.")
    if backend == "reference":
        return backend
    why = explain_qrow(table, ids, weights, mode={v: k for k, v in _MODES.items()}[mode_id])[backend]
    if why:
        raise FormatError(f"{op}: backend {backend!r} cannot run this input: " + "; ".join(why) + ".")
    return backend


def _fbgemm_bag(table, flat, bounds, weights, last):
    """FBGEMM's sum; an error there (an id out of range: FBGEMM raises RuntimeError) reruns our kernel or the
    reference, which raise the documented IndexError / ValueError."""
    try:
        return _fbgemm_op(table.bits)(
            _fbgemm_table(table), flat, bounds, mode=0, per_sample_weights=weights, include_last_offset=last
        )
    except RuntimeError:
        if _loader.load():
            return _ops.qrow_embedding_bag(table.values, table.bits, table.shape[1], flat, bounds, 0, weights, last)
        bags = bounds if last else torch.cat([bounds, bounds.new_tensor([flat.numel()])])
        return qrow_embedding_bag_reference(table, flat, bags, per_sample_weights=weights, include_last_offset=True)


def qrow_lookup(table: QRow, ids: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """The rows ``ids`` of a qrow table, dequantised (``F.embedding`` on the float table, without building it).

    Args:
        backend: ``"fbgemm"``, ``"cpu"`` (our kernel) or ``"reference"`` to insist on one (default: the first that
            applies, in that order; :func:`qrow_path`).

    Shapes:
        table: (rows, cols) qrow. ids: (...) int32/int64. Returns: (..., cols) float32.

    Raises:
        IndexError: an id is outside ``[0, rows)``. TypeError: ids are not int32/int64.
    """
    _check_table(table, "qrow_lookup")
    check_ids(ids, "qrow_lookup")
    path = _choose(table, ids, None, 0, backend, "qrow_lookup")
    if path == "reference":
        return qrow_lookup_reference(table, ids)
    flat = ids.reshape(-1)
    if path == "fbgemm":
        try:
            out = _fbgemm_op(table.bits)(_fbgemm_table(table), flat, torch.arange(flat.numel(), dtype=flat.dtype))
        except RuntimeError:
            if not _loader.load():
                return qrow_lookup_reference(table, ids)
            out = _ops.qrow_lookup(table.values, table.bits, table.shape[1], flat)
        return out.reshape(*ids.shape, table.shape[1])
    out = _ops.qrow_lookup(table.values, table.bits, table.shape[1], flat)
    return out.reshape(*ids.shape, table.shape[1])


def qrow_embedding_bag(
    table: QRow,
    ids: torch.Tensor,
    offsets: torch.Tensor | None = None,
    *,
    mode: str = "sum",
    per_sample_weights: torch.Tensor | None = None,
    include_last_offset: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """``torch.nn.functional.embedding_bag`` over a qrow table: the sum or mean of each bag of rows.

    Args:
        ids: the row ids; 1-D with ``offsets``, or 2-D ``(bags, bag_size)`` without (each row a bag).
        offsets: each bag's start (``offsets[0] = 0``, non-decreasing; the last bag ends at the last id), or with
            ``include_last_offset=True`` one more entry, the end of the last bag, which must equal ``len(ids)``.
            int32 or int64.
        mode: ``"sum"`` or ``"mean"`` (an empty bag gives zeros in both).
        per_sample_weights: one weight per id, multiplied into its row before the sum (mode ``"sum"`` only).
        backend: ``"fbgemm"``, ``"cpu"`` or ``"reference"`` to insist on one (default: the first that applies, in
            that order; :func:`qrow_path`).

    Shapes:
        table: (rows, cols) qrow. ids: (n,) or (bags, bag_size). offsets: (bags,) or (bags + 1,).
        per_sample_weights: like ids. Returns: (bags, cols) float32.

    Raises:
        IndexError: an id is outside ``[0, rows)``. ValueError: bad offsets, mode or per_sample_weights.
    """
    flat, bounds, mode_id, weights, last = _bag_args(
        table, ids, offsets, mode, per_sample_weights, include_last_offset
    )
    path = _choose(table, flat, weights, mode_id, backend, "qrow_embedding_bag")
    if path == "fbgemm" and ids.dim() == 1 and backend == "fbgemm":
        _bag_bounds(
            bounds, flat.numel(), last, "qrow_embedding_bag"
        )  # asked for by name: check them here (ValueError)
    if path == "fbgemm" and (ids.dim() == 2 or backend == "fbgemm"):
        # Fixed-size bags: the offsets are ours, in order. User offsets go to our kernel, which checks them in C++
        # (FBGEMM's op takes a first offset other than 0 or decreasing offsets without a word, and checking them in
        # Python costs ~6 us a call, a quarter of a 4,096-lookup call).
        return _fbgemm_bag(table, flat, bounds, weights, last)
    if path != "reference" and _loader.load():
        return _ops.qrow_embedding_bag(table.values, table.bits, table.shape[1], flat, bounds, mode_id, weights, last)
    return qrow_embedding_bag_reference(
        table,
        ids,
        offsets,
        mode=mode,
        per_sample_weights=per_sample_weights,
        include_last_offset=include_last_offset,
    )


def lookup_rows(fmt: SparseFormat, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (1-D, int64) of any format, with our kernels where they apply: a qrow table through
    :func:`qrow_lookup`, each part of a hot/cold split through this function, any other format as
    :func:`hf_sparse.formats.lookup_rows` reads it (its own ``lookup``, else its dense rows)."""
    if isinstance(fmt, QRow):
        return qrow_lookup(fmt, ids)
    if isinstance(fmt, Hot):
        return fmt.lookup(ids, rows_of=lookup_rows)
    return format_rows(fmt, ids)
