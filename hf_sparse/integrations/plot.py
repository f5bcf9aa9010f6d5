"""Report charts written as PNGs, with no plotting library.

``density_plot_png`` draws one horizontal bar per layer (its stored fraction); ``accuracy_plot_png`` draws series of
``(x, y)`` points joined by lines (test accuracy against sparsity) with a dashed baseline; ``write_report_plots``
draws both for a ``hf-sparse compress`` report. The pictures are rasterized into a numpy ``uint8`` RGB array (a
tiny rasterizer with an embedded 5x9 bitmap font drawn at 2x) and encoded as PNG here with ``zlib`` and ``struct``
(8-bit RGB, no interlacing, filter type 0 on every row). Only the standard library and numpy are used, so a report
can carry a picture on machines without matplotlib or Pillow, and the same input always gives the same bytes.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import quote
from ..resilience import atomic_write_bytes, confined_path

__all__ = [
    "ACCURACY_PLOT",
    "FORMAT_COLORS",
    "SERIES_COLORS",
    "accuracy_plot_png",
    "density_plot_png",
    "write_report_plots",
]

# --------------------------------------------------------------------------------------------------------------------
# Font: printable ASCII (0x20-0x7E). Each glyph is 9 rows of 5 pixels; a row is one byte written as two hex digits, its
# bit 4 the leftmost pixel. Capitals and digits use rows 0-6 (row 6 is the baseline), lower-case letters have their
# x-height at rows 2-6, and descenders (g j p q y , ;) and the underscore reach into rows 7-8. Glyph i of the string
# below is chr(0x20 + i); the comment on each line lists the characters it holds.
# --------------------------------------------------------------------------------------------------------------------
_FONT_HEX = (
    "0000000000000000000404040404000400000a0a000000000000000a0a1f0a1f0a0a0000040f140e051e040000"  # ' !"#$'
    "1819020408130300000c12140815120d0000040408000000000000020408080804020000080402020204080000"  # "%&'()"
    "0004150e15040000000004041f040400000000000000000c0408000000001f000000000000000000000c0c0000"  # '*+,-.'
    "0001020408100000000e11131519110e0000040c040404040e00000e11010204081f00001f02040201110e0000"  # '/0123'
    "02060a121f020200001f101e0101110e00000608101e11110e00001f01020408080800000e11110e11110e0000"  # '45678'
    "0e11110f01020c0000000c0c000c0c000000000c0c000c0408000002040810080402000000001f001f00000000"  # '9:;<='
    "0804020102040800000e11010204000400000e11010d15150e00000e11111f11111100001e11111e11111e0000"  # '>?@AB'
    "0e11101010110e00001c12111111121c00001f10101e10101f00001f10101e10101000000e11101711110f0000"  # 'CDEFG'
    "1111111f11111100000e04040404040e00000702020202120c00001112141814121100001010101010101f0000"  # 'HIJKL'
    "111b151511111100001111191513111100000e11111111110e00001e11111e10101000000e11111115120d0000"  # 'MNOPQ'
    "1e11111e14121100000f10100e01011e00001f04040404040400001111111111110e000011111111110a040000"  # 'RSTUV'
    "1111111515150a000011110a040a1111000011110a0404040400001f01020408101f00000e08080808080e0000"  # 'WXYZ['
    "0010080402010000000e02020202020e0000040a11000000000000000000000000001f00080400000000000000"  # '\\]^_`'
    "00000e010f110f00001010161911111e000000000e1010110e000001010d1311110f000000000e111f100e0000"  # 'abcde'
    "0609081c080808000000000f1111110f010e10101619111111000004000c0404040e000002000602020202120c"  # 'fghij'
    "1010121418141200000c04040404040e000000001a15151515000000001619111111000000000e1111110e0000"  # 'klmno'
    "00001e1111111e101000000f1111110f010100001619101010000000000f100e011e000008081c080809060000"  # 'pqrst'
    "0000111111130d000000001111110a0400000000111115150a00000000110a040a1100000000111111110f010e"  # 'uvwxy'
    "00001f0204081f0000030404180404030000040404040404040000180404030404180000000008150200000000"  # 'z{|}~'
)

_GLYPH_W, _GLYPH_H = 5, 9
_SCALE = 2  # every font pixel is drawn as a 2x2 block
_ADVANCE = (_GLYPH_W + 1) * _SCALE  # 12 px per character, one blank font column between characters
_TEXT_H = _GLYPH_H * _SCALE  # 18 px: 14 px cap height + 4 px of descender


def _build_glyphs() -> dict[str, np.ndarray]:
    rows_per_glyph = 2 * _GLYPH_H
    count = len(_FONT_HEX) // rows_per_glyph
    bits = 1 << np.arange(_GLYPH_W - 1, -1, -1)
    glyphs = {}
    for i in range(count):
        rows = np.frombuffer(bytes.fromhex(_FONT_HEX[i * rows_per_glyph : (i + 1) * rows_per_glyph]), dtype=np.uint8)
        mask = (rows[:, None] & bits[None, :]) != 0
        glyphs[chr(0x20 + i)] = np.repeat(np.repeat(mask, _SCALE, axis=0), _SCALE, axis=1)
    return glyphs


_GLYPHS = _build_glyphs()

# --------------------------------------------------------------------------------------------------------------------
# Layout (pixels). The width is fixed; the height grows by _ROW_H per layer.
# --------------------------------------------------------------------------------------------------------------------
_WIDTH = 900
_MARGIN = 10
_LABEL_CHARS = 32  # longer (shortened) layer names are cut in the middle with ".."
_VALUE_CHARS = 6  # "100.0%"
_PLOT_X0 = _MARGIN + _LABEL_CHARS * _ADVANCE + 8
_PLOT_W = 408  # a multiple of 4, so the 25% gridlines fall on whole pixels
_PLOT_X1 = _PLOT_X0 + _PLOT_W
_ROW_H = 24
_BAR_TOP, _BAR_H = 2, 16  # bar position inside its row
_TEXT_TOP = 3  # cap height of the labels is centred on the bar
_PLOT_PAD = 4  # space between the plot frame and the first/last bar
_LEGEND_ROW_H = 22
_SWATCH = 14
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)

_WHITE = (255, 255, 255)
_TEXT = (30, 30, 30)
_VALUE_TEXT = (70, 70, 70)
_GRID = (222, 222, 222)
_AXIS = (90, 90, 90)
_DEFAULT_BAR = (70, 130, 180)
_UNKNOWN_FORMAT = (190, 190, 190)

#: Bar colour per storage format when ``formats`` is given (other format names take colours from ``_EXTRA_COLORS``).
FORMAT_COLORS: dict[str, tuple[int, int, int]] = {
    "csr": (31, 119, 180),
    "bsr": (255, 127, 14),
    "hybrid": (44, 160, 44),
    "nm": (148, 103, 189),
    "dense": (127, 127, 127),
}
_EXTRA_COLORS = ((214, 39, 40), (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207))

assert _PLOT_X1 + 6 + _VALUE_CHARS * _ADVANCE <= _WIDTH - _MARGIN + _SCALE, "the value of a full bar must fit"


# --------------------------------------------------------------------------------------------------------------------
# Rasterizer
# --------------------------------------------------------------------------------------------------------------------
def _fill(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
    """Fill the rectangle ``[x0, x1) x [y0, y1)``, clipped to the image."""
    h, w = img.shape[:2]
    x0, x1 = max(x0, 0), min(x1, w)
    y0, y1 = max(y0, 0), min(y1, h)
    if x0 < x1 and y0 < y1:
        img[y0:y1, x0:x1] = color


def _text_width(text: str) -> int:
    return max(len(text) * _ADVANCE - _SCALE, 0)


def _draw_text(img: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """Draw ``text`` with its top-left corner at ``(x, y)``; characters outside printable ASCII are drawn as ``?``."""
    h, w = img.shape[:2]
    gh, gw = _TEXT_H, _GLYPH_W * _SCALE
    for i, ch in enumerate(text):
        glyph = _GLYPHS.get(ch, _GLYPHS["?"])
        gx = x + i * _ADVANCE
        # Clip the glyph to the image.
        cx0, cy0 = max(gx, 0), max(y, 0)
        cx1, cy1 = min(gx + gw, w), min(y + gh, h)
        if cx0 >= cx1 or cy0 >= cy1:
            continue
        mask = glyph[cy0 - y : cy1 - y, cx0 - gx : cx1 - gx]
        img[cy0:cy1, cx0:cx1][mask] = color


def _truncate(text: str, max_chars: int, *, keep_end: bool = True) -> str:
    """Cut ``text`` to ``max_chars`` characters with ``..``: in the middle (keeping more of the end) or at the end."""
    if len(text) <= max_chars:
        return text
    room = max_chars - 2
    if not keep_end:
        return text[:room] + ".."
    head = room // 3
    return text[:head] + ".." + text[len(text) - (room - head) :]


def _short_labels(names: Sequence[str], max_chars: int = _LABEL_CHARS) -> list[str]:
    """Bar labels: the dotted prefix common to all names is removed except its last component, then long labels are
    cut in the middle (``bert.encoder.layer.0.attention.self.query`` -> ``layer.0.attention.self.query`` when every
    name starts with ``bert.encoder.layer.``). A single name is kept whole (up to the cut)."""
    parts = [name.split(".") for name in names]
    strip = 0
    if len(parts) > 1:
        shortest = min(len(p) for p in parts)
        common = 0
        while common < shortest - 1 and all(p[common] == parts[0][common] for p in parts):
            common += 1
        strip = max(common - 1, 0)
    return [_truncate(".".join(p[strip:]), max_chars) for p in parts]


# --------------------------------------------------------------------------------------------------------------------
# PNG encoder
# --------------------------------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _encode_png(img: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` ``uint8`` array as an 8-bit RGB PNG (no interlacing, filter type 0 on every row)."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {img.shape} {img.dtype}.")
    height, width = img.shape[:2]
    raw = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # column 0: the filter type byte (0, "None")
    raw[:, 1:] = img.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # bit depth 8, colour type 2 (RGB)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + _png_chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------------------------------
# The chart
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
        if fmt is None:
            key, color = "unknown", _UNKNOWN_FORMAT
        else:
            key = str(fmt).strip().lower() or "unknown"
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


def _legend_lines(entries: Sequence[tuple[str, tuple[int, int, int]]]) -> list[list[tuple[int, str, tuple]]]:
    """Lay the legend entries out left to right, wrapping to a new line at the image's right margin."""
    lines: list[list[tuple[int, str, tuple]]] = []
    x = _MARGIN
    for label, color in entries:
        label = _truncate(label, 20, keep_end=False)
        width = _SWATCH + 6 + _text_width(label)
        if not lines or (x > _MARGIN and x + width > _WIDTH - _MARGIN):
            lines.append([])
            x = _MARGIN
        lines[-1].append((x, label, color))
        x += width + 18
    return lines


