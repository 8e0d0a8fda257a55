"""The Python API: a model loaded once, captioning photos given as paths, PIL images or arrays.

    from captioner import Captioner

    captioner = Captioner.load()                     # the shipped Flickr8k model
    captioner.caption("photo.jpg")                   # 'a dog runs through the grass'
    captioner.caption(["a.jpg", "b.jpg"], beam=1)    # ['...', '...'], greedy
    captioner.caption("photo.jpg", scores=True)      # ('...', -0.62)
    Captioner.load("runs/seed0", "runs/seed1")       # a run of yours, or an ensemble
    Captioner.load("runs/att").caption("photo.jpg", attention=True)  # ('...', (words, rows, cols))
    Captioner.load(engine="auto")                    # the cached ONNX export if there is one

What is the same whatever computes the captions (reading, batching, decoding settings, words)
is captioner.runtime.captioning.Captioner; this one adds loading runs and TensorFlow.

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

from captioner.config import DecodeConfig
from captioner.errors import ConfigError
from captioner.model.ensembles import load_runs
from captioner.model.rundir import Run
from captioner.runtime import captioning
from captioner.runtime.captioning import CAPTION_BATCH

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


class TensorFlowEngine:
    """A run (or an ensemble of runs) in TensorFlow, as a Captioner's engine: its encoder
    built and compiled once, its decoder's steps once, and one compiled search per decoding
    setting, kept as used."""

    def __init__(self, runs: list[Run]):
        from captioner.features.encoders import make_encode_function
        from captioner.model.ensembles import decoder_steps, encoder_runs
        from captioner.quiet import import_tensorflow

        import_tensorflow()
        self.runs = runs
        run = runs[0]
        self.vocabulary = run.vocabulary
        self.input_size = run.encoder.input_size
        self.decoding = run.decoding()
        self.batch_size = run.config.encoder.batch_size
        self.attends = run.config.model.needs_grid
        # One encoder, or one per fine-tuned member of an ensemble (captioner.model.rundir).
        # batch_size 1: no padding there (features() pads to ENCODER_BATCH_SIZES); after its
        # second batch size the compiled forward pass takes any size without retracing.
        self._encoders = [make_encode_function(r.load_encoder(), 1) for r in encoder_runs(runs)[0]]
        self._steps = decoder_steps(runs)
        self._decoders: OrderedDict[tuple[DecodeConfig, bool], object] = OrderedDict()

    def attention_grid(self, what: str) -> tuple[int, int]:
        return attention_grid(self.runs, what)

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

    def search(self, features: np.ndarray, decoding: DecodeConfig, attention: bool = False):
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
        return self._decoders[key](features)


ENGINES = ("tensorflow", "onnx", "auto")


class Captioner(captioning.Captioner):
    """A run (or an ensemble of runs) ready to caption: captioner.runtime.captioning.Captioner
    with TensorFlow as its engine, or the runs' cached ONNX export (see load)."""

    def __init__(self, runs: list[Run], engine=None):
        super().__init__(engine or TensorFlowEngine(runs))
        self.runs = runs

    @classmethod
    def load(cls, *run_dirs: str | os.PathLike | Run, engine: str = "tensorflow") -> Captioner:
        """No argument: the shipped Flickr8k model. One run directory, or several to decode as
        an ensemble (same vocabulary and encoder; checked). Raises RunError naming what is
        missing.

        engine: "tensorflow" (everything, attention included), "onnx" (the runs' export cached
        by an earlier `captioner caption`, captioner.inference.light: starts in about a second,
        same captions, no attention; ConfigError if there is none yet) or "auto" (onnx when
        cached, else tensorflow)."""
        from captioner.inference.light import cached_light_engine

        if engine not in ENGINES:
            raise ConfigError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
        runs = load_runs(list(run_dirs) or None)
        light = cached_light_engine(runs) if engine != "tensorflow" else None
        if engine == "onnx" and light is None:
            raise ConfigError("engine: no ONNX export of this model is cached yet: caption "
                              "once with engine='tensorflow' (`captioner caption`)")  # fmt: skip
        return cls(runs, light)

    @property
    def engine_name(self) -> str:
        return "tensorflow" if isinstance(self.engine, TensorFlowEngine) else "onnx"

    def export_for_fast_start(self) -> Path | None:
        """After captioning through TensorFlow: starts exporting the runs into the fast-start
        cache in the background (captioner.inference.light); the folder, or None if it
        started nothing."""
        from captioner.inference.light import export_light_in_background

        if self.engine_name != "tensorflow":
            return None
        return export_light_in_background(self.runs)

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
        self.caption_batch(blank[:largest_batch], self.decoding())

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
            "engine": self.engine_name,
        }
