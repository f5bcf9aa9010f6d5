"""The registration of compressed embedding tables as a method. See :mod:`hf_sparse.method` for the hooks."""

from __future__ import annotations

from ..method import Method, RunContext, register_method
from .apply import compress_embeddings_, finalize_embeddings_
from .config import EmbeddingCompressionConfig

__all__ = ["EMBEDDINGS", "table_tag"]


def table_tag(spec) -> str:
    """A short name of a table's compression for run names: ``int4``, ``qr-mult``, ``tt``, ... (+ ``-hotN``)."""
    name = {"qrow": f"int{spec.bits}", "qr": f"qr-{spec.op}"}.get(spec.method, spec.method)
    return name + (f"-hot{spec.hot_rows}" if spec.hot_rows else "")


def _preflight(model, cfg: EmbeddingCompressionConfig, where: str, info: dict) -> None:
    from ..nn.matching import match_embeddings

    for key in cfg.tables:
        match_embeddings(model, [key], who=f"{where}embeddings.tables")


def _start(model, cfg: EmbeddingCompressionConfig, ctx: RunContext) -> None:
    frequencies = ctx.task.token_frequencies(model)
    ctx.result("embeddings")["tables"] = compress_embeddings_(model, cfg, frequencies=frequencies, progress=False)
    ctx.result("embeddings")["config"] = cfg
    ctx.state["embeddings"] = {}


def _convert(model, cfg, ctx: RunContext) -> dict[str, str]:
    if "quantization" in ctx.state:
        return {}  # quantisation converts the compressed tables with the rest
    finalize_embeddings_(model)  # embedding QAT: the trained float table becomes integer codes
    return {}


def _record(cfg, ctx: RunContext) -> dict | None:
    result = ctx.result("embeddings")
    if "tables" not in result:
        return None
    return {"embeddings": {"config": result["config"].to_dict(header=False), "tables": result["tables"]}}


def _report(report: dict) -> list[str]:
    from ..pruning.method import pct

    runs = [r for r in report["runs"] if r.get("embeddings")]
    if not runs:
        return []
    lines = [
        "## Compressed embeddings",
        "",
        "Memory: the compressed table's bytes (codes, scales, indices, factors) vs the float32 table; error: "
        "`||E' - E|| / ||E||` of the table as compressed, before fine-tuning (fitted initialisation).",
        "",
        "| model | table | method | size | memory vs float32 | error |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        for table, e in r["embeddings"]["tables"].items():
            size = ", ".join(f"{k} {v}" for k, v in e["size"].items() if k not in ("seed", "vocab_factors"))
            hot = f", {e['hot_rows']} hot rows" if e.get("hot_rows") else ""
            err = f"{e['relative_error']:.3f}" if e.get("relative_error") is not None else "– (random init)"
            lines.append(
                f"| {r['name']} | `{table}` | {e['method']}{hot} | {size} | {pct(e['memory_ratio'])} | {err} |"
            )
    return [*lines, ""]


EMBEDDINGS = register_method(
    Method(
        name="embeddings",
        config_class=EmbeddingCompressionConfig,
        apply=lambda model, config, **kwargs: compress_embeddings_(model, config, **kwargs),
        order=40,
        carry=True,
        preflight=_preflight,
        start=_start,
        convert=_convert,
        tag=lambda cfg: (5, "emb-" + "-".join(table_tag(s) for s in cfg.tables.values())),
        describe=lambda cfg: "embeddings " + ", ".join(table_tag(t) for t in cfg.tables.values()),
        record=_record,
        report=_report,
    )
)
