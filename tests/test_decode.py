"""Greedy and beam search on decoders whose next-word probabilities the tests set by hand.

Every scenario runs through both searches: TensorFlow's (captioner.model.search) and the NumPy
twin the exported runtime uses (captioner.runtime.search), which must be the same algorithm.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from captioner.config import DecodeConfig, ModelConfig, TransformerConfig, UpDownConfig
from captioner.data.text import END_ID, PAD_ID, START_ID, UNK_ID
from captioner.errors import ConfigError
from captioner.model.search import make_beam_search, make_decoder, make_greedy_search
from captioner.runtime import search as numpy_search

A, B, C = 4, 5, 6  # word ids after the four special tokens
V = 7


def log_bigrams(table: dict[int, dict[int, float]], size: int, never_ends: bool = False):
    """log P(next | previous word) (size, size) float32: `table`'s entries, 1e-9 elsewhere."""
    probabilities = np.full((size, size), 1e-9)
    if never_ends:
        probabilities[:, END_ID] = 0.0  # log 0 = -inf: <end> is impossible
    for previous, following in table.items():
        for word, p in following.items():
            probabilities[previous, word] = p
    with np.errstate(divide="ignore"):
        return np.log(probabilities).astype(np.float32)


class BigramSteps:
    """P(next | previous word) from a fixed table; the state carries nothing but the batch size."""

    def __init__(self, table: dict[int, dict[int, float]], never_ends: bool = False):
        import tensorflow as tf

        self.log_table = tf.constant(log_bigrams(table, V, never_ends))

    def initial_state(self, features):
        return [features]

    def step(self, tokens, state):
        import tensorflow as tf

        return tf.gather(self.log_table, tokens), state


class NumpyBigramSteps:
    """BigramSteps for the NumPy search: arrays in, arrays out, as an ONNX decoder step."""

    def __init__(self, table: dict[int, dict[int, float]], never_ends: bool = False):
        self.log_table = log_bigrams(table, V, never_ends)

    def initial_state(self, features):
        return [features]

    def step(self, tokens, state):
        return np.take(self.log_table, tokens, axis=0), state


class NumpyStepsOf:
    """TensorFlow steps (DecoderSteps, EnsembleSteps) run by the NumPy search: each call converts
    its arrays to tensors and back, as the runtime's ONNX session does."""

    def __init__(self, steps):
        self.steps = steps
        self.max_words = getattr(steps, "max_words", None)  # as _OnnxSteps has it

    def initial_state(self, features):
        import tensorflow as tf

        return [s.numpy() for s in self.steps.initial_state(tf.constant(features))]

    def step(self, tokens, state):
        import tensorflow as tf

        log_probs, state = self.steps.step(tf.constant(tokens), [tf.constant(s) for s in state])
        return log_probs.numpy(), [s.numpy() for s in state]


def _numpy(result):
    return tuple(x.numpy() for x in result)


class TensorFlowSearch:
    """captioner.model.search, returning arrays: f(features) -> (ids, scores)."""

    bigrams = BigramSteps

    def photos(self, log_tables):
        return PhotoSteps(log_tables)

    def of(self, steps):
        return steps

    def greedy(self, steps, *args, **options):
        search = make_greedy_search(steps, *args, **options)
        return lambda features: _numpy(search(features))

    def beam(self, steps, *args, **options):
        search = make_beam_search(steps, *args, **options)
        return lambda features: _numpy(search(features))

    decoder = staticmethod(make_decoder)


class NumpySearch:
    """captioner.runtime.search with the same signatures as TensorFlowSearch."""

    bigrams = NumpyBigramSteps

    def photos(self, log_tables):
        return NumpyPhotoSteps(log_tables)

    of = NumpyStepsOf

    def greedy(self, steps, *args, **options):
        return lambda features: numpy_search.greedy_search(steps, features, *args, **options)

    def beam(self, steps, *args, **options):
        return lambda features: numpy_search.beam_search(steps, features, *args, **options)

    def decoder(self, steps, vocabulary_size, config, **options):
        return functools.partial(
            numpy_search.decode, steps, vocabulary_size=vocabulary_size, config=config, **options
        )


@pytest.fixture(params=[TensorFlowSearch(), NumpySearch()], ids=["tensorflow", "numpy"])
def search(request):
    """Each search, TensorFlow's and the runtime's NumPy twin, through one set of signatures."""
    return request.param


