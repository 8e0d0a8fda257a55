"""Caption text: cleaning, the vocabulary, and ids for teacher forcing.

Special tokens are defined once here and compared by id everywhere else.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from captioner.errors import RunError
from captioner.files import what_is_wrong, write_atomic

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(4)

_FORMAT = "captioner-vocabulary/1"
# Deleting (not spacing out) punctuation keeps "t-shirt" and "don't" as one word each.
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_caption(caption: str) -> list[str]:
    """Lower-cases, deletes punctuation and drops words holding digits; keeps "a" and "i"."""
    words = caption.lower().translate(_DELETE_PUNCTUATION).split()
    return [word for word in words if word.isalpha()]


class Vocabulary:
    """Word <-> id mapping; ids 0..3 are <pad>, <start>, <end>, <unk>."""

    def __init__(self, words: Iterable[str], min_word_count: int = 1):
        self.words = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.min_word_count = min_word_count
        self.ids = {word: index for index, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: Iterable[str]) -> list[int]:
        return [self.ids.get(word, UNK_ID) for word in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first <end>, skipping <pad> and <start>."""
        words = []
        for index in ids:
            index = int(index)
            if index == END_ID:
                break
            if index not in (PAD_ID, START_ID):
                words.append(self.words[index])
        return words

    def save(self, path: str | Path) -> None:
        data = {"format": _FORMAT, "min_word_count": self.min_word_count, "words": self.words}
        write_atomic(path, json.dumps(data, indent=0).encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        label, advice = "a captioner vocabulary", "copy it again or retrain"
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            wrong = what_is_wrong(path, "json", label) or f"cannot be read ({error})"
            raise RunError(f"{path}: {wrong}: {advice}") from None
        whole = isinstance(data, dict) and data.get("format") == _FORMAT
        if not (whole and isinstance(data.get("words"), list)):
            raise RunError(f"{path}: not {label}: {advice}")
        words = data["words"]
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise RunError(f"{path}: the special tokens are not in their places: {advice}")
        return cls(words[len(SPECIAL_TOKENS) :], data.get("min_word_count", 1))


def build_vocabulary(captions: Iterable[list[str]], min_word_count: int) -> Vocabulary:
    """Words seen at least `min_word_count` times, most frequent first (ties alphabetical)."""
    counts = Counter(word for words in captions for word in words)
    kept = [w for w, n in counts.items() if n >= min_word_count]
    kept.sort(key=lambda word: (-counts[word], word))
    return Vocabulary(kept, min_word_count)


def teacher_forcing_arrays(
    captions: list[list[int]], max_words: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs `<start> w1..wn` and targets `w1..wn <end>`, right-padded with <pad> (id 0).

    Returns two int32 arrays of shape (len(captions), max_words + 1).
    """
    inputs = np.zeros((len(captions), max_words + 1), np.int32)
    targets = np.zeros_like(inputs)
    for row, ids in enumerate(captions):
        put_teacher_forcing_row(inputs, targets, row, ids)
    return inputs, targets


def put_teacher_forcing_row(inputs: np.ndarray, targets: np.ndarray, row: int, ids) -> None:
    """Writes one caption's ids into row `row` of teacher_forcing_arrays' two arrays (cut to
    their max_words): a caption at a time, so a million captions need no list of lists."""
    ids = list(ids)[: inputs.shape[1] - 1]
    inputs[row, : len(ids) + 1] = [START_ID, *ids]
    targets[row, : len(ids) + 1] = [*ids, END_ID]
