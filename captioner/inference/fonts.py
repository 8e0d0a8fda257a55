"""Which font draws a caption: captions come in any script, and Pillow draws each string with
one font, with no fallback from font to font. So a font is chosen per word, one whose
character map (read with fontTools) holds every letter of it.

Where we look, in this order: Debian's Noto fonts for the word's scripts (fonts-noto-core,
fonts-noto-cjk), DejaVu Sans (matplotlib ships it: Latin, Greek, Cyrillic, Hebrew, some
Arabic), Noto Sans, then every font matplotlib's font manager finds on the system. A word that
no font covers is drawn with the font covering most of it, and `missing_font_note` names what
to install.
"""

from __future__ import annotations

import functools
import glob
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from fontTools import unicodedata as scripts

NOTO_FOLDERS = ("/usr/share/fonts/truetype/noto", "/usr/share/fonts/opentype/noto")
CJK_SCRIPTS = {"Hani", "Hira", "Kana", "Hang", "Bopo"}
_NO_SCRIPT = {"Zyyy", "Zinh", "Zzzz"}  # Common (digits, punctuation), Inherited (marks), Unknown
# Noto Sans CJK's faces are one per region: the same character is drawn the way that region
# writes it. Kana says Japanese, Hangul Korean; Han alone is taken for Simplified Chinese.
_REGIONS = {"JP": ("JP", "SC", "TC", "HK", "KR"), "KR": ("KR", "SC", "TC", "HK", "JP"),
            "SC": ("SC", "TC", "HK", "JP", "KR")}  # fmt: skip


@dataclass(frozen=True)
class Face:
    """A font file, and which of its faces for a collection (.ttc)."""

    path: str
    index: int = 0


def letters(text: str) -> frozenset[str]:
    """The characters of `text` that need a glyph: not spaces, nor the invisible format
    controls (zero-width joiners, direction marks) that the shaper handles without one."""
    return frozenset(ch for ch in text if unicodedata.category(ch) not in ("Zs", "Cc", "Cf"))


def face_for(text: str, context: str = "") -> Face:
    """The preferred font holding every letter of `text`, else the one holding most of them
    (DejaVu Sans when none holds any). `context`, the whole caption, says which region's
    Han glyphs to use (Japanese when it holds kana)."""
    return _face_for(letters(text), _region(context or text))


def covered(face: Face) -> frozenset[int]:
    """The code points `face` has a glyph for (none if fontTools cannot read it)."""
    return _cmap(face.path, face.index)


def missing_font_note(text: str) -> str:
    """One line naming what to install when some letter of `text` has no font here, or ""."""
    missing = {ch for word in text.split() for ch in letters(word)
               if ord(ch) not in covered(face_for(word, text))}  # fmt: skip
    if not missing:
        return ""
    codes = sorted({scripts.script(ch) for ch in missing})
    names = [scripts.script_name(c) for c in codes if c not in _NO_SCRIPT]
    names += [f"U+{ord(ch):04X}" for ch in sorted(missing) if scripts.script(ch) in _NO_SCRIPT]
    packages = ["fonts-noto-core"] * any(c not in CJK_SCRIPTS for c in codes)
    packages += ["fonts-noto-cjk"] * any(c in CJK_SCRIPTS for c in codes)
    them = "it" if len(names) == 1 else "them"
    return (f"no font here draws {' or '.join(names)}: install {' and '.join(packages)} "
            f"(Debian) or another font with {them}")  # fmt: skip