# Greedy takes "a" (0.5) and then must end at 0.5 * 0.34 = 0.17; beam keeps "b" (0.4), which
# ends with 0.9: 0.36 in all.
TRAP = {
    START_ID: {A: 0.5, B: 0.4, C: 0.1},
    A: {END_ID: 0.34, B: 0.33, C: 0.33},
    B: {END_ID: 0.9, C: 0.1},
}
FEATURES = np.zeros((1, 2), np.float32)


def test_beam_finds_the_more_probable_caption_that_greedy_misses(search):
    steps = search.bigrams(TRAP)
    greedy, _ = search.greedy(steps, V, max_length=5)(FEATURES)
    assert list(greedy[0]) == [A, END_ID, 0, 0, 0]
    ids, scores = search.beam(steps, V, beam_size=2, max_length=5)(FEATURES)
    assert list(ids[0]) == [B, END_ID, 0, 0, 0]
    assert scores[0] == pytest.approx(np.log(0.36) / 2**0.7, rel=1e-5)
    assert ids.dtype == greedy.dtype == np.int32 and scores.dtype == np.float32


def test_a_beam_wider_than_the_vocabulary_finds_the_same_caption(search):
    ids, scores = search.beam(search.bigrams(TRAP), V, beam_size=V + 2, max_length=5)(FEATURES)
    assert list(ids[0]) == [B, END_ID, 0, 0, 0]
    assert scores[0] == pytest.approx(np.log(0.36) / 2**0.7, rel=1e-5)


def test_greedy_scores_its_caption_as_beam_search_does(search):
    # Greedy's "a <end>" has P = 0.5 * 0.34; scored log P / length ** penalty, as beam ranks.
    steps = search.bigrams(TRAP)
    ids, scores = search.greedy(steps, V, max_length=5, length_penalty=0.7)(FEATURES)
    assert list(ids[0]) == [A, END_ID, 0, 0, 0]
    assert scores[0] == pytest.approx(np.log(0.5 * 0.34) / 2**0.7, rel=1e-5)
    decode = search.decoder(steps, V, DecodeConfig(beam_size=1, max_length=5), scores=True)
    assert decode(FEATURES)[1][0] == pytest.approx(scores[0])
    beam_ids, beam_scores = search.decoder(
        steps, V, DecodeConfig(beam_size=2, max_length=5), scores=True
    )(FEATURES)
    assert list(beam_ids[0]) == [B, END_ID, 0, 0, 0]
    assert beam_scores[0] == pytest.approx(np.log(0.36) / 2**0.7, rel=1e-5)


def test_beam_returns_the_best_unfinished_caption_when_none_ends(search):
    never_ends = {START_ID: {A: 0.6, B: 0.4}, A: {B: 0.7, C: 0.3}, B: {A: 0.8, C: 0.2}, C: {A: 1.0}}
    steps = search.bigrams(never_ends, never_ends=True)
    ids, _ = search.beam(steps, V, beam_size=3, max_length=4)(FEATURES)
    assert list(ids[0]) == [A, B, A, B]


def test_length_penalty_changes_which_caption_wins(search):
    # "a <end>": 0.3 * 0.9 = 0.27; "b c <end>": 0.7 * 0.4 * 0.9 = 0.252, less probable but
    # better per token: log(0.27) / 2 = -0.655 < log(0.252) / 3 = -0.459.
    table = {START_ID: {A: 0.3, B: 0.7}, A: {END_ID: 0.9, C: 0.1}, B: {C: 0.4, END_ID: 0.1},
             C: {END_ID: 0.9, A: 0.1}}  # fmt: skip
    steps = search.bigrams(table)
    plain = search.beam(steps, V, 3, 5, length_penalty=0.0)(FEATURES)[0][0]
    per_token = search.beam(steps, V, 3, 5, length_penalty=1.0)(FEATURES)[0][0]
    assert list(plain[:2]) == [A, END_ID]
    assert list(per_token[:3]) == [B, C, END_ID]


