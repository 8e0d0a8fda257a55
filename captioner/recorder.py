"""The run recorder: what happens to a run directory around every epoch, for `train` (through a
Keras callback) and `finetune` (its own loop) alike.

It creates the directory with the vocabulary and run.json, then after each epoch appends the
epoch's logs to history.json and training.csv, writes last.keras, writes model.keras when the
selection score improved, draws loss.png, and says when early stopping should end the run.
Every file is written atomically: a run killed at any moment keeps its finished epochs.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from captioner.config import Config
from captioner.files import write_atomic
from captioner.rundir import (
    HISTORY_FILE,
    LAST_FILE,
    MODEL_FILE,
    PLOT_FILE,
    TRAINING_CSV,
    VOCABULARY_FILE,
    EncoderInfo,
    save_keras_model,
    save_run_info,
    write_json,
)
from captioner.text import Vocabulary

# Selection score -> which way is better, for the checkpoint, early stopping and summaries.
SELECT_MODE = {"val_loss": "min", "val_bleu4": "max"}


def seed_everything(seed: int) -> None:
    """Same seed, same run: Python, numpy and backend draws, and deterministic TF kernels."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def is_better(score: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return score < best if SELECT_MODE[monitor] == "min" else score > best


class RunRecorder:
    """Keeps a run directory up to date epoch by epoch.

    Args:
        run_dir: created if needed.
        monitor: the logged score that picks model.keras ("val_loss", "val_bleu4").
        patience: epochs without a better score before `record` says stop; 0 never stops.
    """

    def __init__(self, run_dir: str | Path, monitor: str, patience: int):
        self.run_dir = Path(run_dir)
        self.monitor, self.patience = monitor, patience
        self.history: list[dict[str, float]] = []
        self.best: float | None = None
        self.best_epoch = 0
        self.waited = 0

    def start(self, config: Config, encoder: EncoderInfo, vocabulary: Vocabulary, **info):
        """Creates the directory with the vocabulary and run.json (config, encoder, `info`)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        vocabulary.save(self.run_dir / VOCABULARY_FILE)
        save_run_info(self.run_dir, config, encoder, vocabulary_size=len(vocabulary), **info)

    def record(self, model, epoch: int, logs: dict[str, float]) -> bool:
        """Writes epoch `epoch`'s logs and checkpoints; returns True when training should stop.

        Epoch 0 may be recorded as the starting point (fine-tuning): it can be the best one.
        """
        logs = {key: float(value) for key, value in logs.items()}
        self.history.append({"epoch": epoch, **logs})
        if epoch > 0:
            save_keras_model(model, self.run_dir / LAST_FILE)
        if is_better(logs[self.monitor], self.best, self.monitor):
            self.best, self.best_epoch, self.waited = logs[self.monitor], epoch, 0
            save_keras_model(model, self.run_dir / MODEL_FILE)
        else:
            self.waited += 1
        self._write_logs()
        return self.patience > 0 and self.waited >= self.patience

    @property
    def best_logs(self) -> dict[str, float]:
        return next(h for h in self.history if h["epoch"] == self.best_epoch)

    def _write_logs(self) -> None:
        write_json(self.run_dir / HISTORY_FILE, self.history)
        columns = list(dict.fromkeys(key for row in self.history for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_atomic(self.run_dir / TRAINING_CSV, text.getvalue().encode("utf-8"))
        if all("val_loss" in row and "loss" in row for row in self.history):
            from captioner.report import plot_history

            plot_history(self.history, self.run_dir / PLOT_FILE)