def density_plot_png(
    densities: Mapping[str, float],
    path: str | Path,
    *,
    title: str = "Stored fraction per layer",
    formats: Mapping[str, str] | None = None,
) -> Path:
    """Write a horizontal bar chart of the stored fraction (density) of each layer as a PNG file.

    One bar per layer, top to bottom in the mapping's order, its length the density on an x axis from 0% to 100%
    (gridlines and tick labels at 0, 25, 50, 75 and 100%, above and below the bars). Each bar is labelled on the
    left with its layer name and on the right with its value (``"37.5%"``). The dotted prefix that all names share
    is dropped except for its last component (``bert.encoder.layer.0.attention.self.query`` is shown as
    ``layer.0.attention.self.query`` when every name starts with ``bert.encoder.layer.``), and names longer than
    32 characters are cut in the middle with ``..``. The image is 900 pixels wide; its height grows with the number
    of layers (24 pixels per layer). Text uses an embedded 5x9 bitmap font drawn at 2x; characters outside printable
    ASCII are drawn as ``?``. The same arguments always give the same bytes.

    Args:
        densities: Layer name -> stored fraction in ``[0, 1]`` (e.g. ``nnz / numel`` of its weight).
        path: Where to write the PNG (the folder must exist; an existing file is replaced).
        title: Text drawn at the top (cut with ``..`` if wider than the image).
        formats: Optional layer name -> storage format (``"csr"``, ``"bsr"``, ``"hybrid"``, ``"nm"``, ``"dense"``,
            or any other name). Bars are then coloured by format (see ``FORMAT_COLORS``) and a legend is drawn under
            the title; layers missing from ``formats`` are drawn in light grey as ``unknown``. Format names are
            compared lower-cased.

    Returns:
        The path of the written file, as a ``Path``.

    Raises:
        ValueError: ``densities`` is empty, or a density is not a number, is NaN or lies outside ``[0, 1]`` (the
            message names the layer).
        TypeError: ``densities`` or ``formats`` is not a mapping.
    """
    names, values = _checked_densities(densities)
    colors, legend = _format_colors(names, formats)
    labels = _short_labels(names)
    legend_lines = _legend_lines(legend)

    # Vertical layout.
    title_y = _MARGIN
    y = title_y + _TEXT_H + 8
    legend_y = y
    if legend_lines:
        y += len(legend_lines) * _LEGEND_ROW_H + 4
    top_ticks_y = y
    plot_top = top_ticks_y + _TEXT_H + 6
    rows_top = plot_top + _PLOT_PAD
    plot_bottom = rows_top + len(names) * _ROW_H + _PLOT_PAD
    bottom_ticks_y = plot_bottom + 6
    height = bottom_ticks_y + _TEXT_H + _MARGIN

    img = np.empty((height, _WIDTH, 3), dtype=np.uint8)
    img[...] = _WHITE

    _draw_text(
        img, _truncate(title, (_WIDTH - 2 * _MARGIN + _SCALE) // _ADVANCE, keep_end=False), _MARGIN, title_y, (0, 0, 0)
    )
    for i, line in enumerate(legend_lines):
        ly = legend_y + i * _LEGEND_ROW_H
        for x, label, color in line:
            _fill(img, x, ly + 2, x + _SWATCH, ly + 2 + _SWATCH, color)
            _draw_text(img, label, x + _SWATCH + 6, ly + 2, _TEXT)

    # Gridlines, frame and ticks.
    tick_xs = [_PLOT_X0 + round(t * _PLOT_W) for t in _TICKS]
    for t, x in zip(_TICKS, tick_xs):
        _fill(img, x, plot_top, x + 1, plot_bottom, _GRID if 0.0 < t else _AXIS)
        _fill(img, x, plot_top - 4, x + 1, plot_top, _AXIS)
        _fill(img, x, plot_bottom, x + 1, plot_bottom + 4, _AXIS)
        label = f"{round(t * 100)}%"
        lx = x - _text_width(label) // 2
        _draw_text(img, label, lx, top_ticks_y, _TEXT)
        _draw_text(img, label, lx, bottom_ticks_y, _TEXT)
    _fill(img, _PLOT_X0, plot_top, _PLOT_X1 + 1, plot_top + 1, _GRID)
    _fill(img, _PLOT_X0, plot_bottom - 1, _PLOT_X1 + 1, plot_bottom, _AXIS)

    # Bars, names and values.
    for i, (label, value, color) in enumerate(zip(labels, values, colors)):
        row_y = rows_top + i * _ROW_H
        length = round(value * _PLOT_W)
        _fill(img, _PLOT_X0 + 1, row_y + _BAR_TOP, _PLOT_X0 + 1 + length, row_y + _BAR_TOP + _BAR_H, color)
        _draw_text(img, label, _PLOT_X0 - 8 - _text_width(label), row_y + _TEXT_TOP, _TEXT)
        _draw_text(img, f"{value * 100:.1f}%", _PLOT_X0 + 1 + length + 6, row_y + _TEXT_TOP, _VALUE_TEXT)

    out = Path(path)
    atomic_write_bytes(out, _encode_png(img))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Accuracy chart: series of (x, y) points on nice axes, with an optional dashed baseline.
# --------------------------------------------------------------------------------------------------------------------
_CHART_PLOT_H = 400  # height of the plot frame; the image height adds the title, legend and x axis text
_CHART_PAD = 14  # the outermost ticks sit this far inside the frame, so edge markers are drawn whole
_MARKER_R = 5
_LINE_W = 2
_DASH, _GAP = 10, 6
_BASELINE = (110, 110, 110)  # darker than the gridlines, lighter than the axes and the text
_LEGEND_CHARS = 40
_LEGEND_LINE_W = 28  # the legend's sample: a short line with the series' marker in its middle
_TICK_TARGET = 6  # at most about this many ticks per axis

#: Colour per series, in order (the first series blue, then orange, green ...); the list repeats after nine series,
#: with a different marker shape, so two series never share both colour and shape until the 37th.
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
_MARKERS = ("circle", "square", "diamond", "triangle")


def _marker_mask(shape: str, r: int) -> np.ndarray:
    """A ``(2r+1, 2r+1)`` boolean stamp of a marker centred on its middle pixel."""
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    if shape == "circle":
        return dx * dx + dy * dy <= r * r + r  # + r: rounder than the strict disc at these sizes
    if shape == "square":
        return (np.abs(dx) <= r - 1) & (np.abs(dy) <= r - 1)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r + 1
    # An upward triangle: its width grows linearly from the apex (top row) to the base (bottom row).
    return np.abs(dx) <= (dy + r) * (r + 0.5) / (2 * r)


def _stamp(img: np.ndarray, mask: np.ndarray, cx: int, cy: int, color: tuple[int, int, int]) -> None:
    """Set the pixels of ``mask`` (centred on ``(cx, cy)``) to ``color``, clipped to the image."""
    h, w = img.shape[:2]
    r = mask.shape[0] // 2
    x0, y0 = cx - r, cy - r
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + mask.shape[1], w), min(y0 + mask.shape[0], h)
    if cx0 < cx1 and cy0 < cy1:
        img[cy0:cy1, cx0:cx1][mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]] = color