def test_repeated_ngrams_can_be_blocked(search):
    loop = {START_ID: {A: 0.9, B: 0.1}, A: {B: 0.9, END_ID: 0.1}, B: {A: 0.9, END_ID: 0.1}}
    steps = search.bigrams(loop)
    free = search.beam(steps, V, 2, 6, length_penalty=1.0)(FEATURES)[0][0]
    blocked = search.beam(steps, V, 2, 6, 1.0, no_repeat_ngram=2)(FEATURES)[0][0]
    assert list(free[:4]) == [A, B, A, B]
    words = [w for w in blocked if w not in (0, END_ID)]
    bigrams = list(zip(words, words[1:]))
    assert len(bigrams) == len(set(bigrams))


@functools.cache
def tiny_decoder(seed: int, decoder: str = "lstm", hidden_layer: bool = False, sharp=False):
    """An untrained decoder over 30 words and 12 features (a grid of 4 cells of 3 channels with
    attention), its weights drawn from `seed`; `sharp`: logits * 8, captions of many lengths."""
    import keras

    from captioner.model.decoder import build_decoder

    keras.utils.set_random_seed(seed)
    config = ModelConfig(8, 16, 0.0, hidden_layer, decoder, attention_dim=8)
    model = build_decoder(config, 30, 12, cells=0 if decoder == "lstm" else 4,
                          updown=UpDownConfig(attention_units=8, language_units=16),
                          transformer=TransformerConfig(8, 2, 2, 16, 0.0,
                                                        max_words=10))  # fmt: skip
    if sharp:
        kernel = model.get_layer("logits").kernel
        kernel.assign(kernel.numpy() * 8)
    return model


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_batch_gives_the_same_captions_as_each_image_alone(search, beam_size):
    from captioner.model.decoder import DecoderSteps

    steps = search.of(DecoderSteps(tiny_decoder(1, hidden_layer=True)))
    features = np.random.RandomState(0).normal(size=(6, 12)).astype(np.float32) * 3
    decode = search.decoder(steps, 30, DecodeConfig(beam_size=beam_size, max_length=8))
    batch = decode(features)
    alone = np.concatenate([decode(features[i : i + 1]) for i in range(len(features))])
    # Exact: the closest call, greedy or between beams, is 3e-5 in log-probability; a batch's
    # log-probabilities and each photo's alone differ by 0 (oneDNN, AVX-512 or AVX2) to 5e-7
    # (Eigen kernels), measured.
    np.testing.assert_array_equal(batch, alone)
    assert len({tuple(row) for row in batch}) > 1  # the images do get different captions


def test_an_ensemble_averages_the_members_probabilities(search):
    from captioner.model.decoder import EnsembleSteps

    sure_a = BigramSteps({START_ID: {A: 0.9, B: 0.1}, A: {END_ID: 1.0}, B: {END_ID: 1.0}})
    sure_b = BigramSteps({START_ID: {A: 0.2, B: 0.8}, A: {END_ID: 1.0}, B: {END_ID: 1.0}})
    # Mean probabilities after <start>: a (0.9 + 0.2) / 2 = 0.55, b 0.45.
    for steps, first in ((sure_b, B), (EnsembleSteps([sure_a, sure_b]), A)):
        ids, score = search.beam(search.of(steps), V, 2, 3, length_penalty=0.0)(FEATURES)
        assert ids[0][0] == first
    assert float(score[0]) == pytest.approx(np.log(0.55), rel=1e-4)


@pytest.mark.parametrize(
    "hidden_layer, decoder",
    [
        (True, "lstm"),
        (False, "lstm"),
        (False, "attention"),
        (False, "updown"),
        (True, "transformer"),
    ],
)
def test_step_by_step_decoding_runs_the_trained_model_exactly(search, hidden_layer, decoder):
    """Greedy words fed back through the whole-sequence model are its arg-max at every step."""
    from captioner.model.decoder import DecoderSteps

    model = tiny_decoder(2, decoder, hidden_layer)
    features = np.random.RandomState(1).normal(size=(4, 12)).astype(np.float32) * 3
    greedy = search.greedy(search.of(DecoderSteps(model)), 30, max_length=6, suppress_unk=False)
    ids, _ = greedy(features)
    # Exact arg-max: the best word leads the next by 0.003 or more at every step; step by step
    # and whole-sequence log-probabilities differ by 5e-7 at most under AVX-512, AVX2 and Eigen
    # kernels (measured).
    for vector, row in zip(features, ids):
        words = [int(w) for w in row if w != 0]  # the caption, with <end> if it was reached
        logits = model([vector[None], np.array([[START_ID, *words[:-1]]])], training=False)
        logits = logits.numpy()[0]
        logits[:, [0, START_ID]] = -np.inf  # never generated
        logits[0, END_ID] = -np.inf  # nor <end> as the first word
        assert list(logits.argmax(-1)) == words


