"""The registration of knowledge distillation as a method. See :mod:`hf_sparse.method` for the hooks."""

from __future__ import annotations

from ..errors import ConfigError, quote
from ..method import Method, RunContext, register_method
from .apply import Distiller
from .config import DistillationConfig
from .students import teacher_snapshot

__all__ = ["DISTILLATION", "distill_"]


def distill_(model, config: DistillationConfig, *, teacher=None) -> Distiller:
    """Attach a :class:`~hf_sparse.distillation.Distiller` to ``model``: from now on its training-mode forwards
    return the distillation loss against ``teacher`` (``None``: a frozen snapshot of ``model`` as it is now, e.g.
    before it is pruned or quantised). Call ``.detach()`` on the result to stop."""
    return Distiller(model, teacher if teacher is not None else teacher_snapshot(model), config).attach()


def _config(section, ctx: RunContext) -> DistillationConfig:
    to_config = getattr(section, "to_config", None)
    return to_config(ctx.output_dir) if to_config is not None else section


def _check_start_model(model, distil, where: str, info: dict) -> None:
    """``student_from`` naming a model: it exists (a folder or a cached Hub model) and has the architecture of the
    job's model (``model.name``); read from its config only."""
    start = getattr(distil, "start_model", None)
    if start is None:
        return
    from transformers import AutoConfig

    from .students import check_start_architecture, locate_start_model

    who = f"{where}distillation.student_from"
    path = locate_start_model(start, who)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{who}: cannot read a model config from {quote(path)}: {str(exc).splitlines()[0]}"
        ) from None
    reference = info["meta_model"]() if "meta_model" in info else model
    name = getattr(reference.config, "_name_or_path", "") or "model.name"
    check_start_architecture(config, reference.config, start, name, who)


def _preflight(model, distil, where: str, info: dict) -> None:
    if getattr(distil, "cache", False) and type(model).__name__.endswith("ForMaskedLM"):
        raise ConfigError(
            f"{where}distillation.cache: a masked-lm batch is masked at random on every step, so the teacher's "
            "outputs (logits over the whole vocabulary at every position) cannot be reused; set cache: false."
        )
    _check_start_model(model, distil, where, info)
    teacher = None if info.get("cut") else model  # the dense baseline: the uncut model
    name = getattr(distil, "teacher", None)
    if name is not None:
        teacher = info["meta_teacher"](name, f"{where}distillation.teacher")
        labels = info.get("num_labels")
        if labels is not None and teacher.config.num_labels != labels:
            raise ConfigError(
                f"{where}distillation.teacher {quote(name)} classifies into {teacher.config.num_labels} labels; the "
                f"task has {labels} ({info.get('label_names')})."
            )
        sv, tv = model.config.vocab_size, getattr(teacher.config, "vocab_size", None)
        if sv != tv:
            raise ConfigError(
                f"{where}distillation.teacher {quote(name)} has a vocabulary of {tv} tokens, the student {sv}: both "
                "read the same token ids, so they must share a tokenizer."
            )
    if distil.needs_hidden or distil.needs_attentions:
        from .apply import stack_layer_maps

        if teacher is None:
            teacher = info["meta_model"]()
        stack_layer_maps(model, teacher, distil.layer_map)


def _callbacks(section, ctx: RunContext) -> list:
    if section is None:
        return []
    from ..distillation.callback import DistillationCallback

    teacher = ctx.task.teacher(getattr(section, "teacher", None))
    return [DistillationCallback(teacher, _config(section, ctx))]


def _finalize(model, section, callbacks, ctx: RunContext) -> None:
    result = ctx.result("distillation")
    result.setdefault("config", section)
    result.setdefault("stages", []).append(ctx.stage)
    for cb in callbacks:
        d = cb.distiller
        if d is not None:
            result["teacher_calls"] = result.get("teacher_calls", 0) + d.teacher_calls
            result["cache_hits"] = result.get("cache_hits", 0) + (d.cache.hits if d.cache is not None else 0)


def _record(section, ctx: RunContext) -> dict | None:
    result = ctx.result("distillation")
    if "config" not in result:
        return None
    entry = {
        "kd": True,
        "config": result["config"].to_dict(header=False),  # the first distilled stage's
        "teacher_calls": result.get("teacher_calls", 0),
        "cache_hits": result.get("cache_hits", 0),
    }
    if len(ctx.stages) > 1:
        entry["stages"] = result["stages"]
    return {"distillation": entry}


def _variants(section) -> list:
    if getattr(section, "compare", False):
        return [(section, None), (None, {"distillation": {"kd": False, "config": None}})]
    return [(section, None)]


def _describe(section) -> str:
    teacher = getattr(section, "teacher", None)
    return "distilled" + (f" from {teacher}" if teacher else " from the dense model")


def _start_line(run: dict) -> str:
    start = run["started_from"]
    kept = "kept exactly" if start.get("zero_pattern_kept") else "NOT kept"
    return (
        f"- {run['name']} started from `{start['model']}` ({100 * start['sparsity']:.1f}% sparse, fresh task head), "
        f"not from the dense model; its zero pattern was {kept} while it fine-tuned."
    )


def _report(report: dict) -> list[str]:
    from ..method import delta_text, is_fraction_metric, report_metric
    from ..method import metric_cell as cell

    metric = report_metric(report)
    key, name = metric["key"], f"test {metric['name']}"
    unit = "points" if is_fraction_metric(key) else "difference"
    runs = report["runs"]
    started = [_start_line(r) for r in runs if r.get("started_from")]
    distilled = [r for r in runs if (r.get("distillation") or {}).get("kd")]
    if not distilled:
        return ["## Start model", "", *started, ""] if started else []
    lines = [
        "## Distillation",
        "",
        *([*started, ""] if started else []),
        "Each `-kd` model learned from the fine-tuned dense model (the teacher) while it was fine-tuned; the same "
        "model without `-kd` had the same pruning, steps and seed without the teacher.",
        "",
        f"| model | {name} with distillation | without | gain ({unit}) | with distillation vs dense ({unit}) |",
        "|---|---|---|---|---|",
    ]
    by_name = {r["name"]: r for r in runs}
    for r in distilled:
        plain = by_name.get(r["name"].removesuffix("-kd"))
        without = cell(plain[key], key) if plain else "–"
        gain = delta_text(r[key] - plain[key], key) if plain else "–"
        lines.append(
            f"| {r['name'].removesuffix('-kd')} | {cell(r[key], key)} | {without} | {gain} | "
            f"{delta_text(r['delta_vs_dense'], key)} |"
        )
    cfg = distilled[0]["distillation"]["config"]
    terms = [f"alpha {cfg['alpha']}, temperature {cfg['temperature']}"]
    for key in ("hidden", "attention", "embedding"):
        if cfg.get(f"{key}_weight"):
            kind = cfg.get(f"{key}_loss", cfg.get("hidden_loss"))
            terms.append(f"{key} {kind} x {cfg[f'{key}_weight']}")
    return [*lines, "", "Losses: " + "; ".join(terms) + ".", ""]


DISTILLATION = register_method(
    Method(
        name="distillation",
        config_class=DistillationConfig,
        apply=distill_,
        order=80,
        callback_order=0,
        init_callbacks=True,
        trains=True,
        preflight=_preflight,
        start=lambda model, section, ctx: None,  # the teacher joins through the stage's callback
        callbacks=_callbacks,
        finalize=_finalize,
        tag=lambda s: (3, "kd"),
        describe=_describe,
        record=_record,
        report=_report,
        variants=_variants,
    )
)
