"""Which saved model to use: the trade-off of a ``hf-sparse compress`` job's models between the compared metric,
speed on this machine and size on disk, and the recommendation of the recipe's ``selection`` section.

Decisions read the *validation* metric (each run's and the dense model's), so choosing a model does not peek at
the test split; the test metric is reported beside it. Speed is each model's ratio against the best dense
configuration of the machine (bf16, dynamic int8 ... of the fine-tuned dense model), measured interleaved in the
same process; size is the checkpoint's bytes against the dense checkpoint's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ..method import delta_text, is_fraction_metric, metric_cell

__all__ = [
    "RUNTIME_HOWTO",
    "select_model",
    "pareto_front",
    "selection_markdown",
    "recommendation_lines",
    "metric_drop",
]


#: How a model picked in a torch configuration runs (its folder holds float32 weights that load without hf_sparse).
RUNTIME_HOWTO = {
    "bf16": "in bf16: `model = {auto}.from_pretrained(folder, dtype=torch.bfloat16)`",
    "torch-dynamic-int8": (
        "with torch's dynamic int8 Linear layers: `model = torch.ao.quantization.quantize_dynamic("
        "{auto}.from_pretrained(folder), {{torch.nn.Linear}}, dtype=torch.qint8)`"
    ),
    "openvino-int8-weights": (
        "with OpenVINO and int8 weights (every MatMul weight int8, one scale per output channel), built as measured: "
        "`model = hf_sparse.load_runtime(folder)` (needs `pip install 'hf-sparse[bench]'`), then "
        "`model(**tokenizer(texts, return_tensors='pt', padding=True)).logits`"
    ),
}


AUTO_CLASS = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "masked-lm": "AutoModelForMaskedLM",
}


def metric_drop(value: float, dense: float, *, higher_is_better: bool, fraction: bool) -> float:
    """How much worse ``value`` is than ``dense`` (positive: worse): a difference for accuracies and F1 (0.01 = one
    point), a relative increase for metrics where lower is better (0.01 = 1%)."""
    if higher_is_better:
        return dense - value if fraction else (dense - value) / abs(dense)
    return (value - dense) / abs(dense)


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names of the points ``(name, quality, cost)`` no other point dominates (at least as good in both, better in
    one: higher quality, lower cost), in order of increasing cost."""
    front = []
    for name, q, c in points:
        dominated = any((q2 >= q and c2 <= c) and (q2 > q or c2 < c) for n2, q2, c2 in points if n2 != name)
        if not dominated:
            front.append((c, -q, name))
    return [name for _, _, name in sorted(front)]


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def best_dense_configuration(runs: Sequence[Mapping]) -> str | None:
    """The dense configuration to recommend: the one with the lowest median time over the runs' timings.

    Each run's timing names the fastest dense configuration of its own rounds; when two configurations are within
    noise of each other, runs can disagree. The median of each configuration's time over every run that timed it
    decides (ties: the name first in sort order), so the report names one configuration, not "X or Y".
    """
    seconds: dict[str, list[float]] = {}
    for r in runs:
        lat = r.get("latency") or {}
        for name, s in (lat.get("dense_baselines_s") or {}).items():
            if _finite(s) is not None:
                seconds.setdefault(name, []).append(float(s))
        if lat.get("best_dense") and lat["best_dense"] not in (lat.get("dense_baselines_s") or {}):
            best_s = _finite(lat.get("best_dense_s"))  # a timing that names its best without the others
            seconds.setdefault(lat["best_dense"], []).append(math.inf if best_s is None else float(best_s))
    if not seconds:
        return None
    return min(sorted(seconds), key=lambda n: statistics.median(seconds[n]))


