"""A per-layer "stored fraction" bar chart written as a PNG, with no plotting library.

``density_plot_png`` draws one horizontal bar per layer into a numpy ``uint8`` RGB array (a tiny rasterizer with an
embedded 5x9 bitmap font drawn at 2x) and encodes the PNG itself with ``zlib`` and ``struct`` (8-bit RGB, no
interlacing, filter type 0 on every row). Only the standard library and numpy are used, so a report can carry a
picture on machines without matplotlib or Pillow, and the same input always gives the same bytes.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["density_plot_png", "FORMAT_COLORS"]

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
            raise ValueError(f"density of layer {name!r} is not a number: {value!r}.") from None
        if math.isnan(number) or not 0.0 <= number <= 1.0:
            raise ValueError(f"density of layer {name!r} must be in [0, 1], got {number!r}.")
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
    out.write_bytes(_encode_png(img))
    return out
