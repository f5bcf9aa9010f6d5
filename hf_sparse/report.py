"""Markdown rendering of the ``hf-sparse compress`` report."""

from __future__ import annotations

import math
from collections import Counter

__all__ = ["render_markdown", "pct"]


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal: ``0.8 -> "80.0%"``."""
    return f"{100 * x:.1f}%"


def render_markdown(report: dict) -> str:
    """``report.md``: the dense baseline and each pruned model side by side, per-layer sparsity, machine."""
    data, dense, runs = report["data"], report["dense"], report["runs"]
    n = data["test_examples"]
    acc = dense["test_accuracy"]
    # Binomial standard error of an accuracy on n test examples: differences smaller than ~2 SE are noise.
    se = math.sqrt(max(acc * (1 - acc), 1e-12) / n)
    lines = [
        f"# hf-sparse compress: {report['model']} on {data['dataset']}",
        "",
        f"Recipe `{report['recipe']}`; {data['train_examples']:,} training and {n:,} test examples (seed "
        f"{data['seed']}); majority-class test accuracy {data['test_majority_accuracy']:.4f}.",
        "",
        "| model | pruned-layer sparsity | non-zero params (all) | test accuracy | Δ vs dense (points) | train time |",
        "|---|---|---|---|---|---|",
        f"| dense | 0.0% | {dense['nonzero_params']:,} | {acc:.4f} | – | {report['timings']['dense_train_s']:.0f} s |",
    ]
    for r in runs:
        lines.append(
            f"| {r['name']} | {pct(r['sparsity'])} | {r['nonzero_params']:,} | {r['test_accuracy']:.4f} | "
            f"{100 * r['delta_vs_dense']:+.2f} | {r['train_s']:.0f} s |"
        )
    lines += [
        "",
        f"Standard error of a test accuracy here: ±{100 * se:.2f} points (binomial, n={n}).",
        "Pruned layers: the encoder's `nn.Linear` weights; embeddings, pooler and classifier stay dense, so the",
        "non-zero count of the whole model falls by less than the pruned-layer sparsity.",
        "",
    ]
    for r in runs:
        if r.get("stages"):
            lines += [
                f"## Stages of {r['name']}",
                "",
                "Each stage starts from the model the stage before it left (the first from the fine-tuned dense "
                "baseline); test accuracy measured at the end of each stage, before the final conversion.",
                "",
                "| stage | what | steps | pruned-layer sparsity | non-zero params | test accuracy "
                "| Δ vs dense (points) | time |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for st in r["stages"]:
                lines.append(
                    f"| {st['name']} | {st['description']} | {st['steps']} | {pct(st['sparsity'])} | "
                    f"{st['nonzero_params']:,} | {st['test_accuracy']:.4f} | "
                    f"{100 * (st['test_accuracy'] - acc):+.2f} | {st['train_s']:.0f} s |"
                )
            lines.append("")
    if runs:
        names = list(dict.fromkeys(n for r in runs for n in r["layers"]))
        if names:  # structured-only runs prune no weights
            lines += ["## Per-layer sparsity", "", "| layer | " + " | ".join(r["name"] for r in runs) + " |"]
            lines.append("|---|" + "---|" * len(runs))
            for name in names:
                lines.append(f"| `{name}` | " + " | ".join(pct(r["layers"].get(name, 0.0)) for r in runs) + " |")
            lines.append("")
        lines += [
            "## Saved checkpoints",
            "",
            "| model | layer formats | weights file | vs dense file | reloaded: same predictions | latency (batch 1) "
            "| vs dense |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            counts = Counter((r.get("formats") or {}).values())
            layer_formats = ", ".join(f"{n} {f}" for f, n in counts.most_common()) or "–"
            rt, lat = r.get("round_trip"), r.get("latency")
            same = ("yes" if rt["identical_predictions"] else "NO") if rt else "not checked"
            latency = f"{1e3 * lat['ours_s']:.1f} ms" if lat else "–"
            speedup = f"{lat['speedup']:.2f}x" if lat else "–"
            lines.append(
                f"| {r['name']} | {layer_formats} | {r['checkpoint_bytes'] / 1e6:.1f} MB | "
                f"{pct(r['disk_ratio_vs_dense'])} | {same} | {latency} | {speedup} |"
            )
        lines += [
            "",
            f"Dense checkpoint: {dense['checkpoint_bytes'] / 1e6:.1f} MB. Latency: one test review padded to the "
            "recipe's max_length, batch 1, fp32, the saved model and the dense baseline interleaved in one process "
            "(medians).",
            "",
        ]
    structured = [r for r in runs if r.get("structure")]
    if structured:
        lines += ["## Structured pruning", "", "| model | parameters kept | heads per layer | FFN neurons per layer |"]
        lines.append("|---|---|---|---|")
        for r in structured:
            st = r["structure"]
            heads = ", ".join(str(x["heads"]) for x in st["layers"])
            neurons = ", ".join(str(x["neurons"]) for x in st["layers"])
            lines.append(
                f"| {r['name']} | {st['params_after']:,} of {st['params_before']:,} "
                f"({pct(st['params_after'] / st['params_before'])}) | {heads} | {neurons} |"
            )
        lines.append("")
    distilled = [r for r in runs if (r.get("distillation") or {}).get("kd")]
    if distilled:
        lines += [
            "## Distillation",
            "",
            "Each `-kd` model learned from the fine-tuned dense model (the teacher) while it was fine-tuned; the same "
            "model without `-kd` had the same pruning, steps and seed without the teacher.",
            "",
            "| model | with distillation | without | gain (points) | with distillation vs dense (points) |",
            "|---|---|---|---|---|",
        ]
        by_name = {r["name"]: r for r in runs}
        for r in distilled:
            plain = by_name.get(r["name"].removesuffix("-kd"))
            without = f"{plain['test_accuracy']:.4f}" if plain else "–"
            gain = f"{100 * (r['test_accuracy'] - plain['test_accuracy']):+.2f}" if plain else "–"
            lines.append(
                f"| {r['name'].removesuffix('-kd')} | {r['test_accuracy']:.4f} | {without} | {gain} | "
                f"{100 * r['delta_vs_dense']:+.2f} |"
            )
        cfg = distilled[0]["distillation"]["config"]
        terms = [f"alpha {cfg['alpha']}, temperature {cfg['temperature']}"]
        for key in ("hidden", "attention", "embedding"):
            if cfg.get(f"{key}_weight"):
                kind = cfg.get(f"{key}_loss", cfg.get("hidden_loss"))
                terms.append(f"{key} {kind} x {cfg[f'{key}_weight']}")
        lines += ["", "Losses: " + "; ".join(terms) + ".", ""]
    quantised = [r for r in runs if r.get("quantization")]
    if quantised:
        lines += [
            "## Quantisation",
            "",
            "`-qat` models trained with fake-quantised weights and were converted to integer layers; `-ptq` models "
            "had the same training in float and were quantised afterwards (the float column is that model before "
            "quantisation). Weight bytes: the quantised Linear layers' codes, scales and indices.",
            "",
            "| model | mode | test accuracy | vs dense (points) | float before PTQ | weight bytes | vs float32 |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in quantised:
            q = r["quantization"]
            before = f"{q['float_accuracy']:.4f}" if q.get("float_accuracy") is not None else "–"
            lines.append(
                f"| {r['name']} | {q['mode']} | {r['test_accuracy']:.4f} | {100 * r['delta_vs_dense']:+.2f} | "
                f"{before} | {q['weight_bytes']:,} | {pct(q['weight_bytes'] / max(q['float_weight_bytes'], 1))} |"
            )
        lines.append("")
    factored = [r for r in runs if r.get("lowrank")]
    if factored:
        lines += [
            "## Low rank",
            "",
            "Factorised layers: `W ≈ U V` (two thin matmuls; `+ S` with sparse residuals). Values: what the factored "
            "layers store vs their dense weights; error: `||W - U V|| / ||W||` when factorised (mean over layers).",
            "",
            "| model | layers factorised | kept dense | ranks (min–max) | values stored | vs dense | mean error |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in factored:
            lr = r["lowrank"]
            done = [e for e in lr["layers"].values() if "format" in e]
            kept = len(lr["layers"]) - len(done)
            ranks = [e["rank"] for e in done]
            errors = [e["relative_error"] for e in done if "relative_error" in e]
            span = f"{min(ranks)}–{max(ranks)}" if ranks else "–"
            err = f"{sum(errors) / len(errors):.3f}" if errors else "–"
            ratio = pct(lr["stored_params"] / max(lr["dense_params"], 1))
            lines.append(
                f"| {r['name']} | {len(done)} | {kept} | {span} | {lr['stored_params']:,} | {ratio} | {err} |"
            )
        lines.append("")
    compressed = [r for r in runs if r.get("embeddings")]
    if compressed:
        lines += [
            "## Compressed embeddings",
            "",
            "Memory: the compressed table's bytes (codes, scales, indices, factors) vs the float32 table; error: "
            "`||E' - E|| / ||E||` of the table as compressed, before fine-tuning (fitted initialisation).",
            "",
            "| model | table | method | size | memory vs float32 | error |",
            "|---|---|---|---|---|---|",
        ]
        for r in compressed:
            for table, e in r["embeddings"]["tables"].items():
                size = ", ".join(f"{k} {v}" for k, v in e["size"].items() if k not in ("seed", "vocab_factors"))
                hot = f", {e['hot_rows']} hot rows" if e.get("hot_rows") else ""
                err = f"{e['relative_error']:.3f}" if e.get("relative_error") is not None else "– (random init)"
                lines.append(
                    f"| {r['name']} | `{table}` | {e['method']}{hot} | {size} | {pct(e['memory_ratio'])} | {err} |"
                )
        lines.append("")
    if report.get("sensitivity") and factored:
        lines += [
            "Per-layer ranks above come from a sensitivity scan of the dense model (each layer alone replaced by "
            "low-rank approximations removing the scanned fractions of its values, validation accuracy measured; "
            "report.json holds the scan): sensitive layers keep more rank.",
            "",
        ]
    elif report.get("sensitivity"):
        lines += [
            "Per-layer sparsities above come from a sensitivity scan of the dense model (each layer pruned alone, "
            "validation accuracy measured; report.json holds the scan): sensitive layers are pruned less.",
            "",
        ]
    guard = report.get("guard")
    if guard:
        lines += [
            "## Accuracy guard",
            "",
            f"Progressive pruning, stopped at the first stage losing more than {100 * guard['max_drop']:.1f} points "
            f"of validation accuracy; accepted sparsity {pct(guard['accepted_sparsity'] or 0.0)}, test accuracy "
            f"{guard['test_accuracy']:.4f}, saved as `{guard['checkpoint']}`.",
            "",
            # the guard's own table, without its title (this section has one)
            "\n".join(line for line in guard["markdown"].splitlines() if not line.startswith("## ")).strip(),
            "",
        ]
    m = report["machine"]
    t = report["timings"]
    plots = report.get("plots") or {}
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({path})" for name, path in plots.items()]
        lines.append("")
    lines += [
        "## Machine and time",
        "",
        f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), GPU: {m['gpu'] or 'none'}; "
        f"torch {m['torch']}, transformers {m['transformers']}. Whole job: {t['total_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)