@pytest.mark.parametrize("decoder", ["lstm", "attention", "updown", "transformer"])
def test_one_step_function_equals_the_teacher_forced_logits(decoder):
    """Each design's step(), fed a caption's words one at a time, gives the log-softmax of the
    logits the training model computes over the whole caption at once (the two paths share
    their weights, not their code: a scan of the step for Up-Down, a causal mask against key
    and value caches for the Transformer); the attention weights are a distribution."""
    import tensorflow as tf

    from captioner.model.decoder import DecoderSteps

    model = tiny_decoder(3, decoder, hidden_layer=True)
    features = np.random.RandomState(4).normal(size=(5, 12)).astype(np.float32) * 3
    words = np.random.RandomState(5).randint(1, 30, size=(5, 9)).astype(np.int32)
    whole = tf.nn.log_softmax(model([features, words], training=False)).numpy()
    steps = DecoderSteps(model)
    state, stepped = steps.initial_state(tf.constant(features)), []
    for t in range(words.shape[1]):
        if steps.cells:
            log_probs, state, weights = steps.step_with_attention(tf.constant(words[:, t]), state)
            np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)
        else:
            log_probs, state = steps.step(tf.constant(words[:, t]), state)
        stepped.append(log_probs.numpy())
    # Measured: 0 (attention), 5e-7 (Up-Down), 1e-6 (Transformer) under AVX-512; float32
    # sums in another order. A wrong mask or cache row moves them by 0.01 or more.
    np.testing.assert_allclose(np.stack(stepped, 1), whole, atol=1e-4)


def test_a_transformer_refuses_captions_longer_than_its_caches(search):
    from captioner.model.decoder import DecoderSteps

    steps = DecoderSteps(tiny_decoder(3, "transformer"))  # max_words=10
    assert steps.max_words == 10
    features = np.zeros((1, 12), np.float32)
    decode = search.decoder(search.of(steps), 30, DecodeConfig(beam_size=3, max_length=10))
    assert decode(features).shape == (1, 10)
    with pytest.raises(ConfigError, match="more than this decoder's transformer.max_words"):
        search.decoder(search.of(steps), 30, DecodeConfig(beam_size=3, max_length=11))(features)


def test_sampler_draws_words_as_often_as_the_model_says_and_repeats_with_its_seed():
    import tensorflow as tf

    from captioner.model.search import make_sampler

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


# Beam search drops each photo from its working set as soon as the photo's answer is known.
# These photos each have their own bigram table, so that one batch holds photos that finish
# after a word, after several, or never (<end> impossible: the answer is the best live beam).
W = 12  # vocabulary: the four special tokens and words 4..11
MAX = 12
CHAIN = {START_ID: {4: 0.9, 5: 0.1}} | {w: {w + 1: 0.9, END_ID: 0.01} for w in range(4, 10)}
PHOTO_TABLES = [
    log_bigrams({START_ID: {A: 0.9, B: 0.1}, A: {END_ID: 0.95}, B: {END_ID: 0.9}}, W),
    log_bigrams(CHAIN | {10: {END_ID: 0.9}}, W),  # 7 words, then <end>
    log_bigrams(
        {START_ID: {A: 0.6, B: 0.4}, A: {B: 0.7, C: 0.3}, B: {A: 0.8, C: 0.2}, C: {A: 1.0}},
        W,
        never_ends=True,
    ),
    # "a <end>" (P 0.27) finishes first; "b c <end>" (0.252) scores higher per word and wins.
    log_bigrams(
        {
            START_ID: {A: 0.3, B: 0.7},
            A: {END_ID: 0.9, C: 0.1},
            B: {C: 0.4, END_ID: 0.1},
            C: {END_ID: 0.9, A: 0.1},
        },
        W,
    ),
    # "a b a b ...": the longer the better per word, up to max_length, unless n-grams are banned.
    log_bigrams(
        {START_ID: {A: 0.9, B: 0.1}, A: {B: 0.9, END_ID: 0.1}, B: {A: 0.9, END_ID: 0.1}}, W
    ),
]
# "a <end>" (P 0.21) finishes at once and scores -0.96; "b" (0.12) is then below any bound a
# search might draw from lengths it has seen, but near-certain words and <end> follow it:
# "b 6 7 8 9 10 11 <end>" scores -0.51 and wins, at step 8.
LATE = {START_ID: {A: 0.7, B: 0.12}, A: {END_ID: 0.3}, 11: {END_ID: 0.99}}
PHOTO_TABLES.append(log_bigrams(LATE | {w: {w + 1: 0.99} for w in range(B, 11)}, W))
# Random tables, <end> from rare to common: captions of many lengths, near ties between beams.
for seed, end in enumerate([0.01, 0.05, 0.2, 1.0, 3.0, 10.0]):
    table = np.random.default_rng(seed).dirichlet(np.full(W, 0.4), W)
    table[:, END_ID] = np.minimum(1.0, table[:, END_ID] * end)
    PHOTO_TABLES.append(np.log(table).astype(np.float32))


