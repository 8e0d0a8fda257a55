"""Datasets in the two layouts users download Flickr8k in.

(a) Original: `Flickr8k.token.txt` (lines `<image>#<n><TAB><caption>`) with the split files
    `Flickr_8k.{train,dev,test}Images.txt` beside it, either at the top of the dataset folder or
    in `Flickr8k_text/`, and the photos in `Flicker8k_Dataset/` (sic), `Flickr8k_Dataset/` or
    `Images/`.
(b) Kaggle, also the layout for your own photos: `Images/` and `captions.txt`, a CSV file with
    the header `image,caption`. It has no split files, so `kaggle_split` makes one.

When both are present, (a) wins: its splits are the official ones papers report on.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

from captioner.errors import DataError

SPLITS = ("train", "dev", "test")
_TEXT_DIRS = (".", "Flickr8k_text")
_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")
_TOKEN_FILE = "Flickr8k.token.txt"
_SPLIT_FILES = {s: f"Flickr_8k.{s}Images.txt" for s in SPLITS}
# Kaggle split: the official Flickr8k sizes (1,000 dev and 1,000 test images), or an eighth of
# the images each for smaller folders; a fixed seed makes it the same on every machine.
_SPLIT_SEED = 8
_HELD_OUT_SIZE = 1000


@dataclass
class Dataset:
    """Captions (raw text) by image file name, the split lists, and where the photos are."""

    root: Path
    images_dir: Path
    layout: str
    captions: dict[str, list[str]]
    splits: dict[str, list[str]]
    missing_images: list[str] = field(default_factory=list)

    def image_path(self, name: str) -> Path:
        return self.images_dir / name


def load_dataset(root: str | Path) -> Dataset:
    """Reads a dataset folder in either layout; raises DataError with what it looked for."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    images_dir = next((root / d for d in _IMAGE_DIRS if (root / d).is_dir()), None)
    if images_dir is None:
        raise DataError(f"{root}: no image folder (looked for {', '.join(_IMAGE_DIRS)})")
    token_file = next(
        (root / d / _TOKEN_FILE for d in _TEXT_DIRS if (root / d / _TOKEN_FILE).is_file()), None
    )
    if token_file is not None:
        captions = read_token_file(token_file)
        splits = {s: read_split_file(token_file.parent / f) for s, f in _SPLIT_FILES.items()}
        layout = "flickr8k"
    elif (root / "captions.txt").is_file():
        captions = read_captions_csv(root / "captions.txt")
        splits = kaggle_split(sorted(captions))
        layout = "kaggle"
    else:
        raise DataError(
            f"{root}: no captions found (looked for {_TOKEN_FILE} in {root} and "
            f"{root / 'Flickr8k_text'}, and for captions.txt in {root})"
        )
    present = {p.name for p in images_dir.iterdir()}
    missing = sorted(name for name in captions if name not in present)
    for name in missing:  # e.g. the token file's `2258277193_586949ec62.jpg.1`
        del captions[name]
    splits = {s: [n for n in names if n in captions] for s, names in splits.items()}
    return Dataset(root, images_dir, layout, captions, splits, missing)


def read_token_file(path: Path) -> dict[str, list[str]]:
    """`<image>#<n><TAB><caption>` lines -> {image: [captions]}; blank lines are skipped."""
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_sign, _ = key.rpartition("#")
        name = name.strip()
        if not tab or not hash_sign or not name:
            raise DataError(f"{path}:{number}: expected '<image>#<n><TAB><caption>'")
        captions.setdefault(name, []).append(caption.strip())
    return captions


def read_captions_csv(path: Path) -> dict[str, list[str]]:
    """Kaggle `image,caption` CSV -> {image: [captions]}; unquoted commas stay in the caption."""
    rows = csv.reader(_read_lines(path))
    header = _next_row(path, rows)
    if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
        raise DataError(f"{path}:1: expected the header 'image,caption'")
    captions: dict[str, list[str]] = {}
    while (row := _next_row(path, rows)) is not None:
        number = rows.line_num
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip():
            raise DataError(f"{path}:{number}: expected '<image>,<caption>'")
        captions.setdefault(row[0].strip(), []).append(",".join(row[1:]).strip())
    return captions


def _next_row(path: Path, rows) -> list[str] | None:
    """The next CSV record, None at the end; a record must end on the line it starts on (a
    caption has no line breaks: a quote that runs on would swallow the captions after it)."""
    first = rows.line_num + 1
    try:
        row = next(rows, None)
    except csv.Error as error:  # "field larger than field limit (131072)"
        hint = "; is a quote opened here never closed?" if rows.line_num > first else ""
        raise DataError(f"{path}:{first}: {error}{hint}") from None
    if row is not None and rows.line_num > first:
        raise DataError(
            f"{path}:{first}: a quote opened here runs on to line {rows.line_num} "
            "(each caption must be on one line)"
        )
    return row


def read_split_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split file not found (the Flickr8k layout needs all three)")
    return [line.strip() for line in _read_lines(path) if line.strip()]


def kaggle_split(names: list[str]) -> dict[str, list[str]]:
    """Shuffles the sorted names with a fixed seed: dev, then test, then the rest for training."""
    names = list(names)
    random.Random(_SPLIT_SEED).shuffle(names)
    held_out = min(_HELD_OUT_SIZE, max(1, len(names) // 8))
    return {
        "dev": sorted(names[:held_out]),
        "test": sorted(names[held_out : 2 * held_out]),
        "train": sorted(names[2 * held_out :]),
    }


def _read_lines(path: Path) -> list[str]:
    r"""The lines as editors number them: split at line breaks only (\n, \r\n, \r), not at the
    other characters str.splitlines() splits at (\x0b, \x0c, \x1c-\x1e, \x85, \u2028...)."""
    try:
        return path.read_text(encoding="utf-8-sig").removesuffix("\n").split("\n")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
