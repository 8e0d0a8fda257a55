"""Flickr8k's captions written in another script, word for word, to test the text stage.

Each English word (as captioner cleans it) becomes one word of the other script, by a map that
keeps the words' sorted order, so the vocabulary built from the copy has the same ids in the
same order (ties between equally frequent words break the same way). Trained with the same
settings and seed, the copy must give the English run's scores to the digit: any difference is
a word that the text stage lost, split or merged.

  han         one Han character per word, no spaces, "。" at the end: a script written
              without spaces (text.tokenizer auto -> characters, one token per character)
  devanagari  one Devanagari word per word, two syllables of consonant + vowel sign, spaces
              between, "।" at the end: a script whose letters carry combining marks (auto ->
              words)

The copy is written in the original Flickr8k layout (the official splits, the photos linked,
not copied) into --out:

  python scripts/flickr8k_in_other_scripts.py --data ../shared/flickr8k --script han \\
      --out data/flickr8k-han
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

from captioner.data.cleaning import clean_caption
from captioner.data.datasets import SPLITS, load_dataset

HAN_FIRST = 0x4E00  # CJK Unified Ideographs: 20,992 characters, every one a Han letter
# Consonants and vowel signs in code point order: syllables built from them in this order
# sort as their numbers do.
DEVANAGARI_CONSONANTS = [chr(c) for c in range(0x0915, 0x0939 + 1)]  # क .. ह
DEVANAGARI_SIGNS = ["\u093e", "\u093f", "\u0940", "\u0941", "\u0942", "\u0947"]  # ा ि ी ु ू े
ENDINGS = {"han": "。", "devanagari": " ।"}


def han_words(count: int) -> list[str]:
    return [chr(HAN_FIRST + index) for index in range(count)]


def devanagari_words(count: int) -> list[str]:
    """Two-syllable words, each syllable a consonant and a vowel sign, in sorted order."""
    syllables = [c + s for c in DEVANAGARI_CONSONANTS for s in DEVANAGARI_SIGNS]
    words = ["".join(pair) for pair in itertools.product(syllables, repeat=2)]
    if count > len(words):
        raise SystemExit(f"{count} words: more than the {len(words)} this map can write")
    return words[:count]


def word_map(captions: list[str], script: str) -> dict[str, str]:
    """Every cleaned English word -> its word in `script`, order kept."""
    english = sorted({word for caption in captions for word in clean_caption(caption)})
    other = han_words(len(english)) if script == "han" else devanagari_words(len(english))
    assert sorted(other) == other, "the map must keep the words' order"
    return dict(zip(english, other))


def write_copy(data: Path, out: Path, script: str) -> int:
    """The dataset at `data` with its captions in `script`, in the original layout at `out`;
    returns the number of captions written."""
    dataset = load_dataset(data)
    every = [c for captions in dataset.captions.values() for c in captions]
    mapping = word_map(every, script)
    space = "" if script == "han" else " "
    text = out / "Flickr8k_text"
    text.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, captions in dataset.captions.items():
        for number, caption in enumerate(captions):
            words = [mapping[word] for word in clean_caption(caption)]
            lines.append(f"{name}#{number}\t{space.join(words)}{ENDINGS[script]}")
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split in SPLITS:
        names = "\n".join(dataset.splits[split]) + "\n"
        (text / f"Flickr_8k.{split}Images.txt").write_text(names, encoding="utf-8")
    photos = out / "Images"
    if not photos.exists():
        os.symlink(dataset.images_dir.resolve(), photos, target_is_directory=True)
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="Flickr8k, any layout")
    parser.add_argument("--script", required=True, choices=sorted(ENDINGS))
    parser.add_argument("--out", required=True, type=Path, help="the copy's folder")
    args = parser.parse_args()
    count = write_copy(args.data, args.out, args.script)
    print(f"{count} captions in {args.script} -> {args.out}")


if __name__ == "__main__":
    main()
