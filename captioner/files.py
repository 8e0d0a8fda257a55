"""Small file helpers shared by every stage: atomic writes and restricted pickle reads."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

# The umask can only be read by setting it; read once at import, before any threads start.
_UMASK = os.umask(0)
os.umask(_UMASK)


def usual_permissions(path: str | Path) -> None:
    """Gives a mkstemp file (0600) the permissions a plain open() would have."""
    os.chmod(path, 0o666 & ~_UMASK)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it over `path`.

    A crash or Ctrl-C leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        usual_permissions(temporary)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# Loading a pickle calls whatever functions the file names. These are the only ones a feature
# cache needs (numpy arrays and dtypes); anything else is refused before it can run.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class UnsafePickleError(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_restricted_pickle(data: bytes):
    """Unpickles plain containers and numpy arrays only; raises UnsafePickleError otherwise."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()
