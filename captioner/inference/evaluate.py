"""`captioner evaluate`: decode every image of a split and score the captions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captioner.config import DecodeConfig
from captioner.data.datasets import load_dataset
from captioner.errors import ConfigError, DataError
from captioner.features.arrays import caption_arrays, references
from captioner.inference.coco_metrics import CocoScorers
from captioner.inference.diagnostics import caption_diagnostics
from captioner.metrics import score_captions, sentence_bleu4
from captioner.model.ensembles import decoder_steps, finetuned, load_runs
from captioner.model.rundir import Run, load_run_features, write_json
from captioner.model.search import make_decoder


@dataclass
class Evaluation:
    split: str
    images: int
    decoding: dict  # the DecodeConfig used, as a dict
    scores: dict[str, float]
    captions_path: Path
    seconds: float
    per_image: list[dict]  # image, caption, references, bleu4, cider_d (meteor, rouge_l)
    images_dir: Path
    # The split's photos outside images_dir (a Karpathy COCO test split is all in val2014/).
    paths_elsewhere: dict[str, Path] = field(default_factory=dict)
    tokenize: str = "captioner"  # which words the scores were computed on (coco_metrics)
    tokens: str = "words"  # the run's tokenizer: BLEU, ROUGE-L, CIDEr-D count these
    left_out: list[str] = field(default_factory=list)  # scores that could not be computed, why
    diagnostics: dict = field(default_factory=dict)  # captioner.inference.diagnostics
    # evaluate(attention=True) on an attention run: image -> its words' weights (words, rows,
    # columns), from the search that chose its caption. Empty otherwise.
    attention: dict[str, np.ndarray] = field(default_factory=dict)


def decoding_name(decode: DecodeConfig) -> str:
    return "greedy" if decode.beam_size <= 1 else f"beam{decode.beam_size}"


def evaluate(
    run_dirs: list[str | Path | Run] | None,
    split: str = "test",
    decode: DecodeConfig | None = None,
    data_root: str | Path | None = None,
    features_path: str | Path | None = None,
    tokenize: str = "captioner",
    attention: bool = False,
) -> Evaluation:
    """Captions every image of `split` from cached features (encoded from the photos for a run
    whose encoder was fine-tuned); scores them against all references.

    Args:
        run_dirs: directories written by `captioner train` (or runs already loaded), one or
            several (an ensemble); None or empty: the shipped reference model.
        split: train, dev or test.
        decode: decoding settings; the run's own when None.
        data_root, features_path: default to those the run was trained on.
        tokenize: "captioner" or "coco" (see captioner.inference.coco_metrics).
        attention: for runs with a grid decoder, also keep each caption's attention
            weights (Evaluation.attention, for the report's pictures); ignored for others.
    Returns:
        The scores; captions, references and per-image scores go to a JSON file in the first
        run directory (the current folder for the shipped model).
    """
    start = time.perf_counter()
    runs = load_runs(run_dirs)
    run = runs[0]
    decode = decode or run.config.decode
    data_root = data_root or run.info["data"]
    vocabulary, language = run.vocabulary, run.config.text.language
    _check_tokenization(tokenize, vocabulary.tokenizer, language)
    dataset = load_dataset(data_root)
    names, features = _split_features(runs, dataset, split, data_root, features_path)
    coco = CocoScorers(tokenize, language=language)  # METEOR's Java starts while decoding
    hypotheses, maps = _decoded(runs, decode, names, features, attention)
    refs = references(dataset, names, vocabulary.tokenizer)
    scores, per_image, left_out = _scores(coco, dataset, names, refs, hypotheses, vocabulary)
    diagnostics = caption_diagnostics(hypotheses, refs, len(vocabulary), vocabulary.join)
    # The shipped model's folder may be read-only: its results go to the current folder.
    name = f"captions-{split}-{decoding_name(decode)}{'-ensemble' if len(runs) > 1 else ''}.json"
    captions_path = (Path(".") if run.shipped else run.directory) / name
    write_json(captions_path, {"split": split, "decoding": decode.__dict__, "tokenize": tokenize,
               "tokens": vocabulary.tokenizer, "scores": scores, "diagnostics": diagnostics,
               "images": per_image})  # fmt: skip
    elsewhere = {n: dataset.paths_elsewhere[n] for n in names if n in dataset.paths_elsewhere}
    return Evaluation(split, len(hypotheses), dict(decode.__dict__), scores, captions_path,
                      time.perf_counter() - start, per_image, dataset.images_dir, elsewhere,
                      tokenize, vocabulary.tokenizer, left_out, diagnostics, maps)  # fmt: skip


def _check_tokenization(tokenize: str, tokenizer: str, language: str) -> None:
    """coco-caption's PTB tokenizer knows English words and ASCII punctuation only."""
    if tokenize == "coco" and (language != "en" or tokenizer != "words"):
        raise ConfigError(f"--tokenize coco: coco-caption's PTB tokenizer splits English words; "
                          f"this run's captions are {language} in {tokenizer}: leave it out "
                          "to score on the run's own tokens")  # fmt: skip


SCORE_ORDER = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")


def _scores(coco: CocoScorers, dataset, names, refs, hypotheses, vocabulary):
    """(scores in SCORE_ORDER, per-image dicts, lines on scores left out). With the captioner
    tokenization BLEU and CIDEr-D are captioner's own (nltk, captioner.metrics); with coco,
    every score is coco-caption's, on its PTB tokens of the raw references."""
    captions = [" ".join(words) for words in hypotheses]
    if coco.tokenize == "coco":
        raw = [dataset.captions[name] for name in names]
        found = coco.score(raw, captions)
        if "BLEU-4" not in found.scores:
            raise ConfigError(f"--tokenize coco: {'; '.join(found.left_out)}")
        scores = dict(found.scores)
        image_cider = found.per_image["CIDEr-D"]
    else:
        scores, image_cider = score_captions(refs, hypotheses)
        found = coco.score([[" ".join(r) for r in image_refs] for image_refs in refs], captions)
        scores |= found.scores
    scores = {key: scores[key] for key in SCORE_ORDER if key in scores}
    per_image = _per_image(names, hypotheses, refs, image_cider, vocabulary)
    for key, label in (("METEOR", "meteor"), ("ROUGE-L", "rouge_l"), ("SPICE", "spice")):
        for item, value in zip(per_image, found.per_image.get(key, [])):
            item[label] = round(value, 4)
    return scores, per_image, found.left_out


def _decoded(runs: list[Run], decode: DecodeConfig, names, features, attention: bool):
    """Each image's words, and with `attention` (an attention run) {image: its words'
    weights (words, rows, columns)}, carried by the very search that chose the words."""
    vocabulary = runs[0].vocabulary
    attention = attention and runs[0].config.model.needs_grid
    decoder = make_decoder(decoder_steps(runs), len(vocabulary), decode, attention=attention)
    if not attention:
        return [vocabulary.decode(row) for row in decoder(features)], {}
    from captioner.inference.api import attention_grid

    grid = attention_grid(runs)
    ids, _, weights = decoder(features)
    hypotheses = [vocabulary.decode(row) for row in ids]
    maps = {
        name: weights[i, : len(words)].reshape(len(words), *grid)
        for i, (name, words) in enumerate(zip(names, hypotheses))
    }
    return hypotheses, maps


def _split_features(runs: list[Run], dataset, split: str, data_root, features_path):
    """The split's image names and the features the runs decode: from the feature cache, or
    for runs whose encoder was fine-tuned, encoded from the photos now (no cache holds what
    their own encoder computes; the dev or test split takes seconds to encode)."""
    names = dataset.splits[split]
    if not finetuned(runs):
        cache, _ = load_run_features(runs[0], data_root, features_path)
        # caption_arrays checks that every image of the split has features.
        arrays = caption_arrays(
            dataset, split, cache, runs[0].vocabulary, runs[0].config.text.max_caption_words
        )
        return arrays.names, arrays.features
    if features_path is not None:
        raise ConfigError(
            f"{features_path}: the encoder of {runs[0].directory} was fine-tuned: no feature cache "
            "holds its features, and evaluate encodes the photos itself: leave out --features"
        )
    from captioner.inference.api import Captioner

    if not names:
        raise DataError(f"{dataset.root}: the {split} split has no images with captions")
    features = Captioner(runs).features_of_files([dataset.image_path(n) for n in names])
    return names, features


def _per_image(names, hypotheses, refs, image_cider, vocabulary) -> list[dict]:
    """Each image's caption beside its references, with its own BLEU-4 and CIDEr-D; written as
    their script is (no spaces between Han characters), with the tokens scored beside them
    where they are characters."""
    per_image = []
    for name, words, image_refs, cider in zip(names, hypotheses, refs, image_cider):
        item = {"image": name, "caption": vocabulary.join(words),
                "references": [vocabulary.join(r) for r in image_refs],
                "bleu4": round(sentence_bleu4(image_refs, words), 4),
                "cider_d": round(cider, 4)}  # fmt: skip
        if vocabulary.tokenizer != "words":
            item["tokens"], item["reference_tokens"] = words, image_refs
        per_image.append(item)
    return per_image
