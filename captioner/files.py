"""Small file helpers shared by every stage: atomic writes that turn a full disk into one
clear error, what is wrong with a file that cannot be read, and a restricted unpickler.

Every file captioner writes appears whole or not at all (a temporary file beside it, then a
rename), so a write that fails, for lack of room or anything else, never replaces a good file.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

from captioner.errors import DiskFullError

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
    with atomic_file(path, len(data)) as file:
        file.write(data)


@contextmanager
def atomic_file(path: str | Path, size: int | None = None):
    """A binary file to write that appears at `path` whole, or not at all, when the block ends
    (for data too large to build as bytes first, e.g. a part of a feature store). A full disk
    raises DiskFullError naming `path` and `size` (bytes, when the caller knows them)."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        usual_permissions(temporary)
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # a full disk shows here, before the rename, not after
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        _raise_if_disk_full(error, path, size)
        raise


def write_through_temporary(path: str | Path, write: Callable[[str], None], suffix: str = "",
                            estimate: int | None = None):  # fmt: skip
    """For writers that want a file name rather than a file (Keras' model.save): `write(name)`
    into a temporary file beside `path` (ending in `suffix`), then a rename, as atomic_file.
    The room a full disk lacked is given as `estimate` [default: the size of the file it
    replaces, if any]."""
    path = Path(path)
    if estimate is None and path.is_file():
        estimate = path.stat().st_size
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix,
                                             dir=path.parent)  # fmt: skip
        os.close(handle)
        write(temporary)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        usual_permissions(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        _raise_if_disk_full(error, path, estimate, estimated=True)
        raise


# --- a full disk ---------------------------------------------------------------------------

_NO_ROOM = {errno.ENOSPC: False, errno.EDQUOT: True}  # errno -> whether it is the quota
# numpy's tofile (np.save into a file) reports a short write without an errno.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
# TensorFlow's C++ writers (TensorBoard's event files, SavedModel) say it in their message.
_IN_MESSAGE = re.compile(r"(?:(\S+); )?(No space left on device|Disk quota exceeded)")


def disk_full(error: BaseException, path: str | Path | None = None, needed: int | None = None,
              estimated: bool = False) -> DiskFullError | None:  # fmt: skip
    """The DiskFullError `error` amounts to, or None if it is not a full disk or quota. `path`
    names the file meant [default: the one the error names]."""
    if isinstance(error, DiskFullError):
        return error
    if isinstance(error, OSError) and error.errno in _NO_ROOM:
        quota, named = _NO_ROOM[error.errno], error.filename
    elif isinstance(error, OSError) and error.errno is None and _SHORT_WRITE.search(str(error)):
        quota, named = False, None
    elif (found := _IN_MESSAGE.search(str(error))) is not None:
        quota, named = found[2] == "Disk quota exceeded", found[1]
    else:
        return None
    where = Path(path if path is not None else named or ".")
    return DiskFullError(where, needed, _free_bytes(where), quota, estimated)


def _raise_if_disk_full(error: BaseException, path, needed=None, estimated=False) -> None:
    full = disk_full(error, path, needed, estimated)
    if full is not None and full is not error:
        raise full from error


@contextmanager
def disk_full_as_error(path: str | Path | None = None, needed: int | None = None):
    """Turns a full disk met in the block (an OSError, numpy's short write, TensorFlow's
    message) into a DiskFullError naming `path` [default: the file the error names]."""
    try:
        yield
    except Exception as error:
        _raise_if_disk_full(error, path, needed)
        raise


def _free_bytes(path: Path) -> int | None:
    """Room left to a normal user on the disk that holds `path` (its nearest existing folder)."""
    folder = next((f for f in (path, *path.parents) if f.is_dir()), Path("."))
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


# --- a file that cannot be read ------------------------------------------------------------

CUT_SHORT = "cut short"
_ZIP_START = b"PK\x03\x04"  # a zip archive's first local file header (.keras, .npz)
_NPY_START = b"\x93NUMPY"


def what_is_wrong(path: str | Path, kind: str, label: str) -> str | None:
    """Why the file at `path` is not a whole file of its `kind` ("json", "zip" for .keras and
    .npz, "npy"), in a few words for a message: missing, empty, cut short, damaged, or "not
    {label}"; None when it looks whole (the fault is in what it holds, not in the file)."""
    path = Path(path)
    try:
        if not path.is_file():
            return "missing"
        if path.stat().st_size == 0:
            return "empty"
        return {"json": _json_damage, "zip": _zip_damage, "npy": _npy_damage}[kind](path, label)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"


def _json_damage(path: Path, label: str) -> str | None:
    data = path.read_bytes()
    if not data.strip():
        return "empty"
    try:
        json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return f"not {label}"
    except json.JSONDecodeError as error:
        return CUT_SHORT if _stopped_early(error) else f"not {label}"
    return None


# What is left after a JSON error where a document stopped in the middle of a value: nothing,
# part of a literal, of a number, or of a string's \u escape.
_VALUE_BEGUN = re.compile(
    r"t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?|-?[0-9]*\.?[0-9]*([eE][-+]?[0-9]*)?|\\u[0-9a-fA-F]{0,4}"
)


def _stopped_early(error: json.JSONDecodeError) -> bool:
    """Whether the JSON is valid as far as it goes: cut short, rather than something else."""
    rest = error.doc[error.pos :].rstrip()
    escape = error.doc.rfind("\\u", 0, error.pos + 2)
    if error.msg.startswith("Invalid \\uXXXX escape") and escape >= 0:
        rest = error.doc[escape:]
    return error.msg.startswith("Unterminated string") or bool(_VALUE_BEGUN.fullmatch(rest))


def _zip_damage(path: Path, label: str) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            failed = archive.testzip()  # reads every member against its checksum
    except zipfile.BadZipFile:
        # No end-of-archive record: cut short if it starts as an archive, else something else.
        with open(path, "rb") as file:
            return CUT_SHORT if file.read(4) == _ZIP_START else f"not {label}"
    except (EOFError, ValueError, zipfile.LargeZipFile, NotImplementedError):
        return f"damaged (not {label})"
    if failed is not None:
        return f"damaged ({failed} in it fails its checksum)"
    return None


def _npy_damage(path: Path, label: str) -> str | None:
    import numpy as np

    with open(path, "rb") as file:
        if file.read(len(_NPY_START)) != _NPY_START:
            return f"not {label}"
        file.seek(0)
        try:
            version = np.lib.format.read_magic(file)
            if version not in ((1, 0), (2, 0)):
                return None  # a header this check does not read: np.load says what is wrong
            reader = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            shape, _, dtype = reader(file)
            if dtype.hasobject:
                return None  # pickled objects, refused by np.load(allow_pickle=False) anyway
        except (ValueError, OSError, SyntaxError, EOFError):
            return CUT_SHORT if path.stat().st_size < 128 else f"damaged (not {label})"
        expected = file.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        return CUT_SHORT
    return f"longer than its header says (not {label})" if size > expected else None


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
