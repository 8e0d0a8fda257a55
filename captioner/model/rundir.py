"""A run directory: everything `caption` and `evaluate` need, written by `train` and `finetune`
(through captioner.training.checkpoints). Every file name lives here.

model.keras        the best epoch by the run's selection score (train.select_by or
                   encoder_finetune.select_by: dev loss or greedy dev BLEU-4; for `finetune`,
                   finetune.select_by: greedy or beam dev BLEU-4 or CIDEr-D), Keras format,
                   loaded in safe mode
selection.json     which score picked model.keras and which epoch it holds, rewritten with it
last.keras         the latest epoch, rewritten each epoch
weights.npz        instead of model.keras in the shipped model: float16 weights, decoder rebuilt
                   from run.json (`save_weights_npz` writes it, `Run.load_model` reads it)
encoder.npz        a run whose encoder was fine-tuned (`finetune-encoder`, encoder.finetuned in
                   run.json): the encoder's weights of the epoch model.keras holds, float32
                   (float16 in a shipped model); `Run.load_encoder` reads them
vocabulary.json    the words, id = position
run.json           the effective config, the encoder, the data and feature paths
history.json, training.csv   per-epoch losses, scores and learning rate; loss.png draws them
logs/              TensorBoard's event files (`train` only)
resume.npz         where `train --resume` continues: every variable of the model and the
                   optimizer after the last finished epoch, and the callbacks' counters
.captioner.lock    while a process writes the run: its OS lock, naming it (captioner.locks);
                   removed when it ends

A file that is missing, empty, cut short or not what it should be is a RunError naming it, what
is wrong with it and what to do (`damaged`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from captioner.config import Config, DecodeConfig, config_from_dict, decoding_with
from captioner.data.text import Vocabulary
from captioner.errors import RunError
from captioner.files import what_is_wrong, write_atomic, write_through_temporary
from captioner.model.int8 import INT8_MIN_SIZE, dequantize_int8, quantize_int8

RUN_FORMAT = "captioner-run/1"
MODEL_FILE, LAST_FILE, WEIGHTS_FILE = "model.keras", "last.keras", "weights.npz"
VOCABULARY_FILE, RUN_FILE, HISTORY_FILE = "vocabulary.json", "run.json", "history.json"
TRAINING_CSV, PLOT_FILE, TENSORBOARD_DIR = "training.csv", "loss.png", "logs"
RESUME_FILE, ENCODER_FILE, SELECTION_FILE = "resume.npz", "encoder.npz", "selection.json"
LOCK_FILE = ".captioner.lock"
RETRAIN = "copy it again or retrain"
# What each file of a run directory is, for what_is_wrong: (kind, "not <label>").
FILE_KINDS = {
    RUN_FILE: ("json", "a captioner run file"),
    VOCABULARY_FILE: ("json", "a captioner vocabulary"),
    HISTORY_FILE: ("json", "a training history"),
    SELECTION_FILE: ("json", "a captioner selection file"),
    MODEL_FILE: ("zip", "a Keras model"),
    LAST_FILE: ("zip", "a Keras model"),
    WEIGHTS_FILE: ("zip", "a captioner weights file"),
    ENCODER_FILE: ("zip", "a captioner weights file"),
    RESUME_FILE: ("zip", "a captioner checkpoint"),
}


@dataclass
class EncoderInfo:
    name: str
    input_size: int
    feature_dim: int
    weights: str
    cells: int = 0  # > 0: the features are the encoder's grid of this many cells (attention)
    # True: the encoder was trained with the decoder; its weights are the run's own encoder.npz,
    # and no feature cache holds what it computes.
    finetuned: bool = False


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
        path = self.directory / MODEL_FILE
        if path.is_file():
            try:
                model = load_keras_model(path)
            except Exception as error:  # Keras says "File not found" of a file cut short
                raise damaged(path, self._advice(MODEL_FILE), error) from None
            if all(layer.dtype_policy.name == "float32" for layer in model.layers):
                return model
            # Trained in mixed precision (train.precision), its layers keep their bfloat16
            # policies in model.keras, and the searches would meet bfloat16 tensors beside
            # their float32 state. Every stage after training computes in float32; the
            # weights are float32 either way.
            rebuilt = self._decoder_of_config()
            rebuilt.set_weights(model.get_weights())
            return rebuilt
        advice = self._advice(WEIGHTS_FILE)
        return self._with_weights(self._decoder_of_config(), WEIGHTS_FILE,
                                  "the decoder of run.json", advice)  # fmt: skip

    def _decoder_of_config(self):
        """The decoder run.json describes, in float32, its weights not set."""
        from captioner.model.decoder import build_decoder

        encoder, config = self.encoder, self.config
        return build_decoder(config.model, len(self.vocabulary), encoder.feature_dim,
                             encoder.cells, updown=config.updown,
                             transformer=config.transformer)  # fmt: skip

    def _with_weights(self, model, name: str, what: str, advice: str):
        """`model` with the arrays of this run's `name` (weights.npz, encoder.npz), which must
        be as many as `what` (the model) has."""
        path = self.directory / name
        weights = read_weights_npz(path, self._advice(name))
        if len(weights) != len(model.weights):
            raise RunError(f"{path}: holds {len(weights)} arrays, {what} has "
                           f"{len(model.weights)}: {advice}")  # fmt: skip
        model.set_weights(weights)
        return model

    def _advice(self, name: str) -> str:
        """What to do about a damaged file of this run: the shipped model comes with captioner;
        a model.keras has last.keras beside it, the latest epoch, if that one is whole."""
        if self.shipped:
            return "reinstall captioner (pip install --force-reinstall captioner)"
        last = self.directory / LAST_FILE
        if name == MODEL_FILE and what_is_wrong(last, *FILE_KINDS[LAST_FILE]) is None:
            return (f"{RETRAIN}; {LAST_FILE} beside it is whole (the latest epoch, not the "
                    f"best): copy it over {MODEL_FILE} to use it")  # fmt: skip
        return RETRAIN

    def load_encoder(self):
        """The encoder that makes this run's features: built by name with the run's weights, or
        for a fine-tuned run the architecture with the weights of its encoder.npz."""
        from captioner.features.encoders import build_encoder

        encoder, grid = self.encoder, self.encoder.cells > 0
        if not encoder.finetuned:
            return build_encoder(encoder.name, encoder.weights, grid=grid)
        model = build_encoder(encoder.name, "none", grid=grid)
        path = self.directory / ENCODER_FILE
        if not path.is_file():
            raise RunError(f"{self.directory}: no {ENCODER_FILE} here, yet its encoder was "
                           "fine-tuned (run.json): copy the whole run directory")  # fmt: skip
        return self._with_weights(model, ENCODER_FILE, encoder.name, "not this run's encoder")

    @property
    def shipped(self) -> bool:
        """The reference model installed with the package (its folder may be read-only)."""
        return self.directory.resolve() == shipped_run_dir().resolve()

    def decoding(self, **overrides) -> DecodeConfig:
        """The run's decoding settings (those chosen on dev, for the shipped model) with
        `overrides` (None values ignored) on top."""
        return decoding_with(self.config.decode, **overrides)


def save_weights_npz(model, folder: str | Path, name: str = WEIGHTS_FILE, dtype=np.float16):
    """weights.npz: the model's weights (float16: a sixth of model.keras; or "int8", about a
    twelfth), no optimizer state; `Run.load_model` rebuilds the decoder from run.json and reads
    them back. Also writes a fine-tuned encoder's encoder.npz (float32 in a run directory)."""
    arrays = {}
    for i, weight in enumerate(model.get_weights()):
        # A depthwise convolution's kernel (k, k, channels, 1) has one column: a scale per
        # number would be larger than float16.
        large = weight.ndim >= 2 and weight.size >= INT8_MIN_SIZE and weight.shape[-1] > 1
        if dtype == "int8" and large:
            arrays[f"q{i}"], arrays[f"s{i}"] = quantize_int8(weight)
        else:
            arrays[f"w{i}"] = weight.astype(np.float16 if dtype == "int8" else dtype)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(Path(folder) / name, buffer.getvalue())


