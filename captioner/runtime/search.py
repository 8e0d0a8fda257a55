"""Greedy and beam search in NumPy: the twin of captioner/model/search.py, without TensorFlow.

The same algorithm, step for step and with the same return values, for the exported runtime,
where one decoder step is an ONNX model. tests/test_decode.py runs each of its hand-built
scenarios through both searches, and compares the two on random decoders and bigram tables.

`steps` is a NumPy object: `initial_state(features (B, D)) -> state` (a list of (B, ...)
arrays) and `step(tokens (B,) int32, state) -> (log-probabilities (B, V) float32, state)`.

Beam search ranks hypotheses by log P / length ** length_penalty, where length counts the words
and the <end> token. Finished hypotheses are kept aside (the best one per image); an image
leaves the search as soon as no live beam of its own can beat that one, and gets its best live
beam when none finished by max_length (captioner.model.search._BeamSearch says why stopping
early changes no answer).

Ties go where TensorFlow sends them: tf.argmax and tf.math.top_k take the lower index first, and
so do np.argmax and `_top_k` here. Arithmetic is float32, as there, but for length ** penalty,
rounded from float64 here (TensorFlow's float32 pow is at times one ulp off): scores agree to
about 1e-7 relative.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from captioner.config import check_length
from captioner.data.text import END_ID, PAD_ID, START_ID, UNK_ID

_NEG_INF = np.float32(-1e9)  # finite, so that -inf - -inf never makes a NaN


def _banned_masks(vocabulary_size: int, suppress_unk: bool):
    """Additive masks (V,) float32: words never generated, and those plus <end> for the first."""
    banned = [PAD_ID, START_ID] + ([UNK_ID] if suppress_unk else [])
    words = np.arange(vocabulary_size)
    always = (np.isin(words, banned) * _NEG_INF).astype(np.float32)
    # An empty caption is never an answer: the first word may not be <end>.
    first = np.where(words == END_ID, _NEG_INF, always).astype(np.float32)
    return always, first


def _normalize(log_p, length, length_penalty: float):
    """log P / length ** length_penalty in float32: what hypotheses are ranked by."""
    # Correctly rounded, whatever SIMD loop NumPy picks for a float32 power.
    exponent = np.float64(np.float32(length_penalty))  # the float32 TensorFlow uses
    divisor = (np.asarray(length, np.float64) ** exponent).astype(np.float32)
    return (np.asarray(log_p, np.float32) / divisor).astype(np.float32)


def _word_by_word(steps, features, max_length, banned, banned_first):
    """Runs the decoder from the image, taking each row's most likely word, until every row has
    said <end>. Returns ids (B, max_length), <pad> after <end>, and each row's log-probability
    (B,) and length (B,), words and <end> counted."""
    state = steps.initial_state(features)
    batch = len(features)
    tokens = np.full(batch, START_ID, np.int32)
    finished = np.zeros(batch, bool)
    log_p, length = np.zeros(batch, np.float32), np.zeros(batch, np.int32)
    ids = np.full((batch, max_length), PAD_ID, np.int32)
    for t in range(max_length):
        log_probs, state = steps.step(tokens, state)
        log_probs = np.asarray(log_probs, np.float32) + (banned_first if t == 0 else banned)
        tokens = log_probs.argmax(axis=-1).astype(np.int32)  # (B,) the first of equals
        chosen = log_probs[np.arange(batch), tokens]  # (B,)
        log_p += np.where(finished, np.float32(0.0), chosen)
        length += ~finished
        tokens = np.where(finished, PAD_ID, tokens).astype(np.int32)
        ids[:, t] = tokens
        finished |= tokens == END_ID
        if finished.all():
            break
    return ids, log_p, length


def greedy_search(
    steps,
    features,
    vocabulary_size: int,
    max_length: int,
    suppress_unk: bool = True,
    length_penalty: float = 0.0,
):
    """features (B, D) -> (ids (B, max_length) int32, <pad> after <end>; scores (B,)): each
    caption's log P / length ** length_penalty, as beam search ranks (length counts <end>; 0.0:
    log P itself), as captioner.model.search's greedy answers."""
    banned, banned_first = _banned_masks(vocabulary_size, suppress_unk)
    features = np.asarray(features, np.float32)
    ids, log_p, length = _word_by_word(steps, features, max_length, banned, banned_first)
    return ids, _normalize(log_p, length, length_penalty)


