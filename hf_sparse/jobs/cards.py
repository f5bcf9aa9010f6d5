"""What the model card of each run of ``hf-sparse compress`` shows (``hf_sparse_results.json``)."""

from __future__ import annotations

from ..data import hub_id
from ..pruning.config import PruningConfig
from ..pruning.method import pct as _pct
from ..pruning.method import schedule_description as _schedule_desc
from .report import machine_label, report_metric

__all__ = ["card_results", "pruning_description", "speed_sentence"]


#: The Hub metric ids of each task's metrics.
_METRIC_IDS = {
    "text-classification": ("accuracy", "f1"),
    "token-classification": ("f1", "precision", "recall", "accuracy"),
    "masked-lm": ("perplexity",),
}


def pruning_description(cfg: PruningConfig, n_layers: int) -> tuple[str, str]:
    """What was pruned and how, in words: ("37 layers (1 of them an embedding table)", "unstructured magnitude
    pruning, global ranking")."""
    if cfg.embeddings:
        tables = "an embedding table" if len(cfg.embeddings) == 1 else f"{len(cfg.embeddings)} embedding tables"
        what = f"{n_layers} pruned layers ({tables} among them)"
    else:
        what = f"{n_layers} pruned `nn.Linear` layers"
    grain = {
        "block": f"{cfg.block[0]}x{cfg.block[1]}-block",
        "nm": f"{cfg.n}:{cfg.m}",
        "embedding_row": "embedding-row",
    }.get(cfg.granularity, cfg.granularity)
    return what, f"{grain} {cfg.criterion} pruning, {cfg.scope} ranking"


def speed_sentence(latency: dict | None) -> str:
    """The card's speed claim: the ratio against the best dense configuration of the machine it was measured on,
    beside the ratio against dense fp32 ("" without a latency record carrying the comparison)."""
    if not latency or latency.get("ratio_vs_best_dense") is None:
        return ""
    fp32 = latency.get("ratio_vs_fp32")
    others = ", ".join(k for k in latency["dense_baselines_s"] if k != latency["best_dense"])
    return (
        f" Speed, batch {latency['batch']} at {latency['seq']} tokens on {latency['machine']} (interleaved in one "
        f"process, medians): {1e3 * latency['ours_s']:.1f} ms, **{latency['ratio_vs_best_dense']:.2f}x the best "
        f"dense configuration of that machine** ({latency['best_dense']} of the dense model, "
        f"{1e3 * latency['best_dense_s']:.1f} ms; also timed: {others or 'none'})"
        + (f" and {fp32:.2f}x dense fp32." if fp32 is not None else ".")
        + " Ratios above 1 mean this model is faster."
    )


