"""Photo bytes to encoder pixels in TensorFlow ops, as captioner.data.images.prepare_image reads
them with Pillow, so that a SavedModel needs nothing but TensorFlow.

Kept the same: EXIF orientation of JPEGs, a large JPEG decoded at a reduced scale (libjpeg's DCT
scaling, which Pillow's draft mode uses too), grayscale and grayscale + alpha made RGB,
transparent pixels laid on white, bilinear resizing to a square with Pillow's own integer
arithmetic (the same pixels). Where it differs: GIFs and PNGs with a palette
transparency key (Pillow lays their transparent colour on white; here it stays), CMYK JPEGs
(libjpeg's conversion, not Pillow's), and EXIF orientation of non-JPEG files (not
applied).
Graph code.
"""

from __future__ import annotations

import tensorflow as tf

# Pillow's exif_transpose, by EXIF orientation (1: as stored): which flips and turns.
_TRANSPOSE_FLIP_UD_FLIP_LR = {
    2: (False, False, True),  # mirrored left to right
    3: (False, True, True),  # turned 180
    4: (False, True, False),  # mirrored top to bottom
    5: (True, False, False),  # transposed
    6: (True, False, True),  # turned 90 clockwise (Pillow's ROTATE_270)
    7: (True, True, True),  # transversed
    8: (True, True, False),  # turned 90 counter-clockwise (Pillow's ROTATE_90)
}
_EXIF = b"Exif\x00\x00"
_MOST_EXIF_ENTRIES = 64  # IFD0 entries looked at for the orientation (cameras write ~10)
_EXIF_BYTES = 1 << 16  # an APP1 segment holds at most 64 KiB


def _unsigned(data, big_endian):
    """Bytes (a scalar string of 2 or 4 bytes) as an unsigned int32, in the file's byte order."""
    raw = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
    raw = tf.cond(big_endian, lambda: raw, lambda: tf.reverse(raw, [0]))
    weights = tf.bitwise.left_shift(1, 8 * tf.range(tf.size(raw) - 1, -1, -1))
    return tf.reduce_sum(raw * weights)


def exif_orientation(data):
    """The EXIF orientation (1-8) of a JPEG's bytes; 1 when it has none or it cannot be read.
    Reads past the end only into zeros (no op of this may fail on a damaged file)."""
    before = tf.strings.split(tf.reshape(data, [1]), _EXIF, maxsplit=1).values[0]
    found = tf.strings.length(before) < tf.strings.length(data)

    def read():
        tiff = tf.strings.substr(data, tf.strings.length(before) + len(_EXIF), _EXIF_BYTES)
        tiff = tf.strings.join([tiff, tf.constant(b"\x00" * (_EXIF_BYTES + 16))])
        big_endian = tf.equal(tf.strings.substr(tiff, 0, 2), b"MM")
        ifd = tf.minimum(_unsigned(tf.strings.substr(tiff, 4, 4), big_endian), _EXIF_BYTES)
        count = tf.clip_by_value(_unsigned(tf.strings.substr(tiff, ifd, 2), big_endian), 0,
                                 _MOST_EXIF_ENTRIES)  # fmt: skip
        starts = ifd + 2 + 12 * tf.range(count)
        tags = tf.map_fn(lambda start: _unsigned(tf.strings.substr(tiff, start, 2), big_endian),
                         starts)  # fmt: skip
        values = tf.map_fn(lambda start: _unsigned(
            tf.strings.substr(tiff, start + 8, 2), big_endian), starts)  # fmt: skip
        value = tf.reduce_max(tf.concat([tf.where(tf.equal(tags, 0x0112), values, 0), [0]], 0))
        return tf.where((value >= 1) & (value <= 8), value, 1)

    return tf.cond(found, read, lambda: tf.constant(1))


def _orient(image, orientation):
    branches = [lambda: image]
    for number in range(2, 9):
        transpose, flip_ud, flip_lr = _TRANSPOSE_FLIP_UD_FLIP_LR[number]

        def turned(transpose=transpose, flip_ud=flip_ud, flip_lr=flip_lr):
            x = tf.transpose(image, [1, 0, 2]) if transpose else image
            x = tf.reverse(x, [0]) if flip_ud else x
            return tf.reverse(x, [1]) if flip_lr else x

        branches.append(turned)
    return tf.switch_case(orientation - 1, branches)


