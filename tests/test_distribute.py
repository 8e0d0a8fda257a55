"""Training under tf.distribute: two logical CPU devices learn what one device learns from the
same global batches, and two worker processes on 127.0.0.1 train one run directory.

Each run is its own `python -m captioner train` process: logical devices and collective ops
can only be set up before TensorFlow starts, which this test process has long done.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, TINY_ENCODER

# Each test trains in two or four processes (13 to 32 s on 2 cores).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Dropout off: each replica draws its own masks. Clipping off: Keras clips each replica's
# gradient before they are summed, so with clipping the two runs would differ by design.
SETTINGS = ["--set", "model.units=16", "--set", "model.embedding_dim=8",
            "--set", "model.dropout=0.0", "--set", "train.clipnorm=0.0",
            "--set", "text.min_word_count=1",
            "--set", "train.early_stopping_patience=0"]  # fmt: skip


def _train(data, features, run_dir, *options, env=None, wait=True):
    command = [sys.executable, "-m", "captioner", "train", "--data", str(data), "--encoder",
               TINY_ENCODER, "--features", str(features), "--run-dir", str(run_dir),
               "--batch-size", "32", "--learning-rate", "0.01", "--no-progress",
               *SETTINGS, *options]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return _finish(process) if wait else process


def _finish(process) -> str:
    try:
        out, err = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode()


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def _close(a: list[float], b: list[float], tolerance: float) -> bool:
    return all(abs(x - y) <= tolerance * abs(y) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.fixture(scope="module")
def one_device(flickr8k_data, tmp_path_factory):
    """The tiny synthetic cache, and two epochs trained on one device."""
    from captioner.features.extract import extract_features

    folder = tmp_path_factory.mktemp("distribute")
    extract_features(flickr8k_data, folder / "features", TINY, progress=False)
    _train(flickr8k_data, folder / "features", folder / "one", "--epochs", "2")
    return folder


def test_two_replicas_learn_what_one_device_learns(one_device, flickr8k_data):
    folder = one_device
    _train(flickr8k_data, folder / "features", folder / "mirrored", "--epochs", "2",
           "--strategy", "mirrored", env={"CAPTIONER_CPU_DEVICES": "2"})  # fmt: skip
    one, two = _history(folder / "one"), _history(folder / "mirrored")
    # The same global batches, their loss the mean over the batch's words on both (weights
    # normalized over the global batch), BatchNorm synchronized across the replicas. What is
    # left: the order of floating-point sums, and a partial batch (the last of each length
    # bucket) split unevenly between the replicas, whose halves are averaged with equal
    # weight: about 1e-6 of the loss here, so 1e-4 leaves room and still catches a real
    # difference (e.g. per-replica weighted means or unsynchronized BatchNorm, 1e-3 to 1e-2).
    # Both runs use one machine's kernels; with other CPUs' the split costs as little:
    # measured 1e-7 to 2.8e-6 on seeds 0-2 under oneDNN's AVX-512 and AVX2 kernels, Eigen's
    # and 8 threads, 36 times under the bound.
    for key in ("loss", "val_loss"):
        assert _close([h[key] for h in two], [h[key] for h in one], 1e-4), key
    info = json.loads((folder / "mirrored" / "run.json").read_text())
    assert info["config"]["train"]["strategy"] == "mirrored"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_one_run_directory(one_device, flickr8k_data, tmp_path):
    folder = one_device
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    scratch = tmp_path / "tmp"  # where the second worker's temporary run goes, and is deleted
    scratch.mkdir()
    workers = [
        _train(
            flickr8k_data,
            folder / "features",
            tmp_path / "run",
            "--epochs",
            "1",
            "--strategy",
            "multiworker",
            wait=False,
            env={
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
                "TMPDIR": str(scratch),
            },
        )  # fmt: skip
        for index in range(2)
    ]
    outputs = [_finish(worker) for worker in workers]
    assert all("trained 1 epochs" in out for out in outputs)
    history = _history(tmp_path / "run")
    assert [h["epoch"] for h in history] == [1]
    for name in ("model.keras", "last.keras", "vocabulary.json", "run.json", "resume.npz"):
        assert (tmp_path / "run" / name).is_file(), name
    assert list(scratch.iterdir()) == []  # the other worker left nothing behind
    # Two workers of one replica each split every global batch as two local devices do.
    one = _history(folder / "one")[0]
    assert _close([history[0]["loss"]], [one["loss"]], 1e-4)


def test_a_killed_multiworker_job_resumes_on_every_worker(one_device, flickr8k_data, tmp_path):
    import signal
    import time

    folder, run = one_device, tmp_path / "run"

    def start(*options):
        cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
        return [
            _train(flickr8k_data, folder / "features", run, *options, wait=False,
                   env={"TF_CONFIG": json.dumps({"cluster": cluster,
                                                 "task": {"type": "worker", "index": index}})})
            for index in range(2)
        ]  # fmt: skip

    workers = start("--epochs", "3", "--strategy", "multiworker")
    deadline = time.monotonic() + 180
    while not (run / "resume.npz").exists():
        assert all(w.poll() is None for w in workers) and time.monotonic() < deadline
        time.sleep(0.01)
    for worker in workers:  # a lost machine takes the job down: every worker is restarted
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    assert 1 <= len(_history(run)) < 3
    resumed = [
        subprocess.Popen(
            [sys.executable, "-m", "captioner", "train", "--resume", str(run), "--no-progress"],
            env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": json.dumps(
                {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                 "task": {"type": "worker", "index": index}})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for ports in [_free_ports(2)]
        for index in range(2)
    ]  # fmt: skip
    assert all("trained 3 epochs" in _finish(worker) for worker in resumed)
    assert [h["epoch"] for h in _history(run)] == [1, 2, 3]
