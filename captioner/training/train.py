"""`captioner train`: clean and tokenize captions, then train the decoder by teacher forcing.

Each caption is one training sample: input `<start> w1 .. wn`, target `w1 .. wn <end>`, padding
weighted 0 in the loss and the accuracy. Batches group captions of similar length and are padded
only to their own longest caption, so little LSTM work is spent on padding.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from captioner.config import Config, TrainConfig
from captioner.data.caption_check import check_captions
from captioner.data.datasets import Dataset, load_dataset
from captioner.data.text import Vocabulary, build_vocabulary
from captioner.errors import RunError
from captioner.features.arrays import (
    CaptionArrays,
    caption_arrays,
    cleaned_captions,
    mirrored_features,
    references,
)
from captioner.features.store import load_feature_cache
from captioner.files import disk_full
from captioner.model.rundir import TENSORBOARD_DIR, EncoderInfo, load_run
from captioner.training.checkpoints import (
    RunRecorder,
    read_checkpoint_state,
    restore_checkpoint,
    save_checkpoint,
)
from captioner.training.distribute import is_chief, make_strategy, replicas
from captioner.training.pipeline import count_batches, make_batches
from captioner.training.seeding import seed_everything
from captioner.training.validation import dev_scores_function

Notes = Callable[[str], None] | None  # receives lines to show the user (the CLI: on stderr)


def smoothed_cross_entropy(label_smoothing: float, reduction: str = "mean_with_sample_weight"):
    """Sparse cross-entropy on logits against targets smoothed toward the uniform distribution:
    (1 - e) * -log p(word) + e * mean over the vocabulary of -log p (Keras' sparse loss has no
    label_smoothing). The mean is over real words, not over padding too."""
    import keras
    from keras import ops

    class SmoothedSparseCrossEntropy(keras.losses.Loss):
        def call(self, y_true, y_pred):
            log_p = ops.log_softmax(y_pred, axis=-1)
            picked = ops.take_along_axis(log_p, ops.expand_dims(ops.cast(y_true, "int32"), -1), -1)
            uniform = ops.mean(log_p, axis=-1)
            return -(1.0 - label_smoothing) * picked[..., 0] - label_smoothing * uniform

    return SmoothedSparseCrossEntropy(reduction=reduction, name="smoothed_xent")


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """Adam's learning rate: a number (train.schedule "plateau": the callback lowers it), or for
    "cosine" a schedule of the optimizer's step: linear warm-up from 0 to learning_rate over
    warmup_epochs, then cosine decay to min_learning_rate at the last step of `epochs`. A
    function of the step count alone, which resume.npz restores with the optimizer."""
    if config.schedule == "plateau":
        return config.learning_rate
    import keras

    warmup = round(config.warmup_epochs * steps_per_epoch)
    decay = max(config.epochs * steps_per_epoch - warmup, 1)
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else config.learning_rate, decay,
        alpha=config.min_learning_rate / config.learning_rate,
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
    )  # fmt: skip


def compile_decoder(model, config: TrainConfig, replicas: int = 1, steps_per_epoch: int = 1):
    """Adam with gradient clipping; masked sparse cross-entropy on logits; masked accuracy.

    The loss is the mean over the batch's real words, not over padding too: the weighted mean,
    or with several replicas the plain mean of weights normalized over the global batch
    (`make_batches(normalize_weights=True)`), which is the same number however it is split.
    """
    import keras

    rate = learning_rate(config, steps_per_epoch)
    optimizer = keras.optimizers.Adam(rate, clipnorm=config.clipnorm or None)
    reduction = "mean_with_sample_weight" if replicas == 1 else "sum_over_batch_size"
    if config.label_smoothing:
        loss = smoothed_cross_entropy(config.label_smoothing, reduction)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        weighted_metrics=["accuracy"],
        jit_compile=config.jit_compile,
    )


@dataclass
class TrainSummary:
    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_bleu4: float
    vocabulary_size: int
    train_captions: int
    seconds: float


def _callbacks(recorder: RunRecorder, config: TrainConfig, dev_scores, resumed: dict | None):
    """Dev scores into the logs, TensorBoard, the LR schedule, then the run recorder
    (checkpoints, history, early stopping, resume.npz) once the logs are complete."""
    import keras

    class DevScores(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs.update(dev_scores())  # in place: the callbacks after this one see them

    class Plateau(keras.callbacks.ReduceLROnPlateau):
        """Keras' schedule, whose counters a resumed run gets back (on_train_begin resets them)."""

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            for key, value in ((resumed or {}).get("plateau") or {}).items():
                setattr(self, key, value)

        def state(self) -> dict:
            return {"wait": self.wait, "cooldown_counter": self.cooldown_counter,
                    "best": float(self.best)}  # fmt: skip

    # Cosine: the optimizer's own schedule lowers the rate; no plateau callback then.
    schedule = (
        []
        if config.schedule == "cosine"
        else [
            Plateau(
                "val_loss",
                factor=config.lr_factor,
                patience=config.lr_patience,
                min_lr=config.min_learning_rate,
            )
        ]
    )

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            logs = {**logs, "learning_rate": float(rate)}
            stop = recorder.record(self.model, epoch + 1, logs)
            state = {"epoch": epoch + 1, "stopped": stop, "recorder": recorder.state,
                     "plateau": schedule[0].state() if schedule else None}  # fmt: skip
            if recorder.writes:
                save_checkpoint(self.model, recorder.run_dir, state)
            self.model.stop_training = stop

    board = [keras.callbacks.TensorBoard(str(recorder.run_dir / TENSORBOARD_DIR))]
    return [DevScores(), *(board if recorder.writes else []), *schedule, Record()]


