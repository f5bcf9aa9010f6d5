"""The per-layer density chart: a valid PNG (checked by a small stdlib decoder below), bars in order with lengths
proportional to the density, coloured by format with a legend, deterministic bytes, and clear errors."""

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from hf_sparse.integrations.plot import FORMAT_COLORS, _short_labels, density_plot_png

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
