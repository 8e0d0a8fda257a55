"""Greedy and beam search over a batch of images, compiled into one TensorFlow graph each.

Both take a `steps` object with `initial_state(features) -> state` (a list of (B, ...) tensors)
and `step(tokens (B,), state) -> (log-probabilities (B, V), state)`: the trained decoder
(`captioner.model.decoder.DecoderSteps`) or, in tests, a hand-built one.

Beam search ranks hypotheses by log P / length ** length_penalty, where length counts the words
and the <end> token. Finished hypotheses are kept aside (the best one per image); an image
leaves the search as soon as no live beam of its own can beat that one (the batch goes on with
the others, so the decoder runs on fewer rows step by step), and gets its best live beam when
none finished by max_length. Each image's answer is the same in any batch, or alone.

With `with_attention`, both also return the attention weights that predicted each word of the
answer (B, max_length, cells): the maps ride in the decoder's state (_KeepingMaps), so beam
search's reordering of the state along the chosen parents reorders them too, and the answer's
maps are its own path's. Without it the compiled graphs are those of plain decoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from captioner.config import check_length
from captioner.data.text import END_ID, PAD_ID, START_ID, UNK_ID

if TYPE_CHECKING:
    import tensorflow as tf

_NEG_INF = -1e9  # finite, so that -inf - -inf never makes a NaN


def _banned_masks(vocabulary_size: int, suppress_unk: bool):
    """Additive masks (V,): words never generated, and those plus <end> for the first word."""
    import tensorflow as tf

    banned = [PAD_ID, START_ID] + ([UNK_ID] if suppress_unk else [])
    always = np.isin(np.arange(vocabulary_size), banned) * _NEG_INF
    # An empty caption is never an answer: the first word may not be <end>.
    first = np.where(np.arange(vocabulary_size) == END_ID, _NEG_INF, always)
    return tf.constant(always, tf.float32), tf.constant(first, tf.float32)


def _features_signature():
    import tensorflow as tf

    # One trace for every batch size: the last, smaller batch does not recompile.
    return [tf.TensorSpec([None, None], tf.float32)]


class _KeepingMaps:
    """A decoder's steps (with step_with_attention) whose state also holds, per row, the
    attention weights of every word so far (B, max_length, cells) and the next word's position
    (B,): whatever reorders the state (beam search's gathers) reorders the maps with it."""

    def __init__(self, steps, max_length: int):
        self.steps, self.max_length, self.cells = steps, max_length, steps.cells

    def initial_state(self, features):
        import tensorflow as tf

        batch = tf.shape(features)[0]
        maps = tf.zeros([batch, self.max_length, self.cells])
        return [*self.steps.initial_state(features), tf.zeros([batch], tf.int32), maps]

    def step(self, tokens, state):
        import tensorflow as tf

        position, maps = state[-2:]
        log_probs, state, weights = self.steps.step_with_attention(tokens, state[:-2])
        at = tf.one_hot(position, self.max_length)[:, :, None]  # (B, L, 1): 1 at the position
        return log_probs, [*state, position + 1, maps + at * weights[:, None]]


def _word_by_word(steps, features, max_length, choose, banned, banned_first):
    """Runs the decoder from the image, taking `choose(log_probs, t)` as each next word, until
    every row has said <end>. Returns ids (B, max_length), <pad> after <end>, each row's
    log-probability (B,) and length (B,), words and <end> counted, and the decoder's last
    state. Graph code."""
    import tensorflow as tf

    state = steps.initial_state(features)
    batch = tf.shape(features)[0]
    tokens = tf.fill([batch], START_ID)
    finished = tf.zeros([batch], tf.bool)
    log_p, length = tf.zeros([batch]), tf.zeros([batch], tf.int32)
    output = tf.TensorArray(tf.int32, size=max_length, element_shape=[None])
    for t in tf.range(max_length):
        log_probs, state = steps.step(tokens, state)
        log_probs += banned_first if t == 0 else banned
        tokens = choose(log_probs, t)
        chosen = tf.gather(log_probs, tokens, batch_dims=1)  # (B,)
        log_p += tf.where(finished, 0.0, chosen)
        length += tf.cast(~finished, tf.int32)
        tokens = tf.where(finished, PAD_ID, tokens)
        output = output.write(t, tokens)
        finished = finished | tf.equal(tokens, END_ID)
        if tf.reduce_all(finished):
            break
    ids = tf.transpose(output.stack())  # (B, steps run)
    return tf.pad(ids, [[0, 0], [0, max_length - tf.shape(ids)[1]]]), log_p, length, state


def make_greedy_search(
    steps,
    vocabulary_size: int,
    max_length: int,
    suppress_unk: bool = True,
    length_penalty: float = 0.0,
    with_attention: bool = False,
):
    """Returns a compiled f(features (B, D)) -> (ids (B, max_length), scores (B,)), <pad> after
    <end> in ids; each caption's score is log P / length ** length_penalty, the number beam
    search ranks by (length counts <end>; 0.0: log P itself), so that greedy and beam search
    answer alike. with_attention (steps with step_with_attention): f returns (ids, scores,
    attention (B, max_length, cells)), the weights that predicted each word (zeros after <end>).
    """
    import tensorflow as tf

    check_length(max_length, getattr(steps, "max_words", None))
    banned, banned_first = _banned_masks(vocabulary_size, suppress_unk)
    if with_attention:
        steps = _KeepingMaps(steps, max_length)

    def most_likely(log_probs, t):
        return tf.argmax(log_probs, axis=-1, output_type=tf.int32)

    @tf.function(input_signature=_features_signature())
    def greedy(features):
        ids, log_p, length, state = _word_by_word(
            steps, features, max_length, most_likely, banned, banned_first
        )
        scores = log_p / tf.pow(tf.cast(length, tf.float32), float(length_penalty))
        return (ids, scores, _words_only(state[-1], ids)) if with_attention else (ids, scores)

    return greedy


def make_sampler(
    steps, vocabulary_size: int, max_length: int, samples: int, suppress_unk: bool = True
):
    """Returns a compiled f(features (B, D), seed (2,) int32) -> ids (B * samples, max_length):
    captions drawn word by word from the model's distribution, `samples` per image (rows
    image-major). The same seed draws the same captions."""
    import tensorflow as tf

    check_length(max_length, getattr(steps, "max_words", None))
    banned, banned_first = _banned_masks(vocabulary_size, suppress_unk)

    @tf.function(input_signature=_features_signature() + [tf.TensorSpec([2], tf.int32)])
    def sample(features, seed):
        def draw(log_probs, t):
            step_seed = tf.random.experimental.stateless_fold_in(seed, t)
            drawn = tf.random.stateless_categorical(log_probs, 1, step_seed, dtype=tf.int32)
            return drawn[:, 0]

        features = tf.repeat(features, samples, axis=0)
        return _word_by_word(steps, features, max_length, draw, banned, banned_first)[0]

    return sample


def _words_only(maps, ids):
    """maps (B, L, cells) with zeros where ids (B, L) hold <end> or <pad>: one map per word."""
    import tensorflow as tf

    is_word = (ids != END_ID) & (ids != PAD_ID)
    return maps * tf.cast(is_word, maps.dtype)[:, :, None]


def _repeated_ngram_bans(sequences, t, n: int):
    """Indices [b, k, token] of tokens that would repeat an n-gram already in the beam.

    sequences: (B, K, L) int32 words so far (valid up to position t).
    """
    import tensorflow as tf

    length = sequences.shape[-1]
    positions = tf.range(length - n + 1)  # j: start of an earlier n-gram
    match = positions + n - 1 < t  # (L-n+1,) the earlier n-gram is complete
    for offset in range(n - 1):
        earlier = sequences[:, :, offset : length - n + 1 + offset]  # (B, K, L-n+1)
        current = tf.gather(sequences, tf.maximum(t - n + 1 + offset, 0), axis=2)  # (B, K)
        match = match & tf.equal(earlier, current[:, :, None])
    match = match & (t >= n - 1)
    where = tf.cast(tf.where(match), tf.int32)  # (M, 3): b, k, j
    tokens = tf.gather_nd(sequences, tf.stack([where[:, 0], where[:, 1], where[:, 2] + n - 1], 1))
    return tf.stack([where[:, 0], where[:, 1], tokens], axis=1)


def _ban_repeated_ngrams(log_probs, sequences, t, n: int):
    """log_probs (B, K, V) with -inf for every word that would repeat an n-gram of its beam."""
    import tensorflow as tf

    bans = _repeated_ngram_bans(sequences, t, n)
    return tf.tensor_scatter_nd_update(
        log_probs, bans, tf.fill([tf.shape(bans)[0]], float(_NEG_INF))
    )


def _best_ending_now(ended, sequences, t):
    """Each image's best hypothesis among those that end at step t (t words + <end>).

    ended: (B, K) normalized scores of ending now; sequences: (B, K, L) words so far.
    Returns its score (B,) and its words (B, L), <end> at position t.
    """
    import tensorflow as tf

    k_best = tf.argmax(ended, axis=1, output_type=tf.int32)
    sequence = tf.gather(sequences, k_best, batch_dims=1)  # (B, L)
    sequence = tf.where(tf.range(tf.shape(sequences)[2])[None] == t, END_ID, sequence)
    return tf.reduce_max(ended, axis=1), sequence


def _go_on(candidates, sequences, t, K):
    """The K best (beam, word) pairs other than <end> become the new beams.

    candidates: (B, W, V) log P of each of W beams followed by each word; sequences: (B, W, L).
    Returns the K new beams' log P (B, K), their words (B, K, L), the beam each continues
    (B, K) and its last word (B, K).
    """
    import tensorflow as tf

    B, W, V = tf.shape(candidates)[0], candidates.shape[1], candidates.shape[2]
    candidates = tf.where(tf.range(V) == END_ID, float(_NEG_INF), candidates)
    alive, flat = tf.math.top_k(tf.reshape(candidates, [B, W * V]), k=K)  # (B, K)
    parent, tokens = flat // V, flat % V
    sequences = tf.gather(sequences, parent, batch_dims=1)
    L = tf.shape(sequences)[2]
    sequences = tf.where(tf.range(L)[None, None] == t, tokens[:, :, None], sequences)
    return alive, sequences, parent, tokens


class _Beams(NamedTuple):
    """Beam search's working set: the A photos of the batch still searching, K beams each
    (one before the first word: the K beams of a photo would all be the same).

    A photo leaves it at the step its answer is known, so that later steps run the decoder on
    the photos still searching only, not on the whole batch until its slowest photo is done.
    """

    photo: tf.Tensor  # (A,) int32: which row of the batch, and of the answers, each one is
    state: list  # the decoder's state, (A * K, ...) rows, photo-major
    tokens: tf.Tensor  # (A, K) each beam's last word
    alive: tf.Tensor  # (A, K) log P of the live beams
    sequences: tf.Tensor  # (A, K, L) their words so far
    best_score: tf.Tensor  # (A,) the best finished hypothesis, normalized; -1e9 while none
    best_sequence: tf.Tensor  # (A, L) its words and <end>
    # With attention, its maps (A, L, cells); () without: an empty structure to tf.while_loop.
    # The live beams' maps are in `state` (_KeepingMaps).
    best_maps: tf.Tensor | tuple = ()


def _compact(beams: _Beams, parent_rows, keep) -> _Beams:
    """The rows `keep` (A',) of the photos that go on, in every tensor of `beams`.

    beams.state is still in the order of the step before; `parent_rows` (A, K) names the row
    of it each new beam continues, so one gather both reorders the state and drops finished
    photos.
    """
    import tensorflow as tf

    rows = tf.reshape(tf.gather(parent_rows, keep), [-1])  # (A' * K,)
    return _Beams(
        photo=tf.gather(beams.photo, keep),
        state=[tf.ensure_shape(tf.gather(s, rows), s.shape) for s in beams.state],
        tokens=tf.gather(beams.tokens, keep),
        alive=tf.gather(beams.alive, keep),
        sequences=tf.gather(beams.sequences, keep),
        best_score=tf.gather(beams.best_score, keep),
        best_sequence=tf.gather(beams.best_sequence, keep),
        best_maps=tf.nest.map_structure(lambda maps: tf.gather(maps, keep), beams.best_maps),
    )


def _rows_may_shrink(loop_vars):
    """Shape invariants for a while loop whose tensors lose rows: the first axis varies."""
    import tensorflow as tf

    def invariant(x):
        return tf.TensorShape([None, *x.shape[1:]]) if x.shape.rank else x.shape

    return tf.nest.map_structure(invariant, loop_vars)


def _where(mask):
    """The indices (N,) int32 where the boolean vector `mask` is true."""
    import tensorflow as tf

    return tf.cast(tf.where(mask)[:, 0], tf.int32)


class _BeamSearch:
    """Beam search of width K up to L words, over a batch of photos; `run` is graph code.

    Each photo searches until its answer is known: its best finished hypothesis scores at
    least `hope`, its best live beam's log P normalized by (L + 1) ** length_penalty. No later
    hypothesis can then replace it: log P only falls as words are added, and a log P <= 0
    divided by a length ** penalty of at most L (penalty >= 0) is at most `hope`, while only a
    strictly higher score replaces the best. So a photo's answer is the one it would get by
    searching on to max_length, whatever the other photos of the batch still do. A photo for
    which nothing finished keeps best = -1e9 below its hope (unless every live beam went through
    about (L + 1) ** penalty banned words), so it reaches max_length and falls back on its best
    live beam there, as before.
    """

    def __init__(self, steps, vocabulary_size, beam_size, max_length, length_penalty,
                 no_repeat_ngram, suppress_unk, with_attention=False):  # fmt: skip
        self.steps, self.V, self.K, self.L = steps, vocabulary_size, beam_size, max_length
        self.alpha, self.no_repeat_ngram = float(length_penalty), no_repeat_ngram
        self.banned, self.banned_first = _banned_masks(vocabulary_size, suppress_unk)
        # Decided when the graph is traced: without attention, none of its code is in it.
        self.with_attention = with_attention
        if with_attention:
            self.steps = _KeepingMaps(steps, max_length)

    def normalize(self, log_p, length):
        """log P / length ** length_penalty: what hypotheses are ranked by."""
        import tensorflow as tf

        return log_p / tf.pow(tf.cast(length, tf.float32), self.alpha)

    def run(self, features):
        """features (B, D) -> ids (B, L), <pad> after <end>, and scores (B,); with attention
        also the answers' maps (B, L, cells), zeros after their last word."""
        import tensorflow as tf

        B = tf.shape(features)[0]
        answers = (tf.zeros([B, self.L], tf.int32), tf.zeros([B]))  # filled as photos finish
        if self.with_attention:
            answers += (tf.zeros([B, self.L, self.steps.cells]),)
        # The first word from one beam per photo, the next ones from K: two graphs of a step.
        loop_vars = self._step(tf.constant(0), self._start(features), answers)
        # Until no photo is left: at max_length (step L - 1) every photo is done.
        _, _, answers = tf.while_loop(
            lambda t, beams, answers: tf.size(beams.photo) > 0,
            self._step,
            loop_vars,
            shape_invariants=_rows_may_shrink(loop_vars),
            maximum_iterations=self.L,
        )
        if self.with_attention:
            return answers[0], answers[1], _words_only(answers[2], answers[0])
        return answers

    def _start(self, features) -> _Beams:
        """One beam per photo, from its image: the K beams of the first step would be one.
        With fewer words than beams (top K of W * V needs W * V >= K), K beams, all but one
        at -1e9, which the first step chooses only once the words run out."""
        import tensorflow as tf

        B, W = tf.shape(features)[0], 1 if self.K <= self.V else self.K
        return _Beams(
            photo=tf.range(B),
            state=[tf.repeat(s, W, axis=0) for s in self.steps.initial_state(features)],
            tokens=tf.fill([B, W], START_ID),
            alive=tf.tile(tf.constant([[0.0] + [_NEG_INF] * (W - 1)]), [B, 1]),
            sequences=tf.zeros([B, W, self.L], tf.int32),
            best_score=tf.fill([B], float(_NEG_INF)),
            best_sequence=tf.zeros([B, self.L], tf.int32),
            best_maps=tf.zeros([B, self.L, self.steps.cells]) if self.with_attention else (),
        )

    def _step(self, t, beams: _Beams, answers):
        """Word t for every photo still searching; those whose answer is now known leave."""
        import tensorflow as tf

        candidates, state = self._candidates(t, beams)  # (A, K, V)
        # 1. Hypotheses that end here replace the finished one they beat.
        ending = self.normalize(candidates[:, :, END_ID], t + 1)
        ended, sequence = _best_ending_now(ending, beams.sequences, t)
        better = ended > beams.best_score
        best_score = tf.where(better, ended, beams.best_score)
        best_sequence = tf.where(better[:, None], sequence, beams.best_sequence)
        best_maps = self._best_maps(ending, state, better, beams.best_maps)
        # 2. Hypotheses that go on (the state is reordered to them by _compact).
        alive, sequences, parent, tokens = _go_on(candidates, beams.sequences, t, self.K)
        width = beams.tokens.shape[1]  # beams per photo in `state`: 1 at the first step, then K
        parent_rows = parent + tf.range(tf.shape(parent)[0])[:, None] * width
        beams = _Beams(beams.photo, state, tokens, alive, sequences, best_score, best_sequence,
                       best_maps)  # fmt: skip
        # 3. A photo is done when no live beam can beat its finished one, or at max_length.
        hope = self.normalize(tf.reduce_max(alive, axis=1), self.L + 1)
        done = (best_score >= hope) | (t == self.L - 1)
        answers = self._answer(beams, _where(done), answers, parent_rows)
        return t + 1, _compact(beams, parent_rows, _where(~done)), answers

    def _best_maps(self, ending, state, better, best_maps):
        """The maps of the best finished hypothesis (A, L, cells): where one ending now beats
        the one before, those of the beam _best_ending_now took (the same arg-max of `ending`,
        (A, W)), from its row of the step's `state` (not reordered yet). () without attention."""
        import tensorflow as tf

        if not self.with_attention:
            return best_maps
        k_best = tf.argmax(ending, axis=1, output_type=tf.int32)  # (A,)
        rows = k_best + tf.range(tf.shape(k_best)[0]) * ending.shape[1]
        return tf.where(better[:, None, None], tf.gather(state[-1], rows), best_maps)

    def _candidates(self, t, beams: _Beams):
        """log P of each beam followed by each word (A, K, V), and the decoder's next state."""
        import tensorflow as tf

        log_probs, state = self.steps.step(tf.reshape(beams.tokens, [-1]), beams.state)
        log_probs += tf.where(t == 0, self.banned_first, self.banned)
        log_probs = tf.reshape(log_probs, [-1, beams.tokens.shape[1], self.V])
        if self.no_repeat_ngram > 1:
            log_probs = _ban_repeated_ngrams(log_probs, beams.sequences, t, self.no_repeat_ngram)
        return beams.alive[:, :, None] + log_probs, state

    def _answer(self, beams: _Beams, done, answers, parent_rows):
        """Writes the answers of the rows `done` into (ids (B, L), scores (B,)[, maps (B, L,
        cells)]): the best finished hypothesis, or when none finished (a model that never says
        <end>) the best live beam, scored as if it ended at max_length."""
        import tensorflow as tf

        alive = tf.gather(beams.alive, done)
        best_score = tf.gather(beams.best_score, done)
        k_live = tf.argmax(alive, 1, output_type=tf.int32)
        live = tf.gather(tf.gather(beams.sequences, done), k_live, batch_dims=1)
        none_finished = best_score <= _NEG_INF / 2
        sequence = tf.where(none_finished[:, None], live, tf.gather(beams.best_sequence, done))
        live_score = self.normalize(tf.reduce_max(alive, axis=1), self.L)
        score = tf.where(none_finished, live_score, best_score)
        found = [sequence, score]
        if self.with_attention:  # the live beam's maps: its parent's row of the step's state
            live_rows = tf.gather(tf.gather(parent_rows, done), k_live, batch_dims=1)
            live_maps = tf.gather(beams.state[-1], live_rows)
            best_maps = tf.gather(beams.best_maps, done)
            found.append(tf.where(none_finished[:, None, None], live_maps, best_maps))
        at = tf.gather(beams.photo, done)[:, None]  # their rows in the batch
        return tuple(tf.tensor_scatter_nd_update(a, at, f) for a, f in zip(answers, found))


def make_beam_search(
    steps,
    vocabulary_size: int,
    beam_size: int,
    max_length: int,
    length_penalty: float = 0.7,
    no_repeat_ngram: int = 0,
    suppress_unk: bool = True,
    with_attention: bool = False,
):
    """Returns a compiled f(features (B, D)) -> (ids (B, max_length), scores (B,)); with
    attention (steps with step_with_attention), (ids, scores, attention (B, max_length,
    cells)): each answer's own weights at each of its words, zeros after them."""
    import tensorflow as tf

    check_length(max_length, getattr(steps, "max_words", None))
    search = _BeamSearch(
        steps, vocabulary_size, beam_size, max_length, length_penalty, no_repeat_ngram,
        suppress_unk, with_attention,
    )  # fmt: skip
    return tf.function(search.run, input_signature=_features_signature())


def make_search(steps, vocabulary_size: int, config, with_attention: bool = False):
    """Returns a compiled f(features (B, D)) -> (ids (B, max_length), scores (B,)) with the
    DecodeConfig settings: greedy for beam_size 1, else beam search; scores are log P /
    length ** length_penalty either way. with_attention: (ids, scores, attention) as above."""
    if config.beam_size <= 1:
        return make_greedy_search(
            steps, vocabulary_size, config.max_length, length_penalty=config.length_penalty,
            with_attention=with_attention,
        )  # fmt: skip
    return make_beam_search(
        steps,
        vocabulary_size,
        config.beam_size,
        config.max_length,
        config.length_penalty,
        config.no_repeat_ngram,
        with_attention=with_attention,
    )


def make_decoder(
    steps, vocabulary_size: int, config, batch_size: int = 512, scores=False, attention=False
):
    """Returns f(features (N, D)) -> int32 word ids (N, max_length), with DecodeConfig settings
    (greedy for beam_size 1, else beam search).

    Each row holds a caption, then <end> and <pad> (or max_length words and no <end>). The
    search is compiled once and reused for every batch of `batch_size` images. With scores=True,
    f returns (ids, scores (N,)): log P / length ** length_penalty per caption, greedy or beam.
    With attention=True (a decoder that attends: steps.cells > 0), f returns (ids, scores,
    attention (N, max_length, cells)), the same search carrying each answer's own weights.
    """
    search = make_search(steps, vocabulary_size, config, with_attention=attention)
    empty = [np.zeros((0, config.max_length), np.int32), np.zeros(0, np.float32)]
    if attention:
        empty.append(np.zeros((0, config.max_length, steps.cells), np.float32))

    def decode(features: np.ndarray):
        parts = [empty]
        for start in range(0, len(features), batch_size):
            result = search(np.asarray(features[start : start + batch_size], np.float32))
            parts.append([r.numpy() for r in result])
        outputs = [np.concatenate(column) for column in zip(*parts)]
        if attention:
            return tuple(outputs)
        return (outputs[0], outputs[1]) if scores else outputs[0]

    return decode
