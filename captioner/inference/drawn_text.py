"""A caption, or a word, drawn with Pillow in whatever script it is written.

Pillow with libraqm shapes a string (Arabic letters joined, Devanagari vowel signs placed)
and orders it (right to left for Arabic and Hebrew), but draws it in one font. A line is
therefore cut into runs, consecutive words sharing a font (captioner.inference.fonts) and a
direction, each drawn by raqm with its own direction; the runs are placed as the Unicode
bidirectional algorithm places words, the line's direction being that of its first letter
with one (as HTML's dir="auto" does).
"""

from __future__ import annotations

import functools
import itertools
import unicodedata
from dataclasses import dataclass

from PIL import ImageDraw, ImageFont

from captioner.data.cleaning import graphemes, is_spaceless
from captioner.inference import fonts

LAYOUT_ENGINE = None  # Pillow's choice: raqm where Pillow has it, else its basic layout


@dataclass(frozen=True)
class Run:
    """Words drawn in one go: one font, one direction."""

    text: str
    font: ImageFont.FreeTypeFont
    rtl: bool


def is_rtl(text: str) -> bool | None:
    """True if the first letter with a direction is right-to-left (Hebrew, Arabic...), False
    if left-to-right, None if none has one."""
    for ch in text:
        kind = unicodedata.bidirectional(ch)
        if kind in ("L", "R", "AL"):
            return kind != "L"
    return None


def runs(text: str, size: float, context: str = "") -> list[Run]:
    """`text` (one line) cut into runs, in the order they appear from left to right.
    `context`: the whole caption, whose first letter sets the direction of every line of it."""
    rtl_line = bool(is_rtl(context or text))
    words, rtl = [], rtl_line
    for word in text.split():
        rtl = _word_rtl(word, rtl)
        words.append((word, _font(fonts.face_for(word, context or text), size), rtl))
    logical = [Run(" ".join(w for w, _, _ in group), font, rtl)
               for (font, rtl), group in itertools.groupby(words, key=lambda w: w[1:])]  # fmt: skip
    # Runs of one direction stay together; those of the other direction than the line's read
    # from their end, and a right-to-left line puts its first run at the right.
    groups = [list(g) for _, g in itertools.groupby(logical, key=lambda r: r.rtl)]
    groups = [g[::-1] if g[0].rtl else g for g in groups]
    return [run for group in (groups[::-1] if rtl_line else groups) for run in group]


def width(line: list[Run]) -> float:
    """The line's width in pixels, a space between runs."""
    gaps = sum(run.font.getlength(" ") for run in line[:-1])
    return gaps + sum(run.font.getlength(run.text, **_layout(run)[1]) for run in line)


def metrics(line: list[Run], size: float) -> tuple[int, int]:
    """(ascent, descent) in pixels: the most of the line's fonts (DejaVu Sans' if none)."""
    faces = [run.font for run in line] or [_font(fonts.dejavu_sans(), size)]
    return max(f.getmetrics()[0] for f in faces), max(f.getmetrics()[1] for f in faces)


def draw(pen: ImageDraw.ImageDraw, line: list[Run], left: float, baseline: float,
         fill="black") -> None:  # fmt: skip
    """Draws the runs from `left`, on `baseline` (fonts of different scripts share it)."""
    for run in line:
        text, options = _layout(run)
        pen.text((left, baseline), text, fill=fill, font=run.font, anchor="ls", **options)
        left += run.font.getlength(text, **options) + run.font.getlength(" ")


def wrap(text: str, size: float, most: float, context: str = "") -> list[str]:
    """`text`'s lines, each at most `most` pixels wide where breaks allow: between words,
    and between characters in a script written without spaces (Chinese, Japanese, Thai)."""
    lines, line = [], ""
    for piece, space in _pieces(text, size, most, context):
        candidate = f"{line}{space}{piece}" if line else piece
        if line and width(runs(candidate, size, context or text)) > most:
            lines.append(line)
            candidate = piece
        line = candidate
    return lines + [line]


def _pieces(text: str, size: float, most: float, context: str):
    """(piece, what goes before it on a line): words, or the characters of a word too wide
    that is written in a script without spaces."""
    for word in text.split():
        if any(map(is_spaceless, word)) and width(runs(word, size, context or text)) > most:
            clusters = graphemes(word)  # a line may break between any two of them
            yield clusters[0], " "
            yield from ((cluster, "") for cluster in clusters[1:])
        else:
            yield word, " "


def _word_rtl(word: str, before: bool) -> bool:
    """A word's direction; one without a letter that has one takes the direction before it."""
    rtl = is_rtl(word)
    return before if rtl is None else rtl


def _layout(run: Run) -> tuple[str, dict]:
    """What Pillow is given for a run: with raqm, the run and its direction (raqm orders the
    letters and shapes them); without, the run's characters in the order they are seen, as
    basic layout draws a string from left to right as it comes."""
    if run.font.layout_engine == ImageFont.Layout.RAQM:
        return run.text, {"direction": "rtl" if run.rtl else "ltr"}
    return ("".join(reversed(graphemes(run.text))) if run.rtl else run.text), {}


def _font(face: fonts.Face, size: float) -> ImageFont.FreeTypeFont:
    return _loaded(face, round(size), LAYOUT_ENGINE)


@functools.lru_cache(maxsize=64)
def _loaded(face: fonts.Face, size: int, engine) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(face.path, size, index=face.index, layout_engine=engine)
