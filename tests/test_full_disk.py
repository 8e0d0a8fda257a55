"""A disk that fills up during extract, train and caption --output: one line naming the file and
the room needed, exit 1, nothing finished lost, and the same command (for train: --resume) run
again once there is room completes the work, equal to an uninterrupted run's.

The full disk is a real one where the tests run as root: a small tmpfs, filled to the last
byte at the moment a test chooses. Elsewhere a patched os.fsync says ENOSPC for the files
under the folder (what NFS and thin-provisioned disks do: the writes are buffered, the sync
fails), so each test runs either way.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from captioner.cli import cli
from captioner.errors import DiskFullError
from captioner.files import disk_full, what_is_wrong
from tests.conftest import TINY, TINY_16, TINY_ENCODER
from tests.test_caption_output import write_photos

FREE = r"[0-9.]+ (bytes|kB|MB|GB) free"  # what is left depends on the disk and the way


class Tmpfs:
    """A 4 MB tmpfs mounted at `folder`, filled by `fill` until a write fails."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                       check=True, capture_output=True)  # fmt: skip

    def fill(self) -> None:
        fd = os.open(self.folder / ".filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 16, 1 << 12, 1):  # unbuffered, smaller and smaller: to the byte
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as error:
                    assert error.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def make_room(self) -> None:
        (self.folder / ".filler").unlink()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], check=True)


class PatchedSync:
    """os.fsync says ENOSPC for files under `folder` between `fill` and `make_room`."""

    def __init__(self, folder: Path, monkeypatch):
        self.folder, self.full = folder.resolve(), False
        folder.mkdir()
        sync = os.fsync

        def fsync(fd):
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if self.full and path.is_relative_to(self.folder):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return sync(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def fill(self) -> None:
        self.full = True

    def make_room(self) -> None:
        self.full = False

    def close(self) -> None:
        pass


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture(params=["tmpfs", "patched"])
def disk(request, tmp_path, monkeypatch):
    """A folder whose disk fills when the test says so."""
    if request.param == "tmpfs":
        if not _can_mount():
            pytest.skip("mounting a tmpfs needs root: the patched fsync stands in")
        try:
            full = Tmpfs(tmp_path / "disk")
        except subprocess.CalledProcessError as error:
            pytest.skip(f"cannot mount a tmpfs here: {error.stderr.decode().strip()}")
    else:
        full = PatchedSync(tmp_path / "disk", monkeypatch)
    yield full
    full.close()


def fill_before_call(monkeypatch, owner, name: str, disk, calls: int) -> None:
    """Fills `disk` just before the `calls`-th call of owner.name: the calls before it
    finished their writes."""
    original, count = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] == calls:
            disk.fill()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def one_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_extract(flickr8k_data, tmp_path, disk, monkeypatch):
    from captioner.features import extract
    from captioner.features.store import CacheWriter, load_feature_cache

    expected = extract.extract_features(flickr8k_data, tmp_path / "whole", TINY_16,
                                        progress=False)  # fmt: skip
    command = ["extract", "--data", str(flickr8k_data), "--encoder", TINY_ENCODER, "--weights",
               "none", "--features", str(disk.folder / "f"), "--batch-size", "16",
               "--no-progress"]  # fmt: skip
    monkeypatch.setattr(extract, "_PART_BYTES", 0)  # a part after every batch of 16 photos
    fill_before_call(monkeypatch, CacheWriter, "flush", disk, calls=4)
    line = one_line(CliRunner().invoke(cli, command))
    part = re.escape(str(disk.folder / "f" / "shard-1-of-1."))
    assert re.fullmatch(rf"Error: {part}[0-9a-f]{{12}}\.npy: no space left on the disk \(needs "
                        rf"12\.4 kB, {FREE}\): make room, then run the same command again: it "
                        "keeps what was finished", line), line  # fmt: skip
    assert len(load_feature_cache(disk.folder / "f")) == 3 * 16  # the parts before it, whole

    disk.make_room()
    again = CliRunner().invoke(cli, command)
    assert again.exit_code == 0, again.output
    assert again.output.startswith("encoded 112 images (48 already cached)")
    whole, resumed = load_feature_cache(tmp_path / "whole"), load_feature_cache(disk.folder / "f")
    names = sorted(whole.row_of)
    assert sorted(resumed.row_of) == names and expected.encoded == len(names)
    np.testing.assert_array_equal(resumed.matrix(names), whole.matrix(names))


@pytest.fixture(scope="module")
def features(flickr8k_data, tmp_path_factory):
    from captioner.features.extract import extract_features

    path = tmp_path_factory.mktemp("full") / "features"
    extract_features(flickr8k_data, path, TINY, progress=False)
    return path


def train_command(data, features, run_dir) -> list[str]:
    return ["train", "--data", str(data), "--encoder", TINY_ENCODER, "--features", str(features),
            "--run-dir", str(run_dir), "--epochs", "4", "--batch-size", "32", "--no-progress",
            "--set", "model.units=16", "--set", "model.embedding_dim=8",
            "--set", "text.min_word_count=1",
            "--set", "train.early_stopping_patience=0"]  # fmt: skip


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


