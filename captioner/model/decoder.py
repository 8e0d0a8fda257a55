"""The decoder: a batch-normalized image projection that starts an embedding + LSTM language model.

    image (B, D) -> BatchNorm -> Dense(units, relu) -> Dense(units, tanh) = h0, Dense(units) = c0
    words (B, T) -> Embedding(V, E) -> Dropout -> LSTM(units, from h0, c0) -> Dropout
                 -> Dense(units, relu) (model.hidden_layer) -> Dense(V) = logits (B, T, V)

The model outputs logits; the softmax lives in the loss and in decoding (log_softmax), which is
numerically safer than a softmax layer followed by a log. Layers are named, so `DecoderSteps`
can run the same weights one word at a time for greedy and beam search.

model.decoder = "attention" adds attention over the encoder's feature grid (`extract --grid`):
the features arrive as the flattened grid (B, cells * C); their mean over the cells (the pooled
vector) starts the LSTM as above, and each word is predicted from [h_t; context_t], the context
attending over the projected cells (captioner.model.attention).
"""

from __future__ import annotations

from captioner.config import ModelConfig


def build_decoder(
    config: ModelConfig,
    vocabulary_size: int,
    feature_dim: int,
    cells: int = 0,
    synchronized: bool = False,
):
    """Returns the (uncompiled) Keras training model: [features, words] -> logits.

    feature_dim: numbers per image; with `cells` > 0 (the attention decoder) the flattened grid
    of `cells` cells of feature_dim // cells channels each.
    synchronized: BatchNormalization computes its batch statistics over every replica's part of
    the global batch (training on several devices), as one device would over the whole batch.
    """
    import keras
    from keras import layers

    attention = config.needs_grid
    if attention != (cells > 0):
        raise ValueError(f"model.decoder={config.decoder} does not go with {cells} grid cells")
    features = keras.Input((feature_dim,), name="features")
    words = keras.Input((None,), dtype="int32", name="words")
    pooled = features
    if attention:
        grid = layers.Reshape((cells, feature_dim // cells), name="grid")(features)
        pooled = layers.GlobalAveragePooling1D(name="pool")(grid)
    image = layers.BatchNormalization(synchronized=synchronized, name="image_norm")(pooled)
    image = layers.Dense(config.units, activation="relu", name="image_projection")(image)
    h0 = layers.Dense(config.units, activation="tanh", name="initial_h")(image)
    c0 = layers.Dense(config.units, name="initial_c")(image)
    if attention:
        regions = layers.BatchNormalization(synchronized=synchronized, name="grid_norm")(grid)
        regions = layers.Dense(config.units, activation="relu", name="region_projection")(regions)
        regions = layers.Dropout(config.dropout, name="region_dropout")(regions)
        keys = layers.Dense(config.attention_dim, name="region_keys")(regions)
    x = layers.Embedding(vocabulary_size, config.embedding_dim, name="embedding")(words)
    x = layers.Dropout(config.dropout, name="embedding_dropout")(x)
    x = layers.LSTM(config.units, return_sequences=True, name="lstm")(x, initial_state=[h0, c0])
    if attention:
        from captioner.model.attention import RegionAttention

        context = RegionAttention(config.attention_dim, name="attention")([x, keys, regions])
        x = layers.Concatenate(name="with_context")([x, context])
    x = layers.Dropout(config.dropout, name="lstm_dropout")(x)
    if config.hidden_layer:
        x = layers.Dense(config.units, activation="relu", name="hidden")(x)
    # float32 even under a mixed-precision policy: the softmax needs the range.
    logits = layers.Dense(vocabulary_size, name="logits", dtype="float32")(x)
    return keras.Model([features, words], logits, name="captioner_decoder")


class DecoderSteps:
    """The trained decoder's weights, run one word at a time for a whole batch (no dropout).

    The state is [h, c], plus [regions, keys] (the projected grid, fixed per image) for the
    attention decoder: beam search then carries each image's grid along with its beams.
    """

    def __init__(self, model):
        self.model = model
        get = model.get_layer
        names = {layer.name for layer in model.layers}
        self._attention = get("attention") if "attention" in names else None
        self._image = [get("image_norm"), get("image_projection")]
        self._initial = (get("initial_h"), get("initial_c"))
        self._embedding, self._cell = get("embedding"), get("lstm").cell
        self._head = [get(name) for name in ("hidden", "logits") if name in names]
        self.vocabulary_size = get("logits").units
        # The grid cells attended over (0: no attention): the size of step_with_attention's maps.
        self.cells = get("grid").target_shape[0] if self._attention is not None else 0

    def initial_state(self, features):
        """features (B, D) -> [h (B, units), c (B, units)] (+ [regions, keys] with attention)."""
        import tensorflow as tf

        x = features
        if self._attention is not None:
            grid = self.model.get_layer("grid")(features)
            x = tf.reduce_mean(grid, axis=1)
        for layer in self._image:
            x = layer(x, training=False)
        state = [self._initial[0](x), self._initial[1](x)]
        if self._attention is not None:
            get = self.model.get_layer
            regions = get("region_projection")(get("grid_norm")(grid, training=False))
            state += [regions, get("region_keys")(regions)]
        return state

    def step(self, tokens, state):
        """tokens (B,) int32, state -> log-probabilities (B, V), new state."""
        log_probs, state, _ = self._step(tokens, state, False)
        return log_probs, state

    def step_with_attention(self, tokens, state):
        """step(), and the attention weights (B, cells) float32 that predicted these words
        (each row sums to 1 over the grid); the search carries them only when asked to."""
        if self._attention is None:
            raise ValueError("this decoder has no attention (model.decoder = lstm)")
        return self._step(tokens, state, True)

    def _step(self, tokens, state, with_weights: bool):
        import tensorflow as tf

        x = self._embedding(tokens)  # (B, E)
        output, (h, c) = self._cell(x, state[:2], training=False)
        weights = None
        if self._attention is not None:
            context, weights = self._attention.attend(output[:, None], state[3], state[2])
            output = tf.concat([output, context[:, 0]], axis=-1)
            weights = tf.cast(weights[:, 0], tf.float32) if with_weights else None
        for layer in self._head:
            output = layer(output)
        return tf.nn.log_softmax(tf.cast(output, tf.float32)), [h, c, *state[2:]], weights


class EnsembleSteps:
    """Several trained decoders decoding together: their word probabilities are averaged at
    every step, inside greedy or beam search. Members must share the vocabulary.

    columns: each member's slice of the features, when members read different encoders' (runs
    with fine-tuned encoders: captioner.model.rundir.encoder_runs); None: all read all of them.
    """

    def __init__(self, members: list[DecoderSteps], columns: list[slice] | None = None):
        self.members = members
        self.columns = columns or [slice(None)] * len(members)

    def initial_state(self, features):
        states = [m.initial_state(features[:, c]) for m, c in zip(self.members, self.columns)]
        self._state_sizes = [len(state) for state in states]  # to split the flat list again
        return [tensor for state in states for tensor in state]

    @property
    def cells(self) -> int:
        """The grid cells its attention members attend over (0 when none attends)."""
        return max(getattr(member, "cells", 0) for member in self.members)

    def step(self, tokens, state):
        log_probs, new_state, _ = self._step(tokens, state, False)
        return log_probs, new_state

    def step_with_attention(self, tokens, state):
        """step(), and the mean of the attention weights (B, cells) of the members that attend
        (members without attention choose the words with the others but show nothing)."""
        if not self.cells:
            raise ValueError("no member of this ensemble has attention")
        return self._step(tokens, state, True)

    def _step(self, tokens, state, with_weights: bool):
        import math

        import tensorflow as tf

        log_probs, new_state, weights, start = [], [], [], 0
        for member, size in zip(self.members, self._state_sizes):
            member_state = state[start : start + size]
            if with_weights and getattr(member, "cells", 0):
                member_log_probs, member_state, member_weights = member.step_with_attention(
                    tokens, member_state
                )
                weights.append(member_weights)
            else:
                member_log_probs, member_state = member.step(tokens, member_state)
            log_probs.append(member_log_probs)
            new_state += member_state
            start += size
        # log of the mean probability: logsumexp over members - log(members)
        mean = tf.reduce_logsumexp(tf.stack(log_probs), axis=0) - math.log(len(self.members))
        return mean, new_state, tf.reduce_mean(tf.stack(weights), 0) if weights else None