@dataclass
class _Prepared:
    """What training needs from the dataset and the cache, read and checked before TensorFlow
    starts."""

    dataset: Dataset
    vocabulary: Vocabulary
    encoder: EncoderInfo
    train: CaptionArrays
    dev: CaptionArrays


def _prepare(data_root, features_path, config: Config, mirrored_features_path,
             notes: Notes = None) -> _Prepared:  # fmt: skip
    dataset = load_dataset(data_root)
    text = config.text
    check = check_captions(dataset, text)  # refuses captions that cleaning guts
    if notes and check.line():
        notes(check.line())
    cache = load_feature_cache(features_path)
    # The encoder asked for, not a cache of mirrored photos, grids exactly when attending.
    cache.check_encoder(features_path, config.encoder.name, grid=config.model.needs_grid)
    train_captions = cleaned_captions(dataset, dataset.splits["train"], check.tokenizer)
    vocabulary = build_vocabulary(train_captions, text.min_word_count, check.tokenizer)
    lazy = config.train.lazy_features
    train_arrays = caption_arrays(dataset, "train", cache, vocabulary, text.max_caption_words, lazy)
    dev_arrays = caption_arrays(dataset, "dev", cache, vocabulary, text.max_caption_words, lazy)
    if config.train.mirror_probability > 0:
        train_arrays.mirrored = mirrored_features(
            data_root, cache, train_arrays.names, mirrored_features_path, lazy
        )
    encoder = EncoderInfo(
        cache.encoder, cache.input_size, cache.feature_dim, cache.weights, cache.cells
    )
    # In memory, the arrays hold copies of the features they need: the cache's memory-mapped
    # parts are released when this returns (a grid cache is 1.3 GB for Flickr8k). Lazy, they
    # keep reading from it.
    return _Prepared(dataset, vocabulary, encoder, train_arrays, dev_arrays)


def _fit(model, prepared: _Prepared, config: Config, recorder: RunRecorder, progress: bool,
         resumed: dict | None, replicas: int):  # fmt: skip
    dev = prepared.dev
    dev_scores = dev_scores_function(
        model,
        dev.features,
        references(prepared.dataset, dev.names, prepared.vocabulary.tokenizer),
        prepared.vocabulary,
        config.text.max_caption_words,
    )
    settings = config.train
    first = resumed["epoch"] if resumed else 0
    model.fit(
        make_batches(
            prepared.train,
            settings.batch_size,
            True,
            settings.seed,
            settings.mirror_probability,
            epochs=(first, settings.epochs),
            normalize_weights=replicas > 1,
        ),
        steps_per_epoch=count_batches(prepared.train, settings.batch_size),
        validation_data=make_batches(
            dev, settings.batch_size, False, normalize_weights=replicas > 1
        ),
        epochs=settings.epochs,
        initial_epoch=first,
        shuffle=False,  # tf.data shuffles (seeded); Keras cannot shuffle a Dataset anyway
        callbacks=_callbacks(recorder, settings, dev_scores, resumed),
        verbose=1 if progress else 0,
    )


def train(
    data_root: str | Path,
    features_path: str | Path,
    run_dir: str | Path,
    config: Config,
    progress: bool = True,
    mirrored_features_path: str | Path | None = None,
    notes: Notes = None,
) -> TrainSummary:
    """Trains a decoder on the dataset's train split, validating on dev, into `run_dir`.

    Args:
        data_root: dataset folder (any layout, see captioner.data.datasets).
        features_path: the cache written by `extract` for this dataset, by config.encoder.
        run_dir: created if needed; receives the model, vocabulary, config and history.
        config: the effective configuration (saved into the run directory).
        progress: show Keras' per-epoch progress bar.
        mirrored_features_path: the cache of `extract --mirror`, used when
            train.mirror_probability > 0 [default: next to `features_path`'s default].
        notes: called with one line on what cleaning took from the captions, if anything.
    """
    start = time.perf_counter()
    config.check_together()  # for configs built in Python, not by load_config
    prepared = _prepare(data_root, features_path, config, mirrored_features_path, notes)
    paths = {"data": data_root, "features": features_path}
    if mirrored_features_path is not None:
        paths["mirrored_features"] = mirrored_features_path
    paths = {key: str(Path(path).resolve()) for key, path in paths.items()}
    with _recorder_for(run_dir, config) as recorder:  # holds the run directory's lock
        recorder.start(config, prepared.encoder, prepared.vocabulary, **paths)
        return _train_and_summarize(prepared, config, recorder, progress, None, start, run_dir)


