"""The report charts drawn with matplotlib. The files: valid PNG images of plausible sizes, written atomically, the
same bytes for the same input. The figures: every full layer name is a tick label, bars as long as the densities and
coloured by format, accuracy points with error bars of the test split's standard error on an axis that is not zoomed
in on them. The report's plots: the expected files, series named by what each run applied. matplotlib is imported
only when a chart is drawn."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from hf_sparse.errors import MissingPackageError
from hf_sparse.integrations import plot, report_plots
from hf_sparse.integrations.plot import (
    ACCURACY_PLOT,
    FORMAT_COLORS,
    SERIES_COLORS,
    accuracy_figure,
    accuracy_plot_png,
    density_figure,
    density_plot_png,
    standard_error,
)
from hf_sparse.integrations.report_plots import _report_series, write_report_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, after Pillow has checked the whole file."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        img.load()  # decodes every row: a truncated file fails here
        return img.size


def rgb(color) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def bars(fig):
    (ax,) = fig.axes
    return ax, list(ax.patches)


# --------------------------------------------------------------------------------------------------------------------
# density_plot_png / density_figure
# --------------------------------------------------------------------------------------------------------------------
def test_density_png_is_a_valid_image_of_plausible_size(tmp_path):
    out = density_plot_png({"encoder.layer.0.query": 0.5}, str(tmp_path / "one.png"))
    assert isinstance(out, Path) and out == tmp_path / "one.png"
    width, height = image_size(out)
    assert 500 <= width <= 1500 and 120 <= height <= 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png"]  # no temporary left behind
    with Image.open(out) as img:
        assert img.convert("RGB").getpixel((0, 0)) == (255, 255, 255)


def test_every_full_layer_name_is_a_tick_label_in_order():
    names = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(12) for m in ("query", "key", "value")]
    names += ["bert.pooler.dense", "classifier"]
    fig = density_figure({name: 0.5 for name in names})
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == names  # whole, layer numbers included, nothing shortened
    positions = list(ax.get_yticks())
    ys = [ax.transData.transform((0, p))[1] for p in positions]
    assert ys == sorted(ys, reverse=True)  # the first layer on top


def test_bar_lengths_are_the_densities():
    densities = {"m.full": 1.0, "m.quarter": 0.25, "m.half": 0.5, "m.zero": 0.0, "m.np": np.float32(0.75)}
    _, patches = bars(density_figure(densities))
    assert [p.get_width() for p in patches] == pytest.approx([1.0, 0.25, 0.5, 0.0, 0.75])
    (ax,) = density_figure(densities).axes
    assert ax.get_xlim()[0] == 0.0 and ax.get_xlim()[1] >= 1.0  # the whole 0-100% scale
    values = sorted(t.get_text() for t in ax.texts)
    assert values == sorted(["100.0%", "25.0%", "50.0%", "0.0%", "75.0%"])


def test_figure_height_grows_with_the_layer_count_and_so_does_the_image(tmp_path):
    heights, sizes = [], []
    for n in (1, 10, 200):
        densities = {f"model.layers.{i}.mlp.down_proj": (i + 1) / n for i in range(n)}
        heights.append(density_figure(densities).get_size_inches()[1])
        sizes.append(image_size(density_plot_png(densities, tmp_path / f"{n}.png")))
    assert heights[0] < heights[1] < heights[2]
    assert heights[2] - heights[1] == pytest.approx(190 * plot._ROW_H)
    assert sizes[0][1] < sizes[1][1] < sizes[2][1]
    assert 190 * 18 <= sizes[2][1] <= 200 * 30  # about 22 px per layer
    assert max(w for w, _ in sizes) - min(w for w, _ in sizes) < 50  # the width follows the names, not the count


def test_long_names_widen_the_image_instead_of_being_cut(tmp_path):
    short = image_size(density_plot_png({"a": 0.5}, tmp_path / "short.png"))
    name = "model.decoder.layers.17.encoder_attn.out_proj_with_a_rather_long_descriptive_suffix"
    long = image_size(density_plot_png({name: 0.5}, tmp_path / "long.png"))
    assert long[0] > short[0] + 300
    (ax,) = density_figure({name: 0.5}).axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [name]


def test_formats_colour_bars_and_add_a_legend():
    densities = {"enc.a": 0.8, "enc.b": 0.6, "enc.c": 0.4, "enc.d": 0.3}
    fig = density_figure(densities, formats={"enc.a": "CSR", "enc.b": "bsr", "enc.c": "my_format", "enc.d": "csr"})
    ax, patches = bars(fig)
    colours = [to_hex(p.get_facecolor()) for p in patches]
    assert colours[0] == colours[3] == rgb(FORMAT_COLORS["csr"])
    assert colours[1] == rgb(FORMAT_COLORS["bsr"])
    assert colours[2] not in {rgb(c) for c in FORMAT_COLORS.values()}
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["csr", "bsr", "my_format"]  # order of first appearance


def test_layers_missing_from_formats_are_grey_and_no_formats_means_no_legend():
    ax, patches = bars(density_figure({"a": 0.5, "b": 0.5}, formats={"a": "nm"}))
    assert [to_hex(p.get_facecolor()) for p in patches] == [rgb(FORMAT_COLORS["nm"]), rgb(plot._UNKNOWN_FORMAT)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["nm", "unknown"]
    ax, _ = bars(density_figure({"a": 0.5}))
    assert ax.get_legend() is None


def test_deterministic_bytes(tmp_path):
    densities = {f"bert.encoder.layer.{i}.attention.self.query": i / 11 for i in range(12)}
    formats = {name: ("csr", "bsr", "hybrid")[i % 3] for i, name in enumerate(densities)}
    a = density_plot_png(densities, tmp_path / "a.png", formats=formats).read_bytes()
    b = density_plot_png(dict(densities), tmp_path / "b.png", formats=dict(formats)).read_bytes()
    assert a == b
    c = density_plot_png({**densities, "bert.encoder.layer.0.attention.self.query": 0.9}, tmp_path / "c.png")
    assert c.read_bytes() != a


@pytest.mark.parametrize("bad", [float("nan"), -0.01, 1.01, math.inf, "abc", None])
def test_bad_density_names_the_layer_and_writes_nothing(tmp_path, bad):
    with pytest.raises(ValueError, match=r"bert\.pooler\.dense"):
        density_plot_png({"bert.encoder.layer.0.output.dense": 0.5, "bert.pooler.dense": bad}, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_empty_or_wrong_types_raise(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        density_plot_png({}, tmp_path / "x.png")
    with pytest.raises(TypeError, match="densities must be a mapping"):
        density_plot_png([("a", 0.5)], tmp_path / "x.png")
    with pytest.raises(TypeError, match="formats must be a mapping"):
        density_plot_png({"a": 0.5}, tmp_path / "x.png", formats=["csr"])
    assert list(tmp_path.iterdir()) == []


def test_long_title_and_unusual_characters_are_drawn_literally(tmp_path):
    names = {"naïve.layer→0": 0.5, "x" * 300: 0.25, "price.$x$.layer": 0.1, "a\0b": 0.2, r"$\frac$": 0.3}
    out = density_plot_png(names, tmp_path / "odd.png", title="T" * 500 + " $\\notacommand$")
    width, height = image_size(out)
    assert width < 4000 and height < 1000
    (ax,) = density_figure(names).axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "naïve.layer→0" and labels[2] == "price.$x$.layer" and labels[3] == "a?b"
    assert len(labels[1]) == plot._LABEL_CHARS and labels[1].count("x") == plot._LABEL_CHARS - 1
    assert not any(t.get_parse_math() for t in ax.get_yticklabels())


# --------------------------------------------------------------------------------------------------------------------
# accuracy_plot_png / accuracy_figure
# --------------------------------------------------------------------------------------------------------------------
def series_artists(ax):
    """{label: ErrorbarContainer} of the chart's series."""
    from matplotlib.container import ErrorbarContainer

    return {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def test_accuracy_png_is_a_valid_image_of_plausible_size(tmp_path):
    out = accuracy_plot_png({"pruned": [(0.5, 0.83), (0.9, 0.76)]}, tmp_path / "acc.png", baseline=0.8384, n_test=1066)
    assert out == tmp_path / "acc.png"
    width, height = image_size(out)
    assert 700 <= width <= 1400 and 400 <= height <= 700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png"]


def test_points_are_where_the_data_put_them_joined_in_order_of_x():
    fig = accuracy_figure({"a": [(0.9, 0.7), (0.1, 0.6), (0.5, 0.9)]})
    (ax,) = fig.axes
    line = series_artists(ax)["a"].lines[0]
    assert list(line.get_xdata()) == [0.1, 0.5, 0.9] and list(line.get_ydata()) == [0.6, 0.9, 0.7]
    assert to_hex(line.get_color()) == rgb(SERIES_COLORS[0])


def test_error_bars_are_the_standard_error_of_the_test_split():
    n = 1066
    points = [(0.5, 0.83), (0.9, 0.76)]
    (ax,) = accuracy_figure({"pruned": points}, baseline=0.8384, n_test=n).axes
    container = series_artists(ax)["pruned"]
    assert container.has_yerr and not container.has_xerr
    (segments,) = container.lines[2]
    for (x, y), seg in zip(points, segments.get_segments()):
        se = math.sqrt(y * (1 - y) / n)
        assert seg[0][0] == seg[1][0] == x
        assert sorted(p[1] for p in seg) == pytest.approx([y - se, y + se])
    assert standard_error(0.8, 100) == pytest.approx(0.04)
    # the baseline's band of +-1 standard error and the legend says what the bars are
    assert (
        "standard error" in ax.get_legend().get_title().get_text()
        and "1,066" in ax.get_legend().get_title().get_text()
    )
    assert len(ax.patches) == 1
    # without n_test: no error bars, no band
    (plain,) = accuracy_figure({"pruned": points}, baseline=0.8384).axes
    assert not series_artists(plain)["pruned"].has_yerr and len(plain.patches) == 0


def test_accuracy_axis_is_not_zoomed_in_on_the_points():
    (ax,) = accuracy_figure({"a": [(0.5, 0.83), (0.9, 0.831)]}, baseline=0.832, n_test=1000).axes
    low, high = ax.get_ylim()
    assert high >= 1.0 and low <= 0.83 - 0.05 and low >= 0.0
    assert (0.832 - 0.83) / (high - low) < 0.02  # two tenths of a point stay small on the scale
    assert round(low * 10, 9) == int(round(low * 10, 9))  # a round multiple of 0.1
    assert ax.get_xlim()[0] < 0.0 and ax.get_xlim()[1] > 1.0  # the whole sparsity range
    # the majority-class level is drawn, and the axis reaches down to it
    (ax,) = accuracy_figure({"a": [(0.5, 0.83)]}, chance=0.5).axes
    assert ax.get_ylim()[0] <= 0.5 and [t.get_text() for t in ax.get_legend().get_texts()] == [
        "a",
        "majority class 0.5000",
    ]


def test_values_outside_zero_one_get_an_automatic_range():
    (ax,) = accuracy_figure({"perplexity": [(0.5, 12.0), (0.9, 30.0)]}, baseline=10.0).axes
    low, high = ax.get_ylim()
    assert low < 10.0 and 30.0 < high < 40.0
    with pytest.raises(ValueError, match="n_test"):
        accuracy_figure({"perplexity": [(0.5, 12.0)]}, n_test=100)


def test_baseline_is_a_dashed_line_at_its_value_and_in_the_legend():
    (ax,) = accuracy_figure({"a": [(0.2, 0.7), (0.8, 0.9)]}, baseline=0.7).axes
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [0.7, 0.7]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "dense 0.7000"]
    (none,) = accuracy_figure({"a": [(0.2, 0.5)]}).axes
    assert not [line for line in none.lines if line.get_linestyle() == "--"]


