"""Reading photos as they come: any mode, EXIF-rotated, with alpha, or broken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Returns the photo as uint8 RGB of shape (size, size, 3); raises if unreadable (OSError or
    ValueError mostly; see try_load_image).

    EXIF orientation is applied, grayscale/CMYK/palette become RGB, transparent pixels are laid
    on white, and the photo is resized to a square without keeping its aspect ratio (what the
    encoders were trained on and what Keras' load_img(target_size) does).
    """
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # lets JPEG decode at a smaller scale: much faster
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def try_load_image(path: str | Path, size: int) -> np.ndarray | str:
    """Like load_image, but returns the reason, in one line, instead of raising.

    Any exception means an unreadable file: on damaged files Pillow's format readers raise more
    than OSError and ValueError (SyntaxError, NotImplementedError, AttributeError; found by
    tests/test_images.py), and one such photo must not stop `extract` over thousands.
    """
    try:
        return load_image(path, size)
    except Exception as error:
        return f"{type(error).__name__}: {error}".strip().splitlines()[0]


def find_images(paths: list[str | Path]) -> list[Path]:
    """Expands folders into their image files (sorted, not recursing); files are kept as given."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
        else:
            found.append(path)
    return found