def _top_k(values, k: int):
    """The k largest of each row of values (N, M), largest first and equal ones in the order of
    their indices, as tf.math.top_k returns them: values (N, k) and indices (N, k) int32.
    Partitions rather than sorts the row: W * V candidates, of which k are kept."""
    if k < values.shape[1]:
        kth = -np.partition(-values, k - 1, axis=1)[:, k - 1 : k]  # (N, 1) the k-th largest
        above, tied = values > kth, values == kth  # (N, M)
        room = k - above.sum(axis=1, keepdims=True)  # (N, 1) places for the k-th's equals
        keep = above | (tied & (np.cumsum(tied, axis=1) <= room))  # (N, M): lowest indices
        index = np.nonzero(keep)[1].reshape(-1, k)  # (N, k) in increasing order
    else:
        index = np.broadcast_to(np.arange(values.shape[1]), values.shape)  # (N, M)
    order = np.argsort(-np.take_along_axis(values, index, axis=1), axis=1, kind="stable")
    index = np.take_along_axis(index, order, axis=1)  # (N, k) largest first, stable
    return np.take_along_axis(values, index, axis=1), index.astype(np.int32)


def _ban_repeated_ngrams(log_probs, sequences, t: int, n: int) -> None:
    """Sets to -1e9, in log_probs (B, K, V), every word that would repeat an n-gram of its beam.

    sequences: (B, K, L) int32 words so far (valid up to position t).
    """
    if t < n - 1:
        return
    length = sequences.shape[-1]
    match = np.arange(length - n + 1) + n - 1 < t  # (L-n+1,) the earlier n-gram is complete
    for offset in range(n - 1):
        earlier = sequences[:, :, offset : length - n + 1 + offset]  # (B, K, L-n+1)
        current = sequences[:, :, t - n + 1 + offset]  # (B, K)
        match = match & (earlier == current[:, :, None])
    b, k, j = np.nonzero(match)  # (M,) each: the beam and the start of an earlier n-gram
    log_probs[b, k, sequences[b, k, j + n - 1]] = _NEG_INF


def _best_ending_now(ended, sequences, t: int):
    """Each image's best hypothesis among those that end at step t (t words + <end>).

    ended: (B, K) normalized scores of ending now; sequences: (B, K, L) words so far.
    Returns its score (B,) and its words (B, L), <end> at position t.
    """
    k_best = ended.argmax(axis=1)  # (B,) the first of equals
    sequence = sequences[np.arange(len(ended)), k_best]  # (B, L) a copy
    sequence[:, t] = END_ID
    return ended.max(axis=1), sequence


def _go_on(candidates, sequences, t: int, K: int):
    """The K best (beam, word) pairs other than <end> become the new beams.

    candidates: (B, W, V) log P of each of W beams followed by each word; sequences: (B, W, L).
    Returns the K new beams' log P (B, K), their words (B, K, L), the beam each continues
    (B, K) and its last word (B, K).
    """
    B, W, V = candidates.shape
    candidates = np.where(np.arange(V) == END_ID, _NEG_INF, candidates)  # (B, W, V)
    alive, flat = _top_k(candidates.reshape(B, W * V), K)  # (B, K)
    parent, tokens = flat // V, flat % V
    sequences = sequences[np.arange(B)[:, None], parent]  # (B, K, L) a copy
    sequences[:, :, t] = tokens
    return alive, sequences, parent, tokens


class _Beams(NamedTuple):
    """Beam search's working set: the A photos of the batch still searching, K beams each
    (one before the first word: the K beams of a photo would all be the same)."""

    photo: np.ndarray  # (A,) which row of the batch, and of the answers, each one is
    state: list  # the decoder's state, (A * K, ...) rows, photo-major
    tokens: np.ndarray  # (A, K) int32 each beam's last word
    alive: np.ndarray  # (A, K) float32 log P of the live beams
    sequences: np.ndarray  # (A, K, L) int32 their words so far
    best_score: np.ndarray  # (A,) float32 the best finished hypothesis, normalized; -1e9: none
    best_sequence: np.ndarray  # (A, L) int32 its words and <end>


