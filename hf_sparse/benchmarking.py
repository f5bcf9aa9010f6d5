"""The timing protocol every ``hf-sparse bench`` suite shares (see docs/benchmarks.md).

Correctness is checked by each suite before timing. Then: warm up; interleave ours and every baseline round by
round, each called once per round (or :data:`MODEL_BLOCK` times back to back, the last timed, where runtimes with
worker threads of their own take part) for several rounds; report medians and the median, min and max of the
per-round ratios (baseline / ours, > 1 means ours is faster). Limits (sgemm GFLOP/s and streaming-read GB/s) are
measured in the same process.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "measure_limits",
    "best_time",
    "interleave",
    "summarize",
    "dynamic_int8",
    "cold_bytes",
    "DenseBaseline",
    "DenseBaselines",
    "dense_linear_baselines",
    "dense_model_baselines",
    "best_dense",
    "add_dense_comparison",
    "dense_table",
    "LINEAR_TOLERANCES",
    "MODEL_TOLERANCES",
]


def dynamic_int8(model):
    """``torch.ao`` dynamic int8 quantisation of a copy of ``model``'s Linear layers (a baseline users have), or None
    where this torch build has no quantized engine (the suite then records the baseline as missing)."""
    import copy
    import warnings

    try:
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    except Exception:  # not every torch build ships the quantized engines
        return None


def best_time(fn: Callable[[], object], repeat: int) -> float:
    out = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - start)
    return out


def measure_limits(threads: int) -> dict:
    """Peak-like sgemm GFLOP/s and streaming-read GB/s on this machine, with ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    t = best_time(lambda: torch.mm(a, b), 5)
    gflops = 2 * 1024**3 / t / 1e9
    big = torch.ones(64 * 1024 * 1024)  # 256 MB, far beyond the caches
    big.sum()
    t = best_time(lambda: big.sum(), 5)
    return {"gflops": gflops, "gbps": big.numel() * 4 / t / 1e9}


#: How many times a whole-model latency measurement calls each configuration back to back per round (the last call
#: timed): the calls before it absorb the cost of switching from the previous configuration. Measured on an AMD EPYC
#: Zen 4 with 2 threads, batch 1 x 128 tokens of MiniLM-L6: OpenVINO called right after a torch call (whose OpenMP
#: workers still spin) ran 11.7 ms against 8.2 ms alone, a 3-layer student 6.9 ms against 3.5 ms; the second of two
#: consecutive calls ran 8.3 ms and 4.1 ms, and torch's configurations 4-10% faster than their first calls. The
#: ``hf-sparse bench`` suites that time such runtimes (``minilm``, ``spmm``, ``quant``) use it too; their records
#: carry it as ``params.block`` (records without it alternated call by call).
MODEL_BLOCK = 2


