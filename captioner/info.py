"""`captioner info`: what a feature cache or a run directory holds, as a dict (the CLI prints it
as lines or as JSON); `captioner cache`: what captioner keeps in the user's cache folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from captioner.errors import CacheError, CaptionerError
from captioner.features.store import STORE_FILE, find_shards, load_feature_cache, missing_shards
from captioner.files import user_cache_dir, what_is_wrong
from captioner.model.rundir import (
    FILE_KINDS,
    HISTORY_FILE,
    RUN_FILE,
    SELECTION_FILE,
    load_run,
    shipped_run_dir,
)


def describe(path: str | Path | None = None) -> dict:
    """A cache folder or a run directory (None: the shipped model)."""
    path = Path(path) if path is not None else shipped_run_dir()
    if (path / RUN_FILE).is_file():
        return describe_run(path)
    if (path / STORE_FILE).is_file():
        return describe_cache(path)
    raise CaptionerError(f"{path}: neither a feature cache nor a run directory")


def describe_cache(path: Path) -> dict:
    """Encoder, kind, photo count, shards present and missing, shape and bytes on disk; a cache
    that cannot be used says why under "problem" instead of failing."""
    shards = find_shards(path) if path.is_dir() else {}
    about: dict = {"kind": "feature cache", "path": str(path)}
    if shards:
        count = max(shard.count for shard in shards)
        about["shards"] = {
            "count": count,
            "present": sorted(str(s) for s in shards),
            "finished": sorted(str(s) for s, done in shards.items() if done),
            "missing": [str(s) for s in missing_shards(shards)],
        }
    try:
        cache = load_feature_cache(path)
    except CacheError as error:
        return {**about, "problem": str(error)}
    info = cache.info
    shape = [len(cache), info.cells, info.feature_dim // info.cells] if info.cells else [
        len(cache), info.feature_dim]  # fmt: skip
    files = [f for f in path.iterdir() if f.is_file()]
    return {
        **about,
        "encoder": info.encoder,
        "weights": info.weights,
        "input_size": info.input_size,
        "grid": bool(info.cells),
        "mirrored": info.mirrored,
        "images": len(cache),
        "feature_shape": shape,
        "dtype": str(info.dtype),
        "bytes_on_disk": sum(f.stat().st_size for f in files),
    }


def describe_run(path: Path) -> dict:
    """Encoder, vocabulary, the config, the best epoch's scores from history.json, and the run's
    files that are empty, cut short or damaged under "damaged" (checked whole, against their
    checksums where they have them)."""
    run = load_run(path)
    about = {
        "kind": "run directory" + (" (the shipped model)" if run.shipped else ""),
        "path": str(path),
        "encoder": run.encoder.__dict__,
        "vocabulary_size": len(run.vocabulary),
        "tokens": run.vocabulary.tokenizer,  # words, or characters (text.tokenizer)
        "data": run.info.get("data"),
        "features": run.info.get("features"),
        "ensemble": run.info.get("ensemble", []),
        "config": run.config.to_dict(),
    }
    damaged = _damaged_files(path)
    history_file = path / HISTORY_FILE
    if history_file.is_file() and HISTORY_FILE not in damaged:
        history = json.loads(history_file.read_text(encoding="utf-8"))
        about["epochs"] = len([row for row in history if row.get("epoch", 0) > 0])
        if (path / SELECTION_FILE).is_file() and SELECTION_FILE not in damaged:
            about["best"] = _kept_epoch(history, path / SELECTION_FILE)
    package = run.info.get("provenance", {}).get("package_scores")
    if package:  # the shipped model: its own row, as the README gives it
        about["test_scores"] = " ".join(f"{k} {v:.4f}" for k, v in package["scores"].items())
        about["measured_by"] = package["command"]
    if damaged:
        about["damaged"] = damaged
    return about


def _damaged_files(path: Path) -> dict[str, str]:
    """name -> what is wrong, for each file of the run that is there but not whole."""
    wrong = {name: what_is_wrong(path / name, *kind) for name, kind in FILE_KINDS.items()
             if (path / name).is_file()}  # fmt: skip
    return {name: why for name, why in wrong.items() if why is not None}


def _kept_epoch(history: list[dict], selection_file: Path) -> dict:
    """The epoch model.keras holds, as the run recorded it (selection.json), with its dev
    scores from the history."""
    selection = json.loads(selection_file.read_text(encoding="utf-8"))
    kept = next((row for row in history if row["epoch"] == selection["kept_epoch"]), {})
    scores = {key: value for key, value in kept.items() if key.startswith("val_")}
    return {"epoch": selection["kept_epoch"], "selected_by": selection["select_by"], **scores}


def cache_entries() -> list[dict]:
    """What captioner keeps in its user cache (captioner.files.user_cache_dir): converted
    encoder weights and the fast start's light exports, each entry with its size in bytes."""
    root = user_cache_dir()
    if not root.is_dir():
        return []
    entries = []
    for kind in sorted(p for p in root.iterdir()):
        for entry in sorted(kind.iterdir()) if kind.is_dir() else [kind]:
            files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
            entries.append({"path": str(entry), "kind": kind.name,
                            "bytes": sum(f.stat().st_size for f in files)})  # fmt: skip
    return entries


def clear_cache() -> int:
    """Deletes captioner's user cache; returns the bytes freed. Everything in it is made again
    when needed (weights converted, light exports made by the next `captioner caption`)."""
    freed = sum(entry["bytes"] for entry in cache_entries())
    shutil.rmtree(user_cache_dir(), ignore_errors=True)
    return freed
