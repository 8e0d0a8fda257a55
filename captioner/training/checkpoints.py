"""The run recorder: what happens to a run directory around every epoch, for `train` (through a
Keras callback) and `finetune` (its own loop) alike.

It creates the directory with the vocabulary and run.json, then after each epoch appends the
epoch's logs to history.json and training.csv, writes last.keras, writes model.keras when the
selection score improved, draws loss.png, and says when early stopping should end the run.
Every file is written atomically: a run killed at any moment, or stopped by a full disk
(DiskFullError), keeps its finished epochs. While it writes, the recorder holds the run
directory's lock (captioner.locks): a second process that would write the same run refuses.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from captioner.config import SCORE_MODE, Config
from captioner.data.text import Vocabulary
from captioner.errors import RunError
from captioner.files import atomic_file, what_is_wrong, write_atomic
from captioner.locks import WriterLock
from captioner.model.rundir import (
    FILE_KINDS,
    HISTORY_FILE,
    LAST_FILE,
    LOCK_FILE,
    MODEL_FILE,
    PLOT_FILE,
    RESUME_FILE,
    SELECTION_FILE,
    TRAINING_CSV,
    VOCABULARY_FILE,
    EncoderInfo,
    damaged,
    save_keras_model,
    save_run_info,
    write_json,
)
from captioner.training.plots import plot_history


def is_better(score: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return score < best if SCORE_MODE[monitor] == "min" else score > best


# What to do about a damaged resume.npz or history.json: nothing else holds where the run was.
RESUME_ADVICE = "copy it again, or train anew without --resume"


class RunRecorder:
    """Keeps a run directory up to date epoch by epoch; as a context manager, releases the run
    directory's lock (taken by `start` or `lock`) when the block ends.

    Args:
        run_dir: created if needed.
        monitor: the logged score that picks model.keras (a key of config.SCORE_MODE).
        patience: epochs without a better score before `record` says stop; 0 never stops.
    """

    def __init__(self, run_dir: str | Path, monitor: str, patience: int, writes: bool = True):
        self.run_dir = Path(run_dir)
        self.monitor, self.patience = monitor, patience
        # False for the workers of a multi-worker run other than the chief: they keep the same
        # counters (and so stop at the same epoch) but write nothing, and take no lock.
        self.writes = writes
        self.history: list[dict[str, float]] = []
        self.best: float | None = None
        self.best_epoch = 0
        self.waited = 0
        self._lock: WriterLock | None = None

    def lock(self, advice: str = "wait for it to end or stop it") -> None:
        """Takes the run directory's lock (created if needed): LockedError, naming the process,
        if another live process holds it. A lock left by a dead process is free."""
        if self.writes and self._lock is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = WriterLock(self.run_dir / LOCK_FILE, self.run_dir, advice).acquire()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, config: Config, encoder: EncoderInfo, vocabulary: Vocabulary, **info):
        """Takes the lock of the (new) run directory, then writes the vocabulary and run.json
        (config, encoder, `info`) into it."""
        if not self.writes:
            return
        self.lock("wait for it to end or stop it, or give another --run-dir")
        try:
            vocabulary.save(self.run_dir / VOCABULARY_FILE)
            save_run_info(self.run_dir, config, encoder, vocabulary_size=len(vocabulary), **info)
        except BaseException:
            self.close()
            raise

    def record(self, model, epoch: int, logs: dict[str, float]) -> bool:
        """Writes epoch `epoch`'s logs and checkpoints; returns True when training should stop.

        Epoch 0 may be recorded as the starting point (fine-tuning): it can be the best one.
        """
        logs = {key: float(value) for key, value in logs.items()}
        self.history.append({"epoch": epoch, **logs})
        if epoch > 0 and self.writes:
            save_keras_model(model, self.run_dir / LAST_FILE)
        if is_better(logs[self.monitor], self.best, self.monitor):
            self.best, self.best_epoch, self.waited = logs[self.monitor], epoch, 0
            if self.writes:
                save_keras_model(model, self.run_dir / MODEL_FILE)
                self._write_selection()
        else:
            self.waited += 1
        if self.writes:
            self._write_logs()
        return self.patience > 0 and self.waited >= self.patience

    @property
    def state(self) -> dict:
        """What early stopping and the choice of model.keras need to go on after a restart."""
        return {"best": self.best, "best_epoch": self.best_epoch, "waited": self.waited}

    def resume(self, epoch: int, state: dict) -> None:
        """Picks up after `epoch`: its counters from `state`, the history from history.json
        (without any epoch recorded after that checkpoint, which will run again)."""
        self.best, self.best_epoch, self.waited = (
            state["best"],
            state["best_epoch"],
            state["waited"],
        )
        path = self.run_dir / HISTORY_FILE
        try:
            history = json.loads(path.read_text(encoding="utf-8"))
            self.history = [row for row in history if row["epoch"] <= epoch]
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise damaged(path, RESUME_ADVICE, error) from None

    @property
    def best_logs(self) -> dict[str, float]:
        return next(h for h in self.history if h["epoch"] == self.best_epoch)

    def _write_selection(self) -> None:
        """selection.json, right after model.keras: the rule that chose it and the epoch it
        holds, so that `captioner info` reads them instead of guessing."""
        selection = {"select_by": self.monitor, "mode": SCORE_MODE[self.monitor],
                     "kept_epoch": self.best_epoch, "score": self.best}  # fmt: skip
        write_json(self.run_dir / SELECTION_FILE, selection)

    def _write_logs(self) -> None:
        write_json(self.run_dir / HISTORY_FILE, self.history)
        columns = list(dict.fromkeys(key for row in self.history for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_atomic(self.run_dir / TRAINING_CSV, text.getvalue().encode("utf-8"))
        if all("val_loss" in row and "loss" in row for row in self.history):
            plot_history(self.history, self.run_dir / PLOT_FILE)


# --- the checkpoint `train --resume` continues from --------------------------------------------


def save_checkpoint(model, run_dir: Path, state: dict) -> None:
    """resume.npz, atomically: the values of every model variable (weights, BatchNorm statistics,
    the dropout seed generators' states) and optimizer variable (step, learning rate, moments),
    in order, and `state` (epoch and counters) as JSON bytes. Plain arrays: loading runs no code."""
    from keras import ops

    arrays = {f"model{i}": ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
    for i, variable in enumerate(model.optimizer.variables):
        arrays[f"optimizer{i}"] = ops.convert_to_numpy(variable)
    arrays["state"] = np.frombuffer(json.dumps(state).encode("utf-8"), np.uint8)
    size = sum(array.nbytes for array in arrays.values())
    with atomic_file(run_dir / RESUME_FILE, size) as file:
        np.savez(file, **arrays)


def read_checkpoint_state(run_dir: Path) -> dict:
    """The state resume.npz holds (epoch, counters), after checking the whole file against its
    checksums: a damaged one is refused before anything is read from it or written."""
    path = run_dir / RESUME_FILE
    if not path.is_file():
        raise RunError(
            f"{run_dir}: no {RESUME_FILE} here: nothing to resume (the run never finished an "
            "epoch, or was trained by captioner 0.1)"
        )
    wrong = what_is_wrong(path, *FILE_KINDS[RESUME_FILE])
    if wrong is not None:
        raise RunError(f"{path}: {wrong}: {RESUME_ADVICE}")
    try:
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(data["state"].tobytes().decode("utf-8"))
        if not isinstance(state, dict) or not {"epoch", "stopped", "recorder"} <= state.keys():
            raise ValueError("its state lacks the epoch")
        return state
    except Exception as error:  # whole, but not a checkpoint: KeyError, ValueError, TypeError
        raise damaged(path, RESUME_ADVICE, error) from None


def restore_checkpoint(model, run_dir: Path) -> None:
    """Sets the compiled model's and its optimizer's variables from resume.npz."""
    path = run_dir / RESUME_FILE
    model.optimizer.build(model.trainable_variables)
    with np.load(path, allow_pickle=False) as data:
        for prefix, variables in (("model", model.variables),
                                  ("optimizer", model.optimizer.variables)):  # fmt: skip
            saved = sorted((k for k in data.files if k.startswith(prefix)), key=len)
            if len(saved) != len(variables):
                raise RunError(f"{path}: holds {len(saved)} {prefix} variables, not "
                               f"{len(variables)}: not this run's model")  # fmt: skip
            for i, variable in enumerate(variables):
                variable.assign(data[f"{prefix}{i}"])
