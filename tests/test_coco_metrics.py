"""The scores papers report (coco-caption's METEOR, ROUGE-L, CIDEr-D), left out in one line
where they cannot run, and the diagnostics that flag a model blind to its photos."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from captioner.cli import cli
from captioner.config import Config, merge
from captioner.inference.diagnostics import caption_diagnostics, diagnostics_lines
from captioner.metrics import cider_d

REFERENCES = [["a dog runs in the park", "the dog is running on grass"],
              ["two men play football", "men playing soccer on a field"]]  # fmt: skip
CAPTIONS = ["a dog runs on the grass", "a man plays football"]
needs_pycocoevalcap = pytest.mark.skipif(
    importlib.util.find_spec("pycocoevalcap") is None, reason='pip install -e ".[metrics]"'
)
needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="METEOR needs Java: apt-get install default-jre-headless"
)


@needs_pycocoevalcap
def test_captioners_cider_d_is_coco_captions_to_the_last_digit():
    """Kept for self-critical training, which scores samples against the train split's
    document frequencies; evaluate's number must still be the library's."""
    from pycocoevalcap.cider.cider import Cider

    refs = [[r.split() for r in image] for image in REFERENCES]
    ours, per_image = cider_d(refs, [c.split() for c in CAPTIONS])
    theirs, their_images = Cider().compute_score(
        {i: r for i, r in enumerate(REFERENCES)}, {i: [c] for i, c in enumerate(CAPTIONS)}
    )
    # By hand: the first caption shares "a", "dog", "runs", "the", "grass" and four bigrams with
    # its references, the second only "football": 2.4896 and 0.3608, mean 1.4252.
    assert ours == pytest.approx(1.4251974506841791, abs=1e-12)
    assert ours == pytest.approx(float(theirs), abs=1e-12)
    np.testing.assert_allclose(per_image, their_images, atol=1e-12)
    np.testing.assert_allclose(per_image, [2.48955098, 0.36084392], atol=1e-8)


@needs_pycocoevalcap
@needs_java
@pytest.mark.slow  # METEOR's Java loads its tables: seconds
def test_meteor_and_rouge_l_come_from_coco_caption():
    from captioner.inference.coco_metrics import CocoScorers

    found = CocoScorers("captioner").score(REFERENCES, CAPTIONS)
    assert set(found.scores) == {"METEOR", "ROUGE-L"}
    assert found.scores["ROUGE-L"] == pytest.approx(0.4583333, abs=1e-6)  # LCS by hand
    assert 0.2 < found.scores["METEOR"] < 0.5 and len(found.per_image["METEOR"]) == 2
    assert found.left_out[0].startswith("SPICE left out: needs")


def test_meteor_is_started_in_the_captions_language_under_the_jars_own_codes():
    """meteor-1.5.jar's codes (its Constants class): Czech is cz, Swedish se. pycocoevalcap
    ships English's paraphrase table only: the jar stops at start when one is missing."""
    from captioner.inference.coco_metrics import meteor_setting

    def args(language, tables=("en",)):
        return meteor_setting(language, paraphrases=tables).args()

    assert args("en") == ["-l", "en", "-norm"]  # pycocoevalcap's own line
    assert args("en", tables=()) == ["-l", "en", "-norm", "-m", "exact stem synonym"]
    assert args("fr") == ["-l", "fr", "-norm", "-m", "exact stem"]
    assert args("fr", tables=("fr",)) == ["-l", "fr", "-norm"]  # the full METEOR's data
    assert args("cs") == ["-l", "cz", "-norm", "-m", "exact"]  # no Czech stemmer
    assert args("sv") == ["-l", "se", "-lower"]  # no normalizer: -norm would throw
    assert args("no") == args("nb") == ["-l", "no", "-lower"]
    assert args("pt-BR") == args("pt") == ["-l", "pt", "-lower"]
    assert {meteor_setting(c).code for c in ("de", "es", "ru", "da", "fi", "hu", "it", "nl",
                                             "ro", "tr")} == {"de", "es", "ru", "da", "fi", "hu",
                                                              "it", "nl", "ro", "tr"}  # fmt: skip
    assert meteor_setting("hi") == ("METEOR 1.5 has no hi (it knows cs, da, de, en, es, fi, fr, "
                                    "hu, it, nb, nl, no, pt, ro, ru, sv, tr)")  # fmt: skip
    assert meteor_setting("ar").startswith("METEOR 1.5 has no ar (Arabic only as Buckwalter")