def card_results(run: dict, report: dict, recipe) -> dict:
    """What the model card of one pruned run shows (``hf_sparse_results.json``)."""
    cfg = PruningConfig.from_dict(run["pruning_config"])
    m = report["machine"]
    latency = run.get("latency")
    if latency:
        latency = {**latency, "machine": machine_label(m), "torch": m["torch"]}
    from .heads import head_for

    head = head_for(report.get("task"))
    metric = report_metric(report)
    dataset = report["data"]["dataset"]
    labels = report["data"].get("labels")
    base = f"`{hub_id(report['model'])}`"
    if head.name == "masked-lm":
        tuned = "" if not report["dense"].get("fine_tuned", True) else " (masked-LM training on the data's text)"
        task = f"{base}{tuned}, a masked language model scored on {dataset}"
    else:
        what = {"text-classification": "text classification", "token-classification": "token classification"}
        given = "" if report["dense"].get("fine_tuned", True) else " (as given: already fine-tuned)"
        task = f"{base}{given} fine-tuned for {what[head.name]} ({' / '.join(map(str, labels or ()))}) on {dataset}"
    title = f"{recipe.model.name} pruned to {_pct(run['sparsity'])} on {dataset}"
    summary = f"{task} and pruned with hf_sparse: {_pct(run['sparsity'])} of the weights of its " + (
        "{} are zero ({}).".format(*pruning_description(cfg, len(run["layers"])))
    )
    method = (
        "Fine-tuning and pruning ran through the stock `transformers.Trainer` with `hf_sparse.PruningCallback` "
        f"({_schedule_desc(cfg)}); `hf_sparse.sparsify_` then stored each pruned layer in the format predicted "
        f"fastest for {recipe.checkpoint.batch_hint} tokens per call on the machine below, or kept it dense."
    )
    structure = run.get("structure")
    if structure:
        sc = structure["config"]
        kept = structure["params_after"] / structure["params_before"]
        title = f"{recipe.model.name} with {_pct(1 - kept)} of its parameters removed on {dataset}"
        summary = (
            f"{task}, then made smaller with hf_sparse structured pruning: {_pct(sc['heads_fraction'])} of the "
            f"attention heads and {_pct(sc['neurons_fraction'])} of the FFN neurons removed ({sc['criterion']} "
            f"scores, {sc['scope']} ranking), {structure['params_after']:,} of {structure['params_before']:,} "
            "parameters left. The result is a smaller dense model; its per-layer sizes are in the checkpoint's "
            "config so `from_pretrained` rebuilds it (after `import hf_sparse`)."
        )
        also = f"; `hf_sparse.PruningCallback` also pruned weights ({_schedule_desc(cfg)})."
        method = (
            "Heads and neurons were scored and removed once with `hf_sparse.pruning.structured_prune_`, then the "
            "smaller model was fine-tuned with the stock `transformers.Trainer`" + (also if run["sparsity"] else ".")
        )
    quant = run.get("quantization")
    if quant:
        bits = quant["config"]["weight"]["bits"]
        how = (
            "trained with fake quantisation (`hf_sparse.QATCallback`), then converted"
            if quant["mode"] == "qat"
            else "quantised after training (`hf_sparse.quantize_`, calibrated on real training examples)"
        )
        base = title if run["sparsity"] else recipe.model.name
        title = f"{base} with {bits}-bit weights"
        summary += (
            f" Its {quant['layers']} encoder Linear layers hold {bits}-bit integer weights with float scales ({how}); "
            f"they take {quant['weight_bytes']:,} bytes instead of {quant['float_weight_bytes']:,} in float32."
        )
    key = metric["key"]
    others = [k for k in metric["all"] if k != key and k in run]
    if others:
        summary += (
            " Also measured on the test split: "
            + ", ".join(
                f"{metric['all'][k]} {run[k]:.4f} (dense {report['dense'].get(k, float('nan')):.4f})" for k in others
            )
            + "."
        )
    if not metric["higher_is_better"]:
        summary += f" Lower {metric['name']} is better."
    summary += speed_sentence(latency)
    return {
        "base_model": hub_id(report["model"]),
        "title": title,
        "summary": summary,
        "method": method,
        "dataset": dataset,
        "pipeline_tag": head.pipeline_tag,
        "recipe_file": "hf_sparse_recipe.yaml",
        "accuracy": {
            "metric": metric["name"],
            "split": "test",
            "examples": report["data"]["test_examples"],
            "seed": recipe.data.seed,
            "dense": report["dense"][key],
            "compressed": run[key],
        },
        # Hub metric ids of the card's metadata (what the Hub lists the model under).
        "metric_ids": list(_METRIC_IDS[head.name]),
        "metrics": {
            name: {"dense": report["dense"].get(k), "compressed": run[k]}
            for k, name in metric["all"].items()
            if k in run
        },
        "nonzero_params": run["nonzero_params"],
        "dense_nonzero_params": report["dense"]["nonzero_params"],
        "dense_checkpoint_bytes": report["dense"]["checkpoint_bytes"],
        "latency": latency,
        "layers": run["layers"],
    }
