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

from captioner.config import Config, TrainConfig
from captioner.data import Dataset, load_dataset
from captioner.errors import CacheError, DataError
from captioner.features import FeatureCache, load_feature_cache
from captioner.text import Vocabulary, build_vocabulary, clean_caption, teacher_forcing_arrays

# train.select_by -> which way is better, for the checkpoint, early stopping and the summary.
_SELECT_MODE = {"val_loss": "min", "val_bleu4": "max"}

# Batches hold captions whose lengths (words + 1) fall between the same boundaries.
_LENGTH_BOUNDARIES = [8, 10, 12, 14, 17, 21]


@dataclass
class CaptionArrays:
    """One split as arrays: features once per image, captions as padded ids."""

    names: list[str]  # image names; row i of `features`
    features: np.ndarray  # (images, D) float32 (float16 for grids)
    image_rows: np.ndarray  # (captions,) int32: which feature row each caption belongs to
    inputs: np.ndarray  # (captions, max_words + 1) int32: <start> w1 .. wn <pad> ..
    targets: np.ndarray  # (captions, max_words + 1) int32: w1 .. wn <end> <pad> ..
    mirrored: np.ndarray | None = None  # (images, D): features of the photos flipped, if any

    @property
    def lengths(self) -> np.ndarray:
        return (self.targets != 0).sum(axis=1).astype(np.int32)


def caption_arrays(
    dataset: Dataset, split: str, cache: FeatureCache, vocabulary: Vocabulary, max_words: int
) -> CaptionArrays:
    """Builds the arrays of one split; every image must have its features in the cache."""
    names = dataset.splits[split]
    if not names:
        raise DataError(f"{dataset.root}: the {split} split has no images with captions")
    missing = [name for name in names if name not in cache.features]
    if missing:
        raise CacheError(
            f"{len(missing)} {split} images have no features in the cache (e.g. {missing[0]}): "
            "run `captioner extract` on this dataset with the same encoder"
        )
    rows, captions = [], []
    for row, name in enumerate(names):
        for caption in dataset.captions[name]:
            rows.append(row)
            captions.append(vocabulary.encode(clean_caption(caption)))
    inputs, targets = teacher_forcing_arrays(captions, max_words)
    return CaptionArrays(names, cache.matrix(names), np.asarray(rows, np.int32), inputs, targets)


def mirrored_features(
    data_root, cache: FeatureCache, names: list[str], path: str | Path | None
) -> np.ndarray:
    """Features of the mirrored photos of `names`, from the cache `extract --mirror` wrote with
    the same encoder and weights as `cache`."""
    from captioner.features import default_cache_path

    path = path or default_cache_path(data_root, cache.encoder, True, cache.cells > 0)
    mirrored = load_feature_cache(path)
    mirrored.check_encoder(path, cache.encoder, cache.weights, mirrored=True, grid=cache.cells > 0)
    missing = [name for name in names if name not in mirrored.features]
    if missing:
        raise CacheError(
            f"{path}: {len(missing)} train images have no mirrored features (e.g. "
            f"{missing[0]}): run `captioner extract --mirror` on this dataset"
        )
    return mirrored.matrix(names)


def make_batches(
    arrays: CaptionArrays,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    mirror_probability: float = 0.0,
):
    """tf.data pipeline of ((features, inputs), targets, weights), weights = targets != <pad>.

    With `mirror_probability` > 0 (and `arrays.mirrored`), each caption is paired with its
    photo's mirrored features instead with that probability, drawn anew every epoch (seeded).
    """
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(
        (arrays.image_rows, arrays.inputs, arrays.targets, arrays.lengths)
    )
    if mirror_probability > 0:
        # Rows N.. of the feature table are the mirrored photos: row r becomes r + N.
        features = tf.constant(np.concatenate([arrays.features, arrays.mirrored]))
        images = len(arrays.features)
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def maybe_mirror(example, draw):
            row, x, y, n = example
            mirrored = tf.cast(draw % 1_000_000, tf.float32) < mirror_probability * 1e6
            return tf.where(mirrored, row + images, row), x, y, n

        data = tf.data.Dataset.zip((data, draws)).map(maybe_mirror)
    else:
        features = tf.constant(arrays.features)
    if shuffle:
        data = data.shuffle(len(arrays.inputs), seed=seed, reshuffle_each_iteration=True)
    data = data.map(lambda row, x, y, n: (row, x[:n], y[:n]))
    data = data.bucket_by_sequence_length(
        lambda row, x, y: tf.shape(x)[0],
        bucket_boundaries=_LENGTH_BOUNDARIES,
        bucket_batch_sizes=[batch_size] * (len(_LENGTH_BOUNDARIES) + 1),
    )

    def to_model(rows, x, y):
        weights = tf.cast(tf.not_equal(y, 0), tf.float32)
        return (tf.gather(features, rows), x), y, weights

    data = data.map(to_model, num_parallel_calls=tf.data.AUTOTUNE)
    # Known length: Keras shows real progress and does not warn that the data "ran out".
    data = data.apply(tf.data.experimental.assert_cardinality(count_batches(arrays, batch_size)))
    return data.prefetch(tf.data.AUTOTUNE)


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


