"""Reading photos as users have them: any mode, EXIF-rotated, with alpha, or broken."""

from __future__ import annotations

import numpy as np
from PIL import Image

from captioner.images import load_image


def test_photos_in_any_mode_become_rgb(tmp_path):
    red = Image.new("RGB", (40, 20), (255, 0, 0))
    red.convert("L").save(tmp_path / "gray.jpg")
    red.convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # fully transparent: laid on white
    rgba.save(tmp_path / "alpha.png")
    for name in ("gray.jpg", "cmyk.jpg", "alpha.png"):
        array = load_image(tmp_path / name, 16)
        assert array.shape == (16, 16, 3) and array.dtype == np.uint8, name
    assert load_image(tmp_path / "alpha.png", 16).min() == 255
    assert abs(int(load_image(tmp_path / "cmyk.jpg", 16)[8, 8, 0]) - 255) < 10


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    array = load_image(tmp_path / "rotated.jpg", 20)
    # Displayed upright, the red half is on top.
    assert array[2, 10, 0] > 200 and array[17, 10, 2] > 200
