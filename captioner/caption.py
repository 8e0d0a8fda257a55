"""`captioner caption`: captions for your own photos, from a run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captioner.config import DecodeConfig
from captioner.rundir import Run


@dataclass
class CaptionResult:
    path: Path
    caption: str | None  # None when the photo could not be read
    error: str | None = None


def caption_images(
    run_dirs: list[str | Path | Run] | None,
    image_paths: list[str | Path],
    decode: DecodeConfig | None = None,
    batch_size: int = 16,
) -> list[CaptionResult]:
    """Captions each photo (folders are expanded to the images in them).

    Args:
        run_dirs: directories written by `captioner train` (or runs already loaded), one or
            several (an ensemble); None or empty: the shipped reference model. Their encoder
            is rebuilt.
        image_paths: files or folders.
        decode: decoding settings; the run's own when None.
    Returns:
        One CaptionResult per image, in order; unreadable images carry an error instead.
    """
    from captioner.decode import make_decoder
    from captioner.encoders import build_encoder, make_encode_function
    from captioner.images import batches_of_images, find_images
    from captioner.rundir import decoder_steps, load_runs

    runs = load_runs(run_dirs)
    run = runs[0]
    decode = decode or run.config.decode
    paths = find_images(list(image_paths))
    results = [CaptionResult(path, None) for path in paths]
    encoder = run.encoder
    model = build_encoder(encoder.name, encoder.weights, grid=encoder.cells > 0)
    encode = make_encode_function(model, batch_size)
    decoder = make_decoder(decoder_steps(runs), len(run.vocabulary), decode)
    for indices, images, errors in batches_of_images(paths, encoder.input_size, batch_size):
        for i, why in errors.items():
            results[i].error = why
        if len(indices):
            ids = decoder(encode(images))
            for i, row in zip(indices, ids):
                results[i].caption = " ".join(run.vocabulary.decode(row))
    return results
