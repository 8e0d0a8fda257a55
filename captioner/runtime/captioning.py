"""One path from photos to their words, whatever computes them.

A Captioner holds an engine: TensorFlow in process (captioner.inference.api.TensorFlowEngine)
or an exported model through onnxruntime (captioner.runtime.exported.OnnxEngine). The engine
turns prepared photos into features and features into word ids; everything else is here, once:
reading photos, batching them, the decoding settings, ids into text, attention into grids.
`captioner caption`, `captioner serve`, the Python API and `python -m captioner.runtime` all
caption through it. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from captioner.config import DECODE_RANGES, DecodeConfig, decoding_with
from captioner.data.images import Photo
from captioner.data.text import Vocabulary
from captioner.errors import ImageError

# Photos per model call in caption(): large enough to keep the CPU's cores busy, small enough
# that the decoded photos of one call stay a few MB.
CAPTION_BATCH = 32
# Photos whose features are decoded together by caption_files(): beam search takes less CPU
# per photo on large batches. Shipped model, 2-core CPU: 54.1 photos/s at 256 against 53.5 at
# 16 on a quiet machine (the decoding thread hides most of it), 50.2 against 34.5 under other
# load (docs/performance.md, "Captioning a photo archive").
DECODE_BATCH = 256


class Engine(Protocol):
    """What computes captions: features of prepared photos, then word ids from features."""

    vocabulary: Vocabulary
    input_size: int  # photos are (input_size, input_size, 3) uint8
    decoding: DecodeConfig  # the model's own settings
    batch_size: int  # photos read and encoded together from files
    attends: bool  # whether search(attention=True) can give each word's weights

    def features(self, images: np.ndarray) -> np.ndarray: ...

    def search(self, features: np.ndarray, decoding: DecodeConfig, attention: bool) -> tuple:
        """(ids (N, max_length), scores (N,)), and with attention the weights (N, words, cells)."""
        ...

    def attention_grid(self, what: str) -> tuple[int, int]:
        """(rows, columns) of the attention maps; ConfigError naming `what` if it has none."""
        ...


@dataclass
class CaptionResult:
    path: Path
    caption: str | None  # None when the photo could not be read
    error: str | None = None
    name: str = ""  # how outputs and shards know the photo (captioner.data.images.Photo.name)
    score: float | None = None  # log P / length ** length_penalty, what beam search ranks by
    # Asked for (caption_files(attention=True)): each word's weights (words, rows, columns).
    attention: Any = None


class Captioner:
    """A model ready to caption, through its engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.vocabulary = engine.vocabulary
        self.input_size = engine.input_size

    @classmethod
    def from_export(cls, folder: str | os.PathLike) -> Captioner:
        """A folder of `captioner export --format onnx`, captioning through onnxruntime."""
        from captioner.runtime.exported import OnnxEngine

        return cls(OnnxEngine(folder))

    @property
    def attends(self) -> bool:
        """Whether its decoder attends over a grid, so that caption(attention=True) works."""
        return self.engine.attends

    def attention_grid(self, what: str = "attention") -> tuple[int, int]:
        return self.engine.attention_grid(what)

    def decoding(
        self, beam=None, max_length=None, length_penalty=None, no_repeat_ngram=None
    ) -> DecodeConfig:
        """The model's own decoding settings with those given on top; ConfigError if out of
        range (captioner.config.DECODE_RANGES)."""
        given = {"beam": beam, "max_length": max_length}
        given |= {"length_penalty": length_penalty, "no_repeat_ngram": no_repeat_ngram}
        named = {DECODE_RANGES[name][0]: value for name, value in given.items()}
        return decoding_with(self.engine.decoding, **named)

    def caption(
        self,
        photos,
        beam: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        no_repeat_ngram: int | None = None,
        scores: bool = False,
        attention: bool = False,
    ):
        """Captions one photo or a list of them.

        Args:
            photos: a path (str or Path), a PIL image, a uint8 array (height, width, 3), or a
                list of those. A PIL image straight from Image.open, its pixels not loaded yet,
                is read as its file is (a large JPEG at reduced scale, which resizes that image
                object; pass image.copy() to keep it as it is).
            beam, max_length, length_penalty, no_repeat_ngram: decoding settings; None keeps
                the model's own (the shipped model: beam 3, length penalty 0.7, no repeated
                trigrams).
            scores: also return each caption's score, log P(caption | photo) / length **
                length_penalty (length counts the end token): the number beam search ranks
                by, computed the same way for greedy captions. Higher is more confident.
            attention: also return, for a model with a grid decoder, the weights each
                word was predicted with, float32 (words, rows, columns) over the encoder's
                grid, each map summing to 1: those the search that chose the caption carried
                for it (an ensemble: the mean of its members'). The caption is the same.
        Returns:
            A caption for one photo, a list for a list; with scores, (caption, score) pairs;
            with attention, (caption, weights), or (caption, score, weights) with both.
        Raises:
            ImageError for a photo that cannot be read, ConfigError for a bad setting or for
            attention from a model without it.
        """
        decoding = self.decoding(beam, max_length, length_penalty, no_repeat_ngram)
        if attention:
            self.attention_grid("attention=True")
        many = isinstance(photos, list | tuple)
        photos = list(photos) if many else [photos]
        results = []
        for start in range(0, len(photos), CAPTION_BATCH):
            chunk = np.stack([self.prepare(p) for p in photos[start : start + CAPTION_BATCH]])
            results += self.caption_batch(chunk, decoding, attention)
        keep = [True, scores, attention]  # caption, score, weights
        results = [tuple(x for x, kept in zip(r, keep) if kept) for r in results]
        results = [r[0] if len(r) == 1 else r for r in results]
        return results if many else results[0]

    def prepare(self, photo) -> np.ndarray:
        """One photo as the encoder reads it, uint8 (input_size, input_size, 3)."""
        from captioner.data.images import prepare_image, try_load_image

        if isinstance(photo, str | os.PathLike):
            image = try_load_image(photo, self.input_size)
            if isinstance(image, str):
                raise ImageError(f"{Path(photo)}: cannot read this image ({image})")
            return image
        if isinstance(photo, np.ndarray) and photo.dtype == np.uint8 and photo.ndim == 3:
            if photo.shape[2] == 3:
                photo = Image.fromarray(photo, "RGB")
        if isinstance(photo, Image.Image):
            try:
                return prepare_image(photo, self.input_size)
            except Exception as error:  # a damaged file behind a lazily loaded image
                reason = f"{type(error).__name__}: {error}".splitlines()[0]
                raise ImageError(f"cannot read this image ({reason})") from None
        shape = f" of shape {photo.shape} and type {photo.dtype}" if hasattr(photo, "shape") else ""
        raise ImageError(
            f"cannot caption a {type(photo).__name__}{shape}: give a path, a PIL image or a "
            "uint8 array of shape (height, width, 3)"
        )

    def caption_batch(
        self, images: np.ndarray, decoding: DecodeConfig, attention: bool = False
    ) -> list[tuple]:
        """(caption, score) for each photo of a batch already prepared, uint8 (N, size, size,
        3): one encoder call and one decoder call (what captioner.serving.app's batches run).
        attention: (caption, score, weights (words, rows, columns)), see captions_of_features."""
        size = self.input_size
        if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
            raise ImageError(f"expected uint8 photos (N, {size}, {size}, 3), got {images.shape}")
        if not len(images):
            return []
        return self.captions_of_features(self.features(images), decoding, attention)

    def features(self, images: np.ndarray) -> np.ndarray:
        """What the engine's search reads for prepared photos (N, size, size, 3)."""
        return self.engine.features(images)

    def captions_of_features(
        self, features: np.ndarray, decoding: DecodeConfig, attention: bool = False
    ) -> list[tuple]:
        """(caption, score) for each row of features(): one search. attention: (caption,
        score, weights) with the weights (words, rows, columns) of each word, from the same
        search (ConfigError for a model without attention)."""
        grid = self.attention_grid("attention") if attention else None
        ids, values, *maps = self.engine.search(features, decoding, attention)
        results = []
        for i, (row, value) in enumerate(zip(ids, values)):
            words = self.vocabulary.decode(row)
            result = (self.vocabulary.join(words), float(value))
            if grid:  # a map per word: <start> and <pad> are never generated, so they align
                result += (maps[0][i, : len(words)].reshape(len(words), *grid),)
            results.append(result)
        return results

    def caption_files(
        self,
        photos: Iterable[Photo | str | Path],
        decoding: DecodeConfig | None = None,
        batch_size: int | None = None,
        decode_batch: int = DECODE_BATCH,
        attention: bool = False,
    ) -> Iterator[list[CaptionResult]]:
        """Captions photo files chunk by chunk, in order: read on threads, encoded
        `batch_size` at a time [default: the engine's], and decoded `decode_batch` at a time
        on a thread while the next chunk is read and encoded. Unreadable photos carry an error
        instead of a caption; only a chunk or two are held at a time, however many photos."""
        from concurrent.futures import ThreadPoolExecutor

        from captioner.data.images import batches_of_images

        decoding = decoding or self.decoding()
        photos = [p if isinstance(p, Photo) else Photo(str(p), Path(p)) for p in photos]
        chunk: list[CaptionResult] = []
        features = []  # the encoded readable photos of `chunk`, batch by batch
        pending = None  # the previous chunk, being decoded
        paths = [photo.path for photo in photos]
        batches = batches_of_images(paths, self.input_size, batch_size or self.engine.batch_size)
        with ThreadPoolExecutor(1) as thread:
            for indices, images, errors in batches:
                if len(indices):
                    features.append(self.features(images))
                for i in sorted([*indices, *errors]):
                    chunk.append(CaptionResult(photos[i].path, None, errors.get(i), photos[i].name))
                if len(chunk) >= decode_batch:
                    if pending is not None:
                        yield pending.result()
                    pending = thread.submit(self._fill, chunk, features, decoding, attention)
                    chunk, features = [], []
            if pending is not None:
                yield pending.result()
            if chunk:
                yield self._fill(chunk, features, decoding, attention)

    def _fill(self, chunk: list[CaptionResult], features, decoding, attention: bool):
        """The chunk with its readable photos' captions, whose features come in order."""
        if features:
            readable = [result for result in chunk if result.error is None]
            found = self.captions_of_features(np.concatenate(features), decoding, attention)
            for result, (caption, score, *maps) in zip(readable, found):
                result.caption, result.score = caption, score
                result.attention = maps[0] if maps else None
        return chunk