def test_each_series_has_its_colour_and_marker_in_legend_order():
    series = {f"series {i}": [(i / 12, 0.5 + i / 40)] for i in range(12)}
    (ax,) = accuracy_figure(series).axes
    artists = series_artists(ax)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(series)
    styles = [(to_hex(c.lines[0].get_color()), c.lines[0].get_marker()) for c in artists.values()]
    assert [colour for colour, _ in styles[:9]] == [rgb(c) for c in SERIES_COLORS]
    assert len(set(styles)) == 12  # colour and marker together tell every series apart


def test_long_names_and_many_series_still_make_a_bounded_image(tmp_path):
    series = {
        f"series number {i} with a rather long descriptive name $x$": [(i / 12, 0.5 + i / 40)] for i in range(12)
    }
    out = accuracy_plot_png(series, tmp_path / "many.png", title="T" * 300, x_label="x" * 200, y_label="y" * 200)
    width, height = image_size(out)
    assert width < 2500 and height < 1200


@pytest.mark.parametrize(
    "series, kwargs, error, match",
    [
        ({}, {}, ValueError, "empty"),
        ({"a": []}, {}, ValueError, "'a' has no points"),
        ({"a": [(0.1, 0.5)], "b": [(0.2, math.nan)]}, {}, ValueError, r"'b', point 0: y must be finite"),
        ({"a": [(0.1, 0.5), (math.inf, 0.5)]}, {}, ValueError, r"'a', point 1: x must be finite"),
        ({"a": [(0.1, "high")]}, {}, ValueError, r"'a', point 0: y is not a number"),
        ({"a": [(0.1, 0.5, 0.3)]}, {}, ValueError, r"'a', point 0: expected an \(x, y\) pair"),
        ({"a": [0.5]}, {}, ValueError, "expected an"),
        ({"a": [(0.1, 0.5)]}, {"baseline": math.nan}, ValueError, "baseline must be finite"),
        ({"a": [(0.1, 0.5)]}, {"baseline": "dense"}, ValueError, "baseline is not a number"),
        ({"a": [(0.1, 0.5)]}, {"chance": "half"}, ValueError, "chance is not a number"),
        ({"a": [(0.1, 0.5)]}, {"n_test": 0}, ValueError, "n_test must be a positive"),
        ({"a": [(0.1, 0.5)]}, {"n_test": 10.5}, ValueError, "n_test must be a positive"),
        ({"a": [(0.1, 0.5)]}, {"n_test": True}, ValueError, "n_test must be a positive"),
        ([("a", [(0.1, 0.5)])], {}, TypeError, "must be a mapping"),
        ({"a": "0.1,0.5"}, {}, TypeError, "'a' must be a sequence"),
    ],
)
def test_bad_series_raise_before_writing(tmp_path, series, kwargs, error, match):
    with pytest.raises(error, match=match):
        accuracy_plot_png(series, tmp_path / "x.png", **kwargs)
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------------------------------
# matplotlib: imported lazily, and a clear error without it
# --------------------------------------------------------------------------------------------------------------------
def test_importing_the_module_does_not_import_matplotlib():
    code = (
        "import sys, hf_sparse.integrations.plot; print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(MissingPackageError, match=r"pip install 'matplotlib"):
        density_plot_png({"a": 0.5}, tmp_path / "x.png")
    with pytest.raises(MissingPackageError):
        write_report_plots(synthetic_report(), tmp_path / "plots")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------------------------------
# write_report_plots
# --------------------------------------------------------------------------------------------------------------------
def synthetic_report() -> dict:
    layers = {"distilbert.transformer.layer.0.ffn.lin1": 0.75, "distilbert.transformer.layer.0.ffn.lin2": 0.25}
    return {
        "model": "distilbert-base-uncased",
        "data": {"test_examples": 1066, "test_majority_accuracy": 0.5},
        "dense": {"test_accuracy": 0.8384},
        "runs": [
            {"name": "pruned-50", "target_sparsity": 0.5, "sparsity": 0.5, "test_accuracy": 0.83, "layers": layers},
            {
                "name": "pruned-50-kd",
                "target_sparsity": 0.5,
                "sparsity": 0.5,
                "test_accuracy": 0.835,
                "layers": layers,
                "formats": {name: "csr" for name in layers},
                "distillation": {"kd": True, "config": {}},
            },
            {
                "name": "dense-int8-qat",
                "target_sparsity": 0.0,
                "sparsity": 0.0,
                "test_accuracy": 0.832,
                "layers": {},
                "quantization": {"mode": "qat", "config": {"weight": {"bits": 8}}},
            },
        ],
        "guard": None,
    }


def test_report_plots_are_written_and_valid(tmp_path):
    folder = tmp_path / "plots"
    written = write_report_plots(synthetic_report(), folder)
    assert written == {
        ACCURACY_PLOT: "accuracy_vs_sparsity.png",
        "density-pruned-50": "density-pruned-50.png",
        "density-pruned-50-kd": "density-pruned-50-kd.png",
    }
    assert sorted(p.name for p in folder.iterdir()) == sorted(written.values())  # no temporary left behind
    for file in written.values():
        width, height = image_size(folder / file)
        assert 400 <= width <= 2000 and 150 <= height <= 1000


def test_report_accuracy_chart_gets_the_test_split_and_the_baselines(tmp_path, monkeypatch):
    calls = []
    real = plot.accuracy_plot_png
    monkeypatch.setattr(report_plots, "accuracy_plot_png", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    write_report_plots(synthetic_report(), tmp_path)
    ((args, kwargs),) = calls
    assert args[0] == {"pruned": [(0.5, 0.83)], "pruned + distilled": [(0.5, 0.835)], "int8 QAT": [(0.0, 0.832)]}
    assert kwargs["baseline"] == 0.8384 and kwargs["n_test"] == 1066 and kwargs["chance"] == 0.5
    assert kwargs["title"] == "Test accuracy vs sparsity: distilbert-base-uncased"
    # a report without the test split's size: no error bars
    report = synthetic_report()
    del report["data"]
    write_report_plots(report, tmp_path / "nodata")
    assert calls[-1][1]["n_test"] is None and calls[-1][1]["chance"] is None


def test_report_series_are_named_by_what_else_was_applied():
    report = synthetic_report()
    report["runs"] += [
        {"name": "pruned-90", "sparsity": 0.9, "test_accuracy": 0.76},
        {"name": "structured-pruned-50", "sparsity": 0.5, "test_accuracy": 0.8, "structure": {"params_after": 1}},
        {
            "name": "pruned-50-int4-ptq-kd",
            "sparsity": 0.5,
            "test_accuracy": 0.81,
            "quantization": {"mode": "ptq", "config": {"weight": {"bits": 4}}},
            "distillation": {"kd": True},
        },
        {"name": "pruned-70-no-kd", "sparsity": 0.7, "test_accuracy": 0.8, "distillation": {"kd": False}},
        {"name": "broken", "sparsity": None, "test_accuracy": 0.8},
    ]
    report["guard"] = {
        "test_accuracy": 0.82,
        "accepted_sparsity": 0.6,
        "history": [
            {"accepted": True, "measured_sparsity": 0.31},
            {"accepted": True, "measured_sparsity": 0.59},
            {"accepted": False, "measured_sparsity": 0.8},
        ],
    }
    assert _report_series(report) == {
        "pruned": [(0.5, 0.83), (0.9, 0.76), (0.7, 0.8)],
        "pruned + distilled": [(0.5, 0.835)],
        "int8 QAT": [(0.0, 0.832)],
        "pruned + structured": [(0.5, 0.8)],
        "pruned + int4 PTQ + distilled": [(0.5, 0.81)],
        "accuracy guard": [(0.59, 0.82)],
    }


def test_plots_with_nothing_to_show_are_skipped(tmp_path):
    assert write_report_plots({"dense": {"test_accuracy": 0.8}, "runs": []}, tmp_path / "empty") == {}
    assert list((tmp_path / "empty").iterdir()) == []
    # runs without accuracy numbers but with layers: only their density charts
    report = {"runs": [{"name": "a", "layers": {"x": 0.5}}, {"name": "b", "test_accuracy": 0.8, "layers": {}}]}
    assert write_report_plots(report, tmp_path / "some") == {"density-a": "density-a.png"}
    # no dense baseline: the accuracy chart is drawn without it
    report = {"runs": [{"name": "a", "sparsity": 0.5, "test_accuracy": 0.8}]}
    assert write_report_plots(report, tmp_path / "nobase") == {ACCURACY_PLOT: "accuracy_vs_sparsity.png"}
    image_size(tmp_path / "nobase" / "accuracy_vs_sparsity.png")


def test_run_names_become_safe_unique_file_names(tmp_path):
    runs = [{"name": name, "layers": {"x": 0.5}} for name in ("a/b c", "a/b c", "../up", "")]
    written = write_report_plots({"runs": runs}, tmp_path)
    assert list(written.values()) == [
        "density-a_b_c.png",
        "density-a_b_c-2.png",
        "density-up.png",
        "density-run-3.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written.values())


def test_bad_reports_raise(tmp_path):
    with pytest.raises(TypeError, match="report must be a mapping"):
        write_report_plots([synthetic_report()], tmp_path)
    with pytest.raises(TypeError, match=r"report\['runs'\]"):
        write_report_plots({"runs": "pruned-50"}, tmp_path)
    report = synthetic_report()
    report["runs"][1]["layers"] = {"distilbert.transformer.layer.0.ffn.lin1": 1.5}
    with pytest.raises(ValueError, match=r"'pruned-50-kd'.*'distilbert\.transformer\.layer\.0\.ffn\.lin1'.*\[0, 1\]"):
        write_report_plots(report, tmp_path)
