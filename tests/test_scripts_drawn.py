"""Captions drawn in any script: the photo's caption band (`caption --save`), the attention
panels' words (`caption --attention`), and the HTML pages that show captions.

What is checked is what a reader sees: the font has every letter (no .notdef box), Arabic's
letters are joined (narrower than unjoined), Devanagari is shaped, a right-to-left caption
starts at the right edge, Chinese glyphs differ from one another (boxes would not)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image, ImageFont, features

from captioner.inference import drawn_text, fonts
from captioner.inference.attention_maps import DPI, PANEL_INCHES, TITLE_INCHES, draw_attention
from captioner.inference.report import draw_caption, write_report
from tests.conftest import CHELSEA

HINDI = "कुत्ता घास पर दौड़ रहा है"
ARABIC = "كلب يجري على العشب"
CHINESE = "一只狗在草地上奔跑"
HEBREW = "כלב רץ על הדשא"
CAPTIONS = {"Devanagari": HINDI, "Arabic": ARABIC, "CJK SC": CHINESE, "Hebrew": HEBREW}
PHOTO = 224  # chelsea.jpg is 224 x 224: the caption band starts at this row

needs_raqm = pytest.mark.skipif(
    not features.check_feature("raqm"), reason="Pillow without libraqm shapes no text"
)


def noto(family: str, caption: str) -> fonts.Face:
    """The font chosen for the caption, if it is Noto Sans `family` (skips the test if the
    fonts-noto-core / fonts-noto-cjk font is not installed)."""
    face = fonts.face_for(caption)
    if fonts._face_names(face.path)[face.index] != f"Noto Sans {family}":
        pytest.skip(f"Noto Sans {family} is not installed (fonts-noto-core, fonts-noto-cjk)")
    return face


def band(path: Path) -> np.ndarray:
    """The caption band under the photo, as grey levels."""
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width == PHOTO
        return np.asarray(image.convert("L"))[PHOTO:]


def ink_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of what is drawn (dark) in `grey`, right and bottom past it."""
    rows, columns = np.nonzero(grey < 160)
    assert len(rows), "nothing drawn"
    return columns.min(), rows.min(), columns.max() + 1, rows.max() + 1


@pytest.fixture
def drawn(tmp_path):
    """draw_caption(caption) -> its caption band."""

    def draw(caption: str, name: str = "out.png") -> np.ndarray:
        return band(draw_caption(CHELSEA, caption, tmp_path / name))

    return draw


@pytest.mark.parametrize("family, caption", CAPTIONS.items())
def test_each_caption_gets_a_font_with_every_letter(family, caption, drawn):
    face = noto(family, caption)
    with TTFont(face.path, fontNumber=face.index, lazy=True) as font:
        cmap = font.getBestCmap()
    assert [ch for ch in caption if ch != " " and ord(ch) not in cmap] == []
    assert all(fonts.face_for(word, caption) == face for word in caption.split())
    assert fonts.missing_font_note(caption) == ""
    left, top, right, bottom = ink_box(drawn(caption))
    assert bottom - top > 8 and right - left > 50  # a line of text under the photo


@needs_raqm
@pytest.mark.parametrize("family, caption", [("Arabic", ARABIC), ("Devanagari", HINDI)])
def test_shaping_shows(family, caption, drawn, monkeypatch):
    """Drawn with raqm, as against Pillow's basic layout (one glyph per character, in the
    order they come): the caption is not drawn the same."""
    noto(family, caption)
    shaped = drawn(caption, "shaped.png")
    monkeypatch.setattr(drawn_text, "LAYOUT_ENGINE", ImageFont.Layout.BASIC)
    unshaped = drawn(caption, "unshaped.png")
    assert shaped.shape == unshaped.shape and np.abs(shaped.astype(int) - unshaped).max() > 100
    if family == "Arabic":  # joined letters take less room than the same letters alone
        assert np.diff(ink_box(shaped)[::2]) < 0.9 * np.diff(ink_box(unshaped)[::2])


@pytest.mark.parametrize(
    "family, caption, first, rtl",
    [("Arabic", ARABIC, "كلب", True), ("Hebrew", HEBREW, "כלב", True),
     ("Devanagari", HINDI, "कुत्ता", False), ("CJK SC", CHINESE, "一", False)],
)  # fmt: skip
def test_the_first_word_is_where_reading_starts(family, caption, first, rtl, drawn):
    """The first word drawn alone lands where it is in the whole caption: at the right edge
    for Arabic and Hebrew, at the left for Hindi and Chinese."""
    noto(family, caption)
    whole, alone = drawn(caption, "whole.png"), drawn(first, "alone.png")
    left, top, right, bottom = ink_box(alone)
    assert (left > PHOTO / 2) if rtl else (right < PHOTO / 2)
    assert right == ink_box(whole)[2] if rtl else left == ink_box(whole)[0]
    np.testing.assert_array_equal(whole[top:bottom, left:right], alone[top:bottom, left:right])


def test_a_caption_without_spaces_wraps_between_characters(drawn):
    noto("CJK SC", CHINESE)
    lines = drawn_text.wrap(CHINESE * 3, 14, 100)
    assert len(lines) >= 3 and "".join(lines) == CHINESE * 3
    assert all(drawn_text.width(drawn_text.runs(line, 14)) <= 100 for line in lines)
    assert ink_box(drawn(CHINESE * 6))[3] > 2 * ink_box(drawn(CHINESE))[3]  # more lines


def maps(count: int) -> np.ndarray:
    weights = np.random.RandomState(count).rand(count, 4, 4).astype(np.float32)
    return weights / weights.sum(axis=(1, 2), keepdims=True)


