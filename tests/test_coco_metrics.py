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
