"""Additive (Bahdanau) attention over the image's feature grid, read after the LSTM.

At every word the LSTM's output h_t scores each grid cell r_i,
    e_ti = w . tanh(K r_i + Q h_t),    alpha_t = softmax_i(e_t),    context_t = sum_i alpha_ti r_i,
and the next word is predicted from [h_t; context_t] (spatial attention as in Lu et al. 2017,
"Knowing when to look", without the sentinel). Because the context does not feed back into the
LSTM, teacher forcing runs the fused LSTM over the whole caption and attends for all words at
once, instead of stepping a custom cell word by word as Show, Attend and Tell does.

Its own module because the layer class must be registered with Keras (which imports
TensorFlow) before a model that uses it is loaded in safe mode.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="captioner")
class RegionAttention(layers.Layer):
    """[h (B, T, U) or (B, U), keys K r (B, P, A), regions r (B, P, R)] -> context (B, [T,] R)."""

    def __init__(self, size: int, first_written: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        # Not part of the config: True attends as first written (einsum, sliced axes), to
        # compare against (tests/test_grid_speed.py, scripts/bench_grid_decoders.py).
        self.first_written = first_written
        self.query = layers.Dense(size, name="query")
        self.score = layers.Dense(1, name="score")

    def build(self, input_shape):
        h_shape, keys_shape, _ = input_shape
        self.query.build(h_shape)
        self.score.build((*keys_shape[:-1], self.size))

    def call(self, inputs):
        h, keys, regions = inputs
        one_step = len(h.shape) == 2  # decoding: one word for every row
        context, _ = self.attend(h[:, None] if one_step else h, keys, regions)
        return context[:, 0] if one_step else context

    def attend(self, h, keys, regions):
        """h (B, T, U) -> context (B, T, R) and the weights (B, T, P) over the cells: what
        `call` computes, with the weights that decoding shows (captioner.model.decoder).

        The same sums as first written (`attend_as_first_written`) in cheaper operations:
        axes added and dropped by reshaping, whose gradient is a reshape too, not a copy into
        zeros; the context as a batched matrix product, not an einsum (at one word, inside
        Up-Down's loop, TensorFlow's einsum and its gradient took twice as long)."""
        if self.first_written:
            return self.attend_as_first_written(h, keys, regions)
        query = ops.expand_dims(self.query(h), 2)  # (B, T, 1, A)
        energy = ops.tanh(ops.expand_dims(keys, 1) + query)  # (B, T, P, A)
        weights = ops.softmax(ops.squeeze(self.score(energy), -1), axis=-1)  # (B, T, P)
        return ops.matmul(weights, regions), weights

    def attend_as_first_written(self, h, keys, regions):
        """`attend` as first written."""
        energy = ops.tanh(keys[:, None] + self.query(h)[:, :, None])  # (B, T, P, A)
        weights = ops.softmax(self.score(energy)[..., 0], axis=-1)  # (B, T, P)
        return ops.einsum("btp,bpr->btr", weights, regions), weights

    def get_config(self):
        return {**super().get_config(), "size": self.size}