@pytest.mark.slow
def test_train(flickr8k_data, features, tmp_path, disk, monkeypatch):
    from captioner.training.checkpoints import RunRecorder

    whole = CliRunner().invoke(cli, train_command(flickr8k_data, features, tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    run = disk.folder / "run"
    fill_before_call(monkeypatch, RunRecorder, "record", disk, calls=3)  # after 2 epochs
    line = one_line(CliRunner().invoke(cli, train_command(flickr8k_data, features, run)))
    assert re.fullmatch(rf"Error: {re.escape(str(run / 'last.keras'))}: no space left on the "
                        rf"disk \(needs about [0-9.]+ kB, {FREE}\): make room, then run "
                        rf"`captioner train --resume {re.escape(str(run))}`: it continues "
                        "after epoch 2", line), line  # fmt: skip
    # The files of epoch 2 are whole: a failed write replaced none of them.
    assert [row["epoch"] for row in history(run)] == [1, 2]
    for name in ("model.keras", "last.keras", "resume.npz", "history.json"):
        assert what_is_wrong(run / name, "json" if name.endswith("json") else "zip", "") is None
    assert not list(run.glob(".*.keras")) and not (run / ".captioner.lock").exists()

    disk.make_room()  # the recorder's later calls are not the third: they fill nothing
    resumed = CliRunner().invoke(cli, ["train", "--resume", str(run), "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    expected, got = history(tmp_path / "whole"), history(run)
    assert [row["epoch"] for row in got] == [1, 2, 3, 4]
    for key in ("loss", "val_loss", "val_bleu4", "learning_rate"):
        assert [row[key] for row in got] == [row[key] for row in expected], key


@pytest.fixture(scope="module")
def caption_run(flickr8k_data, features, tmp_path_factory):
    run = tmp_path_factory.mktemp("caption") / "run"
    # Encoder batches of 8: chunks of 8 photos for --decode-batch 8, each written on its own.
    command = [*train_command(flickr8k_data, features, run), "--set", "encoder.batch_size=8"]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_caption_output(caption_run, tmp_path, disk, monkeypatch, suffix):
    from captioner.inference.caption_files import CaptionWriter

    photos = write_photos(tmp_path / "album", 160)
    # Chunks of 64 rows, 5 kB or so: more than the room a full disk leaves in the file's last
    # block (which an append fills before it needs another).
    command = ["caption", "--run", str(caption_run), str(photos), "--decode-batch", "64",
               "--no-progress", "--output"]  # fmt: skip
    whole = tmp_path / f"whole{suffix}"
    assert CliRunner().invoke(cli, [*command, str(whole)]).exit_code == 0
    output = disk.folder / f"captions{suffix}"
    fill_before_call(monkeypatch, CaptionWriter, "write", disk, calls=2)  # one chunk in
    line = one_line(CliRunner().invoke(cli, [*command, str(output)]))
    assert re.fullmatch(rf"Error: {re.escape(str(output))}: no space left on the disk "
                        rf"\({FREE}\): make room, then run the same command again: it captions "
                        "only the photos the file lacks", line), line  # fmt: skip

    disk.make_room()
    again = CliRunner().invoke(cli, [*command, str(output)])
    assert again.exit_code == 0, again.output
    # 64 photos were in the file, and those of the next chunk that fitted (all of them, where
    # only the sync failed): the rest are captioned now.
    done = re.match(r"captioned (\d+) photos \((\d+) already in the output", again.output)
    assert done and int(done[1]) + int(done[2]) == 160 and int(done[2]) >= 64, again.output
    assert output.read_bytes() == whole.read_bytes()


def test_tensorflows_and_numpys_words_for_a_full_disk(tmp_path):
    """TensorBoard's event files and SavedModel's variables are written by TensorFlow, which
    says ENOSPC in its message; numpy's np.save into a file says it without an errno."""
    message = (f"{{{{function_node __wrapped__WriteSummary}}}} {tmp_path}/logs/events.out.tfevents"
               ".1.v2; No space left on device\n\tFailed to flush 11 events")  # fmt: skip
    full = disk_full(RuntimeError(message))
    assert isinstance(full, DiskFullError)
    assert str(full).startswith(f"{tmp_path}/logs/events.out.tfevents.1.v2: no space left on ")
    short = disk_full(OSError("307200 requested and 178144 written"), tmp_path / "part.npy", 10)
    assert str(short).startswith(f"{tmp_path / 'part.npy'}: no space left on the disk (needs ")
    quota = disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path / "x")
    assert str(quota).startswith(f"{tmp_path / 'x'}: over the disk quota (")
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(ValueError("File not found: filepath=model.keras")) is None


def test_a_full_disk_anywhere_in_a_command_is_one_line(tmp_path, monkeypatch):
    """The CLI's safety net, for a write the library does not name itself."""
    from captioner import info

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "somewhere"))

    monkeypatch.setattr(info, "describe", full)
    line = one_line(CliRunner().invoke(cli, ["info", str(tmp_path)]))
    assert re.fullmatch(rf"Error: {re.escape(str(tmp_path / 'somewhere'))}: no space left on "
                        rf"the disk \({FREE}\): make room, then run the same command again: it "
                        "keeps what was finished", line), line  # fmt: skip
    monkeypatch.setenv("CAPTIONER_DEBUG", "1")
    result = CliRunner().invoke(cli, ["info", str(tmp_path)])
    assert isinstance(result.exception, OSError)  # the traceback, for debugging
