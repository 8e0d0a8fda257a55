"""The feature cache (safe to load, resumable) and extraction: skipping, mirrored, grid.

Reading the photos themselves is tests/test_images.py."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from captioner.errors import CacheError
from captioner.features import FeatureCache, extract_features, load_feature_cache
from tests.conftest import TINY_ENCODER


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_cache_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": "captioner-features/1", "features": RunsCode()}))
    with pytest.raises(
        CacheError, match=r"not a safe feature cache \(refusing to load posix.system\)"
    ):
        load_feature_cache(path)
    assert not (tmp_path / "pwned").exists()


def test_cache_round_trip_and_encoder_check(tmp_path):
    cache = FeatureCache("tiny_test", 32, 3, "none", {"a.jpg": np.arange(3, dtype=np.float32)})
    cache.save(tmp_path / "c.pkl")
    loaded = load_feature_cache(tmp_path / "c.pkl")
    np.testing.assert_array_equal(loaded.features["a.jpg"], [0, 1, 2])
    with pytest.raises(CacheError, match="made by encoder tiny_test .* not vgg16"):
        loaded.check_encoder(tmp_path / "c.pkl", "vgg16", "imagenet")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CacheError, match="unreadable feature cache"):
        load_feature_cache(tmp_path / "junk.pkl")


def test_extract_skips_broken_photos_and_resumes(flickr8k_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(flickr8k_data, data)
    images = sorted((data / "Flicker8k_Dataset").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:100])  # truncated JPEG
    cache = tmp_path / "f.pkl"
    first = extract_features(data, cache, TINY_ENCODER, "none", 16, progress=False)
    assert first.encoded == 159 and list(first.failed) == [images[0].name]
    # An interrupted run left part of the cache: the next run does only the rest.
    partial = load_feature_cache(cache)
    partial.features = dict(list(partial.features.items())[:50])
    partial.save(cache)
    second = extract_features(data, cache, TINY_ENCODER, "none", 16, progress=False)
    assert (second.encoded, second.already_cached) == (109, 50)
    assert len(load_feature_cache(cache).features) == 159


def test_mirror_encodes_the_photos_flipped_into_a_cache_marked_as_such(flickr8k_data, tmp_path):
    extract_features(flickr8k_data, tmp_path / "f.pkl", TINY_ENCODER, "none", 64, progress=False)
    extract_features(
        flickr8k_data, tmp_path / "m.pkl", TINY_ENCODER, "none", 64, progress=False, mirror=True
    )
    plain, mirrored = load_feature_cache(tmp_path / "f.pkl"), load_feature_cache(tmp_path / "m.pkl")
    assert mirrored.mirrored and not plain.mirrored
    name = sorted(plain.features)[0]
    # The tiny encoder averages 4x4 patches: the mirror's grid is the photo's, columns reversed.
    grid = plain.features[name].reshape(8, 8, 3)
    np.testing.assert_allclose(mirrored.features[name].reshape(8, 8, 3), grid[:, ::-1], atol=1e-6)
    assert not np.allclose(mirrored.features[name], plain.features[name])
    with pytest.raises(CacheError, match="holds features of mirrored photos"):
        mirrored.check_encoder(tmp_path / "m.pkl", TINY_ENCODER)
    with pytest.raises(CacheError, match="extract --mirror"):
        extract_features(
            flickr8k_data, tmp_path / "f.pkl", TINY_ENCODER, "none", 64, False, mirror=True
        )


def test_grid_extraction_keeps_every_cell_in_half_precision(flickr8k_data, tmp_path):
    extract_features(flickr8k_data, tmp_path / "f.pkl", TINY_ENCODER, "none", 64, progress=False)
    extract_features(
        flickr8k_data, tmp_path / "g.pkl", TINY_ENCODER, "none", 64, progress=False, grid=True
    )
    pooled, grid = load_feature_cache(tmp_path / "f.pkl"), load_feature_cache(tmp_path / "g.pkl")
    assert (grid.cells, grid.feature_dim) == (64, 192) and pooled.cells == 0
    name = sorted(pooled.features)[0]
    assert grid.features[name].dtype == np.float16
    # The tiny encoder's 8 x 8 patches are its cells: the same numbers, cell by cell.
    np.testing.assert_allclose(grid.features[name], pooled.features[name], atol=1e-3)
    assert grid.matrix([name]).dtype == np.float16 and pooled.matrix([name]).dtype == np.float32
    with pytest.raises(CacheError, match="holds feature grids; expected the other kind"):
        grid.check_encoder(tmp_path / "g.pkl", TINY_ENCODER)
    with pytest.raises(CacheError, match="holds pooled features.*extract --grid"):
        pooled.check_encoder(tmp_path / "f.pkl", TINY_ENCODER, grid=True)
