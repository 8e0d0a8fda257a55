"""Greedy and beam search over a batch of images, compiled into one TensorFlow graph each.

Both take a `steps` object with `initial_state(features) -> state` (a list of (B, ...) tensors)
and `step(tokens (B,), state) -> (log-probabilities (B, V), state)`: the trained decoder
(`captioner.model.DecoderSteps`) or, in tests, a hand-built one.

Beam search ranks hypotheses by log P / length ** length_penalty, where length counts the words
and the <end> token. Finished hypotheses are kept aside (the best one per image); the search
stops early once no live beam can beat it, and returns the best live beam when none finished.
"""

from __future__ import annotations

import numpy as np

from captioner.text import END_ID, PAD_ID, START_ID, UNK_ID

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


def _word_by_word(steps, features, max_length, choose, banned, banned_first):
    """Runs the decoder from the image, taking `choose(log_probs, t)` as each next word, until
    every row has said <end>. Returns ids (B, max_length), <pad> after <end>, and each row's
    log-probability (B,) and length (B,), words and <end> counted. Graph code."""
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
    return tf.pad(ids, [[0, 0], [0, max_length - tf.shape(ids)[1]]]), log_p, length


def make_greedy_search(
    steps,
    vocabulary_size: int,
    max_length: int,
    suppress_unk: bool = True,
    length_penalty: float | None = None,
):
    """Returns a compiled f(features (B, D)) -> ids (B, max_length), <pad> after <end>.

    With a length_penalty, f returns (ids, scores (B,)) as beam search does: each caption's
    log P / length ** length_penalty, the number beam search ranks by (length counts <end>).
    """
    import tensorflow as tf

    banned, banned_first = _banned_masks(vocabulary_size, suppress_unk)

    def most_likely(log_probs, t):
        return tf.argmax(log_probs, axis=-1, output_type=tf.int32)

    @tf.function(input_signature=_features_signature())
    def greedy(features):
        ids, log_p, length = _word_by_word(
            steps, features, max_length, most_likely, banned, banned_first
        )
        if length_penalty is None:
            return ids
        return ids, log_p / tf.pow(tf.cast(length, tf.float32), float(length_penalty))

    return greedy


def make_sampler(
    steps, vocabulary_size: int, max_length: int, samples: int, suppress_unk: bool = True
):
    """Returns a compiled f(features (B, D), seed (2,) int32) -> ids (B * samples, max_length):
    captions drawn word by word from the model's distribution, `samples` per image (rows
    image-major). The same seed draws the same captions."""
    import tensorflow as tf

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


def _go_on(candidates, sequences, state, t):
    """The K best (beam, word) pairs other than <end> become the new beams.

    candidates: (B, K, V) log P of each beam followed by each word. Returns the beams' log P
    (B, K), their words (B, K, L), the decoder state reordered to them, and their last words.
    """
    import tensorflow as tf

    B, K, V = tf.shape(candidates)[0], candidates.shape[1], candidates.shape[2]
    candidates = tf.where(tf.range(V) == END_ID, float(_NEG_INF), candidates)
    alive, flat = tf.math.top_k(tf.reshape(candidates, [B, K * V]), k=K)  # (B, K)
    parent, tokens = flat // V, flat % V
    sequences = tf.gather(sequences, parent, batch_dims=1)
    L = tf.shape(sequences)[2]
    sequences = tf.where(tf.range(L)[None, None] == t, tokens[:, :, None], sequences)
    rows = tf.reshape(parent + tf.range(B)[:, None] * K, [-1])
    state = [tf.ensure_shape(tf.gather(s, rows), s.shape) for s in state]
    return alive, sequences, state, tf.reshape(tokens, [-1])


