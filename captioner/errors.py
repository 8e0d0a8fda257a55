"""Errors the library raises for the user to read.

The CLI turns every `CaptionerError` into one line and a non-zero exit; anything else is a bug
and keeps its traceback. Set the environment variable CAPTIONER_DEBUG (to 1, or any non-empty
value) to see tracebacks for these too; it also shows TensorFlow's start-up log lines. The
`captioner --verbose` flag shows those log lines only: errors stay one line.
"""


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
