"""What the two fine-tuning stages (`finetune`, `finetune-encoder`) share: the run they start
from, the new run directory they write, and the loop over epochs in which epoch 0 is the
starting point (kept until an epoch beats it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from captioner.data.datasets import Dataset, load_dataset
from captioner.errors import RunError
from captioner.model.rundir import EncoderInfo, Run, load_run
from captioner.training.checkpoints import RunRecorder
from captioner.training.seeding import seed_everything


@dataclass
class FinetuneSource:
    """The run fine-tuning starts from and its dataset, read and checked before TensorFlow
    starts; `info` is what the new run.json records of them."""

    run: Run
    dataset: Dataset
    info: dict[str, str]


def read_source(source_run, run_dir, data_root) -> FinetuneSource:
    """source_run None: the shipped model; data_root None: the dataset the run was trained on."""
    run = load_run(source_run)
    if Path(run_dir).resolve() == run.directory.resolve():
        raise RunError(f"{run_dir}: give the fine-tuned run its own directory, not the source's")
    data_root = data_root or run.info["data"]
    info = {"data": str(Path(data_root).resolve()),
            "finetuned_from": str(run.directory.resolve())}  # fmt: skip
    return FinetuneSource(run, load_dataset(data_root), info)


def start_run(run: Run, info: dict, run_dir, settings, section: str, monitor: str,
              encoder: EncoderInfo | None = None) -> RunRecorder:  # fmt: skip
    """Creates the new run directory (the source `run`'s config with `settings` as its
    `section`, its vocabulary, its encoder or `encoder`; `info` into run.json) and seeds every
    generator: TensorFlow starts here, after the data was read and checked. The recorder holds
    the directory's lock: use it as a context manager, which releases it."""
    recorder = RunRecorder(run_dir, monitor, settings.early_stopping_patience)
    config = replace(run.config, **{section: settings})
    recorder.start(config, encoder or run.encoder, run.vocabulary, **info)
    seed_everything(settings.seed)
    return recorder


@dataclass
class FinetuneSummary:
    run_dir: Path
    epochs_run: int
    best_epoch: int  # 0: no epoch beat the starting point, whose weights were kept
    start: dict[str, float]  # the starting point's dev scores (val_bleu4, val_cider_d, ...)
    best: dict[str, float]  # the logs of the epoch kept
    seconds: float
    extra: dict = field(default_factory=dict)  # what one stage adds (photos/s, unreadable)


def run_epochs(
    recorder: RunRecorder,
    epochs: int,
    train_epoch: Callable,
    end_epoch: Callable[[int, dict], bool],
    progress: bool,
    batches: int | None = None,
    started: float | None = None,
) -> FinetuneSummary:
    """Epoch 0 (the starting point) is scored and recorded first; then each epoch trains,
    train_epoch(epoch, progress_bar) -> logs, and ends, end_epoch(epoch, logs) -> whether to
    stop (it scores dev and records the epoch). progress_bar wraps an epoch's batches (`batches`
    of them, when known). `started`: when the stage started (perf_counter), for the summary."""
    from tqdm import tqdm

    started = time.perf_counter() if started is None else started
    end_epoch(0, {})
    for epoch in range(1, epochs + 1):

        def bar(items, epoch=epoch):
            return tqdm(items, total=batches, desc=f"epoch {epoch}", disable=not progress,
                        leave=False, unit="batch")  # fmt: skip

        if end_epoch(epoch, train_epoch(epoch, bar)):
            break
    history = recorder.history
    return FinetuneSummary(recorder.run_dir, len(history) - 1, recorder.best_epoch, history[0],
                           recorder.best_logs, time.perf_counter() - started)  # fmt: skip
