"""The registration of low-rank factorisation as a method. See :mod:`hf_sparse.method` for the hooks."""

from __future__ import annotations

from ..errors import ConfigError, quote
from ..method import Method, RunContext, register_method
from .apply import factorize_
from .config import LowRankConfig

__all__ = ["LOWRANK"]


def _gradual(section) -> bool:
    return getattr(section, "mode", "oneshot") == "gradual"


def _config(section) -> LowRankConfig:
    to_config = getattr(section, "to_config", None)
    return to_config() if to_config is not None else section


def _preflight(model, low, where: str, info: dict) -> None:
    from ..nn.matching import _matches, match_embeddings, match_linears

    if low.rank is not None or low.energy is not None or low.compression is not None or low.module_ranks:
        layers = match_linears(model, low.target_modules, low.exclude_modules, who=f"{where}lowrank")
        for name in low.module_ranks:
            if not any(_matches(n, name) for n in layers):
                raise ConfigError(
                    f"{where}lowrank.module_ranks: {quote(name)} names no factorised Linear layer; they include "
                    f"{list(layers)[:6]}."
                )
    match_embeddings(model, low.embeddings, who=f"{where}lowrank")


def _start(model, section, ctx: RunContext) -> None:
    ctx.result("lowrank")["section"] = section
    if not _gradual(section):
        ctx.result("lowrank")["layers"] = factorize_(model, _config(section), progress=False)


def _callbacks(section, ctx: RunContext) -> list:
    if section is None or not _gradual(section):
        return []
    from ..lowrank.callback import LowRankCallback

    return [
        LowRankCallback(
            _config(section),
            nuclear_weight=section.nuclear_weight,
            prox_every=section.prox_every,
            update_every=section.update_every,
            end_fraction=section.schedule_end,
        )
    ]


def _finalize(model, section, callbacks, ctx: RunContext) -> None:
    for cb in callbacks:
        ctx.result("lowrank")["layers"] = cb.report


def _record(section, ctx: RunContext) -> dict | None:
    result = ctx.result("lowrank")
    layers = result.get("layers")
    if layers is None:
        return None
    section = result["section"]
    factored = {n: e for n, e in layers.items() if "format" in e}
    return {
        "lowrank": {
            "config": section.to_dict(header=False),
            "module_ranks": dict(section.module_ranks),
            "layers": layers,
            "dense_params": sum(e["params"] for e in factored.values()),
            "stored_params": sum(e["stored"] for e in factored.values()),
        }
    }


def _describe(section) -> str:
    if not _gradual(section):
        return "low-rank factorised (truncated SVD) before fine-tuning"
    return (
        f"ranks lowered during fine-tuning (cubic schedule to {section.schedule_end:.0%} of the steps, projections "
        f"every {section.update_every} steps"
        + (f", nuclear norm {section.nuclear_weight:g}" if section.nuclear_weight else "")
        + "), then factorised"
    )


def _report(report: dict) -> list[str]:
    from ..pruning.method import pct

    runs = [r for r in report["runs"] if r.get("lowrank")]
    if not runs:
        return []
    lines = [
        "## Low rank",
        "",
        "Factorised layers: `W ≈ U V` (two thin matmuls; `+ S` with sparse residuals). Values: what the factored "
        "layers store vs their dense weights; error: `||W - U V|| / ||W||` when factorised (mean over layers).",
        "",
        "| model | layers factorised | kept dense | ranks (min–max) | values stored | vs dense | mean error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lr = r["lowrank"]
        done = [e for e in lr["layers"].values() if "format" in e]
        kept = len(lr["layers"]) - len(done)
        ranks = [e["rank"] for e in done]
        errors = [e["relative_error"] for e in done if "relative_error" in e]
        span = f"{min(ranks)}–{max(ranks)}" if ranks else "–"
        err = f"{sum(errors) / len(errors):.3f}" if errors else "–"
        ratio = pct(lr["stored_params"] / max(lr["dense_params"], 1))
        lines.append(f"| {r['name']} | {len(done)} | {kept} | {span} | {lr['stored_params']:,} | {ratio} | {err} |")
    lines.append("")
    if report.get("sensitivity"):
        lines += [
            "Per-layer ranks above come from a sensitivity scan of the dense model (each layer alone replaced by "
            "low-rank approximations removing the scanned fractions of its values, validation accuracy measured; "
            "report.json holds the scan): sensitive layers keep more rank.",
            "",
        ]
    return lines


LOWRANK = register_method(
    Method(
        name="lowrank",
        config_class=LowRankConfig,
        apply=lambda model, config, **kwargs: factorize_(model, config, **kwargs),
        order=30,
        callback_order=30,
        preflight=_preflight,
        start=_start,
        callbacks=_callbacks,
        finalize=_finalize,
        tag=lambda s: (6, "lowrank-gradual" if _gradual(s) else "lowrank"),
        describe=_describe,
        record=_record,
        report=_report,
    )
)
