"""The training pipeline: a split's captions as tf.data batches of ((features, inputs), targets,
weights), grouped by length, in an order that depends on (seed, epoch) alone."""

from __future__ import annotations

import numpy as np

from captioner.features.arrays import CaptionArrays

# Batches hold captions whose lengths (words + 1) fall between the same boundaries.
_LENGTH_BOUNDARIES = [8, 10, 12, 14, 17, 21]


def make_batches(
    arrays: CaptionArrays,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    mirror_probability: float = 0.0,
    epochs: tuple[int, int] = (0, 1),
    normalize_weights: bool = False,
):
    """tf.data pipeline of ((features, inputs), targets, weights), weights = targets != <pad>,
    for the epochs first..last-1 of `epochs`, `count_batches` batches each.

    An epoch's caption order (with `shuffle`) and mirror draws come from (seed, epoch) alone, so
    a run resumed at epoch k sees the batches an uninterrupted run saw, and no shuffle buffer
    grows with the dataset. With `mirror_probability` > 0 (and `arrays.mirrored`), each caption
    is paired with its photo's mirrored features instead with that probability.

    normalize_weights: divide each batch's word weights by their mean over the whole (global)
    batch, for a "sum_over_batch_size" loss that is then the mean over the batch's real words
    even when a strategy splits the batch across replicas (each replica's own weighted mean
    would weigh the replicas' words unequally).
    """
    import tensorflow as tf

    one_epoch = _epoch_maker(arrays, batch_size, shuffle, seed, mirror_probability)
    lookup = _feature_lookup(arrays, mirror_probability > 0)

    def to_model(rows, x, y):
        weights = tf.cast(tf.not_equal(y, 0), tf.float32)
        if normalize_weights:
            weights /= tf.reduce_mean(weights)
        return (lookup(rows), x), y, weights

    data = tf.data.Dataset.range(*epochs).flat_map(one_epoch)
    data = data.map(to_model, num_parallel_calls=tf.data.AUTOTUNE)
    # Known length: Keras shows real progress and does not warn that the data "ran out".
    batches = count_batches(arrays, batch_size) * (epochs[1] - epochs[0])
    data = data.apply(tf.data.experimental.assert_cardinality(batches))
    # Under a multi-worker strategy each worker takes every N-th batch of this same pipeline
    # (DATA); the default could shard by files, and this data has none.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.prefetch(tf.data.AUTOTUNE).with_options(options)


def _epoch_maker(arrays: CaptionArrays, batch_size: int, shuffle: bool, seed: int,
                 mirror_probability: float):  # fmt: skip
    """epoch (int64 scalar tensor) -> that epoch's batches of (feature row, inputs, targets)."""
    import tensorflow as tf

    count = len(arrays.inputs)
    columns = [tf.constant(a) for a in (arrays.image_rows, arrays.inputs, arrays.targets)]
    lengths = tf.constant(arrays.lengths)
    images = len(arrays.features)

    def one_epoch(epoch):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.range(count)
        if shuffle:
            order = tf.argsort(tf.random.stateless_uniform([count], epoch_seed))
        flip = tf.zeros([count], tf.bool)
        if mirror_probability > 0:  # rows images.. of the lookup are the mirrored photos
            flip = tf.random.stateless_uniform([count], epoch_seed + [1, 0]) < mirror_probability

        def caption(i):  # one caption at a time: no copy of the columns per epoch
            row, x, y = (column[i] for column in columns)
            n = lengths[i]
            return tf.where(flip[i], row + images, row), x[:n], y[:n]

        data = tf.data.Dataset.from_tensor_slices(order).map(caption)
        return data.bucket_by_sequence_length(
            lambda row, x, y: tf.shape(x)[0],
            bucket_boundaries=_LENGTH_BOUNDARIES,
            bucket_batch_sizes=[batch_size] * (len(_LENGTH_BOUNDARIES) + 1),
        )

    return one_epoch


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
