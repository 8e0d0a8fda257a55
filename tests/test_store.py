"""The feature cache folder: shards written by separate processes read as one, lazy reading equal
to reading into memory, and refusal of a cache that lost a shard or was altered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from captioner.cli import cli
from captioner.errors import CacheError
from captioner.features.store import CacheInfo, load_feature_cache, write_feature_cache
from tests.conftest import TINY_ENCODER

ROOT = Path(__file__).resolve().parent.parent
INFO = CacheInfo("tiny_test", 32, 4, "none")

EXTRACT_SHARD = """
import sys
import tests.conftest  # registers the tiny encoder
from captioner.features.extract import extract_features
from captioner.data.shards import parse_shard
extract_features(sys.argv[1], sys.argv[2], tests.conftest.TINY, progress=False,
                 shard=parse_shard(sys.argv[3]))
"""


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _extract_in_processes(data, cache, shards: list[str]) -> None:
    """Runs each shard's extraction in its own Python process, all at once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", EXTRACT_SHARD, str(data), str(cache), shard],
            env=env,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for shard in shards
    ]
    for process in processes:
        _, error = process.communicate(timeout=120)
        assert process.returncode == 0, error.decode()


@pytest.fixture(scope="module")
def sharded(flickr8k_data, tmp_path_factory):
    """The synthetic dataset's cache, extracted whole in this process and as shards 1/2 and 2/2
    by two processes at once."""
    from captioner.features.extract import extract_features
    from tests.conftest import TINY

    folder = tmp_path_factory.mktemp("caches")
    extract_features(flickr8k_data, folder / "whole", TINY, progress=False)
    _extract_in_processes(flickr8k_data, folder / "sharded", ["1/2", "2/2"])
    return folder


@pytest.mark.slow
def test_two_shards_from_two_processes_equal_one_unsharded_run(sharded):
    whole, parts = load_feature_cache(sharded / "whole"), load_feature_cache(sharded / "sharded")
    names = sorted(whole.row_of)
    assert sorted(parts.row_of) == names and len(names) == 160
    np.testing.assert_array_equal(parts.matrix(names), whole.matrix(names))
    assert {str(shard): done for shard, done in parts.shards.items()} == {"1/2": True, "2/2": True}


@pytest.mark.slow
def test_info_reports_the_shards_and_the_photos(sharded):
    result = CliRunner().invoke(cli, ["info", str(sharded / "sharded"), "--json"])
    assert result.exit_code == 0, result.output
    about = json.loads(result.output)
    assert about["images"] == 160 and about["feature_shape"] == [160, 192]
    assert about["shards"] == {"count": 2, "present": ["1/2", "2/2"],
                               "finished": ["1/2", "2/2"], "missing": []}  # fmt: skip
    assert about["encoder"] == TINY_ENCODER and about["bytes_on_disk"] > 160 * 192 * 4


@pytest.mark.slow
def test_a_deleted_shard_is_named_in_one_line(sharded, flickr8k_data, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(sharded / "sharded", cache)
    for file in cache.glob("shard-2-of-2.*"):
        file.unlink()
    with pytest.raises(CacheError, match=r"shard 2/2 is missing: run `captioner extract --shard"):
        load_feature_cache(cache)
    result = CliRunner().invoke(
        cli, ["train", "--data", str(flickr8k_data), "--encoder", TINY_ENCODER,
              "--features", str(cache)])  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {cache}: shard 2/2 is missing: run `captioner extract --shard 2/2` with the "
        "same --features"
    ]
    about = json.loads(CliRunner().invoke(cli, ["info", str(cache), "--json"]).output)
    assert about["shards"]["missing"] == ["2/2"] and "shard 2/2 is missing" in about["problem"]


