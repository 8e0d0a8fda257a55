"""The scores papers report, from coco-caption (pycocoevalcap, `pip install -e ".[metrics]"`):
METEOR 1.5 (its Java jar), ROUGE-L, and SPICE where its Stanford models are present.

Two tokenizations, named beside every score `evaluate` prints:
  captioner  references and captions cleaned as training captions are (lower case, punctuation
             deleted, words holding digits dropped): BLEU from nltk, CIDEr-D from
             captioner.metrics, METEOR and ROUGE-L from pycocoevalcap on those words. The
             README's rows.
  coco       coco-caption's own pipeline: its PTB tokenizer (Stanford CoreNLP, Java) on the raw
             references and the captions, then its BLEU, METEOR, ROUGE-L and CIDEr-D: what
             papers since Show, Attend and Tell report. The PTB tokenizer splits English (ASCII
             punctuation, English contractions): the caller refuses it for other languages.
A scorer that cannot run (no Java, no pycocoevalcap, no SPICE models) is left out with one
line saying what to install; the others are still computed.

METEOR matches words in the captions' language (`text.language`, ISO 639-1), which its jar
must know (`meteor_setting`): en, fr, de, es, cs, ru with parameters tuned for them; da, fi,
hu, it, nl, no (nb), pt, ro, sv, tr with its language-independent ones. It matches exact words,
then Snowball stems (all of them but cs), WordNet synonyms (en only) and paraphrases where the
language's table lies beside the jar: pycocoevalcap ships English's only. It tokenizes and
lower-cases (-norm) where it has a normalizer (en, fr, de, es, cs, ru), else lower-cases only
(-lower). Scores in different languages are not comparable. For a language the jar does not
know (hi, zh...), METEOR is left out with one line; ROUGE-L and the rest, which only compare
tokens, are still computed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import shutil
import subprocess
import threading
from collections.abc import Iterable
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


# The languages of meteor-1.5.jar (its edu.cmu.meteor.util.Constants; `java -jar meteor-1.5.jar`
# lists them): ISO 639-1 code -> the jar's own -l code. It reads Czech as cz (or cs) and Swedish
# as se (or sv); its Norwegian stemmer is Snowball's, for Bokmål (nb). Its Arabic is
# Buckwalter-transliterated ("ar-bw-red"), not Arabic script: left out.
METEOR_CODES = {"en": "en", "fr": "fr", "de": "de", "es": "es", "cs": "cz", "ru": "ru",
                "da": "da", "fi": "fi", "hu": "hu", "it": "it", "nl": "nl", "no": "no",
                "nb": "no", "pt": "pt", "ro": "ro", "sv": "se", "tr": "tr"}  # fmt: skip
# The jar's matchers by default (Constants.getModules), "exact stem" for the languages not named;
# a paraphrase table it cannot find (data/paraphrase-<code>.gz) stops it at start.
_METEOR_MODULES = {
    "en": ("exact", "stem", "synonym", "paraphrase"),
    "cz": ("exact", "paraphrase"),
    **dict.fromkeys(("fr", "de", "es", "ru"), ("exact", "stem", "paraphrase")),
}
# Where -norm works (Constants.isSupported): for the others it throws "No normalizer for
# language" at the first line scored.
_METEOR_NORMALIZED = {"en", "cz", "fr", "de", "es", "ru"}


@dataclass(frozen=True)
class MeteorSetting:
    """How meteor-1.5.jar is started for one language."""

    code: str  # the jar's -l
    modules: tuple[str, ...]  # its matchers, in order
    normalize: bool  # -norm (tokenize punctuation, lower-case), else -lower

    def args(self) -> list[str]:
        """The jar's options after `- - -stdio`; -m only where the jar's default differs (a
        paraphrase table missing), so English's line is pycocoevalcap's own."""
        args = ["-l", self.code, "-norm" if self.normalize else "-lower"]
        if self.modules != _METEOR_MODULES.get(self.code, ("exact", "stem")):
            args += ["-m", " ".join(self.modules)]
        return args


def meteor_setting(language: str, paraphrases: Iterable[str] | None = None) -> MeteorSetting | str:
    """The jar's setting for captions in `language` (ISO 639-1; a region such as pt-BR is
    dropped), or why METEOR 1.5 cannot score them. `paraphrases`: the jar codes with a table
    (None: those beside pycocoevalcap's jar)."""
    base = language.lower().replace("_", "-").split("-")[0]
    code = METEOR_CODES.get(base)
    if code is None:
        arabic = "Arabic only as Buckwalter transliteration; " if base == "ar" else ""
        return f"METEOR 1.5 has no {language} ({arabic}it knows {', '.join(sorted(METEOR_CODES))})"
    tables = set(_paraphrase_tables() if paraphrases is None else paraphrases)
    modules = _METEOR_MODULES.get(code, ("exact", "stem"))
    modules = tuple(m for m in modules if m != "paraphrase" or code in tables)
    return MeteorSetting(code, modules, code in _METEOR_NORMALIZED)


def _paraphrase_tables() -> set[str]:
    """The jar codes of the tables in pycocoevalcap/meteor/data (a namespace package: no
    __init__.py, so no origin)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    folders = [
        Path(f) / "meteor" / "data" for f in (spec and spec.submodule_search_locations or [])
    ]
    return {
        p.name[len("paraphrase-") : -len(".gz")] for f in folders for p in f.glob("paraphrase-*.gz")
    }


@functools.cache
def _meteor_class():
    from pycocoevalcap.meteor import meteor

    class LanguageMeteor(meteor.Meteor):
        """pycocoevalcap's Meteor, whose java line says -l en, started in another language.
        The jar reads stdin as UTF-8 itself (InputStreamReader(System.in, "UTF-8")), whatever
        the locale, and pycocoevalcap writes UTF-8: accents and ß arrive intact."""

        def __init__(self, setting: MeteorSetting):
            self.setting = setting
            self.meteor_cmd = ["java", "-jar", "-Xmx2G", meteor.METEOR_JAR, "-", "-", "-stdio",
                               *setting.args()]  # fmt: skip
            self.meteor_p = subprocess.Popen(
                self.meteor_cmd,
                cwd=Path(meteor.__file__).resolve().parent,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            self.lock = threading.Lock()

    return LanguageMeteor


def _scorer_classes(tokenize: str):
    """(name, needs Java, scorer class) for the scores to add, by tokenization."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.spice.spice import Spice

    scorers = [("METEOR", True, _meteor_class()), ("ROUGE-L", False, Rouge), ("SPICE", True, Spice)]
    if tokenize == "coco":
        scorers = [("BLEU", False, Bleu), *scorers[:2], ("CIDEr-D", False, Cider), scorers[2]]
    return scorers


class CocoScorers:
    """The coco-caption scorers that can run here, started at once: METEOR's Java process
    loads its paraphrase tables (seconds) while the captions are being made."""

    def __init__(self, tokenize: str, language: str = "en"):
        """`language`: the captions' (ISO 639-1), for METEOR (see the module's docstring). With
        tokenize="coco" it should be "en" (the PTB tokenizer's): the caller checks."""
        self.tokenize, self.left_out, self.scorers = tokenize, [], []
        self.meteor = meteor_setting(language)  # a MeteorSetting, or why not
        why = _missing(needs_java=tokenize == "coco")
        if why:
            self.left_out.append(f"coco-caption scores left out: {why}")
            return
        for name, needs_java, scorer in _scorer_classes(tokenize):
            if name == "METEOR" and isinstance(self.meteor, str):
                why = self.meteor
            else:
                why = _missing(needs_java) or (_spice_models_missing() if name == "SPICE" else None)
            if why:
                self.left_out.append(f"{name} left out: {why}")
            else:
                self.scorers.append((name, scorer(self.meteor) if name == "METEOR" else scorer()))

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
