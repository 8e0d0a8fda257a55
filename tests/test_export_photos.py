"""The SavedModel reads photo bytes in TensorFlow ops as `captioner caption` reads files with
Pillow, to the pixel: orientation, reduced-scale decoding, colours, transparency, resizing.
Integer and float64 arithmetic throughout (libjpeg's accurate DCT, Pillow's fixed-point
resize), so the equality holds on any CPU."""

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
    assert differences(pixels_of, data).max() == 0


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA"])
def test_png_modes_and_transparency_come_out_as_pillow_gives_them(pixels_of, mode):
    image = Image.open(CHELSEA).convert(mode).resize((40, 50))  # upscaled to SIZE
    if "A" in mode:
        alpha = np.linspace(0, 255, 40, dtype=np.uint8)[None].repeat(50, 0)
        image.putalpha(Image.fromarray(alpha))
    assert differences(pixels_of, encoded(image, "PNG")).max() == 0


def test_a_jpeg_at_the_input_size_is_decoded_to_the_same_pixels(pixels_of):
    data = encoded(Image.open(CHELSEA).resize((SIZE, SIZE)), "JPEG", quality=95)
    assert differences(pixels_of, data).max() == 0  # libjpeg's accurate DCT, as Pillow's


@pytest.mark.parametrize("width, height", [(350, 500), (500, 350), (230, 250), (250, 260),
                                           (100, 300), (64, 64), (63, 200)])  # fmt: skip
def test_resizing_follows_pillows_order_of_passes(pixels_of, width, height):
    """Pillow resizes the height first when it shrinks by more than twice as many pixels as the
    width; the other order rounds differently."""
    noise = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), np.uint8)
    assert differences(pixels_of, encoded(Image.fromarray(noise), "PNG")).max() == 0
