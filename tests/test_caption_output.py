"""`captioner caption --output`: captions files that hold what stdout shows, resume after a
killed run without losing or repeating a photo, split into shards, and outlive broken photos."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.cli import cli
from captioner.errors import DataError
from captioner.inference.caption_files import CaptionWriter, read_names
from tests import synthetic
from tests.conftest import TINY_ENCODER

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = [".jsonl", ".csv", ".tsv"]
CLI_WITH_TINY_ENCODER = "import tests.conftest; from captioner.cli import main; main()"


def invoke(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def run_dir(flickr8k_data, tmp_path_factory):
    """One tiny run, trained once for this module: encoder batches of 8, greedy decoding."""
    folder = tmp_path_factory.mktemp("run")
    features = folder / "features"
    invoke("extract", "--data", flickr8k_data, "--encoder", TINY_ENCODER, "--weights", "none",
           "--features", features, "--no-progress")  # fmt: skip
    invoke("train", "--data", flickr8k_data, "--encoder", TINY_ENCODER, "--features", features,
           "--run-dir", folder / "run", "--epochs", 8, "--batch-size", 32, "--learning-rate",
           0.01, "--no-progress", "--set", "train.early_stopping_patience=0",
           "--set", "model.units=32", "--set", "model.embedding_dim=16",
           "--set", "text.min_word_count=1", "--set", "encoder.batch_size=8")  # fmt: skip
    return folder / "run"


def write_photos(folder: Path, count: int, seed: int = 1) -> Path:
    """`count` synthetic photos, one in a subfolder and one with a non-ASCII name."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, image, _) in enumerate(synthetic.make_examples(count, seed)):
        if index == 1:
            name = "café ☕.jpg"
        elif index == 2:
            (folder / "sub").mkdir()
            name = "sub/nested.png"
        image.save(folder / name)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos") / "album", 40)


def printed_captions(run_dir, folder, *options) -> dict[str, str]:
    """stdout mode: PATH<TAB>CAPTION lines -> {name relative to the folder: caption}."""
    out = invoke("caption", "--run", run_dir, folder, *options).stdout
    pairs = [line.split("\t") for line in out.splitlines()]
    return {Path(path).relative_to(folder).as_posix(): caption for path, caption in pairs}


def read_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]
    rows = list(csv.reader(text.splitlines(), delimiter="," if path.suffix == ".csv" else "\t"))
    assert rows[0] == ["image", "caption", "error"]
    return [dict(zip(rows[0], row)) for row in rows[1:]]


def captions_in(path: Path) -> dict[str, str]:
    rows = read_rows(path)
    names = Counter(row["image"] for row in rows)
    assert [name for name, count in names.items() if count > 1] == []  # each photo once
    return {row["image"]: row["caption"] for row in rows}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_the_file_holds_the_captions_stdout_shows(run_dir, photos, tmp_path, suffix):
    printed = printed_captions(run_dir, photos)
    assert len(printed) == 40 and {"café ☕.jpg", "sub/nested.png"} <= set(printed)
    output = tmp_path / f"captions{suffix}"
    result = invoke("caption", "--run", run_dir, photos, "--output", output, "--no-progress",
                    "--decode-batch", 16)  # fmt: skip
    assert result.stdout.startswith("captioned 40 photos (0 already in the output, 0 unreadable)")
    assert result.stdout.rstrip().endswith(f"-> {output}") and result.stderr == ""
    rows = read_rows(output)
    assert [row["image"] for row in rows] == sorted(printed)  # the folder's order
    assert {row["image"]: row["caption"] for row in rows} == printed
    assert {row["error"] for row in rows} == ({None} if suffix == ".jsonl" else {""})
    # Real captions, not one for all: 12 to 20 different ones measured (seeds 0-4, under
    # oneDNN's AVX-512 and AVX2 kernels, Eigen's and 8 threads).
    assert len(set(printed.values())) > 5
    again = invoke("caption", "--run", run_dir, photos, "--output", output, "--no-progress")
    assert again.stdout.startswith("captioned 0 photos (40 already in the output, 0 unreadable)")
    assert read_rows(output) == rows