@pytest.mark.slow
def test_a_shard_extracted_twice_into_one_folder_is_refused(sharded, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(sharded / "sharded", cache)
    part = next(cache.glob("shard-1-of-2.*.npy"))
    for suffix in (".npy", ".json"):  # the same part again, as a second machine would write it
        shutil.copy(part.with_suffix(suffix), cache / f"shard-1-of-2.0123456789ab{suffix}")
    with pytest.raises(CacheError, match="is in this part and in another: a shard was extracted"):
        load_feature_cache(cache)


def test_shards_of_different_counts_do_not_mix(tmp_path):
    from captioner.data.shards import Shard
    from captioner.features.store import CacheWriter

    for shard in (Shard(1, 2), Shard(2, 3)):
        writer = CacheWriter(tmp_path / "c", INFO, shard)
        writer.add([f"{shard.index}.jpg"], np.ones((1, 4)))
        writer.finish(1, {})
    with pytest.raises(CacheError, match="mixes shards of 2 and 3"):
        load_feature_cache(tmp_path / "c")


def test_an_altered_cache_is_refused_and_runs_no_code(tmp_path):
    cache = write_feature_cache(tmp_path / "c", INFO, ["a.jpg", "b.jpg"], np.ones((2, 4)))
    part = next(cache.glob("shard-*.npy"))
    np.save(part, np.ones((2, 5), np.float32))  # another feature size
    with pytest.raises(CacheError, match=r"holds float32\[2, 5\], its description says"):
        load_feature_cache(cache)
    evil = np.array([RunsCode(), None], dtype=object)  # a pickle that would run a command
    np.save(part, evil, allow_pickle=True)
    with pytest.raises(CacheError, match=r"unreadable part of the cache \(Array can't be memory"):
        load_feature_cache(cache)
    assert not Path("pwned").exists()
    description = json.loads((cache / "store.json").read_text())
    (cache / "store.json").write_text(json.dumps({**description, "format": "other"}))
    with pytest.raises(CacheError, match="store.json: unreadable cache description"):
        load_feature_cache(cache)


def test_a_part_whose_names_file_never_arrived_is_ignored(tmp_path):
    cache = write_feature_cache(tmp_path / "c", INFO, ["a.jpg"], np.ones((1, 4)))
    np.save(cache / "shard-1-of-1.00000000000f.npy", np.zeros((3, 4), np.float32))  # no .json
    assert sorted(load_feature_cache(cache).row_of) == ["a.jpg"]


def test_lazy_rows_read_what_memory_holds(tmp_path):
    rows = np.random.RandomState(0).normal(size=(10, 4)).astype(np.float32)
    names = [f"{i}.jpg" for i in range(10)]
    write_feature_cache(tmp_path / "c", INFO, names[:6], rows[:6])
    from captioner.data.shards import Shard
    from captioner.features.store import CacheWriter

    writer = CacheWriter(tmp_path / "c", INFO, Shard())  # a second part, as a resumed run adds
    writer.add(names[6:], rows[6:])
    writer.finish(10, {})
    cache = load_feature_cache(tmp_path / "c")
    assert len(cache.parts) == 2 and isinstance(cache.parts[0], np.memmap)
    order = ["7.jpg", "0.jpg", "9.jpg", "3.jpg"]
    lazy = cache.rows(order)
    np.testing.assert_array_equal(lazy[np.array([3, 0, 2])], rows[[3, 7, 9]])
    np.testing.assert_array_equal(lazy[1:3], rows[[0, 9]])
    np.testing.assert_array_equal(np.asarray(lazy), cache.matrix(order))


@pytest.mark.slow
def test_training_from_lazy_rows_equals_training_from_memory(sharded, flickr8k_data, tmp_path):
    from captioner.config import Config, merge
    from captioner.training.train import train

    def history(reading: str) -> list[dict]:
        config = merge(Config(), {
            "encoder": {"name": TINY_ENCODER},
            "model": {"units": 16, "embedding_dim": 8},
            "text": {"min_word_count": 1},
            "train": {"epochs": 2, "feature_reading": reading},
        })  # fmt: skip
        train(flickr8k_data, sharded / "sharded", tmp_path / reading, config, progress=False)
        return json.loads((tmp_path / reading / "history.json").read_text())

    memory, lazy = history("memory"), history("lazy")
    assert [h["loss"] for h in lazy] == [h["loss"] for h in memory]  # to the last digit
    assert [h["val_loss"] for h in lazy] == [h["val_loss"] for h in memory]
