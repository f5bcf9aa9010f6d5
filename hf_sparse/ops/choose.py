"""Automatic choice of a storage format per layer, from its pattern and a cost model measured on this machine.

The cost model times ``spmm`` (whatever backend it dispatches to here: our kernels, or the PyTorch reference when
they cannot be built), dense ``F.linear`` and the other dense configurations of this machine (bf16 where the CPU
has native bf16, torch's dynamic int8), and our int8 layers with dynamic int8 inputs (``qbsr`` in 1 x 4 and 16 x 4
blocks, integer kernels) on small calibration matrices at N = 1, 16 and 128, and fits
``seconds = overhead + per_entry * stored_entries`` per format and N. Predictions for another N interpolate in
log N. It is cached per machine, thread count, torch version and kernel build in
``$HF_SPARSE_CACHE/cost_model/`` (default ``~/.cache/hf_sparse``), so calibration (about a second) runs once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FormatError, quote
from ..formats import SparseFormat, to_format
from ..formats.base import check_weight
from ..machine import _cpu_model, isa_flags
from . import _loader
from .spmm import dynamic_int8_linear, spmm

__all__ = [
    "CostModel",
    "FormatChoice",
    "NUMERICS",
    "amx_in_use",
    "choose_format",
    "calibrate",
    "cost_model",
    "native_bf16",
]

CALIBRATION_NS = (1, 16, 128)
#: Candidate formats ``choose_format`` considers by default, by the name it reports.
CANDIDATES = ("csr", "bsr16", "bsr32", "nm2:4", "hybrid")
#: Candidates for int8 weights with dynamic int8 inputs (``activation="dynamic"``): ``qbsr`` in 1 x 4 blocks (fine
#: patterns) or 16 x 4 blocks (one row per vector lane; also the dense int8 layout: every block stored).
INT8_CANDIDATES = ("qbsr1x4", "qbsr16x4")
#: int8 blocks the AMX tile kernels take (one 16 x 64 A tile per block), calibrated where they are in use.
AMX_INT8_CANDIDATES = ("qbsr16x64",)
#: Dense configurations timed besides fp32, to say what the best dense layer of this machine would cost.
DENSE_ALTERNATIVES = ("dense-bf16", "dense-int8")
#: Float formats calibrated with bf16 values too (for bf16 models), where the CPU has native bf16.
BF16_KINDS = ("csr-bf16", "bsr16-bf16")
#: The arithmetic ``choose_format(numerics=...)`` / ``sparsify_(numerics=...)`` can compare across.
NUMERICS = ("keep", "bfloat16", "int8")
_SCHEMA = 3


@dataclass
class CostModel:
    """``seconds(format, entries, N) = overhead[format][N] + per_entry[format][N] * entries`` at calibrated N."""

    key: str
    backend: str
    threads: int
    overhead: dict[str, dict[int, float]] = field(default_factory=dict)
    per_entry: dict[str, dict[int, float]] = field(default_factory=dict)

    def predict(self, fmt: str, entries: float, n: int) -> float:
        """Predicted seconds for ``fmt`` (``"dense"``, ``"csr"``, ``"bsr16"``, ``"bsr32"``, ``"nm2:4"``)."""
        if fmt not in self.per_entry:
            raise FormatError(f"cost model: no calibration for {fmt!r}; calibrated: {sorted(self.per_entry)}.")
        return _interp(self.overhead[fmt], n) + _interp(self.per_entry[fmt], n) * entries

    def to_json(self) -> str:
        return json.dumps({"schema": _SCHEMA, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> CostModel:
        data = json.loads(text)
        if data.pop("schema", None) != _SCHEMA:
            raise FormatError("cost model: cache file has another schema version; it will be recalibrated.")
        for k in ("overhead", "per_entry"):
            data[k] = {f: {int(n): float(v) for n, v in d.items()} for f, d in data[k].items()}
        return cls(**data)


def _interp(points: dict[int, float], n: int) -> float:
    """Piecewise-linear in log2(N) between calibrated points; proportional to N beyond the largest."""
    ns = sorted(points)
    n = max(int(n), 1)
    if n <= ns[0]:
        return points[ns[0]]
    if n >= ns[-1]:
        return points[ns[-1]] * n / ns[-1]
    for lo, hi in zip(ns, ns[1:]):
        if lo <= n <= hi:
            t = (math.log2(n) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
            return points[lo] + t * (points[hi] - points[lo])
    raise AssertionError("unreachable")


def _best_time(fn, repeat: int = 7) -> float:
    """The fastest of ``repeat`` calls after a warm-up: what the call costs when nothing else competes for the
    core (on a shared machine a median carries other jobs' interference into the model)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _calibration_weights(fmt: str, gen: torch.Generator) -> list[tuple[Any, float]]:
    """Two (weight, stored entries) points of different size per format, so overhead and slope separate."""
    if fmt.endswith("-bf16") and fmt != "dense-bf16":  # the float format with bf16 values
        out = []
        for w, entries in _calibration_weights(fmt.removesuffix("-bf16"), gen):
            dense = w.to_dense().bfloat16()
            out.append((to_format(type(w).name, dense, dense != 0, **_format_params(w)), entries))
        return out
    rows, cols = 1536, 384
    out = []
    for density in (0.3, 0.06):
        if fmt == "dense":
            r = max(16, int(rows * density / 0.3))
            out.append((torch.randn(r, cols, generator=gen), r * cols))
            continue
        if fmt in ("dense-bf16", "dense-int8"):
            r = max(16, int(rows * density / 0.3))
            out.append((torch.randn(r, cols, generator=gen), r * cols))
            continue
        if fmt.startswith("qbsr"):
            br, bc = (int(v) for v in fmt[4:].split("x"))
            keep = torch.rand(rows // br, cols // bc, generator=gen) < density
            keep = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)
            w = to_format("qbsr", torch.randn(rows, cols, generator=gen), keep, block=(br, bc), activation="dynamic")
            out.append((w, w.values.numel()))
            continue
        if fmt.startswith("bsr"):
            b = int(fmt[3:])
            keep = torch.rand(rows // b, cols // b, generator=gen) < density
            keep = keep.repeat_interleave(b, 0).repeat_interleave(b, 1)
            w = to_format("bsr", torch.randn(rows, cols, generator=gen), keep, block=(b, b))
            out.append((w, w.values.numel()))
        elif fmt == "nm2:4":
            r = max(16, int(rows * density / 0.3))
            order = torch.rand(r, cols // 4, 4, generator=gen).argsort(-1)[..., :2]
            keep = torch.zeros(r, cols // 4, 4, dtype=torch.bool).scatter_(-1, order, True).reshape(r, cols)
            w = to_format("nm", torch.randn(r, cols, generator=gen), keep, n=2, m=4)
            out.append((w, w.values.numel()))
        else:
            keep = torch.rand(rows, cols, generator=gen) < density
            w = to_format("csr", torch.randn(rows, cols, generator=gen), keep)
            out.append((w, w.values.numel()))
    return out


def _format_params(w: SparseFormat) -> dict[str, Any]:
    return {"block": tuple(w.block)} if hasattr(w, "block") else {}


def _cache_key() -> tuple[str, str]:
    backend = "cpu-kernels" if _loader.load() else "reference"
    build = _loader.build_dir().name if backend == "cpu-kernels" else "none"
    raw = f"{_cpu_model()}|{torch.get_num_threads()}|{torch.__version__}|{build}|{sorted(amx_in_use())}|{_SCHEMA}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16], backend


def amx_in_use() -> set[str]:
    """Which AMX tile kernels (``"int8"``, ``"bf16"``) the loaded C++ ops use on this machine (see
    ``kernel_status()["amx"]``); empty where they are off or the ops are not built."""
    if not _loader.load():
        return set()
    line = _loader.status()["amx"]
    if not line.startswith("amx: in use"):
        return set()
    return {kind for kind in ("int8", "bf16") if f"{kind} off" not in line}


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), so a bf16 dense model is a real option."""
    flags = set(isa_flags())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _timed_call(fmt: str, w, n: int, gen: torch.Generator):
    """A call of one calibration kind on ``n`` tokens, or None where the kind cannot run here."""
    if fmt in ("dense", "dense-bf16", "dense-int8"):
        x = torch.randn(n, w.shape[1], generator=gen)
        if fmt == "dense":
            return lambda: torch.nn.functional.linear(x, w)
        if fmt == "dense-bf16":
            wb, xb = w.bfloat16(), x.bfloat16()
            return lambda: torch.nn.functional.linear(xb, wb)
        layer = _torch_dynamic_int8(w)
        return None if layer is None else (lambda: layer(x))
    if fmt.startswith("qbsr"):
        x = torch.randn(n, w.shape[1], generator=gen)
        if dynamic_int8_linear(w, x) is None:  # no C++ ops: the simulated path is not what would run
            return None
        return lambda: dynamic_int8_linear(w, x)
    xt = torch.randn(w.shape[1], n, generator=gen).to(w.dtype)
    return lambda: spmm(w, xt)


def _torch_dynamic_int8(w: torch.Tensor):
    """torch's dynamic int8 Linear for ``w`` (what ``torch.ao.quantization.quantize_dynamic`` makes), or None."""
    import warnings

    try:
        from torch.ao.quantization import quantize_dynamic

        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight.data = w
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
    except Exception:  # a torch build without a quantized engine
        return None


def calibrate(seed: int = 0) -> CostModel:
    """Measure the cost model on this machine now (about a second with the kernels built)."""
    key, backend = _cache_key()
    gen = torch.Generator().manual_seed(seed)
    model = CostModel(key=key, backend=backend, threads=torch.get_num_threads())
    kinds = ["dense", "csr", "bsr16", "bsr32", "nm2:4", *INT8_CANDIDATES, "dense-int8"]
    if "int8" in amx_in_use():  # int8 blocks on the AMX tiles
        kinds += AMX_INT8_CANDIDATES
    if native_bf16():  # bf16 models: dense bf16 against our bf16-value kernels
        kinds += ["dense-bf16", *BF16_KINDS]
    for fmt in kinds:
        points = _calibration_weights(fmt, gen)
        model.overhead[fmt], model.per_entry[fmt] = {}, {}
        for n in CALIBRATION_NS:
            measured = []
            for w, entries in points:
                call = _timed_call(fmt, w, n, gen)
                if call is None:
                    break
                measured.append((entries, _best_time(call)))
            if len(measured) < 2:  # this kind cannot run here (e.g. no quantized engine in this torch)
                model.overhead.pop(fmt, None), model.per_entry.pop(fmt, None)
                break
            (e1, t1), (e2, t2) = measured
            if e1 != e2 and (t1 - t2) / (e1 - e2) > 0:
                slope = (t1 - t2) / (e1 - e2)
            else:  # the larger weight was not slower (a disturbed measurement): proportional to the entries
                slope = max(t1 / max(e1, 1), t2 / max(e2, 1))
            model.per_entry[fmt][n] = slope
            model.overhead[fmt][n] = max(t1 - slope * e1, 0.0)
    return model


_MODELS: dict[str, CostModel] = {}


def cost_model(*, recalibrate: bool = False) -> CostModel:
    """The cost model for this machine and thread count: from memory, the cache file, or calibrated now."""
    key, _ = _cache_key()
    if not recalibrate and key in _MODELS:
        return _MODELS[key]
    base = Path(os.environ.get("HF_SPARSE_CACHE", Path.home() / ".cache" / "hf_sparse")) / "cost_model"
    path = base / f"{key}.json"
    model = None
    if path.exists() and not recalibrate:
        try:
            model = CostModel.from_json(path.read_text())
        except (ValueError, TypeError, KeyError, FormatError):
            model = None  # a stale or damaged cache is recalibrated, never trusted
    if model is None:
        model = calibrate()
        try:
            base.mkdir(parents=True, exist_ok=True)
            path.write_text(model.to_json())
        except OSError:
            pass  # a read-only cache folder only costs a recalibration next time
    _MODELS[key] = model
    return model


@dataclass(frozen=True)
class FormatChoice:
    """What :func:`choose_format` picked for one weight, the predictions it compared, and why."""

    format: str  # "dense" (the layer as it is), "csr", "bsr", "nm", "hybrid", "qbsr" or "full"
    params: dict[str, Any]
    predicted_s: dict[str, float]
    reasons: tuple[str, ...]
    #: The key of ``predicted_s`` that was chosen ("dense", "csr", "bsr16", "qbsr1x4", "bfloat16:dense", ...).
    chosen: str = ""

    @property
    def is_sparse(self) -> bool:
        """Whether the layer is stored in a hf_sparse format (``"full"``, a dense weight in another dtype, is)."""
        return self.format != "dense"

    @property
    def seconds(self) -> float | None:
        """The predicted time of the choice for ``batch_hint`` tokens, where it was predicted."""
        return self.predicted_s.get(self.chosen)

    def build(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> SparseFormat:
        """Store ``weight`` in the chosen format (raises for ``"dense"``). A ``dtype`` parameter casts the weight
        first (a bf16 sparse layer in a float32 model)."""
        if not self.is_sparse:
            raise FormatError("choose_format kept this weight dense; there is no sparse format to build.")
        params = dict(self.params)
        if self.format != "full" and "dtype" in params:
            weight = weight.to(getattr(torch, params.pop("dtype")))
        return to_format(self.format, weight, mask, **params)


def _nm_violations(keep: torch.Tensor, n: int, m: int) -> int:
    rows, cols = keep.shape
    if cols % m:
        return -1
    return int((keep.reshape(rows, cols // m, m).sum(-1) > n).sum())


def choose_format(
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    batch_hint: int = 16,
    device: str | torch.device = "cpu",
    candidates: tuple[str, ...] | None = None,
    margin: float = 0.9,
    model: CostModel | None = None,
    activation: str | None = None,
    numerics: str | tuple[str, ...] | None = None,
) -> FormatChoice:
    """Pick the storage for one weight: the candidate predicted fastest for ``batch_hint`` tokens, or dense when
    no candidate is predicted faster than ``margin`` times dense.

    With ``activation="dynamic"`` the weight becomes int8 codes with dynamic int8 inputs whatever is chosen (the
    numbers do not depend on the choice): the faster of ``qbsr`` in 1 x 4 blocks and in 16 x 4 blocks (which, with
    every block stored, is also the dense int8 layout), both on the integer kernels. The reasons also give what the
    other dense configurations of this machine are predicted to cost (fp32, bf16 where native, torch's dynamic int8).

    Args:
        weight: 2-D weight. mask: stored positions (default: non-zeros).
        batch_hint: the N (tokens per call) the layer will mostly see.
        device: where it will run; only "cpu" has calibrated kernels today, other devices keep dense.
        candidates: among "csr", "bsr16", "bsr32", "nm2:4", "hybrid" (default: all); with ``activation="dynamic"``
            among "qbsr1x4", "qbsr16x4" and, where the AMX int8 tile kernels are in use, "qbsr16x64" (default:
            those this machine has).
        margin: a sparse format must be predicted at most this fraction of dense time.
        model: a cost model (default: this machine's, calibrated once and cached).
        activation: None (float values, the default) or ``"dynamic"`` (int8 weights and per-token int8 inputs).
        numerics: the arithmetic the layer may take, to compare across: ``"keep"`` (the weight's own dtype),
            ``"bfloat16"`` (bf16 values and inputs; only where this CPU has native bf16) and ``"int8"`` (int8
            weights and per-token int8 inputs, as ``activation="dynamic"``); ``"fastest"`` means all three. The
            choice is the option predicted fastest, dense or sparse, in any of them: a layer no sparse format speeds
            up is kept dense in the fastest dtype (``"full"`` format for bf16, ``qbsr`` 16 x 4 with every block
            stored for int8). Other numerics than the layer's own change its results (as casting does).

    Returns:
        A :class:`FormatChoice` whose ``reasons`` say what each candidate was predicted to cost or why it did not
        apply, and why the winner won.
    """
    keep = check_weight(weight, mask)
    if numerics is not None:
        if activation is not None:
            raise FormatError("choose_format: give numerics or activation, not both (numerics ('int8',) is the same).")
        if candidates is not None:
            raise FormatError("choose_format: candidates cannot be combined with numerics.")
        if torch.device(device).type == "cpu":
            return _choose_numerics(weight, mask, numerics, batch_hint, margin, model or cost_model())
    if activation not in (None, "dynamic"):
        raise FormatError(f"choose_format: activation must be None or 'dynamic', got {quote(activation)}.")
    allowed = INT8_CANDIDATES + AMX_INT8_CANDIDATES if activation else CANDIDATES
    default = CANDIDATES
    if activation and torch.device(device).type == "cpu":  # the AMX layouts where this machine's model has them
        model = model or cost_model()
        default = INT8_CANDIDATES + tuple(c for c in AMX_INT8_CANDIDATES if c in model.per_entry)
    elif activation:
        default = INT8_CANDIDATES
    candidates = default if candidates is None else tuple(candidates)
    unknown = sorted(set(candidates) - set(allowed))
    if unknown:
        raise FormatError(f"choose_format: unknown candidates {unknown}; choose among {list(allowed)}.")
    if not isinstance(batch_hint, int) or batch_hint < 1:
        raise FormatError(f"choose_format: batch_hint must be a positive integer, got {batch_hint!r}.")
    rows, cols = weight.shape
    nnz = int(keep.sum())
    density = nnz / max(rows * cols, 1)
    device = torch.device(device)
    if device.type != "cpu":
        return FormatChoice("dense", {}, {}, (f"no calibrated hf_sparse kernel for {device.type} yet: kept dense",))
    model = model or cost_model()
    n = batch_hint
    notes: list[str] = []
    if weight.dtype == torch.bfloat16 and activation is None:
        if "dense-bf16" in model.per_entry:
            model = _Bf16View(model)
            dropped = [c for c in candidates if c not in _Bf16View.KINDS]
            candidates = tuple(c for c in candidates if c in _Bf16View.KINDS)
            if dropped:
                notes.append(f"{', '.join(dropped)}: not calibrated with bf16 values")
        else:
            notes.append("bf16 weight: this machine has no native bf16, compared at float32 costs")
    dense_s = model.predict("dense", rows * cols, n)
    predicted: dict[str, float] = {"dense": dense_s}
    reasons = [f"dense: {dense_s * 1e3:.3f} ms predicted ({rows}x{cols}, N={n}, density {density:.1%})", *notes]
    for alt in DENSE_ALTERNATIVES:  # what the other dense configurations of this machine would cost
        if alt in model.per_entry and not (alt == "dense-bf16" and isinstance(model, _Bf16View)):
            predicted[alt] = model.predict(alt, rows * cols, n)
            reasons.append(f"{alt}: {predicted[alt] * 1e3:.3f} ms predicted (dense, other numerics)")
    if activation == "dynamic":
        return _choose_int8(keep, n, candidates, model, predicted, reasons)
    options: dict[str, tuple[str, dict[str, Any]]] = {}

    if "csr" in candidates:
        predicted["csr"] = model.predict("csr", nnz, n)
        options["csr"] = ("csr", {})
        reasons.append(f"csr: {predicted['csr'] * 1e3:.3f} ms predicted ({nnz} stored)")
    for b in (16, 32):
        name = f"bsr{b}"
        if name not in candidates:
            continue
        if rows % b or cols % b:
            reasons.append(f"{name}: not applicable, shape {rows}x{cols} is not divisible by {b}x{b}")
            continue
        blocks = int(keep.reshape(rows // b, b, cols // b, b).any(dim=(1, 3)).sum())
        entries = blocks * b * b
        if entries > margin * rows * cols:
            # Whole blocks are multiplied, zeros included: with nearly every block present, BSR does the dense
            # multiply-adds without the dense kernel's tuning. A calibration disturbed by a busy machine can predict
            # otherwise (it did, on a shared 2-core machine: 0.64x dense measured for a "1.86x" prediction).
            reasons.append(
                f"{name}: not useful, its {blocks} blocks hold {entries / (rows * cols):.0%} of the dense entries"
            )
            continue
        predicted[name] = model.predict(name, entries, n)
        options[name] = ("bsr", {"block": (b, b)})
        fill = nnz / max(entries, 1)
        reasons.append(f"{name}: {predicted[name] * 1e3:.3f} ms predicted ({blocks} blocks, {fill:.0%} filled)")
    if "nm2:4" in candidates:
        bad = _nm_violations(keep, 2, 4)
        if bad:
            why = f"{cols} columns not divisible by 4" if bad < 0 else f"{bad} groups of 4 keep more than 2"
            reasons.append(f"nm2:4: not applicable, {why}")
        else:
            predicted["nm2:4"] = model.predict("nm2:4", rows * cols // 2, n)
            options["nm2:4"] = ("nm", {"n": 2, "m": 4})
            reasons.append(f"nm2:4: {predicted['nm2:4'] * 1e3:.3f} ms predicted")
    if "hybrid" in candidates:
        # A row is cheaper dense once its CSR cost per stored entry times its nonzeros exceeds dense per row.
        per_dense = model.predict("dense", rows * cols, n) / max(rows * cols, 1)
        per_csr = max(model.predict("csr", nnz, n) / max(nnz, 1), 1e-15)
        threshold = min(per_dense / per_csr, 1.0)
        row_density = keep.float().mean(1)
        dense_rows = int((row_density >= threshold).sum())
        if dense_rows == 0 or dense_rows == rows:
            reasons.append(f"hybrid: not useful, {dense_rows} of {rows} rows are denser than {threshold:.0%}")
        else:
            sparse_nnz = int(keep[row_density < threshold].sum())
            predicted["hybrid"] = model.predict("dense", dense_rows * cols, n) + model.predict("csr", sparse_nnz, n)
            options["hybrid"] = ("hybrid", {"threshold": float(threshold)})
            reasons.append(
                f"hybrid: {predicted['hybrid'] * 1e3:.3f} ms predicted ({dense_rows} rows denser than "
                f"{threshold:.0%} stored dense)"
            )
    sparse = {k: v for k, v in predicted.items() if k in options}
    if not sparse:
        return FormatChoice("dense", {}, predicted, (*reasons, "kept dense: no sparse candidate applies"), "dense")
    best = min(sparse, key=sparse.get)
    ratio = dense_s / sparse[best]
    if sparse[best] > margin * dense_s:
        verdict = (
            f"kept dense: the best sparse format ({best}) is predicted {ratio:.2f}x dense (needs {1 / margin:.2f}x)"
        )
        return FormatChoice("dense", {}, predicted, (*reasons, verdict), "dense")
    fmt, params = options[best]
    verdict = f"chose {best}: predicted {ratio:.2f}x faster than dense"
    return FormatChoice(fmt, params, predicted, (*reasons, verdict), best)


def _choose_int8(keep, n, candidates, model, predicted, reasons) -> FormatChoice:
    """The faster int8 layout (``qbsr`` 1 x 4 or 16 x 4, dynamic int8 inputs) for ``keep``."""
    rows, cols = keep.shape
    options: dict[str, dict[str, Any]] = {}
    for name in candidates:
        br, bc = (int(v) for v in name[4:].split("x"))
        if rows % br or cols % bc:
            reasons.append(f"{name}: not applicable, shape {rows}x{cols} is not divisible by {br}x{bc}")
            continue
        if name not in model.per_entry:
            why = "no AMX int8 tile kernels in use" if name in AMX_INT8_CANDIDATES else "the C++ ops are not available"
            reasons.append(f"{name}: not calibrated here ({why})")
            continue
        blocks = int(keep.reshape(rows // br, br, cols // bc, bc).any(dim=(1, 3)).sum())
        predicted[name] = model.predict(name, blocks * br * bc, n)
        options[name] = {"block": (br, bc), "activation": "dynamic"}
        reasons.append(
            f"{name}: {predicted[name] * 1e3:.3f} ms predicted ({blocks} blocks, "
            f"{int(keep.sum()) / max(blocks * br * bc, 1):.0%} filled)"
        )
    if not options:
        return FormatChoice("dense", {}, predicted, (*reasons, "kept dense (float): no int8 layout applies"))
    best = min(options, key=lambda k: predicted[k])
    verdict = f"chose {best}: int8 weights and dynamic int8 inputs, {predicted[best] * 1e3:.3f} ms predicted"
    if "dense-int8" in predicted:
        verdict += f" ({predicted['dense-int8'] / predicted[best]:.2f}x torch's dense dynamic int8)"
    return FormatChoice("qbsr", options[best], predicted, (*reasons, verdict), best)


def check_numerics(numerics: str | tuple[str, ...] | list[str], who: str) -> tuple[str, ...]:
    """``numerics`` as a tuple of :data:`NUMERICS` names (``"fastest"``: all of them), or a ConfigError."""
    from ..errors import ConfigError

    if isinstance(numerics, str):
        numerics = NUMERICS if numerics == "fastest" else (numerics,)
    try:
        out = tuple(dict.fromkeys(numerics))
    except TypeError:
        raise ConfigError(
            f"{who}: numerics must be a name or a list of names, got {type(numerics).__name__}."
        ) from None
    bad = [n for n in out if n not in NUMERICS]
    if bad or not out:
        shown = quote(bad[0]) if bad else "nothing"
        raise ConfigError(f"{who}: numerics must be 'fastest' or among {list(NUMERICS)}, got {shown}.")
    return out


def _choose_numerics(weight, mask, numerics, n: int, margin: float, model: CostModel) -> FormatChoice:
    """The fastest predicted option, dense or sparse, across the allowed arithmetic (see ``choose_format``)."""
    allowed = check_numerics(numerics, "choose_format")
    own = str(weight.dtype).removeprefix("torch.")
    options: dict[str, FormatChoice] = {}
    reasons: list[str] = []
    for num in allowed:
        if num == "keep" or (num == "bfloat16" and weight.dtype == torch.bfloat16):
            label, choice = own, choose_format(weight, mask, batch_hint=n, margin=margin, model=model)
        elif num == "bfloat16":
            if "dense-bf16" not in model.per_entry:
                reasons.append("bfloat16: not considered, this CPU has no native bf16")
                continue
            label = "bfloat16"
            choice = choose_format(weight.bfloat16(), mask, batch_hint=n, margin=margin, model=model)
            if choice.is_sparse:
                choice = FormatChoice(
                    choice.format,
                    {**choice.params, "dtype": "bfloat16"},
                    choice.predicted_s,
                    choice.reasons,
                    choice.chosen,
                )
            else:
                choice = FormatChoice("full", {"dtype": "bfloat16"}, choice.predicted_s, choice.reasons, "dense")
        else:
            label = "int8"
            choice = choose_format(weight, mask, batch_hint=n, margin=margin, model=model, activation="dynamic")
            if not choice.is_sparse:
                reasons.append(f"int8: not considered, {choice.reasons[-1]}")
                continue
        if label in options:
            continue
        options[label] = choice
        reasons += [f"{label}: {r}" for r in choice.reasons]
    predicted = {f"{label}:{c.chosen}": c.seconds for label, c in options.items() if c.seconds is not None}
    if not predicted:
        return FormatChoice("dense", {}, {}, (*reasons, "kept dense: nothing could be predicted"), "")
    best = min(predicted, key=predicted.get)
    label = best.split(":", 1)[0]
    chosen = options[label]
    own_dense = options[own].predicted_s.get("dense") if own in options else None
    verdict = f"chose {best} ({predicted[best] * 1e3:.3f} ms predicted"
    if own_dense and best != f"{own}:dense":
        verdict += f", {own_dense / predicted[best]:.2f}x the layer dense in {own}"
    verdict += ")"
    return FormatChoice(chosen.format, chosen.params, predicted, (*reasons, verdict), best)


class _Bf16View:
    """A cost model seen by a bf16 weight: dense, CSR and 16 x 16 BSR at their bf16 costs (hybrid is dense rows
    plus CSR)."""

    KINDS = ("csr", "bsr16", "hybrid")
    _MAP = {"dense": "dense-bf16", "csr": "csr-bf16", "bsr16": "bsr16-bf16"}

    def __init__(self, model: CostModel):
        self.model = model
        self.per_entry = {k: v for k, v in model.per_entry.items() if k in DENSE_ALTERNATIVES}

    def predict(self, fmt: str, entries: float, n: int) -> float:
        return self.model.predict(self._MAP.get(fmt, fmt), entries, n)