class PhotoSteps:
    """A bigram table per photo: features (B, 1) hold the number of the photo's table. Counts
    the decoder rows it runs, in a variable that graph code adds to."""

    def __init__(self, log_tables):
        import tensorflow as tf

        self.log_tables = tf.constant(np.stack(log_tables))
        self.rows = tf.Variable(0)

    def initial_state(self, features):
        import tensorflow as tf

        return [tf.cast(features[:, 0], tf.int32)]

    def step(self, tokens, state):
        import tensorflow as tf

        self.rows.assign_add(tf.size(tokens))
        return tf.gather_nd(self.log_tables, tf.stack([state[0], tokens], axis=1)), state

    def rows_counted(self) -> int:
        """The decoder rows run since the last call."""
        rows = int(self.rows.numpy())
        self.rows.assign(0)
        return rows


class NumpyPhotoSteps:
    """PhotoSteps for the NumPy search."""

    def __init__(self, log_tables):
        self.log_tables, self.rows = np.stack(log_tables), 0

    def initial_state(self, features):
        return [features[:, 0].astype(np.int32)]

    def step(self, tokens, state):
        self.rows += tokens.size
        return self.log_tables[state[0], tokens], state

    def rows_counted(self) -> int:
        rows, self.rows = self.rows, 0
        return rows


def searched_to_max_length(log_table, beam_size, max_length, alpha, no_repeat_ngram):
    """One photo's beam search in plain numpy, every step up to max_length with no early stop:
    (ids (max_length,), score). Ties go to the lower index, as in tf.math.top_k and argmax."""
    K, L, size = beam_size, max_length, len(log_table)
    banned = np.zeros(size, np.float32)
    banned[[PAD_ID, START_ID, UNK_ID]] = -1e9
    banned_first = banned + np.where(np.arange(size) == END_ID, np.float32(-1e9), 0)
    alive = np.array([0.0] + [-1e9] * (K - 1), np.float32)
    sequences, tokens = np.zeros((K, L), np.int32), np.full(K, START_ID)
    best, best_sequence = np.float32(-1e9), np.zeros(L, np.int32)
    for t in range(L):
        log_probs = log_table[tokens] + (banned_first if t == 0 else banned)
        for k in range(K):
            log_probs[k, repeated_ngram_ends(sequences[k, :t], no_repeat_ngram)] = -1e9
        candidates = alive[:, None] + log_probs
        ended = candidates[:, END_ID] / np.float32(t + 1) ** np.float32(alpha)
        if ended.max() > best:
            best, best_sequence = ended.max(), sequences[ended.argmax()].copy()
            best_sequence[t] = END_ID
        candidates[:, END_ID] = -1e9
        chosen = np.argsort(-candidates.ravel(), kind="stable")[:K]
        alive, (parent, tokens) = candidates.ravel()[chosen], divmod(chosen, size)
        sequences = sequences[parent]
        sequences[:, t] = tokens
    if best > -5e8:
        return best_sequence, best
    return sequences[alive.argmax()], alive.max() / np.float32(L) ** np.float32(alpha)


def repeated_ngram_ends(words, n):
    """The words that would repeat an n-gram of `words` if they came next (none if n < 2)."""
    if n < 2 or len(words) < n - 1:
        return []
    last = list(words[len(words) - n + 1 :])
    return [
        words[j + n - 1] for j in range(len(words) - n + 1) if list(words[j : j + n - 1]) == last
    ]


