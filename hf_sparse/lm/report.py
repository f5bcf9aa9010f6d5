"""``report.md`` of the causal-LM job (:func:`~hf_sparse.lm.run.run_lm`)."""

from __future__ import annotations

from ..jobs.report import dense_comparison_lines, machine_label

__all__ = ["render_lm_markdown"]


def _rel(value: float, base: float) -> str:
    return f"{100 * (value / base - 1):+.1f}%"


def render_lm_markdown(report: dict) -> str:
    """``report.md`` of :func:`run_lm`."""
    cfg = report["attention"]["config"]
    globals_ = cfg.get("global_positions") or []
    pattern = f"{cfg['pattern']} {cfg['window']}" + (
        f" + {len(globals_)} global positions {globals_}" if globals_ else ""
    )
    docs = report["data"]["eval_documents"]
    lines = [
        f"# hf-sparse lm: {report['name']}",
        "",
        f"Recipe `{report['recipe']}`. Model `{report['model']['hub_id']}` "
        f"({report['model']['parameters'] / 1e6:.1f}M parameters, float32) with attention pattern **{pattern}** "
        f"(`attn_implementation='hf_sparse'`) on "
        f"{len(report['attention']['layers'])} layers.",
        "",
        f"Held out (data seed {report['data']['seed']}): "
        + "; ".join(f"{d['title']} ({d['tokens']} tokens)" for d in docs)
        + f". Fine-tuning documents: {report['data']['train_documents']} other speeches "
        f"({report['data']['train_tokens']:,} tokens).",
        "",
        "Perplexity: the first L tokens of each held-out document in one forward pass (batch 1, no sliding "
        "evaluation), exp of the mean negative log-likelihood of tokens 2..L, all documents pooled.",
        "",
        *_perplexity_table(report),
        *_correctness_lines(report),
        *_finetune_lines(report),
        *_checkpoint_lines(report),
    ]
    return "\n".join(lines)


