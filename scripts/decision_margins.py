"""How close the nearest decision of greedy and beam search is for one photo: the margin a
pinned caption in the tests has against other CPUs' kernels, which move scores by ~1e-7.

    python scripts/decision_margins.py tests/data/chelsea.jpg            # the shipped model
    python scripts/decision_margins.py photo.jpg --run runs/a --run runs/b

Replays both searches step by step in NumPy over the model's one-step function, with the rules
of captioner.model.search (banned words, no <end> first, no repeated n-grams, log P / length **
length_penalty, the stop rule), records every comparison a different score could flip, and
checks that the replay found the compiled search's caption. Decisions that could not change the
answer (which of two beams ends, both far below the best finished one) are left out.
"""

from __future__ import annotations

import argparse

import numpy as np

from captioner.data.text import END_ID, PAD_ID, START_ID, UNK_ID

IRRELEVANT = 0.05  # an ending this far below the best finished hypothesis cannot matter
BANNED = [PAD_ID, START_ID, UNK_ID]


class Replay:
    """The decoder's steps, eagerly, with the banned words masked."""

    def __init__(self, captioner, photo):
        import tensorflow as tf

        from captioner.model.ensembles import decoder_steps

        self.tf, self.steps = tf, decoder_steps(captioner.runs)
        self.features = tf.constant(captioner.features(captioner.prepare(photo)[None]))

    def start(self):
        return self.steps.initial_state(self.features)

    def step(self, tokens, state, first):
        log_probs, state = self.steps.step(self.tf.constant(tokens, self.tf.int32), state)
        log_probs = log_probs.numpy().astype(np.float64)
        log_probs[:, BANNED] = -1e9
        if first:
            log_probs[:, END_ID] = -1e9  # an empty caption is never an answer
        return log_probs, state


def greedy(replay, max_length):
    """Its words and the smallest lead of a chosen word over the next, with its step."""
    state, token, words, leads = replay.start(), START_ID, [], []
    for t in range(max_length):
        log_probs, state = replay.step([token], state, t == 0)
        first, second = np.argsort(-log_probs[0])[:2]
        leads.append((log_probs[0, first] - log_probs[0, second], t))
        token = int(first)
        if token == END_ID:
            break
        words.append(token)
    return words, min(leads)


def _ban_repeats(log_probs, sequences, n):
    for k, words in enumerate(sequences):
        if n > 1 and len(words) >= n - 1:
            tail = tuple(words[len(words) - n + 1 :])
            for j in range(len(words) - n + 1):
                if tuple(words[j : j + n - 1]) == tail:
                    log_probs[k, words[j + n - 1]] = -1e9


def beam(replay, decoding, vocabulary_size):
    """Its words, score, and every decision's gap as (gap, what, step)."""
    K, L, alpha = decoding.beam_size, decoding.max_length, decoding.length_penalty
    state, sequences, alive, tokens = replay.start(), [[]], np.zeros(1), [START_ID]
    best, best_words, decisions = -1e9, None, []
    for t in range(L):
        log_probs, state = replay.step(tokens, state, t == 0)
        _ban_repeats(log_probs, sequences, decoding.no_repeat_ngram)
        candidates = alive[:, None] + log_probs
        ending = candidates[:, END_ID] / (t + 1) ** alpha
        k_best = int(np.argmax(ending))
        ranked = np.sort(ending)[::-1]
        if len(ranked) > 1 and ranked[1] > -1e8 and ranked[0] > best - IRRELEVANT:
            decisions.append((ranked[0] - ranked[1], "which beam ends", t))
        if best > -1e8 and ending[k_best] > -1e8:
            decisions.append((abs(ending[k_best] - best), "an ending replaces the best", t))
        if ending[k_best] > best:
            best, best_words = ending[k_best], sequences[k_best]
        candidates[:, END_ID] = -1e9
        flat = candidates.reshape(-1)
        order = np.argsort(-flat)
        decisions.append((flat[order[K - 1]] - flat[order[K]], f"beam {K} kept over {K + 1}", t))
        parent, tokens = order[:K] // vocabulary_size, order[:K] % vocabulary_size
        sequences = [sequences[p] + [int(w)] for p, w in zip(parent, tokens)]
        alive, tokens = flat[order[:K]], [int(w) for w in tokens]
        state = [replay.tf.gather(s, parent) for s in state]
        hope = alive.max() / (L + 1) ** alpha
        decisions.append((abs(best - hope), "done or not", t))
        if best >= hope:
            break
    return best_words, best, sorted(decisions)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photo")
    parser.add_argument("--run", action="append", default=[], help="default: the shipped model")
    args = parser.parse_args()
    from captioner import Captioner

    captioner = Captioner.load(*args.run)
    decoding, words = captioner.decoding(), captioner.vocabulary
    ids, (lead, t) = greedy(Replay(captioner, args.photo), decoding.max_length)
    compiled = captioner.caption(args.photo, beam=1)
    assert " ".join(words.decode(ids)) == compiled, (words.decode(ids), compiled)
    print(f"greedy: {compiled}\n  closest decision {lead:.5f} (word {t + 1})")
    ids, score, decisions = beam(Replay(captioner, args.photo), decoding, len(words))
    compiled, compiled_score = captioner.caption(args.photo, scores=True)
    assert " ".join(words.decode(ids)) == compiled, (words.decode(ids), compiled)
    print(f"beam {decoding.beam_size}: {compiled} ({compiled_score:.7f}; replayed {score:.7f})")
    for gap, what, t in decisions[:3]:
        print(f"  {gap:.5f}  {what}, step {t + 1}")


if __name__ == "__main__":
    main()
