"""Direct calls of every ``hf_sparse::`` C++ op with random malformed arguments, and the sanitizer build to run them.

Each call starts from a valid random call of the op and, most of the time, breaks one or two things in it: a tensor's
dtype, rank, length or contiguity, an entry of an index or pointer tensor (negative, past the end, huge, out of
order), an integer argument (negative, zero, off by one, huge), an empty tensor, a missing optional tensor. The raw
argument references below hold each op's contract (what it must accept) and compute its result in plain PyTorch, in
float64 and without the kernels. A call then has one of four outcomes:

- the reference accepts and the kernel returns: the results must agree (``matched``);
- the reference refuses and the kernel raises: the message must name the op and one of its arguments (``raised``);
- the reference accepts and the kernel raises: allowed only when the result cannot be allocated (``too_large``);
- the reference refuses and the kernel returns: a malformed call silently accepted, a failure.

Crashes, hangs and memory are watched from outside: :func:`run_worker` runs the calls in a subprocess (a crash is
its exit status, a hang its timeout) that records the case it is about to run, so a crash names it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MAX_DIM = 1 << 40  # the C++ ops' bound on every size argument (kernels/csrc/cpu/checks.h)
# Results at most this large are computed by the references; a valid call asking for more must fail to allocate.
REF_LIMIT = 1 << 24

# -- the sanitizer build -------------------------------------------------------------------------------------------

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def _runtime(name: str) -> str | None:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return None
    out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


def preload() -> str | None:
    """LD_PRELOAD for a python that loads the sanitizer build: gcc's ASan runtime, which must come first, and
    libstdc++ right after it. (Without libstdc++ preloaded, ASan's interceptor of __cxa_throw finds no real function
    to call, since python itself does not link libstdc++, and the first C++ exception aborts the process.)"""
    asan, cxx = _runtime("libasan.so"), _runtime("libstdc++.so.6")
    return f"{asan} {cxx}" if asan and cxx else None


def sanitized_build_dir() -> Path:
    from hf_sparse.ops import _loader

    digest = hashlib.sha256(f"{torch.__version__} {' '.join(_loader.cpu_flags() + SANITIZE)}".encode())
    for src in [*_loader._sources(), *_loader._headers()]:
        digest.update(src.read_bytes())
    base = Path(os.environ.get("HF_SPARSE_CACHE", Path.home() / ".cache" / "hf_sparse"))
    return base / "torch_extensions" / f"cpu-asan-{digest.hexdigest()[:16]}"


def build_sanitized() -> Path:
    """Builds the CPU ops with AddressSanitizer and UBSan into their own cached folder (never the normal build's) and
    returns the shared library. Compiled by the compiler directly, not by ``cpp_extension.load``: that would load
    the library into this process, where the ASan runtime is not first and refuses to start."""
    from torch.utils import cpp_extension

    from hf_sparse.ops import _loader

    folder = sanitized_build_dir()
    lib = folder / "hf_sparse_cpu_asan.so"
    if lib.exists():
        return lib
    work = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cxx = os.environ.get("CXX", "c++")
    includes = [f"-isystem{p}" for p in cpp_extension.include_paths()]
    flags = ["-std=c++20", "-fPIC", "-O1", "-g", *SANITIZE, *_loader.cpu_flags(), "-fopenmp", *includes]
    objects, procs = [], []
    for src in _loader._sources():
        obj = work / f"{src.stem}.o"
        objects.append(obj)
        procs.append(subprocess.Popen([cxx, *flags, "-c", str(src), "-o", str(obj)], stderr=subprocess.PIPE))
        if len(procs) >= 2:  # two cores
            _wait(procs.pop(0))
    for proc in procs:
        _wait(proc)
    libs = [f"-L{p}" for p in cpp_extension.library_paths()]
    link = [cxx, "-shared", *SANITIZE, "-fopenmp", *map(str, objects), *libs, "-lc10", "-ltorch_cpu", "-ltorch"]
    _wait(subprocess.Popen([*link, "-o", str(work / lib.name)], stderr=subprocess.PIPE))
    folder.mkdir(parents=True, exist_ok=True)
    os.replace(work / lib.name, lib)
    shutil.rmtree(work, ignore_errors=True)
    return lib


def _wait(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"sanitizer build failed: {' '.join(proc.args[:3])}...\n{err.decode()[-3000:]}")


# -- the contract: references that refuse what the kernels must refuse ---------------------------------------------


class Refused(Exception):
    """The reference's verdict: the call is malformed (the kernel must raise)."""


class TooLarge(Exception):
    """A valid call whose result the reference does not build (the kernel must fail to allocate it)."""


def need(ok, why: str) -> None:
    if not bool(ok):
        raise Refused(why)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def size_arg(v, name: str) -> int:
    need(is_int(v) and 0 <= v < MAX_DIM, f"{name} out of range")
    return v


def tensor(t, name: str, dtypes, ndim: int | None = None) -> torch.Tensor:
    need(isinstance(t, torch.Tensor), f"{name} not a tensor")
    need(t.dtype in dtypes, f"{name} dtype")
    need(ndim is None or t.dim() == ndim, f"{name} rank")
    return t


def small(*shape: int) -> None:
    if math.prod(shape) > REF_LIMIT:
        raise TooLarge(f"result {shape}")


FLOATS = (torch.float32, torch.float64)
# The forward products of the float formats (spmm_csr, linear_csr, spmm_bsr, spmm_nm) also take bfloat16 values with
# a bfloat16 dense operand: float32 sums, each result rounded to bfloat16 once (compared with a bf16 tolerance).
FLOATS_BF16 = (*FLOATS, torch.bfloat16)
INDEX = (torch.int16, torch.int32)


def pointers(ptr: torch.Tensor, name: str, count: int, end: int) -> torch.Tensor:
    """int64 copy of a pointer array of count + 1 entries from 0 to end, non-decreasing."""
    tensor(ptr, name, (torch.int32,), 1)
    need(ptr.numel() == count + 1, f"{name} length")
    p = ptr.to(torch.int64)
    need(p[0] == 0 and p[-1] == end and bool((p.diff() >= 0).all()), f"{name} values")
    return p


def in_range(idx: torch.Tensor, bound: int, name: str) -> torch.Tensor:
    i = idx.to(torch.int64)
    need(bool(((i >= 0) & (i < bound)).all()), f"{name} out of range")
    return i


def csr(crow, col, rows, cols):
    size_arg(rows, "rows")
    size_arg(cols, "cols")
    tensor(col, "col", INDEX, 1)
    p = pointers(crow, "crow", rows, col.numel())
    return torch.repeat_interleave(torch.arange(rows), p.diff()), in_range(col, cols, "col")


def gather_rows(out_rows: int, row_of, col_of, vals, x):
    """out[r] = sum over entries e of row r: vals[e] * x[col_of[e]] (float64; memory: entries x N and the result)."""
    small(out_rows, x.shape[1])
    out = torch.zeros(out_rows, x.shape[1], dtype=torch.float64)
    return out.index_add_(0, row_of, vals.double().unsqueeze(1) * x.double()[col_of])


def maybe_t(y, transpose_out):
    need(isinstance(transpose_out, bool), "transpose_out")
    return y.t() if transpose_out else y


def ref_spmm_csr(crow, col, values, rows, cols, xt, transpose_out=False):
    row_of, col_of = csr(crow, col, rows, cols)
    tensor(xt, "xt", FLOATS_BF16, 2)
    need(xt.shape[0] == cols, "xt rows")
    tensor(values, "values", (xt.dtype,), 1)
    need(values.numel() == col.numel(), "values length")
    return maybe_t(gather_rows(rows, row_of, col_of, values, xt), transpose_out), xt.dtype


def ref_spmm_csr_t(crow, col, values, rows, cols, yt):
    row_of, col_of = csr(crow, col, rows, cols)
    tensor(yt, "yt", FLOATS, 2)
    need(yt.shape[0] == rows, "yt rows")
    tensor(values, "values", (yt.dtype,), 1)
    need(values.numel() == col.numel(), "values length")
    return gather_rows(cols, col_of, row_of, values, yt), yt.dtype


def ref_sddmm_csr(crow, col, rows, cols, yt, xt):
    row_of, col_of = csr(crow, col, rows, cols)
    tensor(yt, "yt", FLOATS, 2)
    tensor(xt, "xt", (yt.dtype,), 2)
    need(yt.shape[0] == rows and xt.shape[0] == cols and yt.shape[1] == xt.shape[1], "yt / xt shapes")
    return (yt.double()[row_of] * xt.double()[col_of]).sum(1), yt.dtype


def ref_spmm_qcsr(crow, col, values, scales, rows, cols, xt, transpose_out=False):
    row_of, col_of = csr(crow, col, rows, cols)
    tensor(xt, "xt", (torch.float32,), 2)
    need(xt.shape[0] == cols, "xt rows")
    tensor(values, "values", (torch.int8,), 1)
    need(values.numel() == col.numel(), "values length")
    tensor(scales, "scales", (torch.float32,), 1)
    need(scales.numel() == rows, "scales length")
    y = gather_rows(rows, row_of, col_of, values, xt) * scales.double().unsqueeze(1)
    return maybe_t(y, transpose_out), torch.float32


def ref_linear_csr(crow, col, values, rows, cols, x):
    row_of, col_of = csr(crow, col, rows, cols)
    tensor(x, "x", (torch.float32, torch.bfloat16), 2)
    need(x.shape[1] == cols, "x cols")
    tensor(values, "values", (x.dtype,), 1)
    need(values.numel() == col.numel(), "values length")
    return gather_rows(rows, row_of, col_of, values, x.t()).t(), x.dtype


def ref_linear_qcsr(crow, col, values, scales, rows, cols, x):
    row_of, col_of = csr(crow, col, rows, cols)
    tensor(x, "x", (torch.float32,), 2)
    need(x.shape[1] == cols, "x cols")
    tensor(values, "values", (torch.int8,), 1)
    need(values.numel() == col.numel(), "values length")
    tensor(scales, "scales", (torch.float32,), 1)
    need(scales.numel() == rows, "scales length")
    return (gather_rows(rows, row_of, col_of, values, x.t()) * scales.double().unsqueeze(1)).t(), torch.float32


def ref_dequantize(values, scales, zero_points, bits, rows, cols):
    from hf_sparse.formats.schemes import unpack_codes

    need(bits in (8, 4, 2), "bits")
    size_arg(rows, "rows")
    size_arg(cols, "cols")
    need(cols % (8 // bits) == 0, "cols do not fill bytes")
    tensor(values, "values", (torch.int8 if bits == 8 else torch.uint8,), 2)
    need(tuple(values.shape) == (rows, cols * bits // 8), "values shape")
    tensor(scales, "scales", (torch.float32,), 2)
    need(scales.shape[0] in (rows, 1) and scales.shape[1] >= 1 and cols % scales.shape[1] == 0, "scales shape")
    has_zero = isinstance(zero_points, torch.Tensor) and zero_points.numel() > 0
    need(isinstance(zero_points, torch.Tensor), "zero_points not a tensor")
    if has_zero:
        tensor(zero_points, "zero_points", (torch.int8,))
        need(zero_points.shape == scales.shape, "zero_points shape")
    small(rows, cols)
    if rows * cols == 0:
        return torch.empty(rows, cols), torch.float32
    codes = unpack_codes(values, bits, cols).float()
    width = cols // scales.shape[1]
    s = scales.repeat_interleave(width, 1).expand(rows, cols)
    z = zero_points.float().repeat_interleave(width, 1).expand(rows, cols) if has_zero else 0.0
    return (codes - z) * s, "exact"  # float32 arithmetic, one rounding: the kernel must match it bit for bit


def blocked_dense(crow, col, values, rows, cols):
    """The (rows, cols) float64 matrix of a BSR call, after its structural checks."""
    size_arg(rows, "rows")
    size_arg(cols, "cols")
    need(isinstance(values, torch.Tensor) and values.dim() == 3, "values rank")
    _, R, C = values.shape
    need(R > 0 and C > 0 and rows % R == 0 and cols % C == 0, "block does not divide the shape")
    tensor(col, "col", INDEX, 1)
    need(col.numel() == values.shape[0], "col length")
    p = pointers(crow, "crow", rows // R, col.numel())
    cb = in_range(col, cols // C, "col")
    small(rows, cols)
    w = torch.zeros(rows // R, R, cols // C, C, dtype=torch.float64)
    br = torch.repeat_interleave(torch.arange(rows // R), p.diff())
    for k in range(values.shape[0]):  # blocks are few in the fuzz
        w[br[k], :, cb[k], :] += values[k].double()
    return w.reshape(rows, cols)


def ref_spmm_bsr(crow, col, values, rows, cols, xt, transpose_out=False):
    tensor(xt, "xt", FLOATS_BF16, 2)
    need(xt.shape[0] == cols, "xt rows")
    tensor(values, "values", (xt.dtype,))
    w = blocked_dense(crow, col, values, rows, cols)
    small(rows, xt.shape[1])
    return maybe_t(w @ xt.double(), transpose_out), xt.dtype


def ref_spmm_qbsr(crow, col, values, scales, rows, cols, xt, transpose_out=False):
    tensor(xt, "xt", (torch.float32,), 2)
    need(xt.shape[0] == cols, "xt rows")
    tensor(values, "values", (torch.int8,))
    tensor(scales, "scales", (torch.float32,), 1)
    need(scales.numel() == rows, "scales length")
    w = blocked_dense(crow, col, values, rows, cols) * scales.double().unsqueeze(1)
    small(rows, xt.shape[1])
    return maybe_t(w @ xt.double(), transpose_out), torch.float32


def ref_linear_qbsr_dyn(crow, col, values, scales, bias, rows, cols, x):
    tensor(x, "x", (torch.float32,), 2)
    need(x.shape[1] == cols, "x columns")
    tensor(values, "values", (torch.int8,), 3)
    need(values.shape[2] % 4 == 0, "block width not a multiple of 4")
    need(0 <= cols <= 65536, "cols too wide for int32 sums")
    tensor(scales, "scales", (torch.float32,), 1)
    need(scales.numel() == rows, "scales length")
    if bias is not None:
        tensor(bias, "bias", (torch.float32,), 1)
        need(bias.numel() == rows, "bias length")
    w = blocked_dense(crow, col, values, rows, cols) * scales.double().unsqueeze(1)
    small(rows, x.shape[0])
    lo = torch.minimum(x.amin(1, keepdim=True), torch.zeros(1)) if x.numel() else x[:, :1]
    hi = torch.maximum(x.amax(1, keepdim=True), torch.zeros(1)) if x.numel() else x[:, :1]
    scale = ((hi - lo) / 255).clamp_min(1e-12)
    zero = (-128 - torch.round(lo / scale)).clamp(-128, 127)
    xq = (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale
    y = xq.double() @ w.t()
    if bias is not None:
        y = y + bias.double()
    y[~torch.isfinite(x).all(1)] = float("nan")
    return y, torch.float32


def nm_parts(values, indices, n, m, cols):
    need(is_int(n) and is_int(m) and 0 < n <= m <= 127, "n, m")
    size_arg(cols, "cols")
    need(cols % m == 0, "cols not divisible by m")
    tensor(indices, "indices", (torch.int8,), 2)
    need(isinstance(values, torch.Tensor) and values.dim() == 2, "values rank")
    need(values.shape == indices.shape and values.shape[1] == cols // m * n, "values / indices shape")
    rows, width = values.shape
    idx = in_range(indices, m, "indices")
    col_of = ((torch.arange(width) // n) * m).unsqueeze(0) + idx
    row_of = torch.arange(rows).unsqueeze(1).expand(rows, width)
    return rows, row_of.reshape(-1), col_of.reshape(-1)


def ref_spmm_nm(values, indices, n, m, cols, xt, transpose_out=False):
    tensor(xt, "xt", FLOATS_BF16, 2)
    need(xt.shape[0] == cols, "xt rows")
    rows, row_of, col_of = nm_parts(values, indices, n, m, cols)
    tensor(values, "values", (xt.dtype,))
    return maybe_t(gather_rows(rows, row_of, col_of, values.reshape(-1), xt), transpose_out), xt.dtype


def ref_spmm_qnm(values, indices, scales, n, m, cols, xt, transpose_out=False):
    tensor(xt, "xt", (torch.float32,), 2)
    need(xt.shape[0] == cols, "xt rows")
    rows, row_of, col_of = nm_parts(values, indices, n, m, cols)
    tensor(values, "values", (torch.int8,))
    tensor(scales, "scales", (torch.float32,), 1)
    need(scales.numel() == rows, "scales length")
    y = gather_rows(rows, row_of, col_of, values.reshape(-1), xt) * scales.double().unsqueeze(1)
    return maybe_t(y, transpose_out), torch.float32


def qrow_table(values, bits, cols) -> tuple[int, Callable[[torch.Tensor], torch.Tensor]]:
    """(rows, rows_of(ids) -> float32 (n, cols)) of a qrow table, after its checks."""
    need(bits in (8, 4, 2), "bits")
    size_arg(cols, "cols")
    need(cols > 0 and cols % (8 // bits) == 0, "cols")
    tensor(values, "values", (torch.uint8,), 2)
    code_bytes = cols * bits // 8
    need(values.shape[1] == code_bytes + 4, "values width")

    def rows_of(ids: torch.Tensor) -> torch.Tensor:
        raw = values[ids]
        codes = raw[:, :code_bytes].to(torch.int64)
        if bits < 8:
            per = 8 // bits
            shifts = torch.arange(per) * bits
            codes = ((codes.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(len(ids), cols)
        tail = torch.empty(len(ids), 4, dtype=torch.uint8).copy_(raw[:, code_bytes:])  # fresh, dense storage
        tail = tail.view(torch.float16).float()  # (n, 2): scale, bias
        return codes.float() * tail[:, :1] + tail[:, 1:]  # c * scale is exact in float32; one rounding

    return values.shape[0], rows_of


def index_vector(t, name: str) -> torch.Tensor:
    return tensor(t, name, (torch.int32, torch.int64), 1)


class Unspecified(Exception):
    """A well-formed call whose result the op does not define (the kernel may return anything or raise; it must not
    crash): the backward given an lse well below a row's largest score (exp(score - lse) > e), which no forward
    gives: the gradient formula then amplifies float32 rounding (or overflows) without bound."""


class OutOfRange(Exception):
    """An index past the table: the kernel must raise IndexError."""


def ref_qrow_lookup(values, bits, cols, indices):
    rows, rows_of = qrow_table(values, bits, cols)
    ids = index_vector(indices, "indices").to(torch.int64)
    if bool(((ids < 0) | (ids >= rows)).any()):
        raise OutOfRange("indices")
    small(ids.numel(), cols)
    return rows_of(ids), "exact"


def ref_qrow_embedding_bag(
    values, bits, cols, indices, offsets, mode, per_sample_weights=None, include_last_offset=False
):
    rows, rows_of = qrow_table(values, bits, cols)
    ids = index_vector(indices, "indices").to(torch.int64)
    off = index_vector(offsets, "offsets").to(torch.int64)
    need(mode in (0, 1), "mode")
    need(isinstance(include_last_offset, bool), "include_last_offset")
    need(not include_last_offset or off.numel() >= 1, "include_last_offset without offsets")
    n = ids.numel()
    w = None
    if per_sample_weights is not None:
        need(mode == 0, "per_sample_weights with mean")
        w = tensor(per_sample_weights, "per_sample_weights", (torch.float32,), 1)
        need(w.numel() == n, "per_sample_weights length")
    if off.numel():
        need(off[0] == 0 and bool((off.diff() >= 0).all()) and off[-1] <= n, "offsets values")
        need(not include_last_offset or off[-1] == n, "last offset")
    bags = off.numel() - 1 if include_last_offset else off.numel()
    ends = torch.cat([off, torch.tensor([n])])[1 : bags + 1] if not include_last_offset else off[1:]
    if bags and bool(((ids < 0) | (ids >= rows)).any()):  # with no bag, no index is read
        raise OutOfRange("indices")
    small(bags, cols)
    out = torch.zeros(bags, cols, dtype=torch.float64)
    if bags and n:
        table = rows_of(ids).double() * (w.double().unsqueeze(1) if w is not None else 1.0)
        bag_of = torch.repeat_interleave(torch.arange(bags), ends - off[:bags])
        out.index_add_(0, bag_of, table[: bag_of.numel()])
        if mode == 1:
            out /= (ends - off[:bags]).clamp(min=1).double().unsqueeze(1)
    return out, torch.float32


def attention_mask(q, k, kv_ptr, kv_blocks, mask_index, bits, block_q, head_multiple):
    """Shapes checked and the (Sq, Skv) bool mask of the layout."""
    for name, t in (("q", q), ("k", k)):
        tensor(t, name, (torch.float32,), 4)
        for d in t.shape:
            size_arg(d, f"{name} sizes")
    B, H, Sq, D = q.shape
    _, Hkv, Skv, _ = k.shape
    need(D > 0 and D % head_multiple == 0, "head_dim")
    need(k.shape[0] == B and k.shape[3] == D and Hkv > 0 and H % Hkv == 0, "k shape")
    need(is_int(block_q) and 1 <= block_q <= 256, "block_q")
    nqb, nkb = -(-Sq // block_q), -(-Skv // 64)
    tensor(kv_blocks, "kv_blocks", (torch.int32,), 1)
    tensor(mask_index, "mask_index", (torch.int32,), 1)
    need(mask_index.shape == kv_blocks.shape, "mask_index length")
    tensor(bits, "bits", (torch.int64,), 2)
    need(bits.shape[1] == block_q, "bits width")
    p = pointers(kv_ptr, "kv_ptr", nqb, kv_blocks.numel())
    kb = in_range(kv_blocks, nkb, "kv_blocks")
    mi = mask_index.to(torch.int64)
    need(bool(((mi >= -1) & (mi < bits.shape[0])).all()), "mask_index out of range")
    small(Sq, Skv)
    mask = torch.zeros(nqb * block_q, nkb * 64, dtype=torch.bool)
    words = bits.to(torch.int64)
    shifts = torch.arange(64)
    for qb in range(nqb):
        blocks = kb[p[qb] : p[qb + 1]]
        need(bool((blocks.diff() > 0).all()), "kv_blocks not increasing")
        for j in range(p[qb], p[qb + 1]):
            tile = mask[qb * block_q : (qb + 1) * block_q, kb[j] * 64 : (kb[j] + 1) * 64]
            if mi[j] < 0:
                tile[:] = True
            else:
                tile[:] = ((words[mi[j]].unsqueeze(1) >> shifts) & 1).bool()
    return mask[:Sq, :Skv]


def attention_bias(key_bias, B, Skv):
    need(isinstance(key_bias, torch.Tensor), "key_bias not a tensor")
    if key_bias.numel() == 0:
        return None
    tensor(key_bias, "key_bias", (torch.float32,), 2)
    need(tuple(key_bias.shape) == (B, Skv), "key_bias shape")
    return key_bias.double()[:, None, None, :]


def attention_forward64(q, k, v, mask, bias, scale):
    """out, lse in float64 (differentiable in q, k, v); rows with no allowed key: out 0, lse -inf."""
    H, Hkv = q.shape[1], k.shape[1]
    kk = k.double().repeat_interleave(H // Hkv, 1)
    vv = v.double().repeat_interleave(H // Hkv, 1)
    s = (q.double() * scale) @ kk.transpose(-1, -2)
    if bias is not None:
        s = s + bias
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    dead = torch.isneginf(lse).unsqueeze(-1)
    p = torch.exp(s.masked_fill(dead, 0.0) - lse.masked_fill(dead.squeeze(-1), 0.0).unsqueeze(-1))
    out = (p.masked_fill(dead, 0.0)) @ vv
    return out, lse


def ref_sparse_attention(q, k, v, kv_ptr, kv_blocks, mask_index, bits, key_bias, scale, block_q, *, head_multiple):
    mask = attention_mask(q, k, kv_ptr, kv_blocks, mask_index, bits, block_q, head_multiple)
    tensor(v, "v", (torch.float32,), 4)
    need(v.shape == k.shape, "v shape")
    bias = attention_bias(key_bias, q.shape[0], k.shape[2])
    small(q.numel() * k.shape[2])
    out, lse = attention_forward64(q, k, v, mask, bias, scale)
    return (out, lse), torch.float32


def ref_sparse_attention_backward(
    grad_out, q, k, v, out, lse, kv_ptr, kv_blocks, mask_index, bits, key_bias, scale, block_q, *, head_multiple
):
    mask = attention_mask(q, k, kv_ptr, kv_blocks, mask_index, bits, block_q, head_multiple)
    tensor(v, "v", (torch.float32,), 4)
    need(v.shape == k.shape, "v shape")
    for name, t in (("grad_out", grad_out), ("out", out)):
        tensor(t, name, (torch.float32,), 4)
        need(t.shape == q.shape, f"{name} shape")
    tensor(lse, "lse", (torch.float32,), 3)
    need(tuple(lse.shape) == tuple(q.shape[:3]), "lse shape")
    bias = attention_bias(key_bias, q.shape[0], k.shape[2])
    small(q.numel() * k.shape[2])
    # The gradients from the out and lse given (as the kernel computes them; they need not be the forward's).
    B, H, Sq, D = q.shape
    Hkv = k.shape[1]
    kk = k.double().repeat_interleave(H // Hkv, 1)
    vv = v.double().repeat_interleave(H // Hkv, 1)
    s = (q.double() * scale) @ kk.transpose(-1, -2)
    if bias is not None:
        s = s + bias
    s = s.masked_fill(~mask, float("-inf"))
    l64 = lse.double().unsqueeze(-1)
    dead = torch.isneginf(l64)
    if bool(((s - l64.masked_fill(dead, 0.0)).masked_fill(dead | torch.isneginf(s), 0.0) > 1.0).any()):
        raise Unspecified("lse is not the log-sum-exp of these scores")
    p = torch.exp(s - l64.masked_fill(dead, 0.0)).masked_fill(dead | torch.isneginf(s), 0.0)
    go = grad_out.double()
    dp = go @ vv.transpose(-1, -2)
    di = (go * out.double()).sum(-1, keepdim=True)
    ds = p * (dp - di)
    dq = (ds @ kk) * scale
    dk = (ds.transpose(-1, -2) @ (q.double() * scale)).reshape(B, Hkv, H // Hkv, -1, D).sum(2)
    dv = (p.transpose(-1, -2) @ go).reshape(B, Hkv, H // Hkv, -1, D).sum(2)
    return (dq, dk, dv), torch.float32


# -- valid random calls --------------------------------------------------------------------------------------------


def rand_csr(rng: random.Random, rows: int, cols: int):
    counts = [rng.randint(0, cols) if cols else 0 for _ in range(rows)]
    crow = torch.tensor([0, *itertools_accumulate(counts)], dtype=torch.int32)
    col = [c for n in counts for c in sorted(rng.sample(range(cols), n))]
    dtype = rng.choice(INDEX)
    return crow, torch.tensor(col, dtype=dtype).reshape(-1)


def itertools_accumulate(xs):
    total, out = 0, []
    for x in xs:
        total += x
        out.append(total)
    return out


def dense(rng: random.Random, *shape: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    if dtype == torch.int8:
        return torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return torch.randn(*shape, generator=g, dtype=dtype)


def widths(rng: random.Random) -> int:
    return rng.choice([0, 1, 2, 3, 5, 8, 9, 16, 17, 33])  # N: empty, scalar paths, vector chunks and tails


def gen_csr_family(op: str):
    def gen(rng: random.Random):
        rows, cols = rng.randint(0, 7), rng.randint(0, 12)
        crow, col = rand_csr(rng, rows, cols)
        dtype = {
            "spmm_csr": FLOATS_BF16,
            "spmm_csr_t": FLOATS,
            "sddmm_csr": FLOATS,
            "linear_csr": (torch.float32, torch.bfloat16),
        }.get(op, (torch.float32,))
        dtype = rng.choice(dtype)
        n = widths(rng)
        quant = op in ("spmm_qcsr", "linear_qcsr")
        values = dense(rng, col.numel(), dtype=torch.int8 if quant else dtype)
        scales = dense(rng, rows).abs() + 0.1
        if op == "spmm_csr":
            return [crow, col, values, rows, cols, dense(rng, cols, n, dtype=dtype), rng.random() < 0.5]
        if op == "spmm_csr_t":
            return [crow, col, values, rows, cols, dense(rng, rows, n, dtype=dtype)]
        if op == "sddmm_csr":
            return [crow, col, rows, cols, dense(rng, rows, n, dtype=dtype), dense(rng, cols, n, dtype=dtype)]
        if op == "spmm_qcsr":
            return [crow, col, values, scales, rows, cols, dense(rng, cols, n), rng.random() < 0.5]
        if op == "linear_csr":
            return [crow, col, values, rows, cols, dense(rng, n, cols, dtype=dtype)]
        return [crow, col, values, scales, rows, cols, dense(rng, n, cols)]

    return gen


def gen_dequantize(rng: random.Random):
    bits = rng.choice([8, 4, 2])
    per = 8 // bits
    rows = rng.randint(0, 6)
    cols = per * rng.randint(0, 12)
    divisors = [g for g in range(1, cols + 1) if cols % g == 0] or [1, 2, 3]
    groups = rng.choice(divisors)  # every group width that divides the row, odd ones included
    values = dense(rng, rows, cols * bits // 8, dtype=torch.int8 if bits == 8 else torch.uint8)
    scales = dense(rng, rng.choice([rows, 1]) if rows else rng.choice([0, 1]), groups).abs() + 0.05
    half = 1 << (bits - 1)
    zero = torch.randint(-half, half, tuple(scales.shape), dtype=torch.int8) if rng.random() < 0.5 else None
    if zero is None:
        zero = torch.empty(0, dtype=torch.int8)
    return [values, scales, zero, bits, rows, cols]


def gen_blocked(quant: bool):
    def gen(rng: random.Random):
        R, C = rng.choice([1, 2, 3, 4, 8]), rng.choice([1, 2, 4, 8])
        brows, bcols = rng.randint(0, 4), rng.randint(0, 4)
        crow, col = rand_csr(rng, brows, bcols)
        dtype = torch.float32 if quant else rng.choice(FLOATS_BF16)
        values = dense(rng, col.numel(), R, C, dtype=torch.int8 if quant else dtype)
        xt = dense(rng, bcols * C, widths(rng), dtype=dtype)
        tr = rng.random() < 0.5
        if quant:
            scales = dense(rng, brows * R).abs() + 0.1
            return [crow, col, values, scales, brows * R, bcols * C, xt, tr]
        return [crow, col, values, brows * R, bcols * C, xt, tr]

    return gen


def gen_qbsr_dyn(rng: random.Random):
    R, C = rng.choice([1, 2, 4, 8, 16]), rng.choice([4, 4, 8])
    brows, bcols = rng.randint(0, 4), rng.randint(0, 4)
    crow, col = rand_csr(rng, brows, bcols)
    values = dense(rng, col.numel(), R, C, dtype=torch.int8)
    x = dense(rng, widths(rng), bcols * C)
    scales = dense(rng, brows * R).abs() + 0.1
    bias = dense(rng, brows * R) if rng.random() < 0.5 else None
    return [crow, col, values, scales, bias, brows * R, bcols * C, x]


def gen_nm(quant: bool):
    def gen(rng: random.Random):
        m = rng.choice([1, 2, 4, 8, 16])
        n = rng.randint(1, m)
        rows, groups = rng.randint(0, 6), rng.randint(0, 4)
        cols = groups * m
        idx = (
            torch.stack(
                [torch.tensor(sorted(rng.sample(range(m), n)), dtype=torch.int8) for _ in range(rows * groups)]
            ).reshape(rows, groups * n)
            if rows * groups
            else torch.zeros(rows, groups * n, dtype=torch.int8)
        )
        dtype = torch.float32 if quant else rng.choice(FLOATS_BF16)
        values = dense(rng, rows, groups * n, dtype=torch.int8 if quant else dtype)
        xt = dense(rng, cols, widths(rng), dtype=dtype)
        tr = rng.random() < 0.5
        if quant:
            return [values, idx, dense(rng, rows).abs() + 0.1, n, m, cols, xt, tr]
        return [values, idx, n, m, cols, xt, tr]

    return gen


def qrow_values(rng: random.Random, rows: int, cols: int, bits: int) -> torch.Tensor:
    codes = dense(rng, rows, cols * bits // 8, dtype=torch.uint8)
    sb = (torch.rand(rows, 2, generator=torch.Generator().manual_seed(rng.randrange(1 << 30))) * 2 - 1).half()
    t = torch.cat([codes, sb.view(torch.uint8).reshape(rows, 4)], 1)
    if rng.random() < 0.25:  # rows further apart than their bytes: a view read in place
        t = torch.cat([t, torch.zeros(rows, 3, dtype=torch.uint8)], 1)[:, : t.shape[1]]
    return t


def gen_qrow(bag: bool):
    def gen(rng: random.Random):
        bits = rng.choice([8, 4, 2])
        rows, cols = rng.randint(1, 9), (8 // bits) * rng.randint(1, 10)
        values = qrow_values(rng, rows, cols, bits)
        n = rng.randint(0, 12)
        ids = torch.tensor([rng.randrange(rows) for _ in range(n)], dtype=rng.choice([torch.int32, torch.int64]))
        if not bag:
            return [values, bits, cols, ids]
        cuts = sorted(rng.choice(range(n + 1)) for _ in range(rng.randint(1, 5)))
        cuts[0] = 0
        last = rng.random() < 0.5
        offsets = torch.tensor(cuts + ([n] if last else []), dtype=rng.choice([torch.int32, torch.int64]))
        mode = rng.choice([0, 1])
        psw = dense(rng, n) if mode == 0 and rng.random() < 0.5 else None
        return [values, bits, cols, ids, offsets, mode, psw, last]

    return gen


def gen_attention(backward: bool, head_multiple: int):
    def gen(rng: random.Random):
        B, Hkv, group = rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2])
        Sq, Skv = rng.randint(1, 40), rng.randint(1, 140)
        D = head_multiple * rng.choice([1, 2])
        block_q = rng.choice([1, 4, 16, 32, 64])
        nqb, nkb = -(-Sq // block_q), -(-Skv // 64)
        ptr, blocks, index, words = [0], [], [], []
        for _ in range(nqb):
            chosen = sorted(rng.sample(range(nkb), rng.randint(0, nkb)))
            for kb in chosen:
                blocks.append(kb)
                if rng.random() < 0.5:
                    index.append(-1)
                else:
                    index.append(len(words))
                    words.append([rng.randrange(-(1 << 63), 1 << 63) for _ in range(block_q)])
            ptr.append(len(blocks))
        bits = torch.tensor(words, dtype=torch.int64).reshape(len(words), block_q)
        q = dense(rng, B, Hkv * group, Sq, D)
        k, v = dense(rng, B, Hkv, Skv, D), dense(rng, B, Hkv, Skv, D)
        if rng.random() < 0.5:
            bias = torch.where(torch.rand(B, Skv) < 0.2, float("-inf"), 0.0)
            if rng.random() < 0.5:
                bias = bias + dense(rng, B, Skv)
        else:
            bias = torch.empty(0)
        layout = [
            torch.tensor(ptr, dtype=torch.int32),
            torch.tensor(blocks, dtype=torch.int32),
            torch.tensor(index, dtype=torch.int32),
            bits,
        ]
        scale = rng.choice([1.0 / math.sqrt(D), 0.5, 0.0, -1.0])
        if not backward:
            return [q, k, v, *layout, bias, scale, block_q]
        mask = attention_mask(q, k, *layout, block_q, head_multiple)
        out, lse = attention_forward64(q, k, v, mask, attention_bias(bias, B, Skv), scale)
        return [dense(rng, *q.shape), q, k, v, out.float(), lse.float(), *layout, bias, scale, block_q]

    return gen


# -- malformations -------------------------------------------------------------------------------------------------

DTYPES = [
    torch.bool,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.float32,
    torch.float64,
]
BAD_INTS = [
    -1,
    0,
    1,
    2,
    3,
    63,
    64,
    65,
    127,
    128,
    -128,
    255,
    256,
    2**15 - 1,
    -(2**15),
    2**31 - 1,
    -(2**31),
    2**40,
    -(2**40),
    2**62,
    -(2**63),
    2**63 - 1,
]
INT_RANGES = {
    torch.int8: (-(2**7), 2**7 - 1),
    torch.uint8: (0, 255),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
    torch.int64: (-(2**63), 2**63 - 1),
}


def recast(rng: random.Random, t: torch.Tensor, dtype: torch.dtype, shape) -> torch.Tensor:
    """A tensor of `shape` and `dtype`, keeping t's values where they fit (so only the one thing changes)."""
    flat = t.reshape(-1)
    count = math.prod(shape)
    if count <= flat.numel():
        base = flat[:count].clone()
    else:
        base = torch.cat([flat, flat.new_zeros(count - flat.numel())]) if flat.numel() else flat.new_zeros(count)
    if dtype.is_floating_point or dtype == torch.bool:
        return base.to(dtype).reshape(shape)
    lo, hi = INT_RANGES[dtype]
    wide = base.double() if base.is_floating_point() else base.to(torch.int64)
    return wide.clamp(lo, hi).to(dtype).reshape(shape)


def mutate_tensor(rng: random.Random, t: torch.Tensor) -> tuple[torch.Tensor, str]:
    kinds = ["dtype", "rank", "length", "empty", "noncontig", "entry", "entry", "entry", "swap"]
    kind = rng.choice(kinds)
    shape = list(t.shape)
    if kind == "dtype":
        dtype = rng.choice([d for d in DTYPES if d != t.dtype])
        return recast(rng, t, dtype, shape), f"dtype {dtype}"
    if kind == "rank":
        new = shape[:-1] if shape and rng.random() < 0.5 else shape + [rng.choice([1, 2])]
        return recast(rng, t, t.dtype, new), f"shape {new}"
    if kind == "length" and shape:
        d = rng.randrange(len(shape))
        shape[d] = max(0, shape[d] + rng.choice([-1, 1, 2, 7]))
        return recast(rng, t, t.dtype, shape), f"shape {shape}"
    if kind == "empty" and shape:
        shape[rng.randrange(len(shape))] = 0
        return recast(rng, t, t.dtype, shape), f"shape {shape}"
    if kind == "noncontig" and t.dim() >= 1:
        # The same values in a strided (or transposed) view: a valid argument.
        if t.dim() >= 2 and rng.random() < 0.5:
            return t.transpose(0, 1).contiguous().transpose(0, 1), "transposed view"
        return torch.stack([t, torch.zeros_like(t)], -1)[..., 0], "strided view"
    if kind == "swap" and t.numel() >= 2 and t.dim() >= 1:
        flat = t.clone().reshape(-1)
        i, j = rng.sample(range(flat.numel()), 2)
        flat[i], flat[j] = flat[j].clone(), flat[i].clone()
        return flat.reshape(t.shape), f"swapped entries {i}, {j}"
    if t.numel() and not t.dtype.is_floating_point and t.dtype != torch.bool:
        lo, hi = INT_RANGES[t.dtype]
        value = rng.choice([v for v in BAD_INTS if lo <= v <= hi])
        flat = t.clone().reshape(-1)
        i = rng.randrange(flat.numel())
        flat[i] = value
        return flat.reshape(t.shape), f"entry [{i}] = {value}"
    return recast(rng, t, t.dtype, shape + [0]) if t.dim() < 4 else t[:0], "empty"


def mutate(rng: random.Random, args: list, optional: set[int]) -> tuple[list, list[str]]:
    args = list(args)
    what = []
    for _ in range(rng.choice([0, 1, 1, 1, 1, 1, 1, 2, 2, 3])):
        i = rng.randrange(len(args))
        a = args[i]
        if isinstance(a, torch.Tensor):
            if i in optional and rng.random() < 0.2:
                args[i], w = None, "None"
            else:
                args[i], w = mutate_tensor(rng, a)
        elif isinstance(a, bool):
            args[i], w = not a, str(not a)
        elif isinstance(a, int):
            args[i] = rng.choice([a - 1, a + 1, -a, 2 * a, 0, *BAD_INTS])
            w = str(args[i])
        elif isinstance(a, float):
            args[i] = rng.choice([0.0, -2.0, 1e-3, 10.0])
            w = str(args[i])
        elif a is None and i in optional:
            continue
        else:
            continue
        what.append(f"arg {i}: {w}")
    return args, what


# -- the ops -------------------------------------------------------------------------------------------------------

ARG_NAMES = {
    "spmm_csr": ["crow", "col", "values", "rows", "cols", "xt", "transpose_out"],
    "spmm_csr_t": ["crow", "col", "values", "rows", "cols", "yt"],
    "sddmm_csr": ["crow", "col", "rows", "cols", "yt", "xt"],
    "spmm_qcsr": ["crow", "col", "values", "scales", "rows", "cols", "xt", "transpose_out"],
    "linear_csr": ["crow", "col", "values", "rows", "cols", "x"],
    "linear_qcsr": ["crow", "col", "values", "scales", "rows", "cols", "x"],
    "dequantize": ["values", "scales", "zero_points", "bits", "rows", "cols"],
    "spmm_bsr": ["crow", "col", "values", "rows", "cols", "xt", "transpose_out"],
    "spmm_qbsr": ["crow", "col", "values", "scales", "rows", "cols", "xt", "transpose_out"],
    "linear_qbsr_dyn": ["crow", "col", "values", "scales", "bias", "rows", "cols", "x"],
    "spmm_nm": ["values", "indices", "n", "m", "cols", "xt", "transpose_out"],
    "spmm_qnm": ["values", "indices", "scales", "n", "m", "cols", "xt", "transpose_out"],
    "sparse_attention": ["q", "k", "v", "kv_ptr", "kv_blocks", "mask_index", "bits", "key_bias", "scale", "block_q"],
    "sparse_attention_backward": [
        "grad_out",
        "q",
        "k",
        "v",
        "out",
        "lse",
        "kv_ptr",
        "kv_blocks",
        "mask_index",
        "bits",
        "key_bias",
        "scale",
        "block_q",
    ],
    "qrow_lookup": ["values", "bits", "cols", "indices"],
    "qrow_embedding_bag": [
        "values",
        "bits",
        "cols",
        "indices",
        "offsets",
        "mode",
        "per_sample_weights",
        "include_last_offset",
    ],
}
# Words a message may use for an argument besides its name (shape words of the C++ messages).
ALIASES = {
    "rows": ["rows", "rows/R"],
    "cols": ["cols", "columns"],
    "q": ["q ", "head_dim", "heads"],
    "block_q": ["block_q"],
    "n": ["n="],
    "m": ["m="],
    "bits": ["bits", "-bit"],
}


def ops_table(head_multiple: int) -> dict[str, tuple[Callable, Callable, set[int]]]:
    """op -> (valid call generator, reference, positions of optional arguments)."""
    from functools import partial

    att = partial(ref_sparse_attention, head_multiple=head_multiple)
    att_bw = partial(ref_sparse_attention_backward, head_multiple=head_multiple)
    return {
        "spmm_csr": (gen_csr_family("spmm_csr"), ref_spmm_csr, set()),
        "spmm_csr_t": (gen_csr_family("spmm_csr_t"), ref_spmm_csr_t, set()),
        "sddmm_csr": (gen_csr_family("sddmm_csr"), ref_sddmm_csr, set()),
        "spmm_qcsr": (gen_csr_family("spmm_qcsr"), ref_spmm_qcsr, set()),
        "linear_csr": (gen_csr_family("linear_csr"), ref_linear_csr, set()),
        "linear_qcsr": (gen_csr_family("linear_qcsr"), ref_linear_qcsr, set()),
        "dequantize": (gen_dequantize, ref_dequantize, set()),
        "spmm_bsr": (gen_blocked(False), ref_spmm_bsr, set()),
        "spmm_qbsr": (gen_blocked(True), ref_spmm_qbsr, set()),
        "linear_qbsr_dyn": (gen_qbsr_dyn, ref_linear_qbsr_dyn, {4}),
        "spmm_nm": (gen_nm(False), ref_spmm_nm, set()),
        "spmm_qnm": (gen_nm(True), ref_spmm_qnm, set()),
        "sparse_attention": (gen_attention(False, head_multiple), att, set()),
        "sparse_attention_backward": (gen_attention(True, head_multiple), att_bw, set()),
        "qrow_lookup": (gen_qrow(False), ref_qrow_lookup, set()),
        "qrow_embedding_bag": (gen_qrow(True), ref_qrow_embedding_bag, {6}),
    }


def agree(got, want, how) -> bool:
    if isinstance(want, tuple):
        return (
            isinstance(got, (tuple, list))
            and len(got) == len(want)
            and all(agree(g, w, how) for g, w in zip(got, want))
        )
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        return False
    if how == "exact":
        return (
            got.dtype == torch.float32
            and torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
            and bool((got.isnan() == want.isnan()).all())
        )
    if got.dtype != how:
        return False
    scale = float(want[torch.isfinite(want)].abs().max()) if bool(torch.isfinite(want).any()) else 1.0
    tol = 2.0**-7 if how == torch.bfloat16 else 1e-4  # bf16: two ulps (one rounding of a float32 sum)
    return torch.allclose(got.double(), want.double(), rtol=tol, atol=tol * max(1.0, scale), equal_nan=True)


def names_what(op: str, message: str) -> bool:
    """The message names the op and at least one of its arguments."""
    if f"hf_sparse::{op}" not in message:
        return False
    return any(word in message for name in ARG_NAMES[op] for word in [name, *ALIASES.get(name, [])])


def run_calls(calls_per_op: int, seed: int, head_multiple: int, progress: Path | None) -> dict:
    ops = torch.ops.hf_sparse
    table = ops_table(head_multiple)
    result: dict = {"ops": {}, "failures": [], "max_call_s": 0.0}
    for op, (gen, ref, optional) in table.items():
        rng = random.Random(f"{seed}-{op}")
        counts = dict(calls=0, matched=0, raised=0, too_large=0, unspecified=0, valid_calls=0)
        for i in range(calls_per_op):
            args, what = mutate(rng, gen(rng), optional)
            case = f"{op} #{i} (seed {seed}): {'; '.join(what) or 'valid'}"
            if progress is not None:
                progress.write_text(case)
            try:
                want, how = ref(*args)
                verdict = "ok"
            except (Refused, TypeError) as exc:
                verdict, why = "refused", str(exc)
            except OutOfRange:
                verdict, why = "index", "index out of range"
            except TooLarge:
                verdict, why = "too_large", "too large"
            except Unspecified:
                verdict, why = "unspecified", "unspecified"
            start = time.perf_counter()
            try:
                got, err = getattr(ops, op)(*args), None
            except Exception as exc:  # noqa: BLE001  (every exception is judged below)
                got, err = None, exc
            result["max_call_s"] = max(result["max_call_s"], time.perf_counter() - start)
            counts["calls"] += 1
            counts["valid_calls"] += verdict == "ok"
            message = str(err) if err is not None else ""
            failure = None
            if verdict == "unspecified":
                counts["unspecified"] += 1
            elif err is None:
                if verdict != "ok":
                    failure = f"accepted a malformed call ({why})"
                elif not agree(got, want, how):
                    failure = "result differs from the reference"
                else:
                    counts["matched"] += 1
            elif verdict == "ok":
                failure = f"refused a valid call: {type(err).__name__}: {message[:300]}"
            elif verdict == "too_large" and "cannot allocate" in message and names_what(op, message):
                counts["too_large"] += 1
            elif not names_what(op, message):
                failure = f"the message does not name the op and an argument: {type(err).__name__}: {message[:300]}"
            elif verdict == "index" and not isinstance(err, IndexError):
                failure = f"an index out of range gave {type(err).__name__}, not IndexError: {message[:200]}"
            else:
                counts["raised"] += 1
            if failure is not None:
                result["failures"].append(f"{case}: {failure}")
        result["ops"][op] = counts
    return result


def worker(library: str | None, calls_per_op: int, seed: int, head_multiple: int, out: str, progress: str) -> None:
    """Runs in the subprocess: loads the ops (the sanitizer build at `library`, else the normal cached build), bounds
    its address space where no sanitizer runs (ASan reserves terabytes of shadow address space, so there the bound is
    ASan's own allocation limit), runs the calls and writes the counts."""
    if library:
        torch.ops.load_library(library)
    else:
        from hf_sparse.ops import load_kernels

        assert load_kernels(), "the C++ ops did not build"
        limit = _vm_bytes() + (2 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(2)
    start = time.perf_counter()
    result = run_calls(calls_per_op, seed, head_multiple, Path(progress))
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak_rss_mb()
    Path(out).write_text(json.dumps(result))


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def head_multiple() -> int:
    """Head dims the CPU attention kernel takes are multiples of two vectors: 16 floats with AVX2, 2 without."""
    from hf_sparse.ops import _loader

    return 16 if "-mavx2" in _loader.cpu_flags() else 2


def peak_rss_mb() -> float:
    """This process's own resident-memory high-water mark. Not getrusage's ru_maxrss: Linux carries the parent's mark
    across fork and exec, so a worker started by a large test process would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(folder: Path, *, calls_per_op: int, seed: int, sanitized: bool, timeout: float) -> dict:
    """Runs :func:`worker` in a subprocess and returns its counts plus ``crashed`` / ``hung`` and the case it was on.
    With ``sanitized``, the ASan + UBSan build runs with the ASan runtime preloaded and an allocation limit."""
    out, progress = folder / "fuzz.json", folder / "fuzz.case"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    library = None
    if sanitized:
        library = str(build_sanitized())
        env["LD_PRELOAD"] = preload()
        env["HF_SPARSE_DISABLE_KERNELS"] = "1"  # only the sanitizer build may define the ops in that process
        # Allocations over 1 GB fail (and raise) instead of being made; RSS over 2 GB kills the process (a failure).
        env["ASAN_OPTIONS"] = (
            "detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=1024:hard_rss_limit_mb=2048:"
            "abort_on_error=1:halt_on_error=1:detect_odr_violation=0"
        )
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    script = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import kernel_fuzz; "
        f"kernel_fuzz.worker({library!r}, {calls_per_op}, {seed}, {head_multiple()}, {str(out)!r}, {str(progress)!r})"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        case = progress.read_text() if progress.exists() else "?"
        return {"hung": True, "crashed": False, "case": case}
    if proc.returncode != 0 or not out.exists():
        case = progress.read_text() if progress.exists() else "?"
        return {"hung": False, "crashed": True, "case": case, "rc": proc.returncode, "stderr": proc.stderr[-6000:]}
    result = json.loads(out.read_text())
    result.update(hung=False, crashed=False, stderr=proc.stderr[-2000:])
    return result


def summary(result: dict) -> str:
    ops = result["ops"]
    keys = ("calls", "matched", "raised", "too_large", "unspecified", "valid_calls")
    total = {k: sum(c[k] for c in ops.values()) for k in keys}
    lines = [
        f"{total['calls']} calls over {len(ops)} ops in {result['seconds']:.0f} s: {total['matched']} matched the "
        f"reference, {total['raised']} raised naming the op and an argument, {total['too_large']} could not allocate "
        f"a valid but huge result, {total['unspecified']} had no defined result (returned or raised, no crash); "
        f"{len(result['failures'])} failures; crashes 0, hangs 0; peak RSS "
        f"{result['peak_rss_mb']:.0f} MB; slowest call {result['max_call_s'] * 1e3:.1f} ms"
    ]
    lines += [f"  {op}: {c}" for op, c in ops.items()]
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/ops/kernel_fuzz.py [calls per op] [--sanitized]
    import tempfile

    calls = int(next((a for a in sys.argv[1:] if a.isdigit()), "300"))
    with tempfile.TemporaryDirectory() as tmp:
        res = run_worker(Path(tmp), calls_per_op=calls, seed=0, sanitized="--sanitized" in sys.argv, timeout=1800)
    if res.get("crashed") or res.get("hung"):
        print(json.dumps(res, indent=1))
        sys.exit(1)
    print(summary(res))
    print("\n".join(res["failures"][:60]))