def _perplexity_table(report: dict) -> list[str]:
    ppl, ft = report["perplexity"], report["finetune"]
    lines = []
    columns = [("dense (sdpa, full attention)", "dense"), ("pattern, before fine-tuning", "windowed_before")]
    if "windowed_after" in ppl:
        columns.append((f"pattern, after {ft['steps']} fine-tuning steps", "windowed_after"))
    if "dense_finetuned" in ppl:
        columns.append((f"dense control, after {ft['steps']} steps, full attention", "dense_finetuned"))
    lines.append("| L | tokens evaluated | " + " | ".join(c for c, _ in columns) + " |")
    lines.append("|---|---|" + "---|" * len(columns))
    for length in report["eval"]["lengths"]:
        key = str(length)
        base = ppl["dense"][key]["perplexity"]
        cells = [f"{base:.3f}"]
        for _, name in columns[1:]:
            value = ppl[name][key]["perplexity"]
            cells.append(f"{value:.3f} ({_rel(value, base)} vs dense)")
        lines.append(f"| {length} | {ppl['dense'][key]['tokens']:,} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _correctness_lines(report: dict) -> list[str]:
    c = report["correctness"]
    if not c:
        return []
    verdict = "passed" if c["passed"] else "**FAILED**"
    return [
        f"Correctness anchor ({verdict}): our attention with a window of {c['window']} tokens (everything the "
        f"causal mask allows) on {c['document']}: largest logit difference to sdpa {c['max_abs_logit_diff']:.2e} "
        f"(tolerance {c['atol']:.0e}, logits up to {c['max_abs_logit']:.1f}); perplexity "
        f"{c['perplexity_full_window']:.4f} vs {c['perplexity_dense']:.4f} dense.",
        "",
    ]


def _finetune_lines(report: dict) -> list[str]:
    ppl, ft = report["perplexity"], report["finetune"]
    lines: list[str] = []
    if ft:
        wc = ft["weight_change"]
        lines += [
            f"Fine-tuning with the pattern: {ft['steps']} steps, {ft['tokens_seen']:,} tokens drawn from "
            f"{ft['pieces']} pieces; loss {ft['losses'][0]:.3f} at the first step, {ft['losses'][-1]:.3f} at the last "
            f"(mean {ft['train_loss']:.3f}); weights moved by {100 * wc['relative_l2']:.3f}% (relative L2, "
            f"{wc['tensors_changed']} of {wc['tensors']} tensors); {ft['train_s']:.0f} s.",
            "",
        ]
        if "dense_finetuned" in ppl:
            # Like for like: the pattern against full attention, both before and both after the same fine-tuning.
            gaps = []
            for length in report["eval"]["lengths"]:
                key = str(length)
                before = ppl["windowed_before"][key]["perplexity"] / ppl["dense"][key]["perplexity"] - 1
                after = ppl["windowed_after"][key]["perplexity"] / ppl["dense_finetuned"][key]["perplexity"] - 1
                gaps.append(f"{100 * before:+.1f}% before, {100 * after:+.1f}% after at {length} tokens")
            control = ft["dense_control"]
            lines += [
                "Cost of the pattern, against full attention with the same weights (before fine-tuning) and against "
                "the dense control fine-tuned the same way (after): " + "; ".join(gaps) + ". The dense control: "
                f"loss {control['losses'][0]:.3f} at the first step, {control['losses'][-1]:.3f} at the last (mean "
                f"{control['train_loss']:.3f}); {control['train_s']:.0f} s.",
                "",
            ]
        else:
            lines += [
                "No dense control was fine-tuned (`finetune.dense_control: false`): the change after fine-tuning "
                "mixes adaptation to the pattern with adaptation to the speeches' style.",
                "",
            ]
    else:
        lines += ["No fine-tuning (`finetune.steps: 0`).", ""]
    return lines


def _checkpoint_lines(report: dict) -> list[str]:
    lines: list[str] = []
    ck = report["checkpoint"]
    rt = ck.get("round_trip")
    if rt:
        same = (
            "identical logits"
            if rt["identical_logits"]
            else f"largest logit difference {rt['max_abs_logit_diff']:.2e}"
        )
        lines += [
            f"Saved to `{ck['folder']}` ({ck['weights_bytes'] / 1e6:.0f} MB of safetensors, the pattern in "
            f'`config.json`); reloaded with `from_pretrained(..., attn_implementation="hf_sparse")`: {same} on '
            f"{rt['document']} at {rt['length']} tokens; attention config equal: {rt['attention_config_equal']}.",
            "",
        ]
    lat = report["latency"]
    m = report["machine"]
    if lat:
        refuses = report["attention_path"]["cpu_kernel_refuses"]
        path = "our C++ kernel" if not refuses else f"the PyTorch reference ({'; '.join(refuses)})"
        threads = f"{lat['threads']} thread" + ("s" if lat["threads"] != 1 else "")
        lines += [
            f"Latency of one forward pass ({lat['length']} tokens, batch 1, float32, {threads}), the "
            f"saved model with the pattern ({path}) against the same weights with sdpa full attention, interleaved "
            f"({lat['rounds']} rounds, medians): **{lat['ours_s']:.2f} s vs {lat['sdpa_full_s']:.2f} s, "
            f"{lat['speedup']:.2f}x** (per-round ratios {lat['speedup_min']:.2f}-{lat['speedup_max']:.2f}x; "
            "> 1: ours faster).",
            "",
        ]
        if lat.get("best_dense"):
            lines += [
                f"Against the best dense configuration of this machine ({machine_label(m)}), the same weights with "
                f"sdpa full attention in {lat['best_dense']}: **{lat['ours_s']:.2f} s vs {lat['best_dense_s']:.2f} "
                f"s, {lat['ratio_vs_best_dense']:.2f}x** (vs fp32: {lat['ratio_vs_fp32']:.2f}x).",
                "",
                *dense_comparison_lines([("pattern (hf_sparse attention)", lat)], m),
            ]
    t = report["timings"]
    phases = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in t.items() if k != "total_s")
    lines += [
        f"Machine: {m.get('cpu', '?')}, {m.get('cores')} cores, torch {m.get('torch')}, transformers "
        f"{m.get('transformers')}. Whole job {t['total_s']:.0f} s ({phases}).",
        "",
    ]
    return lines
