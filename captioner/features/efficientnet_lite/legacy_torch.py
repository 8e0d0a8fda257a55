"""Reading a legacy (pre-1.6, non-zip) PyTorch ``state_dict`` file with the standard library.

The file is five pickles (magic number, protocol, system info, the state_dict with storages as
persistent ids, the storage keys) followed by the raw storages. The pickles go through
:class:`captioner.files.RestrictedUnpickler`, with the few torch names a state_dict uses mapped
to safe stand-ins; any other global is refused.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import struct
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from captioner.files import RestrictedUnpickler

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_MAX_MEMO = 1 << 20  # pickle memo entries; a Lite state_dict uses about 3,000
_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                   "LongStorage": "<i8", "IntStorage": "<i4"}  # fmt: skip


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


def _persistent_load(pid) -> _Storage:
    """A storage's persistent id, as the legacy format writes it, to a :class:`_Storage`."""
    # Legacy storages: ('storage', storage_type, key, location, numel, view_metadata).
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
        raise ValueError(f"unexpected persistent id {pid!r}")
    _, dtype, key, _location, numel, view = pid
    if dtype not in _STORAGE_DTYPES.values() or view is not None:
        raise ValueError(f"unsupported storage {pid!r}")
    return _Storage(str(key), dtype, int(numel))


# The handful of globals a state_dict pickle names, each resolved to a safe stand-in; the
# storage types become plain strings, which mark the dtype and are not callable.
_STATE_DICT_GLOBALS = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): dtype for name, dtype in _STORAGE_DTYPES.items()},
}


def _load_pickle(fh: io.BytesIO):
    """One pickle from ``fh``, vetted by a pure-Python opcode scan before CPython loads it."""
    start = fh.tell()
    for op, arg, _ in pickletools.genops(fh):  # raises ValueError on unknown or cut-off opcodes
        if op.proto > 2:  # torch's legacy format writes protocol 2
            raise ValueError(f"unexpected pickle opcode {op.name}")
        if op.name.endswith("PUT") and arg > _MAX_MEMO:  # the C memo is an array this long
            raise ValueError(f"pickle memo index {arg} is implausibly large")
    fh.seek(start)
    return RestrictedUnpickler(fh, _STATE_DICT_GLOBALS, _persistent_load).load()


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
