"""The one report writer of the jobs (``report.json``, ``report.md``, ``recipe.yaml``, atomically, inside the output
folder) and the Markdown of the ``hf-sparse compress`` report, whose method sections come from the registered
methods' ``report`` hooks."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from ..method import METHOD_REGISTRY, delta_text, is_fraction_metric, metric_cell, report_metric
from ..resilience import atomic_write_text, confined_path

__all__ = [
    "render_markdown",
    "pct",
    "write_report",
    "machine_label",
    "vs_best_dense",
    "dense_comparison_lines",
    "report_metric",
    "delta_text",
]


def write_report(output_dir: Path, report: dict, markdown: str, recipe_yaml: str, *, indent: int = 2) -> None:
    """Write a job's ``report.json``, ``report.md`` and resolved ``recipe.yaml`` into ``output_dir`` (each atomic:
    complete under its name, or not there)."""
    atomic_write_text(confined_path(output_dir, "recipe.yaml"), recipe_yaml)
    atomic_write_text(confined_path(output_dir, "report.json"), json.dumps(report, indent=indent) + "\n")
    atomic_write_text(confined_path(output_dir, "report.md"), markdown)


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal: ``0.8 -> "80.0%"``."""
    return f"{100 * x:.1f}%"


#: The instruction sets that decide which dense configuration is fastest (named with the machine).
_DENSE_ISA = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def machine_label(m: dict) -> str:
    """The machine of a :func:`hf_sparse.machine.machine_info` record in a few words: CPU model, micro-architecture,
    cores, torch threads and the bf16/int8 instruction sets it has (which decide the best dense configuration)."""
    cpu = m.get("cpu") or "unknown CPU"
    uarch = m.get("uarch")
    label = cpu + (f" ({uarch})" if uarch and uarch not in cpu else "")
    label += f", {m.get('cores', '?')} cores"
    threads = m.get("torch_threads")
    if threads is not None:
        label += f" ({threads} torch thread{'' if threads == 1 else 's'})"
    isa = [f for f in _DENSE_ISA if f in (m.get("isa_flags") or ())]
    return label + f", {' '.join(isa) if isa else 'no bf16/int8 dot-product instructions'}"


def vs_best_dense(lat: dict | None, *, name: bool = True) -> str:
    """``"1.23x (onnxruntime-dynamic-int8)"``: a latency record's ratio against the best dense configuration of the
    machine (> 1: ours faster), or ``"–"`` where it has none (no latency, or a record of an older version)."""
    if not lat or lat.get("ratio_vs_best_dense") is None:
        return "–"
    return f"{lat['ratio_vs_best_dense']:.2f}x" + (f" ({lat['best_dense']})" if name else "")


def dense_comparison_lines(rows: list[tuple[str, dict]], machine: dict) -> list[str]:
    """Markdown: each timed model's median beside every dense configuration of ``machine`` it was interleaved with
    (``rows``: (model name, latency record) pairs), the best one named, then the configurations that were not
    timed and why. Records without the dense comparison are left out."""
    rows = [(n, lat) for n, lat in rows if lat and lat.get("dense_baselines_s")]
    if not rows:
        return []
    names = list(dict.fromkeys(k for _, lat in rows for k in lat["dense_baselines_s"]))
    lines = [
        f"Dense configurations of this machine ({machine_label(machine)}), timed beside each model (medians, ms; "
        "ratios are dense / ours, > 1: ours faster):",
        "",
        "| model | ours | " + " | ".join(names) + " | best dense | vs best dense | vs fp32 |",
        "|---|---:|" + "---:|" * len(names) + "---|---:|---:|",
    ]
    for model, lat in rows:
        cells = [lat["dense_baselines_s"].get(k) for k in names]
        ratio_fp32 = lat.get("ratio_vs_fp32")
        lines.append(
            f"| {model} | {1e3 * lat['ours_s']:.2f} | "
            + " | ".join("–" if c is None else f"{1e3 * c:.2f}" for c in cells)
            + f" | {lat['best_dense']} | {lat['ratio_vs_best_dense']:.2f}x | "
            + ("–" if ratio_fp32 is None else f"{ratio_fp32:.2f}x")
            + " |"
        )
    skipped = {k: v for _, lat in rows for k, v in (lat.get("skipped_baselines") or {}).items()}
    lines.append("")
    if skipped:
        lines += [f"Not timed: `{k}`: {v}." for k, v in sorted(skipped.items())]
        lines.append("")
    return lines