def read_weights_npz(path: Path, advice: str = RETRAIN) -> list[np.ndarray]:
    """The arrays save_weights_npz wrote, in order, as float32 (int8 ones dequantized; plain
    arrays: no code runs); a damaged file is a RunError that ends with `advice`."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            count = sum(name[0] in "wq" for name in arrays.files)
            return [_weight(arrays, i) for i in range(count)]
    except Exception as error:  # BadZipFile, EOFError, ValueError, KeyError, zlib.error, ...
        raise damaged(path, advice, error) from None


def _weight(arrays, i: int) -> np.ndarray:
    if f"q{i}" in arrays.files:
        return dequantize_int8(arrays[f"q{i}"], arrays[f"s{i}"])
    return arrays[f"w{i}"].astype(np.float32)


def damaged(path: Path, advice: str = RETRAIN, error: BaseException | None = None) -> RunError:
    """The RunError for a run file that could not be read: what is wrong with the file
    (missing, empty, cut short, not what it should be), or else the reader's complaint."""
    kind, label = FILE_KINDS[path.name]
    wrong = what_is_wrong(path, kind, label)
    if wrong is None:  # a whole file that holds something else: say what its reader said
        said = str(error or "").strip().splitlines()
        wrong = f"not {label}" + (f" ({said[0]})" if said else "")
    return RunError(f"{path}: {wrong}: {advice}")