@pytest.mark.parametrize("no_repeat_ngram", [0, 2, 3])
def test_each_photo_gets_the_answer_of_a_search_run_to_max_length(search, no_repeat_ngram):
    """Stopping a photo early changes nothing: the batch answers what numpy finds searching
    every photo to max_length, and each photo alone what it does in the batch, bit for bit."""
    beam = search.beam(search.photos(PHOTO_TABLES), W, 3, MAX, 0.7, no_repeat_ngram)
    photos = np.arange(len(PHOTO_TABLES), dtype=np.float32)[:, None]
    ids, scores = beam(photos)
    for photo, log_table in enumerate(PHOTO_TABLES):
        expected = searched_to_max_length(log_table, 3, MAX, 0.7, no_repeat_ngram)
        assert list(ids[photo]) == list(expected[0]), photo
        assert scores[photo] == pytest.approx(expected[1], rel=1e-6, abs=1e-6), photo
        alone_ids, alone_scores = beam(photos[photo : photo + 1])
        assert list(alone_ids[0]) == list(ids[photo]) and alone_scores[0] == scores[photo]
    lengths = (ids != 0).sum(axis=1)  # words, and <end> if it came
    assert lengths.min() == 2 and lengths.max() == MAX and len(set(lengths)) >= 4
    assert END_ID not in ids[2] and 0 not in ids[2]  # never ends: its best live beam


def test_finished_photos_leave_the_working_set(search):
    """A batch runs the decoder on as many rows as its photos alone: the photo that runs to
    max_length does not keep the others' beams decoding."""
    steps = search.photos(PHOTO_TABLES)
    beam = search.beam(steps, W, 3, MAX, 0.7)
    photos = np.arange(len(PHOTO_TABLES), dtype=np.float32)[:, None]
    alone = []
    for photo in photos:
        beam(photo[None])
        alone.append(steps.rows_counted())
    beam(photos)
    assert steps.rows_counted() == sum(alone)
    # One row per photo for the first word, K = 3 after; "a <end>" is done at the second word.
    assert max(alone) == 1 + 3 * (MAX - 1) and min(alone) == 1 + 3


@pytest.mark.parametrize("decoder", ["lstm", "attention"])
def test_beam_scores_are_the_models_own_probabilities_of_its_captions(search, decoder):
    """The decoder state follows each beam as beams change parents and photos leave the batch:
    each caption's score is log P / length ** 0.7 by the whole-sequence model."""
    from captioner.model.decoder import DecoderSteps

    model = tiny_decoder(3, decoder, sharp=True)
    features = np.random.RandomState(2).normal(size=(16, 12)).astype(np.float32) * 3
    ids, scores = search.beam(search.of(DecoderSteps(model)), 30, 3, 10, 0.7)(features)
    captions = [[int(w) for w in row if w != 0] for row in ids]  # and <end>, unless at max
    inputs = np.zeros(ids.shape, np.int32)  # (16, 10) teacher forcing; <pad> after each caption
    for row, words in zip(inputs, captions):
        row[: len(words)] = [START_ID, *words[:-1]]
    logits = model([features, inputs], training=False).numpy().astype(np.float64)  # (16, 10, V)
    for row_logits, words, score in zip(logits, captions, scores):
        row_logits = row_logits[: len(words)]  # the LSTM reads left to right: <pad> after is moot
        log_p = row_logits[np.arange(len(words)), words] - np.log(np.exp(row_logits).sum(-1))
        assert score == pytest.approx(log_p.sum() / len(words) ** 0.7, rel=1e-4)
    assert len({len(words) for words in captions}) >= 3


# The NumPy twin against TensorFlow's search, on cases no one picked by hand.


