"""Work split into numbered shards that any scheduler can run: a Slurm array, a Kubernetes
indexed job, or several machines sharing a folder.

A photo's shard depends on its name alone (a hash, not its place in a listing), so the same
photo lands in the same shard on every machine and however the folder grows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from captioner.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`, counted from 1 as users write it: `--shard 2/4`."""

    index: int = 1
    count: int = 1

    def __post_init__(self):
        if not 1 <= self.index <= self.count:
            raise ConfigError(f"--shard {self}: expected I/N with 1 <= I <= N, e.g. 1/4")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1

    def holds(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index

    def select(self, names):
        """The names of this shard, in their order."""
        return [name for name in names if self.holds(name)]


def shard_of(name: str, count: int) -> int:
    """Which of `count` shards (1..count) the photo called `name` belongs to."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


def parse_shard(text: str | None) -> Shard:
    """`I/N` (or None: the whole) -> Shard; anything else is a ConfigError."""
    if text is None:
        return Shard()
    index, slash, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count)) if slash else None
    except ValueError:
        shard = None
    if shard is None:
        raise ConfigError(f"--shard {text}: expected I/N with 1 <= I <= N, e.g. 1/4")
    return shard
