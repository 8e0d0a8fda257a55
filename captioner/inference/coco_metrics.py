"""The scores papers report, from coco-caption (pycocoevalcap, `pip install -e ".[metrics]"`):
METEOR 1.5 (its Java jar), ROUGE-L, and SPICE where its Stanford models are present.

Two tokenizations, named beside every score `evaluate` prints:
  captioner  references and captions cleaned as training captions are (lower case, punctuation
             deleted, words holding digits dropped): BLEU from nltk, CIDEr-D from
             captioner.metrics, METEOR and ROUGE-L from pycocoevalcap on those words. The
             README's rows.
  coco       coco-caption's own pipeline: its PTB tokenizer (Stanford CoreNLP, Java) on the raw
             references and the captions, then its BLEU, METEOR, ROUGE-L and CIDEr-D: what
             papers since Show, Attend and Tell report.
A scorer that cannot run (no Java, no pycocoevalcap, no SPICE models) is left out with one
line saying what to install; the others are still computed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from captioner.quiet import stderr_captured

JAVA = "apt-get install default-jre-headless (or any Java 8+)"
EXTRA = 'pip install -e ".[metrics]"'


@dataclass
class CocoScores:
    scores: dict[str, float] = field(default_factory=dict)
    per_image: dict[str, list[float]] = field(default_factory=dict)  # score name -> by image
    left_out: list[str] = field(default_factory=list)  # one line per scorer that did not run


def _missing(needs_java: bool) -> str | None:
    """Why a pycocoevalcap scorer cannot run here, or None."""
    if importlib.util.find_spec("pycocoevalcap") is None:
        return f"needs pycocoevalcap: {EXTRA}"
    if needs_java and shutil.which("java") is None:
        return f"needs Java: {JAVA}"
    return None


def _spice_models_missing() -> str | None:
    from pycocoevalcap.spice import spice

    lib = Path(spice.__file__).parent / "lib"
    if not list(lib.glob("stanford-corenlp-3.6.0*.jar")):
        return ("needs the Stanford CoreNLP 3.6.0 models (python -m "
                "pycocoevalcap.spice.get_stanford_models, online once)")  # fmt: skip
    return None


def _scorer_classes(tokenize: str):
    """(name, needs Java, scorer class) for the scores to add, by tokenization."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.spice.spice import Spice

    scorers = [("METEOR", True, Meteor), ("ROUGE-L", False, Rouge), ("SPICE", True, Spice)]
    if tokenize == "coco":
        scorers = [("BLEU", False, Bleu), *scorers[:2], ("CIDEr-D", False, Cider), scorers[2]]
    return scorers


class CocoScorers:
    """The coco-caption scorers that can run here, started at once: METEOR's Java process
    loads its paraphrase tables (seconds) while the captions are being made."""

    def __init__(self, tokenize: str):
        self.tokenize, self.left_out, self.scorers = tokenize, [], []
        why = _missing(needs_java=tokenize == "coco")
        if why:
            self.left_out.append(f"coco-caption scores left out: {why}")
            return
        for name, needs_java, scorer in _scorer_classes(tokenize):
            why = _missing(needs_java) or (_spice_models_missing() if name == "SPICE" else None)
            if why:
                self.left_out.append(f"{name} left out: {why}")
            else:
                self.scorers.append((name, scorer()))

    def score(self, references: list[list[str]], captions: list[str]) -> CocoScores:
        """Scores of `captions` (one string per image) against `references` (strings per
        image: cleaned for the captioner tokenization, raw for coco)."""
        result = CocoScores(left_out=list(self.left_out))
        if not self.scorers:
            return result
        refs = {i: list(r) for i, r in enumerate(references)}
        hyps = {i: [c] for i, c in enumerate(captions)}
        # pycocoevalcap prints (BLEU's counts, the tokenizer's speed): a report's, not ours.
        with contextlib.redirect_stdout(io.StringIO()), stderr_captured():
            self._compute(refs, hyps, result)
        return result

    def _compute(self, refs: dict, hyps: dict, result: CocoScores) -> None:
        if self.tokenize == "coco":
            refs, hyps = _ptb_tokenized(refs), _ptb_tokenized(hyps)
        for name, scorer in self.scorers:
            try:
                _add(result, name, *scorer.compute_score(refs, hyps))
            except Exception as error:  # a Java process that died, a jar that changed
                reason = f"{type(error).__name__}: {error}".splitlines()[0]
                result.left_out.append(f"{name} left out: it failed ({reason})")


def _add(result: CocoScores, name: str, score, per_image) -> None:
    if name == "BLEU":  # BLEU-1..4 at once
        for n, (value, values) in enumerate(zip(score, per_image), start=1):
            result.scores[f"BLEU-{n}"] = float(value)
            result.per_image[f"BLEU-{n}"] = [float(v) for v in values]
        return
    result.scores[name] = float(score)
    if name == "SPICE":
        per_image = [image["All"]["f"] for image in per_image]
    result.per_image[name] = [float(v) for v in per_image]


def _ptb_tokenized(texts: dict[int, list[str]]) -> dict[int, list[str]]:
    """coco-caption's PTBTokenizer (lower case, its punctuation removed), which runs Java."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({i: [{"caption": t} for t in ts] for i, ts in texts.items()})