def test_the_library_streams_a_chunk_at_a_time(run_dir, photos):
    from captioner.inference.caption import caption_images, iter_captions, select_photos

    chunks = iter_captions([run_dir], select_photos([photos]), decode_batch=16)
    assert [len(c) for c in chunks] == [16, 16, 8]  # encoder batches of 8, decoded 16 at a time
    listed = caption_images([run_dir], [photos])
    assert {r.name: r.caption for r in listed} == printed_captions(run_dir, photos)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_row_cut_short_is_captioned_again(run_dir, photos, tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    invoke("caption", "--run", run_dir, photos, "--output", whole, "--no-progress")
    data = whole.read_bytes()
    lines = data.splitlines(keepends=True)
    cut = tmp_path / f"cut{suffix}"
    # 12 rows (13 lines with a CSV header), then half of the next: a run killed mid-write.
    kept = 12 + (suffix == ".csv")
    cut.write_bytes(b"".join(lines[:kept]) + lines[kept][: len(lines[kept]) // 2])
    result = invoke("caption", "--run", run_dir, photos, "--output", cut, "--no-progress")
    assert result.stdout.startswith("captioned 28 photos (12 already in the output, 0 unreadable)")
    assert cut.read_bytes() == data  # the half row is gone, every photo once, in order


@pytest.mark.slow
def test_a_killed_run_resumes_with_each_photo_once(run_dir, tmp_path):
    photos = write_photos(tmp_path / "many", 200, seed=2)
    output = tmp_path / "captions.jsonl"
    # `python -m captioner`, with the tests' tiny encoder registered first. Decoding one photo
    # at a time and a wide beam slow it down: 25 writes of 8 rows over about 0.4 s (2 cores).
    command = [sys.executable, "-c", CLI_WITH_TINY_ENCODER, "caption", "--run", str(run_dir),
               str(photos), "--output", str(output), "--no-progress", "--decode-batch", "1",
               "--beam", "5"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if output.exists() and output.stat().st_size > 0:  # the first rows are there: kill it
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"it ended before it could be killed: {stderr}"
    written = output.read_bytes().count(b"\n")
    assert 0 < written < 200

    result = invoke("caption", "--run", run_dir, photos, "--output", output, "--no-progress",
                    "--beam", 5)  # fmt: skip
    assert f"({written} already in the output, 0 unreadable)" in result.stdout
    uninterrupted = tmp_path / "uninterrupted.jsonl"
    invoke("caption", "--run", run_dir, photos, "--output", uninterrupted, "--no-progress",
           "--beam", 5)  # fmt: skip
    assert captions_in(output) == captions_in(uninterrupted)
    assert len(captions_in(output)) == 200


def test_two_shards_make_the_whole(run_dir, photos, tmp_path):
    whole = tmp_path / "whole.csv"
    invoke("caption", "--run", run_dir, photos, "--output", whole, "--no-progress")
    halves = []
    for index in (1, 2):
        half = tmp_path / f"half-{index}.csv"
        invoke("caption", "--run", run_dir, photos, "--output", half, "--no-progress",
               "--shard", f"{index}/2")  # fmt: skip
        halves.append(captions_in(half))
    assert halves[0] and halves[1] and not set(halves[0]) & set(halves[1])
    assert {**halves[0], **halves[1]} == captions_in(whole)


def test_an_unreadable_photo_is_listed_and_not_tried_again(run_dir, tmp_path):
    folder = write_photos(tmp_path / "album", 10)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    output = tmp_path / "captions.tsv"
    result = invoke("caption", "--run", run_dir, folder, "--output", output, "--no-progress")
    assert result.stdout.startswith("captioned 10 photos (0 already in the output, 1 unreadable)")
    assert result.stderr.startswith("broken.jpg: cannot read this image (UnidentifiedImageError")
    assert len(result.stderr.splitlines()) == 1
    rows = {row["image"]: row for row in read_rows(output)}
    assert len(rows) == 11 and rows["broken.jpg"]["caption"] == ""
    assert rows["broken.jpg"]["error"].startswith("UnidentifiedImageError: cannot identify")
    assert all(row["caption"] and not row["error"] for n, row in rows.items() if n != "broken.jpg")

    again = invoke("caption", "--run", run_dir, folder, "--output", output, "--no-progress")
    assert again.stdout.startswith("captioned 0 photos (11 already in the output, 0 unreadable)")
    # Printing instead of writing, an unreadable photo still fails the command.
    printed = invoke("caption", "--run", run_dir, folder, code=1)
    assert len(printed.stdout.splitlines()) == 10 and "broken.jpg: cannot read" in printed.stderr


def one_line_error(*args) -> str:
    result = invoke(*args, code=1)
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1
    return result.output.strip()


def test_bad_outputs_are_one_line_errors(tmp_path):
    album = write_photos(tmp_path / "album", 1)  # a photo: an empty folder is an error itself
    assert one_line_error("caption", album, "--output", "captions.txt") == (
        "Error: captions.txt: unknown output format '.txt': use .jsonl, .csv, .tsv"
    )
    assert "unknown output format '(no suffix)'" in one_line_error(
        "caption", album, "--output", "captions"
    )
    (tmp_path / "other.csv").write_text("name,text\nx.jpg,hello\n")
    assert one_line_error("caption", album, "--output", tmp_path / "other.csv") == (
        f"Error: {tmp_path / 'other.csv'}:1: not a captions file (its header is not "
        "image,caption,error): give another --output"
    )
    (tmp_path / "file").write_text("")
    unwritable = tmp_path / "file" / "x.csv"
    assert one_line_error("caption", album, "--output", unwritable, "--no-progress") == (
        f"Error: {tmp_path / 'file' / 'x.csv'}: cannot write it (File exists)"
    )
    assert one_line_error("caption", album, "--output", "x.csv", "--save", "out") == (
        "Error: --save draws photos one at a time: use it without --output"
    )
    assert one_line_error("caption", album, "--shard", "3/2") == (
        "Error: --shard 3/2: expected I/N with 1 <= I <= N, e.g. 1/4"
    )


# --- the file format alone, without a model ---------------------------------------------------


def test_the_writer_round_trips_every_format(tmp_path):
    rows = [("a.jpg", "a dog runs", None), ('odd, "name"\t.jpg', "", "OSError: broken")]
    for suffix in SUFFIXES:
        path = tmp_path / f"out{suffix}"
        with CaptionWriter(path) as writer:
            writer.write(rows[:1])
        with CaptionWriter(path) as writer:  # appending writes no second header
            writer.write(rows[1:])
        assert read_names(path) == {"a.jpg", 'odd, "name"\t.jpg'}
        got = [(r["image"], r["caption"], r["error"] or None) for r in read_rows(path)]
        assert got == rows, suffix


def test_a_quoted_field_left_open_at_the_end_is_cut_off(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text('image,caption,error\na.jpg,a dog,\n"b\nc.jpg,a c')
    assert read_names(path) == {"a.jpg"}
    assert path.read_text() == "image,caption,error\na.jpg,a dog,\n"
    path.write_text("image,capt")  # not even the header made it
    assert read_names(path) == set() and path.read_text() == ""


def test_a_damaged_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x", "error": null}\nnot json\n{"image": "b')
    with pytest.raises(DataError) as error:
        read_names(path)
    assert str(error.value) == (
        f"{path}:2: not a JSON object with an image: give another --output, or delete that line"
    )
