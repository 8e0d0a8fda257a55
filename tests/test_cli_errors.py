"""Bad input gets one clear line and exit 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from captioner.cli import cli
from captioner.features.store import CacheInfo, write_feature_cache
from tests.conftest import TINY_ENCODER


def fails(*args) -> str:
    """The one line a command prints when it exits 1, without a traceback."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_missing_image_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "captions.txt").write_text("image,caption\n")
    assert "no image folder" in fails(
        "extract", "--data", tmp_path / "d", "--encoder", TINY_ENCODER
    )


def test_captions_in_neither_layout(tmp_path):
    (tmp_path / "d" / "Images").mkdir(parents=True)
    (tmp_path / "d" / "captions.csv").write_text("image,caption\n")
    assert "no captions found" in fails("extract", "--data", tmp_path / "d")


def test_cache_from_another_encoder(flickr8k_data, tmp_path):
    cache = write_feature_cache(
        tmp_path / "f", CacheInfo("vgg16", 224, 4, "imagenet"), ["x.jpg"], np.zeros((1, 4))
    )
    line = fails("extract", "--data", flickr8k_data, "--encoder", TINY_ENCODER, "--weights", "none",
                 "--features", cache)  # fmt: skip
    assert line == (
        f"Error: {cache}: made by encoder vgg16 (weights imagenet), not {TINY_ENCODER} "
        f"(weights none): extract again with --encoder {TINY_ENCODER}, "
        "or give another --features file"
    )


def test_a_pickle_cache_of_captioner_0_1_is_refused_with_the_way_out(flickr8k_data, tmp_path):
    (tmp_path / "old.pkl").write_bytes(b"\x80\x04}\x94.")  # an empty pickled dict
    line = fails("train", "--data", flickr8k_data, "--encoder", TINY_ENCODER,
                 "--features", tmp_path / "old.pkl", "--run-dir", tmp_path / "run")  # fmt: skip
    assert line == (
        f"Error: {tmp_path / 'old.pkl'}: a file, not a feature cache (a folder with store.json): "
        "run `captioner extract` again to make one"
    )
    assert not (tmp_path / "run").exists()


def test_run_directory_without_a_model(tmp_path):
    (tmp_path / "run").mkdir()
    line = fails("caption", "--run", tmp_path / "run", "photo.jpg")
    assert line == (
        f"Error: {tmp_path / 'run'}: no run.json here: not a finished training run "
        "(train one with `captioner train`)"
    )
    assert "run directory not found" in fails("evaluate", "--run", tmp_path / "nowhere")


def test_unknown_encoder_lists_the_valid_ones():
    line = fails("extract", "--data", ".", "--encoder", "alexnet")
    assert line.startswith("Error: unknown encoder 'alexnet' (valid: ") and "inception_v3" in line


def test_bad_settings(tmp_path):
    assert "unknown setting model.size (valid: " in fails(
        "train", "--data", ".", "--set", "model.size=3"
    )
    assert "model.units: expected int, got 'big'" in fails(
        "train", "--data", ".", "--set", "model.units=big"
    )
    (tmp_path / "c.toml").write_text("[model]\nunits = \n")
    assert fails("train", "--data", ".", "--config", tmp_path / "c.toml").startswith(
        f"Error: {tmp_path / 'c.toml'}: "
    )


def test_train_refuses_an_encoder_that_did_not_make_the_cache(flickr8k_data, tmp_path):
    info = CacheInfo("efficientnet_lite0", 224, 4, "imagenet")
    cache = write_feature_cache(tmp_path / "lite0", info, ["x.jpg"], np.zeros((1, 4)))
    line = fails("train", "--data", flickr8k_data, "--encoder", "efficientnet_lite1",
                 "--features", cache, "--run-dir", tmp_path / "run")  # fmt: skip
    assert line.startswith(
        f"Error: {cache}: made by encoder efficientnet_lite0 (weights imagenet), not "
        "efficientnet_lite1"
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_ensemble_of_runs_with_different_vocabularies_is_refused(tmp_path):
    import shutil

    from captioner.data.text import Vocabulary
    from captioner.model.rundir import shipped_run_dir

    other = tmp_path / "other"
    shutil.copytree(shipped_run_dir(), other)
    Vocabulary.load(other / "vocabulary.json")  # a real one, then a smaller one over it
    Vocabulary(["dog", "cat"], 1).save(other / "vocabulary.json")
    line = fails("caption", "--run", shipped_run_dir(), "--run", other, "photo.jpg")
    assert line == (
        f"Error: {other}: an ensemble needs the same vocabulary and encoder as {shipped_run_dir()}"
    )


def test_captions_that_clean_to_nothing_are_told_and_most_of_them_refused(tmp_path):
    """A captions column of numbers (say, a CSV whose columns were swapped) would train on
    nothing: extract and train say where, and refuse it before any encoding."""
    (tmp_path / "d" / "Images").mkdir(parents=True)
    rows = "".join(f"{n}.jpg,{n * 7}\n" for n in range(6)) + "6.jpg,a dog runs\n"
    for n in range(7):
        (tmp_path / "d" / "Images" / f"{n}.jpg").write_bytes(b"")
    (tmp_path / "d" / "captions.txt").write_text("image,caption\n" + rows)
    for command in ("extract", "train"):
        line = fails(command, "--data", tmp_path / "d", "--encoder", TINY_ENCODER)
        captions = tmp_path / "d" / "captions.txt"
        assert line.startswith(f"Error: {captions}: 6 of 7 captions cleaned to nothing and 0 lost "
                               f"most of their letters (e.g. {captions}:2, {captions}:3, "
                               f"{captions}:4)")  # fmt: skip
        assert line.endswith("check that the file holds the captions as UTF-8 text in its "
                             "caption column")  # fmt: skip


def test_a_folder_without_photos_is_one_line_on_stderr(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no photo here")
    (tmp_path / "empty" / ".hidden.jpg").write_bytes(b"")
    for output in ([], ["--output", tmp_path / "captions.csv"]):
        result = CliRunner().invoke(cli, [str(a) for a in ["caption", tmp_path / "empty", *output]])
        assert result.exit_code == 1 and result.stdout == "", result.output
        assert result.stderr == (
            f"Error: {tmp_path / 'empty'}: no photos found: captioner looks for files ending in "
            ".bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp (any case) in these folders and "
            "their subfolders, leaving out hidden ones\n"
        )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]  # no output, no lock


def test_a_bad_option_value_is_clicks_usage_error_and_exit_2():
    """Usage errors keep click's convention, as docs/errors.md says: usage, hint, exit 2."""
    result = CliRunner().invoke(cli, ["caption", "--beam", "0", "x.jpg"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1].startswith("Error: Invalid value for '--beam': 0 ")
    assert result.stderr.startswith("Usage: ") and "Traceback" not in result.output


def test_finetune_encoder_needs_a_run():
    """No default run: finetune-encoder writes a new run from the one it is told."""
    result = CliRunner().invoke(cli, ["finetune-encoder", "--run-dir", "nowhere"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == "Error: Missing option '--run'."
    assert not Path("nowhere").exists()
