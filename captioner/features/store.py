"""The feature cache: each photo's encoder output, written by `extract`, read by every later stage.

On disk a cache is a folder (`data/<dataset>-<encoder>[-mirrored][-grid]/` by default):

    store.json                      format, encoder, weights, input size, feature size, cells,
                                    mirrored: what made the features
    shard-I-of-N.<id>.npy           a part: float32 rows (float16 for grids), one per photo,
                                    plain .npy (read with allow_pickle=False, memory-mapped)
    shard-I-of-N.<id>.json          the part's photo names, in row order; written after its .npy,
                                    so a part without its .json is ignored (a killed write)
    shard-I-of-N.done.json          shard I of N finished: its photo count and unreadable photos
    .shard-I-of-N.lock              the lock of the `extract` writing shard I of N, while it runs
                                    (captioner.locks): a second process of that shard refuses

`extract` appends a part every minute (or 256 MB), so a killed run keeps what it finished and
the next resumes. `extract --shard I/N` writes only shard I's parts: shards run anywhere (several
machines sharing the folder, a Slurm array) and are read together as one cache, refused when a
shard is missing or a photo is in two parts. Parts are memory-mapped: reading a cache costs no
RAM until rows are used, so training can stream a cache larger than memory (`FeatureRows`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from captioner.data.shards import Shard
from captioner.errors import CacheError, DiskFullError
from captioner.files import atomic_file, what_is_wrong, write_atomic

STORE_FORMAT = "captioner-store/1"
STORE_FILE = "store.json"
# Pooled caches above this size are read row by row in training instead of copied into RAM
# (grids always are): 256 MB is COCO's pooled Lite features at float32, a sixth of a laptop's RAM.
LAZY_BYTES = 256 * 2**20
_PART = re.compile(r"shard-(\d+)-of-(\d+)\.([0-9a-f]+)\.json")
_DONE = re.compile(r"shard-(\d+)-of-(\d+)\.done\.json")


@dataclass(frozen=True)
class CacheInfo:
    """What made the features: a cache holds one encoder's features of one kind."""

    encoder: str
    input_size: int
    feature_dim: int
    weights: str
    mirrored: bool = False  # features of the photos flipped left to right (for augmentation)
    cells: int = 0  # 0: pooled vectors; else the grid cells per photo (`extract --grid`)

    @property
    def dtype(self):
        # Grids in float16: Flickr8k's Lite1 grids are 1.3 GB so, 2.7 GB in float32.
        return np.dtype(np.float16 if self.cells else np.float32)


@dataclass
class FeatureCache:
    """The photos' features, by name, over one or more parts (memory-mapped or in memory)."""

    path: Path
    info: CacheInfo
    parts: list[np.ndarray]  # (rows, feature_dim) each
    row_of: dict[str, int] = field(default_factory=dict)  # name -> row over all parts
    shards: dict = field(default_factory=dict)  # Shard -> finished (True) or in progress

    def __post_init__(self):
        self._offsets = np.cumsum([0] + [len(part) for part in self.parts])

    # What made it: the names the stages have always used.
    encoder = property(lambda self: self.info.encoder)
    weights = property(lambda self: self.info.weights)
    input_size = property(lambda self: self.info.input_size)
    feature_dim = property(lambda self: self.info.feature_dim)
    cells = property(lambda self: self.info.cells)
    mirrored = property(lambda self: self.info.mirrored)

    def __contains__(self, name: str) -> bool:
        return name in self.row_of

    def __len__(self) -> int:
        return len(self.row_of)

    @property
    def nbytes(self) -> int:
        return int(sum(part.nbytes for part in self.parts))

    @property
    def lazy(self) -> bool:
        """Whether training should read rows on demand rather than copy the split into RAM."""
        return self.cells > 0 or self.nbytes > LAZY_BYTES

    def take(self, rows) -> np.ndarray:
        """Rows (over all parts) -> (len(rows), feature_dim) array in memory, in that order."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.empty((len(rows), self.feature_dim), self.info.dtype)
        part_of = np.searchsorted(self._offsets, rows, side="right") - 1
        for part in np.unique(part_of):
            here = part_of == part
            out[here] = self.parts[part][rows[here] - self._offsets[part]]
        return out

    def rows(self, names: list[str]) -> FeatureRows:
        """A lazy view of `names`' features: rows are read when indexed."""
        return FeatureRows(self, np.array([self.row_of[name] for name in names], np.int64))

    def matrix(self, names: list[str]) -> np.ndarray:
        """Features of `names` stacked in memory: (len(names), feature_dim), float32 (float16
        for grids)."""
        return self.rows(names)[:]

    def vector(self, name: str) -> np.ndarray:
        return self.take([self.row_of[name]])[0]

    def check_encoder(self, path, encoder: str, weights=None, mirrored=False, grid=False):
        """Raises CacheError unless `encoder` (and `weights`) made these features, of that kind."""
        _check_kind(path, self.info, mirrored, grid)
        if self.encoder != encoder or (weights is not None and self.weights != weights):
            raise CacheError(
                f"{path}: made by encoder {self.encoder} (weights {self.weights}), not "
                f"{encoder} (weights {weights or self.weights}): extract again with "
                f"--encoder {encoder}, or give another --features file"
            )


