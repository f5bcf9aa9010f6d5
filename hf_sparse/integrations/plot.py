"""Report charts, drawn with matplotlib and written as PNG files.

``density_plot_png`` draws one horizontal bar per layer (its stored fraction), labelled with the layer's full module
name; ``accuracy_plot_png`` draws series of ``(x, y)`` points joined by lines (test accuracy against sparsity), with
error bars of the test split's standard error, a dashed dense baseline and an axis range that keeps differences in
proportion. ``density_figure`` and ``accuracy_figure`` build the ``matplotlib.figure.Figure`` that the first two
write; :func:`hf_sparse.integrations.report_plots.write_report_plots` draws both for a ``hf-sparse compress``
report.

matplotlib is imported when a chart is drawn, never when this module is imported, and only through
``matplotlib.figure.Figure`` and the Agg canvas: pyplot and the global backend are left alone. Files are written
atomically (a temporary in the same folder, renamed over the target).
"""

from __future__ import annotations

import io
import math
import textwrap
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MissingPackageError, quote
from ..resilience import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ACCURACY_PLOT",
    "PARETO_PLOT",
    "pareto_figure",
    "pareto_plot_png",
    "FORMAT_COLORS",
    "SERIES_COLORS",
    "accuracy_figure",
    "accuracy_plot_png",
    "density_figure",
    "density_plot_png",
    "standard_error",
]

#: Bar colour (RGB, 0-255) per storage format when ``formats`` is given; other format names take the colours of
#: ``_EXTRA_COLORS`` in order of first appearance.
FORMAT_COLORS: dict[str, tuple[int, int, int]] = {
    "csr": (31, 119, 180),
    "bsr": (255, 127, 14),
    "hybrid": (44, 160, 44),
    "nm": (148, 103, 189),
    "dense": (127, 127, 127),
}
_EXTRA_COLORS = ((214, 39, 40), (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207))
_DEFAULT_BAR = (70, 130, 180)
_UNKNOWN_FORMAT = (190, 190, 190)

#: Colour (RGB, 0-255) per series, in order; after nine series the colours repeat with another marker shape, so two
#: series never share both colour and marker until the 37th.
SERIES_COLORS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (188, 189, 34),
)
_MARKERS = ("o", "s", "D", "^")
_BASELINE = (110, 110, 110)
_CHANCE = (160, 160, 160)
_TEXT = "#1e1e1e"

# Layout, in inches (figures are drawn at _DPI and cropped to their content when saved).
_DPI = 100
_MAX_PIXELS = 20000  # tallest image; a density chart of very many layers is drawn at a lower resolution instead
_BAR_AXES_W = 6.5  # the density axes: 0-100% of the bars plus room for the value printed after each bar
_ROW_H = 0.22  # per layer
_BAR_X_MAX = 1.14  # the x axis runs to 114% so "100.0%" after a full bar stays inside the axes
_TITLE_CHARS = 90  # titles wrap at this width, at most _TITLE_LINES lines
_TITLE_LINES = 3
_LABEL_CHARS = 200  # module names are shown whole up to this length (real ones are far shorter)
_LEGEND_CHARS = 60

#: Name (and file stem) of the report's accuracy chart; each run's density chart is ``density-<run name>``.
ACCURACY_PLOT = "accuracy_vs_sparsity"