def interleave(
    calls: dict[str, Callable[[int], object]], rounds: int, warmup: int = 3, block: int = 1
) -> dict[str, list[float]]:
    """Time each call once per round, in turn (A B C A B C ...); ``calls`` take a call index (to rotate copies).

    ``block`` > 1: in each round each call runs ``block`` times back to back and only the last is timed
    (A A B B C C ... with ``block=2``): a runtime that keeps its own worker threads (OpenVINO, onnxruntime) next to
    torch's OpenMP pool is then timed as it runs when it has the machine to itself (see :data:`MODEL_BLOCK`), still
    interleaved with the others round by round. The call index counts every call, so rotated copies stay cold."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    for fn in calls.values():
        for i in range(warmup):
            fn(i)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        for name, fn in calls.items():
            for j in range(block - 1):
                fn(r * block + j)
            start = time.perf_counter()
            fn(r * block + block - 1)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: dict[str, list[float]], ours: str = "ours") -> tuple[float, dict[str, float], dict[str, dict]]:
    """(our median, baselines' medians, speedups {baseline: {median, min, max}} of per-round ratios)."""
    ours_s = statistics.median(times[ours])
    baselines = {k: statistics.median(v) for k, v in times.items() if k != ours}
    speedup = {}
    for k in baselines:
        ratios = [b / o for b, o in zip(times[k], times[ours])]
        speedup[k] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return ours_s, baselines, speedup


#: The protocol's floor for what "cold" rotates through, whatever the machine reports.
MIN_COLD_BYTES = 64 * 2**20


def cold_bytes(llc: int | None = None) -> int:
    """Bytes a "cold" case cycles through between two calls of the same weights: twice the last-level cache this
    machine reports (:func:`hf_sparse.machine.llc_bytes`), and at least :data:`MIN_COLD_BYTES`, so no call finds
    its weights in the cache."""
    if llc is None:
        from .machine import llc_bytes

        llc = llc_bytes()
    return max(MIN_COLD_BYTES, 2 * (llc or 0))


# --- Dense baselines: the best dense configuration of the running machine -------------------------------------------

#: Largest relative error ``||y - y_fp32|| / ||y_fp32||`` a dense baseline of one Linear may show on the check input
#: before it is timed. bf16 rounds inputs and weights to 8 significant bits (~0.4% per product, less after the sum);
#: the int8 paths round activations and weights to 256 levels (~1.5% measured on Gaussian data). A baseline above
#: its bound is broken (wrong layout, wrong weights), not merely quantised, and is skipped with its error. The 4-bit
#: baseline has other numerics: nf4 rounds each weight to one of 16 levels of its block of 64 (~9% measured on
#: Gaussian weights), so its bound is looser, still far below the ~1 of a broken one. ``openvino`` computes in the
#: CPU plugin's default inference precision (bf16 where the CPU has it), hence bf16's bound; ``openvino-int8-weights``
#: keeps int8 weights (one scale per output channel) and rounds activations to that precision.
LINEAR_TOLERANCES = {
    "fp32": 1e-6,
    "bf16": 2e-2,
    "torch-dynamic-int8": 5e-2,
    "onnxruntime-dynamic-int8": 5e-2,
    "bitsandbytes-int8": 5e-2,
    "bitsandbytes-nf4": 0.2,
    "openvino": 2e-2,
    "openvino-int8-weights": 5e-2,
}
#: The same bound for a whole model's first output (e.g. ``last_hidden_state``). Errors compound through the layers
#: and per-tensor int8 activations meet the outlier features of real transformers: torch's dynamic int8 of
#: all-MiniLM-L6-v2 is ~0.36 away from fp32 by this measure (a real property of that method, recorded in each
#: record's ``baseline_errors``), while a broken baseline is ~1 or more away.
MODEL_TOLERANCES = {
    "fp32": 1e-6,
    "bf16": 5e-2,
    "torch-dynamic-int8": 0.5,
    "onnxruntime-dynamic-int8": 0.5,
    "openvino": 5e-2,
    "openvino-int8-weights": 0.5,
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what optional libraries print while they import, quantise or load (warnings, logging, stdout and
    stderr), so a benchmark's output is its results only."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _as_tensor(out: Any) -> torch.Tensor:
    """The first output of a baseline as a float32 tensor (a tensor, a transformers ModelOutput/tuple, or the list of
    numpy arrays an onnxruntime session returns)."""
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, (list, tuple)) or hasattr(out, "to_tuple"):
        return _as_tensor(out[0])
    return torch.from_numpy(out).float()


def _relative_error(out: Any, ref: torch.Tensor) -> float:
    """``||out - ref|| / max(||ref||, 1)``: relative for outputs of norm 1 or more, absolute below. A classifier
    that is unsure of the example has logits near zero (e.g. [-0.03, -0.01]), where a relative error would call any
    quantised baseline wrong."""
    got = _as_tensor(out)
    return float((got - ref).norm() / ref.norm().clamp_min(1.0))


def _native_bf16() -> tuple[bool, str]:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX-BF16), and the reason when it has not."""
    from . import machine

    flags = machine.isa_flags()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True, ""
    return False, (
        "no native bf16 on this CPU (neither avx512_bf16 nor amx_bf16 in its flags: "
        f"{', '.join(flags) or 'none'}); bf16 would be emulated and slower than fp32"
    )


@dataclass
class DenseBaseline:
    """One dense baseline: ``fns`` compute ``y`` from the prepared input, one function per copy of the weights (a
    cold case rotates through them); ``prepare`` turns the float32 input into what the baseline is timed on (a bf16
    model keeps its activations in bf16, so its input is cast once, untimed); ``nbytes``: the weights of one copy;
    ``error``: its relative error against fp32 on the check input."""

    name: str
    fns: list[Callable[[Any], Any]]
    prepare: Callable[[Any], Any]
    nbytes: int
    error: float = 0.0
    note: str = ""

    def __call__(self, inputs: Any) -> Any:
        return self.fns[0](self.prepare(inputs))


@dataclass
class DenseBaselines(Mapping):
    """The dense baselines available on this machine (a mapping name -> :class:`DenseBaseline`, each callable on
    the float32 input) and ``skipped``: name -> the reason a baseline is not there."""

    baselines: dict[str, DenseBaseline] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> DenseBaseline:
        return self.baselines[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.baselines)

    def __len__(self) -> int:
        return len(self.baselines)

    @property
    def errors(self) -> dict[str, float]:
        return {k: b.error for k, b in self.baselines.items()}

    @property
    def notes(self) -> dict[str, str]:
        return {k: b.note for k, b in self.baselines.items() if b.note}

    def timed(self, inputs: Any) -> dict[str, Callable[[int], object]]:
        """Calls for :func:`interleave` (they take the round index and rotate through the weight copies). Each
        baseline's input is prepared here, once: what is timed is the computation on an input already in the
        baseline's own dtype and container (bf16 tensor, numpy array), as inside a model of that kind."""
        out: dict[str, Callable[[int], object]] = {}
        for name, b in self.baselines.items():
            prepared = b.prepare(inputs)
            out[name] = lambda i, fns=b.fns, p=prepared: fns[i % len(fns)](p)
        return out

    def _add(self, b: DenseBaseline, ref: torch.Tensor, example: Any, tolerances: dict[str, float]) -> None:
        """Keep ``b`` if its output on ``example`` is within its tolerance of fp32 (else record why not). Every copy
        of its weights then runs twice on ``example``: the first calls of a copy do one-time work (bitsandbytes
        repacks 4-bit weights for its CPU kernel, OpenVINO builds its kernels for the input's shape: several ms),
        and a cold case reaches most copies only after :func:`interleave`'s warm-up, inside the timed rounds."""
        try:
            with torch.inference_mode():
                b.error = _relative_error(b(example), ref)
                prepared = b.prepare(example)
                for fn in b.fns:
                    fn(prepared)
                    fn(prepared)
        except Exception as exc:  # a baseline that cannot run here is reported, not fatal
            self.skipped[b.name] = f"failed on the check input: {_first_line(exc)}"
            return
        bound = tolerances[b.name]
        if not b.error <= bound:
            self.skipped[b.name] = f"wrong output: relative error {b.error:.3g} vs fp32 exceeds {bound:g}"
            return
        self.baselines[b.name] = b


