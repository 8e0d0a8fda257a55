"""An ONNX export of `captioner export --format onnx`, as the engine of a Captioner.

Photos are read by captioner.data.images (Pillow), as `captioner caption` reads them; start.onnx
turns them into the decoders' first state and step.onnx gives each next word's probabilities,
for the NumPy search of captioner.runtime.search with the exported decoding settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from captioner.config import EXPORT_MANIFEST as MANIFEST_FILE
from captioner.config import DecodeConfig
from captioner.data.text import Vocabulary
from captioner.errors import ConfigError, RunError
from captioner.files import what_is_wrong

BATCH = 16  # photos encoded and searched together


class _OnnxSteps:
    """start.onnx and step.onnx as the search's steps: features are the photos themselves."""

    def __init__(self, start, step, max_words: int | None = None):
        self._start, self._step = start, step
        self.max_words = max_words  # a Transformer's longest caption (the search checks it)
        self._state_names = [i.name for i in step.get_inputs() if i.name != "tokens"]
        # Asked for by name: the graph lists its outputs in the sorted order of their names
        # (next_state_10 before next_state_2), not in the order of the state.
        self._outputs = ["log_probs", *(f"next_{name}" for name in self._state_names)]

    def initial_state(self, photos: np.ndarray) -> list[np.ndarray]:
        return self._start.run(self._state_names, {"photos": photos})

    def step(self, tokens: np.ndarray, state: list[np.ndarray]):
        feed = {"tokens": tokens.astype(np.int32), **dict(zip(self._state_names, state))}
        log_probs, *new_state = self._step.run(self._outputs, feed)
        return log_probs, new_state


class OnnxEngine:
    """A folder written by `captioner export --format onnx` as a Captioner's engine
    (captioner.runtime.captioning): its "features" are the photos themselves, which start.onnx
    encodes inside the search."""

    attends = False  # the NumPy search carries no attention weights
    batch_size = BATCH

    def __init__(self, folder: str | Path):
        try:
            import onnxruntime
        except ImportError:
            raise RunError("the runtime needs onnxruntime: pip install 'captioner[lite]'") from None
        self.folder = Path(folder)
        manifest = _read_manifest(self.folder)
        words = manifest["vocabulary"]  # the special tokens first, as in vocabulary.json
        # Exports made before captions in other scripts hold words.
        self.vocabulary = Vocabulary(words[4:], tokenizer=manifest.get("tokenizer", "words"))
        self.input_size = manifest["input_size"]
        self.decoding = DecodeConfig(**manifest["decoding"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no warnings about unused initializers
        # An 8-bit export's DequantizeLinear nodes compute the package's float32 weights; left
        # to itself, onnxruntime fuses them with their MatMuls into integer arithmetic, whose
        # other rounding changed 1 caption in 100 of the shipped pair
        # (captioner.export.int8_weights).
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        sessions = [_session(onnxruntime, self.folder / f"{name}.onnx", options, manifest)
                    for name in ("start", "step")]  # fmt: skip
        self._steps = _OnnxSteps(*sessions, manifest.get("max_words"))

    def features(self, images: np.ndarray) -> np.ndarray:
        return images

    def search(self, photos: np.ndarray, decoding: DecodeConfig, attention: bool = False):
        from captioner.runtime.search import decode

        return decode(self._steps, photos.astype(np.float32), len(self.vocabulary), decoding,
                      batch_size=BATCH, scores=True)  # fmt: skip

    def attention_grid(self, what: str) -> tuple[int, int]:
        raise ConfigError(f"{what}: {self.folder} is an ONNX export, whose search carries no "
                          "attention: caption with the run itself to draw it")  # fmt: skip


def _export_again(folder: Path) -> str:
    return f"export again: captioner export {folder} --format onnx --force"


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise RunError(f"{folder}: no such export: `captioner export {folder} --format onnx` "
                       "makes one")  # fmt: skip
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        wrong = what_is_wrong(path, "json", "an export's description") or (
            f"cannot read the export's description ({error})")  # fmt: skip
        raise RunError(f"{path}: {wrong}: {_export_again(folder)}") from None
    if manifest.get("kind") != "onnx":
        raise RunError(f"{folder}: a {manifest.get('kind')} export, not onnx: the runtime "
                       "reads `captioner export OUT --format onnx`")  # fmt: skip
    missing = {"vocabulary", "input_size", "decoding"} - manifest.keys()
    if missing:
        raise RunError(f"{path}: not an export's description (no {', '.join(sorted(missing))}): "
                       f"{_export_again(folder)}")  # fmt: skip
    return manifest


def _session(onnxruntime, path: Path, options, manifest: dict):
    """One of the export's models, loaded; a file missing, empty, cut short (shorter than the
    manifest says) or that onnxruntime cannot load is a RunError naming it."""
    expected = manifest.get("files", {}).get(path.name)  # exports before the sizes: None
    size = path.stat().st_size if path.is_file() else None
    wrong = None
    if size is None or size == 0:
        wrong = "missing" if size is None else "empty"
    elif expected is not None and size != expected:
        wrong = f"cut short ({size} of {expected} bytes)" if size < expected else (
            f"{size} bytes, not the {expected} the export wrote")  # fmt: skip
    if wrong is None:
        try:
            return onnxruntime.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])  # fmt: skip
        except Exception as error:  # onnxruntime's own kinds: InvalidProtobuf, Fail, ...
            said = str(error).strip().splitlines()
            wrong = "not an ONNX model onnxruntime can load" + (f" ({said[0]})" if said else "")
    raise RunError(f"{path}: {wrong}: {_export_again(path.parent)}")
