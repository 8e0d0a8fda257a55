"""BLEU against values worked out by hand."""

from __future__ import annotations

import pytest

from captioner.metrics import corpus_bleu_scores

HYPOTHESES = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "runs", "in", "the", "park"]]
REFERENCES = [
    [["the", "cat", "is", "on", "the", "mat"], "there is a cat on the mat".split()],
    [["a", "dog", "runs", "in", "the", "park"]],
]


def test_corpus_bleu_matches_hand_computed_precisions():
    # Clipped n-gram matches over both captions: 1-grams 5+6 of 6+6, 2-grams 3+5 of 5+5,
    # 3-grams 1+4 of 4+4, 4-grams 0+3 of 3+3; hypothesis and closest reference lengths are
    # equal (12 words), so there is no brevity penalty.
    p1, p2, p3, p4 = 11 / 12, 8 / 10, 5 / 8, 3 / 6
    scores = corpus_bleu_scores(REFERENCES, HYPOTHESES)
    assert scores["BLEU-1"] == pytest.approx(p1)
    assert scores["BLEU-2"] == pytest.approx((p1 * p2) ** (1 / 2))
    assert scores["BLEU-3"] == pytest.approx((p1 * p2 * p3) ** (1 / 3))
    assert scores["BLEU-4"] == pytest.approx((p1 * p2 * p3 * p4) ** (1 / 4))


def test_short_captions_pay_the_brevity_penalty():
    import math

    scores = corpus_bleu_scores([[["a", "dog", "runs", "in", "the", "park"]]], [["a", "dog"]])
    assert scores["BLEU-1"] == pytest.approx(math.exp(1 - 6 / 2))


def test_cider_d_matches_hand_computed_values():
    import math

    from captioner.metrics import cider_d

    references = [[["a", "dog", "runs"]], [["a", "cat"]]]
    # Document frequencies: "a" is in both images (idf 0); every other n-gram in one (idf
    # log 2 = L). Image 1: hypothesis 1-grams {dog: L} against {dog: L, runs: L}: L² / (L·√2L)
    # = 1/√2; 2-grams {a dog} against {a dog, dog runs}: 1/√2 too; no 3- or 4-grams. Lengths
    # (bigram counts) 1 and 2: penalty exp(-1/72). Image 2 matches exactly: (1 + 1) / 4 x 10.
    mean, scores = cider_d(references, [["a", "dog"], ["a", "cat"]])
    expected = [10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72), 5.0]
    assert scores == pytest.approx(expected)
    assert mean == pytest.approx(sum(expected) / 2)
    assert cider_d(references, [["a", "cat"], ["a", "dog"]])[1] == pytest.approx([0.0, 0.0])
