"""`captioner train --resume`: a training process killed with SIGKILL after an epoch continues
where it stopped, and ends with the losses an uninterrupted run has, to the last digit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.cli import cli
from tests.conftest import TINY, TINY_ENCODER

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 6


def _train_command(data, features, run_dir) -> list[str]:
    return ["train", "--data", str(data), "--encoder", TINY_ENCODER, "--features", str(features),
            "--run-dir", str(run_dir), "--epochs", str(EPOCHS), "--batch-size", "16",
            "--learning-rate", "0.01", "--no-progress", "--set", "model.units=16",
            "--set", "model.embedding_dim=8", "--set", "text.min_word_count=1",
            "--set", "train.early_stopping_patience=0", "--set", "train.lr_patience=1"]  # fmt: skip


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def _kill_after_first_epoch(command: list[str], run_dir: Path) -> int:
    """Starts training in its own process and SIGKILLs it once an epoch's checkpoint is on disk;
    returns how many epochs history.json held then."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "captioner", *command], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "resume.npz").exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no epoch finished in 120 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return len(_history(run_dir))


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_losses_of_an_uninterrupted_one(flickr8k_data, tmp_path):
    from captioner.features.extract import extract_features

    extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False)
    whole = CliRunner().invoke(cli, _train_command(flickr8k_data, tmp_path / "f", tmp_path / "a"))
    assert whole.exit_code == 0, whole.output

    killed_run = tmp_path / "b"
    done = _kill_after_first_epoch(_train_command(flickr8k_data, tmp_path / "f", killed_run),
                                   killed_run)  # fmt: skip
    assert 1 <= done < EPOCHS  # killed midway: the run had epochs left to do
    resumed = CliRunner().invoke(cli, ["train", "--resume", str(killed_run), "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert f"trained {EPOCHS} epochs" in resumed.output

    expected, got = _history(tmp_path / "a"), _history(killed_run)
    assert [h["epoch"] for h in got] == list(range(1, EPOCHS + 1))
    for key in ("loss", "val_loss", "val_bleu4", "learning_rate"):
        assert [h[key] for h in got] == [h[key] for h in expected], key
    # The learning-rate schedule's counters came back too: it was halved along the way.
    assert min(h["learning_rate"] for h in got) < 0.01

    again = CliRunner().invoke(cli, ["train", "--resume", str(killed_run)])
    assert again.exit_code == 1
    assert again.output.strip() == f"Error: {killed_run}: finished after epoch {EPOCHS}: " \
        "nothing to resume"  # fmt: skip


def test_resume_takes_its_settings_from_the_run(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path), "--epochs", "3"])
    assert result.exit_code == 2
    assert "--resume takes every setting from the run: give it alone" in result.output