def _compact(beams: _Beams, parent_rows, keep) -> _Beams:
    """The rows `keep` (A,) bool of the photos that go on, in every array of `beams`.

    beams.state is still in the order of the step before; `parent_rows` (A, K) names the row
    of it each new beam continues, so one take both reorders the state and drops finished
    photos.
    """
    rows = parent_rows[keep].reshape(-1)  # (A' * K,)
    return _Beams(
        photo=beams.photo[keep],
        state=[np.asarray(s)[rows] for s in beams.state],
        tokens=beams.tokens[keep],
        alive=beams.alive[keep],
        sequences=beams.sequences[keep],
        best_score=beams.best_score[keep],
        best_sequence=beams.best_sequence[keep],
    )


class _BeamSearch:
    """Beam search of width K up to L words, over a batch of photos. Each photo searches until
    its best finished hypothesis scores at least `hope`, its best live beam's log P normalized
    by (L + 1) ** length_penalty, or until max_length (captioner/model/search.py says why)."""

    def __init__(self, steps, vocabulary_size, beam_size, max_length, length_penalty=0.7,
                 no_repeat_ngram=0, suppress_unk=True):  # fmt: skip
        self.steps, self.V, self.K, self.L = steps, vocabulary_size, beam_size, max_length
        self.alpha, self.no_repeat_ngram = float(length_penalty), no_repeat_ngram
        self.banned, self.banned_first = _banned_masks(vocabulary_size, suppress_unk)

    def normalize(self, log_p, length):
        return _normalize(log_p, length, self.alpha)

    def run(self, features):
        """features (B, D) -> ids (B, L), <pad> after <end>, and scores (B,)."""
        B = len(features)
        answers = (np.zeros((B, self.L), np.int32), np.zeros(B, np.float32))  # filled as done
        beams, t = self._start(features), 0
        # Until no photo is left: at max_length (step L - 1) every photo is done.
        while t < self.L and len(beams.photo):
            beams, t = self._step(t, beams, answers), t + 1
        return answers

    def _start(self, features) -> _Beams:
        """One beam per photo, from its image: the K beams of the first step would be one.
        With fewer words than beams (top K of W * V needs W * V >= K), K beams, all but one
        at -1e9, which the first step chooses only once the words run out."""
        B, W = len(features), 1 if self.K <= self.V else self.K
        return _Beams(
            photo=np.arange(B),
            state=[np.repeat(np.asarray(s), W, axis=0) for s in self.steps.initial_state(features)],
            tokens=np.full((B, W), START_ID, np.int32),
            alive=np.tile(np.array([[0.0] + [_NEG_INF] * (W - 1)], np.float32), (B, 1)),
            sequences=np.zeros((B, W, self.L), np.int32),
            best_score=np.full(B, _NEG_INF, np.float32),
            best_sequence=np.zeros((B, self.L), np.int32),
        )

    def _step(self, t: int, beams: _Beams, answers) -> _Beams:
        """Word t for every photo still searching; those whose answer is now known leave."""
        candidates, state = self._candidates(t, beams)  # (A, W, V)
        # 1. Hypotheses that end here replace the finished one they beat.
        ended, sequence = _best_ending_now(
            self.normalize(candidates[:, :, END_ID], t + 1), beams.sequences, t
        )
        better = ended > beams.best_score  # (A,) strictly: the earlier one stays on a tie
        best_score = np.where(better, ended, beams.best_score)
        best_sequence = np.where(better[:, None], sequence, beams.best_sequence)
        # 2. Hypotheses that go on (the state is reordered to them by _compact).
        alive, sequences, parent, tokens = _go_on(candidates, beams.sequences, t, self.K)
        width = beams.tokens.shape[1]  # beams per photo in `state`: 1 at the first step, then K
        parent_rows = parent + np.arange(len(parent))[:, None] * width  # (A, K)
        beams = _Beams(beams.photo, state, tokens, alive, sequences, best_score, best_sequence)
        # 3. A photo is done when no live beam can beat its finished one, or at max_length.
        hope = self.normalize(alive.max(axis=1), self.L + 1)  # (A,)
        done = (best_score >= hope) | (t == self.L - 1)
        self._answer(beams, done, answers)
        return _compact(beams, parent_rows, ~done)

    def _candidates(self, t: int, beams: _Beams):
        """log P of each beam followed by each word (A, W, V), and the decoder's next state."""
        log_probs, state = self.steps.step(beams.tokens.reshape(-1), beams.state)
        mask = self.banned_first if t == 0 else self.banned
        log_probs = np.asarray(log_probs, np.float32) + mask  # (A * W, V), a new array
        log_probs = log_probs.reshape(-1, beams.tokens.shape[1], self.V)  # (A, W, V)
        if self.no_repeat_ngram > 1:
            _ban_repeated_ngrams(log_probs, beams.sequences, t, self.no_repeat_ngram)
        return beams.alive[:, :, None] + log_probs, list(state)

    def _answer(self, beams: _Beams, done, answers) -> None:
        """Writes the answers of the rows `done` (A,) bool into (ids (B, L), scores (B,)): the
        best finished hypothesis, or when none finished (a model that never says <end>) the best
        live beam, scored as if it ended at max_length."""
        alive, best_score = beams.alive[done], beams.best_score[done]  # (D, K), (D,)
        live = beams.sequences[done][np.arange(len(alive)), alive.argmax(axis=1)]  # (D, L)
        none_finished = best_score <= _NEG_INF / 2
        sequence = np.where(none_finished[:, None], live, beams.best_sequence[done])
        live_score = self.normalize(alive.max(axis=1), self.L)
        ids, scores = answers
        at = beams.photo[done]  # their rows in the batch
        ids[at] = sequence
        scores[at] = np.where(none_finished, live_score, best_score)