# --------------------------------------------------------------------------------------------------------------------
# matplotlib, text and files
# --------------------------------------------------------------------------------------------------------------------
def _matplotlib():
    """``(Figure, FigureCanvasAgg)``, imported on first use."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingPackageError(
            "matplotlib (hf_sparse draws its report and model-card plots with it)", "pip install 'matplotlib>=3.8'"
        ) from exc
    return Figure, FigureCanvasAgg


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def _clean(text: object, limit: int | None = None) -> str:
    """``text`` as a printable one-line string (control characters become ``?``), cut at ``limit`` characters by
    keeping its start and end around an ellipsis. It is always drawn with ``parse_math=False``: a ``$`` in a layer
    or run name is a dollar sign, never mathtext."""
    text = "".join("?" if unicodedata.category(ch).startswith("C") else ch for ch in str(text))
    if limit is not None and len(text) > limit:
        head = (limit - 1) // 2
        text = text[:head] + "…" + text[len(text) - (limit - 1 - head) :]
    return text


def _wrapped_title(title: str) -> str:
    lines = textwrap.wrap(_clean(title), _TITLE_CHARS, break_long_words=True) or [""]
    if len(lines) > _TITLE_LINES:
        lines = lines[: _TITLE_LINES - 1] + [textwrap.shorten(" ".join(lines[_TITLE_LINES - 1 :]), _TITLE_CHARS)]
    return "\n".join(lines)


def _no_mathtext(ax: Axes) -> None:
    """Draw every legend text of ``ax`` literally."""
    legend = ax.get_legend()
    if legend is not None:
        for text in legend.get_texts():
            text.set_parse_math(False)
        legend.get_title().set_parse_math(False)


def _write_png(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` with Agg, cropped to its content, and write it atomically to ``path``."""
    _, FigureCanvasAgg = _matplotlib()
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software" text chunk: the bytes depend on the picture only.
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    out = Path(path)
    atomic_write_bytes(out, buffer.getvalue())
    return out


# --------------------------------------------------------------------------------------------------------------------
# Density per layer
# --------------------------------------------------------------------------------------------------------------------
def _checked_densities(densities: Mapping[str, float]) -> tuple[list[str], list[float]]:
    if not isinstance(densities, Mapping):
        raise TypeError(
            f"densities must be a mapping of layer name to stored fraction, got {type(densities).__name__}."
        )
    if not densities:
        raise ValueError("densities is empty: there is no layer to plot.")
    names, values = [], []
    for name, value in densities.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"density of layer {quote(name)} is not a number: {quote(value)}.") from None
        if math.isnan(number) or not 0.0 <= number <= 1.0:
            raise ValueError(f"density of layer {quote(name)} must be in [0, 1], got {quote(number)}.")
        names.append(str(name))
        values.append(number)
    return names, values


def _format_colors(
    names: Sequence[str], formats: Mapping[str, str] | None
) -> tuple[list[tuple[int, int, int]], list[tuple[str, tuple[int, int, int]]]]:
    """A colour per bar, and the legend entries (format name, colour) in order of first appearance."""
    if formats is None:
        return [_DEFAULT_BAR] * len(names), []
    if not isinstance(formats, Mapping):
        raise TypeError(f"formats must be a mapping of layer name to storage format, got {type(formats).__name__}.")
    legend: dict[str, tuple[int, int, int]] = {}
    colors = []
    for name in names:
        fmt = formats.get(name)
        key = "unknown" if fmt is None else (str(fmt).strip().lower() or "unknown")
        if key in legend:
            color = legend[key]
        elif key in FORMAT_COLORS:
            color = FORMAT_COLORS[key]
        elif key == "unknown":
            color = _UNKNOWN_FORMAT
        else:
            extra = sum(1 for k in legend if k not in FORMAT_COLORS and k != "unknown")
            color = _EXTRA_COLORS[extra % len(_EXTRA_COLORS)]
        legend.setdefault(key, color)
        colors.append(color)
    return colors, list(legend.items())


