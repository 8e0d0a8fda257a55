"""`captioner info`: what a feature cache or a run directory holds, as a dict (the CLI prints it
as lines or as JSON)."""

from __future__ import annotations

import json
from pathlib import Path

from captioner.errors import CacheError, CaptionerError
from captioner.features.store import STORE_FILE, find_shards, load_feature_cache, missing_shards
from captioner.model.rundir import HISTORY_FILE, RUN_FILE, load_run, shipped_run_dir


def describe(path: str | Path | None = None) -> dict:
    """A cache folder (or 0.1 `.pkl` cache) or a run directory (None: the shipped model)."""
    path = Path(path) if path is not None else shipped_run_dir()
    if (path / RUN_FILE).is_file():
        return describe_run(path)
    if (path / STORE_FILE).is_file() or path.suffix == ".pkl":
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
    files = [path] if path.is_file() else [f for f in path.iterdir() if f.is_file()]
    return {
        **about,
        "format": "pickle (captioner 0.1)" if path.is_file() else "folder of .npy parts",
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
    """Encoder, vocabulary, the config, and the best epoch's scores from history.json."""
    run = load_run(path)
    about = {
        "kind": "run directory" + (" (the shipped model)" if run.shipped else ""),
        "path": str(path),
        "encoder": run.encoder.__dict__,
        "vocabulary_size": len(run.vocabulary),
        "data": run.info.get("data"),
        "features": run.info.get("features"),
        "ensemble": run.info.get("ensemble", []),
        "config": run.config.to_dict(),
    }
    history_file = path / HISTORY_FILE
    if history_file.is_file():
        history = json.loads(history_file.read_text(encoding="utf-8"))
        about["epochs"] = len([row for row in history if row.get("epoch", 0) > 0])
        about["best"] = _best_epoch(history, run.config.train.select_by, run.info)
    if "provenance" in run.info:
        about["scores"] = run.info["provenance"].get("scores")
    return about


def _best_epoch(history: list[dict], select_by: str, info: dict) -> dict:
    """The epoch model.keras holds: by train.select_by, or by dev BLEU-4 for a fine-tuned run."""
    from captioner.training.checkpoints import SELECT_MODE

    monitor = "val_bleu4" if "finetuned_from" in info else select_by
    scored = [row for row in history if monitor in row]
    pick = min if SELECT_MODE[monitor] == "min" else max
    best = pick(scored, key=lambda row: row[monitor]) if scored else {}
    return {key: best[key] for key in best if key == "epoch" or key.startswith("val_")}