def _check_kind(path, info: CacheInfo, mirrored: bool, grid: bool) -> None:
    if grid != (info.cells > 0):
        which = "feature grids" if info.cells else "pooled features"
        raise CacheError(
            f"{path}: holds {which}; expected the other kind (`captioner extract"
            f"{'' if info.cells else ' --grid'}` makes it; the grid decoders need grids)"
        )
    if mirrored != info.mirrored:
        which = "mirrored photos" if info.mirrored else "photos as they are"
        raise CacheError(
            f"{path}: holds features of {which}; expected the other kind "
            f"(`captioner extract{'' if info.mirrored else ' --mirror'}` makes it)"
        )


class FeatureRows:
    """Some photos' features, read from their cache only when indexed (a split of a cache that
    need not fit in RAM). Indexing with a slice or an array of positions returns an array."""

    def __init__(self, cache: FeatureCache, rows: np.ndarray):
        self.cache, self.cache_rows = cache, rows
        self.shape = (len(rows), cache.feature_dim)
        self.dtype = cache.info.dtype

    def __len__(self) -> int:
        return len(self.cache_rows)

    def __getitem__(self, key) -> np.ndarray:
        return self.cache.take(self.cache_rows[key])

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)


# --- reading -------------------------------------------------------------------------------


def load_feature_cache(path: str | Path, whole: bool = True) -> FeatureCache:
    """Reads a cache folder written by `extract`; raises CacheError for anything else, naming
    what is wrong. whole=False: a cache whose shards are still being extracted (by `extract`,
    which reads its own shard's photos from it): a shard with nothing in it yet is no error."""
    path = Path(path)
    if path.is_file():
        raise CacheError(f"{path}: a file, not a feature cache (a folder with store.json): run "
                         "`captioner extract` again to make one")  # fmt: skip
    if not (path / STORE_FILE).is_file():
        what = "not a feature cache (no store.json)" if path.is_dir() else "feature cache not found"
        raise CacheError(f"{path}: {what}: run `captioner extract` first")
    info = _read_info(path)
    shards = _read_shards(path, whole)
    parts: list[np.ndarray] = []
    row_of: dict[str, int] = {}
    for part_json in sorted(path.glob("shard-*-of-*.*.json")):
        if _PART.fullmatch(part_json.name):
            parts.append(_read_part(part_json, info, row_of, sum(map(len, parts))))
    return FeatureCache(path, info, parts, row_of, shards)


def _read_info(path: Path) -> CacheInfo:
    where = path / STORE_FILE
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
        if data.pop("format", None) != STORE_FORMAT:
            raise ValueError("not a captioner store")
        return CacheInfo(**data)
    except (OSError, ValueError, TypeError, AttributeError) as error:
        wrong = what_is_wrong(where, "json", "a cache description")
        if wrong is not None:  # the parts may be whole, but nothing says what made them
            raise CacheError(f"{where}: {wrong}: copy the cache again, or delete it and run "
                             "`captioner extract` again") from None  # fmt: skip
        raise CacheError(f"{where}: unreadable cache description ({error})") from None


def find_shards(path: Path) -> dict[Shard, bool]:
    """Shard -> finished (its done marker is there), for every shard with a part or a marker."""
    found: dict[Shard, bool] = {}
    for file in path.glob("shard-*-of-*.json"):
        match = _DONE.fullmatch(file.name) or _PART.fullmatch(file.name)
        if match:
            shard = Shard(int(match[1]), int(match[2]))
            found[shard] = found.get(shard, False) or bool(_DONE.fullmatch(file.name))
    return found


def missing_shards(found: dict[Shard, bool]) -> list[Shard]:
    """The shards of the count in use that have neither a part nor a done marker."""
    count = max((shard.count for shard in found), default=1)
    return [Shard(i, count) for i in range(1, count + 1) if Shard(i, count) not in found]


def _read_shards(path: Path, whole: bool = True) -> dict[Shard, bool]:
    """find_shards, refusing a set that mixes shard counts or (if `whole`) lacks a shard."""
    found = find_shards(path)
    counts = sorted({shard.count for shard in found})
    if len(counts) > 1:
        raise CacheError(
            f"{path}: mixes shards of {' and '.join(map(str, counts))}: keep one --shard I/N count"
        )
    missing = missing_shards(found) if found and whole else []
    if missing:
        raise CacheError(
            f"{path}: shard {missing[0]} is missing: run `captioner extract --shard "
            f"{missing[0]}` with the same --features"
        )
    return found