def density_figure(
    densities: Mapping[str, float],
    *,
    title: str = "Stored fraction per layer",
    formats: Mapping[str, str] | None = None,
) -> Figure:
    """The figure :func:`density_plot_png` writes: one horizontal bar per layer, top to bottom in the mapping's
    order, labelled on the left with the layer's full module name (as the y tick label) and on the right with its
    value (``"37.5%"``), on an x axis from 0% to 100% (ticks at 0, 25, 50, 75 and 100%, above and below the bars).
    The figure is 0.22 inch taller per layer. With ``formats`` the bars are coloured by storage format with a
    legend. Arguments and errors as for :func:`density_plot_png`.
    """
    names, values = _checked_densities(densities)
    colors, legend = _format_colors(names, formats)
    Figure, _ = _matplotlib()
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, PercentFormatter

    n = len(names)
    top, bottom = 0.8, 0.55  # title and top tick labels; bottom tick labels and the axis label
    rows_h = _ROW_H * n + 0.1
    width, height = _BAR_AXES_W + 0.1, top + rows_h + bottom
    fig = Figure(figsize=(width, height), dpi=min(_DPI, _MAX_PIXELS / height), facecolor="white")
    ax = fig.add_axes((0.0, bottom / height, _BAR_AXES_W / width, rows_h / height))
    positions = list(range(n))
    ax.barh(positions, values, height=0.72, color=[_hex(c) for c in colors], zorder=2)
    ax.set_ylim(n - 0.5, -0.5)  # the first layer on top
    ax.set_yticks(positions, labels=[_clean(name, _LABEL_CHARS) for name in names], parse_math=False, fontsize=9)
    ax.tick_params(axis="y", length=0, pad=6, labelcolor=_TEXT)
    ax.set_xlim(0.0, _BAR_X_MAX)
    ax.xaxis.set_major_locator(FixedLocator([0.0, 0.25, 0.5, 0.75, 1.0]))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.tick_params(axis="x", top=True, labeltop=True, labelsize=9, labelcolor=_TEXT)
    ax.grid(axis="x", color="#dedede", linewidth=0.8, zorder=0)
    ax.spines[["right", "top"]].set_visible(False)
    ax.axvline(1.0, color="#bdbdbd", linewidth=0.8, zorder=1)
    for y, value in zip(positions, values):
        ax.text(value + 0.01, y, f"{value * 100:.1f}%", va="center", fontsize=8, color="#464646", zorder=3)
    ax.set_xlabel("stored fraction of the weight", fontsize=9, color=_TEXT)
    ax.set_title(_wrapped_title(title), fontsize=11, parse_math=False, pad=8)
    if legend:
        handles = [Patch(color=_hex(c), label=_clean(label, 20)) for label, c in legend]
        ax.legend(handles=handles, title="format", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        _no_mathtext(ax)
    return fig


def density_plot_png(
    densities: Mapping[str, float],
    path: str | Path,
    *,
    title: str = "Stored fraction per layer",
    formats: Mapping[str, str] | None = None,
) -> Path:
    """Write a horizontal bar chart of the stored fraction (density) of each layer as a PNG file.

    One bar per layer, top to bottom in the mapping's order, its length the density on an x axis from 0% to 100%.
    Each bar is labelled on the left with its full layer name and on the right with its value (``"37.5%"``). The
    image's height grows with the number of layers; its width with the longest name (see :func:`density_figure`).
    The same arguments give the same bytes with the same matplotlib.

    Args:
        densities: Layer name -> stored fraction in ``[0, 1]`` (e.g. ``nnz / numel`` of its weight).
        path: Where to write the PNG (the folder must exist; an existing file is replaced atomically).
        title: Text drawn at the top (wrapped; very long titles are shortened).
        formats: Optional layer name -> storage format (``"csr"``, ``"bsr"``, ``"hybrid"``, ``"nm"``, ``"dense"``,
            or any other name). Bars are then coloured by format (see ``FORMAT_COLORS``) with a legend; layers
            missing from ``formats`` are drawn in light grey as ``unknown``. Format names are compared lower-cased.

    Returns:
        The path of the written file, as a ``Path``.

    Raises:
        ValueError: ``densities`` is empty, or a density is not a number, is NaN or lies outside ``[0, 1]`` (the
            message names the layer). Nothing is written.
        TypeError: ``densities`` or ``formats`` is not a mapping.
        MissingPackageError: matplotlib is not installed.
    """
    return _write_png(density_figure(densities, title=title, formats=formats), path)


# --------------------------------------------------------------------------------------------------------------------
# Accuracy against sparsity
# --------------------------------------------------------------------------------------------------------------------
def _checked_series(
    series: Mapping[str, Sequence[tuple[float, float]]],
) -> list[tuple[str, list[tuple[float, float]]]]:
    if not isinstance(series, Mapping):
        raise TypeError(f"series must be a mapping of series name to (x, y) points, got {type(series).__name__}.")
    if not series:
        raise ValueError("series is empty: there is no point to plot.")
    checked = []
    for name, points in series.items():
        if isinstance(points, (str, bytes)) or not hasattr(points, "__iter__"):
            raise TypeError(f"series {quote(name)} must be a sequence of (x, y) points, got {type(points).__name__}.")
        pairs = []
        for i, point in enumerate(points):
            try:
                x, y = point
            except (TypeError, ValueError):
                raise ValueError(
                    f"series {quote(name)}, point {i}: expected an (x, y) pair, got {quote(point)}."
                ) from None
            values = []
            for axis, value in (("x", x), ("y", y)):
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"series {quote(name)}, point {i}: {axis} is not a number: {quote(value)}."
                    ) from None
                if not math.isfinite(number):
                    raise ValueError(f"series {quote(name)}, point {i}: {axis} must be finite, got {quote(number)}.")
                values.append(number)
            pairs.append((values[0], values[1]))
        if not pairs:
            raise ValueError(f"series {quote(name)} has no points.")
        checked.append((str(name), sorted(pairs, key=lambda p: p[0])))
    return checked


