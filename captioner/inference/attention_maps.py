"""Pictures of what a grid decoder looked at: the photo once per word of its caption,
that word's attention over the encoder's grid laid over it, the word above the panel.

Drawn with matplotlib's Agg canvas on a Figure made directly, never through pyplot, so that
no display and no backend setting is needed (a headless server draws them as a laptop does).
The grid's maps are upsampled to the photo with Pillow's bicubic filter: the encoder read the
photo squashed to a square, so its grid covers the whole photo, whatever its aspect ratio.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from captioner.files import write_atomic

COLUMNS = 5  # panels per row: a caption of 10 words is two rows
PANEL_INCHES = 2.0  # a panel's width, and its height with TITLE_INCHES more for the word
TITLE_INCHES = 0.3
DPI = 100
_SMALL = 0.6  # the report's and other pages' panels, scaled: a page holds many


def layout(words: int) -> tuple[int, int]:
    """(rows, columns) of panels for a caption of `words` words: one panel per word."""
    columns = max(1, min(words, COLUMNS))
    return -(-max(words, 1) // columns), columns


def upsampled(weights: np.ndarray, width: int, height: int) -> np.ndarray:
    """A map (rows, columns) smoothly resized to (height, width) with Pillow's bicubic filter,
    its overshoot below 0 cut off."""
    image = Image.fromarray(np.asarray(weights, np.float32))
    return np.maximum(np.asarray(image.resize((width, height), Image.Resampling.BICUBIC)), 0)


def attention_png(photo: Image.Image, words: list[str], weights, scale: float = 1.0) -> bytes:
    """The figure as PNG bytes: one panel per word, the photo with that word's map
    (weights (words, rows, columns)) over it; the photo is shrunk to the panel's size first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(words) != len(weights):
        raise ValueError(f"{len(words)} words but {len(weights)} attention maps")
    rows, columns = layout(len(words))
    inches = PANEL_INCHES * scale
    photo = photo.convert("RGB")
    photo.thumbnail((int(inches * DPI), int(inches * DPI)))
    figure = Figure(figsize=(columns * inches, rows * (inches + TITLE_INCHES * scale)), dpi=DPI)
    FigureCanvasAgg(figure)  # draws into memory: no display, no pyplot
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / (rows * inches + 1),
                           wspace=0.04, hspace=0.2)  # fmt: skip
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False)).ravel()
    for number, ax in enumerate(axes):
        ax.set_axis_off()
        if number >= len(words):
            continue
        ax.imshow(photo)
        grid = upsampled(weights[number], photo.width, photo.height)
        # Bright where the word looked, dark elsewhere (as in Show, Attend and Tell's figures).
        ax.imshow(grid, cmap="Greys_r", alpha=0.65, vmin=0, vmax=float(grid.max()) or 1.0)
        ax.set_title(words[number], fontsize=11 * max(scale, 0.75))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def attention_data_uri(photo_path: str | Path, words: list[str], weights) -> str:
    """The figure, small, as a data: URI for a self-contained page ("" if the photo cannot be
    read)."""
    try:
        with Image.open(photo_path) as photo:
            png = attention_png(ImageOps.exif_transpose(photo), words, weights, _SMALL)
    except OSError:
        return ""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def draw_attention(photo_path: str | Path, caption: str, weights, output: str | Path) -> Path:
    """Writes the figure of `caption`'s words (weights (words, rows, columns), e.g. from
    Captioner.caption(attention=True)) over the photo to `output` as PNG, atomically."""
    with Image.open(photo_path) as photo:
        png = attention_png(ImageOps.exif_transpose(photo), caption.split(), weights)
    write_atomic(output, png)
    return Path(output)