def title_strips(path: Path, panels: int) -> list[np.ndarray]:
    """Each panel's strip above the photo (the first row), where its word is written."""
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"))
    size = round(PANEL_INCHES * DPI)
    assert grey.shape == (round((PANEL_INCHES + TITLE_INCHES) * DPI), panels * size)
    return [grey[:28, i * size : (i + 1) * size] for i in range(panels)]


def test_attention_panels_are_titled_with_the_words_given(tmp_path):
    noto("CJK SC", CHINESE)
    words = ["一", "只", "狗"]
    draw_attention(CHELSEA, "一只狗", maps(3), tmp_path / "given.png", words=words)
    strips = title_strips(tmp_path / "given.png", 3)
    for strip in strips:
        ink_box(strip)  # a title in each panel
    # Three different glyphs: a font without them would draw three identical boxes.
    assert all(
        np.abs(a.astype(int) - b).max() > 100 for a, b in zip(strips, strips[1:] + strips[:1])
    )
    # Without `words`, the caption's characters (one map each) are its words, as given.
    draw_attention(CHELSEA, "一只狗", maps(3), tmp_path / "found.png")
    assert (tmp_path / "found.png").read_bytes() == (tmp_path / "given.png").read_bytes()
    with pytest.raises(ValueError, match="1 words but 2 attention maps"):
        draw_attention(CHELSEA, "一只狗", maps(2), tmp_path / "wrong.png")


@needs_raqm
def test_a_right_to_left_captions_panels_start_at_the_right(tmp_path):
    noto("Arabic", ARABIC)
    draw_attention(CHELSEA, "كلب يجري", maps(2), tmp_path / "rtl.png")
    draw_attention(CHELSEA, "a كلب", maps(2), tmp_path / "ltr.png")  # a Latin first word
    rtl, ltr = title_strips(tmp_path / "rtl.png", 2), title_strips(tmp_path / "ltr.png", 2)
    np.testing.assert_array_equal(rtl[1], ltr[1])  # "كلب" at the right in both
    assert np.abs(rtl[0].astype(int) - ltr[0]).max() > 100


@pytest.fixture
def no_fonts_but_dejavu(monkeypatch):
    """As on a machine without Noto fonts: matplotlib's own (DejaVu, STIX, Last Resort...) and
    the system's others."""
    others = tuple(p for p in fonts._system_fonts() if "noto" not in p.lower())
    cached = [fonts._face_for, fonts._noto_files, fonts._cjk_faces]
    for function in cached:
        function.cache_clear()
    monkeypatch.setattr(fonts, "NOTO_FOLDERS", ())
    monkeypatch.setattr(fonts, "_system_fonts", lambda: others)
    yield
    for function in cached:
        function.cache_clear()


def test_a_script_without_a_font_is_drawn_and_named(no_fonts_but_dejavu, drawn, tmp_path, capsys):
    assert fonts.missing_font_note(HINDI) == (
        "no font here draws Devanagari: install fonts-noto-core (Debian) or another font with it"
    )
    assert fonts.missing_font_note(f"{CHINESE} {HINDI}") == (
        "no font here draws Devanagari or Han: install fonts-noto-core and fonts-noto-cjk "
        "(Debian) or another font with them"
    )
    assert fonts.face_for(HEBREW) == fonts.dejavu_sans()  # DejaVu has Hebrew's letters
    assert fonts.missing_font_note(HEBREW) == ""
    ink_box(drawn(HINDI))  # drawn all the same
    # `caption --save` says it once on stderr, however many photos.
    from captioner.cli import _draw, cli

    result = SimpleNamespace(path=CHELSEA, caption=HINDI, attention=None)
    capsys.readouterr()
    with click.Context(cli):
        for name in ("a.png", "b.png"):
            _draw(result, [CHELSEA], tmp_path / name, None)
    assert capsys.readouterr() == ("", fonts.missing_font_note(HINDI) + "\n")
    assert (tmp_path / "b.png").is_file()


def test_pages_set_each_caption_and_word_dir_auto(tmp_path):
    page = (Path(__file__).parent.parent / "captioner/serving/page.html").read_text()
    show = page[page.index("function show(") :]
    assert 'text.dir = "auto";' in show[: show.index("text.textContent = caption;")]  # captions
    assert 'label.dir = "auto";\n  label.textContent = word;' in page  # each word's panel
    assert '"Noto Sans Devanagari"' in page and '"Noto Sans CJK SC"' in page
    item = {"image": CHELSEA.name, "caption": ARABIC, "references": [HEBREW, "a cat"],
            "bleu4": 0.5, "cider_d": 1.0}  # fmt: skip
    chinese = {**item, "image": "chinese.jpg", "caption": CHINESE}
    evaluation = SimpleNamespace(
        per_image=[item, chinese], attention={CHELSEA.name: maps(4), "chinese.jpg": maps(9)},
        scores={"CIDEr-D": 1.0}, decoding={"beam_size": 1}, diagnostics={}, left_out=[],
        split="test", images=2, tokenize="captioner", images_dir=CHELSEA.parent,
        paths_elsewhere={"chinese.jpg": CHELSEA},
    )  # fmt: skip
    report = write_report(evaluation, tmp_path / "report.html", "run").read_text()
    assert report.count(f'<div class="generated" dir="auto">{ARABIC}</div>') == 3  # 3 sections
    assert report.count(f'<li dir="auto">{HEBREW}</li>') == 2 * 3  # and random
    assert "<li>" not in report and '<div class="generated">' not in report
    # The Chinese caption's nine maps are its nine characters' (no "1 words but 9 maps").
    assert report.count('<img class="attention"') == 4 and '"Noto Sans Arabic"' in report
