"""The registrations of the pruning methods: weight pruning (``pruning``), structured pruning (``structured``) and
regularisation (``regularization``). See :mod:`hf_sparse.method` for what each hook means."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, quote
from ..method import Method, RunContext, register_method
from ..nn.linear_like import linear_weight
from ..nn.matching import match_linears
from .apply import prune_, select_modules
from .config import PruningConfig
from .regularization import RegularizationConfig, attach_regularization
from .structured import StructuredPruningConfig, structured_prune_

__all__ = ["PRUNING", "STRUCTURED", "REGULARIZATION", "schedule_description", "pct"]


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal: ``0.8 -> "80.0%"``."""
    return f"{100 * x:.1f}%"


def schedule_description(cfg: PruningConfig) -> str:
    """The pruning schedule in words."""
    end = f"{pct(cfg.end_fraction)} of the run's steps" if cfg.end_fraction is not None else f"step {cfg.end_step}"
    if cfg.schedule == "oneshot":
        return f"one-shot at step {cfg.start_step}"
    if cfg.schedule == "iterative":
        return (
            f"{cfg.stages} equal prune-then-fine-tune stages from step {cfg.start_step} to {pct(cfg.sparsity)} at "
            f"{end}"
        )
    if cfg.schedule == "rigl":
        return (
            f"{pct(cfg.sparsity)} from step {cfg.start_step}, then every {cfg.update_every} steps up to "
            f"{pct(cfg.regrow_fraction)} of the kept weights dropped and regrown (RigL, cosine-decayed) until "
            f"{end}"
        )
    return (
        f"cubic schedule from {pct(cfg.initial_sparsity)} at step {cfg.start_step} to {pct(cfg.sparsity)} at "
        f"{end}, masks updated every {cfg.update_every} steps"
    )


# -- weight pruning -------------------------------------------------------------------------------------------------


def _pruning_preflight(model, cfg: PruningConfig, where: str, info: dict) -> None:
    chosen = select_modules(model, cfg)
    if cfg.granularity == "block":
        rows, cols = cfg.block
        for name, module in chosen.items():
            out_f, in_f = linear_weight(module).shape
            if out_f % rows or in_f % cols:
                raise ConfigError(
                    f"{where}pruning.block {list(cfg.block)} does not divide {name}'s weight ({out_f} x {in_f}); "
                    "use a block whose sides divide every pruned layer's."
                )
    unknown = [n for n in cfg.layer_sparsity if n not in chosen]
    if unknown:
        raise ConfigError(
            f"{where}pruning.layer_sparsity: {quote(unknown[0])} is not a pruned module (exact names); pruned modules "
            f"include {list(chosen)[:6]}."
        )


def _masks_on(model, masks: dict) -> dict:
    """``masks`` keyed by the names of the weights they cover now: a layer wrapped since (quantisation-aware
    training) keeps its weight at ``<name>.base_layer``."""
    out = {}
    for name, mask in masks.items():
        module = model.get_submodule(name)
        wrapped = hasattr(module, "base_layer") and not name.endswith(".base_layer")
        out[f"{name}.base_layer" if wrapped else name] = mask
    return out


def _pruning_callbacks(cfg: PruningConfig | None, ctx: RunContext) -> list:
    from ..pruning.callback import PruningCallback

    state = ctx.state.setdefault("pruning", {})
    masks = state.get("masks")
    if masks is not None:
        masks = _masks_on(ctx.model, masks)
    if cfg is not None:
        state["config"] = cfg
        return [PruningCallback(cfg, masks=masks)]
    if masks is None:
        return []
    # Masks of earlier stages, kept as they are.
    fixed = state["config"].replace(schedule="oneshot", start_step=0, initial_sparsity=0.0, layer_sparsity={})
    return [PruningCallback(fixed, masks=masks)]


def _pruning_finalize(model, cfg, callbacks: list, ctx: RunContext) -> None:
    for cb in callbacks:
        if cb.pruner is not None:
            ctx.state["pruning"]["masks"] = dict(cb.pruner.masks)
            ctx.result("pruning")["report"] = cb.pruner.report()


def _pruning_convert(model, cfg, ctx: RunContext) -> dict[str, str]:
    from ..nn import sparsify_

    state = ctx.state.get("pruning") or {}
    ckpt = ctx.checkpoint
    if "quantization" in ctx.state or state.get("masks") is None or ckpt is None or ckpt.format == "dense":
        return {}  # integer layers store their own zeros; no masks: nothing pruned
    pruning = state["config"]
    decisions = sparsify_(
        model,
        format=ckpt.format,
        batch_hint=ckpt.batch_hint,
        min_sparsity=ckpt.min_sparsity,
        target_modules=pruning.target_modules,
        exclude_modules=pruning.exclude_modules,
        embeddings=pruning.embeddings,
        masks=state["masks"],
        numerics=ckpt.numerics,
    )
    return {n: d.choice.chosen if ckpt.numerics != "keep" else d.choice.format for n, d in decisions.items()}


def _pruning_record(cfg, ctx: RunContext) -> dict[str, Any] | None:
    report = ctx.result("pruning").get("report")
    if report is None:
        return None
    layers = {n.removesuffix(".base_layer"): v for n, v in report["layers"].items()}
    return {
        "sparsity": report["sparsity"],
        "pruned_params": report["pruned_params"],
        "prunable_params": report["prunable_params"],
        "layers": {n: round(v["sparsity"], 6) for n, v in layers.items()},
    }


