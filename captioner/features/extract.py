"""`captioner extract`: encode every photo of a dataset once and cache the feature vectors.

The cache (captioner.features.store) is a folder of parts, appended as photos are encoded, so an
interrupted run keeps what it finished and the next run resumes where it stopped. With a shard,
only that shard's photos are encoded, into parts of their own.

A grid cache (`extract --grid`, for the grid decoders) holds each photo's last feature map
flattened cell by cell: `cells` > 0 and vectors of cells * channels numbers = `feature_dim`,
kept as float16 (8,091 Flickr8k photos x 64 cells x 1280 channels: 1.3 GB instead of 2.7).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.config import EncoderConfig, TextConfig
from captioner.data.caption_check import checked_dataset
from captioner.data.images import batches_of_images
from captioner.data.shards import Shard
from captioner.errors import CacheError
from captioner.features.store import (
    STORE_FILE,
    CacheInfo,
    CacheWriter,
    find_shards,
    load_feature_cache,
)
from captioner.locks import WriterLock

# A killed extraction loses at most this much work: a part is written every minute, or sooner
# when it reaches _PART_BYTES (a grid's minute of rows can be half a gigabyte).
_SAVE_EVERY_SECONDS = 60.0
_PART_BYTES = 256 * 2**20


@dataclass
class ExtractSummary:
    cache_path: Path
    encoded: int
    already_cached: int
    failed: dict[str, str]  # image name -> why it could not be read
    seconds: float
    shard: Shard


def extract_features(
    data_root: str | Path,
    cache_path: str | Path,
    encoder: EncoderConfig | None = None,
    *,
    progress: bool = True,
    mirror: bool = False,
    grid: bool = False,
    shard: Shard | None = None,
    text: TextConfig | None = None,
    notes: Callable[[str], None] | None = None,
) -> ExtractSummary:
    """Encodes every captioned image of the dataset at `data_root` that the cache lacks.

    Args:
        data_root: a dataset folder in any layout (see captioner.data.datasets).
        cache_path: the cache folder to create or extend (see captioner.features.store); one cache
            holds one encoder's features.
        encoder: the encoder's registry name, weights ("imagenet", "none" or a weights file)
            and batch size [default: EncoderConfig()].
        progress: show a tqdm progress bar.
        mirror: encode each photo flipped left to right instead (a second cache, which
            `train.mirror_probability` draws on to augment the training photos).
        grid: keep each photo's grid of cells instead of its average (a cache of its own, for
            the grid decoders).
        shard: encode only this shard of the photos (see captioner.data.shards) [default: all].
        text: the settings the captions will be cleaned with: a dataset whose captions
            cleaning empties is refused before hours of encoding [default: TextConfig()].
        notes: called with one line on what cleaning takes from the captions, if anything.
    Returns:
        An ExtractSummary; unreadable images are listed in it, not raised.
    """
    from captioner.features.encoders import get_encoder

    start = time.perf_counter()
    encoder, shard = encoder or EncoderConfig(), shard or Shard()
    get_encoder(encoder.name)  # an unknown name fails before the dataset is read
    dataset = checked_dataset(data_root, text or TextConfig(), notes)
    cache_path = Path(cache_path)
    with _only_writer(cache_path, shard):  # from reading what is cached to the done marker
        cache = _cache_to_extend(cache_path, encoder, mirror, grid, shard)
        mine = shard.select(sorted(dataset.captions))
        names = [name for name in mine if cache is None or name not in cache]
        summary = ExtractSummary(cache_path, 0, len(mine) - len(names), {}, 0.0, shard)
        if names or cache is None:
            paths = [dataset.image_path(name) for name in names]
            _encode_into_cache(cache_path, encoder, names, paths, summary, progress, mirror, grid)
        else:  # a run killed after its last part: only the shard's done marker was missing
            CacheWriter(cache_path, cache.info, shard).finish(summary.already_cached, {})
    summary.seconds = time.perf_counter() - start
    return summary


def _only_writer(cache_path: Path, shard: Shard) -> WriterLock:
    """The shard's lock, `.shard-I-of-N.lock` in the cache folder (made here if need be): two
    processes extracting one shard would each encode the photos the other encodes, and the
    cache would hold them twice. Other shards have locks of their own and run at once."""
    if cache_path.is_file():
        raise CacheError(
            f"{cache_path}: a one-file cache of captioner 0.1; `extract` now writes a folder: "
            "give --features a new path (or delete this file) and extract again"
        )
    cache_path.mkdir(parents=True, exist_ok=True)
    what = cache_path if shard.whole else f"{cache_path} (shard {shard})"
    return WriterLock(cache_path / f".shard-{shard.index}-of-{shard.count}.lock", what,
                      "wait for it to end or stop it")  # fmt: skip


def _cache_to_extend(cache_path: Path, encoder: EncoderConfig, mirror, grid, shard: Shard):
    """The cache already in the folder, None if there is none yet: an empty folder, or one that
    holds only hidden files (the locks of shards that started, the store.json another shard's
    process is writing). Other shards may be missing or unfinished: they are not this one's.
    A cache cut into another number of shards is refused: its parts and this shard's would mix
    two counts, and no stage could read it again."""
    if not (cache_path / STORE_FILE).is_file() and all(
        entry.name.startswith(".") for entry in cache_path.iterdir()
    ):
        return None
    cache = load_feature_cache(cache_path, whole=False)  # anything else: not a cache, refused
    cache.check_encoder(cache_path, encoder.name, encoder.weights, mirror, grid)
    counts = {found.count for found in find_shards(cache_path)} - {shard.count}
    if counts:
        given = "no --shard" if counts == {1} else f"--shard I/{counts.pop()}"
        asked = "without --shard" if shard.whole else f"in {shard.count} shards"
        raise CacheError(f"{cache_path}: extracted with {given}, not {asked}: "
                         f"extract it with {given} again, or give another --features")  # fmt: skip
    return cache


def _encode_into_cache(cache_path, encoder: EncoderConfig, names, paths, summary,
                       progress, mirror, grid) -> None:  # fmt: skip
    """Encodes `paths` in batches into the cache, a part every minute and at the end, even
    after Ctrl-C or a crash; marks the shard done when every photo was encoded or failed."""
    from tqdm import tqdm

    from captioner.features.encoders import (
        build_encoder,
        get_encoder,
        grid_cells,
        make_encode_function,
    )

    spec = get_encoder(encoder.name)
    model = build_encoder(spec.name, encoder.weights, grid)
    info = CacheInfo(
        spec.name,
        spec.input_size,
        int(np.prod(model.output_shape[1:])),
        encoder.weights,
        mirror,
        grid_cells(model) if grid else 0,
    )  # fmt: skip  -- a grid's feature_dim is its cells * channels
    writer = CacheWriter(cache_path, info, summary.shard)
    encode = make_encode_function(model, encoder.batch_size)
    last_save = time.monotonic()
    bar = tqdm(total=len(names), unit="img", desc=f"extract {spec.name}", disable=not progress)
    try:
        for indices, images, errors in batches_of_images(
            paths, spec.input_size, encoder.batch_size
        ):
            summary.failed.update({names[i]: why for i, why in errors.items()})
            if len(images):
                if mirror:
                    images = np.ascontiguousarray(images[:, :, ::-1])
                writer.add([names[i] for i in indices], encode(images))
            summary.encoded += len(images)
            bar.update(len(indices) + len(errors))
            if time.monotonic() - last_save > _SAVE_EVERY_SECONDS or (
                writer.pending_bytes > _PART_BYTES
            ):
                writer.flush()
                last_save = time.monotonic()
    finally:  # Ctrl-C or a crash keeps every finished image
        bar.close()
        writer.flush()
    writer.finish(summary.encoded + summary.already_cached, summary.failed)