def write_json(path: str | Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def save_keras_model(model, path: str | Path) -> None:
    """model.save() into a temporary .keras file, then a rename: never half a model (and a full
    disk is a DiskFullError)."""
    path = Path(path)
    # Room needed on a full disk: about the size of the run's other .keras (the same model).
    sizes = [p.stat().st_size for p in (path.with_name(MODEL_FILE), path.with_name(LAST_FILE))
             if p.is_file()]  # fmt: skip
    write_through_temporary(path, model.save, ".keras", max(sizes, default=None))


def load_keras_model(path: str | Path):
    import keras

    # Registers the decoders' own layers with Keras, which safe mode loads only when known.
    import captioner.model.attention  # noqa: F401
    import captioner.model.lstm  # noqa: F401
    import captioner.model.transformer  # noqa: F401
    import captioner.model.updown  # noqa: F401

    # safe_mode refuses Lambda layers and other deserialized code; compile=False because
    # inference needs no optimizer or loss.
    return keras.models.load_model(path, compile=False, safe_mode=True)


def save_run_info(directory: Path, config: Config, encoder: EncoderInfo, **info: Any) -> None:
    from captioner.version import __version__

    data = {
        "format": RUN_FORMAT,
        "captioner_version": __version__,
        "encoder": encoder.__dict__,
        "config": config.to_dict(),
        **info,
    }
    write_json(directory / RUN_FILE, data)


def shipped_run_dir() -> Path:
    """The reference Flickr8k model installed with the package (README, Results)."""
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
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        advice = (
            RETRAIN if directory.resolve() != shipped_run_dir().resolve() else "reinstall captioner"
        )
        raise damaged(directory / RUN_FILE, advice, error) from None
    vocabulary = Vocabulary.load(directory / VOCABULARY_FILE)
    return Run(directory, config, encoder, vocabulary, data)


def load_run_features(run: Run, data_root: str | Path, path: str | Path | None = None):
    """The feature cache of `run`'s encoder: `path`, else the one it was trained on, else (a run
    trained on another machine, e.g. the shipped model) `extract`'s default for `data_root`.
    Returns (cache, its path); raises CacheError if another encoder or kind made it, or if the
    run's encoder was fine-tuned."""
    from captioner.errors import CacheError
    from captioner.features.store import default_cache_path, load_feature_cache

    encoder = run.encoder
    if encoder.finetuned:  # a cache of the ImageNet encoder would give other, wrong features
        raise CacheError(
            f"{run.directory}: its encoder was fine-tuned (finetune-encoder): no feature cache "
            "holds its features; `evaluate`, `caption` and `serve` encode the photos themselves"
        )
    path = path or run.info.get("features")
    if not path or not Path(path).exists():
        path = default_cache_path(data_root, encoder.name, grid=encoder.cells > 0)
    cache = load_feature_cache(path)
    cache.check_encoder(path, encoder.name, encoder.weights, grid=encoder.cells > 0)
    return cache, Path(path)
