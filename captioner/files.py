"""Small file helpers shared by every stage: atomic writes and a restricted unpickler."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
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
    with atomic_file(path) as file:
        file.write(data)


@contextmanager
def atomic_file(path: str | Path):
    """A binary file to write that appears at `path` whole, or not at all, when the block ends
    (for data too large to build as bytes first, e.g. a part of a feature store)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        usual_permissions(temporary)
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class UnsafePickleError(pickle.UnpicklingError):
    pass


# In an allow-list, stands for the real global, imported only when a pickle names it.
IMPORT = object()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals on its allow-list and refuses all others.

    Loading a pickle calls whatever functions the file names: every restricted read in captioner
    goes through this class, so this is the one place that refuses the rest.

    allowed: ``(module, name) -> object`` to use for that global, or ``IMPORT`` for the real one.
    persistent_load: resolves the file's persistent ids; without it they are an UnpicklingError.
    """

    def __init__(self, file, allowed: Mapping[tuple[str, str], object], persistent_load=None):
        super().__init__(file)
        self._allowed = allowed
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            raise UnsafePickleError(f"refusing to load {module}.{name}")
        found = self._allowed[module, name]
        return super().find_class(module, name) if found is IMPORT else found


def user_cache_dir() -> Path:
    """``$CAPTIONER_CACHE``, else ``$XDG_CACHE_HOME/captioner`` (default ``~/.cache/captioner``):
    converted weights and light exports, each under a name that says what made it."""
    cache_dir = os.environ.get("CAPTIONER_CACHE")
    if not cache_dir:
        xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        cache_dir = Path(xdg) / "captioner"
    return Path(cache_dir)
