"""Shards: every photo in exactly one, by its name alone, the same on every machine."""

from __future__ import annotations

import pytest

from captioner.data.shards import Shard, parse_shard, shard_of
from captioner.errors import ConfigError

NAMES = [f"{1000 + i}_{i * 7919 % 1000:03d}.jpg" for i in range(300)] + [
    "2024/07/beach.jpg",
    "photo é.png",
    "",
]


@pytest.mark.parametrize("count", range(1, 8))
def test_every_name_is_in_exactly_one_shard(count):
    shards = [Shard(index, count).select(NAMES) for index in range(1, count + 1)]
    assert sorted(name for shard in shards for name in shard) == sorted(NAMES)  # no gap, no twin
    assert all(shard_of(name, count) in range(1, count + 1) for name in NAMES)
    if count > 1:  # a hash spreads names over the shards (300 names: none near empty)
        assert min(map(len, shards)) > len(NAMES) / count / 2


def test_one_shard_holds_everything_in_order():
    assert Shard().whole and parse_shard(None) == Shard(1, 1)
    assert Shard(1, 1).select(NAMES) == NAMES
    assert parse_shard("1/1").select(reversed(NAMES)) == NAMES[::-1]


def test_a_name_has_the_same_shard_everywhere():
    # blake2b of the UTF-8 name: these values must never change, or resumed and parallel
    # jobs started by different versions would split a folder differently.
    expected = {
        "1000268201_693b08cb0e.jpg": [1, 2, 1, 7],
        "2024/07/beach.jpg": [2, 1, 2, 4],
        "IMG_0001.JPG": [2, 2, 2, 2],
        "photo é.png": [1, 1, 1, 7],
    }
    for name, shards in expected.items():
        assert [shard_of(name, count) for count in (2, 3, 4, 7)] == shards, name
        assert parse_shard(f"{shards[2]}/4").holds(name)


def test_parse_shard():
    assert parse_shard("2/4") == Shard(2, 4) and str(parse_shard("2/4")) == "2/4"


@pytest.mark.parametrize("text", ["0/2", "3/2", "x", "1/0", "2", "1/2/3", "a/b", "/"])
def test_bad_shard_specs_are_config_errors(text):
    with pytest.raises(ConfigError) as error:
        parse_shard(text)
    assert str(error.value) == f"--shard {text}: expected I/N with 1 <= I <= N, e.g. 1/4"