def _n_copies(copies: int | Callable[[int], int], nbytes: int) -> int:
    return max(1, copies(nbytes) if callable(copies) else int(copies))


def _ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _ort_quantize(model_proto, folder: Path) -> bytes:
    """onnxruntime's dynamic int8 quantisation (int8 weights, uint8 activations quantised per call) of a model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = folder / "fp32.onnx", folder / "int8.onnx"
    if not isinstance(model_proto, (str, Path)):
        onnx.save(model_proto, str(src))
    else:
        src = Path(model_proto)
    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst.read_bytes()


def _ort_linear_graph(weight: torch.Tensor, bias: torch.Tensor | None):
    """One ``MatMul`` (+ ``Add``) graph, ``y = x @ W^T + b``, with the weight as an initializer."""
    from onnx import TensorProto, helper, numpy_helper

    M, K = weight.shape
    init = [numpy_helper.from_array(weight.detach().t().contiguous().float().numpy(), "W")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y" if bias is None else "h"])]
    if bias is not None:
        init.append(numpy_helper.from_array(bias.detach().float().contiguous().numpy(), "B"))
        nodes.append(helper.make_node("Add", ["h", "B"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", M])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime of the bench extra's range
    return model


def _bnb_int8_layer(weight: torch.Tensor, bias: torch.Tensor | None):
    import bitsandbytes as bnb

    M, K = weight.shape
    layer = bnb.nn.Linear8bitLt(K, M, bias=bias is not None, has_fp16_weights=False, threshold=0.0)
    layer.weight = bnb.nn.Int8Params(weight.detach().float().clone(), requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
    return layer.to("cpu").eval()


def _bnb_nf4_layer(weight: torch.Tensor, bias: torch.Tensor | None):
    """bitsandbytes' 4-bit layer with nf4 weights, one float32 scale per block of 64 (no nested quantisation of the
    scales: one dequantisation step less per call), computing in float32."""
    import bitsandbytes as bnb

    M, K = weight.shape
    kwargs = {"quant_type": "nf4", "compress_statistics": False}
    layer = bnb.nn.Linear4bit(K, M, bias=bias is not None, compute_dtype=torch.float32, **kwargs)
    layer.weight = bnb.nn.Params4bit(weight.detach().float().clone(), requires_grad=False, **kwargs)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
    return layer.to("cpu").eval()  # the move quantises the weights


_OPENVINO_NAMES = ("openvino", "openvino-int8-weights")
#: Skip reason of both OpenVINO baselines where the package is missing.
_OPENVINO_MISSING = "openvino not importable ({}); pip install 'hf-sparse[bench]'"


def _ov_compile(ov_model, threads: int):
    """``ov_model`` compiled for OpenVINO's CPU plugin with ``threads`` inference threads (the benchmark's, so its
    timings compare with the others') and the latency hint (one stream: one call at a time, as timed). The inference
    precision is the plugin's default: bf16 where the CPU has it, f32 otherwise."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    return ov.Core().compile_model(ov_model, "CPU", config)