def _pruning_tag(cfg: PruningConfig) -> tuple[int, str] | None:
    return (1, f"pruned-{round(100 * cfg.sparsity)}") if cfg.sparsity > 0 else None


def _pruning_describe(cfg: PruningConfig) -> str:
    return f"{cfg.criterion} pruning to {cfg.sparsity:.0%} ({cfg.granularity}, {schedule_description(cfg)})"


def _pruning_report(report: dict) -> list[str]:
    if report.get("sensitivity") and not any(r.get("lowrank") for r in report["runs"]):
        return [
            "Per-layer sparsities above come from a sensitivity scan of the dense model (each layer pruned alone, "
            "validation accuracy measured; report.json holds the scan): sensitive layers are pruned less.",
            "",
        ]
    return []


PRUNING = register_method(
    Method(
        name="pruning",
        config_class=PruningConfig,
        apply=prune_,
        order=60,
        callback_order=10,
        trains=True,
        carry=True,
        preflight=_pruning_preflight,
        start=lambda model, cfg, ctx: None,  # pruning acts through its callback while the stage trains
        callbacks=_pruning_callbacks,
        finalize=_pruning_finalize,
        convert=_pruning_convert,
        tag=_pruning_tag,
        describe=_pruning_describe,
        record=_pruning_record,
        report=_pruning_report,
    )
)


# -- structured pruning ---------------------------------------------------------------------------------------------


def _structured_preflight(model, cfg: StructuredPruningConfig, where: str, info: dict) -> None:
    from .structured import drop_layers_

    if cfg.layers_to_drop:
        try:
            drop_layers_(model, cfg.layers_to_drop)
        except ConfigError as exc:
            raise ConfigError(f"{where}structured.layers_to_drop {list(cfg.layers_to_drop)}: {exc}") from None
        info["cut"] = True  # the student no longer has the teacher's layers


def _structured_start(model, cfg: StructuredPruningConfig, ctx: RunContext) -> None:
    batches = ctx.task.calibration_batches(256, ctx.seed)
    ctx.result("structured")["report"] = structured_prune_(model, cfg, batches)


def _structured_record(cfg: StructuredPruningConfig, ctx: RunContext) -> dict | None:
    s = ctx.result("structured").get("report")
    if s is None:
        return None
    return {
        "structure": {
            "config": cfg.to_dict(header=False),
            "params_before": s["params_before"],
            "params_after": s["params_after"],
            "dropped_layers": s["dropped_layers"],
            "layers": [
                {"layer": r["layer"], "heads": len(r["heads_kept"]), "neurons": len(r["neurons_kept"])}
                for r in s["layers"]
            ],
        }
    }


def _structured_describe(cfg: StructuredPruningConfig) -> str:
    what = []
    if cfg.layers_to_drop:
        what.append(f"layers {list(cfg.layers_to_drop)} dropped")
    if cfg.heads_fraction:
        what.append(f"{cfg.heads_fraction:.0%} of heads")
    if cfg.neurons_fraction:
        what.append(f"{cfg.neurons_fraction:.0%} of FFN neurons")
    return "structured pruning (" + ", ".join(what or ["nothing"]) + ")"


def _structured_report(report: dict) -> list[str]:
    runs = [r for r in report["runs"] if r.get("structure")]
    if not runs:
        return []
    lines = ["## Structured pruning", "", "| model | parameters kept | heads per layer | FFN neurons per layer |"]
    lines.append("|---|---|---|---|")
    for r in runs:
        st = r["structure"]
        heads = ", ".join(str(x["heads"]) for x in st["layers"])
        neurons = ", ".join(str(x["neurons"]) for x in st["layers"])
        lines.append(
            f"| {r['name']} | {st['params_after']:,} of {st['params_before']:,} "
            f"({pct(st['params_after'] / st['params_before'])}) | {heads} | {neurons} |"
        )
    return [*lines, ""]


STRUCTURED = register_method(
    Method(
        name="structured",
        config_class=StructuredPruningConfig,
        apply=structured_prune_,
        order=20,
        preflight=_structured_preflight,
        start=_structured_start,
        tag=lambda cfg: (0, "structured"),
        describe=_structured_describe,
        record=_structured_record,
        report=_structured_report,
    )
)


# -- regularisation -------------------------------------------------------------------------------------------------


def _regularization_preflight(model, cfg: RegularizationConfig, where: str, info: dict) -> None:
    if cfg.uses_linears:
        match_linears(model, cfg.target_modules, cfg.exclude_modules, who=f"{where}regularization")


def _regularization_callbacks(cfg: RegularizationConfig | None, ctx: RunContext) -> list:
    from ..pruning.regularization_callback import RegularizationCallback

    return [] if cfg is None else [RegularizationCallback(cfg, finalize_gates=True)]


REGULARIZATION = register_method(
    Method(
        name="regularization",
        config_class=RegularizationConfig,
        apply=attach_regularization,
        order=70,
        callback_order=70,
        init_callbacks=True,
        trains=True,
        preflight=_regularization_preflight,
        start=lambda model, cfg, ctx: None,  # attached by its callback when the Trainer creates the optimizer
        callbacks=_regularization_callbacks,
        describe=lambda cfg: "regularised",
    )
)
