"""Datasets in the three layouts captioning data comes in.

(a) Karpathy's split files (`caption_datasets.zip`): one `dataset_<name>.json`
    (`dataset_flickr8k.json`, `dataset_flickr30k.json`, `dataset_coco.json`) at the top of the
    dataset folder. Each image has a `filename` (its key here), a `split` and `sentences`, whose
    `raw` text is read (our own cleaning applies later, as for the other layouts). `val` is our
    dev split and `restval` joins train, as in the standard Karpathy split. Each photo is looked
    for in `<filepath>/` (COCO's `train2014/`, `val2014/`), then `Images/<filepath>/`, then
    `Images/` (or the original layout's photo folders), then beside the JSON.
(b) Original Flickr8k: `Flickr8k.token.txt` (lines `<image>#<n><TAB><caption>`) with the split
    files `Flickr_8k.{train,dev,test}Images.txt` beside it, either at the top of the dataset
    folder or in `Flickr8k_text/`, and the photos in `Flicker8k_Dataset/` (sic),
    `Flickr8k_Dataset/` or `Images/`.
(c) Kaggle, also the layout for your own photos: `Images/` and `captions.txt`, a CSV file with
    the header `image,caption`. It has no split files, so `kaggle_split` makes one.

When several are present, (a) wins: its splits are what papers since 2015 report on; then (b),
the official Flickr8k splits; then (c).
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from captioner.errors import DataError

SPLITS = ("train", "dev", "test")
_TEXT_DIRS = (".", "Flickr8k_text")
_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")
_TOKEN_FILE = "Flickr8k.token.txt"
_SPLIT_FILES = {s: f"Flickr_8k.{s}Images.txt" for s in SPLITS}
_KARPATHY_GLOB = "dataset_*.json"
# Karpathy's split names -> ours. restval (COCO's val2014 photos beyond his 5,000 val and 5,000
# test) trains, as everyone reporting on "the Karpathy split" does.
_KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "dev", "test": "test"}
# Kaggle split: the official Flickr8k sizes (1,000 dev and 1,000 test images), or an eighth of
# the images each for smaller folders; a fixed seed makes it the same on every machine.
_SPLIT_SEED = 8
_HELD_OUT_SIZE = 1000


@dataclass
class Dataset:
    """Captions (raw text) by image file name, the split lists, and where the photos are."""

    root: Path
    images_dir: Path  # the folder most photos are in
    layout: str
    captions: dict[str, list[str]]
    splits: dict[str, list[str]]
    missing_images: list[str] = field(default_factory=list)
    # Only photos outside images_dir (COCO's val2014/ when most are in train2014/), by name.
    paths_elsewhere: dict[str, Path] = field(default_factory=dict)
    # Where each caption was read: the captions file, and by image the line of each caption
    # (the Karpathy JSON: the image's index in its `images` list), for messages.
    captions_file: Path | None = None
    caption_lines: dict[str, list[int]] = field(default_factory=dict)

    def image_path(self, name: str) -> Path:
        return self.paths_elsewhere.get(name) or self.images_dir / name

    def where(self, name: str, number: int) -> str:
        """Where caption `number` of image `name` was read: `file:line`, or in a Karpathy JSON
        `file: images[i] (name) sentences[number]`."""
        lines = self.caption_lines.get(name)
        if self.captions_file is None or not lines:
            return f"{name} caption {number + 1}"
        if self.layout == "karpathy":
            return f"{self.captions_file}: images[{lines[0]}] ({name}) sentences[{number}]"
        return f"{self.captions_file}:{lines[number]}"


class KarpathyImage(NamedTuple):
    """One entry of a Karpathy JSON, checked; `split` is already ours (train, dev or test)."""

    name: str
    filepath: str  # "" when the entry has none
    split: str
    captions: list[str]


def load_dataset(root: str | Path) -> Dataset:
    """Reads a dataset folder in any of the three layouts; raises DataError with what it looked
    for."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    karpathy_file = find_karpathy_file(root)
    if karpathy_file is not None:
        return load_karpathy(karpathy_file, root)
    images_dir = next((root / d for d in _IMAGE_DIRS if (root / d).is_dir()), None)
    if images_dir is None:
        raise DataError(f"{root}: no image folder (looked for {', '.join(_IMAGE_DIRS)})")
    layout, path, captions, splits, lines = _read_text_layout(root)
    present = set(os.listdir(images_dir))
    missing = sorted(name for name in captions if name not in present)
    for name in missing:  # e.g. the token file's `2258277193_586949ec62.jpg.1`
        del captions[name]
    splits = {s: [n for n in names if n in captions] for s, names in splits.items()}
    return Dataset(root, images_dir, layout, captions, splits, missing, {}, path, lines)


def _read_text_layout(root: Path):
    """(layout, captions file, captions, splits, caption lines) of the original layout, else
    of the Kaggle one."""
    token_file = next(
        (root / d / _TOKEN_FILE for d in _TEXT_DIRS if (root / d / _TOKEN_FILE).is_file()), None
    )
    lines: dict[str, list[int]] = {}
    if token_file is not None:
        captions = read_token_file(token_file, lines)
        splits = {s: read_split_file(token_file.parent / f) for s, f in _SPLIT_FILES.items()}
        return "flickr8k", token_file, captions, splits, lines
    if (root / "captions.txt").is_file():
        captions = read_captions_csv(root / "captions.txt", lines)
        return "kaggle", root / "captions.txt", captions, kaggle_split(sorted(captions)), lines
    raise DataError(
        f"{root}: no captions found (looked for {_KARPATHY_GLOB} and captions.txt in {root}, and "
        f"for {_TOKEN_FILE} in {root} and {root / 'Flickr8k_text'})"
    )