def select_model(report: Mapping, selection: Any) -> dict:
    """The models of ``report`` (the dict ``run_compress`` builds) compared and one recommended.

    Args:
        report: With ``metric``, ``dense`` (its ``validation`` metrics and ``checkpoint_bytes``) and ``runs`` (each
            with its test metrics, ``validation``, ``checkpoint_bytes`` and, when timed, ``latency``).
        selection: A :class:`~hf_sparse.jobs.sections.SelectionSection`.

    Returns:
        A dict: ``objective``, ``max_drop``, ``min_speedup``, ``max_size``, ``metric`` (key), ``decided_on``
        (``validation`` or ``test`` when the runs have no validation metrics), ``models`` (one entry per run: name,
        ``drop`` on the deciding split, ``test``, ``speedup`` vs the best dense configuration, ``size_ratio``,
        ``qualifies`` and ``why_not``), ``pick`` (a run name, or None), ``best_dense`` (the fastest dense
        configuration's name), ``closest`` (the qualifying-in-speed model with the smallest drop when none
        qualifies), ``pareto_speed`` and ``pareto_size`` (run names on each front, by test metric), and ``budgets``
        (per accuracy budget, the fastest and the smallest model within it).
    """
    metric = report["metric"]
    key, higher = metric["key"], bool(metric.get("higher_is_better", True))
    fraction = is_fraction_metric(key)
    dense = report["dense"]
    vkey = "validation_" + key[len("test_") :] if key.startswith("test_") else key
    runs = [r for r in report.get("runs") or () if isinstance(r, Mapping)]
    decided_on = "validation"
    if _finite((dense.get("validation") or {}).get(vkey)) is None or any(
        _finite((r.get("validation") or {}).get(vkey)) is None for r in runs
    ):
        decided_on = "test"

    def value(entry: Mapping) -> float:
        return float((entry.get("validation") or {})[vkey]) if decided_on == "validation" else float(entry[key])

    # A run also timed in a torch configuration (``checkpoint.runtimes``) is a second model: the same weights run
    # as bf16 or with dynamic int8 Linear layers, with its own measured metrics, speed and (float32) size.
    rows = []
    for r in runs:
        rows.append({**r, "checkpoint": r.get("checkpoint", r["name"])})
        rt = r.get("runtime")
        if isinstance(rt, Mapping) and rt.get("runtime"):
            rows.append(
                {
                    **rt,
                    "name": f"{r['name']} ({rt['runtime']})",
                    "run": r["name"],
                    "checkpoint": f"{r['name']}-{rt['runtime']}",
                    "delta_vs_dense": rt[key] - dense[key] if _finite(rt.get(key)) is not None else None,
                    "disk_ratio_vs_dense": rt["checkpoint_bytes"] / dense["checkpoint_bytes"]
                    if rt.get("checkpoint_bytes") and dense.get("checkpoint_bytes")
                    else None,
                }
            )
    runs = rows
    models = []
    for r in runs:
        lat = r.get("latency") or {}
        speedup = _finite(lat.get("ratio_vs_best_dense"))
        size_ratio = _finite(r.get("disk_ratio_vs_dense"))
        drop = metric_drop(value(r), value(dense), higher_is_better=higher, fraction=fraction)
        why = []
        if drop > selection.max_drop + 1e-12:
            why.append(f"{decided_on} drop {_drop_text(drop, fraction)} > {_drop_text(selection.max_drop, fraction)}")
        if selection.objective == "latency" and speedup is None:
            why.append("not timed")
        elif selection.objective == "latency" and speedup <= 1.0:
            why.append(f"not faster than the best dense configuration ({speedup:.2f}x)")
        if selection.objective == "size" and size_ratio is not None and size_ratio >= 1.0:
            why.append(f"not smaller than the dense checkpoint ({100 * size_ratio:.1f}%)")
        if selection.min_speedup is not None and (speedup is None or speedup < selection.min_speedup):
            why.append(f"speed-up {'–' if speedup is None else f'{speedup:.2f}x'} < {selection.min_speedup:g}x")
        if selection.max_size is not None and (size_ratio is None or size_ratio > selection.max_size):
            why.append(
                f"size {'–' if size_ratio is None else f'{100 * size_ratio:.1f}%'} > {100 * selection.max_size:g}%"
            )
        models.append(
            {
                "name": r["name"],
                "checkpoint": r["checkpoint"],
                "runtime": r.get("runtime") if isinstance(r.get("runtime"), str) else None,
                "run": r.get("run", r["name"]),
                "drop": drop,
                "test": _finite(r.get(key)),
                "test_delta": _finite(r.get("delta_vs_dense")),
                "speedup": speedup,
                "size_ratio": size_ratio,
                "qualifies": not why,
                "why_not": "; ".join(why),
            }
        )

    def cost(m: Mapping, objective: str) -> float:
        if objective == "latency":
            return -m["speedup"] if m["speedup"] is not None else math.inf
        return m["size_ratio"] if m["size_ratio"] is not None else math.inf

    qualifying = [m for m in models if m["qualifies"]]
    pick = min(qualifying, key=lambda m: (cost(m, selection.objective), m["drop"]))["name"] if qualifying else None
    closest = None
    if pick is None and models:
        closest = min(models, key=lambda m: (m["drop"], cost(m, selection.objective)))["name"]

    timed = [
        (m["name"], m["test"], -m["speedup"]) for m in models if m["speedup"] is not None and m["test"] is not None
    ]
    sized = [
        (m["name"], m["test"], m["size_ratio"])
        for m in models
        if m["size_ratio"] is not None and m["test"] is not None
    ]
    if not higher:  # quality is "higher is better" for the front
        timed = [(n, -q, c) for n, q, c in timed]
        sized = [(n, -q, c) for n, q, c in sized]
    budgets = []
    for budget in selection.budgets:
        within = [m for m in models if m["drop"] <= budget + 1e-12]
        # only models that beat the dense model at its best: otherwise the dense model is the pick
        fast = [m for m in within if m["speedup"] is not None and m["speedup"] > 1.0]
        small = [m for m in within if m["size_ratio"] is not None and m["size_ratio"] < 1.0]
        budgets.append(
            {
                "budget": budget,
                "fastest": min(fast, key=lambda m: cost(m, "latency"))["name"] if fast else None,
                "smallest": min(small, key=lambda m: cost(m, "size"))["name"] if small else None,
            }
        )
    return {
        "objective": selection.objective,
        "max_drop": selection.max_drop,
        "min_speedup": selection.min_speedup,
        "max_size": selection.max_size,
        "metric": key,
        "decided_on": decided_on,
        "dense_validation": _finite((dense.get("validation") or {}).get(vkey)),
        "models": models,
        "pick": pick,
        "closest": closest,
        "best_dense": best_dense_configuration(runs),
        "pareto_speed": pareto_front(timed),
        "pareto_size": pareto_front(sized),
        "budgets": budgets,
    }


