"""Caption scores computed the standard way.

BLEU: corpus BLEU (Papineni et al. 2002) from nltk on word tokens, every reference caption of
each image, cumulative uniform weights (BLEU-n averages the 1..n-gram precisions), no smoothing.
References and hypotheses are cleaned the same way as training captions (lower case, no
punctuation, one-letter words kept).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

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
    with warnings.catch_warnings():  # nltk warns whenever an n-gram order has no match: 0 is
        warnings.simplefilter("ignore", UserWarning)  # the right corpus score then, not an error
        scores = corpus_bleu(references, hypotheses, weights=list(BLEU_WEIGHTS.values()))
    return {name: float(score) for name, score in zip(BLEU_WEIGHTS, scores)}


def sentence_bleu4(references: list[list[str]], hypothesis: list[str]) -> float:
    """BLEU-4 of one caption (smoothed with method 1 so that short captions are not all 0)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return float(
        sentence_bleu(references, hypothesis, smoothing_function=SmoothingFunction().method1)
    )


# --- CIDEr-D --------------------------------------------------------------------------------
# Vedantam et al. 2015, as the coco-caption toolkit computes it (pycocoevalcap/cider): tf-idf
# vectors of 1..4-grams with document frequencies from the split's references, clipped
# similarity, a Gaussian penalty (sigma 6) on the length difference, x10. The toolkit's
# length is the number of bigrams, kept here so that scores are comparable.

_CIDER_N, _CIDER_SIGMA = 4, 6.0


def _ngram_counts(words: list[str]) -> Counter:
    return Counter(
        tuple(words[i : i + n]) for n in range(1, _CIDER_N + 1) for i in range(len(words) - n + 1)
    )


def _tfidf(counts: Counter, document_frequency: Counter, log_images: float):
    """-> per-n {ngram: weight}, per-n vector norms, and the length (bigram count)."""
    vectors = [dict() for _ in range(_CIDER_N)]
    for ngram, count in counts.items():
        idf = log_images - math.log(max(1.0, document_frequency[ngram]))
        vectors[len(ngram) - 1][ngram] = count * idf
    norms = [math.sqrt(sum(v * v for v in vector.values())) for vector in vectors]
    length = sum(count for ngram, count in counts.items() if len(ngram) == 2)
    return vectors, norms, length


def _similarity(hypothesis, reference) -> float:
    """Mean over n of the clipped cosine similarity, times the length penalty."""
    (h_vectors, h_norms, h_length), (r_vectors, r_norms, r_length) = hypothesis, reference
    penalty = math.exp(-((h_length - r_length) ** 2) / (2 * _CIDER_SIGMA**2))
    total = 0.0
    for h, r, h_norm, r_norm in zip(h_vectors, r_vectors, h_norms, r_norms):
        value = sum(
            min(weight, r.get(ngram, 0.0)) * r.get(ngram, 0.0) for ngram, weight in h.items()
        )
        if h_norm and r_norm:
            value /= h_norm * r_norm
        total += value * penalty
    return total / _CIDER_N


class CiderD:
    """CIDEr-D scorer for one corpus of references: document frequencies and the references'
    tf-idf vectors are computed once, so that many captions can be scored against them (the
    corpus score below, and the self-critical reward, which uses the train split's references).
    """

    def __init__(self, references: list[list[list[str]]]):
        reference_counts = [[_ngram_counts(r) for r in refs] for refs in references]
        self._document_frequency = Counter(
            ngram for counts in reference_counts for ngram in set().union(*counts)
        )
        self._log_images = math.log(float(len(references)))
        self._references = [[self._tfidf(c) for c in counts] for counts in reference_counts]

    def _tfidf(self, counts: Counter):
        return _tfidf(counts, self._document_frequency, self._log_images)

    def score(self, index: int, hypothesis: list[str]) -> float:
        """CIDEr-D of one caption against the references of image `index`."""
        h = self._tfidf(_ngram_counts(hypothesis))
        references = self._references[index]
        return 10.0 * sum(_similarity(h, r) for r in references) / len(references)


def cider_d(
    references: list[list[list[str]]], hypotheses: list[list[str]]
) -> tuple[float, list[float]]:
    """CIDEr-D over a corpus: (the mean, each image's score)."""
    if not references:
        return 0.0, []
    scorer = CiderD(references)
    scores = [scorer.score(i, hypothesis) for i, hypothesis in enumerate(hypotheses)]
    return sum(scores) / len(scores), scores


def score_captions(
    references: list[list[list[str]]], hypotheses: list[list[str]]
) -> tuple[dict[str, float], list[float]]:
    """Corpus BLEU-1..4 and CIDEr-D; also each image's CIDEr-D, in order."""
    scores = corpus_bleu_scores(references, hypotheses)
    scores["CIDEr-D"], per_image = cider_d(references, hypotheses)
    return scores, per_image
