"""A run directory: everything `caption` and `evaluate` need, written by `train` and `finetune`
(through captioner.recorder). Every file name lives here.

model.keras        the best epoch by train.select_by (dev loss or greedy dev BLEU-4; for
                   `finetune`, dev BLEU-4), Keras format, loaded in safe mode
last.keras         the latest epoch, rewritten each epoch
weights.npz        instead of model.keras in the shipped model: float16 weights, decoder rebuilt
                   from run.json (`save_weights_npz` writes it, `Run.load_model` reads it)
vocabulary.json    the words, id = position
run.json           the effective config, the encoder, the data and feature paths
history.json, training.csv   per-epoch losses, scores and learning rate; loss.png draws them
logs/              TensorBoard's event files (`train` only)
resume.npz         where `train --resume` continues: every variable of the model and the
                   optimizer after the last finished epoch, and the callbacks' counters
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from captioner.config import Config, DecodeConfig, config_from_dict, merge
from captioner.errors import RunError
from captioner.files import usual_permissions, write_atomic
from captioner.text import Vocabulary

RUN_FORMAT = "captioner-run/1"
MODEL_FILE, LAST_FILE, WEIGHTS_FILE = "model.keras", "last.keras", "weights.npz"
VOCABULARY_FILE, RUN_FILE, HISTORY_FILE = "vocabulary.json", "run.json", "history.json"
TRAINING_CSV, PLOT_FILE, TENSORBOARD_DIR = "training.csv", "loss.png", "logs"
RESUME_FILE = "resume.npz"


@dataclass
class EncoderInfo:
    name: str
    input_size: int
    feature_dim: int
    weights: str
    cells: int = 0  # > 0: the features are the encoder's grid of this many cells (attention)


@dataclass
class Run:
    directory: Path
    config: Config
    encoder: EncoderInfo
    vocabulary: Vocabulary
    info: dict[str, Any]  # data and feature paths, version, anything else recorded

    def load_model(self):
        """The trained Keras model: model.keras, or the decoder rebuilt from run.json with the
        weights of weights.npz (how the shipped model travels: float16, a third of the size)."""
        if (self.directory / MODEL_FILE).is_file():
            return load_keras_model(self.directory / MODEL_FILE)
        from captioner.model import build_decoder

        encoder = self.encoder
        model = build_decoder(
            self.config.model, len(self.vocabulary), encoder.feature_dim, encoder.cells
        )
        with np.load(self.directory / WEIGHTS_FILE, allow_pickle=False) as arrays:
            weights = [arrays[f"w{i}"].astype(np.float32) for i in range(len(arrays.files))]
        model.set_weights(weights)
        return model

    @property
    def shipped(self) -> bool:
        """The reference model installed with the package (its folder may be read-only)."""
        return self.directory.resolve() == shipped_run_dir().resolve()

    def decoding(self, **overrides) -> DecodeConfig:
        """The run's decoding settings (those chosen on dev, for the shipped model) with
        `overrides` (None values ignored) on top."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return merge(self.config, {"decode": given}, "decoding options").decode


def save_weights_npz(model, folder: str | Path) -> None:
    """weights.npz: the model's weights in float16, no optimizer state (a sixth of model.keras);
    `Run.load_model` rebuilds the decoder from run.json and reads them back."""
    weights = {f"w{i}": w.astype(np.float16) for i, w in enumerate(model.get_weights())}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **weights)
    write_atomic(Path(folder) / WEIGHTS_FILE, buffer.getvalue())


def write_json(path: str | Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def save_keras_model(model, path: str | Path) -> None:
    """model.save() into a temporary .keras file, then a rename: never half a model."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".keras", dir=path.parent)
    os.close(handle)
    try:
        model.save(temporary)
        usual_permissions(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_keras_model(path: str | Path):
    import keras

    import captioner.attention  # noqa: F401  registers the attention layer for safe mode

    # safe_mode refuses Lambda layers and other deserialized code; compile=False because
    # inference needs no optimizer or loss.
    return keras.models.load_model(path, compile=False, safe_mode=True)


def save_run_info(directory: Path, config: Config, encoder: EncoderInfo, **info: Any) -> None:
    from captioner import __version__

    data = {
        "format": RUN_FORMAT,
        "captioner_version": __version__,
        "encoder": encoder.__dict__,
        "config": config.to_dict(),
        **info,
    }
    write_json(directory / RUN_FILE, data)


def shipped_run_dir() -> Path:
    """The reference Flickr8k model installed with the package (see README, Results)."""
    from importlib.resources import files

    return Path(str(files("captioner") / "reference"))


def load_run(directory: str | Path | None = None) -> Run:
    """Reads a run directory (None: the shipped model); raises RunError naming what is missing."""
    directory = Path(directory) if directory is not None else shipped_run_dir()
    if not directory.is_dir():
        raise RunError(f"{directory}: run directory not found")
    has_model = (directory / MODEL_FILE).is_file() or (directory / WEIGHTS_FILE).is_file()
    for name in (RUN_FILE, VOCABULARY_FILE, MODEL_FILE):
        if not (directory / name).is_file() and not (name == MODEL_FILE and has_model):
            raise RunError(
                f"{directory}: no {name} here: not a finished training run "
                "(train one with `captioner train`)"
            )
    try:
        data = json.loads((directory / RUN_FILE).read_text(encoding="utf-8"))
        if data.get("format") != RUN_FORMAT:
            raise ValueError("unknown format")
        config = config_from_dict(data.pop("config"), str(directory / RUN_FILE))
        encoder = EncoderInfo(**data.pop("encoder"))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise RunError(f"{directory / RUN_FILE}: not a captioner run file ({error})") from None
    vocabulary = Vocabulary.load(directory / VOCABULARY_FILE)
    return Run(directory, config, encoder, vocabulary, data)


def load_runs(directories) -> list[Run]:
    """One run, or several to decode as an ensemble (None or empty: the shipped model).
    Runs already loaded pass through as they are."""
    if directories:
        runs = [d if isinstance(d, Run) else load_run(d) for d in directories]
    else:  # the shipped model, with the members of its ensemble if it has one
        runs = [load_run()]
        runs += [load_run(runs[0].directory / m) for m in runs[0].info.get("ensemble", [])]
    for run in runs[1:]:
        if run.vocabulary.words != runs[0].vocabulary.words or run.encoder != runs[0].encoder:
            raise RunError(
                f"{run.directory}: an ensemble needs the same vocabulary and encoder as "
                f"{runs[0].directory}"
            )
    return runs


def load_run_features(run: Run, data_root: str | Path, path: str | Path | None = None):
    """The feature cache of `run`'s encoder: `path`, else the one it was trained on, else (a run
    trained on another machine, e.g. the shipped model) `extract`'s default for `data_root`.
    Returns (cache, its path); raises CacheError if another encoder or kind made it."""
    from captioner.store import default_cache_path, load_feature_cache

    encoder = run.encoder
    path = path or run.info.get("features")
    if not path or not Path(path).exists():
        path = default_cache_path(data_root, encoder.name, grid=encoder.cells > 0)
    cache = load_feature_cache(path)
    cache.check_encoder(path, encoder.name, encoder.weights, grid=encoder.cells > 0)
    return cache, Path(path)


def decoder_steps(runs: list[Run]):
    """The step function of one run's decoder, or of an ensemble of several."""
    from captioner.model import DecoderSteps, EnsembleSteps

    members = [DecoderSteps(run.load_model()) for run in runs]
    return members[0] if len(members) == 1 else EnsembleSteps(members)
