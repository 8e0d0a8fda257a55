"""`captioner export`: a run (or an ensemble, or the shipped model) written out for programs
that are not captioner.

    saved_model   OUT/<version>/ a TensorFlow SavedModel, photo bytes in, words out
                  (captioner.export.saved_model): TF Serving's layout, version 1 by default
    onnx          OUT/start.onnx, OUT/step.onnx (captioner.export.onnx), for the light runtime

Either way OUT/captioner-export.json says what was exported (runs, decoding settings, input
size, versions) and, for onnx, holds the vocabulary. The export is written beside OUT and moved
into place whole: a failed export (a full disk included: DiskFullError) leaves nothing, and an
existing one is replaced only when told (force).
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from captioner.config import EXPORT_FORMATS, EXPORT_MANIFEST, DecodeConfig, check_length
from captioner.errors import ConfigError
from captioner.files import disk_full_as_error
from captioner.model.ensembles import load_runs
from captioner.model.rundir import Run, write_json

MANIFEST_FILE = EXPORT_MANIFEST
MANIFEST_FORMAT = "captioner-export/1"


@dataclass
class ExportSummary:
    folder: Path  # what to point TF Serving or the runtime at
    format: str
    bytes: int
    seconds: float


def export_model(
    out: str | Path,
    run_dirs=(),
    export_format: str = "saved_model",
    decoding: DecodeConfig | None = None,
    version: int = 1,
    force: bool = False,
) -> ExportSummary:
    """Exports the runs (none: the shipped model) to `out`, decoding with `decoding` [default:
    the first run's own settings]; ConfigError for an unknown format or an export in the way."""
    if export_format not in EXPORT_FORMATS:
        raise ConfigError(f"format {export_format!r}: not one of {', '.join(EXPORT_FORMATS)}")
    started = time.perf_counter()
    out = Path(out)
    target = out / str(version) if export_format == "saved_model" else out
    if target.exists() and not force:
        raise ConfigError(f"{target}: already exists: give --force to replace it")
    runs = load_runs(list(run_dirs) or None)
    decoding = decoding or runs[0].decoding()
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with disk_full_as_error(out):  # TensorFlow's and tf2onnx's writes too, not ours alone
            staging.mkdir(parents=True)
            _write(export_format, runs, decoding, staging, version)
            _move_into_place(staging, out, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return ExportSummary(target, export_format, size, time.perf_counter() - started)


def _write(export_format: str, runs: list[Run], decoding: DecodeConfig, staging: Path,
           version: int) -> None:  # fmt: skip
    check_length(decoding.max_length, max_words(runs))
    manifest = _manifest(export_format, runs, decoding)
    if export_format == "saved_model":
        from captioner.export.saved_model import write_saved_model

        write_saved_model(runs, decoding, staging / str(version))
        manifest["versions"] = [version]
    else:
        from captioner.export.onnx import write_onnx

        write_onnx(runs, staging)
        manifest["vocabulary"] = runs[0].vocabulary.words
        manifest["tokenizer"] = runs[0].vocabulary.tokenizer  # how the runtime joins them
        # Each model's size: the runtime tells a file cut short (a copy interrupted) by it.
        manifest["files"] = {f.name: f.stat().st_size for f in sorted(staging.glob("*.onnx"))}
    write_json(staging / MANIFEST_FILE, manifest)


def max_words(runs: list[Run]) -> int | None:
    """The longest caption every run's decoder can decode (None: no limit)."""
    limits = [run.config.transformer.max_words for run in runs
              if run.config.model.decoder == "transformer"]  # fmt: skip
    return min(limits, default=None)


def _manifest(export_format: str, runs: list[Run], decoding: DecodeConfig) -> dict:
    import tensorflow as tf

    from captioner.version import __version__

    run = runs[0]
    return {
        "format": MANIFEST_FORMAT,
        "kind": export_format,
        "model": "shipped Flickr8k model" if run.shipped else None,
        "runs": [str(r.directory.resolve()) for r in runs],
        "encoder": run.encoder.name,
        "input_size": run.encoder.input_size,
        "decoding": asdict(decoding),
        # The longest caption its decoders can write (Transformers' caches), null: no limit.
        "max_words": max_words(runs),
        "vocabulary_size": len(run.vocabulary),
        "captioner_version": __version__,
        "tensorflow_version": tf.__version__,
    }


def _move_into_place(staging: Path, out: Path, target: Path) -> None:
    """SavedModel: the version folder joins OUT (other versions stay); onnx: OUT is replaced.
    What is replaced is first moved aside, so a folder is never half written."""
    if target == out:
        _replace(out, staging)
        return
    out.mkdir(parents=True, exist_ok=True)
    _replace(target, staging / target.name)
    _merge_versions(staging / MANIFEST_FILE, out / MANIFEST_FILE)


def _replace(path: Path, new: Path) -> None:
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    if path.exists():
        path.rename(aside)
    new.rename(path)
    shutil.rmtree(aside, ignore_errors=True)


def _merge_versions(new_manifest: Path, old_manifest: Path) -> None:
    """OUT's manifest describes its newest export and lists every version folder written."""
    import json

    new = json.loads(new_manifest.read_text(encoding="utf-8"))
    try:
        old = set(json.loads(old_manifest.read_text(encoding="utf-8")).get("versions", []))
    except (OSError, ValueError, AttributeError, TypeError):  # none yet, or damaged: the
        folders = old_manifest.parent.iterdir()  # version folders say which versions are there
        old = {int(f.name) for f in folders if f.is_dir() and f.name.isdigit()}
    new["versions"] = sorted(old | set(new["versions"]))
    write_json(old_manifest, new)