def _checked_level(value: object, what: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a number: {quote(value)}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {quote(number)}.")
    return number


def standard_error(accuracy: float, n: int) -> float:
    """The binomial standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` measured on ``n`` examples."""
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / n)


def _accuracy_range(lows: Sequence[float]) -> tuple[float, float]:
    """The y range of an accuracy chart: up to 100%, and down to 5 points below the lowest of ``lows`` (points less
    their error bar, the baseline, the majority-class level) rounded down to a multiple of 0.1, so a difference
    keeps its size relative to the whole scale instead of filling the chart."""
    low = max(0.0, math.floor((min(lows) - 0.05) * 10 + 1e-9) / 10)
    return low, 1.0 + 0.02 * (1.0 - low)


def accuracy_figure(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    baseline: float | None = None,
    x_label: str = "sparsity",
    y_label: str = "test accuracy",
    title: str | None = None,
    n_test: int | None = None,
    chance: float | None = None,
) -> Figure:
    """The figure :func:`accuracy_plot_png` writes (same arguments, same errors)."""
    checked = _checked_series(series)
    baseline = _checked_level(baseline, "baseline")
    chance = _checked_level(chance, "chance")
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise ValueError(f"n_test must be a positive number of test examples, got {quote(n_test)}.")
    ys = [y for _, points in checked for _, y in points]
    levels = [v for v in (baseline, chance) if v is not None]
    unit_y = all(0.0 <= v <= 1.0 for v in ys + levels)
    if n_test is not None and not unit_y:
        raise ValueError(
            "n_test gives the standard error of an accuracy: every y, the baseline and chance must be in [0, 1]."
        )
    xs = [x for _, points in checked for x, _ in points]
    Figure, _ = _matplotlib()
    from matplotlib.ticker import MultipleLocator, PercentFormatter

    def se(p: float) -> float:
        return standard_error(p, n_test) if n_test is not None else 0.0

    fig = Figure(figsize=(8.0, 5.0), dpi=_DPI, facecolor="white")
    ax = fig.add_axes((0.1, 0.12, 0.85, 0.78))
    handles = []  # the legend's entries, in this order: the series, the baseline, the majority class
    for i, (name, points) in enumerate(checked):
        color = _hex(SERIES_COLORS[i % len(SERIES_COLORS)])
        marker = _MARKERS[(i // len(SERIES_COLORS) + i) % len(_MARKERS)]
        px, py = [x for x, _ in points], [y for _, y in points]
        container = ax.errorbar(
            px,
            py,
            yerr=[se(y) for y in py] if n_test is not None else None,
            color=color,
            marker=marker,
            markersize=6,
            markeredgecolor="white",
            linewidth=1.8,
            elinewidth=1.2,
            capsize=3,
            label=_clean(name, _LEGEND_CHARS),
            zorder=3,
        )
        handles.append(container)
    if baseline is not None:
        line = ax.axhline(
            baseline, color=_hex(_BASELINE), linestyle="--", linewidth=1.5, label=f"dense {baseline:.4f}"
        )
        handles.append(line)
        if n_test is not None:
            ax.axhspan(baseline - se(baseline), baseline + se(baseline), color=_hex(_BASELINE), alpha=0.15, lw=0)
    if chance is not None:
        line = ax.axhline(
            chance, color=_hex(_CHANCE), linestyle=":", linewidth=1.5, label=f"majority class {chance:.4f}"
        )
        handles.append(line)

    if all(0.0 <= x <= 1.0 for x in xs):
        ax.set_xlim(-0.03, 1.03)
        ax.xaxis.set_major_locator(MultipleLocator(0.1))
    else:
        ax.margins(x=0.05)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    if unit_y:
        lows = [y - se(y) for y in ys] + ([baseline - se(baseline)] if baseline is not None else [])
        ax.set_ylim(*_accuracy_range(lows + ([chance] if chance is not None else [])))
    else:
        ax.margins(y=0.1)
    ax.grid(color="#dedede", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    ax.spines[["right", "top"]].set_visible(False)
    ax.tick_params(labelsize=9, labelcolor=_TEXT)
    ax.set_xlabel(_clean(x_label, 120), fontsize=10, color=_TEXT, parse_math=False)
    ax.set_ylabel(_clean(y_label, 80), fontsize=10, color=_TEXT, parse_math=False)
    if title is not None:
        ax.set_title(_wrapped_title(title), fontsize=11, parse_math=False, pad=10)
    legend_title = f"error bars: ±1 standard error\n(n = {n_test:,} test examples)" if n_test is not None else None
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        fontsize=9,
        title=legend_title,
        title_fontsize=8,
    )
    _no_mathtext(ax)
    return fig


def accuracy_plot_png(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    baseline: float | None = None,
    x_label: str = "sparsity",
    y_label: str = "test accuracy",
    title: str | None = None,
    n_test: int | None = None,
    chance: float | None = None,
) -> Path:
    """Write a line chart of one or more series of ``(x, y)`` points (e.g. test accuracy against sparsity) as a PNG.

    Each series is drawn in its own colour (``SERIES_COLORS``, in the mapping's order) and marker, its points joined
    in order of ``x``; a series of one point is a lone marker. The legend, right of the chart, names every series,
    the baseline and the majority-class level. The x axis is labelled in percent (``x = 0.5`` is ``50%``) and spans
    0% to 100% when every ``x`` lies in ``[0, 1]``.

    When every value lies in ``[0, 1]`` (accuracies), the y axis runs up to 1 and down to a multiple of 0.1 at least
    5 points below the lowest point, error bar, baseline and majority-class level: a chart never fills its height
    with a difference of a few tenths of a point. Other values get matplotlib's automatic range.

    Args:
        series: Series name -> ``(x, y)`` points (any iterable of pairs of finite numbers).
        path: Where to write the PNG (the folder must exist; an existing file is replaced atomically).
        baseline: The dense model's ``y`` (e.g. its test accuracy): a dashed line, labelled ``"dense 0.8384"``,
            with a band of ±1 standard error when ``n_test`` is given.
        x_label, y_label: The axis titles.
        title: Text at the top, or None for none.
        n_test: The number of test examples the accuracies were measured on: every point gets an error bar of
            ±1 binomial standard error ``sqrt(p (1 - p) / n_test)``. None: no error bars.
        chance: The accuracy of always predicting the majority class: a dotted line the y axis always shows.

    Returns:
        The path of the written file, as a ``Path``.

    Raises:
        ValueError: ``series`` is empty, a series has no points, a point is not a pair, a coordinate, the baseline or
            ``chance`` is not a finite number (the message names the series and the point's index), ``n_test`` is
            not a positive integer, or ``n_test`` is given for values outside ``[0, 1]``. Nothing is written.
        TypeError: ``series`` is not a mapping, or a series is not an iterable of points.
        MissingPackageError: matplotlib is not installed.
    """
    figure = accuracy_figure(
        series, baseline=baseline, x_label=x_label, y_label=y_label, title=title, n_test=n_test, chance=chance
    )
    return _write_png(figure, path)


# --------------------------------------------------------------------------------------------------------------------
# Trade-off (Pareto) chart
# --------------------------------------------------------------------------------------------------------------------
#: Name (and file stem) of the report's trade-off chart.
PARETO_PLOT = "pareto"


def pareto_figure(
    models: Sequence[Mapping],
    *,
    dense: float | None = None,
    dense_fp32_speedup: float | None = None,
    best_dense: str | None = None,
    y_label: str = "test accuracy",
    title: str | None = None,
    n_test: int | None = None,
    pick: str | None = None,
) -> Figure:
    """The figure :func:`pareto_plot_png` writes (same arguments, same errors)."""
    from matplotlib.ticker import PercentFormatter

    Figure, _ = _matplotlib()
    rows = []
    for m in models:
        if not isinstance(m, Mapping):
            raise TypeError(f"each model must be a mapping, got {type(m).__name__}.")
        y = _checked_level(m.get("y"), f"y of {quote(m.get('name'))}")
        if y is None:
            continue
        rows.append(m | {"y": y})
    if not rows:
        raise ValueError("pareto_figure: no model has a value to draw.")
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise ValueError(f"n_test must be a positive number of test examples, got {quote(n_test)}.")
    unit_y = all(0.0 <= r["y"] <= 1.0 for r in rows) and (dense is None or 0.0 <= dense <= 1.0)

    def se(y: float) -> float:
        return standard_error(y, n_test) if n_test is not None and unit_y else 0.0

    fig = Figure(figsize=(13.0, 4.8), dpi=_DPI)
    axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"wspace": 0.12})
    panels = (
        ("speedup", "pareto_speed", "speed-up vs the best dense configuration (batch 1)"),
        ("size_ratio", "front_size", "checkpoint size vs the dense checkpoint"),
    )
    for ax, (xkey, front_key, x_label) in zip(axes, panels):
        pts = [r for r in rows if _finite_number(r.get(xkey))]
        for i, r in enumerate(pts):
            color = _hex(SERIES_COLORS[i % len(SERIES_COLORS)])
            ax.errorbar(
                [r[xkey]],
                [r["y"]],
                yerr=[se(r["y"])] if n_test is not None and unit_y else None,
                color=color,
                marker="*" if r.get("name") == pick else "o",
                markersize=13 if r.get("name") == pick else 7,
                markeredgecolor="white",
                elinewidth=1.2,
                capsize=3,
                linestyle="none",
                zorder=3,
            )
            # labels of the rightmost points go to their left, so they stay inside the axes
            xs = [p[xkey] for p in pts] + [1.0]  # the reference (the best dense configuration, the dense size)
            if xkey == "speedup" and _finite_number(dense_fp32_speedup):
                xs.append(dense_fp32_speedup)
            right = r[xkey] > min(xs) + 0.75 * (max(xs) - min(xs))
            ax.annotate(
                _clean(_short_label(str(r.get("name"))), 40),
                (r[xkey], r["y"]),
                textcoords="offset points",
                xytext=(-6, 5) if right else (6, 5),
                ha="right" if right else "left",
                fontsize=8,
                color=_TEXT,
                annotation_clip=False,
            )
        front = sorted((r for r in pts if r.get(front_key)), key=lambda r: r[xkey])
        if len(front) > 1:
            ax.plot([r[xkey] for r in front], [r["y"] for r in front], color="#9a9a9a", linewidth=1.2, zorder=2)
        if dense is not None:
            ax.axhline(dense, color=_hex(_BASELINE), linestyle="--", linewidth=1.4, label=f"dense {dense:.4f}")
            if n_test is not None and unit_y:
                ax.axhspan(dense - se(dense), dense + se(dense), color=_hex(_BASELINE), alpha=0.15, lw=0)
        if xkey == "speedup":
            ax.axvline(1.0, color=_hex(_CHANCE), linestyle=":", linewidth=1.2, label=f"best dense ({best_dense})")
            if _finite_number(dense_fp32_speedup) and dense is not None:
                ax.plot(
                    [dense_fp32_speedup],
                    [dense],
                    marker="o",
                    linestyle="none",
                    color=_hex(_BASELINE),
                    label="dense fp32",
                )
        else:
            if dense is not None:
                ax.plot([1.0], [dense], marker="o", color=_hex(_BASELINE))
            ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.margins(x=0.22)
        ax.grid(color="#dedede", linewidth=0.8, zorder=0)
        ax.set_axisbelow(True)
        ax.spines[["right", "top"]].set_visible(False)
        ax.tick_params(labelsize=9, labelcolor=_TEXT)
        ax.set_xlabel(_clean(x_label, 120), fontsize=10, color=_TEXT, parse_math=False)
        ax.legend(loc="lower right", frameon=False, fontsize=8)
        _no_mathtext(ax)
    if unit_y:
        lows = [r["y"] - se(r["y"]) for r in rows] + ([dense - se(dense)] if dense is not None else [])
        axes[0].set_ylim(*_accuracy_range(lows))
    axes[0].set_ylabel(_clean(y_label, 80), fontsize=10, color=_TEXT, parse_math=False)
    caption = "grey line: Pareto front; star: the recommended model"
    if n_test is not None and unit_y:
        caption += f"; error bars: ±1 standard error (n = {n_test:,} test examples)"
    fig.text(0.5, -0.02, caption, ha="center", fontsize=8, color=_TEXT)
    if title is not None:
        fig.suptitle(_wrapped_title(title), fontsize=11)
    return fig