def _read_part(part_json: Path, info: CacheInfo, row_of: dict[str, int], start: int):
    """Memory-maps one part after checking it against its description and the cache's; its
    photos get rows `start`.. in `row_of`."""
    npy = part_json.with_suffix(".npy")
    for file, kind in ((part_json, "json"), (npy, "npy")):
        wrong = what_is_wrong(file, kind, "a part of a feature cache")
        if wrong is not None:
            raise CacheError(
                f"{file}: {wrong}: delete {npy.name} and {part_json.name}, then run the same "
                "`captioner extract` again: it encodes only the photos the cache lacks"
            )
    try:
        names = json.loads(part_json.read_text(encoding="utf-8"))["names"]
        rows = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CacheError(f"{part_json}: unreadable part of the cache ({error})") from None
    expected = (len(names), info.feature_dim)
    if rows.shape != expected or rows.dtype != info.dtype:
        raise CacheError(
            f"{npy}: holds {rows.dtype}{list(rows.shape)}, its description says "
            f"{info.dtype}{list(expected)}: the cache was altered; extract again"
        )
    for offset, name in enumerate(names):
        if not isinstance(name, str) or name in row_of:
            raise CacheError(
                f"{part_json}: photo {name!r} is in this part and in another: a shard was "
                f"extracted twice into this folder ({part_json.name.split('.')[0]})"
            )
        row_of[name] = start + offset
    return rows


# --- writing -------------------------------------------------------------------------------


class CacheWriter:
    """Appends parts to a cache folder for one shard; `finish` marks the shard done.

    Several writers (other shards, other machines sharing the folder) may write one cache at
    once: each part has a name of its own and every file appears whole or not at all.
    """

    def __init__(self, path: str | Path, info: CacheInfo, shard: Shard):
        self.path, self.info, self.shard = Path(path), info, shard
        self._names: list[str] = []
        self._rows: list[np.ndarray] = []
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / STORE_FILE).is_file():
            existing = _read_info(self.path)
            if existing != info:
                raise CacheError(f"{self.path}: holds other features ({existing}), not {info}")
        else:
            description = {"format": STORE_FORMAT, **asdict(info)}
            write_atomic(self.path / STORE_FILE, _json_bytes(description))

    @property
    def pending_bytes(self) -> int:
        return len(self._names) * self.info.feature_dim * self.info.dtype.itemsize

    def add(self, names: list[str], rows: np.ndarray) -> None:
        self._names += names
        self._rows.append(np.asarray(rows, self.info.dtype))

    def flush(self) -> None:
        """Writes what was added since the last flush as one part: its .npy, then its .json."""
        if not self._names:
            return
        stem = f"{self._tag}.{uuid.uuid4().hex[:12]}"
        rows = np.concatenate(self._rows)
        try:
            with atomic_file(self.path / f"{stem}.npy", rows.nbytes + 128) as file:
                np.save(file, rows, allow_pickle=False)
            write_atomic(self.path / f"{stem}.json", _json_bytes({"names": self._names}))
        except DiskFullError:
            # No part is written (a .npy without its .json would be ignored, and takes room):
            # these photos are encoded again next time. Dropped now, so that no later flush
            # retries in vain.
            (self.path / f"{stem}.npy").unlink(missing_ok=True)
            self._names, self._rows = [], []
            raise
        self._names, self._rows = [], []

    def finish(self, images: int, failed: dict[str, str]) -> None:
        self.flush()
        done = {"shard": str(self.shard), "images": images, "failed": failed}
        write_atomic(self.path / f"{self._tag}.done.json", _json_bytes(done))

    @property
    def _tag(self) -> str:
        return f"shard-{self.shard.index}-of-{self.shard.count}"


def write_feature_cache(path: str | Path, info: CacheInfo, names: list[str], rows) -> Path:
    """A whole cache in one call (one part, shard 1/1 done): for tools and tests."""
    writer = CacheWriter(path, info, Shard())
    writer.add(list(names), np.asarray(rows))
    writer.finish(len(names), {})
    return Path(path)


def _json_bytes(data) -> bytes:
    return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def default_cache_path(
    data_root: str | Path,
    encoder: str,
    mirrored: bool = False,
    grid: bool = False,
) -> Path:
    """Where `extract` puts the cache unless told: data/<dataset folder>-<encoder>/, with
    -mirrored for the mirrored photos and -grid for feature grids."""
    suffix = ("-mirrored" if mirrored else "") + ("-grid" if grid else "")
    return Path("data") / f"{Path(data_root).resolve().name}-{encoder}{suffix}"
