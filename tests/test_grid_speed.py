"""The decoders' faster code computes what the code as first written computes.

The LSTM of the "lstm" and "attention" decoders (captioner.model.lstm) computes every word's
input product before its loop and multiplies by a transpose made once in its gradient. Up-Down
computes what is fixed for a caption (the mean cell's share of the attention LSTM's
gates) once, every word's input product in one before its loop, and multiplies by transposes
made once in its gradient; the attention reads its cells with cheaper operations. Each layer
keeps its first-written path (`first_written`), so both run side by side here, from the same
weights: the same losses and gradients to float rounding, the same one-word steps for decoding,
and the same weights, named and shaped as before (runs trained before load as they did).
"""

from __future__ import annotations

import numpy as np
import pytest

from captioner.config import ModelConfig, TrainConfig, TransformerConfig, UpDownConfig

VOCABULARY, CELLS, CHANNELS, WORDS = 40, 6, 5, 7


def grid_decoder(decoder: str, seed: int = 0, first_written: bool = False, dropout=0.0):
    """A small decoder (cells 16 wide, LSTMs of 24 and 20 units, a Transformer of 2 blocks 16
    wide), weights from `seed`; "lstm" reads the features as one pooled vector."""
    import keras

    from captioner.model.decoder import build_decoder

    keras.utils.set_random_seed(seed)
    config = ModelConfig(12, 16, dropout, True, decoder, attention_dim=8)
    cells = 0 if decoder == "lstm" else CELLS
    model = build_decoder(config, VOCABULARY, CELLS * CHANNELS, cells,
                          updown=UpDownConfig(attention_units=24, language_units=20),
                          transformer=TransformerConfig(16, 2, 2, 32, dropout, 10))  # fmt: skip
    for layer in model.layers:
        if hasattr(layer, "first_written"):
            layer.first_written = first_written
    return model


def batch(rows: int = 5, seed: int = 1):
    rng = np.random.RandomState(seed)
    features = (rng.normal(size=(rows, CELLS * CHANNELS)) * 2).astype(np.float32)
    words = rng.randint(1, VOCABULARY, size=(rows, WORDS)).astype(np.int32)
    return features, words


def loss_and_gradients(model, features, words):
    """The masked cross-entropy of the words shifted by one, and its gradient for every weight,
    in a compiled graph as training computes them."""
    import tensorflow as tf

    targets = np.roll(words, -1, axis=1)

    @tf.function
    def compute():
        with tf.GradientTape() as tape:
            logits = model([features, words], training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(targets, tf.cast(logits, "float32"))
            )
        gradients = tape.gradient(loss, model.trainable_weights)
        return loss, [tf.convert_to_tensor(g) for g in gradients]  # the embedding's: slices

    loss, gradients = compute()
    return float(loss), {w.path: g.numpy() for w, g in zip(model.trainable_weights, gradients)}


@pytest.mark.parametrize("decoder", ["lstm", "attention", "updown"])
def test_teacher_forcing_gives_the_first_written_loss_and_gradients(decoder):
    features, words = batch()
    loss, gradients = loss_and_gradients(grid_decoder(decoder), features, words)
    first_loss, first_gradients = loss_and_gradients(
        grid_decoder(decoder, first_written=True), features, words
    )
    assert loss == pytest.approx(first_loss, rel=1e-6)
    assert gradients.keys() == first_gradients.keys()
    for path, gradient in gradients.items():
        # Measured: 0 (attention), 4e-9 at most (Up-Down: float32 sums in another order). A
        # gradient left out or sent to the wrong rows (the split kernel, the custom product)
        # is off by 1e-3 or more of its scale.
        scale = np.abs(first_gradients[path]).max()
        np.testing.assert_allclose(gradient, first_gradients[path], atol=1e-5 * scale + 1e-7,
                                   err_msg=path)  # fmt: skip


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("decoder", ["attention", "updown"])
def test_trains_as_first_written(decoder, precision):
    """Two Adam steps as `captioner train` compiles them (dropout on): the same losses, so the
    same weights after the first step, in float32 and in mixed_bfloat16."""
    import keras

    from captioner.training.train import compile_decoder

    features, words = batch(8)
    losses = {}
    keras.mixed_precision.set_global_policy(precision)
    try:
        for first_written in (False, True):
            model = grid_decoder(decoder, first_written=first_written, dropout=0.3)
            compile_decoder(model, TrainConfig())
            losses[first_written] = [float(model.train_on_batch([features, words], words)[0])
                                     for _ in range(2)]  # fmt: skip
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Measured: 0 in float32; in mixed_bfloat16 1.2e-5 (Up-Down), 1.4e-5 (attention): rounded
    # to bfloat16 at other places
    tolerance = 1e-6 if precision == "float32" else 2e-3
    np.testing.assert_allclose(losses[False], losses[True], rtol=tolerance)


