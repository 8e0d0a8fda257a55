"""One split as arrays, the form in which `train`, `finetune` and `evaluate` feed the decoder.

Features are stored once per image; captions are rows of word ids that point at their image's
row. Built from a dataset, a feature cache and a vocabulary; shared by the stages, owned by none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.data.cleaning import tokenize
from captioner.data.datasets import Dataset
from captioner.data.text import Vocabulary, put_teacher_forcing_row
from captioner.errors import CacheError, DataError
from captioner.features.store import (
    FeatureCache,
    FeatureRows,
    default_cache_path,
    load_feature_cache,
)


@dataclass
class CaptionArrays:
    """One split as arrays: features once per image, captions as padded ids."""

    names: list[str]  # image names; row i of `features`
    # (images, D) float32 (float16 for grids): in memory, or rows read from the cache on demand
    features: np.ndarray | FeatureRows
    image_rows: np.ndarray  # (captions,) int32: which feature row each caption belongs to
    inputs: np.ndarray  # (captions, max_words + 1) int32: <start> w1 .. wn <pad> ..
    targets: np.ndarray  # (captions, max_words + 1) int32: w1 .. wn <end> <pad> ..
    mirrored: np.ndarray | FeatureRows | None = None  # (images, D): the photos flipped, if any

    @property
    def lengths(self) -> np.ndarray:
        return (self.targets != 0).sum(axis=1).astype(np.int32)


def caption_arrays(
    dataset: Dataset,
    split: str,
    cache: FeatureCache,
    vocabulary: Vocabulary,
    max_words: int,
    lazy: bool | None = None,
) -> CaptionArrays:
    """Builds the arrays of one split; every image must have its features in the cache.

    lazy: leave the features in the cache, read when indexed (FeatureRows), instead of copying
    them into memory [default: the cache's own choice, `FeatureCache.lazy`].
    """
    names = dataset.splits[split]
    if not names:
        raise DataError(f"{dataset.root}: the {split} split has no images with captions")
    missing = [name for name in names if name not in cache]
    if missing:
        raise CacheError(
            f"{len(missing)} {split} images have no features in the cache (e.g. {missing[0]}): "
            "run `captioner extract` on this dataset with the same encoder"
        )
    rows, inputs, targets = caption_rows(dataset, names, vocabulary, max_words)
    return CaptionArrays(names, _features(cache, names, lazy), rows, inputs, targets)


def caption_rows(dataset: Dataset, names: list[str], vocabulary: Vocabulary, max_words: int):
    """The captions of `names` as teacher-forcing rows: (image_rows, inputs, targets), as in
    CaptionArrays (image_rows index `names`)."""
    # Filled caption by caption: no Python list per caption, which for COCO-sized splits cost
    # hundreds of MB and slowed every garbage collection during training.
    count = sum(len(dataset.captions[name]) for name in names)
    rows = np.empty(count, np.int32)
    inputs = np.zeros((count, max_words + 1), np.int32)
    targets = np.zeros_like(inputs)
    caption_number = 0
    for row, name in enumerate(names):
        for caption in dataset.captions[name]:
            rows[caption_number] = row
            ids = vocabulary.encode(vocabulary.tokenize(caption))
            put_teacher_forcing_row(inputs, targets, caption_number, ids)
            caption_number += 1
    return rows, inputs, targets


def _features(cache: FeatureCache, names: list[str], lazy: bool | None):
    return cache.rows(names) if (cache.lazy if lazy is None else lazy) else cache.matrix(names)


def references(
    dataset: Dataset, names: list[str], tokenizer: str = "words"
) -> list[list[list[str]]]:
    """Every image's reference captions, cleaned into tokens the way the decoder learnt them
    (`tokenizer`: the vocabulary's)."""
    return [[tokenize(c, tokenizer) for c in dataset.captions[name]] for name in names]


def cleaned_captions(dataset: Dataset, names: list[str], tokenizer: str = "words"):
    """The captions of `names` cleaned into tokens, one at a time (for counting tokens without
    holding every caption's list at once)."""
    return (tokenize(c, tokenizer) for name in names for c in dataset.captions[name])


def mirrored_features(
    data_root, cache: FeatureCache, names: list[str], path: str | Path | None, lazy=None
) -> np.ndarray | FeatureRows:
    """Features of the mirrored photos of `names`, from the cache `extract --mirror` wrote with
    the same encoder and weights as `cache`."""
    path = path or default_cache_path(data_root, cache.encoder, True, cache.cells > 0)
    mirrored = load_feature_cache(path)
    mirrored.check_encoder(path, cache.encoder, cache.weights, mirrored=True, grid=cache.cells > 0)
    missing = [name for name in names if name not in mirrored]
    if missing:
        raise CacheError(
            f"{path}: {len(missing)} train images have no mirrored features (e.g. "
            f"{missing[0]}): run `captioner extract --mirror` on this dataset"
        )
    return _features(mirrored, names, lazy)
