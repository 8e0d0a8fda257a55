"""Both dataset layouts, the orphan token-file id, the Kaggle split, and bad input (also random)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner.data.datasets import (
    kaggle_split,
    load_dataset,
    read_captions_csv,
    read_split_file,
    read_token_file,
)
from captioner.errors import DataError
from tests.conftest import DEV, TEST, TRAIN


def test_flickr8k_layout_uses_official_splits_and_drops_the_orphan_id(flickr8k_data, examples):
    dataset = load_dataset(flickr8k_data)
    assert dataset.layout == "flickr8k"
    assert dataset.images_dir.name == "Flicker8k_Dataset"
    assert {s: len(n) for s, n in dataset.splits.items()} == {
        "train": TRAIN,
        "dev": DEV,
        "test": TEST,
    }
    assert dataset.missing_images == ["2258277193_586949ec62.jpg.1"]
    name, _, captions = examples[0]
    assert dataset.captions[name] == [c.strip() for c in captions]


def test_kaggle_layout_reads_quoted_captions_and_makes_a_deterministic_split(tmp_path, examples):
    from tests.synthetic import write_kaggle

    root = write_kaggle(tmp_path / "k", examples[:16])
    with open(root / "captions.txt", "a") as file:
        file.write(f'{examples[0][0]},"A caption, with a comma ."\n')
    dataset = load_dataset(root)
    assert dataset.layout == "kaggle"
    assert dataset.captions[examples[0][0]][-1] == "A caption, with a comma ."
    assert {s: len(n) for s, n in dataset.splits.items()} == {"train": 12, "dev": 2, "test": 2}
    assert dataset.splits == load_dataset(root).splits
    assert set().union(*dataset.splits.values()) == set(dataset.captions)


def test_kaggle_split_has_the_flickr8k_sizes_for_flickr8k():
    names = [f"{i}.jpg" for i in range(8091)]
    split = kaggle_split(names)
    assert (len(split["dev"]), len(split["test"]), len(split["train"])) == (1000, 1000, 6091)
    assert not set(split["dev"]) & set(split["test"])


def test_missing_folder_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "Images").mkdir()
    with pytest.raises(DataError, match="no captions found"):
        load_dataset(tmp_path)
    (tmp_path / "Images").rmdir()
    with pytest.raises(DataError, match="no image folder"):
        load_dataset(tmp_path)


def test_bad_lines_are_reported_with_file_and_line(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog .\nb.jpg A cat\n")
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'Flickr8k.token.txt'}:2: expected '<image>#<n><TAB><caption>'"
    )
    (tmp_path / "Flickr8k.token.txt").unlink()
    (tmp_path / "captions.txt").write_text("file,text\na.jpg,A dog\n")
    with pytest.raises(DataError, match=r"captions.txt:1: expected the header 'image,caption'"):
        load_dataset(tmp_path)


def test_a_quote_that_runs_on_is_an_error_where_it_opens(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text('image,caption\na.jpg,A dog .\nb.jpg,"A cat\nc.jpg,A "bird"\nd.jpg,A fish\n')
    with pytest.raises(DataError) as error:
        read_captions_csv(path)
    assert str(error.value) == (
        f"{path}:3: a quote opened here runs on to line 4 (each caption must be on one line)"
    )
    path.write_text('image,caption\na.jpg,"A dog\n' + "b.jpg,A cat .\n" * 20_000)
    with pytest.raises(DataError) as error:  # csv gives up on fields over 131,072 characters
        read_captions_csv(path)
    assert str(error.value) == (
        f"{path}:2: field larger than field limit (131072); is a quote opened here never closed?"
    )


def test_lines_are_numbered_as_editors_number_them(tmp_path):
    r"""Only \n, \r\n and \r end a line: str.splitlines() also split at \x0c, \x85, ..., so a
    caption holding one was cut in two and reported on a line the file does not have. Names
    lose the spaces around them, as in the CSV."""
    path = tmp_path / "token.txt"
    path.write_text("a.jpg#0\tA dog\x0c .\r\n b.jpg #1\tA cat\u2028 .\rc.jpg\n", newline="")
    with pytest.raises(DataError, match=r"token\.txt:3: expected"):
        read_token_file(path)
    path.write_text("a.jpg#0\tA dog\x0c .\r\n b.jpg #1\tA cat\u2028 .\n", newline="")
    assert read_token_file(path) == {"a.jpg": ["A dog\x0c ."], "b.jpg": ["A cat\u2028 ."]}


# Property tests: whatever the lines, a reader returns captions or raises a DataError that says
# where (`<path>:<line>: `, or `<path>: ` for a file that is not UTF-8), never anything else.
LINE_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\ufeff"))
NAME = LINE_TEXT.filter(lambda s: s.strip() and "\t" not in s)
ODD_LINES = [
    "", " ", "\t", "#", "#\t", "#0\tA dog .", " #0\tA dog .", "a.jpg#0", "a.jpg\tA dog .",
    '"', 'a.jpg,"A dog', '"a.jpg', ",A dog", "a.jpg,", "image,caption", "\x00", "a.jpg,\x00",
    "a\x0bb.jpg#0\tc\x85d\u2028e", "\x1c\x1d\x1e\x0c",
]  # fmt: skip


def token_line(draw) -> str:
    return f"{draw(NAME)}#{draw(st.integers(0, 9))}\t{draw(LINE_TEXT)}"


def csv_line(draw) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([draw(NAME), draw(LINE_TEXT)])
    return buffer.getvalue().removesuffix("\r\n")


@st.composite
def caption_files(draw, good_line) -> bytes:
    """Lines well formed, odd or random, joined by \n or \r\n; sometimes bytes not UTF-8."""
    line = st.one_of(st.builds(good_line, st.just(draw)), st.sampled_from(ODD_LINES), LINE_TEXT)
    lines = draw(st.lists(line, max_size=8))
    content = draw(st.sampled_from(["\n", "\r\n"])).join(lines).encode()
    if draw(st.booleans()) and content:
        content = content[: draw(st.integers(0, len(content)))] + draw(st.binary(max_size=4))
    return content


def lines_of(content: bytes) -> list[str]:
    """The lines as an editor shows them: split at \n, \r\n or \r only."""
    return content.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n").split("\n")


def check_reader(read, path: Path, content: bytes, header: str = ""):
    """Runs `read` on `content` (after `header`); checks the outcome and where errors point."""
    path.write_bytes(header.encode() + content)
    try:
        result = read(path)
    except DataError as error:
        message = str(error)
        try:
            lines = lines_of(header.encode() + content)
        except UnicodeDecodeError:
            assert message.startswith(f"{path}: not UTF-8 text ("), message
            return
        where = re.match(rf"{re.escape(str(path))}:(\d+): ", message)
        assert where, message  # a file of text: the error names its line
        number = int(where[1])
        assert 1 <= number <= len(lines), message
        if number > 1:  # the lines before it are fine
            path.write_text("\n".join(lines[: number - 1]) + "\n", encoding="utf-8")
            read(path)
        return
    if isinstance(result, dict):  # captions by image
        assert all(name.strip() == name and name for name in result), result
        assert all(isinstance(c, str) for captions in result.values() for c in captions)
    else:
        assert all(isinstance(name, str) and name.strip() == name and name for name in result)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(content=caption_files(token_line))
def test_token_file_lines_give_captions_or_an_error_at_their_line(tmp_path_factory, content):
    check_reader(read_token_file, tmp_path_factory.getbasetemp() / "token.txt", content)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(content=caption_files(csv_line))
def test_csv_lines_give_captions_or_an_error_at_their_line(tmp_path_factory, content):
    path = tmp_path_factory.getbasetemp() / "captions.txt"
    check_reader(read_captions_csv, path, content, header="image,caption\n")
    check_reader(read_captions_csv, path, content)  # the header may be what is broken


@settings(max_examples=200, deadline=None, derandomize=True)
@given(content=caption_files(token_line))
def test_split_files_give_names_or_say_the_file_is_not_text(tmp_path_factory, content):
    check_reader(read_split_file, tmp_path_factory.getbasetemp() / "split.txt", content)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(rows=st.lists(st.tuples(NAME, st.integers(0, 9), LINE_TEXT), max_size=8))
def test_well_formed_lines_are_read_back_whatever_their_text(tmp_path_factory, rows):
    """Captions may hold any character but a line break: \x0b, \x85 or \u2028 too."""
    expected: dict[str, list[str]] = {}
    for name, _, caption in rows:
        expected.setdefault(name.strip(), []).append(caption.strip())
    path = tmp_path_factory.getbasetemp() / "token.txt"
    path.write_text("".join(f"{n}#{i}\t{c}\n" for n, i, c in rows), encoding="utf-8")
    assert read_token_file(path) == expected
    buffer = io.StringIO()
    csv.writer(buffer).writerows([("image", "caption"), *((n, c) for n, _, c in rows)])
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    assert read_captions_csv(path) == expected
    path.write_text("".join(f"{n}\n" for n, _, _ in rows), encoding="utf-8")
    assert read_split_file(path) == [n.strip() for n, _, _ in rows]
