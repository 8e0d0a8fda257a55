"""The LSTM of the "lstm" and "attention" decoders, over whole captions as Keras' LSTM computes
it, with less work inside the loop.

On a CPU (no cuDNN), keras.layers.LSTM runs its cell at every word: the word's product with
the kernel inside the loop, and in the gradient every product multiplied by its matrix
transposed on the fly, which oneDNN does about 3x slower than a plain product at these shapes
(docs/performance.md, "The grid decoders' train step"). `CaptionLSTM` computes every word's
input product (plus the bias) in one product before the loop, and multiplies by the recurrent
kernel inside it through `product_with_transpose`, whose gradient uses a transpose made once:
the same sums as the cell's, in another order (float rounding). Its weights are the LSTM's
(the same cell, names, shapes and order): runs trained before load and caption as they did, and
decoding steps the same cell word by word. Up-Down's two LSTMs use the same functions.
`first_written=True` runs Keras' loop, to compare against (tests/test_grid_speed.py,
scripts/bench_grid_decoders.py).

Its own module because the layer must be registered with Keras before a model that uses it is
loaded in safe mode.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="captioner")
class CaptionLSTM(layers.LSTM):
    """keras.layers.LSTM, its loop lighter where it can be: no mask, no dropout inside the
    cell, a bias, forwards, not unrolled (else Keras' own loop)."""

    def __init__(self, units: int, first_written: bool = False, **kwargs):
        super().__init__(units, **kwargs)
        # Not part of the config: True runs Keras' loop (the code as first written).
        self.first_written = first_written

    def inner_loop(self, sequences, initial_state, mask, training=False):
        keras_loop = (self.first_written or mask is not None or self.go_backwards or self.unroll
                      or self.dropout or self.recurrent_dropout or not self.use_bias)  # fmt: skip
        if keras_loop:
            return super().inner_loop(sequences, initial_state, mask, training)
        cell = self.cell
        kernel, recurrent = (ops.cast(w, self.compute_dtype)
                             for w in (cell.kernel, cell.recurrent_kernel))  # fmt: skip
        xs = ops.matmul(sequences, kernel) + ops.cast(cell.bias, self.compute_dtype)
        weights = (recurrent, ops.transpose(recurrent))

        def one_word(state, x):
            h, c = state
            return list(lstm_output(cell, x + product_with_transpose(h, *weights), c))

        hs, cs = scan_words(one_word, list(initial_state), ops.transpose(xs, (1, 0, 2)))
        h, c = hs[-1], cs[-1]
        return h, ops.transpose(hs, (1, 0, 2)), [h, c]


def scan_words(one_word, state, xs):
    """one_word(state, x) -> the new state, over xs (T, ...) from `state`: every word's state,
    stacked (T, ...) each. tf.scan, not keras.ops.scan: its loop has the caption's length as
    its most iterations, which XLA (`train.jit_compile`) needs to compile the loop's gradient;
    Keras' scan on TensorFlow leaves it unset."""
    import tensorflow as tf

    return tf.scan(one_word, xs, initializer=state)


def product_with_transpose(x, matrix, transposed=None):
    """x @ matrix; with `transposed` (matrix's transpose, made once before the loop), x's
    gradient is upstream @ transposed. TensorFlow's own gradient of a product multiplies by
    the matrix transposed on the fly, which oneDNN does about 3x slower than a plain product
    at these shapes (64 rows by 2,048 gates; measured in docs/performance.md): the same sums,
    read in another order."""
    if transposed is None:
        return ops.matmul(x, matrix)

    @ops.custom_gradient
    def product(x, matrix):
        def gradient(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            return ops.matmul(upstream, transposed), ops.matmul(ops.transpose(x), upstream)

        return ops.matmul(x, matrix), gradient

    return product(x, matrix)


def lstm_output(cell, gates, c):
    """keras.layers.LSTMCell's update from its gates (B, 4 units) (input, forget, cell,
    output; the bias added) and the previous c -> the new h, c."""
    i, f, g, o = ops.split(gates, 4, axis=-1)
    c = cell.recurrent_activation(f) * c + cell.recurrent_activation(i) * cell.activation(g)
    return cell.recurrent_activation(o) * cell.activation(c), c