def make_beam_search(
    steps,
    vocabulary_size: int,
    beam_size: int,
    max_length: int,
    length_penalty: float = 0.7,
    no_repeat_ngram: int = 0,
    suppress_unk: bool = True,
):
    """Returns a compiled f(features (B, D)) -> (ids (B, max_length), scores (B,))."""
    import tensorflow as tf

    K, V, L = beam_size, vocabulary_size, max_length
    banned, banned_first = _banned_masks(V, suppress_unk)
    alpha = float(length_penalty)

    def normalize(scores, length):
        return scores / tf.pow(tf.cast(length, tf.float32), alpha)

    @tf.function(input_signature=_features_signature())
    def beam(features):
        B = tf.shape(features)[0]
        # Every beam of an image starts from the image's state: (B*K, ...) rows, image-major.
        state = [tf.repeat(s, K, axis=0) for s in steps.initial_state(features)]
        tokens = tf.fill([B * K], START_ID)
        alive = tf.tile(tf.constant([[0.0] + [_NEG_INF] * (K - 1)]), [B, 1])  # (B, K) log P
        sequences = tf.zeros([B, K, L], tf.int32)
        best_score = tf.fill([B], float(_NEG_INF))  # best finished, normalized
        best_sequence = tf.zeros([B, L], tf.int32)
        for t in tf.range(L):
            log_probs, state = steps.step(tokens, state)
            mask = banned_first if t == 0 else banned
            log_probs = tf.reshape(log_probs + mask, [B, K, V])
            if no_repeat_ngram > 1:
                log_probs = _ban_repeated_ngrams(log_probs, sequences, t, no_repeat_ngram)
            candidates = alive[:, :, None] + log_probs  # (B, K, V)
            # 1. Hypotheses that end here replace the finished one they beat.
            ended = normalize(candidates[:, :, END_ID], t + 1)
            ended_best, ended_sequence = _best_ending_now(ended, sequences, t)
            better = ended_best > best_score
            best_score = tf.where(better, ended_best, best_score)
            best_sequence = tf.where(better[:, None], ended_sequence, best_sequence)
            # 2. Hypotheses that go on.
            alive, sequences, state, tokens = _go_on(candidates, sequences, state, t)
            # 3. Stop when no live beam can still beat the finished one at any length.
            hope = normalize(tf.reduce_max(alive, axis=1), L + 1)
            if tf.reduce_all(best_score >= hope):
                break
        # No hypothesis finished (e.g. a model that never says <end>): take the best live one.
        live_best = tf.argmax(alive, axis=1, output_type=tf.int32)
        live_score = normalize(tf.reduce_max(alive, axis=1), L)
        none_finished = best_score <= _NEG_INF / 2
        best_sequence = tf.where(
            none_finished[:, None], tf.gather(sequences, live_best, batch_dims=1), best_sequence
        )
        return best_sequence, tf.where(none_finished, live_score, best_score)

    return beam


def make_decoder(steps, vocabulary_size: int, config, batch_size: int = 512, scores=False):
    """Returns f(features (N, D)) -> int32 word ids (N, max_length), with DecodeConfig settings.

    Each row holds a caption, then <end> and <pad> (or max_length words and no <end>). The
    search is compiled once and reused for every batch of `batch_size` images. With scores=True,
    f returns (ids, scores (N,)): log P / length ** length_penalty per caption, greedy or beam.
    """
    if config.beam_size <= 1:
        penalty = config.length_penalty if scores else None
        search = make_greedy_search(
            steps, vocabulary_size, config.max_length, length_penalty=penalty
        )
    else:
        search = make_beam_search(
            steps,
            vocabulary_size,
            config.beam_size,
            config.max_length,
            config.length_penalty,
            config.no_repeat_ngram,
        )

    def decode(features: np.ndarray):
        ids, values = [np.zeros((0, config.max_length), np.int32)], [np.zeros(0, np.float32)]
        for start in range(0, len(features), batch_size):
            result = search(np.asarray(features[start : start + batch_size], np.float32))
            if isinstance(result, tuple):  # beam search, or greedy with scores
                result, batch_scores = result
                values.append(batch_scores.numpy())
            ids.append(result.numpy())
        ids = np.concatenate(ids)
        return (ids, np.concatenate(values)) if scores else ids

    return decode
