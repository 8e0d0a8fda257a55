"""A fast start for `captioner caption`: a run's light export (ONNX, captioner.runtime),
cached once, captions without importing TensorFlow.

The first `captioner caption` with a model captions through TensorFlow as always, then starts
`captioner export --format onnx` in the background into the cache, under a digest of the
runs' files (captioner.model.rundir.runs_fingerprint): a changed run gets a new export, and a
half-written one is never read (exports are moved into place whole). The next calls find it and
caption in about a second. Its captions equal the TensorFlow path's (all 1,000 Flickr8k test
photos, docs/performance.md); CAPTIONER_FAST_START=0 turns it off, as do missing onnxruntime
or tf2onnx (pip install -e ".[lite,export]").
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from captioner.files import user_cache_dir
from captioner.model.rundir import (
    ENCODER_FILE,
    MODEL_FILE,
    RUN_FILE,
    VOCABULARY_FILE,
    WEIGHTS_FILE,
    Run,
)

FAST_START_VARIABLE = "CAPTIONER_FAST_START"
# The shipped pair's export, measured (docs/export.md, "The fast start"): what the first
# caption's note says.
EXPORT_COST = "for the shipped model about 25 s of CPU, 7 GB of memory at its peak, 55 MB"
LIGHT_FORMAT = "onnx-1"  # a new export layout makes new names, never a misread old one


def light_export_dir(runs: list[Run]) -> Path:
    from captioner.version import __version__

    return user_cache_dir() / "light" / f"{runs_fingerprint(runs)}-{__version__}-{LIGHT_FORMAT}"


def runs_fingerprint(runs: list[Run]) -> str:
    """A digest of everything that decides what the runs compute: each run's run.json,
    vocabulary and weights files, in order (an export cached under it is theirs alone)."""
    digest = hashlib.sha256()
    for run in runs:
        for name in (RUN_FILE, VOCABULARY_FILE, MODEL_FILE, WEIGHTS_FILE, ENCODER_FILE):
            path = run.directory / name
            if path.is_file():
                digest.update(f"{len(name)}{name}{path.stat().st_size}".encode())
                with path.open("rb") as file:
                    for block in iter(lambda: file.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()[:32]


def _enabled(*modules: str) -> bool:
    if os.environ.get(FAST_START_VARIABLE, "1") == "0":
        return False
    return all(importlib.util.find_spec(module) is not None for module in modules)


def cached_light_engine(runs: list[Run]):
    """The runs' cached light export as a Captioner's engine (captioner.runtime.exported.
    OnnxEngine), or None when there is none yet, it cannot be read, or the fast start is off."""
    if not _enabled("onnxruntime"):
        return None
    folder = light_export_dir(runs)
    if not folder.is_dir():
        return None
    from captioner.runtime.exported import OnnxEngine

    try:
        return OnnxEngine(folder)
    except Exception:  # damaged (onnxruntime has errors of its own): TensorFlow serves, and
        shutil.rmtree(folder, ignore_errors=True)  # the next call exports it again
        return None


def export_light_in_background(runs: list[Run]) -> Path | None:
    """Starts `captioner export --format onnx` into the cache, detached: this command does not
    wait for it, and its output goes to a log file beside the export. Returns the folder it
    exports into, or None when it started nothing."""
    if not _enabled("onnxruntime", "tf2onnx"):
        return None
    folder = light_export_dir(runs)
    log_file = folder.parent / f"{folder.name}.log"
    if folder.exists() or _started_lately(log_file):
        return None  # made, or being made (or failed) a moment ago: one export at a time
    shipped = runs[0].shipped and len(runs) == 1 + len(runs[0].info.get("ensemble", []))
    given = [] if shipped else [a for run in runs for a in ("--run", str(run.directory))]
    command = [sys.executable, "-m", "captioner", "export", str(folder), "--format", "onnx",
               *given]  # fmt: skip
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log:
            log.write(f"started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            log.flush()
            subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)  # fmt: skip
    except OSError:  # a full disk or a read-only cache: the captions are out; next time, then
        return None
    return folder


def fast_start_note(folder: Path) -> str:
    """The one line `captioner caption` says when it starts a background export: what, what
    it costs, and how to turn it off or undo it."""
    return (f"fast start: exporting this model in the background into {folder} ({EXPORT_COST}) "
            f"so that the next caption starts in about a second; {FAST_START_VARIABLE}=0 turns "
            "this off, `captioner cache --clear` deletes it")  # fmt: skip


# An export started this recently is left to finish (or, failed, is not retried at once): a
# burst of captions starts one export, not one each.
RETRY_SECONDS = 600


def _started_lately(log_file: Path) -> bool:
    try:
        return time.time() - log_file.stat().st_mtime < RETRY_SECONDS
    except OSError:
        return False