def _ov_note(compiled, weights: str) -> str:
    import openvino as ov

    precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "bf16" or "f32"
    threads = compiled.get_property("INFERENCE_NUM_THREADS")
    version = ov.__version__.split("-")[0]
    return f"openvino {version} CPU, {weights} weights, inference precision {precision}, {threads} thread(s)"


def _ov_call(compiled) -> Callable[[Any], Any]:
    """One call of ``compiled``: its first output as a numpy array. The input is not copied (it is prepared once,
    untimed); the output is, as onnxruntime's and torch's calls return a new array too."""
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds, share_inputs=True)[0]


def _ov_int8_weight(w, axis: int):
    """``w`` (a float32 numpy matrix) as int8 with one float32 scale per output channel (``axis``: the reduction
    axis), symmetric, round to nearest, as the subgraph Constant(i8) -> Convert -> Multiply(scale): the pattern
    OpenVINO's CPU plugin runs as a weight-compressed matmul (weights decompressed inside the kernel)."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    scale = np.abs(w).max(axis=axis, keepdims=True).astype(np.float32) / 127
    scale[scale == 0] = 1
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))


def _ov_linear_model(weight: torch.Tensor, bias: torch.Tensor | None, int8: bool):
    """``y = x @ W^T + b`` as an OpenVINO model (input ``x``: (N, K) float32), weights float32 or int8."""
    import openvino as ov
    from openvino import opset13 as ops

    M, K = weight.shape
    w = weight.numpy()
    x = ops.parameter([-1, K], ov.Type.f32, name="x")
    y = ops.matmul(x, _ov_int8_weight(w, axis=1) if int8 else ops.constant(w.copy()), False, True)
    if bias is not None:
        y = ops.add(y, ops.constant(bias.numpy().copy()))
    return ov.Model([y], [x], "linear")


def _ov_compress_weights(ov_model) -> int:
    """Every ``MatMul`` of ``ov_model`` with a constant float32 matrix as its weight switched to int8 weights (in
    place; see :func:`_ov_int8_weight`), with openvino's own graph API (no nncf); returns how many."""
    import openvino as ov

    n = 0
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        src = op.input_value(1).get_node()
        if src.get_type_name() != "Constant" or src.get_output_element_type(0) != ov.Type.f32:
            continue
        w = src.get_data()
        if w.ndim != 2:
            continue
        axis = 1 if op.get_attributes()["transpose_b"] else 0  # the reduction (input) axis of the weight
        op.input(1).replace_source_output(_ov_int8_weight(w, axis).output(0))
        n += 1
    ov_model.validate_nodes_and_infer_types()
    return n


