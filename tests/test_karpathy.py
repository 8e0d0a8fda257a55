"""Karpathy's dataset_*.json layout: its splits, COCO's filepath folders, precedence over the
other layouts, one-line errors for a broken file, and the CLI on such a folder."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.cli import cli
from captioner.data.datasets import load_dataset
from captioner.errors import DataError
from tests.conftest import DEV, TEST, TINY_ENCODER, TRAIN, score_names
from tests.synthetic import write_flickr8k, write_karpathy

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_karpathy_json.py"


def karpathy_splits(names: list[str]) -> dict[str, list[str]]:
    """The conftest's split in Karpathy's names: dev is val."""
    return {
        "train": names[:TRAIN],
        "val": names[TRAIN : TRAIN + DEV],
        "test": names[TRAIN + DEV :],
    }


def test_karpathy_json_reads_what_the_original_layout_does(flickr8k_data, examples, tmp_path):
    names = [name for name, _, _ in examples]
    dataset = load_dataset(write_karpathy(tmp_path / "k", examples, karpathy_splits(names)))
    original = load_dataset(flickr8k_data)
    assert dataset.layout == "karpathy"
    assert dataset.images_dir == tmp_path / "k" / "Images"
    assert dataset.splits == original.splits  # same sizes, same order
    assert dataset.captions == original.captions
    assert dataset.missing_images == [] and dataset.paths_elsewhere == {}


def test_the_converter_script_turns_the_original_layout_into_the_same_dataset(flickr8k_data):
    spec = importlib.util.spec_from_file_location("make_karpathy_json", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = script.karpathy_json(flickr8k_data)
    splits = [image["split"] for image in data["images"]]
    assert splits == ["train"] * TRAIN + ["val"] * DEV + ["test"] * TEST
    sentence = data["images"][0]["sentences"][0]  # e.g. "A red circle above a blue square."
    assert sentence["tokens"] == sentence["raw"].lower().rstrip(".").split()
    Path("k").mkdir()
    Path("k/dataset_flickr8k.json").write_text(json.dumps(data))
    Path("k/Images").symlink_to(flickr8k_data / "Flicker8k_Dataset")
    dataset, original = load_dataset("k"), load_dataset(flickr8k_data)
    assert dataset.splits == original.splits
    assert dataset.captions == original.captions  # the orphan id is in no split: in neither


def coco_like(root: Path, examples) -> Path:
    """Train photos in train2014/, restval, val and test ones in val2014/, as in COCO."""
    names = [name for name, _, _ in examples[:9]]
    splits = {"train": names[:5], "restval": names[5:7], "val": names[7:8], "test": names[8:]}
    folders = {name: "train2014" if name in splits["train"] else "val2014" for name in names}
    return write_karpathy(root, examples[:9], splits, folders)


def test_coco_filepath_folders_resolve_each_photo_listing_each_folder_once(
    tmp_path, examples, monkeypatch
):
    root = coco_like(tmp_path / "coco", examples)
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: listed.append(path) or real_listdir(path))
    dataset = load_dataset(root)
    assert root / "val2014" in listed and len(listed) == len(set(listed))
    assert dataset.images_dir == root / "train2014"  # where most photos are
    names = [name for name, _, _ in examples[:9]]
    assert [dataset.image_path(n) for n in names] == [root / "train2014" / n for n in names[:5]] + [
        root / "val2014" / n for n in names[5:]
    ]
    assert sorted(dataset.paths_elsewhere) == sorted(names[5:])  # only those outside images_dir
    # Also under Images/<filepath>/.
    (root / "Images").mkdir()
    shutil.move(root / "val2014", root / "Images" / "val2014")
    moved = load_dataset(root)
    assert moved.image_path(names[8]) == root / "Images" / "val2014" / names[8]
    assert all(moved.image_path(n).is_file() for n in names)


def test_restval_joins_train_and_val_is_dev_and_absent_photos_are_missing(tmp_path, examples):
    dataset = load_dataset(coco_like(tmp_path / "coco", examples))
    names = [name for name, _, _ in examples[:9]]
    assert dataset.splits == {"train": names[:7], "dev": names[7:8], "test": names[8:]}
    (tmp_path / "coco" / "val2014" / names[5]).unlink()
    dataset = load_dataset(tmp_path / "coco")
    assert dataset.missing_images == [names[5]]
    assert dataset.splits["train"] == names[:5] + names[6:7]
    assert names[5] not in dataset.captions


def test_the_json_wins_then_the_token_file_then_captions_txt(tmp_path, examples):
    names = [name for name, _, _ in examples[:16]]
    official = {"train": names[:12], "dev": names[12:14], "test": names[14:]}
    root = write_flickr8k(tmp_path / "all", examples[:16], official)
    (root / "captions.txt").write_text("image,caption\n" + f"{names[0]},A caption\n")
    write_karpathy(root, examples[:16], {"train": names[:8], "val": names[8:], "test": []})
    dataset = load_dataset(root)
    assert dataset.layout == "karpathy" and len(dataset.splits["dev"]) == 8
    (root / "dataset_flickr8k.json").unlink()
    assert load_dataset(root).layout == "flickr8k"
    shutil.rmtree(root / "Flickr8k_text")
    assert load_dataset(root).layout == "kaggle"


def test_two_karpathy_files_in_one_folder(tmp_path):
    for name in ("dataset_coco.json", "dataset_flickr8k.json"):
        (tmp_path / name).write_text('{"images": []}')
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path)
    assert str(error.value) == (
        f"{tmp_path}: several Karpathy split files (dataset_coco.json, dataset_flickr8k.json); "
        "keep the one for these photos"
    )


GOOD = {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "A dog ."}]}


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"images": [\n  {"filename": "a.jpg"\n   "split": "train"}]}',
         ":3: not valid JSON (Expecting ',' delimiter at column 4)"),
        ('{"dataset": "coco"}', ": expected an object with an 'images' list (Karpathy's schema)"),
        (json.dumps({"images": [GOOD, {**GOOD, "filename": ""}]}), ": images[1]: no 'filename'"),
        (json.dumps({"images": [{"filename": "b.jpg", "sentences": []}]}),
         ": images[0] (b.jpg): no 'split'"),
        (json.dumps({"images": [{**GOOD, "split": "dev"}]}),
         ": images[0] (a.jpg): unknown split 'dev' (expected train, val, test or restval)"),
        (json.dumps({"images": [{"filename": "c.jpg", "split": "val"}]}),
         ": images[0] (c.jpg): no 'sentences' (expected a non-empty list)"),
        (json.dumps({"images": [{**GOOD, "sentences": [{"raw": "x"}, {"tokens": ["x"]}]}]}),
         ": images[0] (a.jpg): sentences[1] has no 'raw' text"),
        (json.dumps({"images": [GOOD, {**GOOD, "split": "test"}]}),
         ": images[1] (a.jpg): the same filename as images[0]; each image needs its own"),
        (json.dumps({"images": [GOOD]}),
         ": none of its 1 photos found (looked in {root}, in Flicker8k_Dataset, Flickr8k_Dataset, "
         "Images there, and in each image's filepath folder)"),
    ],
)  # fmt: skip
def test_a_broken_json_is_one_line_naming_the_file_and_the_image(tmp_path, text, message):
    path = tmp_path / "dataset_coco.json"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path)
    assert str(error.value) == f"{path}{message.format(root=tmp_path)}"
    result = CliRunner().invoke(cli, ["extract", "--data", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [f"Error: {path}{message.format(root=tmp_path)}"]


def run(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_extract_train_evaluate_on_a_coco_like_karpathy_folder(examples, tmp_path):
    """Train photos in train2014/, the others in val2014/: extract and the report must find
    both; the scores are not checked (2 epochs), only that each stage runs on this layout."""
    names = [name for name, _, _ in examples]
    splits = karpathy_splits(names)
    splits["restval"] = splits["train"][100:]
    splits["train"] = splits["train"][:100]
    folders = {n: "train2014" for n in splits["train"]}
    folders.update({n: "val2014" for s in ("restval", "val", "test") for n in splits[s]})
    data = write_karpathy(tmp_path / "coco", examples, splits, folders)
    features = tmp_path / "features"
    out = run("extract", "--data", data, "--encoder", TINY_ENCODER, "--weights", "none",
              "--features", features, "--no-progress")  # fmt: skip
    assert "encoded 160 images (0 already cached)" in out
    run_dir = tmp_path / "run"
    run("train", "--data", data, "--encoder", TINY_ENCODER, "--features", features,
        "--run-dir", run_dir, "--epochs", 2, "--batch-size", 32, "--no-progress",
        "--set", "model.units=32", "--set", "model.embedding_dim=16",
        "--set", "text.min_word_count=1")  # fmt: skip
    out = run("evaluate", "--run", run_dir, "--beam", 1, "--report", tmp_path / "report.html")
    assert out.splitlines()[0].startswith(f"test split: {TEST} images")
    assert out.splitlines()[1].split() == score_names()
    # Every test photo is in val2014/, not images_dir: the report still shows each one.
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/jpeg;base64,') == 3 * 8
