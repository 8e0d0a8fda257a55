"""Caption scores computed the standard way.

BLEU: corpus BLEU (Papineni et al. 2002) from nltk on word tokens, every reference caption of
each image, cumulative uniform weights (BLEU-n averages the 1..n-gram precisions), no smoothing.
References and hypotheses are cleaned the same way as training captions (lower case, no
punctuation, one-letter words kept).
"""

from __future__ import annotations

BLEU_WEIGHTS = {
    "BLEU-1": (1.0,),
    "BLEU-2": (1 / 2, 1 / 2),
    "BLEU-3": (1 / 3, 1 / 3, 1 / 3),
    "BLEU-4": (1 / 4, 1 / 4, 1 / 4, 1 / 4),
}


def corpus_bleu_scores(
    references: list[list[list[str]]], hypotheses: list[list[str]]
) -> dict[str, float]:
    """BLEU-1..4 over a corpus: references[i] holds every tokenized reference of image i."""
    from nltk.translate.bleu_score import corpus_bleu

    if len(references) != len(hypotheses):
        raise ValueError("one list of references per hypothesis is needed")
    scores = corpus_bleu(references, hypotheses, weights=list(BLEU_WEIGHTS.values()))
    return {name: float(score) for name, score in zip(BLEU_WEIGHTS, scores)}


def sentence_bleu4(references: list[list[str]], hypothesis: list[str]) -> float:
    """BLEU-4 of one caption (smoothed with method 1 so that short captions are not all 0)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return float(
        sentence_bleu(references, hypothesis, smoothing_function=SmoothingFunction().method1)
    )
