"""The feature cache (safe to load, resumable) and extraction: skipping, mirrored, grid.

Reading the photos themselves is tests/test_images.py."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from captioner.errors import CacheError
from captioner.features.extract import extract_features
from captioner.features.store import load_feature_cache, write_feature_cache
from tests.conftest import TINY, TINY_16, TINY_ENCODER


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_file_is_refused_unread_with_the_way_out(tmp_path):
    """captioner 0.1 wrote one .pkl per cache; it is no longer read (not even restricted): a file
    given as a cache gets one line saying to extract again, and nothing in it runs."""
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": "captioner-features/1", "features": RunsCode()}))
    with pytest.raises(CacheError) as error:
        load_feature_cache(path)
    assert str(error.value) == (
        f"{path}: a file, not a feature cache (a folder with store.json): run `captioner "
        "extract` again to make one"
    )
    assert not (tmp_path / "pwned").exists()


def test_extract_skips_broken_photos_and_resumes(flickr8k_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(flickr8k_data, data)
    images = sorted((data / "Flicker8k_Dataset").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:100])  # truncated JPEG
    first = extract_features(data, tmp_path / "f", TINY_16, progress=False)
    assert first.encoded == 159 and list(first.failed) == [images[0].name]
    # An interrupted run left part of the cache: the next run does only the rest.
    whole = load_feature_cache(tmp_path / "f")
    kept = sorted(whole.row_of)[:50]
    write_feature_cache(tmp_path / "partial", whole.info, kept, whole.matrix(kept))
    second = extract_features(data, tmp_path / "partial", TINY_16, progress=False)
    assert (second.encoded, second.already_cached) == (109, 50)
    resumed = load_feature_cache(tmp_path / "partial")
    assert len(resumed) == 159
    np.testing.assert_array_equal(
        resumed.matrix(sorted(whole.row_of)), whole.matrix(sorted(whole.row_of))
    )


def test_mirror_encodes_the_photos_flipped_into_a_cache_marked_as_such(flickr8k_data, tmp_path):
    extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False)
    extract_features(flickr8k_data, tmp_path / "m", TINY, progress=False, mirror=True)
    plain, mirrored = load_feature_cache(tmp_path / "f"), load_feature_cache(tmp_path / "m")
    assert mirrored.mirrored and not plain.mirrored
    name = sorted(plain.row_of)[0]
    # The tiny encoder averages 4x4 patches: the mirror's grid is the photo's, columns reversed.
    grid = plain.vector(name).reshape(8, 8, 3)
    np.testing.assert_allclose(mirrored.vector(name).reshape(8, 8, 3), grid[:, ::-1], atol=1e-6)
    assert not np.allclose(mirrored.vector(name), plain.vector(name))
    with pytest.raises(CacheError, match="holds features of mirrored photos"):
        mirrored.check_encoder(tmp_path / "m", TINY_ENCODER)
    with pytest.raises(CacheError, match="extract --mirror"):
        extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False, mirror=True)


def test_grid_extraction_keeps_every_cell_in_half_precision(flickr8k_data, tmp_path):
    extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False)
    extract_features(flickr8k_data, tmp_path / "g", TINY, progress=False, grid=True)
    pooled, grid = load_feature_cache(tmp_path / "f"), load_feature_cache(tmp_path / "g")
    assert (grid.cells, grid.feature_dim) == (64, 192) and pooled.cells == 0
    name = sorted(pooled.row_of)[0]
    assert grid.vector(name).dtype == np.float16
    # The tiny encoder's 8 x 8 patches are its cells: the same numbers, cell by cell.
    np.testing.assert_allclose(grid.vector(name), pooled.vector(name), atol=1e-3)
    assert grid.matrix([name]).dtype == np.float16 and pooled.matrix([name]).dtype == np.float32
    with pytest.raises(CacheError, match="holds feature grids; expected the other kind"):
        grid.check_encoder(tmp_path / "g", TINY_ENCODER)
    with pytest.raises(CacheError, match="holds pooled features.*extract --grid"):
        pooled.check_encoder(tmp_path / "f", TINY_ENCODER, grid=True)
