"""``W @ Xt`` for every storage format: our C++ kernels where they apply, a pure-PyTorch reference otherwise.

The dense operand is transposed, ``Xt`` of shape (K, N): the kernels run their inner loops over N, which is
contiguous. ``spmm`` picks a backend and can say why it did not take another (:func:`explain`); naming a backend
that cannot take the input raises with every reason.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import FormatError
from ..formats import (
    BSR,
    COO,
    CSC,
    CSR,
    NM,
    QBSR,
    QCSR,
    QNM,
    Bitmask,
    Full,
    Hybrid,
    LowRank,
    LowRankSparse,
    QDense,
    SparseFormat,
)
from . import _loader

__all__ = [
    "spmm",
    "spmm_reference",
    "sparse_linear",
    "spmm_csr",
    "spmm_csr_reference",
    "dequantize_weight",
    "dynamic_int8_linear",
    "explain",
    "BACKENDS",
]

_ops = torch.ops.hf_sparse
#: The widest input the integer kernels take: 255 * 128 * cols must fit in int32 (kernels/csrc/cpu/int8_dot.h).
_MAX_INT8_COLS = 65536


# --- references (the fallback path and the test oracle; differentiable through plain torch ops) -----------------


def _rows_of(crow: torch.Tensor, nnz: int) -> torch.Tensor:
    counts = torch.diff(crow.to(torch.int64))
    return torch.repeat_interleave(torch.arange(counts.numel(), device=crow.device), counts, output_size=nnz)


def _scatter_rows(rows: int, row_of: torch.Tensor, col_of: torch.Tensor, values: torch.Tensor, xt: torch.Tensor):
    out = xt.new_zeros(rows, xt.shape[1])
    return out.index_add(0, row_of, values.to(xt.dtype).unsqueeze(1) * xt[col_of])


def spmm_csr_reference(weight: CSR, xt: torch.Tensor) -> torch.Tensor:
    """``weight @ xt`` in plain PyTorch.

    Shapes:
        weight: (rows, cols) CSR. xt: (cols, N). Returns: (rows, N).
    """
    row_of = _rows_of(weight.crow_indices, weight.values.numel())
    return _scatter_rows(weight.shape[0], row_of, weight.col_indices.to(torch.int64), weight.values, xt)


def _bsr_reference(weight: BSR, xt: torch.Tensor) -> torch.Tensor:
    r, c = weight.block
    n = xt.shape[1]
    brow = _rows_of(weight.crow_indices, weight.values.shape[0])
    x_blocks = xt.reshape(weight.shape[1] // c, c, n)[weight.col_indices.to(torch.int64)]
    parts = torch.bmm(weight.values.to(xt.dtype), x_blocks)
    return xt.new_zeros(weight.shape[0] // r, r, n).index_add(0, brow, parts).reshape(weight.shape[0], n)


def _nm_reference(weight: NM, xt: torch.Tensor) -> torch.Tensor:
    rows, width = weight.values.shape
    base = (torch.arange(width, device=xt.device) // weight.n) * weight.m
    cols = (base + weight.indices.to(torch.int64)).reshape(-1)
    row_of = torch.arange(rows, device=xt.device).repeat_interleave(width)
    return _scatter_rows(rows, row_of, cols, weight.values.reshape(-1), xt)


def _hybrid_with(weight: Hybrid, xt: torch.Tensor, sparse_fn) -> torch.Tensor:
    out = xt.new_zeros(weight.shape[0], xt.shape[1])
    if weight.dense_rows.numel():
        out = out.index_copy(0, weight.dense_rows.to(torch.int64), weight.dense_values.to(xt.dtype) @ xt)
    if weight.sparse_rows.numel():
        out = out.index_copy(0, weight.sparse_rows.to(torch.int64), sparse_fn(weight.sparse, xt))
    return out


def spmm_reference(weight: SparseFormat, xt: torch.Tensor) -> torch.Tensor:
    """``weight @ xt`` for any format, in plain PyTorch (differentiable with respect to values and ``xt``).

    Shapes:
        weight: (rows, cols). xt: (cols, N). Returns: (rows, N).
    """
    _check_rhs(weight, xt)
    if isinstance(weight, CSR):
        return spmm_csr_reference(weight, xt)
    if isinstance(weight, CSC):
        col_of = _rows_of(weight.ccol_indices, weight.values.numel())
        return _scatter_rows(weight.shape[0], weight.row_indices.to(torch.int64), col_of, weight.values, xt)
    if isinstance(weight, COO):
        rows, cols = weight.row_indices.to(torch.int64), weight.col_indices.to(torch.int64)
        return _scatter_rows(weight.shape[0], rows, cols, weight.values, xt)
    if isinstance(weight, BSR):
        return _bsr_reference(weight, xt)
    if isinstance(weight, NM):
        return _nm_reference(weight, xt)
    if isinstance(weight, Hybrid):
        return _hybrid_with(weight, xt, spmm_csr_reference)
    if isinstance(weight, Bitmask):
        return weight.to_dense().to(xt.dtype) @ xt
    if isinstance(weight, QCSR):
        row_of = _rows_of(weight.crow_indices, weight.values.numel())
        values = weight.values.to(weight.scales.dtype) * weight.scales[row_of]
        return _scatter_rows(weight.shape[0], row_of, weight.col_indices.to(torch.int64), values, xt)
    if isinstance(weight, QBSR):
        return _bsr_reference(weight._twin(), xt) * weight.scales.to(xt.dtype).unsqueeze(1)
    if isinstance(weight, QNM):
        return _nm_reference(weight._twin(), xt) * weight.scales.to(xt.dtype).unsqueeze(1)
    if isinstance(weight, QDense):
        return weight.to_dense().to(xt.dtype) @ xt
    if isinstance(weight, LowRank):
        return weight.u.to(xt.dtype) @ (weight.v.to(xt.dtype) @ xt)
    if isinstance(weight, LowRankSparse):
        return weight.u.to(xt.dtype) @ (weight.v.to(xt.dtype) @ xt) + spmm(weight.sparse, xt)
    raise FormatError(f"spmm: no reference for format {type(weight).__name__}.")


# --- backends -----------------------------------------------------------------------------------------------------


def _check_rhs(weight: SparseFormat, xt: torch.Tensor) -> None:
    if not isinstance(weight, SparseFormat):
        raise FormatError(f"spmm needs a hf_sparse format as the weight, got {type(weight).__name__}.")
    if not isinstance(xt, torch.Tensor) or xt.dim() != 2 or xt.shape[0] != weight.shape[1]:
        shape = tuple(xt.shape) if isinstance(xt, torch.Tensor) else type(xt).__name__
        raise FormatError(f"spmm: xt must have shape ({weight.shape[1]}, N) for a {weight.shape} weight, got {shape}.")


logger = logging.getLogger(__name__)

# (values, indices) data pointers, shape, dtype -> (weakrefs to both tensors, their versions, torch's semi-structured
# copy, or None where it cannot be made). Keyed by the tensors, not by the format object: a SparseLinear builds a new
# NM view of the same tensors on every call.
_SEMI_STRUCTURED: dict[tuple, tuple] = {}


def _version(t: torch.Tensor) -> int:
    # Inference tensors have no version counter (they cannot be changed in place outside inference mode).
    return 0 if t.is_inference() else t._version


def _semi_structured_2_4(weight: SparseFormat, xt: torch.Tensor) -> torch.Tensor | None:
    """``weight @ xt`` on the sparse tensor cores, for 2:4 float16 / bfloat16 weights on an Ampere or newer GPU:
    torch's semi-structured sparse tensor (cuSPARSELt where torch has it, else CUTLASS), made once per weight and
    cached. None where it does not apply (other shapes, dtypes or devices, gradients needed, or a backend that
    refuses the shape): our CUDA kernel runs instead."""
    if not (xt.is_cuda and type(weight) is NM and (weight.n, weight.m) == (2, 4)):
        return None
    if xt.dtype not in (torch.float16, torch.bfloat16) or weight.dtype != xt.dtype:
        return None
    if torch.is_grad_enabled() and (xt.requires_grad or weight.values.requires_grad):
        return None
    if torch.cuda.get_device_capability(xt.device) < (8, 0):
        return None
    values, indices = weight.values, weight.indices
    key = (values.data_ptr(), indices.data_ptr(), tuple(weight.shape), values.dtype)
    version = (_version(values), _version(indices))
    hit = _SEMI_STRUCTURED.get(key)
    if hit is None or hit[0]() is not values or hit[1]() is not indices or hit[2] != version:
        try:
            from torch.sparse import to_sparse_semi_structured

            packed = to_sparse_semi_structured(weight.to_dense())
        except Exception as exc:  # a shape or dtype the backend refuses: our kernel runs
            logger.debug("2:4 weight %s stays on our kernel: %s", tuple(weight.shape), exc)
            packed = None
        if hit is None or hit[0]() is not values:
            weakref.finalize(values, _SEMI_STRUCTURED.pop, key, None)
        _SEMI_STRUCTURED[key] = hit = (weakref.ref(values), weakref.ref(indices), version, packed)
    if hit[3] is None:
        return None
    try:
        return torch.mm(hit[3], xt)
    except Exception as exc:  # e.g. an N the backend cannot pad
        logger.debug("2:4 product falls back to our kernel: %s", exc)
        return None


def _cpu_kernel(weight: SparseFormat, xt: torch.Tensor, transpose_out: bool = False) -> torch.Tensor:
    rows, cols = weight.shape
    fast = _semi_structured_2_4(weight, xt)
    if fast is not None:
        return fast.t().contiguous() if transpose_out else fast
    if isinstance(weight, CSR):
        return _ops.spmm_csr(weight.crow_indices, weight.col_indices, weight.values, rows, cols, xt, transpose_out)
    if isinstance(weight, BSR):
        return _ops.spmm_bsr(weight.crow_indices, weight.col_indices, weight.values, rows, cols, xt, transpose_out)
    if isinstance(weight, NM):
        return _ops.spmm_nm(weight.values, weight.indices, weight.n, weight.m, cols, xt, transpose_out)
    if isinstance(weight, QCSR):
        return _ops.spmm_qcsr(
            weight.crow_indices, weight.col_indices, weight.values, weight.scales, rows, cols, xt, transpose_out
        )
    if isinstance(weight, QBSR):
        return _ops.spmm_qbsr(
            weight.crow_indices, weight.col_indices, weight.values, weight.scales, rows, cols, xt, transpose_out
        )
    if isinstance(weight, QNM):
        return _ops.spmm_qnm(weight.values, weight.indices, weight.scales, weight.n, weight.m, cols, xt, transpose_out)
    if isinstance(weight, CSC):  # the CSC of W is the CSR of W^T: W @ Xt = (W^T)^T @ Xt
        out = _ops.spmm_csr_t(weight.ccol_indices, weight.row_indices, weight.values, cols, rows, xt)
    elif isinstance(weight, Hybrid):  # dense rows through sgemm, the others through the CSR kernel
        out = _hybrid_with(weight, xt, _cpu_kernel)
    else:
        raise AssertionError("unreachable: formats are checked by the backend's reasons")
    return out.t() if transpose_out else out


@dataclass(frozen=True)
class Backend:
    """A way to run ``spmm``: what it supports, and why it cannot take a given input."""

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    formats: tuple[type, ...]

    def reasons(self, weight: SparseFormat, xt: torch.Tensor) -> list[str]:
        out = []
        if not isinstance(weight, self.formats):
            names = ", ".join(f.name for f in self.formats)
            out.append(f"format {weight.name} is not supported (supported: {names})")
        if xt.device.type not in self.devices:
            out.append(f"device {xt.device.type} is not supported (supported: {', '.join(self.devices)})")
        dtypes = {xt.dtype, weight.dtype}
        if not dtypes <= set(self.dtypes):
            out.append(f"dtypes {sorted(map(str, dtypes))} are not supported ({', '.join(map(str, self.dtypes))})")
        if len(dtypes) > 1 and self.name == "cpu":
            out.append("the weight's values and xt must have the same dtype")
        if self.name == "cpu" and isinstance(weight, (QCSR, QBSR, QNM)) and xt.dtype != torch.float32:
            out.append(f"int8-value {weight.name[1:].upper()} runs in float32 only")
        other = not isinstance(weight, (*_CPU_BF16_FORMATS, QCSR, QBSR, QNM))  # int8 values: their reason is above
        if self.name == "cpu" and torch.bfloat16 in dtypes and other:
            names = ", ".join(f.name for f in _CPU_BF16_FORMATS)
            out.append(f"bfloat16 runs on the CPU kernels for {names} only, not {weight.name}")
        if self.name == "cpu" and not _loader.load():
            out.append(f"the C++ ops are not available: {_loader.status()['reason']}")
        if self.name == "cuda":
            out.extend(_cuda_reasons(weight, xt))
        return out


def _cuda_reasons(weight: SparseFormat, xt: torch.Tensor) -> list[str]:
    """What the CUDA kernels (kernels/csrc/cuda, via binding.cpp) need beyond device / dtype / format."""
    out = []
    quantized = isinstance(weight, (QCSR, QBSR, QNM))
    if quantized and weight.dtype != torch.float32:
        out.append(f"int8-value {weight.name[1:].upper()} needs float32 scales, got {weight.dtype}")
    if not quantized and weight.dtype != xt.dtype:
        out.append(f"the weight's values ({weight.dtype}) and xt ({xt.dtype}) must have the same dtype")
    if isinstance(weight, (BSR, QBSR)) and not set(weight.block) <= {16, 32}:
        out.append(f"block {weight.block[0]}x{weight.block[1]} is not supported (16 or 32 on each side)")
    if isinstance(weight, (CSR, BSR, NM, QCSR, QBSR, QNM)) and weight.values.device != xt.device:
        out.append(f"the weight is on {weight.values.device} but xt is on {xt.device}")
    if xt.device.type == "cuda" and not out and not _loader.load_cuda():  # only now: loading may build (minutes)
        out.append(f"the CUDA ops are not available: {_loader.cuda_status()}")
    return out


#: Formats whose CPU kernels take bfloat16 values with a bfloat16 dense operand (float32 sums, one rounding per
#: result). The int8-value formats compute in float32; CSC runs on the transposed (backward) kernel, float only.
_CPU_BF16_FORMATS = (CSR, BSR, NM, Hybrid)

BACKENDS: tuple[Backend, ...] = (
    Backend(
        "cpu", ("cpu",), (torch.float32, torch.float64, torch.bfloat16), (CSR, CSC, BSR, NM, Hybrid, QCSR, QBSR, QNM)
    ),
    Backend("cuda", ("cuda",), (torch.float16, torch.bfloat16, torch.float32), (CSR, BSR, NM, QCSR, QBSR, QNM)),
    Backend(
        "reference",
        ("cpu", "cuda", "meta", "mps", "xpu"),
        (torch.float16, torch.bfloat16, torch.float32, torch.float64),
        (CSR, CSC, COO, BSR, NM, Hybrid, Bitmask, QCSR, QBSR, QNM, QDense, LowRank, LowRankSparse),
    ),
)

_CUDA = next(b for b in BACKENDS if b.name == "cuda")


def explain(weight: SparseFormat, xt: torch.Tensor) -> dict[str, list[str]]:
    """For each backend, why it cannot run ``weight @ xt`` (an empty list: it can)."""
    _check_rhs(weight, xt)
    return {b.name: b.reasons(weight, xt) for b in BACKENDS}


def spmm(
    weight: SparseFormat, xt: torch.Tensor, *, transpose_out: bool = False, backend: str | None = None
) -> torch.Tensor:
    """``weight @ xt`` with the first backend that can take it (our C++ kernels, then the PyTorch reference).

    Gradients flow to the format's floating-point tensors and to ``xt``; pruned positions get none.

    Args:
        transpose_out: return ``(weight @ xt)^T``, shape (N, rows) — what a Linear layer returns; the kernels
            write it directly, which saves a transpose pass over the output.
        backend: ``"cpu"``, ``"cuda"`` or ``"reference"`` to insist on one (default: the first that applies).

    Shapes:
        weight: (rows, cols) in any hf_sparse format. xt: (cols, N). Returns: (rows, N), or (N, rows).

    Raises:
        FormatError: ``xt`` has the wrong shape, or the named ``backend`` cannot take the input (with its reasons).
    """
    _check_rhs(weight, xt)
    if backend is not None:
        chosen = [b for b in BACKENDS if b.name == backend]
        if not chosen:
            raise FormatError(f"spmm: unknown backend {backend!r}; choose one of {[b.name for b in BACKENDS]}.")
        why = chosen[0].reasons(weight, xt)
        if why:
            raise FormatError(f"spmm: backend {backend!r} cannot run this input: " + "; ".join(why) + ".")
        use_kernel = backend in ("cpu", "cuda")
    else:  # the first kernel backend that takes the input (cpu and cuda never both do: devices differ)
        use_kernel = any(not b.reasons(weight, xt) for b in BACKENDS if b.name != "reference")
    if use_kernel:  # the same hf_sparse:: ops; the dispatcher picks the CPU or CUDA impl by device
        return _cpu_kernel(weight, xt, transpose_out)
    out = spmm_reference(weight, xt)
    return out.t() if transpose_out else out


def sparse_linear(weight: SparseFormat, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a sparse ``weight``.

    Shapes:
        weight: (out, in). x: (..., in). bias: (out,). Returns: (..., out).
    """
    rows, cols = weight.shape
    if x.shape[-1] != cols:
        raise FormatError(f"sparse_linear: expected inputs with last dimension {cols}, got shape {tuple(x.shape)}.")
    if isinstance(weight, (LowRank, LowRankSparse)):
        # Two thin GEMMs: (N, in) x (in, r) then (N, r) x (r, out); the sparse residual through its own kernel.
        y = F.linear(F.linear(x, weight.v.to(x.dtype)), weight.u.to(x.dtype), bias)
        if isinstance(weight, LowRankSparse):
            y = y + sparse_linear(weight.sparse, x)
        return y
    if isinstance(weight, Full):  # dense in the values' dtype (e.g. a bf16 layer in a float32 model)
        v = weight.values
        b = bias.to(v.dtype) if bias is not None else None
        return F.linear(x.to(v.dtype), v, b).to(x.dtype)
    fast = dynamic_int8_linear(weight, x, bias)  # int8 codes x per-token int8 inputs on integer kernels
    if fast is not None:
        return fast
    if getattr(weight, "activation", None) is not None:  # input quantisation the weight records, simulated
        x = weight.quantize_input(x)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cols).to(weight.dtype)
    if isinstance(weight, (QCSR, QBSR)):
        x2 = x.reshape(-1, cols)  # int8 values: x keeps its dtype (the CUDA kernels take float16/bfloat16 too)
        if x2.device.type != "cuda":
            x2 = x2.to(weight.dtype)
    # float32 CSR / QCSR, and bfloat16 CSR (a model cast to bfloat16) take the Linear-layout kernels.
    linear_dtypes = (torch.float32, torch.bfloat16) if isinstance(weight, CSR) else (torch.float32,)
    fast = (
        isinstance(weight, (CSR, QCSR))
        and x2.dtype in linear_dtypes
        and x2.device.type == "cpu"
        and weight.dtype == x2.dtype
        and weight.values.device.type == "cpu"
        and _loader.load()
    ) or (isinstance(weight, (CSR, QCSR)) and x2.device.type == "cuda" and not _CUDA.reasons(weight, x2))
    if fast:
        # The Linear-layout kernels read X (N, in) as it is: no transposed copy of the input.
        if isinstance(weight, QCSR):
            y = _ops.linear_qcsr(
                weight.crow_indices, weight.col_indices, weight.values, weight.scales, rows, cols, x2.contiguous()
            )
        else:
            y = _ops.linear_csr(weight.crow_indices, weight.col_indices, weight.values, rows, cols, x2.contiguous())
        if bias is not None:
            y = y.add_(bias.to(y.dtype))
        return y.reshape(*lead, rows).to(x.dtype)
    xt = x2.t().contiguous()  # (in, N): N is the kernels' fast axis
    y = spmm(weight, xt, transpose_out=True)
    if bias is not None:
        y = y.add_(bias.to(y.dtype))  # y is a fresh output: adding in place saves a pass over it
    return y.reshape(*lead, rows).to(x.dtype)


