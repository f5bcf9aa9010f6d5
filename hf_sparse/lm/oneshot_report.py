"""``report.md``, the command-line summary and the model cards of the ``task: causal-lm`` job
(:func:`~hf_sparse.lm.oneshot.run_causal_lm`)."""

from __future__ import annotations

from ..jobs.report import machine_label

__all__ = ["render_causal_lm_markdown", "summary_lines", "card_results"]

_METHODS = {
    "sparsegpt": "SparseGPT (Frantar & Alistarh, 2023): weights chosen and the surviving ones updated from the "
    "calibration inputs' Hessian",
    "wanda": "Wanda (Sun et al., 2023): |W| x ||X|| per output row, no update",
    "magnitude": "magnitude: |W| per layer, no calibration",
}


def _mb(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 10e6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"


def _structure(run: dict) -> str:
    if run["structure"] == "unstructured":
        return f"{run['target_sparsity']:.0%} unstructured"
    return f"{run['structure']} semi-structured"


def summary_lines(report: dict) -> list[str]:
    """One line per model: perplexity with its change against dense (what the command line prints)."""
    d = report["dense"]
    lines = [f"dense: perplexity {d['perplexity']:.3f} on {d['tokens']:,} held-out tokens"]
    for r in report["runs"]:
        lines.append(
            f"{r['name']}: perplexity {r['perplexity']:.3f} ({100 * r['relative_change']:+.1f}% vs dense), "
            f"sparsity {100 * r['sparsity']:.1f}%"
        )
    return lines


def _memory_sentence(report: dict) -> str:
    mem = report["memory"]
    calibrated = [r for r in report["runs"] if r["calibration"]]
    if not calibrated:
        return ""
    peaks = [r["memory"]["peak_above_start_bytes"] for r in calibrated]
    reset = all(r["memory"]["peak_reset"] for r in calibrated)
    where = "above the resident size at its start" if reset else "(process peak since start: not resettable here)"
    plain = [r["memory"]["peak_above_start_bytes"] for r in report["runs"] if not r["calibration"]]
    baseline = (
        f" Magnitude pruning, which reads no calibration data, adds {_mb(min(plain))} to {_mb(max(plain))} by "
        "itself (the scores and masks of every layer)."
        if plain
        else ""
    )
    return (
        f"Calibration holds one block's inputs for the calibration set at a time: "
        f"{_mb(mem['one_block_activations_bytes'])} per block (float32; the next block's inputs are built beside "
        f"them), against {_mb(mem['all_blocks_activations_bytes'])} for all {report['model']['blocks']} blocks at "
        f"once. Peak resident memory each calibrated run added {where}: {_mb(min(peaks))} to {_mb(max(peaks))} "
        f"(the model copy being pruned, {_mb(mem['model_bytes'])}, was made before).{baseline}"
    )


def render_causal_lm_markdown(report: dict) -> str:
    """``report.md`` of :func:`~hf_sparse.lm.oneshot.run_causal_lm`."""
    d, data, model = report["dense"], report["data"], report["model"]
    lines = [
        f"# hf-sparse causal-lm: {report['name']}",
        "",
        f"Recipe `{report['recipe']}`. Model `{model['hub_id']}` ({model['model_type']}, "
        f"{model['parameters'] / 1e6:.1f}M parameters, float32), pruned one-shot, each run from the dense model.",
        "",
        f"Text: {data['source']}. Calibration: {data['calibration_sequences']} sequences of {data['seq_len']} tokens "
        f"drawn at random offsets (seed {data['seed']}) from {data['calibration_documents']} documents "
        f"({data['calibration_stream_tokens']:,} tokens; {data['calibration_distinct_tokens']:,} distinct tokens "
        f"drawn). Held out: {data['held_out_documents']} other documents ({data['held_out_stream_tokens']:,} tokens), "
        f"never calibrated on; perplexity on the first {data['eval_windows']} non-overlapping windows of "
        f"{data['seq_len']} tokens ({d['tokens']:,} predicted tokens), exp of the mean negative log-likelihood.",
        "",
    ]
    if data.get("held_out_titles"):
        lines += ["Held-out documents: " + "; ".join(data["held_out_titles"]) + ".", ""]
    lines += [
        "| model | method | sparsity | perplexity | vs dense | pruning time | peak memory | checkpoint |",
        "|---|---|---|---|---|---|---|---|",
        f"| dense | - | 0% | {d['perplexity']:.3f} | - | - | - | {_mb(d['checkpoint_bytes'])} |",
    ]
    for r in report["runs"]:
        mem = r["memory"]["peak_above_start_bytes"]
        lines.append(
            f"| {r['name']} | {r['method']}, {_structure(r)} | {100 * r['sparsity']:.2f}% | {r['perplexity']:.3f} | "
            f"{100 * r['relative_change']:+.1f}% | {r['prune_s']:.0f} s | {_mb(mem)} | "
            f"{_mb(r.get('checkpoint_bytes'))} |"
        )
    lines += [
        "",
        "Sparsity is over the pruned Linear layers (every Linear of the transformer blocks; the LM head and the "
        "embeddings stay dense). Peak memory: the resident memory the pruning added at its peak. Checkpoint: the "
        "safetensors files as saved.",
        "",
    ]
    memory = _memory_sentence(report)
    if memory:
        lines += [memory, ""]
    lines += ["Methods: " + "; ".join(f"**{k}**: {v}" for k, v in _METHODS.items()) + ".", ""]
    lines += _check_lines(report)
    m, t = report["machine"], report["timings"]
    lines += [
        f"Machine: {machine_label(m)}; torch {m.get('torch')}, transformers "
        f"{m.get('transformers')}. Whole job {t['total_s']:.0f} s (loading {t['load_s']:.0f} s, dense "
        f"perplexity {t['eval_dense_s']:.0f} s; per run: "
        + ", ".join(f"{r['name']} {r['run_s']:.0f} s" for r in report["runs"])
        + ").",
        "",
    ]
    return "\n".join(lines)


def _check_lines(report: dict) -> list[str]:
    lines = ["## Checks", ""]
    for r in report["runs"]:
        parts = [
            f"layers {100 * r['min_layer_sparsity']:.2f}%-{100 * r['max_layer_sparsity']:.2f}% zero",
        ]
        if r["pattern_holds"] is not None:
            parts.append(f"{r['structure']} pattern {'holds in every row' if r['pattern_holds'] else '**VIOLATED**'}")
        parts.append(
            "LM head, embeddings and norms unchanged"
            if r["unpruned_unchanged"]
            else f"**parameters outside the pruned layers changed**: {r['unpruned_changed']}"
        )
        rt = r.get("round_trip")
        if rt:
            same = "identical logits" if rt["identical_logits"] else f"logits differ by {rt['max_abs_logit_diff']:.2e}"
            stored = sum(1 for f in (r.get("formats") or {}).values() if f != "dense")
            parts.append(
                f"saved ({stored} of {len(r['layers'])} pruned layers in sparse formats) and reloaded with "
                f"`from_pretrained`: {same} on a held-out window of {rt['tokens']} tokens (stored vs pruned weights: "
                f"{rt['max_abs_logit_diff_vs_pruned']:.1e})"
            )
        lines.append(f"- {r['name']}: " + "; ".join(parts) + ".")
    return [*lines, ""]


def card_results(report: dict, run: dict, recipe) -> dict:
    """What the model card of one pruned run shows (``hf_sparse_results.json``)."""
    d = report["dense"]
    data = report["data"]
    base = report["model"]["hub_id"]
    how = {
        "sparsegpt": "SparseGPT (`hf_sparse.pruning.sparsegpt_prune_`)",
        "wanda": "Wanda (`hf_sparse.pruning.wanda_prune_`)",
        "magnitude": "magnitude pruning (`hf_sparse.prune_`)",
    }[run["method"]]
    calibration = (
        f", calibrated block by block on {data['calibration_sequences']} sequences of {data['seq_len']} tokens of "
        f"{data['source']}"
        if run["calibration"]
        else " (no calibration data)"
    )
    summary = (
        f"`{base}` pruned one-shot with hf_sparse, without fine-tuning: {100 * run['sparsity']:.1f}% of the weights "
        f"of its {len(run['layers'])} transformer-block Linear layers are zero ({_structure(run)}); the LM head and "
        f"the embeddings are dense.\n\n"
        f"Perplexity on {d['tokens']:,} held-out tokens ({data['held_out_documents']} documents of {data['source']} "
        f"never used for calibration; windows of {data['seq_len']} tokens): **{run['perplexity']:.3f}**, against "
        f"{d['perplexity']:.3f} for the dense model ({100 * run['relative_change']:+.1f}%)."
    )
    return {
        "base_model": base,
        "title": f"{recipe.model.name} pruned to {100 * run['sparsity']:.0f}% ({run['method']}, {run['structure']})",
        "summary": summary,
        "method": f"Pruned with {how}{calibration}; `hf_sparse.sparsify_` then stored each pruned layer in the "
        f"format predicted fastest on the machine that ran the job (`checkpoint.format: {recipe.checkpoint.format}`), "
        "or kept it dense.",
        "dataset": data["source"],
        "pipeline_tag": "text-generation",
        "recipe_file": "hf_sparse_recipe.yaml",
        "nonzero_params": run["nonzero_params"],
        "dense_nonzero_params": d["nonzero_params"],
        "dense_checkpoint_bytes": d["checkpoint_bytes"],
        "layers": run["layers"],
        "perplexity": {"dense": d["perplexity"], "pruned": run["perplexity"], "tokens": d["tokens"]},
        # The card's Results table (the compared metric of every task's card; lower is better here).
        "accuracy": {
            "metric": "perplexity",
            "split": "held-out",
            "examples": f"{d['tokens']:,}",
            "unit": "tokens",
            "seed": data["seed"],
            "dense": d["perplexity"],
            "compressed": run["perplexity"],
            "dense_label": "dense model (the same weights before pruning)",
        },
    }
