"""The SavedModel reads photo bytes in TensorFlow ops as `captioner caption` reads files with
Pillow: orientation, scale and colours the same, pixels within a step or two of Pillow's."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from captioner.data.images import prepare_image
from tests.conftest import CHELSEA

SIZE = 64


@pytest.fixture(scope="module")
def pixels_of():
    import tensorflow as tf

    from captioner.export.photos import photo_pixels

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def read(data):
        return photo_pixels(data, SIZE)

    return lambda data: read(tf.constant(data)).numpy()


def differences(pixels_of, data: bytes):
    want = prepare_image(Image.open(io.BytesIO(data)), SIZE).astype(np.int16)
    return np.abs(pixels_of(data).astype(np.int16) - want)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_photo_as_pillow_does(pixels_of, orientation):
    # 451 x 300, more than 4 times SIZE: also decoded at a quarter scale, as Pillow's draft does.
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(Image.open(CHELSEA), "JPEG", exif=exif.tobytes(), quality=90)
    diff = differences(pixels_of, data)
    # Measured (Xeon, AVX-512): at most 1 step, on 2 % of the values; a wrong turn or scale
    # moves most of them by tens of steps. The bound leaves room for other CPUs' float maths.
    assert diff.max() <= 2 and diff.mean() < 0.3


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA"])
def test_png_modes_and_transparency_come_out_as_pillow_gives_them(pixels_of, mode):
    image = Image.open(CHELSEA).convert(mode).resize((40, 50))  # upscaled to SIZE
    if "A" in mode:
        alpha = np.linspace(0, 255, 40, dtype=np.uint8)[None].repeat(50, 0)
        image.putalpha(Image.fromarray(alpha))
    diff = differences(pixels_of, encoded(image, "PNG"))
    assert diff.max() <= 2 and diff.mean() < 0.3  # measured: the same pixels


def test_a_jpeg_at_the_input_size_is_decoded_to_the_same_pixels(pixels_of):
    data = encoded(Image.open(CHELSEA).resize((SIZE, SIZE)), "JPEG", quality=95)
    assert differences(pixels_of, data).max() == 0  # libjpeg's accurate DCT, as Pillow's