def _decode_jpeg_for(data, size: int):
    """A JPEG decoded at the largest DCT reduction (8, 4, 2) that keeps both sides >= size."""
    shape = tf.image.extract_jpeg_shape(data)
    scale = tf.minimum(shape[0] // size, shape[1] // size)
    index = tf.argmax(tf.stack([scale >= r for r in (8, 4, 2)] + [True]), output_type=tf.int32)
    branches = [
        lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
        for r in (8, 4, 2, 1)
    ]
    return tf.cast(tf.switch_case(index, branches), tf.float32)


def _decode_other(data):
    """PNG, BMP, GIF (first frame): RGB, with transparent pixels laid on white."""
    image = tf.io.decode_image(data, channels=0, expand_animations=False)
    image = tf.cast(image, tf.float32)
    channels = tf.shape(image)[2]
    rgb = tf.cond(channels >= 3, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))
    has_alpha = tf.equal(channels % 2, 0)  # LA or RGBA
    alpha = tf.cond(
        has_alpha, lambda: image[..., -1:] / 255.0, lambda: tf.ones_like(image[..., :1])
    )
    return _round(rgb * alpha + 255.0 * (1.0 - alpha))


def _round(x):
    """Half up, as Pillow rounds, into [0, 255]."""
    return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)


def photo_pixels(data, size: int):
    """One photo's file bytes (scalar string) -> float32 (size, size, 3) in [0, 255], whole
    numbers: the uint8 pixels prepare_image gives."""
    is_jpeg = tf.io.is_jpeg(data)
    image = tf.cond(is_jpeg, lambda: _decode_jpeg_for(data, size), lambda: _decode_other(data))
    image = _orient(image, tf.where(is_jpeg, exif_orientation(data), 1))
    return tf.ensure_shape(_resize(image, size), [size, size, 3])


def _resize(image, size: int):
    """Pillow's bilinear resize, to the pixel: one pass per side that changes, each with
    Pillow's integer coefficients (22 fraction bits) and its rounding, in Pillow's order (the
    width first, unless the height shrinks by more than twice as many pixels). Float arithmetic
    would round the many exact halves (weights in 1/30ths for 224 -> 240) another way and move
    5 % of the pixels by one step."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]

    def across(x):
        return tf.cond(tf.equal(width, size), lambda: x,
                       lambda: _resize_axis(x, width, size, "hjc,oj->hoc"))  # fmt: skip

    def down(x):
        return tf.cond(tf.equal(height, size), lambda: x,
                       lambda: _resize_axis(x, height, size, "jwc,oj->owc"))  # fmt: skip

    vertical_first = (height - size > 0) & (height - size > 2 * (width - size))
    return tf.cond(vertical_first, lambda: across(down(image)), lambda: down(across(image)))


_FRACTION_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images


def _pillow_coefficients(in_size, out_size: int):
    """(out_size, in_size) float64: Pillow's integer weights (precompute_coeffs, then
    normalize_coeffs_8bpc) of the bilinear filter, for one axis."""
    in_size = tf.cast(in_size, tf.float64)
    scale = in_size / out_size
    filter_scale = tf.maximum(scale, 1.0)  # support 1 (bilinear), widened when shrinking
    center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale  # (out,)
    first = tf.maximum(tf.floor(center - filter_scale + 0.5), 0.0)[:, None]
    end = tf.minimum(tf.floor(center + filter_scale + 0.5), in_size)[:, None]
    source = tf.range(in_size, dtype=tf.float64)[None]  # (1, in)
    weight = tf.nn.relu(1.0 - tf.abs((source - center[:, None] + 0.5) * (1.0 / filter_scale)))
    weight = tf.where((source >= first) & (source < end), weight, 0.0)
    weight /= tf.reduce_sum(weight, axis=1, keepdims=True)
    return tf.floor(0.5 + weight * (1 << _FRACTION_BITS))


def _resize_axis(image, in_size, out_size: int, equation: str):
    """One pass: integer weights times whole pixel values, exact in float64, then Pillow's
    rounding (half up) and clipping to uint8."""
    weights = _pillow_coefficients(in_size, out_size)
    total = tf.einsum(equation, tf.cast(image, tf.float64), weights)
    rounded = tf.floor((total + (1 << (_FRACTION_BITS - 1))) / (1 << _FRACTION_BITS))
    return tf.cast(tf.clip_by_value(rounded, 0.0, 255.0), tf.float32)