def _drop_text(drop: float, fraction: bool) -> str:
    return f"{100 * drop:.2f} points" if fraction else f"{100 * drop:.1f}%"


def _goal_text(sel: Mapping, fraction: bool) -> str:
    parts = [f"at most {_drop_text(sel['max_drop'], fraction)} below the dense model on the {sel['decided_on']} split"]
    if sel.get("min_speedup") is not None:
        parts.append(f"at least {sel['min_speedup']:g}x the best dense configuration")
    if sel.get("max_size") is not None:
        parts.append(f"at most {100 * sel['max_size']:g}% of the dense checkpoint")
    return ", ".join(parts)


def recommendation_lines(sel: Mapping, report: Mapping, output: str | None = None) -> list[str]:
    """The recommendation in a few plain lines (the end of the CLI output, the top of the report section)."""
    key = sel["metric"]
    fraction = is_fraction_metric(key)
    by_name = {m["name"]: m for m in sel["models"]}
    goal = _goal_text(sel, fraction)
    objective = "fastest" if sel["objective"] == "latency" else "smallest"
    if sel["pick"] is not None:
        m = by_name[sel["pick"]]
        where = f" ({output}/{m.get('checkpoint') or m['name']})" if output else ""
        speed = (
            f"{m['speedup']:.2f}x the best dense configuration ({sel['best_dense']})" if m["speedup"] else "not timed"
        )
        size = (
            f"{100 * m['size_ratio']:.1f}% of the dense checkpoint" if m["size_ratio"] is not None else "size unknown"
        )
        lines = [
            f"Use {m['name']}{where}: the {objective} model within the goal: {goal}.",
            f"  test {metric_cell(m['test'], key)} ({delta_text(m['test_delta'], key)} vs dense), {speed}, {size}.",
        ]
        if m.get("runtime"):
            auto = AUTO_CLASS.get(report.get("task") or "text-classification", "AutoModel")
            how = RUNTIME_HOWTO.get(m["runtime"], "in {runtime}").format(auto=auto, runtime=m["runtime"])
            lines.append(f"  Run it {how}.")
        return lines
    # The goal also asks the objective of the pick: a model within the accuracy budget that is not faster
    # (smaller) than the dense model is no reason to use it.
    wants = "faster than the best dense configuration" if sel["objective"] == "latency" else "smaller than dense"
    lines = [f"No compressed model meets the goal: {goal}, {wants}. Use the dense model"]
    if sel.get("best_dense"):
        lines[0] += f" in its best dense configuration on this machine ({sel['best_dense']})"
    lines[0] += "."
    if sel.get("closest"):
        m = by_name[sel["closest"]]
        lines.append(f"  Closest: {m['name']} ({m['why_not']}).")
    if sel["objective"] == "latency" and sel["models"] and all(m["speedup"] is None for m in sel["models"]):
        lines.append(
            "  No model was timed (checkpoint.latency_rounds is 0), so none can be picked for speed: time them, or "
            "pick for size (selection.objective: size)."
        )
    return lines


