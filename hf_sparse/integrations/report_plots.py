"""The plots of a ``hf-sparse compress`` report (accuracy against sparsity, and the per-layer density of each run),
drawn with :mod:`hf_sparse.integrations.plot`."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import quote
from ..resilience import confined_path
from .plot import ACCURACY_PLOT, PARETO_PLOT, accuracy_plot_png, density_plot_png, pareto_plot_png

__all__ = ["write_report_plots"]


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a finite real number (numpy scalars included, bools not), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _treatments(run: Mapping) -> list[str]:
    """What a run applied besides unstructured pruning, in a fixed order, as short legend words."""
    parts = []
    if run.get("structure"):
        parts.append("structured")
    quant = run.get("quantization")
    if isinstance(quant, Mapping):
        bits = ((quant.get("config") or {}).get("weight") or {}).get("bits")
        mode = str(quant.get("mode") or "").upper()
        parts.append(" ".join(p for p in (f"int{bits}" if bits else "quantised", mode) if p))
    if isinstance(run.get("distillation"), Mapping) and run["distillation"].get("kd"):
        parts.append("distilled")
    if run.get("lowrank"):
        parts.append("low-rank")
    if run.get("embeddings"):
        parts.append("compressed embeddings")
    if run.get("attention"):
        parts.append("sparse attention")
    return parts


def _metric_key(report: Mapping) -> tuple[str, str]:
    """(report key, name) of the report's compared metric (test accuracy for reports without a ``metric``)."""
    metric = report.get("metric")
    if isinstance(metric, Mapping) and isinstance(metric.get("key"), str):
        return metric["key"], str(metric.get("name") or metric["key"])
    return "test_accuracy", "accuracy"


def _report_series(report: Mapping) -> dict[str, list[tuple[float, float]]]:
    """The runs' (measured sparsity, test metric: accuracy, or the report's ``metric``) grouped by what else each
    applied, in order of first appearance;
    runs without both numbers are left out. The accuracy-guarded run, if any, is a series of its own."""
    groups: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    pruned: dict[tuple[str, ...], bool] = {}
    metric, _ = _metric_key(report)
    for run in report.get("runs") or ():
        if not isinstance(run, Mapping):
            continue
        x, y = _finite(run.get("sparsity")), _finite(run.get(metric))
        if x is None or y is None:
            continue
        key = tuple(_treatments(run))
        groups.setdefault(key, []).append((x, y))
        target = _finite(run.get("target_sparsity"))
        pruned[key] = pruned.get(key, False) or x > 0 or (target or 0.0) > 0
    # "pruned" leads the name only when the series holds a pruned run: a dense int8 run alone is "int8 QAT".
    series = {
        " + ".join((["pruned"] if pruned[key] else []) + list(key)) or "fine-tuned": points
        for key, points in groups.items()
    }
    guard = report.get("guard")
    if isinstance(guard, Mapping) and _finite(guard.get(metric)) is not None:
        accepted = [h for h in guard.get("history") or () if isinstance(h, Mapping) and h.get("accepted")]
        x = _finite(accepted[-1].get("measured_sparsity")) if accepted else None
        x = x if x is not None else _finite(guard.get("accepted_sparsity"))
        if x is not None:
            series["accuracy guard"] = [(x, float(guard[metric]))]
    return series


def _report_test_split(report: Mapping) -> tuple[int | None, float | None]:
    """``(number of test examples, majority-class test accuracy)`` from the report's ``data``, each None when the
    report lacks a usable value."""
    data = report.get("data")
    if not isinstance(data, Mapping):
        return None, None
    n = data.get("test_examples")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
    chance = _finite(data.get("test_majority_accuracy"))
    chance = chance if chance is not None and 0.0 <= chance <= 1.0 else None
    return n, chance


