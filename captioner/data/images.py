"""Reading photos as they come: any mode, EXIF-rotated, with alpha, or broken."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import DataError, ImageError, ImageTooLarge

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# The formats those suffixes name: what photos from strangers (`captioner serve`) are read as;
# Pillow's other readers (dozens, some rarely exercised) never see them.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Returns the photo as uint8 RGB of shape (size, size, 3); raises if unreadable (OSError or
    ValueError mostly; see try_load_image). The pixels are prepare_image's."""
    with Image.open(path) as image:
        return prepare_image(image, size)


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """An open photo as the encoders read it: uint8 RGB of shape (size, size, 3).

    EXIF orientation is applied, grayscale/CMYK/palette become RGB, transparent pixels are laid
    on white, and the photo is resized to a square without keeping its aspect ratio (what the
    encoders were trained on and what Keras' load_img(target_size) does). A JPEG not decoded yet
    is decoded at the smallest scale that is still at least `size` (Image.draft; much faster),
    so an array of the same photo decoded in full may differ slightly for photos over twice
    `size` on both sides.
    """
    image.draft("RGB", (size, size))  # no-op for other formats and for pixels already decoded
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
        return _reason(error)


def decode_image(data: bytes, size: int, max_pixels: int, name: str = "photo") -> np.ndarray:
    """An image file's bytes, decoded in memory, as prepare_image reads photos.

    Only IMAGE_FORMATS are tried. Raises ImageTooLarge for more than `max_pixels` pixels (checked
    on the header, before any pixel is decoded) and ImageError, naming `name`, for anything
    else that cannot be read: not an image, another format, a damaged or truncated file.
    """
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"{name}: {width} x {height} pixels, more than the {max_pixels:,} allowed"
                )
            return prepare_image(image, size)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLarge(f"{name}: too many pixels ({_reason(error)})") from None
    except UnidentifiedImageError:
        formats = ", ".join(IMAGE_FORMATS)
        raise ImageError(f"{name}: not an image in a format captioner reads ({formats})") from None
    except Exception as error:  # damaged files: see try_load_image
        raise ImageError(f"{name}: cannot read this image ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".strip().splitlines()[0]


class Photo(NamedTuple):
    """A photo to caption: `name` is how outputs and shards know it, `path` where it is read."""

    name: str  # the path as given, or for a photo found in a folder its path relative to it
    path: Path


def find_photos(paths: list[str | Path]) -> list[Photo]:
    """Expands folders into the image files anywhere below them, sorted by their path relative
    to the folder, which is their name; hidden files and folders (".*") are left out. Files are
    kept as given, named as given."""
    found: list[Photo] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += [Photo(name, path / name) for name in sorted(_images_below(path))]
        else:
            found.append(Photo(str(path), path))
    return found


def find_some_photos(paths: list[str | Path]) -> list[Photo]:
    """find_photos, or DataError in one line when the paths hold no photo at all (a folder
    without an image file, or no path)."""
    photos = find_photos(paths)
    if not photos:
        where = ", ".join(map(str, paths)) or "no path given"
        raise DataError(f"{where}: no photos found: captioner looks for files ending in "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))} (any case) in these folders and "
                        "their subfolders, leaving out hidden ones")  # fmt: skip
    return photos


def _images_below(folder: Path) -> Iterator[str]:
    """Relative POSIX paths of the image files in `folder` and its subfolders."""
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        relative = Path(directory).relative_to(folder)
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield (relative / name).as_posix()


def batches_of_images(
    paths: list[Path], size: int, batch_size: int, workers: int = 4
) -> Iterator[tuple[list[int], np.ndarray, dict[int, str]]]:
    """Yields (indices, uint8 images (n, size, size, 3), {index: error}) per batch of `paths`.

    Photos are decoded by a thread pool while the caller runs the encoder on the previous batch
    (PIL releases the GIL while decoding), so the CNN rarely waits for the disk.
    """
    chunks = [range(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(workers) as pool:

        def submit(chunk):
            return [pool.submit(try_load_image, paths[i], size) for i in chunk]

        pending = submit(chunks[0]) if chunks else []
        for number, chunk in enumerate(chunks):
            results = [future.result() for future in pending]
            if number + 1 < len(chunks):
                pending = submit(chunks[number + 1])
            good = [(i, r) for i, r in zip(chunk, results) if isinstance(r, np.ndarray)]
            errors = {i: r for i, r in zip(chunk, results) if isinstance(r, str)}
            images = (
                np.stack([r for _, r in good]) if good else np.zeros((0, size, size, 3), np.uint8)
            )
            yield [i for i, _ in good], images, errors
