"""Both dataset layouts, the orphan token-file id, the Kaggle split, and bad input."""

from __future__ import annotations

import pytest

from captioner.data import kaggle_split, load_dataset
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