def render_markdown(report: dict) -> str:
    """``report.md``: the dense baseline and each compressed model side by side (every metric of the task),
    per-layer sparsity, machine."""
    data, dense, runs = report["data"], report["dense"], report["runs"]
    metric = report_metric(report)
    key, shown = metric["key"], metric["all"]
    n = data["test_examples"]
    unit = "points" if is_fraction_metric(key) else "perplexity"
    direction = "higher is better" if metric["higher_is_better"] else "lower is better"
    labels = data.get("labels")
    task = report.get("task") or "text-classification"
    about = f"Task {task}" + (f" with {len(labels)} labels ({', '.join(map(str, labels))})" if labels else "") + "; "
    majority = data.get("test_majority_accuracy")
    lines = [
        f"# hf-sparse compress: {report['model']} on {data['dataset']}",
        "",
        f"{about}recipe `{report['recipe']}`; {data['train_examples']:,} training and {n:,} test examples (seed "
        f"{data['seed']})" + (f"; majority-class test accuracy {majority:.4f}." if majority is not None else "."),
        f"Compared metric: test {metric['name']} ({direction}).",
        "",
        "| model | pruned-layer sparsity | non-zero params (all) | "
        + " | ".join(f"test {name}" for name in shown.values())
        + f" | Δ vs dense ({unit}) | train time |",
        "|---|---|---|" + "---|" * len(shown) + "---|---|",
    ]
    dense_time = f"{report['timings']['dense_train_s']:.0f} s" if dense.get("fine_tuned", True) else "given"
    lines.append(
        f"| dense | 0.0% | {dense['nonzero_params']:,} | "
        + " | ".join(metric_cell(dense.get(k), k) for k in shown)
        + f" | – | {dense_time} |"
    )
    for r in runs:
        lines.append(
            f"| {r['name']} | {pct(r['sparsity'])} | {r['nonzero_params']:,} | "
            + " | ".join(metric_cell(r.get(k), k) for k in shown)
            + f" | {delta_text(r['delta_vs_dense'], key)} | {r['train_s']:.0f} s |"
        )
    lines.append("")
    if key == "test_accuracy" and isinstance(dense.get(key), (int, float)):
        acc = dense[key]
        # Binomial standard error of an accuracy on n test examples: differences smaller than ~2 SE are noise.
        se = math.sqrt(max(acc * (1 - acc), 1e-12) / n)
        lines.append(f"Standard error of a test accuracy here: ±{100 * se:.2f} points (binomial, n={n}).")
    if not dense.get("fine_tuned", True):
        lines.append(
            "The dense baseline is the model as given (already fine-tuned for the task): evaluated, not trained."
        )
    if report.get("selection"):
        from .selection import selection_markdown

        lines += ["", *selection_markdown(report["selection"], report)]
    lines += [
        "Pruned layers: the encoder's `nn.Linear` weights; embeddings, pooler and the task head stay dense, so the",
        "non-zero count of the whole model falls by less than the pruned-layer sparsity.",
        "",
    ]
    for r in runs:
        if r.get("stages"):
            lines += [
                f"## Stages of {r['name']}",
                "",
                "Each stage starts from the model the stage before it left (the first from the dense baseline); "
                f"test {metric['name']} measured at the end of each stage, before the final conversion.",
                "",
                f"| stage | what | steps | pruned-layer sparsity | non-zero params | test {metric['name']} "
                f"| Δ vs dense ({unit}) | time |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for st in r["stages"]:
                lines.append(
                    f"| {st['name']} | {st['description']} | {st['steps']} | {pct(st['sparsity'])} | "
                    f"{st['nonzero_params']:,} | {metric_cell(st[key], key)} | "
                    f"{delta_text(st[key] - dense[key], key)} | {st['train_s']:.0f} s |"
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
        bests = {r["latency"].get("best_dense") for r in runs if r.get("latency")}
        one_best = next(iter(bests)) if len(bests) == 1 and None not in bests else None
        lines += [
            "## Saved checkpoints",
            "",
            "| model | layer formats | weights file | vs dense file | reloaded: same predictions | latency (batch 1) "
            f"| vs dense fp32 | vs best dense{f' ({one_best})' if one_best else ''} |",
            "|---|---|---|---|---|---|---|---|",
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
                f"{pct(r['disk_ratio_vs_dense'])} | {same} | {latency} | {speedup} | "
                f"{vs_best_dense(lat, name=one_best is None)} |"
            )
        lines += [
            "",
            f"Dense checkpoint: {dense['checkpoint_bytes'] / 1e6:.1f} MB. Latency: one test example padded to the "
            "recipe's max_length, batch 1, the saved model and every dense configuration of the fine-tuned dense "
            "model on this machine interleaved in one process (medians); a speed claim is the ratio against the "
            "best of them, not against fp32 alone.",
            "",
            *dense_comparison_lines([(r["name"], r.get("latency")) for r in runs], report["machine"]),
        ]
    # Each method's own section (structured pruning, low rank, embeddings, quantisation, distillation ...).
    for method in sorted((m for _, m in METHOD_REGISTRY.items()), key=lambda m: m.sort_key):
        lines += method.report(report)
    guard = report.get("guard")
    if guard:
        lines += [
            "## Accuracy guard",
            "",
            f"Progressive pruning, stopped at the first stage losing more than {100 * guard['max_drop']:.1f} points "
            f"of {guard.get('metric', 'validation accuracy')}; accepted sparsity "
            f"{pct(guard['accepted_sparsity'] or 0.0)}, test {metric['name']} {metric_cell(guard.get(key), key)}, "
            "saved as "
            f"`{guard['checkpoint']}`.",
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
