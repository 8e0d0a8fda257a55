"""What cleaning took from a dataset's captions, told before anything trains on them.

A caption that cleans to nothing, or keeps less than half of its letters, trains on what is
left: `extract` and `train` say how many there are, with the first places they were read, and
refuse a dataset where they are most of the captions (its text is not what cleaning expects:
another column, another encoding, captions of digits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from captioner.config import TextConfig
from captioner.data.cleaning import choose_tokenizer, letters, mostly_spaceless, tokenize
from captioner.data.datasets import Dataset, load_dataset
from captioner.errors import DataError

EXAMPLES = 3  # places named in the line


@dataclass
class CaptionCheck:
    """What cleaning did to a dataset's captions, with the tokenizer that applies."""

    tokenizer: str
    captions: int = 0
    empty: int = 0  # cleaned to no token at all
    lossy: int = 0  # kept less than half of their letters
    spaceless: int = 0  # mostly in scripts written without spaces
    examples: list[str] = field(default_factory=list)  # where the first of those were read

    def line(self) -> str | None:
        """One line on the captions that lost their words, and on spaceless captions split at
        spaces; None when there is nothing to say."""
        said = []
        if self.empty or self.lossy:
            said.append(f"{self.empty:,} of {self.captions:,} captions cleaned to nothing and "
                        f"{self.lossy:,} lost most of their letters (e.g. "
                        f"{', '.join(self.examples)}): cleaning keeps letters, drops words "
                        "holding digits and deletes punctuation and symbols")  # fmt: skip
        if self.tokenizer == "words" and 2 * self.spaceless > self.captions:
            said.append(f"{self.spaceless:,} of {self.captions:,} captions are in scripts "
                        "written without spaces but text.tokenizer is words: each run of them "
                        "is one token; text.tokenizer=characters (or auto) splits "
                        "them")  # fmt: skip
        return "; ".join(said) or None

    def refuse_if_most_lost(self, where) -> None:
        """DataError when most captions lost most of their text."""
        if 2 * (self.empty + self.lossy) > self.captions:
            raise DataError(f"{where}: {self.line()}; most captions lost their words: check "
                            "that the file holds the captions as UTF-8 text in its caption "
                            "column")  # fmt: skip


def checked_dataset(data_root, text: TextConfig, notes: Callable[[str], None] | None) -> Dataset:
    """The dataset at `data_root`, its captions checked (check_captions): what cleaning takes
    from them goes to `notes` in one line; a dataset whose captions it guts is refused."""
    dataset = load_dataset(data_root)
    said = check_captions(dataset, text).line()
    if notes and said:
        notes(said)
    return dataset


def check_captions(dataset: Dataset, text: TextConfig) -> CaptionCheck:
    """Counts the captions of every split that cleaning empties or guts, under the tokenizer
    `text.tokenizer` resolves to on the training captions; refuses (DataError) a dataset
    where they are most."""
    tokenizer = resolve_tokenizer(dataset, text)
    check = CaptionCheck(tokenizer)
    for name, captions in dataset.captions.items():
        for number, caption in enumerate(captions):
            _count(check, caption, tokenize(caption, tokenizer), dataset, name, number)
    check.refuse_if_most_lost(dataset.captions_file or dataset.root)
    return check


def _count(check: CaptionCheck, caption: str, tokens: list[str], dataset, name, number):
    check.captions += 1
    if caption.isascii():  # Flickr8k and COCO: only digits can go, and a digit is no letter
        before = sum(map(str.isalpha, caption))
    else:
        before = letters(caption)
        check.spaceless += mostly_spaceless(caption)
    after = sum(map(len, tokens))
    empty, lossy = not tokens, bool(tokens) and 2 * after < before
    check.empty += empty
    check.lossy += lossy
    if (empty or lossy) and len(check.examples) < EXAMPLES:
        check.examples.append(dataset.where(name, number))


def resolve_tokenizer(dataset: Dataset, text: TextConfig) -> str:
    """`text.tokenizer`, with `auto` decided on the training captions."""
    return choose_tokenizer(text.tokenizer, _train_captions(dataset))


def _train_captions(dataset: Dataset) -> Iterable[str]:
    return (c for name in dataset.splits["train"] for c in dataset.captions[name])
