"""Files that later stages read, damaged as real disks and copies damage them (cut short,
emptied, replaced by garbage): one line naming the file, what is wrong and what to do, exit 1,
never a traceback; `--resume` refuses a damaged checkpoint and changes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from captioner.cli import cli
from tests.conftest import TINY, TINY_CONV_ENCODER, TINY_ENCODER
from tests.test_cli_errors import fails

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"
GARBAGE = b"this is no file of captioner's \x00\xff\xfe" * 40
WRONG = {"cut short": "cut short", "empty": "empty"}  # the garbage's words depend on the file


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def emptied(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(GARBAGE)


DAMAGES = {"cut short": cut_short, "empty": emptied, "garbage": garbage}


@pytest.fixture(scope="module")
def trained(flickr8k_data, tmp_path_factory):
    """A tiny run of 2 epochs and its feature cache, made once; tests damage copies."""
    from captioner.features.extract import extract_features

    folder = tmp_path_factory.mktemp("trained")
    extract_features(flickr8k_data, folder / "features", TINY, progress=False)
    result = CliRunner().invoke(cli, [
        "train", "--data", str(flickr8k_data), "--encoder", TINY_ENCODER,
        "--features", str(folder / "features"), "--run-dir", str(folder / "run"),
        "--epochs", "2", "--batch-size", "32", "--no-progress", "--set", "model.units=16",
        "--set", "model.embedding_dim=8", "--set", "text.min_word_count=1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained / "run", tmp_path / "run"))


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


def garbage_words(name: str) -> str:
    return {".json": "not a", ".keras": "not a Keras model", ".npz": "not a"}[Path(name).suffix]


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", ["run.json", "vocabulary.json", "model.keras"])
def test_a_damaged_run_file_is_one_line_for_caption(run, name, damage):
    DAMAGES[damage](run / name)
    if name == "model.keras":
        (run / "last.keras").unlink()  # the better file is another test's
    line = fails("caption", "--run", run, PHOTO)
    what = WRONG.get(damage) or garbage_words(name)
    assert line.startswith(f"Error: {run / name}: {what}"), line
    assert line.endswith(": copy it again or retrain"), line


def test_the_messages_word_for_word(run):
    whole = (run / "run.json").read_bytes()
    cut_short(run / "run.json")
    assert fails("evaluate", "--run", run) == (
        f"Error: {run / 'run.json'}: cut short: copy it again or retrain"
    )
    (run / "run.json").write_bytes(whole)
    garbage(run / "vocabulary.json")
    assert fails("caption", "--run", run, PHOTO) == (
        f"Error: {run / 'vocabulary.json'}: not a captioner vocabulary: copy it again or retrain"
    )


def test_a_damaged_model_beside_a_whole_last_keras_says_so(run):
    cut_short(run / "model.keras")
    assert fails("caption", "--run", run, PHOTO) == (
        f"Error: {run / 'model.keras'}: cut short: copy it again or retrain; last.keras beside "
        "it is whole (the latest epoch, not the best): copy it over model.keras to use it"
    )
    cut_short(run / "last.keras")  # no better file at hand: nothing said of it
    assert fails("caption", "--run", run, PHOTO) == (
        f"Error: {run / 'model.keras'}: cut short: copy it again or retrain"
    )


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_weights_npz_and_encoder_npz(run, damage):
    """A run that travels as weights.npz (as the shipped model does), whose encoder was
    fine-tuned (encoder.npz): each file damaged in turn."""
    from captioner.features.encoders import build_encoder
    from captioner.model.rundir import load_keras_model, save_weights_npz

    save_weights_npz(load_keras_model(run / "model.keras"), run)
    (run / "model.keras").unlink()
    # The tiny encoder has no weights: the trainable one of the same feature size stands in.
    save_weights_npz(build_encoder(TINY_CONV_ENCODER, "none"), run, "encoder.npz", np.float32)
    info = json.loads((run / "run.json").read_text())
    info["encoder"].update(name=TINY_CONV_ENCODER, finetuned=True)
    (run / "run.json").write_text(json.dumps(info))
    for name in ("weights.npz", "encoder.npz"):
        whole = (run / name).read_bytes()
        DAMAGES[damage](run / name)
        line = fails("caption", "--run", run, PHOTO)
        what = WRONG.get(damage) or "not a captioner weights file"
        assert line.startswith(f"Error: {run / name}: {what}"), line
        assert line.endswith(": copy it again or retrain"), line
        (run / name).write_bytes(whole)


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_refuses_a_damaged_checkpoint_and_changes_nothing(run, damage):
    DAMAGES[damage](run / "resume.npz")
    before = files_of(run)
    line = fails("train", "--resume", run)
    what = WRONG.get(damage) or "not a captioner checkpoint"
    assert line == (
        f"Error: {run / 'resume.npz'}: {what}: copy it again, or train anew without --resume"
    )
    assert files_of(run) == before  # not a byte changed, no lock file left behind


def test_a_checkpoint_that_fails_its_checksum_is_refused_before_anything(run):
    data = bytearray((run / "resume.npz").read_bytes())
    data[len(data) // 3] ^= 0xFF  # one byte flipped inside an array: the zip index is whole
    (run / "resume.npz").write_bytes(bytes(data))
    line = fails("train", "--resume", run)
    assert line.startswith(f"Error: {run / 'resume.npz'}: damaged (") and line.endswith(
        "fails its checksum): copy it again, or train anew without --resume"
    )


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_refuses_a_damaged_history(run, damage):
    info = json.loads((run / "run.json").read_text())
    info["config"]["train"]["epochs"] = 3  # one epoch left to run: resume reads the history
    (run / "run.json").write_text(json.dumps(info))
    DAMAGES[damage](run / "history.json")
    before = files_of(run)
    line = fails("train", "--resume", run)
    what = WRONG.get(damage) or "not a training history"
    assert line == (
        f"Error: {run / 'history.json'}: {what}: copy it again, or train anew without --resume"
    )
    assert files_of(run) == before


def test_info_lists_the_damaged_files(run):
    cut_short(run / "history.json")
    emptied(run / "last.keras")
    garbage(run / "selection.json")
    result = CliRunner().invoke(cli, ["info", str(run), "--json"])
    assert result.exit_code == 0, result.output
    about = json.loads(result.output)
    assert about["damaged"] == {"history.json": "cut short", "last.keras": "empty",
                                "selection.json": "not a captioner selection file"}  # fmt: skip
    assert "epochs" not in about and "best" not in about
    lines = CliRunner().invoke(cli, ["info", str(run)]).output.splitlines()
    assert "damaged:         history.json cut short, selection.json not a captioner selection " \
        "file, last.keras empty" in lines  # fmt: skip


# --- the feature cache ---------------------------------------------------------------------


@pytest.fixture
def cache(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained / "features", tmp_path / "features"))


def train_on(flickr8k_data, cache, tmp_path):
    return fails("train", "--data", flickr8k_data, "--encoder", TINY_ENCODER, "--features",
                 cache, "--run-dir", tmp_path / "new")  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_part_says_what_to_delete(flickr8k_data, cache, tmp_path, damage):
    npy = next(cache.glob("shard-*.npy"))
    names = npy.with_suffix(".json")
    for part in (npy, names):
        whole = part.read_bytes()
        DAMAGES[damage](part)
        what = WRONG.get(damage) or "not a part of a feature cache"
        assert train_on(flickr8k_data, cache, tmp_path) == (
            f"Error: {part}: {what}: delete {npy.name} and {names.name}, then run the same "
            "`captioner extract` again: it encodes only the photos the cache lacks"
        )
        part.write_bytes(whole)
    assert not (tmp_path / "new").exists()


def test_a_deleted_part_is_extracted_again(flickr8k_data, cache):
    from captioner.features.extract import extract_features
    from captioner.features.store import load_feature_cache

    whole = load_feature_cache(cache)
    names = sorted(whole.row_of)
    expected = whole.matrix(names)
    for part in cache.glob("shard-*.*"):
        if not part.name.endswith(".done.json"):
            part.unlink()
    summary = extract_features(flickr8k_data, cache, TINY, progress=False)
    assert summary.encoded == len(names)
    np.testing.assert_array_equal(load_feature_cache(cache).matrix(names), expected)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_description(flickr8k_data, cache, tmp_path, damage):
    DAMAGES[damage](cache / "store.json")
    what = WRONG.get(damage) or "not a cache description"
    assert train_on(flickr8k_data, cache, tmp_path) == (
        f"Error: {cache / 'store.json'}: {what}: copy the cache again, or delete it and run "
        "`captioner extract` again"
    )


# --- a captions file and an ONNX export ----------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_that_is_no_captions_file_is_refused_not_cut(run, tmp_path, suffix):
    output = tmp_path / f"notes{suffix}"
    output.write_bytes(b"my own notes, without a line end")
    assert fails("caption", "--run", run, PHOTO, "--output", output) == (
        f"Error: {output}: not a captions file (no complete line, and it does not start as "
        "one): give another --output"
    )
    assert output.read_bytes() == b"my own notes, without a line end"


def test_a_captions_file_cut_in_its_first_row_is_repaired(tmp_path):
    from captioner.inference.caption_files import read_names

    for name, start in (("a.jsonl", b'{"image": "x.jp'), ("a.csv", b"image,capt")):
        (tmp_path / name).write_bytes(start)
        assert read_names(tmp_path / name) == set()
        assert (tmp_path / name).read_bytes() == b""


def fake_onnx_export(folder: Path) -> Path:
    """An export's manifest with two model files of the sizes it records (no real models:
    the checks below come before onnxruntime reads them, but for the last)."""
    folder.mkdir()
    for name in ("start.onnx", "step.onnx"):
        (folder / name).write_bytes(GARBAGE)
    manifest = {"format": "captioner-export/1", "kind": "onnx", "input_size": 32,
                "vocabulary": ["<pad>", "<start>", "<end>", "<unk>"],
                "decoding": {"beam_size": 1, "max_length": 5, "length_penalty": 0.0,
                             "no_repeat_ngram": 0},
                "files": {"start.onnx": len(GARBAGE), "step.onnx": len(GARBAGE)}}  # fmt: skip
    (folder / "captioner-export.json").write_text(json.dumps(manifest))
    return folder


def runtime(export: Path) -> str:
    """`python -m captioner.runtime EXPORT PHOTO`'s one line and exit 1."""
    result = subprocess.run([sys.executable, "-m", "captioner.runtime", str(export), str(PHOTO)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return result.stderr.strip()


def test_a_damaged_onnx_export_is_one_line(tmp_path):
    pytest.importorskip("onnxruntime")
    export = fake_onnx_export(tmp_path / "light")
    again = f"export again: captioner export {export} --format onnx --force"
    cut_short(export / "start.onnx")
    lines = [runtime(export)]
    emptied(export / "start.onnx")
    lines.append(runtime(export))
    (export / "start.onnx").unlink()
    lines.append(runtime(export))
    lines.append(runtime(tmp_path / "elsewhere"))
    cut_short(export / "captioner-export.json")
    lines.append(runtime(export))
    assert lines == [
        f"Error: {export / 'start.onnx'}: cut short ({len(GARBAGE) // 2} of {len(GARBAGE)} "
        f"bytes): {again}",
        f"Error: {export / 'start.onnx'}: empty: {again}",
        f"Error: {export / 'start.onnx'}: missing: {again}",
        f"Error: {tmp_path / 'elsewhere'}: no such export: `captioner export "
        f"{tmp_path / 'elsewhere'} --format onnx` makes one",
        f"Error: {export / 'captioner-export.json'}: cut short: {again}",
    ]


def test_onnx_files_of_the_right_size_that_are_no_models(tmp_path):
    pytest.importorskip("onnxruntime")
    export = fake_onnx_export(tmp_path / "light")
    line = runtime(export)
    assert line.startswith(f"Error: {export / 'start.onnx'}: not an ONNX model onnxruntime can "
                           "load (")  # fmt: skip
    assert line.endswith(f"): export again: captioner export {export} --format onnx --force")


def test_a_damaged_export_description_is_rebuilt_from_the_version_folders(tmp_path):
    from captioner.export.export import _merge_versions

    out = tmp_path / "exported"
    for version in (1, 2):
        (out / str(version)).mkdir(parents=True)
    (out / "captioner-export.json").write_bytes(b'{"format": "captioner-export/1", "vers')
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"format": "captioner-export/1", "versions": [3]}))
    _merge_versions(new, out / "captioner-export.json")
    assert json.loads((out / "captioner-export.json").read_text())["versions"] == [1, 2, 3]
