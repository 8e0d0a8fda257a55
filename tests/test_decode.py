"""Greedy and beam search on decoders whose next-word probabilities the tests set by hand."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.config import DecodeConfig, ModelConfig
from captioner.decode import make_beam_search, make_decoder, make_greedy_search
from captioner.text import END_ID, START_ID

A, B, C = 4, 5, 6  # word ids after the four special tokens
V = 7


class BigramSteps:
    """P(next | previous word) from a fixed table; the state carries nothing but the batch size."""

    def __init__(self, table: dict[int, dict[int, float]], never_ends: bool = False):
        import tensorflow as tf

        probabilities = np.full((V, V), 1e-9)
        if never_ends:
            probabilities[:, END_ID] = 0.0  # log 0 = -inf: <end> is impossible
        for previous, following in table.items():
            for word, p in following.items():
                probabilities[previous, word] = p
        with np.errstate(divide="ignore"):
            self.log_table = tf.constant(np.log(probabilities), tf.float32)

    def initial_state(self, features):
        return [features]

    def step(self, tokens, state):
        import tensorflow as tf

        return tf.gather(self.log_table, tokens), state


# Greedy takes "a" (0.5) and then must end at 0.5 * 0.34 = 0.17; beam keeps "b" (0.4), which
# ends with 0.9: 0.36 in all.
TRAP = {
    START_ID: {A: 0.5, B: 0.4, C: 0.1},
    A: {END_ID: 0.34, B: 0.33, C: 0.33},
    B: {END_ID: 0.9, C: 0.1},
}
FEATURES = np.zeros((1, 2), np.float32)


def test_beam_finds_the_more_probable_caption_that_greedy_misses():
    steps = BigramSteps(TRAP)
    greedy = make_greedy_search(steps, V, max_length=5)(FEATURES).numpy()
    assert list(greedy[0]) == [A, END_ID, 0, 0, 0]
    ids, scores = make_beam_search(steps, V, beam_size=2, max_length=5)(FEATURES)
    assert list(ids.numpy()[0]) == [B, END_ID, 0, 0, 0]
    assert scores.numpy()[0] == pytest.approx(np.log(0.36) / 2**0.7, rel=1e-5)


def test_greedy_scores_its_caption_as_beam_search_does():
    # Greedy's "a <end>" has P = 0.5 * 0.34; scored log P / length ** penalty, as beam ranks.
    steps = BigramSteps(TRAP)
    ids, scores = make_greedy_search(steps, V, max_length=5, length_penalty=0.7)(FEATURES)
    assert list(ids.numpy()[0]) == [A, END_ID, 0, 0, 0]
    assert scores.numpy()[0] == pytest.approx(np.log(0.5 * 0.34) / 2**0.7, rel=1e-5)
    decode = make_decoder(steps, V, DecodeConfig(beam_size=1, max_length=5), scores=True)
    assert decode(FEATURES)[1][0] == pytest.approx(scores.numpy()[0])
    beam_ids, beam_scores = make_decoder(
        steps, V, DecodeConfig(beam_size=2, max_length=5), scores=True
    )(FEATURES)
    assert list(beam_ids[0]) == [B, END_ID, 0, 0, 0]
    assert beam_scores[0] == pytest.approx(np.log(0.36) / 2**0.7, rel=1e-5)


def test_beam_returns_the_best_unfinished_caption_when_none_ends():
    never_ends = {START_ID: {A: 0.6, B: 0.4}, A: {B: 0.7, C: 0.3}, B: {A: 0.8, C: 0.2}, C: {A: 1.0}}
    steps = BigramSteps(never_ends, never_ends=True)
    ids, _ = make_beam_search(steps, V, beam_size=3, max_length=4)(FEATURES)
    assert list(ids.numpy()[0]) == [A, B, A, B]


def test_length_penalty_changes_which_caption_wins():
    # "a <end>": 0.3 * 0.9 = 0.27; "b c <end>": 0.7 * 0.4 * 0.9 = 0.252, less probable but
    # better per token: log(0.27) / 2 = -0.655 < log(0.252) / 3 = -0.459.
    table = {START_ID: {A: 0.3, B: 0.7}, A: {END_ID: 0.9, C: 0.1}, B: {C: 0.4, END_ID: 0.1},
             C: {END_ID: 0.9, A: 0.1}}  # fmt: skip
    steps = BigramSteps(table)
    plain = make_beam_search(steps, V, 3, 5, length_penalty=0.0)(FEATURES)[0].numpy()[0]
    per_token = make_beam_search(steps, V, 3, 5, length_penalty=1.0)(FEATURES)[0].numpy()[0]
    assert list(plain[:2]) == [A, END_ID]
    assert list(per_token[:3]) == [B, C, END_ID]


def test_repeated_ngrams_can_be_blocked():
    loop = {START_ID: {A: 0.9, B: 0.1}, A: {B: 0.9, END_ID: 0.1}, B: {A: 0.9, END_ID: 0.1}}
    steps = BigramSteps(loop)
    free = make_beam_search(steps, V, 2, 6, length_penalty=1.0)(FEATURES)[0].numpy()[0]
    blocked = make_beam_search(steps, V, 2, 6, 1.0, no_repeat_ngram=2)(FEATURES)[0].numpy()[0]
    assert list(free[:4]) == [A, B, A, B]
    words = [w for w in blocked if w not in (0, END_ID)]
    bigrams = list(zip(words, words[1:]))
    assert len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_batch_gives_the_same_captions_as_each_image_alone(beam_size):
    import keras

    from captioner.model import DecoderSteps, build_decoder

    keras.utils.set_random_seed(1)
    model = build_decoder(ModelConfig(embedding_dim=8, units=16, dropout=0.0), 30, 12)
    features = np.random.RandomState(0).normal(size=(6, 12)).astype(np.float32) * 3
    decode = make_decoder(DecoderSteps(model), 30, DecodeConfig(beam_size=beam_size, max_length=8))
    batch = decode(features)
    alone = np.concatenate([decode(features[i : i + 1]) for i in range(len(features))])
    np.testing.assert_array_equal(batch, alone)
    assert len({tuple(row) for row in batch}) > 1  # the images do get different captions


def test_an_ensemble_averages_the_members_probabilities():
    from captioner.model import EnsembleSteps

    sure_a = BigramSteps({START_ID: {A: 0.9, B: 0.1}, A: {END_ID: 1.0}, B: {END_ID: 1.0}})
    sure_b = BigramSteps({START_ID: {A: 0.2, B: 0.8}, A: {END_ID: 1.0}, B: {END_ID: 1.0}})
    # Mean probabilities after <start>: a (0.9 + 0.2) / 2 = 0.55, b 0.45.
    for steps, first in ((sure_b, B), (EnsembleSteps([sure_a, sure_b]), A)):
        ids, score = make_beam_search(steps, V, 2, 3, length_penalty=0.0)(FEATURES)
        assert ids.numpy()[0][0] == first
    assert float(score[0]) == pytest.approx(np.log(0.55), rel=1e-4)


@pytest.mark.parametrize(
    "hidden_layer, decoder", [(True, "lstm"), (False, "lstm"), (False, "attention")]
)
def test_step_by_step_decoding_runs_the_trained_model_exactly(hidden_layer, decoder):
    """Greedy words fed back through the whole-sequence model are its arg-max at every step."""
    import keras

    from captioner.model import DecoderSteps, build_decoder

    keras.utils.set_random_seed(2)
    config = ModelConfig(8, 16, 0.0, hidden_layer, decoder, attention_dim=8)
    # With attention: 12 features = a grid of 4 cells of 3 channels.
    model = build_decoder(config, 30, 12, cells=4 if decoder == "attention" else 0)
    features = np.random.RandomState(1).normal(size=(4, 12)).astype(np.float32) * 3
    ids = make_greedy_search(DecoderSteps(model), 30, max_length=6, suppress_unk=False)(features)
    for vector, row in zip(features, ids.numpy()):
        words = [int(w) for w in row if w != 0]  # the caption, with <end> if it was reached
        logits = model([vector[None], np.array([[START_ID, *words[:-1]]])], training=False)
        logits = logits.numpy()[0]
        logits[:, [0, START_ID]] = -np.inf  # never generated
        logits[0, END_ID] = -np.inf  # nor <end> as the first word
        assert list(logits.argmax(-1)) == words


def test_sampler_draws_words_as_often_as_the_model_says_and_repeats_with_its_seed():
    import tensorflow as tf

    from captioner.decode import make_sampler

    steps = BigramSteps(
        {START_ID: {A: 0.75, B: 0.25}, A: {END_ID: 1.0}, B: {C: 1.0}, C: {END_ID: 1.0}}
    )
    sample = make_sampler(steps, V, max_length=4, samples=1000)
    ids = sample(FEATURES, tf.constant([0, 1])).numpy()
    assert ids.shape == (1000, 4)
    first_a = ids[:, 0] == A
    assert 0.70 < first_a.mean() < 0.80  # 0.75 expected; 1,000 draws: sd 0.014
    assert (ids[first_a] == [A, END_ID, 0, 0]).all()
    assert (ids[~first_a] == [B, C, END_ID, 0]).all()
    assert (sample(FEATURES, tf.constant([0, 1])).numpy() == ids).all()
    assert (sample(FEATURES, tf.constant([0, 2])).numpy() != ids).any()