def dense_linear_baselines(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    example: torch.Tensor | None = None,
    copies: int | Callable[[int], int] = 1,
) -> DenseBaselines:
    """Every dense way this machine has to compute ``F.linear(x, weight, bias)``, each checked against fp32.

    Baselines (names): ``fp32`` (``F.linear``, MKL); ``bf16`` (``F.linear`` on bf16 input and weights, oneDNN; only
    where :func:`hf_sparse.machine.isa_flags` reports ``avx512_bf16`` or ``amx_bf16``); ``torch-dynamic-int8``
    (``torch.ao`` ``quantize_dynamic`` of an ``nn.Linear``: int8 weights, activations quantised per call, FBGEMM /
    oneDNN); ``onnxruntime-dynamic-int8`` (a one-``MatMul`` (+``Add``) ONNX graph quantised by
    ``onnxruntime.quantization.quantize_dynamic``, run with ``intra_op_num_threads`` = torch's thread count);
    ``bitsandbytes-int8`` (``Linear8bitLt`` on CPU, kept only where it runs and beats fp32 on ``example``).

    Each callable takes the float32 input; :meth:`DenseBaselines.timed` gives the timing calls, which run on the
    input already prepared in the baseline's dtype (see there). Checks run on ``example`` (default 8 seeded rows):
    relative error against fp32 within :data:`LINEAR_TOLERANCES`, else skipped with the error. Build with the
    benchmark's thread count set (onnxruntime's session takes it at build time).

    Args:
        copies: copies of the weights per baseline (an int, or a function of one copy's bytes: a cold case rotates
            through enough copies to leave the caches).

    Shapes:
        weight: (M, K). bias: (M,). example / x: (N, K) float32. Each output: (N, M).
    """
    weight = weight.detach().float()
    bias = None if bias is None else bias.detach().float()
    M, K = weight.shape
    if example is None:
        example = torch.randn(8, K, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.linear(example, weight, bias)
    out = DenseBaselines()

    def same(x):
        return x

    n = _n_copies(copies, weight.numel() * 4)
    ws = [(weight.clone(), None if bias is None else bias.clone()) for _ in range(n)]
    fp32 = [lambda x, w=w, b=b: torch.nn.functional.linear(x, w, b) for w, b in ws]
    out._add(
        DenseBaseline("fp32", fp32, same, weight.numel() * 4, note="F.linear (MKL)"), ref, example, LINEAR_TOLERANCES
    )

    native, why = _native_bf16()
    if native:
        n = _n_copies(copies, weight.numel() * 2)
        wb = [(weight.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16)) for _ in range(n)]
        fns = [lambda x, w=w, b=b: torch.nn.functional.linear(x, w, b) for w, b in wb]
        b16 = DenseBaseline("bf16", fns, lambda x: x.to(torch.bfloat16), weight.numel() * 2, note="F.linear (oneDNN)")
        out._add(b16, ref, example, LINEAR_TOLERANCES)
    else:
        out.skipped["bf16"] = why

    try:
        from torch.ao.quantization import quantize_dynamic

        linear = torch.nn.Linear(K, M, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        n = _n_copies(copies, weight.numel() + M * 4)
        with _quiet():  # torch.ao's deprecation notices
            layers = [quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)[0]]
            layers += [copy.deepcopy(layers[0]) for _ in range(n - 1)]
        engine = torch.backends.quantized.engine
        out._add(
            DenseBaseline("torch-dynamic-int8", layers, same, weight.numel() + M * 4, note=f"engine {engine}"),
            ref,
            example,
            LINEAR_TOLERANCES,
        )
    except Exception as exc:  # not every torch build ships the quantized engines
        out.skipped["torch-dynamic-int8"] = f"torch.ao quantize_dynamic failed: {_first_line(exc)}"

    try:
        with _quiet():
            import onnx  # noqa: F401
            import onnxruntime as ort
    except ImportError as exc:
        out.skipped["onnxruntime-dynamic-int8"] = (
            f"onnxruntime / onnx not importable ({exc.name}); pip install 'hf-sparse[bench]'"
        )
    else:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                model_bytes = _ort_quantize(_ort_linear_graph(weight, bias), Path(tmp))
            n = _n_copies(copies, weight.numel() + M * 4)
            sessions = [_ort_session(model_bytes, torch.get_num_threads()) for _ in range(n)]
            fns = [lambda x, s=s: s.run(None, {"x": x})[0] for s in sessions]
            b = DenseBaseline(
                "onnxruntime-dynamic-int8",
                fns,
                lambda x: x.detach().float().contiguous().numpy(),
                weight.numel() + M * 4,
                note=f"onnxruntime {ort.__version__}, {torch.get_num_threads()} intra-op thread(s)",
            )
            out._add(b, ref, example, LINEAR_TOLERANCES)
        except Exception as exc:
            out.skipped["onnxruntime-dynamic-int8"] = f"quantisation or session failed: {_first_line(exc)}"

    _add_openvino_linear(out, weight, bias, example, ref, copies)
    _add_bitsandbytes(out, weight, bias, example, ref, copies, "bitsandbytes-int8")
    _add_bitsandbytes(out, weight, bias, example, ref, copies, "bitsandbytes-nf4")
    return out


def _add_openvino_linear(out: DenseBaselines, weight, bias, example, ref, copies) -> None:
    """``openvino`` (float32 weights) and ``openvino-int8-weights`` of one Linear: a one-MatMul (+Add) graph built
    with openvino's own API, compiled per copy (each compiled model repacks its own weights)."""
    names = _OPENVINO_NAMES
    try:
        with _quiet():
            import openvino  # noqa: F401
    except ImportError as exc:
        out.skipped.update({name: _OPENVINO_MISSING.format(exc.name) for name in names})
        return
    M = weight.shape[0]
    for name, int8, nbytes in ((names[0], False, weight.numel() * 4), (names[1], True, weight.numel() + M * 4)):
        try:
            with _quiet():
                compiled = [
                    _ov_compile(_ov_linear_model(weight, bias, int8), torch.get_num_threads())
                    for _ in range(_n_copies(copies, nbytes))
                ]
        except Exception as exc:
            out.skipped[name] = f"OpenVINO could not build or compile the layer: {_first_line(exc)}"
            continue
        note = _ov_note(compiled[0], "int8 (one scale per output channel)" if int8 else "float32")
        prepare = lambda x: x.detach().float().contiguous().numpy()  # noqa: E731
        out._add(
            DenseBaseline(name, [_ov_call(c) for c in compiled], prepare, nbytes, note=note),
            ref,
            example,
            LINEAR_TOLERANCES,
        )


