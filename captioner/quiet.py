"""TensorFlow without its start-up chatter, and with its errors.

Importing TensorFlow 2.21 prints, through C++ absl logging, lines such as

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1795939447.856749 4747 port.cc:153] oneDNN custom operations are on. ...

(here the pair twice, a second apart). They are logged before absl reads
TF_CPP_MIN_LOG_LEVEL, so that setting cannot hide them; TF_ENABLE_ONEDNN_OPTS=0 would, but only
by turning oneDNN off, which changes speed and numbers. So `import_tensorflow` sends file
descriptor 2 to a temporary file while TensorFlow is imported and then gives back what is not
known to be harmless: every line if the import failed, else all but absl's banner and INFO
lines (what TF_CPP_MIN_LOG_LEVEL=2, set here, hides once absl has started). Errors and warnings
still reach the user.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

HARMLESS_LINES = (
    # absl's notice that it logs before being set up: it precedes the INFO lines below.
    re.compile(
        r"WARNING: All log messages before absl::InitializeLog\(\) is called are written "
        r"to STDERR"
    ),
    # INFO lines: `I0000 00:00:1795939447.856749    4747 port.cc:153] oneDNN custom ...`, or
    # in TensorFlow's older format `2024-01-01 12:00:00.000000: I tensorflow/...`.
    re.compile(r"I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "),
    re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: I "),
    # The second line of cpu_feature_guard's INFO message (shown if TF_CPP_MIN_LOG_LEVEL=0).
    re.compile(
        r"To enable the following instructions: .* rebuild TensorFlow with the "
        r"appropriate compiler flags\."
    ),
    # coco-caption's PTB tokenizer (Java) counting what it did: `evaluate --tokenize coco`.
    re.compile(r"PTBTokenizer tokenized \d+ tokens at [\d.]+ tokens per second\."),
)


# `captioner --verbose`, remembered for wherever TensorFlow ends up imported (a Captioner
# imports it only if its engine needs it).
VERBOSE = {"asked": False}


def verbose_requested(verbose: bool = False) -> bool:
    """True if TensorFlow's own log lines should be shown: --verbose, or CAPTIONER_DEBUG set."""
    return verbose or VERBOSE["asked"] or bool(os.environ.get("CAPTIONER_DEBUG"))


def import_tensorflow(verbose: bool = False) -> None:
    """Imports TensorFlow once, hiding its start-up lines unless `verbose_requested(verbose)`.

    Sets the environment defaults first: the Keras backend, and TF_CPP_MIN_LOG_LEVEL=2 (errors
    only) unless verbose. Variables the user set are kept. Does nothing after the first import.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules:
        return
    if verbose_requested(verbose):
        importlib.import_module("tensorflow")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import_quietly("tensorflow")


def import_quietly(module: str) -> None:
    """Imports `module` with file descriptor 2 captured; replays what is not harmless."""
    with stderr_captured():
        importlib.import_module(module)


@contextlib.contextmanager
def stderr_captured() -> Iterator[None]:
    """Points file descriptor 2 at a temporary file; afterwards writes its lines that are not
    harmless (all of them if the block raised) to sys.stderr."""
    with tempfile.TemporaryFile() as file:
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2 at all: nothing to hide
            yield
            return
        failed = False
        _flush_stderr()
        os.dup2(file.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            lines = file.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            shown = lines if failed else [line for line in lines if not is_harmless(line)]
            if shown:
                sys.stderr.write("".join(shown))
                _flush_stderr()


def is_harmless(line: str) -> bool:
    """True for TensorFlow's known start-up lines that are no news to a user."""
    return any(pattern.match(line) for pattern in HARMLESS_LINES)


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):  # a replaced or closed sys.stderr
        sys.stderr.flush()
