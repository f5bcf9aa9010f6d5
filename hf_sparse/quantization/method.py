"""The registration of quantisation (QAT and PTQ) as a method. See :mod:`hf_sparse.method` for the hooks."""

from __future__ import annotations

from ..method import Method, RunContext, register_method
from .apply import convert_, prepare_qat_, quantization_report, quantize_
from .config import QuantizationConfig

__all__ = ["QUANTIZATION"]


def _mode(section) -> str:
    """``"qat"`` or ``"ptq"``: a recipe section says which; a plain config in a job is quantisation-aware."""
    return getattr(section, "mode", "qat")


def _config(section, *, post_training: bool = False) -> QuantizationConfig:
    to_config = getattr(section, "to_config", None)
    return to_config(post_training=post_training) if to_config is not None else section


def _preflight(model, q, where: str, info: dict) -> None:
    from ..nn.matching import match_embeddings, match_linears

    match_linears(model, q.target_modules, q.exclude_modules, who=f"{where}quantization")
    if q.embedding is not None:
        match_embeddings(model, q.embedding_modules, who=f"{where}quantization")


def _start(model, section, ctx: RunContext) -> None:
    ctx.state["quantization"] = {"mode": _mode(section), "section": section}
    if _mode(section) == "qat":
        # Prepared before the Trainer exists, so learned step sizes are in its optimizer; pruning then acts on the
        # wrapped layers' own weights.
        ctx.state["quantization"]["config"] = _config(section)
        prepare_qat_(model, _config(section))


def _callbacks(section, ctx: RunContext) -> list:
    from ..quantization.callback import QATCallback

    state = ctx.state.get("quantization") or {}
    return [QATCallback(state["config"])] if state.get("mode") == "qat" else []


def _finalize(model, section, callbacks, ctx: RunContext) -> None:
    if section is None or _mode(section) != "ptq":
        return
    from ..pruning.stats import model_parameter_counts

    result = ctx.result("quantization")
    result["float_counts"] = model_parameter_counts(model)  # integer codes are not parameters: counted in float
    result["float_accuracy"] = ctx.task.evaluate(model)
    calibration = ctx.task.calibration_batches(getattr(section, "calibration_samples", 256), ctx.seed)
    quantize_(model, _config(section, post_training=True), calibration)


def _convert(model, section, ctx: RunContext) -> dict[str, str]:
    state = ctx.state.get("quantization") or {}
    if state.get("mode") == "qat":
        return convert_(model)
    return {n: r["format"] for n, r in quantization_report(model).items()}


def _record(section, ctx: RunContext) -> dict:
    state = ctx.state["quantization"]
    mode, first = state["mode"], state["section"]
    qreport = quantization_report(ctx.model)
    result = ctx.result("quantization")
    out = {
        "quantization": {
            "mode": mode,
            "config": _config(first, post_training=mode == "ptq").to_dict(header=False),
            "float_accuracy": result.get("float_accuracy"),
            "layers": len(qreport),
            "weight_bytes": sum(r["nbytes"] for r in qreport.values()),
            "float_weight_bytes": sum(r["float_bytes"] for r in qreport.values()),
        }
    }
    if "float_counts" in result:
        out.update(result["float_counts"])
    return out


def _variants(section) -> list:
    if _mode(section) == "qat" and getattr(section, "compare_ptq", False):
        return [(section, None), (section.replace(mode="ptq"), None)]
    return [(section, None)]


def _describe(section) -> str:
    bits = section.weight.bits
    if _mode(section) == "qat":
        return f"quantisation-aware training ({bits}-bit weights)"
    return f"post-training quantisation at the end ({bits}-bit weights)"


def _report(report: dict) -> list[str]:
    from ..method import delta_text, is_fraction_metric, report_metric
    from ..method import metric_cell as cell
    from ..pruning.method import pct

    metric = report_metric(report)
    key = metric["key"]
    unit = "points" if is_fraction_metric(key) else "difference"
    runs = [r for r in report["runs"] if r.get("quantization")]
    if not runs:
        return []
    lines = [
        "## Quantisation",
        "",
        "`-qat` models trained with fake-quantised weights and were converted to integer layers; `-ptq` models "
        "had the same training in float and were quantised afterwards (the float column is that model before "
        "quantisation). Weight bytes: the quantised Linear layers' codes, scales and indices.",
        "",
        f"| model | mode | test {metric['name']} | vs dense ({unit}) | float before PTQ | weight bytes | vs float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        q = r["quantization"]
        before = cell(q.get("float_accuracy"), key)
        lines.append(
            f"| {r['name']} | {q['mode']} | {cell(r[key], key)} | {delta_text(r['delta_vs_dense'], key)} | "
            f"{before} | {q['weight_bytes']:,} | {pct(q['weight_bytes'] / max(q['float_weight_bytes'], 1))} |"
        )
    return [*lines, ""]


QUANTIZATION = register_method(
    Method(
        name="quantization",
        config_class=QuantizationConfig,
        apply=lambda model, config, calibration=None, **kwargs: quantize_(model, config, calibration, **kwargs),
        order=50,
        callback_order=20,
        carry=True,
        preflight=_preflight,
        start=_start,
        callbacks=_callbacks,
        finalize=_finalize,
        convert=_convert,
        tag=lambda s: (2, f"int{s.weight.bits}-{_mode(s)}"),
        describe=_describe,
        record=_record,
        report=_report,
        variants=_variants,
    )
)
