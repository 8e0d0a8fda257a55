"""A small Transformer decoder over the encoder's grid of cells (Vaswani et al. 2017, pre-norm
as in most captioners since): each block is causal self-attention over the words so far,
cross-attention over the cells, and a feed-forward layer, each with a residual connection.

    words (B, T, W) + sinusoidal positions -> blocks -> LayerNorm -> (B, T, W)
    cells (B, P, W) + a learned embedding of each cell's place in the grid = what blocks read

Teacher forcing runs all words at once under a causal mask. Decoding runs one word at a time
(`step`): every block keeps the keys and values of the words so far in a cache of `max_words`
rows (fixed, so the state's shape never changes inside the search's loop) and attends over
the rows up to the word's position, which is the causal mask of teacher forcing, row by row.

Its own module because the layer must be registered with Keras before a model that uses it is
loaded in safe mode.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

_NEG_INF = -1e9


def positions(position, width: int):
    """Sinusoidal embeddings (..., width) of integer positions (...): no table to outgrow."""
    half = width // 2
    rates = ops.exp(ops.arange(half, dtype="float32") * (-math.log(10000.0) / max(half - 1, 1)))
    angles = ops.cast(position, "float32")[..., None] * rates
    return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)


def _split_heads(x, heads: int):
    """(B, T, W) -> (B, heads, T, W / heads)."""
    batch, length, width = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
    return ops.transpose(ops.reshape(x, (batch, length, heads, width // heads)), (0, 2, 1, 3))


def _merge_heads(x):
    """(B, heads, T, D) -> (B, T, heads * D)."""
    batch, heads, length, depth = ops.shape(x)[0], x.shape[1], ops.shape(x)[2], x.shape[3]
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (batch, length, heads * depth))


def _attend(query, keys, values, visible, heads: int):
    """Multi-head scaled dot-product attention. query (B, Tq, W), keys/values (B, Tk, W),
    visible: bool broadcastable to (B, heads, Tq, Tk) or None. Returns (B, Tq, W) and the
    weights (B, heads, Tq, Tk)."""
    q, k, v = (_split_heads(x, heads) for x in (query, keys, values))
    scores = ops.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if visible is not None:
        scores = ops.where(visible, scores, _NEG_INF)
    weights = ops.softmax(scores, axis=-1)
    return _merge_heads(ops.einsum("bhqk,bhkd->bhqd", weights, v)), weights


class _Block(layers.Layer):
    """One block's layers; TransformerDecoder runs them (`run`), whole or one word at a time."""

    def __init__(self, width: int, feed_forward: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.self_norm = layers.LayerNormalization(name="self_norm")
        self.self_qkv = layers.Dense(3 * width, name="self_qkv")
        self.self_out = layers.Dense(width, name="self_out")
        self.cross_norm = layers.LayerNormalization(name="cross_norm")
        self.cross_query = layers.Dense(width, name="cross_query")
        self.cross_kv = layers.Dense(2 * width, name="cross_kv")
        self.cross_out = layers.Dense(width, name="cross_out")
        self.feed_norm = layers.LayerNormalization(name="feed_norm")
        # ReLU, as in the base Transformer: GELU's erfc has no ONNX conversion (tf2onnx).
        self.feed_in = layers.Dense(feed_forward, activation="relu", name="feed_in")
        self.feed_out = layers.Dense(width, name="feed_out")
        self.dropout = layers.Dropout(dropout, name="dropout")

    def build(self, input_shape):
        width, memory_width = input_shape
        for layer in (self.self_norm, self.cross_norm, self.feed_norm, self.self_qkv,
                      self.self_out, self.cross_query, self.cross_out, self.feed_in):  # fmt: skip
            layer.build((None, None, width))
        self.cross_kv.build((None, None, memory_width))
        self.feed_out.build((None, None, self.feed_in.units))

    def memory_kv(self, memory):
        """The cells' keys and values (B, P, W) each: computed once per photo."""
        return ops.split(self.cross_kv(memory), 2, axis=-1)

    def query_kv(self, x):
        """The normed words' queries, keys and values (B, T, W) each, for self-attention."""
        return ops.split(self.self_qkv(self.self_norm(x)), 3, axis=-1)

    def run(self, x, query, self_kv, visible, memory_kv, heads: int, training):
        """x (B, T, W) whose `query` attends over self_kv (the keys and values of the words
        it may see, where `visible`), then over memory_kv; then the feed-forward layer. Returns
        the new x and the cross-attention weights (B, heads, T, P)."""
        drop = self.dropout
        attended, _ = _attend(query, *self_kv, visible, heads)
        x = x + drop(self.self_out(attended), training=training)
        crossed, weights = _attend(self.cross_query(self.cross_norm(x)), *memory_kv, None, heads)
        x = x + drop(self.cross_out(crossed), training=training)
        fed = self.feed_out(drop(self.feed_in(self.feed_norm(x)), training=training))
        return x + drop(fed, training=training), weights


@keras.saving.register_keras_serializable(package="captioner")
class TransformerDecoder(layers.Layer):
    """[words (B, T, W) embedded, cells (B, P, C) projected] -> (B, T, W) before the logits."""

    def __init__(self, width: int, blocks: int, heads: int, feed_forward: int, dropout: float,
                 max_words: int, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        if width % heads or width % 2:
            raise ValueError(f"transformer.width {width} is not an even multiple of {heads} heads")
        self.width, self.heads, self.feed_forward = width, heads, feed_forward
        self.dropout_rate, self.max_words = dropout, max_words
        self.input_dropout = layers.Dropout(dropout, name="input_dropout")
        self.blocks = [_Block(width, feed_forward, dropout, name=f"block{index}")
                       for index in range(blocks)]  # fmt: skip
        self.final_norm = layers.LayerNormalization(name="final_norm")

    def build(self, input_shape):
        _, cells_shape = input_shape
        self.cell_places = self.add_weight(
            name="cell_places", shape=tuple(cells_shape[1:]), initializer="zeros"
        )
        for block in self.blocks:
            block.build((self.width, cells_shape[-1]))
        self.final_norm.build((None, None, self.width))

    def _embedded(self, words, position):
        places = ops.cast(positions(position, self.width), words.dtype)
        return words * math.sqrt(self.width) + places

    def memory(self, cells):
        """Each block's (keys, values) of the photo's cells: fixed while a caption is decoded."""
        cells = cells + self.cell_places
        return [block.memory_kv(cells) for block in self.blocks]

    def call(self, inputs, training=None):
        words, cells = inputs
        length = ops.shape(words)[1]
        x = self.input_dropout(self._embedded(words, ops.arange(length)), training=training)
        causal = ops.arange(length)[:, None] >= ops.arange(length)[None, :]  # (T, T)
        for block, memory_kv in zip(self.blocks, self.memory(cells)):
            query, keys, values = block.query_kv(x)
            x, _ = block.run(x, query, (keys, values), causal, memory_kv, self.heads, training)
        return self.final_norm(x)

    def initial_state(self, cells):
        """[position (B,) int32, then per block: key cache, value cache (B, max_words, W), the
        cells' keys, values (B, P, W)]."""
        batch = ops.shape(cells)[0]
        empty = ops.zeros((batch, self.max_words, self.width), dtype=self.compute_dtype)
        state = [ops.zeros((batch,), dtype="int32")]
        for keys, values in self.memory(cells):
            state += [empty, empty, keys, values]
        return state

    def step(self, word, state):
        """One word (B, W) embedded, at each row's position -> output (B, W), the new state,
        and the last block's cross-attention weights (B, P), averaged over heads."""
        position, new_state = state[0], [state[0] + 1]
        x = self._embedded(word, position)[:, None]  # (B, 1, W)
        here = ops.one_hot(position, self.max_words, dtype=x.dtype)[:, :, None]  # (B, L, 1)
        # (B, 1, 1, L): the rows written so far and this one, as the causal mask allows
        visible = (ops.arange(self.max_words)[None] <= position[:, None])[:, None, None]
        weights = None
        for index, block in enumerate(self.blocks):
            key_cache, value_cache, *memory_kv = state[1 + 4 * index : 5 + 4 * index]
            query, keys, values = block.query_kv(x)
            key_cache = key_cache + here * keys  # keys (B, 1, W) written at row `position`
            value_cache = value_cache + here * values
            x, weights = block.run(x, query, (key_cache, value_cache), visible, memory_kv,
                                   self.heads, False)  # fmt: skip
            new_state += [key_cache, value_cache, *memory_kv]
        return self.final_norm(x)[:, 0], new_state, ops.mean(weights[:, :, 0], axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "blocks": len(self.blocks),
            "heads": self.heads,
            "feed_forward": self.feed_forward,
            "dropout": self.dropout_rate,
            "max_words": self.max_words,
        }