@pytest.mark.parametrize("beam_size, no_repeat_ngram", [(1, 0), (1, 3), (3, 0), (3, 3)])
def test_the_runtime_search_gives_tensorflows_captions_and_scores_on_a_decoder(
    beam_size, no_repeat_ngram
):
    """The exported captioner's answers are the trained one's: same words, same scores."""
    from captioner.model.decoder import DecoderSteps

    steps = DecoderSteps(tiny_decoder(3, "lstm", sharp=True))
    features = np.random.RandomState(4).normal(size=(16, 12)).astype(np.float32) * 3
    options = (30, beam_size, 10, 0.7, no_repeat_ngram)
    ids, scores = _numpy(make_beam_search(steps, *options)(features))
    twin_ids, twin_scores = numpy_search.beam_search(NumpyStepsOf(steps), features, *options)
    np.testing.assert_array_equal(twin_ids, ids)
    np.testing.assert_allclose(twin_scores, scores, rtol=1e-5)
    assert len({tuple(row) for row in ids}) > 8  # the photos do get different captions


def test_the_runtime_greedy_search_gives_tensorflows_captions_and_scores_on_a_decoder():
    from captioner.model.decoder import DecoderSteps

    steps = DecoderSteps(tiny_decoder(3, "lstm", sharp=True))
    features = np.random.RandomState(5).normal(size=(16, 12)).astype(np.float32) * 3
    ids, scores = _numpy(make_greedy_search(steps, 30, 10, length_penalty=0.7)(features))
    twin = numpy_search.greedy_search(NumpyStepsOf(steps), features, 30, 10, length_penalty=0.7)
    np.testing.assert_array_equal(twin[0], ids)
    np.testing.assert_allclose(twin[1], scores, rtol=1e-5)


def random_log_tables(seed: int, count: int, size: int = 12):
    """`count` bigram tables (size, size), log P float32, made to tie: each row a permutation of
    one table's few probabilities (beams and words tie), a quarter of the rows one sure word,
    <end> among them (a longer caption ties with a shorter one)."""
    rng = np.random.default_rng(seed)
    tables = []
    for _ in range(count):
        base = rng.choice([0.0, 1.0, 2.0, 4.0], size, p=[0.3, 0.3, 0.3, 0.1]) + np.eye(size)[B]
        weights = np.stack([rng.permutation(base) for _ in range(size)])
        sure = (rng.random(size) < 0.25) & (np.arange(size) != START_ID)
        weights[sure] = np.eye(size)[rng.integers(END_ID, size, sure.sum())]
        with np.errstate(divide="ignore"):
            tables.append(np.log(weights / weights.sum(1, keepdims=True)).astype(np.float32))
    return tables


@pytest.mark.parametrize(
    "beam_size, length_penalty, no_repeat_ngram",
    [(1, 0.7, 0), (2, 0.0, 2), (3, 1.0, 0), (4, 0.0, 3), (5, 0.5, 2)],
)
def test_the_runtime_search_gives_tensorflows_captions_on_random_bigram_tables(
    beam_size, length_penalty, no_repeat_ngram
):
    """Photos of several seeds' random tables, with ties everywhere (which beam goes on, which
    ending is kept): the same captions and the same scores, ties broken the same way."""
    tables = [t for seed in range(4) for t in random_log_tables(seed, 6)]
    photos = np.arange(len(tables), dtype=np.float32)[:, None]
    options = (12, beam_size, 8, length_penalty, no_repeat_ngram)
    ids, scores = _numpy(make_beam_search(PhotoSteps(tables), *options)(photos))
    twin_ids, twin_scores = numpy_search.beam_search(NumpyPhotoSteps(tables), photos, *options)
    np.testing.assert_array_equal(twin_ids, ids)
    np.testing.assert_allclose(twin_scores, scores, rtol=1e-6)


def test_the_runtime_greedy_search_gives_tensorflows_captions_on_random_bigram_tables():
    tables = [t for seed in range(4) for t in random_log_tables(seed, 6)]
    photos = np.arange(len(tables), dtype=np.float32)[:, None]
    greedy = make_greedy_search(PhotoSteps(tables), 12, 8, length_penalty=0.7)
    ids, scores = _numpy(greedy(photos))
    twin = numpy_search.greedy_search(NumpyPhotoSteps(tables), photos, 12, 8, length_penalty=0.7)
    np.testing.assert_array_equal(twin[0], ids)
    np.testing.assert_allclose(twin[1], scores, rtol=1e-6)


def test_the_runtime_search_imports_neither_tensorflow_nor_keras():
    """The exported captioner runs where TensorFlow is not installed."""
    code = (
        "import sys, captioner.runtime.search; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, sorted(sys.modules)"
    )
    root = str(Path(__file__).resolve().parent.parent)
    path = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)