@needs_pycocoevalcap
@needs_java
def test_meteor_stems_french_german_and_spanish_with_their_accents(monkeypatch):
    """Whatever Java's default charset (here ASCII, as with LANG unset), the jar reads its stdin
    as UTF-8: ß and accents arrive, and its Snowball stemmers match them."""
    from captioner.inference.coco_metrics import CocoScorers

    monkeypatch.setenv("LC_ALL", "C")
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Dfile.encoding=ANSI_X3.4-1968")
    accents = "un chien court dans l'herbe verte près de la rivière"
    french = CocoScorers("captioner", language="fr").score(
        [[accents], [accents.replace("è", "e")], ["deux chien courant dans l'herbe"]],
        [accents, accents, "deux chiens courent dans l'herbe"],
    )
    # près and rivière count as matches only with their accents on both sides; chiens-chien
    # and courent-courant only through the French stemmer (-l en's Porter: 0.3837).
    np.testing.assert_allclose(french.per_image["METEOR"], [1.0, 0.75840902, 0.58355167])
    german = CocoScorers("captioner", language="de").score(
        [["die straße ist nass"], ["die strasse ist nass"], ["die strasse ist nass"]],
        ["die straße ist nass", "die straße ist nass", "die strabe ist nass"],
    )
    # Snowball's German stemmer writes ß as ss: straße-strasse is a stem match (weight 0.8);
    # a straße whose ß was lost would score as strabe does.
    np.testing.assert_allclose(german.per_image["METEOR"], [1.0, 0.95, 0.475], atol=1e-9)
    spanish = CocoScorers("captioner", language="es").score(
        [["dos perros corren en la hierba"], ["una niña juega en la playa"]],
        ["dos perros corriendo en la hierba", "una nina juega en la playa"],
    )
    # corriendo-corren: the Spanish stemmer's (-l en's: 0.4171); niña is not nina.
    assert spanish.per_image["METEOR"][0] == pytest.approx(0.96666667, abs=1e-6)
    assert spanish.per_image["METEOR"][1] < 0.9
    assert "ROUGE-L" in spanish.scores and not any("METEOR" in line for line in spanish.left_out)


@needs_pycocoevalcap
@needs_java
@pytest.mark.slow  # English's paraphrase table: seconds
def test_french_and_spanish_score_differently_in_english():
    from captioner.inference.coco_metrics import CocoScorers

    refs = [["deux chien courant dans l'herbe"], ["dos perros corren en la hierba"]]
    captions = ["deux chiens courent dans l'herbe", "dos perros corriendo en la hierba"]
    english = CocoScorers("captioner").score(refs, captions).per_image["METEOR"]
    french = CocoScorers("captioner", language="fr").score(refs[:1], captions[:1])
    spanish = CocoScorers("captioner", language="es").score(refs[1:], captions[1:])
    np.testing.assert_allclose(english, [0.38369219, 0.41705673])
    assert french.per_image["METEOR"][0] > english[0] + 0.15
    assert spanish.per_image["METEOR"][0] > english[1] + 0.5


