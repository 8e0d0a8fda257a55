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
attending over the projected cells (captioner.model.attention). The other grid decoders,
"updown" (captioner.model.updown) and "transformer" (captioner.model.transformer), share the
cells' projection and the head; each brings its own word-by-word core and one-step function.
"""

from __future__ import annotations

from captioner.config import ModelConfig, TransformerConfig, UpDownConfig


def build_decoder(
    config: ModelConfig,
    vocabulary_size: int,
    feature_dim: int,
    cells: int = 0,
    synchronized: bool = False,
    updown: UpDownConfig | None = None,
    transformer: TransformerConfig | None = None,
):
    """Returns the (uncompiled) Keras training model: [features, words] -> logits.

    feature_dim: numbers per image; with `cells` > 0 (the grid decoders: attention, updown,
    transformer) the flattened grid of `cells` cells of feature_dim // cells channels each.
    synchronized: BatchNormalization computes its batch statistics over every replica's part of
    the global batch (training on several devices), as one device would over the whole batch.
    updown, transformer: those decoders' own settings (their config sections; defaults if None).
    """
    import keras
    from keras import layers

    if config.needs_grid != (cells > 0):
        raise ValueError(f"model.decoder={config.decoder} does not go with {cells} grid cells")
    features = keras.Input((feature_dim,), name="features")
    words = keras.Input((None,), dtype="int32", name="words")
    if config.decoder == "updown":
        x = _updown(config, updown or UpDownConfig(), vocabulary_size, features, words, cells,
                    synchronized)  # fmt: skip
    elif config.decoder == "transformer":
        x = _transformer(transformer or TransformerConfig(), vocabulary_size, features, words,
                         cells, synchronized)  # fmt: skip
    else:
        x = _lstm(config, vocabulary_size, features, words, cells, synchronized)
    if config.hidden_layer:
        x = layers.Dense(config.units, activation="relu", name="hidden")(x)
    # float32 even under a mixed-precision policy: the softmax needs the range.
    logits = layers.Dense(vocabulary_size, name="logits", dtype="float32")(x)
    return keras.Model([features, words], logits, name="captioner_decoder")


def _grid(features, cells: int):
    """The flattened features (B, cells * C) as the grid (B, cells, C)."""
    from keras import layers

    return layers.Reshape((cells, features.shape[-1] // cells), name="grid")(features)


def _regions(grid, units: int, dropout: float, synchronized: bool):
    """The grid's cells normalized and projected to `units` (B, cells, units): what the grid
    decoders attend over."""
    from keras import layers

    regions = layers.BatchNormalization(synchronized=synchronized, name="grid_norm")(grid)
    regions = layers.Dense(units, activation="relu", name="region_projection")(regions)
    return layers.Dropout(dropout, name="region_dropout")(regions)


def _lstm(config: ModelConfig, vocabulary_size, features, words, cells, synchronized):
    """The LSTM started from the image, attending after the LSTM for "attention"."""
    from keras import layers

    from captioner.model.lstm import CaptionLSTM

    attention = cells > 0
    pooled = features
    if attention:
        grid = _grid(features, cells)
        pooled = layers.GlobalAveragePooling1D(name="pool")(grid)
    image = layers.BatchNormalization(synchronized=synchronized, name="image_norm")(pooled)
    image = layers.Dense(config.units, activation="relu", name="image_projection")(image)
    h0 = layers.Dense(config.units, activation="tanh", name="initial_h")(image)
    c0 = layers.Dense(config.units, name="initial_c")(image)
    if attention:
        regions = _regions(grid, config.units, config.dropout, synchronized)
        keys = layers.Dense(config.attention_dim, name="region_keys")(regions)
    x = layers.Embedding(vocabulary_size, config.embedding_dim, name="embedding")(words)
    x = layers.Dropout(config.dropout, name="embedding_dropout")(x)
    x = CaptionLSTM(config.units, return_sequences=True, name="lstm")(x, initial_state=[h0, c0])
    if attention:
        from captioner.model.attention import RegionAttention

        context = RegionAttention(config.attention_dim, name="attention")([x, keys, regions])
        x = layers.Concatenate(name="with_context")([x, context])
    return layers.Dropout(config.dropout, name="lstm_dropout")(x)


def _updown(config: ModelConfig, updown: UpDownConfig, vocabulary_size, features, words, cells,
            synchronized):  # fmt: skip
    """Up-Down (captioner.model.updown): model.embedding_dim, units (the cells' projection),
    dropout and attention_dim; the two LSTMs' widths from [updown]."""
    from keras import layers

    from captioner.model.updown import UpDownCore

    regions = _regions(_grid(features, cells), config.units, config.dropout, synchronized)
    keys = layers.Dense(config.attention_dim, name="region_keys")(regions)
    x = layers.Embedding(vocabulary_size, config.embedding_dim, name="embedding")(words)
    x = layers.Dropout(config.dropout, name="embedding_dropout")(x)
    core = UpDownCore(updown.attention_units, updown.language_units, config.attention_dim,
                      name="updown")  # fmt: skip
    return layers.Dropout(config.dropout, name="lstm_dropout")(core([x, keys, regions]))


def _transformer(transformer: TransformerConfig, vocabulary_size, features, words, cells,
                 synchronized):  # fmt: skip
    """The Transformer decoder (captioner.model.transformer), all of its settings from
    [transformer]: words and cells are both `width` wide."""
    from keras import layers

    from captioner.model.transformer import TransformerDecoder

    t = transformer
    regions = _regions(_grid(features, cells), t.width, t.dropout, synchronized)
    x = layers.Embedding(vocabulary_size, t.width, name="embedding")(words)
    core = TransformerDecoder(t.width, t.blocks, t.heads, t.feed_forward, t.dropout, t.max_words,
                              name="transformer")  # fmt: skip
    return layers.Dropout(t.dropout, name="lstm_dropout")(core([x, regions]))


class DecoderSteps:
    """The trained decoder's weights, run one word at a time for a whole batch (no dropout).

    The state is what the decoder's design carries from word to word (`_design_of`): [h, c] of
    the LSTM, plus [regions, keys] (the projected grid, fixed per image) with attention; the
    two LSTMs' states and the grid for Up-Down; the position and each block's caches for the
    Transformer. Beam search carries each image's grid along with its beams.
    """

    def __init__(self, model):
        self.model = model
        get = model.get_layer
        names = {layer.name for layer in model.layers}
        self._design = _design_of(model, names)
        self._embedding = get("embedding")
        self._head = [get(name) for name in ("hidden", "logits") if name in names]
        self.vocabulary_size = get("logits").units
        # The grid cells attended over (0: no attention): the size of step_with_attention's maps.
        self.cells = get("grid").target_shape[0] if "grid" in names else 0
        # The longest caption it can decode (a Transformer's caches), None: no limit.
        self.max_words = getattr(self._design, "max_words", None)

    def initial_state(self, features):
        """features (B, D) -> the state before the first word, a list of (B, ...) tensors."""
        return self._design.initial_state(features)

    def step(self, tokens, state):
        """tokens (B,) int32, state -> log-probabilities (B, V), new state."""
        log_probs, state, _ = self._step(tokens, state, False)
        return log_probs, state

    def step_with_attention(self, tokens, state):
        """step(), and the attention weights (B, cells) float32 that predicted these words
        (each row sums to 1 over the grid); the search carries them only when asked to."""
        if not self.cells:
            raise ValueError("this decoder has no attention (model.decoder = lstm)")
        return self._step(tokens, state, True)

    def _step(self, tokens, state, with_weights: bool):
        import tensorflow as tf

        output, state, weights = self._design.advance(self._embedding(tokens), state)
        for layer in self._head:
            output = layer(output)
        weights = tf.cast(weights, tf.float32) if with_weights else None
        return tf.nn.log_softmax(tf.cast(output, tf.float32)), state, weights


def _design_of(model, names):
    """The decoder's design, as a one-word step: initial_state(features) -> state, and
    advance(embedded words (B, E), state) -> (output before the head (B, U), state, attention
    weights (B, cells) or None)."""
    if "updown" in names:
        return _UpDownDesign(model)
    if "transformer" in names:
        return _TransformerDesign(model)
    return _LstmDesign(model, "attention" in names)


def _projected_grid(model, features):
    """The grid decoders' cells, projected as in training (no dropout): (B, cells, units)."""
    get = model.get_layer
    return get("region_projection")(get("grid_norm")(get("grid")(features), training=False))


class _LstmDesign:
    def __init__(self, model, attention: bool):
        get = model.get_layer
        self.model, self._attention = model, get("attention") if attention else None
        self._image = [get("image_norm"), get("image_projection")]
        self._initial = (get("initial_h"), get("initial_c"))
        self._cell = get("lstm").cell

    def initial_state(self, features):
        import tensorflow as tf

        x = features
        if self._attention is not None:
            x = tf.reduce_mean(self.model.get_layer("grid")(features), axis=1)
        for layer in self._image:
            x = layer(x, training=False)
        state = [self._initial[0](x), self._initial[1](x)]
        if self._attention is not None:
            regions = _projected_grid(self.model, features)
            state += [regions, self.model.get_layer("region_keys")(regions)]
        return state

    def advance(self, x, state):
        import tensorflow as tf

        output, (h, c) = self._cell(x, state[:2], training=False)
        if self._attention is None:
            return output, [h, c], None
        context, weights = self._attention.attend(output[:, None], state[3], state[2])
        return tf.concat([output, context[:, 0]], axis=-1), [h, c, *state[2:]], weights[:, 0]


class _UpDownDesign:
    """State: the two LSTMs' [h, c] each, then the photo's regions, keys and its share of the
    attention LSTM's gates (the mean cell's product and the bias): all three computed once,
    before the first word (captioner.model.updown)."""

    def __init__(self, model):
        self.model, self._core = model, model.get_layer("updown")

    def initial_state(self, features):
        regions = _projected_grid(self.model, features)
        keys = self.model.get_layer("region_keys")(regions)
        photo_gates = self._core.photo_gates(regions)
        return [*self._core.initial_state(regions), regions, keys, photo_gates]

    def advance(self, x, state):
        regions, keys, photo_gates = state[4:]
        output, core_state, weights = self._core.step(x, state[:4], keys, regions, photo_gates)
        return output, [*core_state, *state[4:]], weights


class _TransformerDesign:
    """State: each row's position, then every block's self-attention caches and cell keys and
    values (captioner.model.transformer)."""

    def __init__(self, model):
        self.model, self._core = model, model.get_layer("transformer")
        self.max_words = self._core.max_words

    def initial_state(self, features):
        return self._core.initial_state(_projected_grid(self.model, features))

    def advance(self, x, state):
        return self._core.step(x, state)


class EnsembleSteps:
    """Several trained decoders decoding together: their word probabilities are averaged at
    every step, inside greedy or beam search. Members must share the vocabulary.

    columns: each member's slice of the features, when members read different encoders' (runs
    with fine-tuned encoders: captioner.model.ensembles.encoder_runs); None: all read all of them.
    """

    def __init__(self, members: list[DecoderSteps], columns: list[slice] | None = None):
        self.members = members
        self.columns = columns or [slice(None)] * len(members)

    def initial_state(self, features):
        states = [m.initial_state(features[:, c]) for m, c in zip(self.members, self.columns)]
        self._state_sizes = [len(state) for state in states]  # to split the flat list again
        return [tensor for state in states for tensor in state]

    @property
    def max_words(self) -> int | None:
        """The longest caption every member can decode (None: no limit)."""
        limits = [m.max_words for m in self.members if getattr(m, "max_words", None)]
        return min(limits, default=None)

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