def dejavu_sans() -> Face:
    """matplotlib's own copy of DejaVu Sans: there wherever matplotlib is."""
    import matplotlib

    return Face(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"))


def _region(text: str) -> str:
    found = {scripts.script(ch) for ch in text}
    return "JP" if found & {"Hira", "Kana"} else "KR" if "Hang" in found else "SC"


@functools.lru_cache(maxsize=4096)
def _face_for(wanted: frozenset[str], region: str) -> Face:
    points = {ord(ch) for ch in wanted}
    best, most = dejavu_sans(), -1
    for face in _candidates(_scripts_of(wanted), region):
        held = len(points & covered(face))
        if held == len(points):
            return face
        if held > most:
            best, most = face, held
    return best


def _scripts_of(wanted: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted({scripts.script(ch) for ch in wanted} - _NO_SCRIPT))


def _candidates(codes: tuple[str, ...], region: str):
    """Faces to try, best first; the system's many fonts only once the likely ones failed."""
    for code in codes:
        yield from _cjk_faces(region) if code in CJK_SCRIPTS else _noto_faces(code)
    yield dejavu_sans()
    yield from _noto_files("Sans")
    for path in _system_fonts():
        yield from (Face(path, index) for index in range(len(_face_names(path))))


def _noto_faces(code: str) -> tuple[Face, ...]:
    """Noto's regular faces for a script (Noto Sans Devanagari, then Noto Serif Devanagari...):
    Debian names each file after its script, so no font needs opening to find them."""
    return _noto_files(scripts.script_name(code).replace(" ", "").replace("_", ""))


@functools.cache
def _noto_files(name: str) -> tuple[Face, ...]:
    paths = [p for folder in NOTO_FOLDERS for p in glob.glob(f"{folder}/Noto*{name}-Regular.*")]
    # Noto Sans X before Noto Serif X, Noto Naskh X...: captions are set in sans elsewhere too.
    paths.sort(key=lambda p: (not Path(p).name.startswith("NotoSans"), Path(p).name))
    return tuple(Face(p) for p in paths)


@functools.cache
def _cjk_faces(region: str) -> tuple[Face, ...]:
    """Noto Sans CJK's proportional face for the region first, then the other regions', then
    Noto Serif CJK's."""
    faces = []
    for path in sorted(p for folder in NOTO_FOLDERS for p in glob.glob(f"{folder}/Noto*CJK*")
                       if "Regular" in Path(p).name):  # fmt: skip
        names = _face_names(path)
        for tag in _REGIONS[region]:
            faces += [Face(path, i) for i, n in enumerate(names)
                      if n.endswith(f" {tag}") and "Mono" not in n]  # fmt: skip
    return tuple(faces)


@functools.cache
def _face_names(path: str) -> tuple[str, ...]:
    """The family name of each face of a font file (one for a .ttf, several for a .ttc)."""
    from fontTools.ttLib import TTCollection, TTFont

    try:
        if Path(path).suffix.lower() in (".ttc", ".otc"):
            with TTCollection(path, lazy=True) as collection:
                return tuple(font["name"].getBestFamilyName() or "" for font in collection)
        with TTFont(path, lazy=True) as font:
            return (font["name"].getBestFamilyName() or "",)
    except Exception:  # fontTools raises many kinds for a file it cannot read: skip the file
        return ()


_FONT_FILES = (".ttf", ".otf", ".ttc", ".otc")  # what Pillow's FreeType and fontTools both read
_SHARED: dict[frozenset[int], frozenset[int]] = {}  # a collection's faces often share a cmap


@functools.cache
def _cmap(path: str, index: int) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=index, lazy=True) as font:
            points = frozenset(font.getBestCmap() or ())
    except Exception:  # as in _face_names: an unreadable font holds nothing
        points = frozenset()
    return _SHARED.setdefault(points, points)


@functools.cache
def _system_fonts() -> tuple[str, ...]:
    """Every TrueType and OpenType font matplotlib knows of, its own and the system's."""
    from matplotlib import font_manager

    found = {entry.fname for entry in font_manager.fontManager.ttflist}
    found.update(font_manager.findSystemFonts())
    # Not Last Resort (matplotlib ships LastResortHE): it maps every code point to a box
    # naming the script, a box all the same.
    return tuple(sorted(p for p in found if Path(p).suffix.lower() in _FONT_FILES
                        and "lastresort" not in Path(p).name.lower()))  # fmt: skip