def dev_scores_function(model, arrays: CaptionArrays, dataset: Dataset, vocabulary, max_words):
    """Returns f() -> {"BLEU-4", "CIDEr-D"} of greedy captions for the dev images, with the
    model's current weights (the decoder is compiled once and reads the live variables)."""
    from captioner.config import DecodeConfig
    from captioner.decode import make_decoder
    from captioner.metrics import cider_d, corpus_bleu_scores
    from captioner.model import DecoderSteps

    decode = make_decoder(
        DecoderSteps(model), len(vocabulary), DecodeConfig(beam_size=1, max_length=max_words)
    )
    references = [[clean_caption(c) for c in dataset.captions[n]] for n in arrays.names]

    def scores() -> dict[str, float]:
        hypotheses = [vocabulary.decode(row) for row in decode(arrays.features)]
        bleu4 = corpus_bleu_scores(references, hypotheses)["BLEU-4"]
        return {"BLEU-4": bleu4, "CIDEr-D": cider_d(references, hypotheses)[0]}

    return scores


def _run_callbacks(run_dir: Path, config: TrainConfig, dev_scores):
    """Dev BLEU, checkpoints (best and last, atomically), LR schedule, early stopping, logs."""
    import keras

    from captioner.report import plot_history
    from captioner.rundir import HISTORY_FILE, LAST_FILE, MODEL_FILE, save_keras_model, write_json

    monitor, mode = config.select_by, _SELECT_MODE[config.select_by]

    class DevBleu(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            scores = dev_scores()  # into logs in place: the callbacks after this one see them
            logs["val_bleu4"], logs["val_cider_d"] = scores["BLEU-4"], scores["CIDEr-D"]

    class RunDirectoryCheckpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = None
            self.history: list[dict[str, float]] = []

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)
            self.history.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
            save_keras_model(self.model, run_dir / LAST_FILE)
            score = logs[monitor]
            if self.best is None or (score < self.best if mode == "min" else score > self.best):
                self.best = score
                save_keras_model(self.model, run_dir / MODEL_FILE)
            write_json(run_dir / HISTORY_FILE, self.history)
            plot_history(self.history, run_dir / "loss.png")

    callbacks = [
        DevBleu(),
        keras.callbacks.TensorBoard(str(run_dir / "logs")),
        keras.callbacks.ReduceLROnPlateau(
            "val_loss",
            factor=config.lr_factor,
            patience=config.lr_patience,
            min_lr=config.min_learning_rate,
        ),
        RunDirectoryCheckpoint(),
        keras.callbacks.CSVLogger(str(run_dir / "training.csv")),
    ]
    if config.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor, patience=config.early_stopping_patience, mode=mode
            )
        )
    return callbacks


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
        data_root: dataset folder (either layout).
        features_path: the cache written by `extract` for this dataset.
        run_dir: created if needed; receives the model, vocabulary, config and history.
        config: the effective configuration (saved into the run directory).
        progress: show Keras' per-epoch progress bar.
        mirrored_features_path: the cache of `extract --mirror`, used when
            train.mirror_probability > 0 [default: next to `features_path`'s default].
    """
    from captioner.rundir import EncoderInfo, save_run_info

    start = time.perf_counter()
    dataset = load_dataset(data_root)
    cache = load_feature_cache(features_path)
    # Not a cache of mirrored photos; grids exactly when the decoder attends over them.
    cache.check_encoder(features_path, cache.encoder, grid=config.model.decoder == "attention")
    text = config.text
    train_captions = [
        clean_caption(c) for n in dataset.splits["train"] for c in dataset.captions[n]
    ]
    vocabulary = build_vocabulary(train_captions, text.min_word_count)
    train_arrays = caption_arrays(dataset, "train", cache, vocabulary, text.max_caption_words)
    dev_arrays = caption_arrays(dataset, "dev", cache, vocabulary, text.max_caption_words)
    if config.train.mirror_probability > 0:
        train_arrays.mirrored = mirrored_features(
            data_root, cache, train_arrays.names, mirrored_features_path
        )

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    vocabulary.save(run_dir / "vocabulary.json")
    encoder = EncoderInfo(
        cache.encoder, cache.input_size, cache.feature_dim, cache.weights, cache.cells
    )
    # The arrays hold copies of the features they need: a grid cache (1.3 GB for Flickr8k)
    # need not stay in memory through training.
    del cache
    save_run_info(
        run_dir,
        config,
        encoder,
        data=str(Path(data_root).resolve()),
        features=str(Path(features_path).resolve()),
        vocabulary_size=len(vocabulary),
    )

    import keras  # only now: bad input above fails without TensorFlow's start-up time
    import tensorflow as tf

    from captioner.model import build_decoder

    keras.utils.set_random_seed(config.train.seed)
    tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(config.train.precision)
    try:
        model = build_decoder(config.model, len(vocabulary), encoder.feature_dim, encoder.cells)
        compile_decoder(model, config.train)
        dev_scores = dev_scores_function(
            model, dev_arrays, dataset, vocabulary, text.max_caption_words
        )
        history = model.fit(
            make_batches(
                train_arrays,
                config.train.batch_size,
                True,
                config.train.seed,
                config.train.mirror_probability,
            ),
            validation_data=make_batches(dev_arrays, config.train.batch_size, False),
            epochs=config.train.epochs,
            shuffle=False,  # tf.data shuffles (seeded); Keras cannot shuffle a Dataset anyway
            callbacks=_run_callbacks(run_dir, config.train, dev_scores),
            verbose=1 if progress else 0,
        )
    finally:  # the policy is global: leave the process as it was for decoding
        keras.mixed_precision.set_global_policy("float32")
    logs = history.history
    scores = logs[config.train.select_by]
    best = int(
        np.argmin(scores) if _SELECT_MODE[config.train.select_by] == "min" else np.argmax(scores)
    )
    return TrainSummary(
        run_dir,
        len(scores),
        best + 1,
        float(logs["val_loss"][best]),
        float(logs["val_bleu4"][best]),
        len(vocabulary),
        len(train_arrays.inputs),
        time.perf_counter() - start,
    )