def _add_bitsandbytes(out: DenseBaselines, weight, bias, example, ref, copies, name: str) -> None:
    """bitsandbytes' int8 layer (``Linear8bitLt``, ``name`` ``bitsandbytes-int8``) or 4-bit layer (``Linear4bit``
    with nf4 weights, ``bitsandbytes-nf4``), kept only where its CPU path runs, is correct and beats fp32 on
    ``example``. The int8 CPU path computes in float16 (it casts any other input to float16, warning on every call),
    so it is timed on a float16 input, as in a float16 model; the nf4 one computes in float32. 4-bit weights have
    other numerics than the rest: its bound in :data:`LINEAR_TOLERANCES` is looser, and its note says so."""
    int8 = name == "bitsandbytes-int8"
    build = _bnb_int8_layer if int8 else _bnb_nf4_layer
    layer_name = "Linear8bitLt" if int8 else "Linear4bit (nf4)"
    prepare = (lambda x: x.half()) if int8 else (lambda x: x)
    M, K = weight.shape
    # nf4: two weights per byte and one float32 scale per block of 64
    nbytes = weight.numel() + M * 4 if int8 else weight.numel() // 2 + math.ceil(weight.numel() / 64) * 4
    try:
        with _quiet():  # its import reports missing GPU libraries and hub kernels
            import bitsandbytes as bnb
    except ImportError as exc:
        out.skipped[name] = f"bitsandbytes not importable ({exc.name}); pip install 'hf-sparse[bitsandbytes]'"
        return
    try:
        with _quiet():
            layer = build(weight, bias)
            with torch.inference_mode():
                layer(prepare(example))
    except Exception as exc:
        out.skipped[name] = (
            f"bitsandbytes' CPU {layer_name} layer does not run here on a {M}x{K} weight: {_first_line(exc)}"
        )
        return
    version = getattr(bnb, "__version__", "?")
    if int8:
        note = f"bitsandbytes {version}, int8 weights, float16 activations"
    else:
        note = f"bitsandbytes {version}, 4-bit nf4 weights (one float32 scale per 64), float32 activations"
    candidate = DenseBaseline(name, [layer], prepare, nbytes, note=note)
    with torch.inference_mode():
        error = _relative_error(candidate(example), ref)
        if not error <= LINEAR_TOLERANCES[name]:
            out.skipped[name] = f"wrong output: relative error {error:.3g} vs fp32 exceeds {LINEAR_TOLERANCES[name]:g}"
            return
        slower = _slower_than_fp32(layer, prepare(example), out, example)
    if slower:
        out.skipped[name] = f"bitsandbytes {version} {layer_name} on CPU is not faster than fp32 here: {slower}"
        return
    n = _n_copies(copies, candidate.nbytes)
    with _quiet():
        candidate.fns += [build(weight, bias) for _ in range(n - 1)]
    out._add(candidate, ref, example, LINEAR_TOLERANCES)


def _slower_than_fp32(layer, prepared, out: DenseBaselines, example) -> str:
    """Why ``layer`` on ``prepared`` is not faster than the fp32 baseline on ``example`` ("" where it is faster):
    a baseline that cannot win would only lengthen every benchmark."""
    layer(prepared)
    ours_s = best_time(lambda: layer(prepared), 5)
    fp32_s = best_time(lambda: out["fp32"](example), 5)
    if ours_s < fp32_s:
        return ""
    return f"{1e3 * ours_s:.3f} ms vs {1e3 * fp32_s:.3f} ms at N={example.shape[0]}"


def _cast_floating(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}


def _export_ort_model(model, example_inputs: dict, folder: Path) -> tuple[Path, list[str]]:
    """``model`` (a copy: the TorchScript exporter can leave state behind in the module it traces) exported to ONNX
    with positional tensor inputs and its first output."""
    names = [k for k, v in example_inputs.items() if torch.is_tensor(v)]

    class FirstOutput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            out = self.inner(**dict(zip(names, args)))
            return out[0] if not torch.is_tensor(out) else out

    path = folder / "model.onnx"
    with _quiet():
        torch.onnx.export(
            FirstOutput(copy.deepcopy(model)),
            tuple(example_inputs[k] for k in names),
            str(path),
            input_names=names,
            output_names=["output"],
            dynamo=False,
        )
    return path, names


