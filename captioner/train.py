"""`captioner train`: clean and tokenize captions, then train the decoder by teacher forcing.

Each caption is one training sample: input `<start> w1 .. wn`, target `w1 .. wn <end>`, padding
weighted 0 in the loss and the accuracy. Batches group captions of similar length and are padded
only to their own longest caption, so little LSTM work is spent on padding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.arrays import CaptionArrays, caption_arrays, mirrored_features, references
from captioner.config import Config, TrainConfig
from captioner.data import Dataset, load_dataset
from captioner.recorder import RunRecorder, seed_everything
from captioner.rundir import TENSORBOARD_DIR, EncoderInfo
from captioner.scoring import dev_scores_function
from captioner.store import load_feature_cache
from captioner.text import Vocabulary, build_vocabulary

# Batches hold captions whose lengths (words + 1) fall between the same boundaries.
_LENGTH_BOUNDARIES = [8, 10, 12, 14, 17, 21]


def make_batches(
    arrays: CaptionArrays,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    mirror_probability: float = 0.0,
    epochs: tuple[int, int] = (0, 1),
):
    """tf.data pipeline of ((features, inputs), targets, weights), weights = targets != <pad>,
    for the epochs first..last-1 of `epochs`, `count_batches` batches each.

    An epoch's caption order (with `shuffle`) and mirror draws come from (seed, epoch) alone, so
    a run resumed at epoch k sees the batches an uninterrupted run saw, and no shuffle buffer
    grows with the dataset. With `mirror_probability` > 0 (and `arrays.mirrored`), each caption
    is paired with its photo's mirrored features instead with that probability.
    """
    import tensorflow as tf

    count = len(arrays.inputs)
    columns = [tf.constant(a) for a in (arrays.image_rows, arrays.inputs, arrays.targets)]
    lengths = tf.constant(arrays.lengths)
    images = len(arrays.features)
    lookup = _feature_lookup(arrays, mirror_probability > 0)

    def one_epoch(epoch):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.range(count)
        if shuffle:
            order = tf.argsort(tf.random.stateless_uniform([count], epoch_seed))
        rows, x, y = (tf.gather(column, order) for column in columns)
        if mirror_probability > 0:  # rows images.. of the lookup are the mirrored photos
            flip = tf.random.stateless_uniform([count], epoch_seed + [1, 0]) < mirror_probability
            rows = tf.where(flip, rows + images, rows)
        data = tf.data.Dataset.from_tensor_slices((rows, x, y, tf.gather(lengths, order)))
        data = data.map(lambda row, x, y, n: (row, x[:n], y[:n]))
        return data.bucket_by_sequence_length(
            lambda row, x, y: tf.shape(x)[0],
            bucket_boundaries=_LENGTH_BOUNDARIES,
            bucket_batch_sizes=[batch_size] * (len(_LENGTH_BOUNDARIES) + 1),
        )

    def to_model(rows, x, y):
        weights = tf.cast(tf.not_equal(y, 0), tf.float32)
        return (lookup(rows), x), y, weights

    data = tf.data.Dataset.range(*epochs).flat_map(one_epoch)
    data = data.map(to_model, num_parallel_calls=tf.data.AUTOTUNE)
    # Known length: Keras shows real progress and does not warn that the data "ran out".
    batches = count_batches(arrays, batch_size) * (epochs[1] - epochs[0])
    data = data.apply(tf.data.experimental.assert_cardinality(batches))
    return data.prefetch(tf.data.AUTOTUNE)


def _feature_lookup(arrays: CaptionArrays, with_mirrored: bool):
    """rows (B,) -> features (B, D): from a constant when the features are in memory, else read
    from the cache for each batch (`FeatureRows`: a cache larger than RAM streams from disk).
    Rows from len(arrays.features) on are the mirrored photos'."""
    import tensorflow as tf

    tables = [arrays.features] + ([arrays.mirrored] if with_mirrored else [])
    if all(isinstance(table, np.ndarray) for table in tables):
        constant = tf.constant(np.concatenate(tables) if with_mirrored else tables[0])
        return lambda rows: tf.gather(constant, rows)
    images, shape = len(arrays.features), arrays.features.shape

    def take(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), shape[1]), arrays.features.dtype)
        plain = rows < images
        out[plain] = tables[0][rows[plain]]
        if not plain.all():
            out[~plain] = tables[1][rows[~plain] - images]
        return out

    def lookup(rows):
        features = tf.numpy_function(take, [rows], tf.as_dtype(arrays.features.dtype), False)
        return tf.ensure_shape(features, [None, shape[1]])

    return lookup