def find_karpathy_file(root: Path) -> Path | None:
    """The folder's one `dataset_*.json`; None if it has none, DataError if it has several."""
    found = sorted(p for p in root.glob(_KARPATHY_GLOB) if p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(
            f"{root}: several Karpathy split files ({names}); keep the one for these photos"
        )
    return found[0] if found else None


def load_karpathy(path: Path, root: Path) -> Dataset:
    """The dataset a Karpathy JSON describes, with each photo found where it is."""
    images = read_karpathy_json(path)
    folders = find_photo_folders(root, images)
    if not folders:
        raise DataError(
            f"{path}: none of its {len(images)} photos found (looked in {root}, in "
            f"{', '.join(_IMAGE_DIRS)} there, and in each image's filepath folder)"
        )
    # The folder most photos are in; reports and scripts build paths from it.
    images_dir = Counter(folders.values()).most_common(1)[0][0]
    captions, splits, lines = {}, {s: [] for s in SPLITS}, {}
    for index, image in enumerate(images):
        if image.name in folders:
            captions[image.name] = image.captions
            splits[image.split].append(image.name)
            lines[image.name] = [index]
    elsewhere = {n: f / n for n, f in folders.items() if f != images_dir}
    missing = [image.name for image in images if image.name not in folders]
    return Dataset(root, images_dir, "karpathy", captions, splits, sorted(missing), elsewhere,
                   path, lines)  # fmt: skip


def find_photo_folders(root: Path, images: list[KarpathyImage]) -> dict[str, Path]:
    """The folder each photo is in, by name; photos found nowhere are left out. Each folder is
    listed once (COCO has 123,287 photos in two folders: no stat call per photo)."""
    listings: dict[Path, set[str]] = {}
    candidates: dict[str, list[tuple[Path, set[str]]]] = {}  # by filepath
    found = {}
    for image in images:
        if image.filepath not in candidates:
            folders = _candidate_folders(root, image.filepath)
            for folder in folders:
                if folder not in listings:
                    listings[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
            candidates[image.filepath] = [(folder, listings[folder]) for folder in folders]
        for folder, names in candidates[image.filepath]:
            if image.name in names:
                found[image.name] = folder
                break
    return found


def _candidate_folders(root: Path, filepath: str) -> list[Path]:
    """Where a photo may be, the most specific folder first."""
    photo_dirs = [root / d for d in _IMAGE_DIRS]
    nested = [root / filepath] + [d / filepath for d in photo_dirs] if filepath else []
    return nested + photo_dirs + [root]


def read_karpathy_json(path: Path) -> list[KarpathyImage]:
    """Karpathy's `{"images": [{"filename", "split", "sentences": [{"raw"}]}]}`, checked; a
    wrong entry is a DataError naming it (`images[<index>] (<filename>)`)."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected an object with an 'images' list (Karpathy's schema)")
    images = [_karpathy_image(path, index, entry) for index, entry in enumerate(entries)]
    first_index: dict[str, int] = {}
    for index, image in enumerate(images):
        if image.name in first_index:  # features and captions are keyed by file name
            raise DataError(
                f"{path}: images[{index}] ({image.name}): the same filename as "
                f"images[{first_index[image.name]}]; each image needs its own"
            )
        first_index[image.name] = index
    return images


def _karpathy_image(path: Path, index: int, entry) -> KarpathyImage:
    """One `images` entry, checked, with its split in our names and its `raw` captions."""
    where = f"{path}: images[{index}]"
    name = entry.get("filename") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: no 'filename'")
    where += f" ({name})"
    if "split" not in entry:
        raise DataError(f"{where}: no 'split'")
    split = entry["split"]
    if not isinstance(split, str) or split not in _KARPATHY_SPLITS:
        raise DataError(f"{where}: unknown split {split!r} (expected train, val, test or restval)")
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise DataError(f"{where}: no 'sentences' (expected a non-empty list)")
    captions = []
    for number, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str):
            raise DataError(f"{where}: sentences[{number}] has no 'raw' text")
        captions.append(raw.strip())
    filepath = entry.get("filepath") or ""
    if not isinstance(filepath, str):
        raise DataError(f"{where}: 'filepath' is not a folder name")
    return KarpathyImage(name, filepath, _KARPATHY_SPLITS[split], captions)


def read_token_file(path: Path, lines: dict[str, list[int]] | None = None) -> dict[str, list[str]]:
    """`<image>#<n><TAB><caption>` lines -> {image: [captions]}; blank lines are skipped.
    `lines`, if given, receives {image: [line number of each caption]}."""
    lines = {} if lines is None else lines
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
        lines.setdefault(name, []).append(number)
    return captions


def read_captions_csv(
    path: Path, lines: dict[str, list[int]] | None = None
) -> dict[str, list[str]]:
    """Kaggle `image,caption` CSV -> {image: [captions]}; unquoted commas stay in the caption.
    `lines`, if given, receives {image: [line number of each caption]}."""
    lines = {} if lines is None else lines
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
        lines.setdefault(row[0].strip(), []).append(number)
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
    return _read_text(path).removesuffix("\n").split("\n")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
