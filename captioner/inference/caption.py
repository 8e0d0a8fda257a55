"""`captioner caption`: captions for your own photos, from a run directory.

Photos stream through Captioner.caption_files (captioner.runtime.captioning): read on threads,
encoded a batch at a time and decoded `decode_batch` at a time on a thread while the next chunk
is encoded. Only a chunk or two of results are held at a time, so memory stays flat however
large the folder; `caption_to_file` appends each chunk to a captions file as it comes (see
captioner.inference.caption_files) and skips the photos already in it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from captioner.config import DecodeConfig
from captioner.data.images import Photo, find_some_photos
from captioner.data.shards import Shard
from captioner.errors import ConfigError
from captioner.inference.api import Captioner
from captioner.inference.caption_files import CaptionWriter, output_format, read_names
from captioner.locks import WriterLock
from captioner.model.rundir import Run
from captioner.runtime.captioning import DECODE_BATCH, CaptionResult

RunDirs = list[str | Path | Run] | None


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
    yield from Captioner.load(*(run_dirs or [])).caption_files(photos, decode, batch_size,
                                                         decode_batch)  # fmt: skip


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
    captioner: Captioner,
    photos: list[Photo],
    decode: DecodeConfig | None = None,
    progress: bool = False,
    decode_batch: int = DECODE_BATCH,
    attention: bool = False,
) -> Iterator[CaptionResult]:
    """One CaptionResult after another for `photos` (see select_photos, which refuses inputs
    without any before a model is loaded), as they come, with a tqdm progress bar on stderr if
    `progress` and each word's attention weights if `attention`."""
    from tqdm import tqdm

    chunks = captioner.caption_files(photos, decode, decode_batch=decode_batch, attention=attention)
    with tqdm(total=len(photos), unit="photo", desc="caption", disable=not progress) as bar:
        for chunk in chunks:
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