def dynamic_int8_linear(
    weight: SparseFormat, x: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """``F.linear(quantize_input(x), weight, bias)`` with integer arithmetic, for a ``qbsr`` weight that records
    dynamic input quantisation (``activation="dynamic"``) in blocks ``r x c`` with ``c`` a multiple of 4 (1 x 4 is
    the VNNI-friendly shape): each token is quantised to 8 bits in C++ and multiplied with the int8 codes by integer
    dot products (AVX-512 VNNI / AVX-VNNI where the CPU has them; 16 x 64k blocks on AMX tiles where those are in
    use: ``kernel_status()["amx"]`` says so and counts their calls). The result equals the simulated path (round
    the input to its grid, multiply in float) up to float rounding.

    Returns None where this path does not apply (another format or activation, a non-CPU or non-float32 input, a
    gradient to compute, no C++ ops), so the caller takes the general path.

    Shapes:
        weight: (out, in). x: (..., in). bias: (out,). Returns: (..., out).
    """
    if not isinstance(weight, QBSR) or weight.activation != "dynamic" or weight.block[1] % 4:
        return None
    rows, cols = weight.shape
    if x.shape[-1] != cols:
        raise FormatError(f"sparse_linear: expected inputs with last dimension {cols}, got shape {tuple(x.shape)}.")
    tensors = (x, weight.values, weight.scales, *(() if bias is None else (bias,)))
    if (
        any(t.device.type != "cpu" for t in tensors)
        or x.dtype != torch.float32
        or weight.scales.dtype != torch.float32
    ):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    if cols > _MAX_INT8_COLS or not _loader.load():
        return None
    b = None if bias is None else bias.to(torch.float32)
    x2 = x.reshape(-1, cols).contiguous()
    y = _ops.linear_qbsr_dyn(weight.crow_indices, weight.col_indices, weight.values, weight.scales, b, rows, cols, x2)
    return y.reshape(*x.shape[:-1], rows)


def spmm_csr(weight: CSR, xt: torch.Tensor) -> torch.Tensor:
    """``weight @ xt`` for a CSR weight (see :func:`spmm`).

    Shapes:
        weight: (rows, cols) CSR. xt: (cols, N). Returns: (rows, N).
    """
    if not isinstance(weight, CSR):
        raise FormatError(f"spmm_csr needs a CSR weight, got {type(weight).__name__}.")
    return spmm(weight, xt)


def dequantize_weight(weight: QDense) -> torch.Tensor:
    """The float weight of a ``qdense`` format: our one-pass C++ kernel on the CPU (float32 scales, no gradient
    needed), else :meth:`~hf_sparse.formats.QDense.to_dense`.

    Shapes:
        weight: (rows, cols) qdense. Returns: (rows, cols) in the scales' dtype.
    """
    if not isinstance(weight, QDense):
        raise FormatError(f"dequantize_weight needs a qdense weight, got {type(weight).__name__}.")
    s = weight.scales
    usable = (
        s.device.type == "cpu"
        and s.dtype == torch.float32
        and not (torch.is_grad_enabled() and s.requires_grad)
        and _loader.load()
    )
    if not usable:
        return weight.to_dense()
    zero = weight.zero_points if weight.zero_points is not None else torch.empty(0, dtype=torch.int8)
    rows, cols = weight.shape
    return _ops.dequantize(weight.values, s, zero, weight.bits, rows, cols)