def _short_label(name: str) -> str:
    """A point label: a torch configuration suffix shortened (``(torch-dynamic-int8)`` -> ``@int8``)."""
    for long, short in ((" (torch-dynamic-int8)", " @int8"), (" (bf16)", " @bf16")):
        if name.endswith(long):
            return name[: -len(long)] + short
    return name


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pareto_plot_png(models: Sequence[Mapping], path: str | Path, **kwargs) -> Path:
    """Write the accuracy-speed and accuracy-size trade-off of a job's models as a PNG: two panels sharing the y axis
    (the test metric, with ±1 standard error bars when ``n_test`` is given and the values are accuracies), x the
    speed-up against the best dense configuration of the machine (1 = as fast; the dense fp32 model drawn at its
    own ratio) and the checkpoint size as a fraction of the dense one; each model labelled by name, the Pareto front
    (``pareto_speed`` / ``front_size`` true in a model's mapping) joined by a line, the recommended model (``pick``)
    drawn as a star, the dense model's metric as a dashed line.

    Args:
        models: One mapping per model: ``name``, ``y`` (test metric), ``speedup``, ``size_ratio`` (None where not
            measured: left out of that panel), ``pareto_speed``, ``front_size``.
        kwargs: ``dense``, ``dense_fp32_speedup``, ``best_dense``, ``y_label``, ``title``, ``n_test``, ``pick``
            (see :func:`pareto_figure`).

    Raises:
        ValueError: no model has a finite ``y``, or a bad ``n_test``.
        MissingPackageError: matplotlib is not installed.
    """
    return _write_png(pareto_figure(models, **kwargs), path)
