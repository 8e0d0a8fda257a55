"""The Python API: a model loaded once, captioning photos given as paths, PIL images or arrays.

    from captioner import Captioner

    captioner = Captioner.load()                     # the shipped Flickr8k model
    captioner.caption("photo.jpg")                   # 'a dog runs through the grass'
    captioner.caption(["a.jpg", "b.jpg"], beam=1)    # ['...', '...'], greedy
    captioner.caption("photo.jpg", scores=True)      # ('...', -0.62)
    Captioner.load("runs/seed0", "runs/seed1")       # a run of yours, or an ensemble
    Captioner.load("runs/att").caption("photo.jpg", attention=True)  # ('...', (words, rows, cols))

Photos go through the same reading as `captioner caption` (captioner.data.images.prepare_image),
so a file, the PIL image opened from it and its pixels as an array get the same caption.

Thread-safety: a Captioner is meant to be called from one thread at a time. Its compiled
decoders are cached in a plain dict, and the model's graphs are traced on first use, so calls
from several threads at once are not supported. `captioner serve` makes every call on its one
model thread and gathers concurrent requests into batches instead (captioner.serving.app).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.config import DECODE_RANGES, DecodeConfig
from captioner.errors import ConfigError, ImageError
from captioner.model.ensembles import load_runs
from captioner.model.rundir import Run

# Photos per model call (encoder, then decoder) in caption(): large enough to keep the CPU's
# cores busy, small enough that the decoded photos of one call stay a few MB.
CAPTION_BATCH = 32
# The encoder's batch sizes, as TF Serving's allowed_batch_sizes: a batch is padded with blank
# photos up to the next one (their features dropped), larger ones split in 16s. Each batch size
# the encoder meets costs about 11 MB the first time (oneDNN's buffers for that shape; measured
# on EfficientNet-Lite1, 2026-11-30), so a fixed few keep memory flat, and warm_up() meets them
# all at start-up. Padding adds at most a third (9 -> 12); 16 at a time is as fast per photo as
# 32 on 2 CPU cores, for less memory.
ENCODER_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
# Compiled decoders kept, one per decoding setting: each new setting costs a compilation (about
# a second), and an unbounded cache would grow with every setting a client tries.
DECODERS_KEPT = 8


def attention_grid(runs: list[Run], what: str = "attention") -> tuple[int, int]:
    """The (rows, columns) of the grid the runs' decoder attends over (an ensemble's members
    share their encoder, so its grid: load_runs checks). ConfigError in one line, naming
    `what` was asked, for runs that decode without attention: there is nothing to draw."""
    run = runs[0]
    if not run.config.model.needs_grid:
        names = "the shipped model" if run.shipped else ", ".join(str(r.directory) for r in runs)
        raise ConfigError(f"{what}: {names} decodes without attention (model.decoder = "
                          f"{run.config.model.decoder}): nothing to draw")  # fmt: skip
    # Encoders read square photos, so their grids are square; a strip if one ever is not.
    side = math.isqrt(run.encoder.cells)
    return (side, side) if side * side == run.encoder.cells else (1, run.encoder.cells)


class Captioner:
    """A run (or an ensemble of runs) ready to caption: its encoder built and compiled once, its
    decoder's steps once, and one compiled search per decoding setting, kept as used."""

    def __init__(self, runs: list[Run]):
        from captioner.features.encoders import make_encode_function
        from captioner.model.ensembles import decoder_steps, encoder_runs
        from captioner.quiet import import_tensorflow

        import_tensorflow()
        self.runs = runs
        run = runs[0]
        self.vocabulary = run.vocabulary
        self.input_size = run.encoder.input_size
        # One encoder, or one per fine-tuned member of an ensemble (captioner.model.rundir).
        # batch_size 1: no padding there (features() pads to ENCODER_BATCH_SIZES); after its
        # second batch size the compiled forward pass takes any size without retracing.
        self._encoders = [make_encode_function(r.load_encoder(), 1) for r in encoder_runs(runs)[0]]
        self._steps = decoder_steps(runs)
        self._decoders: OrderedDict[tuple[DecodeConfig, bool], object] = OrderedDict()

    @property
    def attends(self) -> bool:
        """Whether its decoder attends over a grid, so that caption(attention=True) works."""
        return self.runs[0].config.model.needs_grid

    @classmethod
    def load(cls, *run_dirs: str | os.PathLike | Run) -> Captioner:
        """No argument: the shipped Flickr8k model. One run directory, or several to decode as
        an ensemble (same vocabulary and encoder; checked). Raises RunError naming what is
        missing."""
        return cls(load_runs(list(run_dirs) or None))

    def decoding(
        self, beam=None, max_length=None, length_penalty=None, no_repeat_ngram=None
    ) -> DecodeConfig:
        """The run's own decoding settings with those given on top; ConfigError if out of range
        (captioner.config.DECODE_RANGES)."""
        given = {"beam": beam, "max_length": max_length}
        given |= {"length_penalty": length_penalty, "no_repeat_ngram": no_repeat_ngram}
        return self.runs[0].decoding(
            **{DECODE_RANGES[name][0]: value for name, value in given.items()}
        )

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
                the run's own (the shipped model: beam 3, length penalty 0.7, no repeated
                trigrams).
            scores: also return each caption's score, log P(caption | photo) / length **
                length_penalty (length counts the end token): the number beam search ranks
                by, computed the same way for greedy captions. Higher is more confident.
            attention: also return, for a run with a grid decoder, the weights each
                word was predicted with, float32 (words, rows, columns) over the encoder's
                grid, each map summing to 1: those the search that chose the caption carried
                for it (an ensemble: the mean of its members'). The caption is the same.
        Returns:
            A caption for one photo, a list for a list; with scores, (caption, score) pairs;
            with attention, (caption, weights), or (caption, score, weights) with both.
        Raises:
            ImageError for a photo that cannot be read, ConfigError for a bad setting or for
            attention from a run without it.
        """
        decoding = self.decoding(beam, max_length, length_penalty, no_repeat_ngram)
        if attention:
            attention_grid(self.runs, "attention=True")
        many = isinstance(photos, list | tuple)
        photos = list(photos) if many else [photos]
        results = []
        for start in range(0, len(photos), CAPTION_BATCH):
            chunk = np.stack([self.prepare(p) for p in photos[start : start + CAPTION_BATCH]])
            results += self.caption_images(chunk, decoding, attention)
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

    def caption_images(
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

    def captions_of_features(
        self, features: np.ndarray, decoding: DecodeConfig, attention: bool = False
    ) -> list[tuple]:
        """(caption, score) for each row of encoder features (N, feature_dim): one decoder
        call (what `captioner caption` runs on chunks of encoded photos). attention: (caption,
        score, weights) with the weights (words, rows, columns) of each word, from the same
        search (ConfigError for a run without attention)."""
        grid = attention_grid(self.runs, "attention") if attention else None
        ids, values, *maps = self._decoder(decoding, attention)(features)
        results = []
        for i, (row, value) in enumerate(zip(ids, values)):
            words = self.vocabulary.decode(row)
            result = (self.vocabulary.join(words), float(value))
            if grid:  # a map per word: <start> and <pad> are never generated, so they align
                result += (maps[0][i, : len(words)].reshape(len(words), *grid),)
            results.append(result)
        return results

    def features(self, images: np.ndarray) -> np.ndarray:
        """The encoder's features of prepared photos (N, size, size, 3), in batches of
        ENCODER_BATCH_SIZES (padded up to the next one). An ensemble with fine-tuned encoders
        gets each distinct encoder's features side by side (what its decoder steps read)."""
        largest, parts = ENCODER_BATCH_SIZES[-1], []
        for start in range(0, len(images), largest):
            chunk = images[start : start + largest]
            size = next(s for s in ENCODER_BATCH_SIZES if s >= len(chunk))
            blank = np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)
            padded = np.concatenate([chunk, blank])
            parts.append(np.hstack([encode(padded)[: len(chunk)] for encode in self._encoders]))
        return np.concatenate(parts)

    def features_of_files(self, paths: list[Path], batch_size: int = CAPTION_BATCH) -> np.ndarray:
        """features() of photo files; ImageError naming the first that cannot be read."""
        from captioner.features.encoders import encode_files

        return encode_files(self.features, paths, self.input_size, batch_size)

    def warm_up(self, largest_batch: int = CAPTION_BATCH) -> None:
        """Runs the encoder once at every batch size it will meet, and the run's own decoder on
        `largest_batch` photos, all blank: the first real captions do not wait for compilation,
        and memory does not grow later as new batch sizes come."""
        size = self.input_size
        blank = np.full((max(largest_batch, ENCODER_BATCH_SIZES[-1]), size, size, 3), 255)
        blank = blank.astype(np.uint8)
        for count in ENCODER_BATCH_SIZES:
            self.features(blank[:count])
        self.caption_images(blank[:largest_batch], self.decoding())

    def describe(self) -> dict:
        """What is loaded: the run directories, encoder, vocabulary and decoding settings."""
        run = self.runs[0]
        return {
            "model": "shipped Flickr8k model" if run.shipped else str(run.directory),
            "runs": [str(r.directory) for r in self.runs],
            "encoder": run.encoder.name,
            "input_size": self.input_size,
            "vocabulary_size": len(self.vocabulary),
            "decoding": dataclasses.asdict(self.decoding()),
            "attention": self.attends,
        }

    def _decoder(self, decoding: DecodeConfig, attention: bool = False):
        """The compiled search for these settings; with attention, the one that also carries
        the weights (its own graph: plain decoding never pays for them)."""
        from captioner.model.search import make_decoder

        key = (decoding, attention)
        if key in self._decoders:
            self._decoders.move_to_end(key)
        else:
            vocabulary_size = len(self.vocabulary)
            self._decoders[key] = make_decoder(
                self._steps, vocabulary_size, decoding, scores=True, attention=attention
            )
            while len(self._decoders) > DECODERS_KEPT:
                self._decoders.popitem(last=False)
        return self._decoders[key]
