"""Pictures of what a grid decoder looked at: the photo once per word of its caption,
that word's attention over the encoder's grid laid over it, the word above the panel.

The panels are drawn with matplotlib's Agg canvas on a Figure made directly, never through
pyplot, so that no display and no backend setting is needed (a headless server draws them as
a laptop does); the words with Pillow (captioner.inference.drawn_text), in any script.
The grid's maps are upsampled to the photo with Pillow's bicubic filter: the encoder read the
photo squashed to a square, so its grid covers the whole photo, whatever its aspect ratio.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from captioner.data.cleaning import caption_tokens
from captioner.files import write_atomic
from captioner.inference import drawn_text

COLUMNS = 5  # panels per row: a caption of 10 words is two rows
PANEL_INCHES = 2.0  # a panel's width, and its height with TITLE_INCHES more for the word
TITLE_INCHES = 0.3
TITLE_PAD_POINTS = 6  # between a panel and its word, as matplotlib's titles (axes.titlepad)
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
    (weights (words, rows, columns)) over it; the photo is shrunk to the panel's size first.
    A right-to-left caption's panels run from the right, as its words do."""
    if len(words) != len(weights):
        raise ValueError(f"{len(words)} words but {len(weights)} attention maps")
    figure, axes = _panels(photo, weights, scale, bool(drawn_text.is_rtl(" ".join(words))))
    image = _rendered(figure)
    # The words are drawn by Pillow, which shapes and orders any script (matplotlib does not:
    # Arabic would come out unjoined and backwards, Devanagari's vowel signs misplaced).
    pen = ImageDraw.Draw(image)
    size = 11 * max(scale, 0.75) * DPI / 72  # matplotlib's title size (points) in pixels
    room = image.width / len(axes[0]) - 4  # a panel's width, less a margin
    for word, ax in zip(words, [ax for row in axes for ax in row]):
        box = ax.get_window_extent()  # in pixels from the bottom left, after the draw
        baseline = image.height - box.y1 - TITLE_PAD_POINTS * DPI / 72
        _draw_title(pen, word, " ".join(words), size, room, ((box.x0 + box.x1) / 2, baseline))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _panels(photo: Image.Image, weights, scale: float, rtl: bool):
    """The matplotlib figure of the panels, untitled, and its axes in the words' order: row by
    row, each row from the right for a right-to-left caption."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, columns = layout(len(weights))
    inches = PANEL_INCHES * scale
    photo = photo.convert("RGB")
    photo.thumbnail((int(inches * DPI), int(inches * DPI)))
    figure = Figure(figsize=(columns * inches, rows * (inches + TITLE_INCHES * scale)), dpi=DPI)
    FigureCanvasAgg(figure)  # draws into memory: no display, no pyplot
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / (rows * inches + 1),
                           wspace=0.04, hspace=0.2)  # fmt: skip
    grid = np.asarray(figure.subplots(rows, columns, squeeze=False))
    for ax in grid.ravel():
        ax.set_axis_off()
    ordered = [list(row[::-1] if rtl else row) for row in grid]
    for ax, word_weights in zip([ax for row in ordered for ax in row], weights):
        ax.imshow(photo)
        shade = upsampled(word_weights, photo.width, photo.height)
        # Bright where the word looked, dark elsewhere (as in Show, Attend and Tell's figures).
        ax.imshow(shade, cmap="Greys_r", alpha=0.65, vmin=0, vmax=float(shade.max()) or 1.0)
    return figure, ordered


def _rendered(figure) -> Image.Image:
    """The figure drawn, as a Pillow image (and its axes placed, their aspect applied)."""
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())).convert("RGB")


def _draw_title(pen, word: str, caption: str, size: float, room: float, at) -> None:
    """The word centred on `at` (its baseline), smaller if it is wider than `room`."""
    line = drawn_text.runs(word, size, caption)
    wide = drawn_text.width(line)
    if wide > room:
        line = drawn_text.runs(word, max(size * room / wide, 6), caption)
        wide = drawn_text.width(line)
    drawn_text.draw(pen, line, at[0] - wide / 2, at[1])


def words_of(caption: str, maps: int) -> list[str]:
    """The words of a caption that has `maps` maps: its words between spaces; if that count
    is not `maps`, and splitting a script written without spaces (Chinese, Japanese, Thai)
    into its characters gives `maps` tokens, those (as `characters` tokenization makes them:
    "一只狗" is three)."""
    words = caption.split()
    if len(words) != maps:
        tokens = caption_tokens(caption, "characters")
        if len(tokens) == maps:
            return tokens
    return words


def attention_data_uri(photo_path: str | Path, words: list[str], weights) -> str:
    """The figure, small, as a data: URI for a self-contained page ("" if the photo cannot be
    read)."""
    try:
        with Image.open(photo_path) as photo:
            png = attention_png(ImageOps.exif_transpose(photo), words, weights, _SMALL)
    except OSError:
        return ""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def draw_attention(photo_path: str | Path, caption: str, weights, output: str | Path,
                   words: list[str] | None = None) -> Path:  # fmt: skip
    """Writes the figure of `caption`'s words (weights (words, rows, columns), e.g. from
    Captioner.caption(attention=True)) over the photo to `output` as PNG, atomically.
    `words`: the decoder's tokens, one per map; without them, see `words_of`."""
    with Image.open(photo_path) as photo:
        png = attention_png(
            ImageOps.exif_transpose(photo), words or words_of(caption, len(weights)), weights
        )
    write_atomic(output, png)
    return Path(output)