def beam_search(steps, features, vocabulary_size: int, *settings, **named_settings):
    """features (B, D) -> (ids (B, max_length) int32, <pad> after <end>, scores (B,) float32).
    The settings are make_beam_search's, in its order: beam_size, max_length, length_penalty
    (0.7), no_repeat_ngram (0), suppress_unk (True)."""
    search = _BeamSearch(steps, vocabulary_size, *settings, **named_settings)
    return search.run(np.asarray(features, np.float32))


def _search_of(config, vocabulary_size: int):
    """f(steps, features) -> (ids, scores): the search a DecodeConfig asks for."""
    if config.beam_size <= 1:
        return lambda steps, batch: greedy_search(
            steps, batch, vocabulary_size, config.max_length,
            length_penalty=config.length_penalty,
        )  # fmt: skip
    return lambda steps, batch: beam_search(
        steps, batch, vocabulary_size, config.beam_size, config.max_length,
        config.length_penalty, config.no_repeat_ngram,
    )  # fmt: skip


def decode(steps, features, vocabulary_size: int, config, batch_size: int = 512, scores=False):
    """int32 word ids (N, max_length) for features (N, D) with DecodeConfig settings (any object
    with beam_size, max_length, length_penalty and no_repeat_ngram), as make_decoder's f gives.

    Each row holds a caption, then <end> and <pad> (or max_length words and no <end>). With
    scores=True, returns (ids, scores (N,)): log P / length ** length_penalty per caption.
    """
    check_length(config.max_length, getattr(steps, "max_words", None))
    search = _search_of(config, vocabulary_size)
    ids, values = [np.zeros((0, config.max_length), np.int32)], [np.zeros(0, np.float32)]
    for start in range(0, len(features), batch_size):
        batch_ids, batch_scores = search(
            steps, np.asarray(features[start : start + batch_size], np.float32)
        )
        ids.append(batch_ids)
        values.append(batch_scores)
    ids = np.concatenate(ids)
    return (ids, np.concatenate(values)) if scores else ids
