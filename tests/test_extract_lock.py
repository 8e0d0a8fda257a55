"""One `extract` per shard of a cache: a second process of the same shard refuses in one line
naming the first, while another shard of that cache runs at once (and reads the cache with the
first's part in it and its done marker not yet written, or no store.json yet); the cache they
leave equals an uninterrupted run's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from captioner.data.shards import Shard
from captioner.errors import CacheError, LockedError
from captioner.features.extract import extract_features
from captioner.features.store import load_feature_cache
from captioner.locks import WriterLock
from tests.conftest import TINY, TINY_ENCODER
from tests.test_one_writer import captioner_process, holder_pattern, kill

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
# `captioner extract` with the tiny encoder, that writes a part after every batch and, with the
# first batch's part on disk, waits (holding the shard's lock) until the file argv[2] exists.
PAUSED_EXTRACT = """
import sys, time
from pathlib import Path
import tests.conftest
import captioner.features.extract as extract
paused, go = Path(sys.argv.pop(1)), Path(sys.argv.pop(1))
extract._SAVE_EVERY_SECONDS = -1.0
batches = extract.batches_of_images
def pausing(*args, **kwargs):
    for number, batch in enumerate(batches(*args, **kwargs)):
        if number == 1:
            paused.touch()
            deadline = time.monotonic() + 120
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        yield batch
extract.batches_of_images = pausing
from captioner.cli import main
main()
"""


def extract_command(data, cache, shard: str | None) -> list[str]:
    return ["extract", "--data", str(data), "--encoder", TINY_ENCODER, "--weights", "none",
            "--features", str(cache), "--batch-size", "8", "--no-progress",
            *(["--shard", shard] if shard else [])]  # fmt: skip


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path.name} not there after {seconds} s"
        time.sleep(0.05)


def run_beside_a_paused_extract(data, cache: Path, shard: str | None, others: list[list[str]]):
    """Starts `extract` of `shard` into `cache`, paused with a part written; runs the `others`
    (captioner commands) to their end while it waits, then lets it finish. Returns the paused
    process and the others, ended, with their (stdout, stderr)."""
    paused, go = cache.parent / "paused", cache.parent / "go"
    first = start([sys.executable, "-c", PAUSED_EXTRACT, str(paused), str(go),
                   *extract_command(data, cache, shard)])  # fmt: skip
    processes = [first]
    try:
        wait_for(paused, first)  # the first holds its shard's lock, a part of it on disk
        processes += [start(captioner_process(*command)) for command in others]
        outputs = [process.communicate(timeout=180) for process in processes[1:]]
        assert first.poll() is None  # still paused: what the others did was beside it
        go.touch()
        outputs.insert(0, first.communicate(timeout=180))
    finally:
        for process in processes:
            if process.poll() is None:
                kill(process)
    return list(zip(processes, outputs))


@pytest.fixture(scope="module")
def whole(flickr8k_data, tmp_path_factory):
    """The cache of an uninterrupted run, in this process."""
    path = tmp_path_factory.mktemp("whole") / "cache"
    return load_feature_cache(
        extract_features(flickr8k_data, path, TINY, progress=False).cache_path
    )


def assert_equal_caches(cache: Path, whole, shards: dict[str, bool]) -> None:
    parts = load_feature_cache(cache)
    names = sorted(whole.row_of)
    assert sorted(parts.row_of) == names and len(names) == 160
    np.testing.assert_array_equal(parts.matrix(names), whole.matrix(names))
    assert {str(shard): done for shard, done in parts.shards.items()} == shards
    assert [path.name for path in cache.glob(".*")] == []  # the locks were let go: removed


def refusal(cache: Path, holder: int) -> str:
    """The one line a refused `extract` prints, naming the process that holds the lock."""
    what = re.escape(str(cache))
    return rf"Error: {what}: {holder_pattern(holder)}: wait for it to end or stop it\n"


@pytest.mark.slow
def test_a_second_extract_into_a_cache_being_written_refuses(flickr8k_data, whole, tmp_path):
    cache = tmp_path / "cache"
    (first, (out, err)), (second, (second_out, second_err)) = run_beside_a_paused_extract(
        flickr8k_data, cache, None, [extract_command(flickr8k_data, cache, None)]
    )
    assert second.returncode == 1 and second_out == "", second_err
    assert re.fullmatch(refusal(cache, first.pid), second_err), second_err  # one line
    assert first.returncode == 0 and out.startswith("encoded 160 images (0 already"), err
    assert_equal_caches(cache, whole, {"1/1": True})


@pytest.mark.slow
def test_one_extract_per_shard_and_shards_side_by_side(flickr8k_data, whole, tmp_path):
    cache = tmp_path / "cache"
    (first, (out, err)), (same, (same_out, same_err)), (other, (other_out, other_err)) = (
        run_beside_a_paused_extract(flickr8k_data, cache, "1/2",
                                    [extract_command(flickr8k_data, cache, "1/2"),
                                     extract_command(flickr8k_data, cache, "2/2")])
    )  # fmt: skip
    assert same.returncode == 1 and same_out == "", same_err
    shard_1 = Path(f"{cache} (shard 1/2)")  # how the refusal names what is written
    assert re.fullmatch(refusal(shard_1, first.pid), same_err), same_err  # one line
    assert other.returncode == 0, other_err  # another shard runs beside it
    assert re.match(r"encoded \d+ images of shard 2/2 \(0 already cached\)", other_out)
    assert first.returncode == 0, err
    assert re.match(r"encoded \d+ images of shard 1/2 \(0 already cached\)", out)
    assert_equal_caches(cache, whole, {"1/2": True, "2/2": True})


def test_a_folder_another_shard_is_starting_in_is_a_new_cache(flickr8k_data, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    with WriterLock(cache / ".shard-1-of-2.lock", cache, "wait"):  # shard 1/2 has just started
        (cache / ".store.json.k2j4x8").write_bytes(b"{")  # and writes store.json (atomic_file)
        with pytest.raises(LockedError, match=r"cache \(shard 1/2\): process \d+ on "):
            extract_features(flickr8k_data, cache, TINY, progress=False, shard=Shard(1, 2))
        summary = extract_features(flickr8k_data, cache, TINY, progress=False, shard=Shard(2, 2))
        assert summary.encoded > 0 and summary.already_cached == 0
    assert load_feature_cache(cache, whole=False).shards == {Shard(2, 2): True}
    with pytest.raises(CacheError, match="shard 1/2 is missing"):
        load_feature_cache(cache)  # for the stages that read it: shard 1/2 is still to come


def test_a_folder_that_is_not_a_cache_is_refused_and_left_as_it_was(flickr8k_data, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    with pytest.raises(CacheError, match=r"photos: not a feature cache \(no store.json\)"):
        extract_features(flickr8k_data, tmp_path / "photos", TINY, progress=False)
    assert [path.name for path in (tmp_path / "photos").iterdir()] == ["a.jpg"]  # lock removed


def test_a_shard_into_a_cache_cut_another_way_is_refused_and_leaves_it_readable(
    flickr8k_data, tmp_path
):
    """--shard 1/2 into a finished unsharded cache used to write a done marker that mixed two
    shard counts, and no stage could read the cache again."""
    extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False)
    with pytest.raises(CacheError, match=r"extracted with no --shard, not in 2 shards: extract "
                       r"it with no --shard again, or give another --features"):  # fmt: skip
        extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False, shard=Shard(1, 2))
    assert len(load_feature_cache(tmp_path / "f")) == 160  # still whole and readable
    extract_features(flickr8k_data, tmp_path / "g", TINY, progress=False, shard=Shard(1, 2))
    with pytest.raises(CacheError, match=r"extracted with --shard I/2, not without --shard: "):
        extract_features(flickr8k_data, tmp_path / "g", TINY, progress=False)
