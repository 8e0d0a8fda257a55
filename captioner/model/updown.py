"""Up-Down (Anderson et al. 2018, "Bottom-up and top-down attention"): two LSTMs per word over
the encoder's grid of cells.

    attention LSTM   [h_language(t-1); mean cell; word(t)]     -> h_attention(t)
    attention        h_attention(t) scores the cells            -> context(t), weights(t)
    language LSTM    [context(t); h_attention(t)]               -> h_language(t) -> next word

Unlike captioner.model.attention's decoder (context read after the LSTM, never fed back), the
attended context enters the language LSTM, and the language state chooses the next cells
through the attention LSTM: the loop cannot run as one fused LSTM over the caption. Teacher
forcing therefore scans `UpDownCore.recur` over the caption inside the compiled graph (no
Python per word), and decoding (`step`) calls the same `recur` one word at a time: the two
cannot drift.

What does not depend on the previous word is computed outside that loop, with the LSTMs' own
weights (no new ones: runs trained before load and compute as they did): the attention LSTM's
kernel is split by the rows that multiply h_language, the mean cell and the word, and
    mean cell x its rows + bias        once per caption (`photo_gates`; decoding keeps it in
                                       the state instead of the mean cell),
    word x its rows                    for every word of the caption in one product (teacher
                                       forcing) or for the word at hand (decoding),
leaving inside the loop h_language x its rows + h_attention x the recurrent kernel, and the
language LSTM. The cells' keys (K r) are projected once per caption too, by the model's
"region_keys" layer, outside. Both LSTMs compute their gates from the cells' weights as
keras.layers.LSTMCell does; in teacher forcing, the gradient of each product inside the loop
multiplies by a transpose of its matrix made once before the loop (captioner.model.lstm's
`product_with_transpose`), not by one transposed on the fly at every word. Together: a train
step at 0.7x the CPU time of the code as first written, the same sums to float rounding
(docs/performance.md, "The grid decoders' train step"). `UpDownCore(first_written=True)` runs
teacher forcing as first written (every product inside the loop), to compare against
(tests/test_grid_speed.py, scripts/bench_grid_decoders.py).

Its own module because the layer must be registered with Keras before a model that uses it is
loaded in safe mode.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from captioner.model.attention import RegionAttention
from captioner.model.lstm import lstm_output, product_with_transpose, scan_words


@keras.saving.register_keras_serializable(package="captioner")
class UpDownCore(layers.Layer):
    """[words (B, T, E), keys K r (B, P, A), regions r (B, P, R)] -> h_language (B, T, U).

    Both LSTMs start from zeros, as in the paper: the mean cell, given at every word, tells the
    attention LSTM what the photo is from the first word on.

    first_written: teacher forcing as first written, every product inside the loop (the same
    weights, the same numbers to float rounding; slower); not part of the config.
    """

    def __init__(self, attention_units: int, language_units: int, attention_dim: int,
                 first_written: bool = False, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.attention_units, self.language_units = attention_units, language_units
        self.attention_dim = attention_dim
        self.first_written = first_written
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

    def _cast(self, variable):
        """A weight in the compute dtype (a no-op in float32 or inside Keras' autocast)."""
        return ops.cast(variable, self.compute_dtype)

    def _attention_kernel(self, region_width: int):
        """The attention LSTM's kernel split by what its rows multiply: the (h_language, mean
        cell, word) rows. Whole rows: no copy forward, one concatenation of their gradients."""
        kernel = self._cast(self.attention_lstm.kernel)
        first, second = self.language_units, self.language_units + region_width
        return ops.split(kernel, [first, second], axis=0)

    def photo_gates(self, regions, kernel_rows=None):
        """What the photo adds to the attention LSTM's gates at every word, the same for the
        whole caption: mean cell x its kernel rows + the bias, (B, 4 attention_units).
        kernel_rows: `_attention_kernel()` when the caller has it already."""
        _, mean_rows, _ = kernel_rows or self._attention_kernel(regions.shape[-1])
        mean_region = ops.mean(regions, axis=1)
        return ops.matmul(mean_region, mean_rows) + self._cast(self.attention_lstm.bias)

    def word_gates(self, words, region_width: int, kernel_rows=None):
        """words (B, [T,] E) x the attention LSTM's word rows: (B, [T,] 4 attention_units)."""
        return ops.matmul(words, (kernel_rows or self._attention_kernel(region_width))[2])

    def loop_weights(self, region_width: int, kernel_rows=None, transposed: bool = False):
        """What `recur` multiplies by, taken from the weights once before the loop rather than
        at every word: the attention LSTM's h_language rows and recurrent kernel, the language
        LSTM's kernel and recurrent kernel, each as (matrix, its transpose or None), then the
        language LSTM's bias. transposed: for teacher forcing, whose gradient multiplies by
        each matrix's transpose at every word (`product_with_transpose`)."""
        attention, language = self.attention_lstm, self.language_lstm
        language_rows = (kernel_rows or self._attention_kernel(region_width))[0]
        matrices = [language_rows, attention.recurrent_kernel, language.kernel,
                    language.recurrent_kernel]  # fmt: skip
        matrices = [self._cast(matrix) for matrix in matrices]
        pairs = [(matrix, ops.transpose(matrix) if transposed else None) for matrix in matrices]
        return [*pairs, self._cast(language.bias)]

    def recur(self, gates, state, keys, regions, weights):
        """One word whose (and whose photo's) share of the attention LSTM's gates is `gates`
        (B, 4 attention_units) -> h_language (B, U), the new state, the attention (B, P) over
        the cells. weights: `loop_weights()`. Both LSTMs compute as keras.layers.LSTMCell
        does, from its weights (its call would multiply by each matrix, not by its rows)."""
        h_attention, c_attention, h_language, c_language = state
        language_rows, attention_recurrent, language_kernel, language_recurrent, bias = weights
        gates = gates + product_with_transpose(h_language, *language_rows)
        gates = gates + product_with_transpose(h_attention, *attention_recurrent)
        h_attention, c_attention = lstm_output(self.attention_lstm, gates, c_attention)
        context, attention = self.attention.attend(ops.expand_dims(h_attention, 1), keys, regions)
        language_input = ops.concatenate([ops.squeeze(context, 1), h_attention], axis=-1)
        gates = product_with_transpose(language_input, *language_kernel)
        gates = gates + product_with_transpose(h_language, *language_recurrent) + bias
        h_language, c_language = lstm_output(self.language_lstm, gates, c_language)
        state = [h_attention, c_attention, h_language, c_language]
        return h_language, state, ops.squeeze(attention, 1)

    def step(self, word, state, keys, regions, photo_gates):
        """One word (B, E) -> h_language (B, U), the new state, the weights (B, P) over cells;
        photo_gates: `photo_gates(regions)`, computed once before the first word."""
        width = regions.shape[-1]
        kernel_rows = self._attention_kernel(width)
        gates = self.word_gates(word, width, kernel_rows) + photo_gates
        return self.recur(gates, state, keys, regions, self.loop_weights(width, kernel_rows))

    def step_as_first_written(self, word, state, keys, regions, mean_region):
        """`step` with every product inside: [h_language; mean cell; word] through the
        attention LSTM as one input, each word. What `first_written` scans."""
        h_attention, c_attention, h_language, c_language = state
        attention_input = ops.concatenate([h_language, mean_region, word], axis=-1)
        h_attention, (_, c_attention) = self.attention_lstm(
            attention_input, [h_attention, c_attention]
        )
        attention = self.attention
        context, weights = attention.attend_as_first_written(h_attention[:, None], keys, regions)
        language_input = ops.concatenate([context[:, 0], h_attention], axis=-1)
        h_language, (_, c_language) = self.language_lstm(language_input, [h_language, c_language])
        return h_language, [h_attention, c_attention, h_language, c_language], weights[:, 0]

    def call(self, inputs):
        words, keys, regions = inputs
        if not self.first_written:
            # Every word's and the photo's share of the attention LSTM's gates, before the loop:
            # all the words' products in one, the photo's once.
            width = regions.shape[-1]
            kernel_rows = self._attention_kernel(width)
            xs = self.word_gates(words, width, kernel_rows)
            xs = xs + self.photo_gates(regions, kernel_rows)[:, None]  # (B, T, 4 units)
            weights = self.loop_weights(width, kernel_rows, transposed=True)

            def one_word(state, x):
                return self.recur(x, state, keys, regions, weights)[1]
        else:
            xs, mean_region = words, ops.mean(regions, axis=1)

            def one_word(state, x):
                return self.step_as_first_written(x, state, keys, regions, mean_region)[1]

        xs = ops.transpose(xs, (1, 0, 2))  # time first: scan runs over the first axis
        # Every word's state, of which h_language (the third) is the output.
        states = scan_words(one_word, self.initial_state(regions), xs)
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
