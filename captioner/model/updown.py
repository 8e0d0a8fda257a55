"""Up-Down (Anderson et al. 2018, "Bottom-up and top-down attention"): two LSTMs per word over
the encoder's grid of cells.

    attention LSTM   [h_language(t-1); mean cell; word(t)]     -> h_attention(t)
    attention        h_attention(t) scores the cells            -> context(t), weights(t)
    language LSTM    [context(t); h_attention(t)]               -> h_language(t) -> next word

Unlike captioner.model.attention's decoder (context read after the LSTM, never fed back), the
attended context enters the language LSTM, and the language state chooses the next cells
through the attention LSTM: the loop cannot run as one fused LSTM over the caption. Teacher
forcing therefore scans `UpDownCore.step` over the caption inside the compiled graph (no
Python per word), and decoding calls the same `step` one word at a time: the two cannot drift.

Its own module because the layer must be registered with Keras before a model that uses it is
loaded in safe mode.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from captioner.model.attention import RegionAttention


@keras.saving.register_keras_serializable(package="captioner")
class UpDownCore(layers.Layer):
    """[words (B, T, E), keys K r (B, P, A), regions r (B, P, R)] -> h_language (B, T, U).

    Both LSTMs start from zeros, as in the paper: the mean cell, given at every word, tells the
    attention LSTM what the photo is from the first word on.
    """

    def __init__(self, attention_units: int, language_units: int, attention_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.attention_units, self.language_units = attention_units, language_units
        self.attention_dim = attention_dim
        self.attention_lstm = layers.LSTMCell(attention_units, name="attention_lstm")
        self.attention = RegionAttention(attention_dim, name="attention")
        self.language_lstm = layers.LSTMCell(language_units, name="language_lstm")

    def build(self, input_shape):
        words_shape, keys_shape, regions_shape = input_shape
        batch, width = words_shape[0], words_shape[-1]
        region_width = regions_shape[-1]
        self.attention_lstm.build((batch, self.language_units + region_width + width))
        self.attention.build(((batch, None, self.attention_units), keys_shape, regions_shape))
        self.language_lstm.build((batch, region_width + self.attention_units))

    def initial_state(self, regions):
        """Zeros: [h_attention, c_attention, h_language, c_language], (B, units) each."""
        batch = ops.shape(regions)[0]
        zeros = [ops.zeros((batch, units), dtype=self.compute_dtype)
                 for units in (self.attention_units, self.language_units)]  # fmt: skip
        return [zeros[0], zeros[0], zeros[1], zeros[1]]

    def step(self, word, state, keys, regions, mean_region):
        """One word (B, E) -> h_language (B, U), the new state, the weights (B, P) over cells."""
        h_attention, c_attention, h_language, c_language = state
        attention_input = ops.concatenate([h_language, mean_region, word], axis=-1)
        h_attention, (_, c_attention) = self.attention_lstm(
            attention_input, [h_attention, c_attention]
        )
        context, weights = self.attention.attend(h_attention[:, None], keys, regions)
        language_input = ops.concatenate([context[:, 0], h_attention], axis=-1)
        h_language, (_, c_language) = self.language_lstm(language_input, [h_language, c_language])
        return h_language, [h_attention, c_attention, h_language, c_language], weights[:, 0]

    def call(self, inputs):
        words, keys, regions = inputs
        mean_region = ops.mean(regions, axis=1)

        def one_word(state, word):
            _, state, _ = self.step(word, state, keys, regions, mean_region)
            # Keras' scan on TensorFlow collects outputs shaped like the state: all of it, of
            # which h_language (the third) is the output.
            return state, state

        words = ops.transpose(words, (1, 0, 2))  # time first: scan runs over the first axis
        _, states = ops.scan(one_word, self.initial_state(regions), words)
        return ops.transpose(states[2], (1, 0, 2))  # (T, B, U) -> (B, T, U)

    def compute_output_shape(self, input_shape):
        words_shape = input_shape[0]
        return (*words_shape[:2], self.language_units)

    def get_config(self):
        return {
            **super().get_config(),
            "attention_units": self.attention_units,
            "language_units": self.language_units,
            "attention_dim": self.attention_dim,
        }
