"""A grouped bar chart with error bars as PNG bytes: matplotlib's when it is installed (an optional
extra), else drawn here on a numpy canvas with a 5×7 pixel font and written with zlib + struct,
so `listen score` always writes its chart."""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Sequence

import numpy as np

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))  # matplotlib's first four

# 5×7 glyphs, one hex byte per row from the top, bit 4 the leftmost column (the HD44780 ROM's shapes).
_FONT = {
    "A": "0E 11 11 11 1F 11 11", "B": "1E 11 11 1E 11 11 1E", "C": "0E 11 10 10 10 11 0E",
    "D": "1C 12 11 11 11 12 1C", "E": "1F 10 10 1E 10 10 1F", "F": "1F 10 10 1E 10 10 10",
    "G": "0E 11 10 17 11 11 0F", "H": "11 11 11 1F 11 11 11", "I": "0E 04 04 04 04 04 0E",
    "J": "07 02 02 02 02 12 0C", "K": "11 12 14 18 14 12 11", "L": "10 10 10 10 10 10 1F",
    "M": "11 1B 15 15 11 11 11", "N": "11 11 19 15 13 11 11", "O": "0E 11 11 11 11 11 0E",
    "P": "1E 11 11 1E 10 10 10", "Q": "0E 11 11 11 15 12 0D", "R": "1E 11 11 1E 14 12 11",
    "S": "0F 10 10 0E 01 01 1E", "T": "1F 04 04 04 04 04 04", "U": "11 11 11 11 11 11 0E",
    "V": "11 11 11 11 11 0A 04", "W": "11 11 11 15 15 15 0A", "X": "11 11 0A 04 0A 11 11",
    "Y": "11 11 11 0A 04 04 04", "Z": "1F 01 02 04 08 10 1F", "0": "0E 11 13 15 19 11 0E",
    "1": "04 0C 04 04 04 04 0E", "2": "0E 11 01 02 04 08 1F", "3": "1F 02 04 02 01 11 0E",
    "4": "02 06 0A 12 1F 02 02", "5": "1F 10 1E 01 01 11 0E", "6": "06 08 10 1E 11 11 0E",
    "7": "1F 01 02 04 08 08 08", "8": "0E 11 11 0E 11 11 0E", "9": "0E 11 11 0F 01 02 0C",
    " ": "00 00 00 00 00 00 00", "-": "00 00 00 1F 00 00 00", ".": "00 00 00 00 00 0C 0C",
    "_": "00 00 00 00 00 00 1F", "(": "02 04 08 08 08 04 02", ")": "08 04 02 02 02 04 08",
    "%": "18 19 02 04 08 13 03", "+": "00 04 04 1F 04 04 00", "/": "00 01 02 04 08 10 00",
    ":": "00 0C 0C 00 0C 0C 00", "=": "00 00 1F 00 1F 00 00", "?": "0E 11 01 02 04 00 04",
    "±": "04 04 1F 04 04 00 1F",
}
_GLYPHS = {char: np.array([[(int(row, 16) >> (4 - column)) & 1 for column in range(5)] for row in rows.split()],
                          dtype=bool) for char, rows in _FONT.items()}  # [7, 5] each


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] as a PNG file (8-bit truecolour, no filtering, zlib level 9)."""
    height, width, _ = image.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], axis=1)  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))


def _text(canvas: np.ndarray, x: int, y: int, text: str, size: int = 2, colour=(0, 0, 0), centre: bool = False):
    """Draw `text` (upper-cased; unknown characters as '?') with its top-left at (x, y)."""
    text = text.upper()
    if centre:
        x -= text_width(text, size) // 2
    for char in text:
        glyph = _GLYPHS.get(char, _GLYPHS["?"]).repeat(size, 0).repeat(size, 1)
        region = canvas[y:y + glyph.shape[0], x:x + glyph.shape[1]]
        if region.shape[:2] == glyph.shape:
            region[glyph] = colour
        x += 6 * size


def text_width(text: str, size: int = 2) -> int:
    return max(0, 6 * size * len(text) - size)


def _own_chart(groups: Sequence[str], series, scale: tuple[int, int]) -> bytes:
    names = [name[:20] for name in groups]
    bar = 22
    group_width = max(len(series) * bar + 28, max(text_width(name) for name in names) + 16)
    left, right, top, bottom = 44, 16, 44, 44
    width, height = left + group_width * len(groups) + right, 340
    canvas = np.full((height, width, 3), 255, np.uint8)
    plot_top, plot_bottom = top, height - bottom
    low, high = 0, scale[1]

    def y_of(value: float) -> int:
        return round(plot_bottom - (value - low) / (high - low) * (plot_bottom - plot_top))

    for tick in range(scale[0], scale[1] + 1):  # grid lines and their labels
        canvas[y_of(tick), left:width - right] = (220, 220, 220)
        _text(canvas, left - 16, y_of(tick) - 7, str(tick))
    canvas[plot_top:plot_bottom + 1, left] = 0
    canvas[plot_bottom, left:width - right] = 0
    x = left + 4
    for (name, _, _), colour in zip(series, COLOURS):  # the legend, top left
        canvas[12:26, x:x + 14] = colour
        _text(canvas, x + 20, 12, name)
        x += 20 + text_width(name) + 24
    _text(canvas, x, 12, "MOS, 95% CI")
    for g, name in enumerate(names):
        start = left + g * group_width + (group_width - len(series) * bar) // 2
        for s, ((_, values, errors), colour) in enumerate(zip(series, COLOURS)):
            value, error = values[g], errors[g]
            if math.isnan(value):
                continue
            x0 = start + s * bar + 2
            canvas[y_of(value):plot_bottom, x0:x0 + bar - 4] = colour
            if not math.isnan(error):  # the error bar with its caps
                centre, up, down = x0 + (bar - 4) // 2, y_of(min(value + error, high)), y_of(max(value - error, low))
                canvas[up:down + 1, centre - 1:centre + 1] = 0
                canvas[up, centre - 5:centre + 5] = 0
                canvas[down, centre - 5:centre + 5] = 0
        _text(canvas, left + g * group_width + group_width // 2, plot_bottom + 12, name, centre=True)
    return png_bytes(canvas)


def bar_chart(groups: Sequence[str], series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
              scale: tuple[int, int] = (1, 5)) -> bytes:
    """PNG bytes: for each group (system) one bar per series (criterion name, values, error
    half-widths), the y axis over the rating scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _own_chart(groups, series, scale)
    figure, axes = plt.subplots(figsize=(max(4.5, 1.3 * len(groups) + 1.5), 3.4))
    width = 0.8 / len(series)
    for s, ((name, values, errors), colour) in enumerate(zip(series, COLOURS)):
        positions = [g + (s - (len(series) - 1) / 2) * width for g in range(len(groups))]
        axes.bar(positions, values, width, yerr=[0 if math.isnan(e) else e for e in errors], capsize=4,
                 label=name, color=[c / 255 for c in colour])
    axes.set_xticks(range(len(groups)), list(groups))
    axes.set_ylim(0, scale[1])
    axes.set_ylabel("MOS (95 % CI)")
    axes.legend(loc="upper left", ncol=len(series), frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()
