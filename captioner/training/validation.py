"""The dev scores that `train`, `finetune` and `finetune-encoder` log after every epoch: greedy
captions', and for `finetune` and `finetune-encoder` when they select by them, those of the
run's own decoding."""

from __future__ import annotations

from collections.abc import Callable

from captioner.config import DecodeConfig
from captioner.data.text import Vocabulary
from captioner.metrics import cider_d, corpus_bleu_scores


def dev_scores_function(
    model,
    features,
    references: list[list[list[str]]],
    vocabulary: Vocabulary,
    max_words: int,
    decode: DecodeConfig | None = None,
    prefix: str = "val_",
) -> Callable[..., dict[str, float]]:
    """Returns f(features=None) -> {"val_bleu4", "val_cider_d"} (as an epoch's logs name them):
    BLEU-4 and CIDEr-D of greedy captions for the dev images with the model's current weights
    (the decoder is compiled once and reads the live variables). `features` (images, D) are the
    images' features; f may be given new ones (an encoder that is being trained gives new
    features every epoch). decode: decode with these settings (a run's own beam search, as
    `evaluate` does) instead of greedy search of up to max_words words; prefix: the keys'
    ("val_beam_": val_beam_bleu4, val_beam_cider_d)."""
    from captioner.model.decoder import DecoderSteps
    from captioner.model.search import make_decoder

    decoding = decode or DecodeConfig(beam_size=1, max_length=max_words)
    decode_all = make_decoder(DecoderSteps(model), len(vocabulary), decoding)
    fixed = features

    def scores(features=None) -> dict[str, float]:
        features = fixed if features is None else features
        hypotheses = [vocabulary.decode(row) for row in decode_all(features)]
        bleu4 = corpus_bleu_scores(references, hypotheses)["BLEU-4"]
        return {f"{prefix}bleu4": bleu4, f"{prefix}cider_d": cider_d(references, hypotheses)[0]}

    return scores


def selection_scores_function(
    model, features, references, vocabulary: Vocabulary, max_words: int, select_by: str,
    decoding: DecodeConfig,
) -> Callable[..., dict[str, float]]:  # fmt: skip
    """f(features=None) -> the greedy dev scores every epoch logs (dev_scores_function), and
    when `select_by` is a val_beam_ score, those of `decoding` too (the run's own [decode]
    settings: the captions `evaluate` scores and the run ships)."""
    greedy = dev_scores_function(model, features, references, vocabulary, max_words)
    if not select_by.startswith("val_beam_"):
        return greedy
    decoded = dev_scores_function(model, features, references, vocabulary, max_words, decoding,
                                  "val_beam_")  # fmt: skip
    return lambda features=None: {**greedy(features), **decoded(features)}


def selection_decoding(select_by: str, decoding: DecodeConfig) -> str:
    """How the dev captions that pick the epoch were decoded, as evaluate names it: "greedy",
    or "beam3" for a val_beam_ score of a run that decodes with beam 3."""
    beam = decoding.beam_size
    return f"beam{beam}" if select_by.startswith("val_beam_") and beam > 1 else "greedy"
