"""EfficientNet-Lite0/1/2 as a functional Keras model, and its block layout.

EfficientNet-Lite is EfficientNet-B0's layout without squeeze-and-excitation, with ReLU6
everywhere, a fixed 32-channel stem and 1280-channel head, TF "same" padding and BatchNorm
epsilon 1e-3. Inputs are RGB scaled by :func:`preprocess`, at ``INPUT_SIZES[variant]`` pixels.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import keras
import numpy as np
from keras import layers

INPUT_SIZES = {0: 224, 1: 240, 2: 260}
FEATURE_DIM = 1280
NUM_CLASSES = 1000

_BN_EPSILON = 1e-3
_STEM_FILTERS = 32
_SCALING = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2)}  # (width, depth) multipliers
# EfficientNet-B0 stages: (repeats, kernel, first-block stride, expand ratio, output filters).
_B0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip


class BlockSpec(NamedTuple):
    """One MBConv block: depthwise kernel, stride, expand ratio, input and output channels."""

    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale, round to a multiple of 8, lose at most 10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor) if rounded < 0.9 * scaled else int(rounded)


def block_specs(variant: int) -> list[BlockSpec]:
    """The MBConv blocks of EfficientNet-Lite{variant}, from B0 and the Lite scaling rules."""
    _check_variant(variant)
    width, depth = _SCALING[variant]
    specs, filters_in = [], _STEM_FILTERS
    for i, (repeats, kernel, stride, expand, filters) in enumerate(_B0_STAGES):
        if 0 < i < len(_B0_STAGES) - 1:  # Lite keeps the first and last stage at one block
            repeats = int(math.ceil(repeats * depth))
        filters_out = _round_filters(filters, width)
        for r in range(repeats):
            specs.append(BlockSpec(kernel, 1 if r else stride, expand, filters_in, filters_out))
            filters_in = filters_out
    return specs


def infer_block_specs(state: dict[str, np.ndarray]) -> list[BlockSpec]:
    """Recover the block list from weight shapes; strides follow B0 (stages 2, 3, 4, 6)."""
    n_blocks = 1 + max(int(m[1]) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k)))
    specs, stage, filters_in = [], 0, state["_conv_stem.weight"].shape[0]
    for i in range(n_blocks):
        prefix = f"_blocks.{i}."
        filters_out = state[prefix + "_project_conv.weight"].shape[0]  # (out, in, 1, 1)
        hidden, _, kernel, _ = state[prefix + "_depthwise_conv.weight"].shape  # (C, 1, k, k)
        first = filters_out != filters_in or i == 0  # stage boundaries: output channels change
        stage += int(first)
        stride = 2 if first and stage in (2, 3, 4, 6) else 1
        specs.append(BlockSpec(kernel, stride, hidden // filters_in, filters_in, filters_out))
        filters_in = filters_out
    return specs


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, *, act: bool = True):
    """Conv (no bias) -> BatchNorm -> optional ReLU6; depthwise when ``filters`` is 0."""
    if filters:
        conv = layers.Conv2D(filters, kernel, stride, "same", use_bias=False, name=name + "_conv")
    else:
        conv = layers.DepthwiseConv2D(kernel, stride, "same", use_bias=False, name=name + "_conv")
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=name + "_bn")(conv(x))
    return layers.ReLU(6.0, name=name + "_relu6")(x) if act else x


def _mbconv(x, spec: BlockSpec, idx: int):
    """Inverted residual block without squeeze-and-excitation (the Lite variant)."""
    inputs = x
    if spec.expand != 1:
        x = _conv_bn(x, spec.filters_in * spec.expand, 1, 1, f"block{idx}_expand")
    x = _conv_bn(x, 0, spec.kernel, spec.stride, f"block{idx}_dw")
    x = _conv_bn(x, spec.filters_out, 1, 1, f"block{idx}_project", act=False)
    if spec.stride == 1 and spec.filters_in == spec.filters_out:
        x = layers.Add(name=f"block{idx}_add")([inputs, x])  # no drop-connect at inference
    return x


def build_efficientnet_lite(
    variant: int = 0,
    include_top: bool = False,
    pooling: str | None = "avg",
    input_shape=None,
    classifier_activation: str | None = None,
) -> keras.Model:
    """Build EfficientNet-Lite{variant} with random weights.

    Outputs: ``include_top`` -> (batch, 1000) logits (softmax if ``classifier_activation`` is
    "softmax"; ``pooling`` is then ignored); else ``pooling="avg"`` / ``"max"`` -> (batch, 1280),
    ``pooling=None`` -> the (batch, 7, 7, 1280) feature grid for Lite0 at 224 px.
    """
    _check_variant(variant)
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    size = INPUT_SIZES[variant]
    inputs = keras.Input(shape=input_shape or (size, size, 3), name="image")
    x = _conv_bn(inputs, _STEM_FILTERS, 3, 2, "stem")
    for idx, spec in enumerate(block_specs(variant)):
        x = _mbconv(x, spec, idx)
    x = _conv_bn(x, FEATURE_DIM, 1, 1, "head")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(NUM_CLASSES, activation=classifier_activation, name="logits")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=f"efficientnet_lite{variant}")


def preprocess(images) -> np.ndarray:
    """Scale RGB pixel values in [0, 255] (uint8 or float) to float32 ``(x - 127) / 128``."""
    return (np.asarray(images, dtype=np.float32) - 127.0) / 128.0


def _check_variant(variant: int) -> None:
    if variant not in INPUT_SIZES:
        raise ValueError(f"variant must be one of {sorted(INPUT_SIZES)}, got {variant!r}")
