"""Shared fixtures: a tiny encoder that needs no weights, and synthetic datasets on disk."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

from captioner.config import EncoderConfig  # noqa: E402
from captioner.features.encoders import _REGISTRY, register_encoder  # noqa: E402
from tests import synthetic  # noqa: E402

TINY_ENCODER = "tiny_test"

if TINY_ENCODER not in _REGISTRY:

    @register_encoder(TINY_ENCODER, synthetic.SIZE, 8 * 8 * 3, "4x4 average pooling (tests only)")
    def _tiny(weights, grid=False):
        """Mean colour of each 4x4 patch: enough to tell the synthetic shapes apart. As a grid:
        those 8 x 8 patches are the cells, of 3 channels each."""
        import keras

        images = keras.Input((synthetic.SIZE, synthetic.SIZE, 3))
        x = keras.layers.Rescaling(1 / 255)(images)
        x = keras.layers.AveragePooling2D(4)(x)
        return keras.Model(images, x if grid else keras.layers.Flatten()(x), name="tiny_test")


TINY_CONV_ENCODER = "tiny_conv_test"

if TINY_CONV_ENCODER not in _REGISTRY:

    @register_encoder(TINY_CONV_ENCODER, synthetic.SIZE, 8 * 8 * 3, "half-blind conv (tests)")
    def _tiny_conv(weights, grid=False):
        """A trainable CNN that starts out half blind, for fine-tuning the encoder: a 4x4
        convolution of stride 4 to three channels, the first summing the blue of each patch and
        the other two all zero (red, green and yellow shapes look alike), then BatchNorm. Every
        build starts from these same weights (extract, then fine-tuning); training can teach
        the blind channels to see."""
        import keras
        import numpy as np

        images = keras.Input((synthetic.SIZE, synthetic.SIZE, 3))
        x = keras.layers.Rescaling(1 / 255)(images)
        conv = keras.layers.Conv2D(3, 4, strides=4, name="conv")
        x = keras.layers.BatchNormalization(name="bn")(conv(x))
        model = keras.Model(images, x if grid else keras.layers.Flatten()(x), name="tiny_conv")
        kernel = np.zeros((4, 4, 3, 3), np.float32)
        kernel[:, :, 2, 0] = 1 / 16
        conv.set_weights([kernel, np.zeros(3, np.float32)])
        return model


# extract_features settings for the tiny encoder (random weights: it has none to load).
TINY = EncoderConfig(TINY_ENCODER, "none", 64)
TINY_16 = EncoderConfig(TINY_ENCODER, "none", 16)

TRAIN, DEV, TEST = 120, 20, 20


@pytest.fixture(scope="session")
def examples():
    return synthetic.make_examples(TRAIN + DEV + TEST)


@pytest.fixture(scope="session")
def flickr8k_data(tmp_path_factory, examples):
    names = [name for name, _, _ in examples]
    splits = {
        "train": names[:TRAIN],
        "dev": names[TRAIN : TRAIN + DEV],
        "test": names[TRAIN + DEV :],
    }
    return synthetic.write_flickr8k(tmp_path_factory.mktemp("flickr8k"), examples, splits)


@pytest.fixture(scope="session")
def kaggle_data(tmp_path_factory, examples):
    return synthetic.write_kaggle(tmp_path_factory.mktemp("kaggle"), examples)


# Where the suite's caches go instead of the user's: captioner's converted EfficientNet-Lite
# weights (~/.cache/captioner), and the caches and configs the libraries it runs keep in the
# home folder: Keras' (~/.keras), matplotlib's (~/.cache/matplotlib, ~/.config/matplotlib).
# Set at configure time, before the test modules are imported (they import Keras and
# matplotlib) and before any fixture: session-scoped ones (the shipped model, the CLI's caption
# of the cat) run before the per-test `isolated` below. Subprocesses inherit it with os.environ.
USER_CACHES = {
    "CAPTIONER_CACHE": "captioner",
    "XDG_CACHE_HOME": "cache",
    "XDG_CONFIG_HOME": "config",
    "KERAS_HOME": "keras",
}
SESSION_HOME = pytest.StashKey[Path]()
SAVED_ENVIRONMENT = pytest.StashKey[dict]()


def pytest_configure(config):
    home = Path(tempfile.mkdtemp(prefix="captioner-tests-"))
    config.stash[SESSION_HOME] = home
    config.stash[SAVED_ENVIRONMENT] = {name: os.environ.get(name) for name in USER_CACHES}
    for name, folder in USER_CACHES.items():
        os.environ[name] = str(home / folder)
    # `captioner caption` would start a background export after each call (its fast start,
    # captioner.inference.light); tests/test_export.py turns it on where it is the subject.
    config.stash[SAVED_ENVIRONMENT]["CAPTIONER_FAST_START"] = os.environ.get("CAPTIONER_FAST_START")
    os.environ["CAPTIONER_FAST_START"] = "0"


def pytest_unconfigure(config):
    for name, value in config.stash.get(SAVED_ENVIRONMENT, {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if SESSION_HOME in config.stash:
        shutil.rmtree(config.stash[SESSION_HOME], ignore_errors=True)


@pytest.fixture(scope="session")
def session_cache(pytestconfig) -> Path:
    """$CAPTIONER_CACHE outside the tests themselves (each test gets its own: `isolated`)."""
    return pytestconfig.stash[SESSION_HOME] / USER_CACHES["CAPTIONER_CACHE"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test runs in its own folder with its own cache: the user's files are never touched."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CAPTIONER_DEBUG", raising=False)


CHELSEA = Path(__file__).resolve().parent / "data" / "chelsea.jpg"  # scikit-image's cat photo


@pytest.fixture(scope="session")
def shipped_captioner():
    """The shipped model behind the Python API, loaded and compiled once for the session."""
    from captioner import Captioner

    captioner = Captioner.load()
    captioner.warm_up()
    return captioner


@pytest.fixture(scope="session")
def cli_caption_of_chelsea() -> str:
    """What `captioner caption tests/data/chelsea.jpg` prints as the caption."""
    from click.testing import CliRunner

    from captioner.cli import cli

    result = CliRunner().invoke(cli, ["caption", str(CHELSEA)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    path, caption = result.output.strip().split("\t")
    assert path == str(CHELSEA)
    return caption


def score_names() -> list[str]:
    """The columns `captioner evaluate` prints here: coco-caption's METEOR needs Java and
    pycocoevalcap, its ROUGE-L pycocoevalcap only (SPICE's models are never installed here)."""
    import importlib.util
    import shutil

    coco = importlib.util.find_spec("pycocoevalcap") is not None
    meteor = ["METEOR"] if coco and shutil.which("java") else []
    return ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", *meteor, *(["ROUGE-L"] if coco else []),
            "CIDEr-D"]  # fmt: skip


def tiny_conv_run(data, folder: Path, epochs: int, **sections) -> Path:
    """A tiny decoder trained on the tiny conv encoder's cached features (folder/run), the
    source that encoder fine-tuning and exports start from; `sections` add settings."""
    from captioner.config import Config, merge
    from captioner.features.extract import extract_features
    from captioner.training.train import train

    model = {"units": 16, "embedding_dim": 8, "dropout": 0.0, **sections.pop("model", {})}
    grid = model.get("decoder", "lstm") != "lstm"  # the grid decoders read the 2 x 2 grid
    extract_features(data, folder / "f", EncoderConfig(TINY_CONV_ENCODER, "none", 64),
                     progress=False, grid=grid)  # fmt: skip
    config = merge(Config(), {
        "encoder": {"name": TINY_CONV_ENCODER, "weights": "none"},
        "model": model,
        "text": {"min_word_count": 1},
        "train": {"epochs": epochs, "learning_rate": 0.01, "batch_size": 32},
        **sections,
    })  # fmt: skip
    train(data, folder / "f", folder / "run", config, progress=False)
    return folder / "run"
