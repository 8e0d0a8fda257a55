"""A small synthetic captioning dataset: two coloured shapes, one above the other.

Captions such as "a red circle above a blue square" come in five paraphrases per image; with
4 colours x 3 shapes for each of two objects, a caption that ignores the image scores badly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 230, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZE = 32


def draw(top: tuple[str, str], bottom: tuple[str, str]) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    for (colour, shape), y in ((top, 1), (bottom, SIZE // 2 + 1)):
        box = (SIZE // 4, y, SIZE // 4 + 13, y + 13)
        fill = COLOURS[colour]
        if shape == "circle":
            pen.ellipse(box, fill=fill)
        elif shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon(
                [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill
            )
    return image


def captions_for(top: tuple[str, str], bottom: tuple[str, str]) -> list[str]:
    a, b = " ".join(top), " ".join(bottom)
    return [
        f"A {a} above a {b}.",
        f"a {a} is above a {b}",
        f"There is a {a} above a {b} .",
        f"A {b} below a {a}.",
        f"a {b} is below a {a}",
    ]


# The same captions in Chinese (written without spaces, with "。") and in Hindi (letters with
# vowel signs, "।"), for the text stage in other scripts: colour and shape words, then five
# paraphrases of "A above B".
WORDS_IN = {
    "zh": {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
           "circle": "圆形", "square": "方块", "triangle": "三角形"},
    "hi": {"red": "लाल", "green": "हरा", "blue": "नीला", "yellow": "पीला",
           "circle": "वृत्त", "square": "वर्ग", "triangle": "त्रिभुज"},
    "ar": {"red": "أحمر", "green": "أخضر", "blue": "أزرق", "yellow": "أصفر",
           "circle": "دائرة", "square": "مربع", "triangle": "مثلث"},
}  # fmt: skip
_FEMININE = {"red": "حمراء", "green": "خضراء", "blue": "زرقاء", "yellow": "صفراء"}
TEMPLATES_IN = {
    "zh": ["一个{a}在一个{b}上面。", "{a}位于{b}的上方", "有一个{a}在{b}上方。",
           "一个{b}在一个{a}下面。", "{b}位于{a}的下方"],
    "hi": ["एक {a} एक {b} के ऊपर है।", "{a} {b} के ऊपर है", "एक {a} है, {b} के ऊपर।",
           "एक {b} एक {a} के नीचे है।", "{b} {a} के नीचे है"],
    "ar": ["{a} فوق {b}.", "يوجد {a} فوق {b}", "هناك {a} فوق {b}.", "{b} تحت {a}.",
           "{b} أسفل {a}"],
}  # fmt: skip


def captions_in(language: str, top: tuple[str, str], bottom: tuple[str, str]) -> list[str]:
    """captions_for's five captions in `language` (zh, hi or ar: in Arabic the shape comes
    first, and the colour agrees with the feminine دائرة)."""
    words = WORDS_IN[language]
    space = "" if language == "zh" else " "
    if language == "ar":
        a, b = (f"{words[shape]} {_FEMININE[colour] if shape == 'circle' else words[colour]}"
                for colour, shape in (top, bottom))  # fmt: skip
    else:
        a, b = (space.join(words[w] for w in pair) for pair in (top, bottom))
    return [template.format(a=a, b=b) for template in TEMPLATES_IN[language]]


def make_examples(count: int, seed: int = 0, language: str = "en"
                  ) -> list[tuple[str, Image.Image, list[str]]]:  # fmt: skip
    """`count` photos with their five captions (English, or zh / hi as in captions_in)."""
    rng = np.random.RandomState(seed)
    examples = []
    for index in range(count):
        top = (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))
        bottom = (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))
        captions = captions_for(top, bottom) if language == "en" else captions_in(
            language, top, bottom)  # fmt: skip
        examples.append((f"{1000 + index}_shapes.jpg", draw(top, bottom), captions))
    return examples


def write_kaggle(root: Path, examples) -> Path:
    """Images/ and captions.txt (CSV with header; captions with commas are quoted)."""
    (root / "Images").mkdir(parents=True)
    lines = ["image,caption"]
    for name, image, captions in examples:
        image.save(root / "Images" / name, quality=95)
        lines += [f"{name},{caption}" for caption in captions]
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_flickr8k(root: Path, examples, splits: dict[str, list[str]]) -> Path:
    """Flicker8k_Dataset/ and Flickr8k_text/ with the token file and the three split files."""
    (root / "Flicker8k_Dataset").mkdir(parents=True)
    text = root / "Flickr8k_text"
    text.mkdir()
    lines = []
    for name, image, captions in examples:
        image.save(root / "Flicker8k_Dataset" / name, quality=95)
        lines += [f"{name}#{i}\t{caption}" for i, caption in enumerate(captions)]
    # The real token file has captions for an id with no image; loaders must tolerate it.
    lines.append("2258277193_586949ec62.jpg.1#0\tpeople waiting for the subway")
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split, names in splits.items():
        (text / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    return root


def write_karpathy(root: Path, examples, splits: dict[str, list[str]], filepaths=None) -> Path:
    """dataset_flickr8k.json in Karpathy's schema, and the photos in Images/, or in
    <root>/<filepath>/ for the names `filepaths` maps to one (COCO's train2014/, val2014/).
    `splits` uses Karpathy's names (train, val, test, restval); examples in none are left out."""
    filepaths = filepaths or {}
    split_of = {name: split for split, names in splits.items() for name in names}
    entries = []
    for name, image, captions in examples:
        if name not in split_of:
            continue
        folder = root / filepaths.get(name, "Images")
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / name, quality=95)
        sentences = [{"raw": c, "tokens": c.lower().rstrip(" .").split()} for c in captions]
        entry = {"filename": name, "split": split_of[name], "sentences": sentences}
        if name in filepaths:
            entry["filepath"] = filepaths[name]
        entries.append(entry)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_flickr8k.json").write_text(
        json.dumps({"images": entries, "dataset": "flickr8k"}, indent=1)
    )
    return root
