"""`captioner finetune-encoder`: train the encoder with the decoder, from the photos' pixels.

Every other stage keeps the CNN frozen and reads its features from a cache. Starting from a
run trained that way (the decoder has learnt), this one reads the train photos through the same
reading as `extract` (captioner.data.images), augments them (a random square crop of at least
crop_scale of the side, resized back, flipped left to right half of the time), and trains
encoder and decoder together by teacher forcing: each photo is encoded once per step and its
features start every one of its captions. The encoder has its own, lower learning rate. Every
BatchNormalization layer stays frozen (statistics, scale and offset): the encoder's, which a
batch of 16 photos would estimate badly, and the decoder's image normalization, which would
chase features that move every step. Each epoch ends with the dev photos encoded by the encoder
as it is then: teacher-forced dev loss, and greedy captions scored. The run directory keeps
the best epoch by dev loss (or greedy dev BLEU-4: select_by; epoch 0, the starting point,
included): its decoder as model.keras and its encoder as encoder.npz.

Every decoder works so: the pooled LSTM's encoder outputs the pooled vector, a grid decoder's
(attention, updown, transformer) its grid, flattened cell by cell as `extract --grid` stores it,
the gradient flowing back through every cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from captioner.config import EncoderFinetuneConfig
from captioner.data.datasets import Dataset
from captioner.data.text import PAD_ID
from captioner.errors import ConfigError
from captioner.features.arrays import caption_rows, references
from captioner.model.rundir import ENCODER_FILE, Run, save_weights_npz
from captioner.training.checkpoints import RunRecorder, is_better
from captioner.training.finetuning import FinetuneSummary, read_source, run_epochs, start_run
from captioner.training.validation import selection_decoding, selection_scores_function


@dataclass
class PhotoCaptions:
    """A split as photos: where each is, and its captions as teacher-forcing rows."""

    names: list[str]
    paths: list[Path]
    image_rows: np.ndarray  # (captions,) which photo each caption belongs to
    inputs: np.ndarray  # (captions, max_words + 1)
    targets: np.ndarray
    first: np.ndarray  # (photos,) each photo's first caption row (captions are photo by photo)
    counts: np.ndarray  # (photos,) how many captions it has

    def captions_of(self, photos: np.ndarray):
        """The captions of `photos` (indices): which of `photos` each belongs to, and their
        inputs and targets cut to the longest caption among them."""
        rows = np.concatenate([np.arange(self.first[p], self.first[p] + self.counts[p])
                               for p in photos])  # fmt: skip
        owners = np.repeat(np.arange(len(photos), dtype=np.int32), self.counts[photos])
        length = max(1, int((self.targets[rows] != PAD_ID).sum(axis=1).max()))
        return owners, self.inputs[rows, :length], self.targets[rows, :length]


def photo_captions(dataset: Dataset, split: str, run: Run) -> PhotoCaptions:
    names = dataset.splits[split]
    if not names:
        raise ConfigError(f"{dataset.root}: the {split} split has no images with captions")
    rows, inputs, targets = caption_rows(
        dataset, names, run.vocabulary, run.config.text.max_caption_words
    )
    counts = np.bincount(rows, minlength=len(names)).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    paths = [dataset.image_path(name) for name in names]
    return PhotoCaptions(names, paths, rows, inputs, targets, first, counts)


def augment(images, seed, crop_scale: float):
    """Random square crops of at least `crop_scale` of the side, resized back to the input size,
    half of them flipped left to right (a box whose x1 > x2 samples the crop mirrored). `seed`
    (2,) int32 makes the draw reproducible. Graph code."""
    import tensorflow as tf

    count, size = tf.shape(images)[0], tf.shape(images)[1]
    side_seed, corner_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    side = tf.random.stateless_uniform([count], side_seed, crop_scale, 1.0)
    corner = tf.random.stateless_uniform([count, 2], corner_seed) * (1.0 - side)[:, None]
    y1, x1 = corner[:, 0], corner[:, 1]
    y2, x2 = y1 + side, x1 + side
    flip = tf.random.stateless_uniform([count], flip_seed) < 0.5
    boxes = tf.stack([y1, tf.where(flip, x2, x1), y2, tf.where(flip, x1, x2)], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(count), [size, size])


def freeze_batch_norm(model) -> None:
    """The model's BatchNormalization layers keep their statistics, scale and offset (the
    encoder's from ImageNet, the decoder's from its training): trainable False also makes
    Keras run them in inference mode."""
    import keras

    def layers(model):
        for layer in model.layers:
            yield layer
            yield from layers(layer) if hasattr(layer, "layers") else ()

    for layer in layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def make_training_step(encoder, decoder, config: EncoderFinetuneConfig):
    """Returns a compiled f(images uint8 (P, S, S, 3), owners (N,), inputs (N, T), targets (N, T),
    seed (2,)) -> loss: one step of both models on the mean cross-entropy over real words.

    Adam for each model at its own rate; the gradients are clipped by their global norm over
    both. With encoder_learning_rate 0 the encoder is left out of the gradient (the frozen
    baseline, augmented the same way)."""
    import keras
    import tensorflow as tf

    trains_encoder = config.encoder_learning_rate > 0
    groups = [(decoder.trainable_variables, config.learning_rate)]
    if trains_encoder:
        groups.append((encoder.trainable_variables, config.encoder_learning_rate))
    optimizers = [keras.optimizers.Adam(rate) for _, rate in groups]
    for optimizer, (variables, _) in zip(optimizers, groups):
        optimizer.build(variables)
    variables = [v for group, _ in groups for v in group]

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([2], tf.int32),
        ]
    )
    def step(images, owners, inputs, targets, seed):
        pixels = tf.cast(images, tf.float32)
        if config.augment:
            pixels = augment(pixels, seed, config.crop_scale)
        with tf.GradientTape() as tape:
            # A grid encoder's (P, rows, columns, C) as the grid decoders read it: flattened.
            features = tf.reshape(encoder(pixels, training=False), [tf.shape(pixels)[0], -1])
            logits = decoder([tf.gather(features, owners), inputs], training=True)
            words = tf.cast(tf.not_equal(targets, PAD_ID), tf.float32)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
            loss = tf.reduce_sum(loss * words) / tf.maximum(tf.reduce_sum(words), 1.0)
        gradients = tape.gradient(loss, variables)
        if config.clipnorm:
            gradients, _ = tf.clip_by_global_norm(gradients, config.clipnorm)
        start = 0
        for optimizer, (group, _) in zip(optimizers, groups):
            optimizer.apply_gradients(zip(gradients[start : start + len(group)], group))
            start += len(group)
        return loss

    return step


def dev_loss(decoder, features: np.ndarray, dev: PhotoCaptions, photos: int = 64) -> float:
    """The teacher-forced cross-entropy per real word of the dev captions, from `features` of
    the dev photos (no dropout, BatchNorm's statistics): the training loss's dev twin."""
    import tensorflow as tf

    total, words = 0.0, 0.0
    for start in range(0, len(dev.names), photos):
        indices = np.arange(start, min(start + photos, len(dev.names)))
        owners, inputs, targets = dev.captions_of(indices)
        logits = decoder([features[indices][owners], inputs], training=False)
        mask = (targets != PAD_ID).astype(np.float32)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits).numpy()
        total, words = total + float((loss * mask).sum()), words + float(mask.sum())
    return total / max(words, 1.0)


class _EpochEnd:
    """What follows each epoch: the dev photos encoded by the encoder as it is now, their
    teacher-forced loss and greedy captions scored, then the run directory (encoder.npz, then
    model.keras, when the selection score improved). Called, returns True when training should
    stop."""

    def __init__(self, recorder: RunRecorder, encoder, decoder, source: Run, dev, references):
        from captioner.features.encoders import make_encode_function

        self.recorder, self.encoder, self.decoder, self.dev = recorder, encoder, decoder, dev
        self.size, self.batch_size = source.encoder.input_size, source.config.encoder.batch_size
        self.encode = make_encode_function(encoder, self.batch_size)
        self.scores = selection_scores_function(decoder, None, references, source.vocabulary,
                                                source.config.text.max_caption_words,
                                                recorder.monitor, source.decoding())  # fmt: skip

    def __call__(self, epoch: int, logs: dict[str, float]) -> bool:
        from captioner.features.encoders import encode_files

        features = encode_files(self.encode, self.dev.paths, self.size, self.batch_size)
        logs = {**logs, "val_loss": dev_loss(self.decoder, features, self.dev),
                **self.scores(features)}  # fmt: skip
        recorder, monitor = self.recorder, self.recorder.monitor
        if is_better(logs[monitor], recorder.best, monitor):  # first: a pair with model.keras
            save_weights_npz(self.encoder, recorder.run_dir, ENCODER_FILE, np.float32)
        return recorder.record(self.decoder, epoch, logs)


class TrainingEpochs:
    """The training photos, epoch by epoch: each epoch's order comes from (seed, epoch), photos
    are read on threads while the models run, and unreadable ones are skipped and counted."""

    def __init__(self, train: PhotoCaptions, step, size: int, config: EncoderFinetuneConfig):
        self.train, self.step, self.size, self.config = train, step, size, config
        self.unreadable: set[str] = set()
        self.photos, self.seconds = 0, 0.0

    def run(self, epoch: int, progress_bar) -> dict[str, float]:
        from captioner.data.images import batches_of_images

        config, train = self.config, self.train
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train.names))
        batches = batches_of_images([train.paths[i] for i in order], self.size, config.batch_size)
        start, total, photos = time.perf_counter(), 0.0, 0
        for number, (indices, images, errors) in enumerate(progress_bar(batches)):
            self.unreadable.update(train.names[order[i]] for i in errors)
            if not len(indices):
                continue
            owners, inputs, targets = train.captions_of(order[indices])
            seed = np.array([config.seed, epoch * 1_000_003 + number], np.int32)
            total += float(self.step(images, owners, inputs, targets, seed)) * len(indices)
            photos += len(indices)
        self.photos += photos
        self.seconds += time.perf_counter() - start
        return {"loss": total / max(photos, 1)}


def finetune_encoder(
    source_run: str | Path | None,
    run_dir: str | Path,
    config: EncoderFinetuneConfig,
    data_root: str | Path | None = None,
    progress: bool = True,
) -> FinetuneSummary:
    """Trains a run's encoder and decoder together from the photos into a new run directory.

    Args:
        source_run: a run directory of any decoder, pooled or grid (trained on cached
            features, or fine-tuned before); None: the shipped model's first run.
        run_dir: the new run (created); `caption`, `evaluate`, `serve` and the Python API use
            it, and its own encoder, like any other.
        config: the [encoder_finetune] settings.
        data_root: the dataset's folder, with its photos [default: the source run's].
        progress: show a progress bar over each epoch's batches.

    Returns: the summary, with `extra` photos_per_second (training photos per second,
        augmentation and both models) and unreadable (train photos skipped).
    """
    started = time.perf_counter()
    source = read_source(source_run, run_dir, data_root)
    run, dataset = source.run, source.dataset
    train, dev = photo_captions(dataset, "train", run), photo_captions(dataset, "dev", run)
    recorder = start_run(run, source.info, run_dir, config, "encoder_finetune", config.select_by,
                         encoder=replace(run.encoder, finetuned=True))  # fmt: skip
    with recorder:  # holds the new run directory's lock until the last epoch is written
        encoder, decoder = run.load_encoder(), run.load_model()
        freeze_batch_norm(encoder)
        # The decoder's too: its image normalization would otherwise chase features that move
        # every step, from batches of a few photos, and decode the dev photos with stale
        # statistics.
        freeze_batch_norm(decoder)
        step = make_training_step(encoder, decoder, config)
        epochs = TrainingEpochs(train, step, run.encoder.input_size, config)
        dev_references = references(dataset, dev.names, run.vocabulary.tokenizer)
        end_epoch = _EpochEnd(recorder, encoder, decoder, run, dev, dev_references)
        batches = -(-len(train.names) // config.batch_size)
        summary = run_epochs(recorder, config.epochs, epochs.run, end_epoch, progress, batches,
                             started)  # fmt: skip
    summary.extra = {"photos_per_second": epochs.photos / max(epochs.seconds, 1e-9),
                     "unreadable": len(epochs.unreadable),
                     "decoding": selection_decoding(config.select_by, run.decoding())}  # fmt: skip
    return summary