@needs_pycocoevalcap
def test_a_language_meteor_does_not_know_leaves_it_out_in_one_line():
    from captioner.inference.coco_metrics import CocoScorers

    found = CocoScorers("captioner", language="hi").score(
        [["एक कुत्ता घास में दौड़ता है"]], ["एक कुत्ता घास में दौड़ रहा है"]
    )
    assert "METEOR" not in found.scores
    assert [line for line in found.left_out if "METEOR" in line] == [
        "METEOR left out: METEOR 1.5 has no hi (it knows cs, da, de, en, es, fi, fr, hu, it, nb, "
        "nl, no, pt, ro, ru, sv, tr)"
    ]
    assert found.scores["ROUGE-L"] == pytest.approx(0.7800512, abs=1e-6)  # 5 of 6 and 7 words


def test_a_model_that_gives_every_photo_one_caption_is_flagged():
    captions = [["a", "dog", "runs"]] * 18 + [["a", "cat"], ["a", "cat", "sits"]]
    d = caption_diagnostics(captions, [[["a", "dog"]]] * 20, vocabulary_size=14)
    assert (d["unique_captions"], d["distinct_captions"], d["words_used"]) == (2, 3, 5)
    lines = diagnostics_lines(d)
    assert lines[0].startswith("captions of their own: 2 of 20 photos (10.0%); 3 distinct")
    assert lines[1] == "most repeated: 18 x 'a dog runs'"
    assert lines[2] == ("warning: 'a dog runs' was given to 18 of 20 photos (90%): does the "
                        "model look at the photos?")  # fmt: skip


@pytest.fixture(scope="module")
def blind_run(flickr8k_data, tmp_path_factory):
    """A tiny trained run whose image projection is then zeroed: the same caption for all."""
    from captioner.features.extract import extract_features
    from captioner.model.rundir import load_run, save_keras_model
    from captioner.training.train import train
    from tests.conftest import TINY, TINY_ENCODER

    folder = tmp_path_factory.mktemp("blind")
    extract_features(flickr8k_data, folder / "f", TINY, progress=False)
    config = merge(Config(), {"encoder": {"name": TINY_ENCODER},
                              "model": {"units": 16, "embedding_dim": 8},
                              "text": {"min_word_count": 1},
                              "train": {"epochs": 1, "learning_rate": 0.01}})  # fmt: skip
    train(flickr8k_data, folder / "f", folder / "run", config, progress=False)
    model = load_run(folder / "run").load_model()
    layer = model.get_layer("image_projection")
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    save_keras_model(model, folder / "run" / "model.keras")
    return folder / "run"


@pytest.mark.slow
def test_evaluate_prints_what_it_cannot_score_and_flags_a_blind_model(blind_run, monkeypatch):
    monkeypatch.setenv("PATH", "/nowhere")  # no Java
    result = CliRunner().invoke(cli, ["evaluate", "--run", str(blind_run), "--split", "dev"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "captioner tokenization" in lines[0]
    names = lines[1].split()
    assert names[:4] == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"] and names[-1] == "CIDEr-D"
    assert "METEOR" not in names
    if importlib.util.find_spec("pycocoevalcap") is not None:
        assert "ROUGE-L" in names  # pure Python: no Java needed
        assert "METEOR left out: needs Java: apt-get install default-jre-headless" in result.output
    assert "does the model look at the photos?" in result.output
    saved = json.loads((blind_run / "captions-dev-greedy.json").read_text())
    assert saved["diagnostics"]["distinct_captions"] == 1 and saved["tokenize"] == "captioner"


@needs_pycocoevalcap
@needs_java
@pytest.mark.slow
def test_coco_tokenization_scores_with_coco_captions_own_pipeline(blind_run):
    result = CliRunner().invoke(cli, ["evaluate", "--run", str(blind_run), "--split", "dev",
                                      "--tokenize", "coco"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "coco tokenization" in result.output.splitlines()[0]
    names = result.output.splitlines()[1].split()
    assert names == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]
    saved = json.loads((blind_run / "captions-dev-greedy.json").read_text())
    assert {"meteor", "rouge_l", "cider_d"} <= set(saved["images"][0])