def _file_stem(name: str, taken: set[str]) -> str:
    """``density-<name>`` made safe as a file name (characters other than letters, digits, ``.``, ``_`` and ``-``
    become ``_``) and unique among ``taken`` (``-2``, ``-3`` ... appended)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    stem, n = f"density-{safe}", 2
    while stem in taken:
        stem, n = f"density-{safe}-{n}", n + 1
    taken.add(stem)
    return stem


def _pareto_plot(report: Mapping, selection: Mapping, folder: Path) -> None:
    """``pareto.png``: the job's models by test metric against speed-up and size (see :func:`pareto_plot_png`)."""
    key, name = _metric_key(report)
    dense = report.get("dense")
    baseline = _finite(dense.get(key)) if isinstance(dense, Mapping) else None
    n_test, _ = _report_test_split(report)
    if key != "test_accuracy":
        n_test = None
    # The dense fp32 model's speed against the best dense configuration: the median over the runs' interleaved
    # measurements.
    fp32 = []
    for run in report.get("runs") or ():
        lat = run.get("latency") if isinstance(run, Mapping) else None
        if isinstance(lat, Mapping) and _finite(lat.get("best_dense_s")) and lat.get("dense_baselines_s"):
            t = _finite((lat["dense_baselines_s"] or {}).get("fp32"))
            if t:
                fp32.append(lat["best_dense_s"] / t)
    fp32.sort()
    models = [
        {
            "name": m.get("name"),
            "y": m.get("test"),
            "speedup": m.get("speedup"),
            "size_ratio": m.get("size_ratio"),
            "pareto_speed": m.get("name") in (selection.get("pareto_speed") or ()),
            "front_size": m.get("name") in (selection.get("pareto_size") or ()),
        }
        for m in selection["models"]
        if isinstance(m, Mapping)
    ]
    model = report.get("model")
    pareto_plot_png(
        models,
        confined_path(folder, f"{PARETO_PLOT}.png"),
        dense=baseline,
        dense_fp32_speedup=fp32[len(fp32) // 2] if fp32 else None,
        best_dense=selection.get("best_dense"),
        y_label=f"test {name}",
        title=f"Trade-offs of the compressed models: {model}" if model else "Trade-offs of the compressed models",
        n_test=n_test,
        pick=selection.get("pick"),
    )


def write_report_plots(report: Mapping, folder: str | Path) -> dict[str, str]:
    """Write the plots of a ``hf-sparse compress`` report (the dict ``run_compress`` returns and saves as
    ``report.json``) into ``folder``.

    * ``accuracy_vs_sparsity.png`` (:func:`accuracy_plot_png`): each run's test accuracy against its measured
      sparsity, with the dense model's test accuracy as the dashed baseline, error bars of ±1 standard error when
      the report's ``data`` has ``test_examples``, and the majority-class level (``data.test_majority_accuracy``)
      as a dotted line. Runs are grouped into series by what else they applied: ``"pruned"``, ``"pruned +
      distilled"``, ``"pruned + int8 QAT"``, ``"pruned + structured"``, ``"pruned + low-rank"`` ... ("pruned" is
      left out of a series with no pruned run, e.g. ``"int8 QAT"``). The accuracy-guarded run, when the report has
      one, is the single point ``"accuracy guard"``.
    * ``density-<run name>.png`` (:func:`density_plot_png`) for each run with per-layer sparsities: one bar per
      layer of its density ``1 - sparsity``, coloured by the layer's storage format when the run lists them.

    A plot with nothing to show is skipped rather than failing: no accuracy chart when no run has both a numeric
    sparsity and test accuracy, no density chart for a run without layers. Characters of a run name other than
    letters, digits, ``.``, ``_`` and ``-`` become ``_`` in its file name.

    Args:
        report: The report dict (``runs``, ``dense``, optionally ``data``, ``guard`` and ``model``).
        folder: Where to write the PNGs (created if missing; existing files of the same names are replaced).

    Returns:
        Plot name -> file name relative to ``folder``, in the order written: ``{"accuracy_vs_sparsity":
        "accuracy_vs_sparsity.png", "density-pruned-50": "density-pruned-50.png", ...}``.

    Raises:
        TypeError: ``report`` is not a mapping or its ``runs`` is not a list.
        ValueError: a run's layer sparsity is not a number in ``[0, 1]`` (the message names the run and the layer).
        MissingPackageError: matplotlib is not installed.
    """
    if not isinstance(report, Mapping):
        raise TypeError(f"report must be a mapping (the dict of report.json), got {type(report).__name__}.")
    runs = report.get("runs") or []
    if not isinstance(runs, Sequence) or isinstance(runs, (str, bytes)):
        raise TypeError(f"report['runs'] must be a list of run dicts, got {type(runs).__name__}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    series = _report_series(report)
    if series:
        key, name = _metric_key(report)
        dense = report.get("dense")
        baseline = _finite(dense.get(key)) if isinstance(dense, Mapping) else None
        n_test, chance = _report_test_split(report)
        values = [y for points in series.values() for _, y in points] + ([baseline] if baseline is not None else [])
        if key != "test_accuracy" or not all(0.0 <= v <= 1.0 for v in values):
            n_test = None  # not accuracies: no binomial error bars
        model = report.get("model")
        what = f"Test {name} vs sparsity"
        title = f"{what}: {model}" if model else what
        accuracy_plot_png(
            series,
            confined_path(folder, f"{ACCURACY_PLOT}.png"),
            baseline=baseline,
            y_label=f"test {name}",
            title=title,
            n_test=n_test,
            chance=chance,
        )
        written[ACCURACY_PLOT] = f"{ACCURACY_PLOT}.png"

    selection = report.get("selection")
    if isinstance(selection, Mapping) and selection.get("models"):
        _pareto_plot(report, selection, folder)
        written[PARETO_PLOT] = f"{PARETO_PLOT}.png"

    taken: set[str] = {ACCURACY_PLOT, PARETO_PLOT}
    for index, run in enumerate(runs):
        if not isinstance(run, Mapping) or not isinstance(run.get("layers"), Mapping) or not run["layers"]:
            continue
        name = str(run.get("name") or f"run-{index}")
        densities = {}
        for layer, sparsity in run["layers"].items():
            number = _finite(sparsity)
            if number is None or not 0.0 <= number <= 1.0:
                raise ValueError(
                    f"run {quote(name)}: sparsity of layer {quote(layer)} must be a number in [0, 1], got "
                    f"{quote(sparsity)}."
                )
            densities[layer] = 1.0 - number
        formats = run.get("formats")
        formats = {k: v for k, v in formats.items() if k in densities} if isinstance(formats, Mapping) else None
        stem = _file_stem(name, taken)
        density_plot_png(
            densities,
            confined_path(folder, f"{stem}.png"),  # a run name is report data: never a path of its own
            title=f"Density per layer (1 - sparsity): {name}",
            formats=formats or None,
        )
        written[stem] = f"{stem}.png"
    return written
