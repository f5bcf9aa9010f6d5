"""The report charts, checked by decoding the PNG with a small stdlib decoder below. The per-layer density chart: bars
in order with lengths proportional to the density, coloured by format with a legend, deterministic bytes, and clear
errors. The accuracy chart: markers where the data put them, lines between them, the dashed baseline on the row of its
value, a legend, ticks with labels. The report's plots: the expected files, series named by what each run applied."""

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from hf_sparse.integrations.plot import (
    _AXIS,
    _BASELINE,
    _TEXT,
    ACCURACY_PLOT,
    FORMAT_COLORS,
    SERIES_COLORS,
    _nice_ticks,
    _report_series,
    _short_labels,
    accuracy_plot_png,
    density_plot_png,
    write_report_plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(data: bytes) -> np.ndarray:
    """Decode the subset of PNG the plot writes (8-bit RGB, no interlace, filter 0 rows), checking every chunk."""
    assert data[:8] == PNG_SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert len(body) == length, f"truncated {kind!r} chunk"
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind!r} chunk"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data), "trailing bytes after the last chunk"
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    assert chunks[-1][1] == b""
    width, height, depth, color_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color_type, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    assert width > 0 and height > 0
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride)
    assert (rows[:, 0] == 0).all(), "every row must use filter type 0"
    return rows[:, 1:].reshape(height, width, 3)


def render(tmp_path, densities, name="plot.png", **kwargs) -> np.ndarray:
    out = density_plot_png(densities, tmp_path / name, **kwargs)
    return decode_png(out.read_bytes())


def coloured(img: np.ndarray) -> np.ndarray:
    """Saturated pixels (bars and legend swatches); text, gridlines and background are grey."""
    spread = img.max(axis=2).astype(int) - img.min(axis=2).astype(int)
    return spread > 60


