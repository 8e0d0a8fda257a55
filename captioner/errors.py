"""Errors the library raises for the user to read.

The CLI turns every `CaptionerError` into one line and a non-zero exit; anything else is a bug
and keeps its traceback. Set the environment variable CAPTIONER_DEBUG (to 1, or any non-empty
value) to see tracebacks for these too; it also shows TensorFlow's start-up log lines. The
`captioner --verbose` flag shows those log lines only: errors stay one line.
"""

from __future__ import annotations


class CaptionerError(Exception):
    """Base class: the message says what is wrong and, where it can, what to do."""


class ConfigError(CaptionerError):
    """An unknown option, a wrong type, or a config file that cannot be read."""


class DataError(CaptionerError):
    """A dataset folder, captions file or split that cannot be used."""


class CacheError(CaptionerError):
    """A feature cache that is unreadable, unsafe, or made by another encoder."""


class EncoderError(CaptionerError):
    """An unknown encoder or weights that cannot be had."""


class RunError(CaptionerError):
    """A run directory that lacks what a later stage needs."""


class ImageError(CaptionerError):
    """A photo that cannot be read: not an image, damaged, or in a format captioner does not
    read."""


class ImageTooLarge(ImageError):
    """A photo with more pixels than allowed (Pillow's decompression-bomb guard)."""


class DiskFullError(CaptionerError):
    """A write that found no room on its disk (ENOSPC) or in its quota (EDQUOT). Writes are
    atomic, so the file it was writing keeps its old contents and what was finished is kept:
    the message names the path, the room needed when known, and how to go on."""

    AGAIN = "run the same command again: it keeps what was finished"

    def __init__(self, path, needed: int | None = None, free: int | None = None,
                 quota: bool = False, estimated: bool = False, then: str = AGAIN):  # fmt: skip
        self.path, self.needed, self.free = path, needed, free
        self.quota, self.estimated = quota, estimated
        what = "over the disk quota" if quota else "no space left on the disk"
        sizes = []
        if needed:
            sizes.append(f"needs {'about ' if estimated else ''}{size_text(needed)}")
        if free is not None:
            sizes.append(f"{size_text(free)} free")
        room = f" ({', '.join(sizes)})" if sizes else ""
        super().__init__(f"{path}: {what}{room}: make room, then {then}")

    def then(self, advice: str) -> DiskFullError:
        """The same error with other advice after "make room, then"."""
        return DiskFullError(self.path, self.needed, self.free, self.quota, self.estimated, advice)


class LockedError(CaptionerError):
    """A run directory or output file that another live process is writing."""


def size_text(count: int) -> str:
    """Bytes for people: 512 bytes, 61.4 kB, 1.2 MB, 3.4 GB (powers of 1000, as df -H)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