def count_batches(arrays: CaptionArrays, batch_size: int) -> int:
    """Batches per epoch: each length bucket ends with its own partial batch."""
    buckets = np.digitize(arrays.lengths, _LENGTH_BOUNDARIES)
    return int(sum(-(-count // batch_size) for count in np.bincount(buckets)))


def smoothed_cross_entropy(label_smoothing: float):
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

    return SmoothedSparseCrossEntropy(reduction="mean_with_sample_weight", name="smoothed_xent")


def compile_decoder(model, config: TrainConfig) -> None:
    """Adam with gradient clipping; masked sparse cross-entropy on logits; masked accuracy."""
    import keras

    optimizer = keras.optimizers.Adam(config.learning_rate, clipnorm=config.clipnorm or None)
    if config.label_smoothing:
        loss = smoothed_cross_entropy(config.label_smoothing)
    else:  # mean_with_sample_weight: the mean over real words, not over padding too.
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        )
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


def _callbacks(recorder: RunRecorder, config: TrainConfig, dev_scores):
    """Dev scores into the logs, TensorBoard, the LR schedule, then the run recorder
    (checkpoints, history, early stopping) once the logs are complete."""
    import keras

    class DevScores(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            scores = dev_scores()  # into logs in place: the callbacks after this one see them
            logs["val_bleu4"], logs["val_cider_d"] = scores["BLEU-4"], scores["CIDEr-D"]

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = {**logs, "learning_rate": float(self.model.optimizer.learning_rate)}
            if recorder.record(self.model, epoch + 1, logs):
                self.model.stop_training = True

    return [
        DevScores(),
        keras.callbacks.TensorBoard(str(recorder.run_dir / TENSORBOARD_DIR)),
        keras.callbacks.ReduceLROnPlateau(
            "val_loss",
            factor=config.lr_factor,
            patience=config.lr_patience,
            min_lr=config.min_learning_rate,
        ),
        Record(),
    ]


@dataclass
class _Prepared:
    """What training needs from the dataset and the cache, read and checked before TensorFlow
    starts."""

    dataset: Dataset
    vocabulary: Vocabulary
    encoder: EncoderInfo
    train: CaptionArrays
    dev: CaptionArrays


def _prepare(data_root, features_path, config: Config, mirrored_features_path) -> _Prepared:
    dataset = load_dataset(data_root)
    cache = load_feature_cache(features_path)
    # The encoder asked for, not a cache of mirrored photos, grids exactly when attending.
    cache.check_encoder(features_path, config.encoder.name, grid=config.model.needs_grid)
    text = config.text
    train_captions = references(dataset, dataset.splits["train"])
    vocabulary = build_vocabulary((c for refs in train_captions for c in refs), text.min_word_count)
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


def _fit(model, prepared: _Prepared, config: Config, recorder: RunRecorder, progress: bool):
    dev = prepared.dev
    dev_scores = dev_scores_function(
        model,
        dev,
        references(prepared.dataset, dev.names),
        prepared.vocabulary,
        config.text.max_caption_words,
    )
    settings = config.train
    model.fit(
        make_batches(
            prepared.train,
            settings.batch_size,
            True,
            settings.seed,
            settings.mirror_probability,
            epochs=(0, settings.epochs),
        ),
        steps_per_epoch=count_batches(prepared.train, settings.batch_size),
        validation_data=make_batches(dev, settings.batch_size, False),
        epochs=settings.epochs,
        shuffle=False,  # tf.data shuffles (seeded); Keras cannot shuffle a Dataset anyway
        callbacks=_callbacks(recorder, settings, dev_scores),
        verbose=1 if progress else 0,
    )


def train(
    data_root: str | Path,
    features_path: str | Path,
    run_dir: str | Path,
    config: Config,
    progress: bool = True,
    mirrored_features_path: str | Path | None = None,
) -> TrainSummary:
    """Trains a decoder on the dataset's train split, validating on dev, into `run_dir`.

    Args:
        data_root: dataset folder (any layout, see captioner.data).
        features_path: the cache written by `extract` for this dataset, by config.encoder.
        run_dir: created if needed; receives the model, vocabulary, config and history.
        config: the effective configuration (saved into the run directory).
        progress: show Keras' per-epoch progress bar.
        mirrored_features_path: the cache of `extract --mirror`, used when
            train.mirror_probability > 0 [default: next to `features_path`'s default].
    """
    start = time.perf_counter()
    prepared = _prepare(data_root, features_path, config, mirrored_features_path)
    recorder = RunRecorder(run_dir, config.train.select_by, config.train.early_stopping_patience)
    recorder.start(
        config,
        prepared.encoder,
        prepared.vocabulary,
        data=str(Path(data_root).resolve()),
        features=str(Path(features_path).resolve()),
    )

    import keras  # only now: bad input above fails without TensorFlow's start-up time

    from captioner.model import build_decoder

    seed_everything(config.train.seed)
    keras.mixed_precision.set_global_policy(config.train.precision)
    try:
        encoder = prepared.encoder
        model = build_decoder(
            config.model, len(prepared.vocabulary), encoder.feature_dim, encoder.cells
        )
        compile_decoder(model, config.train)
        _fit(model, prepared, config, recorder, progress)
    finally:  # the policy is global: leave the process as it was for decoding
        keras.mixed_precision.set_global_policy("float32")
    best = recorder.best_logs
    return TrainSummary(
        recorder.run_dir,
        len(recorder.history),
        recorder.best_epoch,
        best["val_loss"],
        best["val_bleu4"],
        len(prepared.vocabulary),
        len(prepared.train.inputs),
        time.perf_counter() - start,
    )