def selection_markdown(sel: Mapping, report: Mapping) -> list[str]:
    """``report.md``'s section: the recommendation, every model's trade-off, the Pareto fronts and the per-budget
    table."""
    key = sel["metric"]
    fraction = is_fraction_metric(key)
    unit = "points" if fraction else "%"
    lines = ["## Which model to use", "", *recommendation_lines(sel, report), ""]
    lines += [
        f"Decided on the {sel['decided_on']} split's {report['metric']['name']} (the test split only reports); "
        f"speed-up: batch-1 latency against the best dense configuration of this machine "
        f"({sel.get('best_dense') or 'not timed'}), measured interleaved; size: checkpoint bytes against the dense "
        "checkpoint's. On the Pareto fronts no other model is both better on the test split and faster (smaller).",
        "",
        f"| model | {sel['decided_on']} drop ({unit}) | test {report['metric']['name']} | Δ test "
        "| speed-up vs best dense | size vs dense | front (speed / size) | within the goal |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for m in sel["models"]:
        speedup = "–" if m["speedup"] is None else f"{m['speedup']:.2f}x"
        size = "–" if m["size_ratio"] is None else f"{100 * m['size_ratio']:.1f}%"
        fronts = "/".join("yes" if m["name"] in sel[f] else "–" for f in ("pareto_speed", "pareto_size"))
        lines.append(
            f"| {m['name']} | {100 * m['drop']:.2f} | {metric_cell(m['test'], key)} | "
            f"{delta_text(m['test_delta'], key) if m['test_delta'] is not None else '–'} | "
            f"{speedup} | {size} | {fronts} | "
            f"{'yes' if m['qualifies'] else m['why_not']} |"
        )
    lines += [
        "",
        f"Per accuracy budget (largest {sel['decided_on']} drop accepted), the model to pick:",
        "",
        "| budget | fastest | smallest |",
        "|---|---|---|",
    ]
    dense_pick = f"the dense model ({sel['best_dense']})" if sel.get("best_dense") else "the dense model"
    for b in sel["budgets"]:
        lines.append(
            f"| {_drop_text(b['budget'], fraction)} | {b['fastest'] or dense_pick} | "
            f"{b['smallest'] or 'the dense model'} |"
        )
    lines.append("")
    return lines
