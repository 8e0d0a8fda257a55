"""One run, two scripts: the synthetic shapes captioned in Arabic when the top shape is red or
green and in Chinese when it is blue or yellow, trained for a few epochs on the tiny encoder, so
the model learns which language a photo gets. Shared by tests/test_browser.py and
scripts/screenshot_serve.py (--bilingual-demo), which builds docs/serve-scripts.png from it.

Importing this module registers the tiny test encoders (tests.conftest): a process that loads
the run needs them, so `captioner serve --run` is started as
`python -c "import tests.conftest; from captioner.cli import main; main()" serve --run ...`
(SERVE_LAUNCHER) with the repository's root on PYTHONPATH.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests import synthetic
from tests.conftest import DEV, TEST, TINY_ENCODER, TRAIN

ARABIC_TOPS = ("red", "green")  # the top shape's colour -> Arabic captions; else Chinese
SEED = 0
EPOCHS = 12
# test_scripts_end_to_end's tiny model: its settings, with this run's epochs.
SETTINGS = ["--set", "model.units=64", "--set", "model.embedding_dim=32",
            "--set", "model.dropout=0.1", "--set", "text.min_word_count=1"]  # fmt: skip
SERVE_LAUNCHER = "import tests.conftest; from captioner.cli import main; main()"
# Two photos drawn as the dataset draws its own, one for each script.
ARABIC_PHOTO = (("red", "circle"), ("yellow", "triangle"))  # دائرة حمراء فوق مثلث أصفر
CHINESE_PHOTO = (("blue", "square"), ("green", "circle"))  # 一个蓝色方块在一个绿色圆形上面


def make_examples(count: int, seed: int = SEED) -> list:
    """synthetic.make_examples' photos (the same seed draws the same shapes in every language)
    with their five Arabic or their five Chinese captions, by the top shape's colour."""
    english = synthetic.make_examples(count, seed)
    arabic, chinese = (synthetic.make_examples(count, seed, language) for language in ("ar", "zh"))
    examples = []
    for (name, image, captions), ar, zh in zip(english, arabic, chinese):
        top_colour = captions[0].split()[1]  # "A red circle above ..."
        examples.append((name, image, (ar if top_colour in ARABIC_TOPS else zh)[2]))
    return examples


def write_photos(folder: Path, scale: int = 1) -> tuple[Path, Path]:
    """ARABIC_PHOTO and CHINESE_PHOTO drawn as PNG files in `folder`, `scale` times the
    dataset's size (nearest neighbour: a page shows them sharp): (arabic, chinese)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "red-circle-over-yellow.png", folder / "blue-square-over-green.png"
    for path, (top, bottom) in zip(paths, (ARABIC_PHOTO, CHINESE_PHOTO)):
        image = synthetic.draw(top, bottom)
        size = (image.width * scale, image.height * scale)
        image.resize(size, Image.Resampling.NEAREST).save(path)
    return paths


def train(root: Path, epochs: int = EPOCHS) -> Path:
    """The dataset (root/data, Kaggle layout), its features (root/features) and the run
    (root/run), through the CLI as a user would: `captioner extract`, then `captioner train`
    with text.tokenizer left at auto. Returns the run."""
    from click.testing import CliRunner

    from captioner.cli import cli

    def invoke(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    data = synthetic.write_kaggle(root / "data", make_examples(TRAIN + DEV + TEST))
    invoke("extract", "--data", data, "--encoder", TINY_ENCODER, "--weights", "none",
           "--features", root / "features", "--no-progress")  # fmt: skip
    invoke("train", "--data", data, "--encoder", TINY_ENCODER, "--features", root / "features",
           "--run-dir", root / "run", "--epochs", epochs, "--batch-size", 32, "--learning-rate",
           0.01, "--no-progress", *SETTINGS)  # fmt: skip
    return root / "run"


def tokenizer_of(run: Path) -> str:
    """The tokenizer the run picked (text.tokenizer auto), as its vocabulary.json records."""
    return json.loads((run / "vocabulary.json").read_text(encoding="utf-8"))["tokenizer"]