def bands(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive image rows that contain at least one True pixel, as (first, last + 1)."""
    rows = mask.any(axis=1)
    runs, start = [], None
    for y, on in enumerate(rows):
        if on and start is None:
            start = y
        elif not on and start is not None:
            runs.append((start, y))
            start = None
    if start is not None:
        runs.append((start, len(rows)))
    return runs


def bar_widths(img: np.ndarray) -> list[int]:
    mask = coloured(img)
    return [int(mask[y0:y1].sum(axis=1).max()) for y0, y1 in bands(mask)]


def test_valid_png_with_white_background(tmp_path):
    out = density_plot_png({"encoder.layer.0.query": 0.5}, str(tmp_path / "one.png"))
    assert isinstance(out, Path) and out == tmp_path / "one.png"
    img = decode_png(out.read_bytes())
    assert img.shape[1] == 900 and img.dtype == np.uint8
    white = (img == 255).all(axis=2)
    assert white[0].all() and white[-1].all() and white[:, 0].all() and white[:, -1].all()
    assert white.mean() > 0.8


def test_bar_lengths_follow_densities_in_order(tmp_path):
    img = render(tmp_path, {"m.full": 1.0, "m.quarter": 0.25, "m.half": 0.5})
    full, quarter, half = bar_widths(img)
    assert full > half > quarter > 0
    assert abs(full - 4 * quarter) <= 2 and abs(full - 2 * half) <= 2
    assert full >= 300  # the axis spans a good part of the 900 px image


def test_zero_density_draws_no_bar(tmp_path):
    img = render(tmp_path, {"m.a": 0.5, "m.b": 0.0, "m.c": 0.5})
    assert len(bands(coloured(img))) == 2


def test_labels_and_values_are_drawn_beside_each_bar(tmp_path):
    img = render(tmp_path, {"m.a": 0.75, "m.b": 0.1})
    mask = coloured(img)
    dark = (img < 100).all(axis=2)
    for y0, y1 in bands(mask):
        xs = np.nonzero(mask[y0:y1].any(axis=0))[0]
        assert dark[y0:y1, : xs[0]].sum() > 20, "no layer name left of the bar"
        assert dark[y0:y1, xs[-1] + 1 :].sum() > 20, "no percentage right of the bar"


def test_deterministic_bytes(tmp_path):
    densities = {f"bert.encoder.layer.{i}.attention.self.query": i / 11 for i in range(12)}
    formats = {name: ("csr", "bsr", "hybrid")[i % 3] for i, name in enumerate(densities)}
    a = density_plot_png(densities, tmp_path / "a.png", formats=formats).read_bytes()
    b = density_plot_png(dict(densities), tmp_path / "b.png", formats=dict(formats)).read_bytes()
    assert a == b
    c = density_plot_png({**densities, "bert.encoder.layer.0.attention.self.query": 0.9}, tmp_path / "c.png")
    assert c != a


def test_height_grows_with_layer_count_width_fixed(tmp_path):
    sizes = []
    for n in (1, 10, 200):
        img = render(tmp_path, {f"model.layers.{i}.mlp.down_proj": (i + 1) / n for i in range(n)}, f"{n}.png")
        assert len(bands(coloured(img))) == n
        sizes.append(img.shape[:2])
    assert [w for _, w in sizes] == [900, 900, 900]
    assert sizes[0][0] < sizes[1][0] < sizes[2][0]


def test_formats_colour_bars_and_add_a_legend(tmp_path):
    densities = {"enc.a": 0.8, "enc.b": 0.6, "enc.c": 0.4}
    img = render(tmp_path, densities, formats={"enc.a": "CSR", "enc.b": "bsr", "enc.c": "my_format"})
    found = bands(coloured(img))
    assert len(found) == 4  # one legend row above the three bars
    legend, bars = found[0], found[1:]
    widths = bar_widths(img)[1:]
    assert widths[0] > widths[1] > widths[2]

    def colours_in(y0, y1):
        pixels = img[y0:y1][coloured(img)[y0:y1]]
        return {tuple(int(c) for c in p) for p in pixels}

    assert colours_in(*bars[0]) == {FORMAT_COLORS["csr"]}
    assert colours_in(*bars[1]) == {FORMAT_COLORS["bsr"]}
    other = colours_in(*bars[2])
    assert len(other) == 1 and other.isdisjoint({FORMAT_COLORS["csr"], FORMAT_COLORS["bsr"]})
    assert colours_in(*legend) == {FORMAT_COLORS["csr"], FORMAT_COLORS["bsr"]} | other


def test_layers_missing_from_formats_are_drawn_in_grey(tmp_path):
    img = render(tmp_path, {"a": 0.5, "b": 0.5}, formats={"a": "nm"})
    assert len(bands(coloured(img))) == 2  # the legend row and the "nm" bar; the unknown bar is grey
    (nm_width,) = bar_widths(img)[1:]
    flat_grey = (img.min(axis=2) == img.max(axis=2)) & (img[..., 0] > 150) & (img[..., 0] < 215)
    grey_bar_rows = flat_grey.sum(axis=1) > 100  # not the gridlines (222) nor the 14 px legend swatch
    assert grey_bar_rows.any()
    assert abs(int(flat_grey[grey_bar_rows].sum(axis=1).max()) - nm_width) <= 8


@pytest.mark.parametrize("bad", [float("nan"), -0.01, 1.01, math.inf, "abc", None])
def test_bad_density_names_the_layer(tmp_path, bad):
    with pytest.raises(ValueError, match=r"bert\.pooler\.dense"):
        density_plot_png({"bert.encoder.layer.0.output.dense": 0.5, "bert.pooler.dense": bad}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_empty_mapping_raises(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        density_plot_png({}, tmp_path / "x.png")


def test_bounds_are_accepted(tmp_path):
    img = render(tmp_path, {"a": 0.0, "b": 1.0, "c": np.float32(0.5)})
    assert len(bands(coloured(img))) == 2


def test_short_labels():
    names = [f"bert.encoder.layer.{i}.attention.self.query" for i in range(3)]
    assert _short_labels(names) == [f"layer.{i}.attention.self.query" for i in range(3)]
    # no shared prefix, or a single name: names are kept
    assert _short_labels(["bert.pooler.dense", "classifier"]) == ["bert.pooler.dense", "classifier"]
    assert _short_labels(["bert.encoder.layer.0.attention"]) == ["bert.encoder.layer.0.attention"]
    # long names are cut in the middle with "..", keeping the start and (more of) the end
    long_name = "layer.0." + "very_long_module_name_" * 4 + "tail"
    (label,) = _short_labels([long_name])
    assert len(label) == 32 and ".." in label
    assert label.startswith("layer.0.") and label.endswith("_tail")


def test_long_title_and_unusual_characters(tmp_path):
    img = render(tmp_path, {"naïve.layer→0": 0.5, "x" * 300: 0.25}, title="T" * 500)
    assert img.shape[1] == 900
    assert len(bands(coloured(img))) == 2


# --------------------------------------------------------------------------------------------------------------------
# accuracy_plot_png
# --------------------------------------------------------------------------------------------------------------------
def chart(tmp_path, series, name="chart.png", **kwargs) -> np.ndarray:
    out = accuracy_plot_png(series, tmp_path / name, **kwargs)
    assert out == tmp_path / name
    return decode_png(out.read_bytes())


def exactly(img: np.ndarray, color) -> np.ndarray:
    return (img == np.array(color, dtype=np.uint8)).all(axis=2)


def marker_centres(img: np.ndarray, color) -> list[tuple[float, float]]:
    """Centres (x, y) of the marker blobs of ``color``, top to bottom then left to right. A marker is the only thing
    of a series with a 5x5 block of its colour (its lines are 2 px wide), so such blocks are grouped into blobs."""
    mask = exactly(img, color)
    h, w = mask.shape
    core = np.ones((h - 4, w - 4), dtype=bool)
    for dy in range(5):
        for dx in range(5):
            core &= mask[dy : dy + h - 4, dx : dx + w - 4]
    ys, xs = np.nonzero(core)
    blobs: list[list[tuple[int, int]]] = []
    for x, y in zip(xs.tolist(), ys.tolist()):
        for blob in blobs:
            if any(abs(x - bx) <= 1 and abs(y - by) <= 1 for bx, by in blob):
                blob.append((x, y))
                break
        else:
            blobs.append([(x, y)])
    centres = [(float(np.mean([p[0] for p in b])) + 2, float(np.mean([p[1] for p in b])) + 2) for b in blobs]
    return sorted(centres, key=lambda c: (round(c[1]), c[0]))


def axes(img: np.ndarray) -> tuple[int, int]:
    """(column of the y axis, row of the x axis): the longest runs of axis-coloured pixels."""
    axis = exactly(img, _AXIS)
    return int(axis.sum(axis=0).argmax()), int(axis.sum(axis=1).argmax())


def test_accuracy_chart_is_a_valid_png_of_bounded_size(tmp_path):
    img = chart(tmp_path, {"pruned": [(0.5, 0.83), (0.9, 0.76)]}, baseline=0.8384, title="Accuracy")
    height, width = img.shape[:2]
    assert width == 900 and 450 <= height <= 650
    white = (img == 255).all(axis=2)
    assert white[0].all() and white[-1].all() and white[:, 0].all() and white[:, -1].all()
    assert white.mean() > 0.7


def test_markers_sit_where_the_data_put_them(tmp_path):
    img = chart(tmp_path, {"a": [(0.0, 0.5), (0.5, 0.7), (1.0, 0.9)]})
    legend, *points = marker_centres(img, SERIES_COLORS[0])
    assert len(points) == 3
    assert legend[1] < min(y for _, y in points) - 20  # the legend's sample is above the plot
    points.sort()
    (x0, y0), (x1, y1), (x2, y2) = points
    assert x0 < x1 < x2 and y0 > y1 > y2  # higher y is further up
    assert abs((x1 - x0) - (x2 - x1)) <= 1 and abs((y0 - y1) - (y1 - y2)) <= 1  # equal steps of the data
    assert x2 - x0 > 500 and y0 - y2 > 300  # the points span most of the plot
    # The points are joined: the series' colour runs between the markers along the line.
    mask = exactly(img, SERIES_COLORS[0])
    for (xa, ya), (xb, yb) in ((points[0], points[1]), (points[1], points[2])):
        for t in (0.3, 0.5, 0.7):
            x, y = round(xa + t * (xb - xa)), round(ya + t * (yb - ya))
            assert mask[y - 2 : y + 3, x - 2 : x + 3].any(), f"no line at ({x}, {y})"


def test_points_are_joined_in_order_of_x(tmp_path):
    ordered = accuracy_plot_png({"a": [(0.1, 0.6), (0.5, 0.9), (0.9, 0.7)]}, tmp_path / "a.png").read_bytes()
    shuffled = accuracy_plot_png({"a": [(0.9, 0.7), (0.1, 0.6), (0.5, 0.9)]}, tmp_path / "b.png").read_bytes()
    assert ordered == shuffled
    moved = accuracy_plot_png({"a": [(0.1, 0.6), (0.5, 0.91), (0.9, 0.7)]}, tmp_path / "c.png").read_bytes()
    assert moved != ordered


def test_baseline_is_dashed_on_the_row_of_its_value_and_labelled(tmp_path):
    img = chart(tmp_path, {"a": [(0.2, 0.7), (0.8, 0.9)]}, baseline=0.7)
    (_, legend_y), (_, low_y), (_, high_y) = sorted(marker_centres(img, SERIES_COLORS[0]), key=lambda c: c[1])
    dashed = exactly(img, _BASELINE)
    rows = np.nonzero(dashed.sum(axis=1) > 200)[0]
    assert len(rows) == 2 and rows[1] == rows[0] + 1  # one 2 px line
    assert abs(rows.mean() - high_y) <= 1.0  # on the row of the point whose y equals the baseline
    r0, r1 = int(rows[0]), int(rows[1])
    # Its label ("dense 0.7000", 12 characters of 12 px) is right of the plot, in the baseline's colour, around the
    # same row: the only baseline-coloured pixels off the line's two rows.
    off = dashed.copy()
    off[r0 : r1 + 1] = False
    ys, xs = np.nonzero(off)
    assert ys.min() >= r0 - 8 and ys.max() <= r1 + 11
    assert abs((xs.max() - xs.min() + 1) - (12 * 12 - 2)) <= 4
    label_x0 = int(xs.min())
    # The line is dashed, from the y axis to just before the label.
    y_axis, _ = axes(img)
    line = dashed[r0, : label_x0 - 1]
    on = np.nonzero(line)[0]
    assert y_axis < on.min() <= y_axis + 3 and label_x0 - 30 < on.max() < label_x0
    starts = np.count_nonzero(line[1:] & ~line[:-1])
    assert starts > 20 and line[on.min() : on.max()].mean() < 0.8, "the baseline is not dashed"


def test_baseline_outside_the_data_widens_the_y_axis(tmp_path):
    img = chart(tmp_path, {"a": [(0.2, 0.50), (0.8, 0.55)]}, baseline=0.9)
    points = marker_centres(img, SERIES_COLORS[0])[1:]
    rows = np.nonzero(exactly(img, _BASELINE).sum(axis=1) > 200)[0]
    assert len(rows) == 2
    _, x_axis = axes(img)
    assert rows.max() < min(y for _, y in points) - 100 and x_axis > max(y for _, y in points)
    assert not exactly(chart(tmp_path, {"a": [(0.2, 0.5)]}, "none.png"), _BASELINE).any()


def test_each_series_has_its_colour_in_the_legend_in_order(tmp_path):
    series = {"pruned": [(0.5, 0.8), (0.7, 0.78)], "pruned + distilled": [(0.5, 0.82)], "int8 QAT": [(0.0, 0.83)]}
    img = chart(tmp_path, series)
    legend_rows = [c for colour in SERIES_COLORS[:3] for c in marker_centres(img, colour)[:1]]
    assert len(legend_rows) == 3
    xs = [x for x, _ in legend_rows]
    assert xs == sorted(xs) and len({round(y) for _, y in legend_rows}) == 1  # one legend line, in series order
    # each series' points are drawn in its colour; no colour beyond the three
    assert [len(marker_centres(img, colour)) - 1 for colour in SERIES_COLORS[:4]] == [2, 1, 1, -1]
    # the legend names are written right of each sample
    text = exactly(img, _TEXT)
    for x, y in legend_rows:
        assert text[round(y) - 7 : round(y) + 8, round(x) + 16 : round(x) + 60].sum() > 30


def test_single_point_series_is_a_marker_without_line(tmp_path):
    img = chart(tmp_path, {"one": [(0.3, 0.8)]})
    legend, point = marker_centres(img, SERIES_COLORS[0])
    mask = exactly(img, SERIES_COLORS[0])
    below_legend = mask[round(legend[1]) + 12 :]
    assert 60 <= below_legend.sum() <= 130  # a filled marker of radius 5, nothing else
    ys, xs = np.nonzero(below_legend)
    assert xs.max() - xs.min() <= 11 and ys.max() - ys.min() <= 11


def test_ticks_carry_labels_on_both_axes(tmp_path):
    img = chart(tmp_path, {"a": [(0.5, 0.80), (0.9, 0.76)]}, baseline=0.8384)
    y_axis, x_axis = axes(img)
    ticks = exactly(img, _AXIS)
    text = exactly(img, _TEXT)
    x_ticks = np.nonzero(ticks[x_axis + 2])[0]
    y_ticks = np.nonzero(ticks[:, y_axis - 3])[0]
    assert 3 <= len(x_ticks) <= 8 and 3 <= len(y_ticks) <= 8
    for x in x_ticks:  # a label ("50%") under each x tick
        assert text[x_axis + 8 : x_axis + 8 + 18, x - 10 : x + 10].sum() > 20
    for y in y_ticks:  # a label ("0.80") left of each y tick
        assert text[y - 8 : y + 9, y_axis - 60 : y_axis - 6].sum() > 20
    # and the axis titles: "sparsity" under the tick labels, "test accuracy" upwards left of them
    assert text[x_axis + 34 :, y_axis:].sum() > 50
    assert text[:, : y_axis - 60].sum() > 80


def test_nice_ticks():
    assert _nice_ticks(0.5, 0.9, unit=True) == ([0.5, 0.6, 0.7, 0.8, 0.9], 1)
    assert _nice_ticks(0.76, 0.8384, unit=True) == ([0.76, 0.78, 0.8, 0.82, 0.84], 2)
    assert _nice_ticks(0.0, 0.9, unit=True) == ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 1)
    assert _nice_ticks(0.1, 0.2, unit=True) == ([0.1, 0.12, 0.14, 0.16, 0.18, 0.2], 2)
    assert _nice_ticks(0.0, 0.12, unit=True) == ([0.0, 0.025, 0.05, 0.075, 0.1, 0.125], 3)
    assert _nice_ticks(3.0, 97.0, unit=False) == ([0.0, 20.0, 40.0, 60.0, 80.0, 100.0], 0)
    # a single value is widened, but never beyond [0, 1] when the data lie in it
    for value in (0.0, 0.85, 1.0):
        ticks, _ = _nice_ticks(value, value, unit=True)
        assert len(ticks) >= 3 and ticks[0] <= value <= ticks[-1] and 0.0 <= ticks[0] and ticks[-1] <= 1.0
    ticks, _ = _nice_ticks(-2.0, -2.0, unit=False)
    assert ticks[0] < -2.0 < ticks[-1]


def test_long_names_and_many_series_still_fit(tmp_path):
    series = {f"series number {i} with a rather long descriptive name": [(i / 12, 0.5 + i / 40)] for i in range(12)}
    img = chart(tmp_path, series, title="T" * 300, x_label="x" * 200, y_label="y" * 200)
    assert img.shape[1] == 900 and img.shape[0] < 1000
    assert all(len(marker_centres(img, colour)) >= 2 for colour in SERIES_COLORS)  # legend + point, every colour


@pytest.mark.parametrize(
    "series, baseline, error, match",
    [
        ({}, None, ValueError, "empty"),
        ({"a": []}, None, ValueError, "'a' has no points"),
        ({"a": [(0.1, 0.5)], "b": [(0.2, math.nan)]}, None, ValueError, r"'b', point 0: y must be finite"),
        ({"a": [(0.1, 0.5), (math.inf, 0.5)]}, None, ValueError, r"'a', point 1: x must be finite"),
        ({"a": [(0.1, "high")]}, None, ValueError, r"'a', point 0: y is not a number"),
        ({"a": [(0.1, 0.5, 0.3)]}, None, ValueError, r"'a', point 0: expected an \(x, y\) pair"),
        ({"a": [0.5]}, None, ValueError, "expected an"),
        ({"a": [(0.1, 0.5)]}, math.nan, ValueError, "baseline must be finite"),
        ({"a": [(0.1, 0.5)]}, "dense", ValueError, "baseline is not a number"),
        ([("a", [(0.1, 0.5)])], None, TypeError, "must be a mapping"),
        ({"a": "0.1,0.5"}, None, TypeError, "'a' must be a sequence"),
    ],
)
def test_bad_series_raise_before_writing(tmp_path, series, baseline, error, match):
    with pytest.raises(error, match=match):
        accuracy_plot_png(series, tmp_path / "x.png", baseline=baseline)
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------------------------------
# write_report_plots
# --------------------------------------------------------------------------------------------------------------------
def synthetic_report() -> dict:
    layers = {"distilbert.transformer.layer.0.ffn.lin1": 0.75, "distilbert.transformer.layer.0.ffn.lin2": 0.25}
    return {
        "model": "distilbert-base-uncased",
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
    images = {name: decode_png((folder / file).read_bytes()) for name, file in written.items()}
    assert all(img.shape[1] == 900 for img in images.values())

    accuracy = images[ACCURACY_PLOT]
    # three series (pruned, pruned + distilled, int8 QAT): a legend sample and one point each, and the baseline
    assert [len(marker_centres(accuracy, c)) for c in SERIES_COLORS[:4]] == [2, 2, 2, 0]
    assert (exactly(accuracy, _BASELINE).sum(axis=1) > 200).sum() == 2

    # density = 1 - sparsity: lin1 (sparsity 0.75) has a third of lin2's bar; the kd run's bars are coloured csr
    lin1, lin2 = bar_widths(images["density-pruned-50"])
    assert abs(3 * lin1 - lin2) <= 3
    kd_mask = coloured(images["density-pruned-50-kd"])
    assert {tuple(int(c) for c in p) for p in images["density-pruned-50-kd"][kd_mask]} == {FORMAT_COLORS["csr"]}


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
    # no dense baseline: the accuracy chart is drawn without the dashed line
    report = {"runs": [{"name": "a", "sparsity": 0.5, "test_accuracy": 0.8}]}
    assert write_report_plots(report, tmp_path / "nobase") == {ACCURACY_PLOT: "accuracy_vs_sparsity.png"}
    img = decode_png((tmp_path / "nobase" / "accuracy_vs_sparsity.png").read_bytes())
    assert not exactly(img, _BASELINE).any()


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