def test_updown_decoding_step_is_the_first_written_step():
    """The one-word step of decoding (its state carries the photo's share of the gates, not the
    mean cell) gives what the step as first written gives, word after word."""
    import tensorflow as tf

    from captioner.model.decoder import DecoderSteps, _projected_grid

    model = grid_decoder("updown", seed=3)
    features, words = batch(4, seed=2)
    steps, core = DecoderSteps(model), model.get_layer("updown")
    state = steps.initial_state(tf.constant(features))
    regions = _projected_grid(model, features)
    keys = model.get_layer("region_keys")(regions)
    first_state, mean_region = core.initial_state(regions), tf.reduce_mean(regions, 1)
    for t in range(WORDS):
        embedded = model.get_layer("embedding")(words[:, t])
        output, state, weights = steps._design.advance(embedded, state)
        first_output, first_state, first_weights = core.step_as_first_written(
            embedded, first_state, keys, regions, mean_region
        )
        np.testing.assert_allclose(output, first_output, atol=1e-5)
        np.testing.assert_allclose(weights, first_weights, atol=1e-6)
        for now, first in zip(state[:4], first_state):
            np.testing.assert_allclose(now, first, atol=1e-5)


def test_updown_weights_are_named_and_shaped_as_before():
    """The weights runs were trained with, in order: what model.keras and weights.npz hold."""
    model = grid_decoder("updown")
    e, r, a, ua, ul = 12, 16, 8, 24, 20  # embedding, cells' projection, attention, the LSTMs
    expected = [
        ("grid_norm/gamma", (CHANNELS,)), ("grid_norm/beta", (CHANNELS,)),
        ("grid_norm/moving_mean", (CHANNELS,)), ("grid_norm/moving_variance", (CHANNELS,)),
        ("region_projection/kernel", (CHANNELS, r)), ("region_projection/bias", (r,)),
        ("embedding/embeddings", (VOCABULARY, e)),
        ("region_keys/kernel", (r, a)), ("region_keys/bias", (a,)),
        ("updown/attention_lstm/kernel", (ul + r + e, 4 * ua)),
        ("updown/attention_lstm/recurrent_kernel", (ua, 4 * ua)),
        ("updown/attention_lstm/bias", (4 * ua,)),
        ("updown/attention/query/kernel", (ua, a)), ("updown/attention/query/bias", (a,)),
        ("updown/attention/score/kernel", (a, 1)), ("updown/attention/score/bias", (1,)),
        ("updown/language_lstm/kernel", (r + ua, 4 * ul)),
        ("updown/language_lstm/recurrent_kernel", (ul, 4 * ul)),
        ("updown/language_lstm/bias", (4 * ul,)),
        ("hidden/kernel", (ul, r)), ("hidden/bias", (r,)),
        ("logits/kernel", (r, VOCABULARY)), ("logits/bias", (VOCABULARY,)),
    ]  # fmt: skip
    assert [(w.path, tuple(w.shape)) for w in model.weights] == expected


