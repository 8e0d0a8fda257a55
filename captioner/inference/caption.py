"""`captioner caption`: captions for your own photos, from a run directory.

Photos stream through in batches: read on threads, encoded `batch_size` at a time (the encoder's
batch), and their features decoded `decode_batch` at a time on a thread while the next chunk is
encoded (beam search costs less per photo on a large batch). Only a chunk or two of results
are held at a time, so memory stays flat however large the folder; `caption_to_file` appends
each chunk to a captions file as it comes (see captioner.inference.caption_files) and skips the
photos already in it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.config import DecodeConfig
from captioner.data.images import Photo, find_some_photos
from captioner.data.shards import Shard
from captioner.errors import ConfigError
from captioner.inference.caption_files import CaptionWriter, output_format, read_names
from captioner.locks import WriterLock
from captioner.model.rundir import Run

# Photos whose features are decoded together: beam search takes less CPU per photo on large
# batches. Shipped model, 2-core CPU: 54.1 photos/s at 256 against 53.5 at 16 on a quiet
# machine (the decoding thread hides most of it), 50.2 against 34.5 under other load (docs/
# performance.md, "Captioning a photo archive").
DECODE_BATCH = 256

RunDirs = list[str | Path | Run] | None


@dataclass
class CaptionResult:
    path: Path
    caption: str | None  # None when the photo could not be read
    error: str | None = None
    name: str = ""  # how outputs and shards know the photo (captioner.data.images.Photo.name)
    # Asked for (stream_captions(attention=True)): each word's weights (words, rows, columns).
    attention: Any = None


@dataclass
class CaptionFileSummary:
    output: Path
    captioned: int  # photos captioned by this run
    already_done: int  # photos of this shard found in the output, captioned or unreadable
    unreadable: dict[str, str] = field(default_factory=dict)  # name -> why, this run's
    seconds: float = 0.0


def select_photos(inputs: Iterable[str | Path], shard: Shard | None = None) -> list[Photo]:
    """The photos of `inputs` (files, or folders searched below) that belong to `shard`; raises
    DataError if `inputs` hold none at all (folders without an image file, or no input)."""
    shard = shard or Shard()
    return [photo for photo in find_some_photos(list(inputs)) if shard.holds(photo.name)]


def make_captioner(
    run_dirs: RunDirs,
    decode: DecodeConfig | None = None,
    batch_size: int | None = None,
    decode_batch: int = DECODE_BATCH,
    light=None,
    attention: bool = False,
) -> Callable[[Iterable[Photo | str | Path]], Iterator[list[CaptionResult]]]:
    """Loads the model once through the Python API (captioner.inference.api, which `captioner
    serve` uses too), or uses `light`, the runs' light export (captioner.inference.light), which
    needs no TensorFlow; returns f(photos) -> the iter_captions generator. attention: results
    carry their weights (the Python API's; not with `light`)."""
    if light is not None:
        model = _LightModel(light, decode)
        return lambda photos: _chunks_of_captions(photos, model, model.decoder, BATCH_OF_LIGHT,
                                                  decode_batch)  # fmt: skip
    from captioner.inference.api import Captioner
    from captioner.model.ensembles import load_runs

    captioner = Captioner(load_runs(run_dirs))
    decode = decode or captioner.decoding()
    batch_size = batch_size or captioner.runs[0].config.encoder.batch_size

    def decoder(features):
        return captioner.captions_of_features(features, decode, attention)

    def caption(photos):
        return _chunks_of_captions(photos, captioner, decoder, batch_size, decode_batch)

    return caption


BATCH_OF_LIGHT = 16  # photos read at a time for the light export (it searches 16 at a time)


class _LightModel:
    """A light export where _chunks_of_captions wants a Captioner: its "features" are the
    photos themselves, which the export encodes and decodes in one go."""

    def __init__(self, light, decode: DecodeConfig | None):
        self.light, self.decode = light, decode
        self.input_size = light.input_size

    def features(self, images):
        return images

    def decoder(self, images):
        return self.light.caption_images(images, self.decode)


def iter_captions(
    run_dirs: RunDirs,
    photos: Iterable[Photo | str | Path],
    decode: DecodeConfig | None = None,
    batch_size: int | None = None,
    decode_batch: int = DECODE_BATCH,
) -> Iterator[list[CaptionResult]]:
    """Captions `photos` a chunk at a time.

    Args:
        run_dirs: directories written by `captioner train` (or runs already loaded), one or
            several (an ensemble); None or empty: the shipped reference model.
        photos: Photos (see select_photos), or paths, each named as given.
        decode: decoding settings; the run's own when None.
        batch_size: photos per encoder pass [default: the run's encoder.batch_size].
        decode_batch: photos whose features are decoded together (larger is faster per photo).
    Yields:
        A list of CaptionResult per chunk of about `decode_batch` photos, in the photos' order;
        unreadable photos carry an error instead of a caption.
    """
    yield from make_captioner(run_dirs, decode, batch_size, decode_batch)(photos)


def _chunks_of_captions(photos, captioner, decoder, batch_size: int, decode_batch: int):
    """Yields the photos' results chunk by chunk; a chunk is decoded on a thread while the
    next one is read and encoded (TensorFlow runs both at once on the CPU's cores)."""
    from concurrent.futures import ThreadPoolExecutor

    from captioner.data.images import batches_of_images

    photos = [p if isinstance(p, Photo) else Photo(str(p), Path(p)) for p in photos]
    paths = [photo.path for photo in photos]
    chunk: list[CaptionResult] = []
    features = []  # the encoded readable photos of `chunk`, batch by batch
    decoding = None  # the previous chunk, being decoded
    with ThreadPoolExecutor(1) as thread:
        for indices, images, errors in batches_of_images(paths, captioner.input_size, batch_size):
            if len(indices):
                features.append(captioner.features(images))
            for i in sorted([*indices, *errors]):
                chunk.append(CaptionResult(photos[i].path, None, errors.get(i), photos[i].name))
            if len(chunk) >= decode_batch:
                if decoding is not None:
                    yield decoding.result()
                decoding = thread.submit(_decoded, chunk, features, decoder)
                chunk, features = [], []
        if decoding is not None:
            yield decoding.result()
        if chunk:
            yield _decoded(chunk, features, decoder)


def _decoded(chunk: list[CaptionResult], features, decoder) -> list[CaptionResult]:
    """Fills in the captions of the chunk's readable photos, whose features come in order."""
    import numpy as np

    if features:
        readable = [result for result in chunk if result.error is None]
        for result, (caption, _, *maps) in zip(readable, decoder(np.concatenate(features))):
            result.caption = caption
            result.attention = maps[0] if maps else None
    return chunk


def caption_images(
    run_dirs: RunDirs,
    image_paths: list[str | Path],
    decode: DecodeConfig | None = None,
    batch_size: int | None = None,
) -> list[CaptionResult]:
    """Captions each photo (folders are expanded to the images below them), all in one list:
    for many photos, iterate over `iter_captions` or write them with `caption_to_file`.

    Returns:
        One CaptionResult per image, in order; unreadable images carry an error instead.
    """
    photos = select_photos(image_paths)
    return [
        result for chunk in iter_captions(run_dirs, photos, decode, batch_size) for result in chunk
    ]


def stream_captions(
    run_dirs: RunDirs,
    inputs: list[str | Path],
    decode: DecodeConfig | None = None,
    shard: Shard | None = None,
    progress: bool = False,
    decode_batch: int = DECODE_BATCH,
    light=None,
    attention: bool = False,
) -> Iterator[CaptionResult]:
    """One CaptionResult after another for the photos of `inputs` in `shard`, as they come
    (with a tqdm progress bar on stderr if `progress`); through `light`, a light export, if
    given, or with each word's attention weights if `attention` (see make_captioner)."""
    from tqdm import tqdm

    photos = select_photos(inputs, shard)
    caption = make_captioner(run_dirs, decode, decode_batch=decode_batch, light=light,
                             attention=attention)  # fmt: skip
    with tqdm(total=len(photos), unit="photo", desc="caption", disable=not progress) as bar:
        for chunk in caption(photos):
            yield from chunk
            bar.update(len(chunk))


def caption_to_file(
    run_dirs: RunDirs,
    inputs: list[str | Path],
    output: str | Path,
    decode: DecodeConfig | None = None,
    *,
    shard: Shard | None = None,
    progress: bool = True,
    decode_batch: int = DECODE_BATCH,
) -> CaptionFileSummary:
    """Captions the photos of `inputs` (in `shard`) that the captions file `output` lacks.

    Each chunk's rows are appended and flushed as it is decoded; unreadable photos get a row
    with their error, so that a later run does not try them again. A run killed at any point
    resumes where it stopped (see captioner.inference.caption_files for the format).

    Args:
        output: a .jsonl, .csv or .tsv file, created or extended.
        progress: show a tqdm progress bar (on stderr).
    Returns:
        A CaptionFileSummary; unreadable photos are listed in it, not raised.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    output_format(output)  # an unknown suffix fails before any work
    photos = select_photos(inputs, shard)
    _check_names_unique(photos, output)
    with _only_writer(Path(output)):  # from reading what is done to the last row appended
        done = read_names(output)
        todo = [photo for photo in photos if photo.name not in done]
        summary = CaptionFileSummary(Path(output), 0, len(photos) - len(todo))
        bar = tqdm(total=len(todo), unit="photo", desc="caption", disable=not (progress and todo))
        chunks = iter_captions(run_dirs, todo, decode, decode_batch=decode_batch) if todo else []
        with CaptionWriter(output) as writer, bar:
            for chunk in chunks:
                writer.write((result.name, result.caption or "", result.error) for result in chunk)
                summary.captioned += sum(result.error is None for result in chunk)
                summary.unreadable.update({r.name: r.error for r in chunk if r.error is not None})
                bar.update(len(chunk))
    summary.seconds = time.perf_counter() - start
    return summary


def _only_writer(output: Path) -> WriterLock:
    """The captions file's lock (.NAME.lock beside it): two processes appending to one file
    would each caption the photos the other is captioning. Shards each have their own file."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # no lock can be had there, and CaptionWriter says why it cannot write either
    return WriterLock(output.with_name(f".{output.name}.lock"), output,
                      "wait for it to end or stop it, or give another --output")  # fmt: skip


def _check_names_unique(photos: list[Photo], output: str | Path) -> None:
    """An output knows a photo by its name: two photos of one name would be one row."""
    seen: dict[str, Path] = {}
    for photo in photos:
        if photo.name in seen:
            raise ConfigError(
                f"{output}: two photos are named {photo.name} ({seen[photo.name]} and "
                f"{photo.path}): caption each folder into its own output"
            )
        seen[photo.name] = photo.path