def _draw_line(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
    """A ``_LINE_W`` px wide line: one sample per pixel along the longer axis, each a small square, clipped."""
    n = max(abs(x1 - x0), abs(y1 - y0)) + 1
    t = np.linspace(0.0, 1.0, n)
    xs = np.rint(x0 + t * (x1 - x0)).astype(int)
    ys = np.rint(y0 + t * (y1 - y0)).astype(int)
    h, w = img.shape[:2]
    for ox in range(_LINE_W):
        for oy in range(_LINE_W):
            px, py = xs + ox - _LINE_W // 2, ys + oy - _LINE_W // 2
            keep = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            img[py[keep], px[keep]] = color


def _text_mask(text: str) -> np.ndarray:
    """The pixels ``_draw_text`` would set for ``text``, as a ``(_TEXT_H, width)`` boolean array."""
    mask = np.zeros((_TEXT_H, max(_text_width(text), 1), 3), dtype=np.uint8)
    _draw_text(mask, text, 0, 0, (1, 1, 1))
    return mask[..., 0].astype(bool)


def _nice_ticks(lo: float, hi: float, *, unit: bool) -> tuple[list[float], int]:
    """Ticks at multiples of a step of 1, 2, 2.5 or 5 times a power of ten that span ``[lo, hi]``, and the number of
    decimals that writes every tick exactly.

    A zero-width range is widened first (by 5% of the value, at least 0.01). With ``unit`` (all the data lie in
    ``[0, 1]``) the widened range is kept inside ``[0, 1]``, so an accuracy or a sparsity never gets a tick below 0
    or above 1: every such step divides 1.
    """
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        half = max(abs(lo) * 0.05, 0.01)
        lo, hi = lo - half, hi + half
        if unit:
            lo, hi = max(lo, 0.0), min(hi, 1.0)
    raw = (hi - lo) / (_TICK_TARGET - 1)
    exponent = math.floor(math.log10(raw))
    for mantissa in (1.0, 2.0, 2.5, 5.0, 10.0):
        step = mantissa * 10.0**exponent
        if step >= raw * (1 - 1e-9):
            break
    if mantissa == 10.0:
        mantissa, exponent = 1.0, exponent + 1
    k0 = math.floor(lo / step + 1e-9)
    k1 = math.ceil(hi / step - 1e-9)
    ticks = [round(k * step, 12) + 0.0 for k in range(k0, k1 + 1)]  # + 0.0: no "-0.0"
    decimals = max(0, -exponent) + (1 if mantissa == 2.5 else 0)
    return ticks, decimals


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


def _series_legend_lines(labels: Sequence[str], width: int) -> list[list[tuple[int, int, str]]]:
    """Legend entries (x, series index, label), left to right, wrapping at the image's right margin."""
    lines: list[list[tuple[int, int, str]]] = []
    x = _MARGIN
    for i, label in enumerate(labels):
        label = _truncate(label, _LEGEND_CHARS, keep_end=False)
        entry = _LEGEND_LINE_W + 8 + _text_width(label)
        if not lines or (x > _MARGIN and x + entry > width - _MARGIN):
            lines.append([])
            x = _MARGIN
        lines[-1].append((x, i, label))
        x += entry + 24
    return lines


def accuracy_plot_png(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    baseline: float | None = None,
    x_label: str = "sparsity",
    y_label: str = "test accuracy",
    title: str | None = None,
) -> Path:
    """Write a line chart of one or more series of ``(x, y)`` points (e.g. test accuracy against sparsity) as a PNG.

    Each series is drawn in its own colour (``SERIES_COLORS``, in the mapping's order) and marker shape (circle,
    square, diamond, triangle), its points joined by straight lines in order of ``x``; a series of one point is a lone
    marker. A legend under the title shows every series' line and marker with its name (cut at 40 characters). The x
    axis is labelled in percent (``x = 0.5`` is ``50%``), the y axis with plain numbers; both get ticks at a step of
    1, 2, 2.5 or 5 times a power of ten spanning the data (and the baseline), with light gridlines. When every value
    of an axis lies in ``[0, 1]`` no tick falls outside it. ``baseline`` adds a horizontal dashed line, labelled
    ``"dense 0.8384"`` to the right of the plot. The image is 900 pixels wide and about 560 high (more with a long
    legend). The same arguments always give the same bytes.

    Args:
        series: Series name -> ``(x, y)`` points (any iterable of pairs of finite numbers).
        path: Where to write the PNG (the folder must exist; an existing file is replaced).
        baseline: The dense model's ``y`` (e.g. its test accuracy), or None for no baseline line.
        x_label: Text under the x axis.
        y_label: Text along the y axis (drawn upwards).
        title: Text at the top, or None for no title row.

    Returns:
        The path of the written file, as a ``Path``.

    Raises:
        ValueError: ``series`` is empty, a series has no points, a point is not a pair, or a coordinate or the
            baseline is not a finite number (the message names the series and the point's index).
        TypeError: ``series`` is not a mapping, or a series is not an iterable of points.
    """
    checked = _checked_series(series)
    if baseline is not None:
        try:
            baseline = float(baseline)
        except (TypeError, ValueError):
            raise ValueError(f"baseline is not a number: {quote(baseline)}.") from None
        if not math.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {quote(baseline)}.")
    xs = [x for _, points in checked for x, _ in points]
    ys = [y for _, points in checked for _, y in points] + ([baseline] if baseline is not None else [])
    x_ticks, x_dec = _nice_ticks(min(xs), max(xs), unit=0.0 <= min(xs) and max(xs) <= 1.0)
    y_ticks, y_dec = _nice_ticks(min(ys), max(ys), unit=0.0 <= min(ys) and max(ys) <= 1.0)
    x_tick_labels = [f"{t * 100:.{max(x_dec - 2, 0)}f}%" for t in x_ticks]
    y_tick_labels = [f"{t:.{y_dec}f}" for t in y_ticks]
    baseline_label = f"dense {baseline:.4f}" if baseline is not None else None

    # Horizontal layout: y label (drawn upwards), y tick labels, the plot, then the baseline's label or a margin wide
    # enough for half of the last x tick label.
    plot_x0 = _MARGIN + _TEXT_H + 10 + max(_text_width(t) for t in y_tick_labels) + 8
    right = _text_width(baseline_label) + 8 if baseline_label else _text_width(x_tick_labels[-1]) // 2 + 4
    plot_x1 = _WIDTH - _MARGIN - right
    labels = [name for name, _ in checked]
    legend_lines = _series_legend_lines(labels, _WIDTH)

    # Vertical layout.
    y = _MARGIN
    title_y = y
    if title is not None:
        y += _TEXT_H + 8
    legend_y = y
    y += len(legend_lines) * _LEGEND_ROW_H
    plot_top = y + 10
    plot_bottom = plot_top + _CHART_PLOT_H
    x_ticks_y = plot_bottom + 8
    x_label_y = x_ticks_y + _TEXT_H + 8
    height = x_label_y + _TEXT_H + _MARGIN

    def px(x: float) -> int:
        span = x_ticks[-1] - x_ticks[0]
        return plot_x0 + _CHART_PAD + round((x - x_ticks[0]) / span * (plot_x1 - plot_x0 - 2 * _CHART_PAD))

    def py(v: float) -> int:
        span = y_ticks[-1] - y_ticks[0]
        return plot_bottom - _CHART_PAD - round((v - y_ticks[0]) / span * (plot_bottom - plot_top - 2 * _CHART_PAD))

    img = np.empty((height, _WIDTH, 3), dtype=np.uint8)
    img[...] = _WHITE
    if title is not None:
        max_chars = (_WIDTH - 2 * _MARGIN + _SCALE) // _ADVANCE
        _draw_text(img, _truncate(title, max_chars, keep_end=False), _MARGIN, title_y, (0, 0, 0))
    marker_masks = {shape: _marker_mask(shape, _MARKER_R) for shape in _MARKERS}
    halo_masks = {shape: _marker_mask(shape, _MARKER_R + 1) for shape in _MARKERS}

    def style(i: int) -> tuple[tuple[int, int, int], str]:
        return SERIES_COLORS[i % len(SERIES_COLORS)], _MARKERS[(i // len(SERIES_COLORS) + i) % len(_MARKERS)]

    for row, line in enumerate(legend_lines):
        cy = legend_y + row * _LEGEND_ROW_H + 2 + 7  # the middle of the labels' cap height
        for x, i, label in line:
            color, shape = style(i)
            _draw_line(img, x, cy, x + _LEGEND_LINE_W - 1, cy, color)
            _stamp(img, marker_masks[shape], x + _LEGEND_LINE_W // 2, cy, color)
            _draw_text(img, label, x + _LEGEND_LINE_W + 8, cy - 7, _TEXT)

    # Gridlines, axes, ticks and their labels.
    for t, label in zip(x_ticks, x_tick_labels):
        x = px(t)
        _fill(img, x, plot_top, x + 1, plot_bottom, _GRID)
        _fill(img, x, plot_bottom, x + 1, plot_bottom + 5, _AXIS)
        _draw_text(img, label, x - _text_width(label) // 2, x_ticks_y, _TEXT)
    for t, label in zip(y_ticks, y_tick_labels):
        y = py(t)
        _fill(img, plot_x0 + 1, y, plot_x1, y + 1, _GRID)
        _fill(img, plot_x0 - 5, y, plot_x0, y + 1, _AXIS)
        _draw_text(img, label, plot_x0 - 8 - _text_width(label), y - 7, _TEXT)
    _fill(img, plot_x0, plot_top, plot_x0 + 1, plot_bottom + 1, _AXIS)
    _fill(img, plot_x0, plot_bottom, plot_x1, plot_bottom + 1, _AXIS)
    _fill(img, plot_x0, plot_top, plot_x1, plot_top + 1, _GRID)
    _fill(img, plot_x1 - 1, plot_top, plot_x1, plot_bottom, _GRID)
    x_label_text = _truncate(x_label, (plot_x1 - plot_x0) // _ADVANCE, keep_end=False)
    _draw_text(img, x_label_text, (plot_x0 + plot_x1) // 2 - _text_width(x_label_text) // 2, x_label_y, _TEXT)
    # The y label reads upwards, centred on the plot: its text mask turned a quarter counter-clockwise.
    y_mask = np.rot90(_text_mask(_truncate(y_label, _CHART_PLOT_H // _ADVANCE, keep_end=False)))
    y_top = (plot_top + plot_bottom) // 2 - y_mask.shape[0] // 2
    img[y_top : y_top + y_mask.shape[0], _MARGIN : _MARGIN + y_mask.shape[1]][y_mask] = _TEXT

    # The baseline under the data, its label in the right margin.
    if baseline is not None:
        y = py(baseline)
        for x in range(plot_x0 + 1, plot_x1, _DASH + _GAP):
            _fill(img, x, y - _LINE_W // 2, min(x + _DASH, plot_x1), y - _LINE_W // 2 + _LINE_W, _BASELINE)
        _draw_text(img, baseline_label, plot_x1 + 8, y - 7, _BASELINE)

    # Every series' lines, then every marker (with a white halo) on top, so no line hides a point.
    placed = [[(px(x), py(v)) for x, v in points] for _, points in checked]
    for i, pixels in enumerate(placed):
        color, _ = style(i)
        for (x0, y0), (x1, y1) in zip(pixels, pixels[1:]):
            _draw_line(img, x0, y0, x1, y1, color)
    for i, pixels in enumerate(placed):
        color, shape = style(i)
        for x, y in pixels:
            _stamp(img, halo_masks[shape], x, y, _WHITE)
            _stamp(img, marker_masks[shape], x, y, color)

    out = Path(path)
    atomic_write_bytes(out, _encode_png(img))
    return out


# --------------------------------------------------------------------------------------------------------------------
# The plots of a `hf-sparse compress` report
# --------------------------------------------------------------------------------------------------------------------
#: Name (and file stem) of the report's accuracy chart; each run's density chart is ``density-<run name>``.
ACCURACY_PLOT = "accuracy_vs_sparsity"


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
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


def _report_series(report: Mapping) -> dict[str, list[tuple[float, float]]]:
    """The runs' (measured sparsity, test accuracy) grouped by what else each applied, in order of first appearance;
    runs without both numbers are left out. The accuracy-guarded run, if any, is a series of its own."""
    groups: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    pruned: dict[tuple[str, ...], bool] = {}
    for run in report.get("runs") or ():
        if not isinstance(run, Mapping):
            continue
        x, y = _finite(run.get("sparsity")), _finite(run.get("test_accuracy"))
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
    if isinstance(guard, Mapping) and _finite(guard.get("test_accuracy")) is not None:
        accepted = [h for h in guard.get("history") or () if isinstance(h, Mapping) and h.get("accepted")]
        x = _finite(accepted[-1].get("measured_sparsity")) if accepted else None
        x = x if x is not None else _finite(guard.get("accepted_sparsity"))
        if x is not None:
            series["accuracy guard"] = [(x, float(guard["test_accuracy"]))]
    return series


def _file_stem(name: str, taken: set[str]) -> str:
    """``density-<name>`` made safe as a file name (characters other than letters, digits, ``.``, ``_`` and ``-``
    become ``_``) and unique among ``taken`` (``-2``, ``-3`` ... appended)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    stem, n = f"density-{safe}", 2
    while stem in taken:
        stem, n = f"density-{safe}-{n}", n + 1
    taken.add(stem)
    return stem


def write_report_plots(report: Mapping, folder: str | Path) -> dict[str, str]:
    """Write the plots of a ``hf-sparse compress`` report (the dict ``run_compress`` returns and saves as
    ``report.json``) into ``folder``.

    * ``accuracy_vs_sparsity.png`` (:func:`accuracy_plot_png`): each run's test accuracy against its measured
      sparsity, with the dense model's test accuracy as the dashed baseline. Runs are grouped into series by what
      else they applied: ``"pruned"``, ``"pruned + distilled"``, ``"pruned + int8 QAT"``, ``"pruned + structured"``,
      ``"pruned + low-rank"`` ... ("pruned" is left out of a series with no pruned run, e.g. ``"int8 QAT"``). The
      accuracy-guarded run, when the report has one, is the single point ``"accuracy guard"``.
    * ``density-<run name>.png`` (:func:`density_plot_png`) for each run with per-layer sparsities: one bar per
      layer of its density ``1 - sparsity``, coloured by the layer's storage format when the run lists them.

    A plot with nothing to show is skipped rather than failing: no accuracy chart when no run has both a numeric
    sparsity and test accuracy, no density chart for a run without layers. Characters of a run name other than
    letters, digits, ``.``, ``_`` and ``-`` become ``_`` in its file name.

    Args:
        report: The report dict (``runs``, ``dense``, optionally ``guard`` and ``model``).
        folder: Where to write the PNGs (created if missing; existing files of the same names are replaced).

    Returns:
        Plot name -> file name relative to ``folder``, in the order written: ``{"accuracy_vs_sparsity":
        "accuracy_vs_sparsity.png", "density-pruned-50": "density-pruned-50.png", ...}``.

    Raises:
        TypeError: ``report`` is not a mapping or its ``runs`` is not a list.
        ValueError: a run's layer sparsity is not a number in ``[0, 1]`` (the message names the run and the layer).
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
        dense = report.get("dense")
        baseline = _finite(dense.get("test_accuracy")) if isinstance(dense, Mapping) else None
        model = report.get("model")
        title = f"Test accuracy vs sparsity: {model}" if model else "Test accuracy vs sparsity"
        accuracy_plot_png(series, confined_path(folder, f"{ACCURACY_PLOT}.png"), baseline=baseline, title=title)
        written[ACCURACY_PLOT] = f"{ACCURACY_PLOT}.png"

    taken: set[str] = {ACCURACY_PLOT}
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