def dense_model_baselines(
    model: torch.nn.Module, example_inputs: dict, *, include: Collection[str] | None = None
) -> DenseBaselines:
    """Every dense way this machine has to run ``model(**example_inputs)`` (a transformers model in eval mode),
    each checked against the fp32 model's first output (``last_hidden_state``, ``logits``) within
    :data:`MODEL_TOLERANCES`.

    Baselines: ``fp32`` (the model as given); ``bf16`` (a bf16 copy, floating inputs cast once, untimed; only with
    native bf16); ``torch-dynamic-int8`` (``torch.ao`` dynamic int8 of a copy's Linear layers);
    ``onnxruntime-dynamic-int8`` (a copy exported by ``torch.onnx.export(..., dynamo=False)``, quantised by
    ``onnxruntime.quantization.quantize_dynamic``, ``intra_op_num_threads`` = torch's thread count; fed numpy
    arrays converted once); ``openvino`` (a copy converted by ``openvino.convert_model``, compiled for the CPU
    plugin with its default inference precision, bf16 where the CPU has it, f32 otherwise: the note says which;
    ``INFERENCE_NUM_THREADS`` = torch's thread count, latency hint); ``openvino-int8-weights`` (the same with every
    constant MatMul weight made int8, one scale per output channel, by openvino's own graph API). Each callable
    takes the inputs dict; :meth:`DenseBaselines.timed` prepares it once.

    ``include``: build only these baselines (``fp32``, the reference, always), the others recorded as skipped
    (building the onnxruntime and openvino ones exports or converts the model: seconds); ``None``: all.
    """
    with torch.inference_mode():
        ref = _as_tensor(model(**example_inputs))
    out = DenseBaselines()
    out._add(DenseBaseline("fp32", [lambda b: model(**b)], dict, 0), ref, example_inputs, MODEL_TOLERANCES)
    asked = ", ".join(sorted({"fp32", *(include or ())}))
    left_out = {
        name: f"not among the baselines asked for ({asked})"
        for name in MODEL_TOLERANCES
        if name != "fp32" and include is not None and name not in include
    }
    out.skipped.update(left_out)

    native, why = _native_bf16()
    if "bf16" in left_out:
        pass
    elif native:
        bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
        prepare = lambda b: _cast_floating(b, torch.bfloat16)  # noqa: E731
        out._add(DenseBaseline("bf16", [lambda b: bf16(**b)], prepare, 0), ref, example_inputs, MODEL_TOLERANCES)
    else:
        out.skipped["bf16"] = why

    int8 = None if "torch-dynamic-int8" in left_out else dynamic_int8(model)
    if "torch-dynamic-int8" in left_out:
        pass
    elif int8 is None:
        out.skipped["torch-dynamic-int8"] = "torch.ao quantize_dynamic failed on this model / torch build"
    else:
        note = f"engine {torch.backends.quantized.engine}"
        b = DenseBaseline("torch-dynamic-int8", [lambda b: int8(**b)], dict, 0, note=note)
        out._add(b, ref, example_inputs, MODEL_TOLERANCES)

    if "onnxruntime-dynamic-int8" not in left_out:
        _add_onnxruntime_model(out, model, example_inputs, ref)
    _add_openvino_model(out, model, example_inputs, ref, [n for n in _OPENVINO_NAMES if n not in left_out])
    return out


