"""`captioner extract`: encode every photo of a dataset once and cache the feature vectors.

The cache is a pickle of plain data, `{"encoder": ..., "input_size": ..., "feature_dim": ...,
"weights": ..., "features": {image name: float32 vector}}`, read back through a restricted
unpickler. It is rewritten atomically every minute and when extraction ends (also by Ctrl-C or
a crash), so an interrupted run keeps what it finished and the next run resumes where it
stopped.

A grid cache (`extract --grid`, for the attention decoder) holds each photo's last feature map
flattened cell by cell: `cells` > 0 and vectors of cells * channels numbers = `feature_dim`,
kept as float16 (8,091 Flickr8k photos x 64 cells x 1280 channels: 1.3 GB instead of 2.7).
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captioner.config import EncoderConfig
from captioner.errors import CacheError
from captioner.files import UnsafePickleError, load_restricted_pickle, write_atomic
from captioner.images import batches_of_images

CACHE_FORMAT = "captioner-features/1"
_SAVE_EVERY_SECONDS = 60.0


@dataclass
class FeatureCache:
    encoder: str
    input_size: int
    feature_dim: int
    weights: str
    features: dict[str, np.ndarray] = field(default_factory=dict)
    mirrored: bool = False  # features of the photos flipped left to right (for augmentation)
    cells: int = 0  # 0: pooled vectors; else the grid cells per photo (`extract --grid`)

    def save(self, path: str | Path) -> None:
        data = {"format": CACHE_FORMAT, **self.__dict__}
        write_atomic(path, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))

    def check_encoder(
        self,
        path: str | Path,
        encoder: str,
        weights: str | None = None,
        mirrored: bool = False,
        grid: bool = False,
    ) -> None:
        if grid != (self.cells > 0):
            which = "feature grids" if self.cells else "pooled features"
            raise CacheError(
                f"{path}: holds {which}; expected the other kind (`captioner extract"
                f"{'' if self.cells else ' --grid'}` makes it; the attention decoder needs grids)"
            )
        if mirrored != self.mirrored:
            which = "mirrored photos" if self.mirrored else "photos as they are"
            raise CacheError(
                f"{path}: holds features of {which}; expected the other kind "
                f"(`captioner extract{'' if self.mirrored else ' --mirror'}` makes it)"
            )
        if self.encoder != encoder or (weights is not None and self.weights != weights):
            raise CacheError(
                f"{path}: made by encoder {self.encoder} (weights {self.weights}), not "
                f"{encoder} (weights {weights or self.weights}): extract again with "
                f"--encoder {encoder}, or give another --features file"
            )

    def matrix(self, names: list[str]) -> np.ndarray:
        """Features of `names` stacked into one array of shape (len(names), dim): float32, or
        float16 for grids (in 32 bits the train split's grids would take 2 GB)."""
        dtype = np.float16 if self.cells else np.float32
        return np.stack([self.features[name] for name in names]).astype(dtype, copy=False)


def load_feature_cache(path: str | Path) -> FeatureCache:
    """Reads a cache written by `extract`; raises CacheError for anything else."""
    path = Path(path)
    try:
        data = load_restricted_pickle(path.read_bytes())
    except FileNotFoundError:
        raise CacheError(
            f"{path}: feature cache not found: run `captioner extract` first"
        ) from None
    except UnsafePickleError as error:
        raise CacheError(f"{path}: not a safe feature cache ({error})") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise CacheError(f"{path}: unreadable feature cache ({error})") from None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise CacheError(f"{path}: not a captioner feature cache")
    cache = FeatureCache(
        data["encoder"],
        data["input_size"],
        data["feature_dim"],
        data["weights"],
        data["features"],
        bool(data.get("mirrored", False)),
        int(data.get("cells", 0)),
    )
    for name, vector in cache.features.items():
        if not (isinstance(vector, np.ndarray) and vector.shape == (cache.feature_dim,)):
            raise CacheError(f"{path}: the vector of {name} is not {cache.feature_dim} numbers")
    return cache


@dataclass
class ExtractSummary:
    cache_path: Path
    encoded: int
    already_cached: int
    failed: dict[str, str]  # image name -> why it could not be read
    seconds: float


def default_cache_path(
    data_root: str | Path, encoder: str, mirrored: bool = False, grid: bool = False
) -> Path:
    """Where `extract` puts the cache unless told: data/<dataset folder>-<encoder>.pkl, with
    -mirrored for the mirrored photos and -grid for feature grids before the .pkl."""
    suffix = ("-mirrored" if mirrored else "") + ("-grid" if grid else "")
    return Path("data") / f"{Path(data_root).resolve().name}-{encoder}{suffix}.pkl"


def extract_features(
    data_root: str | Path,
    cache_path: str | Path,
    encoder: EncoderConfig | None = None,
    *,
    progress: bool = True,
    mirror: bool = False,
    grid: bool = False,
) -> ExtractSummary:
    """Encodes every captioned image of the dataset at `data_root` that the cache lacks.

    Args:
        data_root: a dataset folder in either layout (see captioner.data).
        cache_path: the pickle to create or extend; one cache holds one encoder's features.
        encoder: the encoder's registry name, weights ("imagenet", "none" or a weights file)
            and batch size [default: EncoderConfig()].
        progress: show a tqdm progress bar.
        mirror: encode each photo flipped left to right instead (a second cache, which
            `train.mirror_probability` draws on to augment the training photos).
        grid: keep each photo's grid of cells instead of its average (a cache of its own, for
            the attention decoder).
    Returns:
        An ExtractSummary; unreadable images are listed in it, not raised.
    """
    from captioner.data import load_dataset
    from captioner.encoders import get_encoder

    start = time.perf_counter()
    encoder = encoder or EncoderConfig()
    spec = get_encoder(encoder.name)
    dataset = load_dataset(data_root)
    cache_path = Path(cache_path)
    cache = None
    if cache_path.exists():
        cache = load_feature_cache(cache_path)
        cache.check_encoder(cache_path, spec.name, encoder.weights, mirror, grid)
    names = sorted(name for name in dataset.captions if cache is None or name not in cache.features)
    summary = ExtractSummary(cache_path, 0, len(dataset.captions) - len(names), {}, 0.0)
    if names:
        paths = [dataset.image_path(name) for name in names]
        _encode_into_cache(cache, cache_path, encoder, names, paths, summary, progress, mirror,
                           grid)  # fmt: skip
    summary.seconds = time.perf_counter() - start
    return summary


def _encode_into_cache(cache, cache_path, encoder: EncoderConfig, names, paths, summary,
                       progress, mirror, grid) -> None:  # fmt: skip
    """Encodes `paths` in batches into the cache (created if None), saved every minute and at
    the end, even after Ctrl-C or a crash."""
    from tqdm import tqdm

    from captioner.encoders import build_encoder, get_encoder, grid_cells, make_encode_function

    spec = get_encoder(encoder.name)
    model = build_encoder(spec.name, encoder.weights, grid)
    if cache is None:  # a grid's size is known once the encoder is built
        cells = grid_cells(model) if grid else 0
        dim = int(np.prod(model.output_shape[1:]))  # a grid's cells * channels
        cache = FeatureCache(spec.name, spec.input_size, dim, encoder.weights, {}, mirror, cells)
    dtype = np.float16 if grid else np.float32
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
                for i, vector in zip(indices, encode(images)):
                    cache.features[names[i]] = vector.astype(dtype)
            summary.encoded += len(images)
            bar.update(len(indices) + len(errors))
            if time.monotonic() - last_save > _SAVE_EVERY_SECONDS:
                cache.save(cache_path)
                last_save = time.monotonic()
    finally:  # Ctrl-C or a crash keeps every finished image
        bar.close()
        cache.save(cache_path)