@pytest.mark.parametrize("decoder", ["lstm", "attention"])
def test_lstm_decoders_load_and_compute_as_runs_trained_with_keras_lstm(decoder, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    """A run trained before (keras.layers.LSTM in model.keras) loads, and its weights, named,
    shaped and ordered as the decoder's now, give the same logits; the decoder now saved loads
    in safe mode as itself."""
    import keras

    from captioner.model.lstm import CaptionLSTM
    from captioner.model.rundir import load_keras_model

    features, words = batch()
    with monkeypatch.context() as patch:
        patch.setattr("captioner.model.lstm.CaptionLSTM", keras.layers.LSTM)
        before = grid_decoder(decoder, seed=4)
    assert type(before.get_layer("lstm")) is keras.layers.LSTM
    before.save(tmp_path / "before.keras")
    now = grid_decoder(decoder, seed=5)
    assert isinstance(now.get_layer("lstm"), CaptionLSTM)
    paths = [(w.path, tuple(w.shape)) for w in now.weights]
    assert paths == [(w.path, tuple(w.shape)) for w in before.weights]
    loaded = load_keras_model(tmp_path / "before.keras")
    now.set_weights(loaded.get_weights())
    expected = before([features, words]).numpy()
    np.testing.assert_allclose(now([features, words]).numpy(), expected, atol=1e-5)
    now.save(tmp_path / "now.keras")
    again = load_keras_model(tmp_path / "now.keras")
    assert isinstance(again.get_layer("lstm"), CaptionLSTM)
    np.testing.assert_allclose(again([features, words]).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("decoder", ["lstm", "attention", "updown", "transformer"])
def test_every_decoder_trains_under_xla(decoder):
    """train.jit_compile=true compiles the whole train step, loops and their gradients
    included (Keras' own scan leaves the loop without the most iterations XLA needs), and
    computes the loss the step without XLA computes."""
    from captioner.training.train import compile_decoder

    features, words = batch(4)
    losses = []
    for jit_compile in (False, True):
        model = grid_decoder(decoder)
        compile_decoder(model, TrainConfig(jit_compile=jit_compile))
        assert model.jit_compile == jit_compile  # Keras turns it off for layers it knows fail
        losses.append(float(model.train_on_batch([features, words], words)[0]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("decoder", ["updown", "transformer"])
def test_decoding_projects_each_photo_once_not_at_every_word(decoder):
    """The cells' projection, Up-Down's keys and the photo's gates, the Transformer's keys and
    values of the cells: computed when the search starts, carried in the state after."""
    import tensorflow as tf

    from captioner.model.decoder import DecoderSteps, build_decoder

    config = ModelConfig(8, 16, 0.0, False, decoder, attention_dim=8)
    transformer = TransformerConfig(8, 2, 2, 16, 0.0, max_words=10)
    model = build_decoder(config, VOCABULARY, CELLS * CHANNELS, CELLS, transformer=transformer)
    per_photo = ["region_projection"] + (["region_keys"] if decoder == "updown" else [])
    layers = [model.get_layer(name) for name in per_photo]
    if decoder == "transformer":
        layers += [block.cross_kv for block in model.get_layer("transformer").blocks]
    calls = {layer.path: 0 for layer in layers}
    for layer in layers:
        original = layer.call

        def counted(*args, _original=original, _name=layer.path, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        layer.call = counted
    if decoder == "updown":
        core = model.get_layer("updown")
        photo_gates = core.photo_gates

        def counted_gates(*args, **kwargs):
            calls["photo_gates"] = calls.get("photo_gates", 0) + 1
            return photo_gates(*args, **kwargs)

        core.photo_gates = counted_gates
    steps = DecoderSteps(model)
    features, words = batch(3)
    state = steps.initial_state(tf.constant(features))
    started = dict(calls)
    assert all(count == 1 for count in started.values()), started
    for t in range(4):
        _, state = steps.step(tf.constant(words[:, t]), state)
    assert calls == started