def _add_onnxruntime_model(out: DenseBaselines, model, example_inputs: dict, ref: torch.Tensor) -> None:
    try:
        with _quiet():
            import onnx  # noqa: F401
            import onnxruntime as ort
    except ImportError as exc:
        out.skipped["onnxruntime-dynamic-int8"] = (
            f"onnxruntime / onnx not importable ({exc.name}); pip install 'hf-sparse[bench]'"
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path, names = _export_ort_model(model, example_inputs, Path(tmp))
        except Exception as exc:
            out.skipped["onnxruntime-dynamic-int8"] = (
                f"torch.onnx.export(dynamo=False) failed with torch {torch.__version__}: {_first_line(exc)}"
            )
            return
        try:
            session = _ort_session(_ort_quantize(path, Path(tmp)), torch.get_num_threads())
        except Exception as exc:
            out.skipped["onnxruntime-dynamic-int8"] = f"quantisation or session failed: {_first_line(exc)}"
            return

    def feeds(b: dict) -> dict:
        return {k: b[k].detach().contiguous().numpy() for k in names}

    note = f"onnxruntime {ort.__version__}, {torch.get_num_threads()} intra-op thread(s)"
    b = DenseBaseline("onnxruntime-dynamic-int8", [lambda f: session.run(None, f)], feeds, 0, note=note)
    out._add(b, ref, example_inputs, MODEL_TOLERANCES)


def _add_openvino_model(out: DenseBaselines, model, example_inputs: dict, ref: torch.Tensor, names) -> None:
    """``names`` (of :data:`_OPENVINO_NAMES`) for a whole model: a copy converted once by
    ``openvino.convert_model`` (its PyTorch frontend: no ONNX needed), the int8-weight one from a clone of it."""
    if not names:
        return
    try:
        with _quiet():
            import openvino as ov
    except ImportError as exc:
        out.skipped.update({name: _OPENVINO_MISSING.format(exc.name) for name in names})
        return
    tensors = {k: v for k, v in example_inputs.items() if torch.is_tensor(v)}
    try:
        with _quiet():
            converted = ov.convert_model(copy.deepcopy(model), example_input=tensors)
    except Exception as exc:
        reason = f"openvino.convert_model failed with openvino {ov.__version__}: {_first_line(exc)}"
        out.skipped.update({name: reason for name in names})
        return
    inputs = [i.get_any_name() for i in converted.inputs]

    def feeds(b: dict) -> dict:
        return {k: b[k].detach().contiguous().numpy() for k in inputs}

    for name in names:
        try:
            ov_model, weights = converted, "float32"
            if name == "openvino-int8-weights":
                ov_model, weights = converted.clone(), "int8 (one scale per output channel)"
                if not _ov_compress_weights(ov_model):
                    out.skipped[name] = "no MatMul with a constant float32 weight in the converted model"
                    continue
            with _quiet():
                compiled = _ov_compile(ov_model, torch.get_num_threads())
        except Exception as exc:
            out.skipped[name] = f"OpenVINO could not compress or compile the model: {_first_line(exc)}"
            continue
        b = DenseBaseline(name, [_ov_call(compiled)], feeds, 0, note=_ov_note(compiled, weights))
        out._add(b, ref, example_inputs, MODEL_TOLERANCES)


def best_dense(medians: dict[str, float]) -> tuple[str, float]:
    """The fastest dense baseline: ``(name, median seconds)``."""
    if not medians:
        raise ValueError("best_dense needs at least one dense baseline's median, got none.")
    name = min(medians, key=medians.__getitem__)
    return name, medians[name]


def add_dense_comparison(
    record: dict,
    dense: DenseBaselines | dict[str, float],
    skipped: dict[str, str] | None = None,
    *,
    ours_s: float | None = None,
) -> dict:
    """Add the dense comparison to a case ``record`` (in place; returned too).

    ``dense``: the :class:`DenseBaselines` that were timed (their medians are read from ``record["baselines_s"]``)
    or a dict of dense medians. Fields written: ``baselines_s`` (gains every dense baseline's median),
    ``dense_baselines_s``, ``best_dense`` (its name), ``best_dense_s``, ``ratio_vs_best_dense`` (best_dense_s /
    ours_s, > 1 means ours is faster), ``ratio_vs_fp32``, ``skipped_baselines`` (name -> reason) and, for built
    baselines, ``baseline_errors`` (relative error vs fp32 on the check input) and ``baseline_notes``. The
    ``speedup`` dict (if any) is reordered fp32 first, then the best dense, then the rest, so that a one-line
    summary shows both.
    """
    ours_s = record["ours_s"] if ours_s is None else ours_s
    timed = record.setdefault("baselines_s", {})
    if isinstance(dense, DenseBaselines):
        medians = {k: timed[k] for k in dense}
        skipped = {**dense.skipped, **(skipped or {})}
        record["baseline_errors"] = dense.errors
        record["baseline_notes"] = dense.notes
    else:
        medians = dict(dense)
        skipped = dict(skipped or {})
    timed.update(medians)
    name, seconds = best_dense(medians)
    record["dense_baselines_s"] = medians
    record["best_dense"] = name
    record["best_dense_s"] = seconds
    record["ratio_vs_best_dense"] = seconds / ours_s
    record["ratio_vs_fp32"] = medians["fp32"] / ours_s if "fp32" in medians else None
    record["skipped_baselines"] = skipped
    if "speedup" in record:
        first = [k for k in ("fp32", name) if k in record["speedup"]]
        record["speedup"] = {**{k: record["speedup"][k] for k in first}, **record["speedup"]}
    return record


def dense_table(cases: list[dict]) -> str:
    """A markdown table of cases carrying :func:`add_dense_comparison`'s fields: ours, the ratio vs fp32 and, next
    to it, the best dense baseline of this machine and the ratio vs it."""
    lines = [
        "| case | ours (ms) | fp32 (ms) | vs fp32 | best dense | best dense (ms) | vs best dense |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for c in cases:
        ratio = c.get("ratio_vs_fp32")
        fp32 = "-" if not ratio else f"{1e3 * c['ours_s'] * ratio:.3f}"
        lines.append(
            f"| {c['name']} | {1e3 * c['ours_s']:.3f} | {fp32} | {f'{ratio:.2f}x' if ratio else '-'} | "
            f"{c['best_dense']} | {1e3 * c['best_dense_s']:.3f} | {c['ratio_vs_best_dense']:.2f}x |"
        )
    skipped = {k: v for c in cases for k, v in c.get("skipped_baselines", {}).items()}
    lines += [f"\nSkipped dense baseline `{k}`: {v}" for k, v in sorted(skipped.items())]
    return "\n".join(lines)
