"""`captioner info` on run directories: it names the epoch whose weights model.keras holds, as
the run recorded it, whichever rule chose it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from captioner.cli import cli
from captioner.config import Config
from tests.conftest import tiny_conv_run


def test_info_names_the_epoch_the_recorder_kept_by_its_own_rule(tmp_path):
    """A fine-tuned run selecting by dev loss whose best dev BLEU-4 is another epoch: info
    must name the epoch of lowest loss (guessing dev BLEU-4 from `finetuned_from` named the
    wrong one)."""
    import keras

    from captioner.data.text import Vocabulary
    from captioner.info import describe
    from captioner.model.rundir import EncoderInfo, load_keras_model
    from captioner.training.checkpoints import RunRecorder

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    recorder = RunRecorder(tmp_path / "run", "val_loss", patience=0)
    recorder.start(Config(), EncoderInfo("tiny_test", 32, 192, "none"), Vocabulary(["a"]),
                   data="d", finetuned_from="source")  # fmt: skip
    # epoch 2 has the lowest dev loss, epoch 3 the highest dev BLEU-4
    epochs = [{"val_loss": 0.9, "val_bleu4": 0.1}, {"val_loss": 0.5, "val_bleu4": 0.2},
              {"val_loss": 0.6, "val_bleu4": 0.4}]  # fmt: skip
    for epoch, logs in enumerate(epochs, start=1):
        model.set_weights([np.full((2, 1), epoch, np.float32), np.zeros(1, np.float32)])
        recorder.record(model, epoch, logs)

    best = describe(tmp_path / "run")["best"]
    assert best == {"epoch": 2, "selected_by": "val_loss", "val_loss": 0.5, "val_bleu4": 0.2}
    kept = load_keras_model(tmp_path / "run" / "model.keras").get_weights()[0]
    assert (kept == 2).all()  # model.keras holds epoch 2's weights


@pytest.fixture(scope="module")
def tuned_by_dev_loss(flickr8k_data, tmp_path_factory):
    """A decoder on the tiny conv encoder's features, then finetune-encoder with its default
    rule, dev loss."""
    folder = tmp_path_factory.mktemp("info")
    tiny_conv_run(flickr8k_data, folder, 2)
    args = ["finetune-encoder", "--run", folder / "run", "--run-dir", folder / "tuned",
            "--epochs", 3, "--learning-rate", 0.01, "--encoder-learning-rate", 0.01,
            "--batch-size", 16, "--no-progress",
            "--set", "encoder_finetune.early_stopping_patience=0"]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "tuned"


@pytest.mark.slow
def test_info_on_a_finetune_encoder_run_names_the_epoch_evaluate_scores(tuned_by_dev_loss):
    run = tuned_by_dev_loss
    history = json.loads((run / "history.json").read_text())
    result = CliRunner().invoke(cli, ["info", str(run), "--json"])
    assert result.exit_code == 0, result.output
    best = json.loads(result.output)["best"]
    lowest = min(history, key=lambda row: row["val_loss"])
    assert (best["epoch"], best["selected_by"]) == (lowest["epoch"], "val_loss")

    # evaluate decodes dev with model.keras and encoder.npz: greedy BLEU-4 is that epoch's.
    result = CliRunner().invoke(cli, ["evaluate", "--run", str(run), "--split", "dev",
                                      "--beam", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    bleu4 = float(result.output.splitlines()[2].split()[3])
    assert bleu4 == pytest.approx(best["val_bleu4"], abs=1e-4)


def test_cache_lists_what_is_kept_with_sizes_and_clears_it(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from captioner.cli import cli

    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    export = tmp_path / "cache" / "light" / "abc-0.1.0-onnx-1"
    export.mkdir(parents=True)
    (export / "step.onnx").write_bytes(b"x" * 2_500_000)
    (tmp_path / "cache" / "light" / "abc-0.1.0-onnx-1.log").write_bytes(b"started\n")
    listed = CliRunner().invoke(cli, ["cache"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        f"      2.5 MB  light    {export}",
        f"      0.0 MB  light    {export}.log",
        f"      2.5 MB  in {tmp_path / 'cache'}",
    ]
    cleared = CliRunner().invoke(cli, ["cache", "--clear"])
    assert cleared.output == f"cleared {tmp_path / 'cache'}: 2.5 MB freed\n"
    assert not (tmp_path / "cache").exists()
    assert CliRunner().invoke(cli, ["cache"]).output.endswith(f"0.0 MB  in {tmp_path / 'cache'}\n")


def test_info_prints_the_shipped_package_s_own_readme_row():
    """The README's row of the shipped model, `captioner evaluate`'s numbers for the 8-bit
    package, is what `captioner info` says it scores (not the float32 runs' numbers)."""
    import re
    from pathlib import Path

    from click.testing import CliRunner

    from captioner.cli import cli

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if "shipped: the same in 8 bits" in line)
    numbers = re.findall(r"\*\*(0\.\d{4})\*\*", row)
    names = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]
    said = CliRunner().invoke(cli, ["info"]).output
    expected = " ".join(f"{name} {number}" for name, number in zip(names, numbers, strict=True))
    assert f"test_scores:     {expected}\n" in said
