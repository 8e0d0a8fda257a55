"""The greedy dev scores that `train`, `finetune` and `finetune-encoder` log after every epoch."""

from __future__ import annotations

from collections.abc import Callable

from captioner.data.text import Vocabulary
from captioner.metrics import cider_d, corpus_bleu_scores


def dev_scores_function(
    model, features, references: list[list[list[str]]], vocabulary: Vocabulary, max_words: int
) -> Callable[..., dict[str, float]]:
    """Returns f(features=None) -> {"val_bleu4", "val_cider_d"} (as an epoch's logs name them):
    BLEU-4 and CIDEr-D of greedy captions for the dev images with the model's current weights
    (the decoder is compiled once and reads the live variables). `features` (images, D) are the
    images' features; f may be given new ones (an encoder that is being trained gives new
    features every epoch)."""
    from captioner.config import DecodeConfig
    from captioner.model.decoder import DecoderSteps
    from captioner.model.search import make_decoder

    decode = make_decoder(
        DecoderSteps(model), len(vocabulary), DecodeConfig(beam_size=1, max_length=max_words)
    )
    fixed = features

    def scores(features=None) -> dict[str, float]:
        features = fixed if features is None else features
        hypotheses = [vocabulary.decode(row) for row in decode(features)]
        bleu4 = corpus_bleu_scores(references, hypotheses)["BLEU-4"]
        return {"val_bleu4": bleu4, "val_cider_d": cider_d(references, hypotheses)[0]}

    return scores
