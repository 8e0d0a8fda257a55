"""Caption text: the vocabulary, and ids for teacher forcing (cleaning and tokens in any
script: captioner.data.cleaning).

Special tokens are defined once here and compared by id everywhere else.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from captioner.data.cleaning import clean_caption, join_tokens, tokenize
from captioner.errors import RunError
from captioner.files import what_is_wrong, write_atomic

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(4)

_FORMAT = "captioner-vocabulary/1"
__all__ = ["Vocabulary", "build_vocabulary", "clean_caption", "teacher_forcing_arrays"]


class Vocabulary:
    """Token <-> id mapping; ids 0..3 are <pad>, <start>, <end>, <unk>. `tokenizer` says how
    captions become its tokens (`words` or `characters`, captioner.data.cleaning); files
    written before it existed hold words."""

    def __init__(self, words: Iterable[str], min_word_count: int = 1, tokenizer: str = "words"):
        self.words = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.min_word_count = min_word_count
        self.tokenizer = tokenizer
        self.ids = {word: index for index, word in enumerate(self.words)}

    def tokenize(self, caption: str) -> list[str]:
        """A raw caption as this vocabulary's tokens (cleaned; not yet ids)."""
        return tokenize(caption, self.tokenizer)

    def join(self, tokens: Iterable[str]) -> str:
        """Tokens as a caption, written the way their script is (no spaces between Han
        characters)."""
        return join_tokens(tokens, self.tokenizer)

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
        data = {"format": _FORMAT, "min_word_count": self.min_word_count,
                "tokenizer": self.tokenizer, "words": self.words}  # fmt: skip
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
        tokenizer = data.get("tokenizer", "words")
        if tokenizer not in ("words", "characters"):
            raise RunError(f"{path}: unknown tokenizer {tokenizer!r}: {advice}")
        return cls(words[len(SPECIAL_TOKENS) :], data.get("min_word_count", 1), tokenizer)


def build_vocabulary(
    captions: Iterable[list[str]], min_word_count: int, tokenizer: str = "words"
) -> Vocabulary:
    """Tokens seen at least `min_word_count` times, most frequent first (ties in code point
    order); `captions` are already tokens, made by `tokenizer`."""
    counts = Counter(word for words in captions for word in words)
    kept = [w for w, n in counts.items() if n >= min_word_count]
    kept.sort(key=lambda word: (-counts[word], word))
    return Vocabulary(kept, min_word_count, tokenizer)


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
