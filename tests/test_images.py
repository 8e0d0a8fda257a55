"""Reading photos as users have them: any mode, EXIF-rotated, with alpha, or broken."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from captioner.data.images import (
    IMAGE_FORMATS,
    Photo,
    decode_image,
    find_photos,
    load_image,
    prepare_image,
    try_load_image,
)
from captioner.errors import ImageError, ImageTooLarge


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


def small_photo(fmt: str, mode: str = "RGB", **options) -> bytes:
    """A 12 x 9 photo with some detail, as the bytes of an image file."""
    image = Image.new("RGB", (12, 9), (200, 30, 30))
    image.paste((20, 40, 220), (0, 0, 6, 4))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, fmt, **options)
    return buffer.getvalue()


# Valid files to damage: the usual formats and some of the others Pillow reads by their content
# whatever the file is called (DDS, ICNS, SPIDER and BLP raised NotImplementedError,
# SyntaxError and AttributeError once damaged).
VALID = [
    small_photo("JPEG"),
    small_photo("JPEG", progressive=True, exif=Image.Exif().tobytes()),
    small_photo("PNG", "P", transparency=0),
    small_photo("GIF", "P", transparency=0),
    *(small_photo(f) for f in ("BMP", "TIFF", "WEBP", "DDS", "ICNS", "ICO", "PCX", "TGA")),
    small_photo("SPIDER", "F"),
    small_photo("BLP", "P"),
    small_photo("TIFF", "CMYK", compression="tiff_lzw"),
]
MAGIC = [  # the first bytes of other formats, to send Pillow to their readers
    b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF",
    b"P6\n", b"P5 3 3 255\n", b"8BPS", b"\x00\x00\x01\x00", b"\n\x05\x01\x08", b"DDS |",
    b"icns", b"qoif", b"\x01\xda", b"#define w 8\n", b"/* XPM */", b"SIMPLE  =", b"%!PS",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"Y\xa6j\x95", b"BLP2", b"\x00\x00\x02\x00",
]  # fmt: skip


@st.composite
def damaged_files(draw) -> bytes:
    """Random bytes, a magic number and random bytes, or a valid file cut short or altered (in
    its header, where the readers parse, or anywhere)."""
    kind = draw(st.sampled_from(["random", "magic", "truncated", "header", "anywhere"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "magic":
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(VALID)))
    if kind == "truncated":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    last = min(len(data), 128) - 1 if kind == "header" else len(data) - 1
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, last))] = draw(st.integers(0, 255))
    return bytes(data)


def changed(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


def icns_holding(png: bytes) -> bytes:
    """An Apple icon file whose one 128 px icon is `png`."""
    entry = b"ic07" + (8 + len(png)).to_bytes(4, "big") + png
    return b"icns" + (8 + len(entry)).to_bytes(4, "big") + entry


PNG = small_photo("PNG")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (changed(small_photo("DDS"), 80, 0), "NotImplementedError: Unknown pixel format flags 0"),
        (changed(small_photo("BLP", "P"), 4, 0), "BLPFormatError: Unknown BLP compression 0"),
        (
            changed(small_photo("SPIDER", "F"), 107, 0x7F),
            "AttributeError: 'SpiderImageFile' object has no attribute 'stkoffset'",
        ),
        (  # the IHDR chunk's checksum broken
            icns_holding(changed(PNG, 29, PNG[29] ^ 0xFF)),
            "SyntaxError: broken PNG file (bad header checksum in b'IHDR')",
        ),
    ],
    ids=["dds", "blp", "spider", "icns"],
)
def test_files_pillow_fails_on_with_other_errors_are_unreadable_too(tmp_path, data, reason):
    """What hypothesis found: Pillow raised these from try_load_image, which let them through."""
    (tmp_path / "photo.jpg").write_bytes(data)
    assert try_load_image(tmp_path / "photo.jpg", 8) == reason


def test_missing_truncated_and_other_files_give_one_line_reasons(tmp_path):
    (tmp_path / "cut.jpg").write_bytes(small_photo("JPEG")[:100])
    (tmp_path / "notes.jpg").write_text("not a photo\nat all\n")
    assert try_load_image(tmp_path / "none.jpg", 8).startswith("FileNotFoundError: ")
    assert try_load_image(tmp_path / "cut.jpg", 8) == "OSError: Truncated File Read"
    assert try_load_image(tmp_path / "notes.jpg", 8) == (
        f"UnidentifiedImageError: cannot identify image file {str(tmp_path / 'notes.jpg')!r}"
    )


def test_find_photos_expands_folders_into_their_photos_sorted(tmp_path):
    for name in ("b.JPG", "a.png", "c.txt", "d.webp", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.jpg").mkdir()  # a folder, even one named like a photo, is not a photo
    (tmp_path / "sub.jpg" / "e.jpg").write_bytes(b"")  # but the photos in it are
    given = tmp_path / "c.txt"  # a file given by name is kept whatever it is called
    assert find_photos([tmp_path, given]) == [
        Photo("a.png", tmp_path / "a.png"),
        Photo("b.JPG", tmp_path / "b.JPG"),
        Photo("d.webp", tmp_path / "d.webp"),
        Photo("sub.jpg/e.jpg", tmp_path / "sub.jpg" / "e.jpg"),
        Photo(str(given), given),
    ]


# 800 fixed examples (about 1.5 s) are enough to meet one of the BLP files above again.
@pytest.mark.filterwarnings("ignore::UserWarning:PIL.*")  # Pillow's notes on the damage
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # sizes damaged
@settings(max_examples=800, deadline=None, derandomize=True)
@given(data=damaged_files())
def test_a_damaged_file_gives_a_photo_or_a_one_line_reason(tmp_path_factory, data):
    """Whatever the bytes, try_load_image returns a photo or a reason: it never raises."""
    path = tmp_path_factory.getbasetemp() / "damaged.jpg"  # the name says JPEG; Pillow reads bytes
    path.write_bytes(data)
    result = try_load_image(path, 8)
    if isinstance(result, str):
        assert result and "\n" not in result and "\r" not in result, repr(result)
    else:
        assert result.shape == (8, 8, 3) and result.dtype == np.uint8


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.*")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=damaged_files())
def test_bytes_from_anyone_give_a_photo_or_an_image_error(data):
    """decode_image (what `captioner serve` reads uploads with) raises nothing but ImageError,
    in one line, whatever the bytes; formats outside IMAGE_FORMATS are not even tried."""
    try:
        result = decode_image(data, 8, max_pixels=10_000, name="upload")
    except ImageError as error:
        assert str(error).startswith("upload: ") and "\n" not in str(error), repr(str(error))
    else:
        assert result.shape == (8, 8, 3) and result.dtype == np.uint8


def test_only_the_formats_we_read_are_decoded_and_pixels_are_counted_first():
    with pytest.raises(ImageError, match="^p: not an image in a format captioner reads"):
        decode_image(small_photo("PPM"), 8, 10_000, "p")
    for fmt in IMAGE_FORMATS:
        assert decode_image(small_photo(fmt), 8, 10_000).shape == (8, 8, 3), fmt
    with pytest.raises(ImageTooLarge, match=r"^p: 12 x 9 pixels, more than the 100 allowed$"):
        decode_image(small_photo("PNG"), 8, 100, "p")
    # The same photo from bytes and from a file: the same pixels.
    with Image.open(io.BytesIO(small_photo("JPEG"))) as image:
        assert (decode_image(small_photo("JPEG"), 8, 10_000) == prepare_image(image, 8)).all()
