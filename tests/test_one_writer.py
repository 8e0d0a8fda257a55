"""One writer per run directory and per captions file: a second `train` (or `--resume`,
`finetune`, `finetune-encoder`, `caption --output`) refuses in one line naming the live
process that writes; after that process is killed with SIGKILL, the next one takes over. The
workers of a multi-worker run that write nothing take no lock."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.cli import cli
from captioner.errors import LockedError
from captioner.locks import WriterLock
from tests.conftest import TINY, TINY_ENCODER
from tests.test_caption_output import write_photos

ROOT = Path(__file__).resolve().parent.parent
CLI_WITH_TINY_ENCODER = "import tests.conftest; from captioner.cli import main; main()"
HOLD = """
import sys, time
from captioner.locks import WriterLock
WriterLock(sys.argv[1], sys.argv[2], "wait").acquire()
print("held", flush=True)
time.sleep(600)
"""
SINCE = r"\(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)"


def holder_pattern(pid: int) -> str:
    return rf"process {pid} on {re.escape(socket.gethostname())} {SINCE} is writing it"


def hold(lock_file: Path) -> subprocess.Popen:
    """Another process that takes `lock_file`'s lock, as captioner does, and keeps it."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_file), "it"],
                               stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               text=True)  # fmt: skip
    assert process.stdout.readline() == "held\n"
    return process


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def test_a_live_holder_is_named_and_a_dead_ones_lock_is_taken_over(tmp_path):
    lock_file = tmp_path / ".captioner.lock"
    holder = hold(lock_file)
    try:
        with pytest.raises(LockedError) as refused:
            WriterLock(lock_file, tmp_path, "wait for it to end").acquire()
        assert re.fullmatch(rf"{re.escape(str(tmp_path))}: {holder_pattern(holder.pid)}: wait "
                            "for it to end", str(refused.value))  # fmt: skip
    finally:
        kill(holder)
    assert json.loads(lock_file.read_text())["pid"] == holder.pid  # left behind, stale
    with WriterLock(lock_file, tmp_path, "wait"):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with pytest.raises(LockedError, match=holder_pattern(os.getpid())):
            WriterLock(lock_file, tmp_path, "wait").acquire()  # one writer, even in one process
    assert not lock_file.exists()  # let go: removed


def test_workers_that_write_nothing_take_no_lock(tmp_path):
    from captioner.training.checkpoints import RunRecorder

    holder = hold(tmp_path / ".captioner.lock")
    try:
        RunRecorder(tmp_path, "val_loss", 0, writes=False).lock()  # a worker, not the chief
        with pytest.raises(LockedError):
            RunRecorder(tmp_path, "val_loss", 0).lock()
    finally:
        kill(holder)


@pytest.fixture(scope="module")
def features(flickr8k_data, tmp_path_factory):
    from captioner.features.extract import extract_features

    path = tmp_path_factory.mktemp("writer") / "features"
    extract_features(flickr8k_data, path, TINY, progress=False)
    return path


def train_command(data, features, run_dir, epochs: int) -> list[str]:
    return ["train", "--data", str(data), "--encoder", TINY_ENCODER, "--features", str(features),
            "--run-dir", str(run_dir), "--epochs", str(epochs), "--batch-size", "32",
            "--no-progress", "--set", "model.units=16", "--set", "model.embedding_dim=8",
            "--set", "text.min_word_count=1", "--set", "train.early_stopping_patience=0",
            "--set", "encoder.batch_size=8"]  # fmt: skip


def captioner_process(*args) -> list[str]:
    return [sys.executable, "-c", CLI_WITH_TINY_ENCODER, *args]


def refused(*commands: list[str]) -> list[str]:
    """captioner processes, run at once, that each exit 1 with one line on stderr: the lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen(captioner_process(*command), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=env)
                 for command in commands]  # fmt: skip
    lines = []
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
        assert process.returncode == 1 and len(errors) == 1, stderr
        assert "Traceback" not in stderr
        lines += errors
    return lines


@pytest.mark.slow
def test_two_trainers_into_one_run_directory(flickr8k_data, features, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(captioner_process(*train_command(flickr8k_data, features, run, 500)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (run / "resume.npz").exists():  # an epoch on disk: --resume has a run too
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "no epoch finished in 180 s"
            time.sleep(0.05)
        # Both at once (each starts TensorFlow, which takes a while on a small machine).
        second, resumed = refused(train_command(flickr8k_data, features, run, 1),
                                  ["train", "--resume", str(run), "--no-progress"])  # fmt: skip
        assert first.poll() is None  # still training: the refusals were about it
    finally:
        kill(first)
    assert re.fullmatch(rf"Error: {re.escape(str(run))}: {holder_pattern(first.pid)}: wait for "
                        "it to end or stop it, or give another --run-dir", second)  # fmt: skip
    assert re.fullmatch(rf"Error: {re.escape(str(run))}: {holder_pattern(first.pid)}: wait for "
                        "it to end or stop it", resumed)  # fmt: skip

    assert json.loads((run / ".captioner.lock").read_text())["pid"] == first.pid  # stale
    again = CliRunner().invoke(cli, train_command(flickr8k_data, features, run, 1))
    assert again.exit_code == 0, again.output  # took the dead process's run directory over
    assert again.output.startswith("trained 1 epochs")
    assert not (run / ".captioner.lock").exists()


@pytest.fixture(scope="module")
def source_run(flickr8k_data, features, tmp_path_factory):
    run = tmp_path_factory.mktemp("source") / "run"
    result = CliRunner().invoke(cli, train_command(flickr8k_data, features, run, 1))
    assert result.exit_code == 0, result.output
    return run


def one_line(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output.strip()


def test_fine_tuning_into_a_run_directory_being_written(source_run, tmp_path):
    run = tmp_path / "tuned"
    run.mkdir()
    holder = hold(run / ".captioner.lock")
    try:
        lines = [one_line("finetune", "--run", source_run, "--run-dir", run, "--no-progress"),
                 one_line("finetune-encoder", "--run", source_run, "--run-dir", run,
                          "--no-progress")]  # fmt: skip
    finally:
        kill(holder)
    for line in lines:
        holder_line = rf"Error: {re.escape(str(run))}: {holder_pattern(holder.pid)}"
        assert re.fullmatch(rf"{holder_line}: wait for it to end or stop it, or give another "
                            "--run-dir", line)  # fmt: skip
    assert sorted(p.name for p in run.iterdir()) == [".captioner.lock"]  # nothing written


def test_two_captioners_into_one_output_file(source_run, tmp_path):
    photos = write_photos(tmp_path / "album", 4)
    output = tmp_path / "captions.jsonl"
    holder = hold(tmp_path / ".captions.jsonl.lock")
    try:
        line = one_line("caption", "--run", source_run, photos, "--output", output)
    finally:
        kill(holder)
    assert re.fullmatch(rf"Error: {re.escape(str(output))}: {holder_pattern(holder.pid)}: wait "
                        "for it to end or stop it, or give another --output", line)  # fmt: skip
    assert not output.exists()
    result = CliRunner().invoke(cli, ["caption", "--run", str(source_run), str(photos),
                                      "--output", str(output), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(output.read_text().splitlines()) == 4
    assert not (tmp_path / ".captions.jsonl.lock").exists()