def resume_training(run_dir: str | Path, progress: bool = True) -> TrainSummary:
    """Continues a run that was killed (or stopped) after its last finished epoch: weights,
    optimizer state, learning-rate schedule, early-stopping counters and the data order of
    the epochs still to run are those of an uninterrupted run. Settings come from run.json."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    config, info = run.config, run.info
    with _recorder_for(run_dir, config) as recorder:
        # The lock first: what is read next is not being rewritten by another process. A
        # damaged resume.npz or history.json is refused before anything is written.
        recorder.lock()
        resumed = read_checkpoint_state(run_dir)
        if resumed["stopped"] or resumed["epoch"] >= config.train.epochs:
            raise RunError(f"{run_dir}: finished after epoch {resumed['epoch']}: nothing to "
                           "resume")  # fmt: skip
        recorder.resume(resumed["epoch"], resumed["recorder"])
        prepared = _prepare(info["data"], info["features"], config, info.get("mirrored_features"))
        if prepared.vocabulary.words != run.vocabulary.words:
            raise RunError(f"{run_dir}: the captions of {info['data']} changed since it started")
        return _train_and_summarize(prepared, config, recorder, progress, resumed, start, run_dir)


def _recorder_for(run_dir, config: Config) -> RunRecorder:
    """The run recorder of this process. The workers of a multi-worker run other than the chief
    keep its counters but write nothing: the user has one run directory, and nothing else to
    clean up, even after a worker was killed."""
    settings = config.train
    return RunRecorder(run_dir, settings.select_by, settings.early_stopping_patience, is_chief())


@contextmanager
def _resumable_after_full_disk(recorder: RunRecorder):
    """A full disk during training (checkpoints, resume.npz, history, TensorBoard's event files)
    is a DiskFullError that says how to continue: `--resume` from the last finished epoch."""
    try:
        yield
    except Exception as error:
        full = disk_full(error)
        if full is None:
            raise
        epoch = _checkpointed_epoch(recorder.run_dir)
        if epoch:
            full = full.then(f"run `captioner train --resume {recorder.run_dir}`: it continues "
                             f"after epoch {epoch}")  # fmt: skip
        raise full from error


def _checkpointed_epoch(run_dir: Path) -> int:
    """The epoch resume.npz holds; 0 if none (or none readable)."""
    try:
        return int(read_checkpoint_state(run_dir)["epoch"])
    except (RunError, ValueError, TypeError):
        return 0


def _train_and_summarize(prepared, config: Config, recorder: RunRecorder, progress: bool,
                         resumed: dict | None, start: float, run_dir) -> TrainSummary:  # fmt: skip
    import keras  # only now: bad input above fails without TensorFlow's start-up time

    from captioner.model.decoder import build_decoder

    strategy = make_strategy(config.train.strategy)  # before TensorFlow runs any op
    count = replicas(strategy)
    seed_everything(config.train.seed)
    keras.mixed_precision.set_global_policy(config.train.precision)
    try:
        encoder = prepared.encoder
        with strategy.scope():  # variables, optimizer and metrics mirrored on every replica
            model = build_decoder(config.model, len(prepared.vocabulary), encoder.feature_dim,
                                  encoder.cells, synchronized=count > 1, updown=config.updown,
                                  transformer=config.transformer)  # fmt: skip
            steps = count_batches(prepared.train, config.train.batch_size)
            compile_decoder(model, config.train, count, steps)
            if resumed:
                restore_checkpoint(model, Path(run_dir))
        # The dataset's captions (millions of small objects for COCO) live as long as training:
        # out of the cyclic garbage collector's reach, they do not slow its every pass.
        gc.collect()
        gc.freeze()
        with _resumable_after_full_disk(recorder):
            _fit(model, prepared, config, recorder, progress, resumed, count)
    finally:  # global settings: leave the process as it was (for decoding, for a notebook)
        gc.unfreeze()
        keras.mixed_precision.set_global_policy("float32")
    best = recorder.best_logs
    return TrainSummary(
        Path(run_dir),
        len(recorder.history),
        recorder.best_epoch,
        best["val_loss"],
        best["val_bleu4"],
        len(prepared.vocabulary),
        len(prepared.train.inputs),
        time.perf_counter() - start,
    )
