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

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = size
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
        `call` computes, with the weights that decoding shows (captioner.model.decoder)."""
        energy = ops.tanh(keys[:, None] + self.query(h)[:, :, None])  # (B, T, P, A)
        weights = ops.softmax(self.score(energy)[..., 0], axis=-1)  # (B, T, P)
        return ops.einsum("btp,bpr->btr", weights, regions), weights

    def get_config(self):
        return {**super().get_config(), "size": self.size}
