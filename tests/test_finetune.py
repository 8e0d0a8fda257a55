"""Self-critical fine-tuning: the advantages, the policy-gradient step, and the whole command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from captioner.config import Config, FinetuneConfig, ModelConfig, merge
from captioner.data.text import END_ID, PAD_ID, START_ID
from captioner.training.scst import (
    make_policy_gradient_step,
    self_critical_advantages,
    teacher_forcing_of_samples,
)


def test_samples_baseline_compares_each_sample_with_the_others_of_its_image():
    rewards = np.array([1.0, 2.0, 3.0, 0.5, 0.5, 0.5])  # two images, three samples each
    advantages = self_critical_advantages(rewards, samples=3)
    assert advantages == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5, 0, 0, 0])
    assert advantages.reshape(2, 3).sum(axis=1) == pytest.approx([0, 0])


def test_greedy_baseline_subtracts_the_images_greedy_reward():
    rewards = np.array([1.0, 2.0, 0.0, 4.0])
    advantages = self_critical_advantages(rewards, 2, greedy_rewards=np.array([1.5, 1.0]))
    assert advantages == pytest.approx([-0.5, 0.5, -1.0, 3.0])


def test_samples_become_teacher_forcing_pairs_cut_to_the_longest():
    ids = np.array([[5, 6, END_ID, PAD_ID, PAD_ID, PAD_ID], [7, END_ID] + [PAD_ID] * 4])
    inputs, targets = teacher_forcing_of_samples(ids)
    assert targets.tolist() == [[5, 6, END_ID], [7, END_ID, PAD_ID]]
    assert inputs.tolist() == [[START_ID, 5, 6], [START_ID, 7, END_ID]]


def test_policy_gradient_makes_better_samples_more_likely():
    import keras
    import tensorflow as tf

    from captioner.model.decoder import build_decoder

    keras.utils.set_random_seed(0)
    model = build_decoder(ModelConfig(embedding_dim=8, units=16, dropout=0.0), 10, 4)
    step = make_policy_gradient_step(model, FinetuneConfig(learning_rate=0.01))
    features = np.ones((2, 4), np.float32)  # one image, two sampled captions
    inputs, targets = teacher_forcing_of_samples(np.array([[5, 6, END_ID], [7, 8, END_ID]]))

    def log_p():
        logits = model([features, inputs], training=False)
        picked = -tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        return picked.numpy().sum(axis=1)

    before = log_p()
    for _ in range(10):
        step(features, inputs, targets, np.array([1.0, -1.0], np.float32))
    after = log_p()
    # Measured on seeds 0-4: the rewarded caption gains 1.0 to 3.0 nats (2.3 on seed 0), the
    # other loses 3.8 to 7.1 (6.8); AVX-512, AVX2, Eigen kernels and 8 threads move these by
    # under 1e-5. The bounds are half the smallest gain and loss seen; with a learning rate of
    # 0, or the advantages' signs swapped, both fail.
    assert after[0] > before[0] + 0.5
    assert after[1] < before[1] - 1.5


@pytest.mark.slow
def test_finetune_writes_a_run_that_evaluates_and_keeps_its_best_epoch(flickr8k_data, tmp_path):
    from click.testing import CliRunner

    from captioner.cli import cli
    from captioner.features.extract import extract_features
    from captioner.training.train import train
    from tests.conftest import TINY, TINY_ENCODER

    extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False)
    config = merge(Config(), {
        "encoder": {"name": TINY_ENCODER},
        "model": {"units": 32, "embedding_dim": 16, "dropout": 0.0},
        "text": {"min_word_count": 1},
        "train": {"epochs": 4, "learning_rate": 0.01, "batch_size": 32},
    })  # fmt: skip
    train(flickr8k_data, tmp_path / "f", tmp_path / "run", config, progress=False)

    args = ["finetune", "--run", tmp_path / "run", "--run-dir", tmp_path / "scst",
            "--epochs", 2, "--no-progress",
            "--set", "finetune.batch_size=40", "--set", "finetune.samples=3"]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "fine-tuned 2 epochs" in result.output

    history = json.loads((tmp_path / "scst" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]  # epoch 0: the model it started from
    best = max(range(3), key=lambda i: history[i]["val_bleu4"])
    assert f"kept epoch {best}:" in result.output
    info = json.loads((tmp_path / "scst" / "run.json").read_text())
    assert info["finetuned_from"] == str((tmp_path / "run").resolve())
    assert info["config"]["finetune"]["samples"] == 3
    assert info["config"]["model"]["units"] == 32  # the decoder it started from

    out = CliRunner().invoke(cli, ["evaluate", "--run", str(tmp_path / "scst"), "--split", "dev"])
    assert out.exit_code == 0, out.output
    bleu4 = float(out.output.splitlines()[2].split()[3])
    assert bleu4 == pytest.approx(history[best]["val_bleu4"], abs=1e-4)


def test_finetune_select_by_names_a_dev_score_it_logs():
    from captioner.errors import ConfigError

    assert FinetuneConfig().select_by == "val_bleu4"  # greedy: no beam search every epoch
    with pytest.raises(ConfigError) as error:
        FinetuneConfig(select_by="beam_cider")
    assert str(error.value) == ("finetune.select_by: 'beam_cider' is not one of val_bleu4, "
                                "val_cider_d, val_beam_bleu4, val_beam_cider_d")  # fmt: skip


def dev_scores(run_dir) -> dict[str, float]:
    """`captioner evaluate --split dev` of a run (its own decoding): its scores by name."""
    from click.testing import CliRunner

    from captioner.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", "--run", str(run_dir), "--split", "dev"])
    assert result.exit_code == 0, result.output
    names, values = result.output.splitlines()[1:3]
    return dict(zip(names.split(), map(float, values.split())))


@pytest.mark.slow
def test_finetune_trains_updown_and_keeps_the_epoch_its_beam_decoding_picks(
    flickr8k_data, tmp_path
):
    """Self-critical training of a grid decoder (samples through Up-Down's one-step function,
    gradient through its teacher-forced log-probabilities), the epoch kept by dev CIDEr-D of
    the run's own beam-3 decoding: the captions `evaluate` scores."""
    from click.testing import CliRunner

    from captioner.cli import cli
    from captioner.features.extract import extract_features
    from captioner.model.rundir import load_keras_model, load_run
    from captioner.training.train import train
    from tests.conftest import TINY, TINY_ENCODER

    extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False, grid=True)
    config = merge(Config(), {
        "encoder": {"name": TINY_ENCODER},
        "model": {"decoder": "updown", "units": 16, "embedding_dim": 16, "dropout": 0.0},
        "updown": {"attention_units": 16, "language_units": 16},
        "text": {"min_word_count": 1},
        "train": {"epochs": 6, "learning_rate": 0.01, "batch_size": 32},
        "decode": {"beam_size": 3},
    })  # fmt: skip
    train(flickr8k_data, tmp_path / "f", tmp_path / "run", config, progress=False)

    args = ["finetune", "--run", tmp_path / "run", "--run-dir", tmp_path / "scst",
            "--epochs", 2, "--learning-rate", 0.001, "--no-progress",
            "--set", "finetune.batch_size=40", "--set", "finetune.samples=3",
            "--set", "finetune.select_by=val_beam_cider_d",
            "--set", "finetune.early_stopping_patience=0"]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "scst" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]  # epoch 0: the run it started from
    best = max(range(3), key=lambda i: history[i]["val_beam_cider_d"])
    assert f"kept epoch {best}:" in result.output and "dev BLEU-4 (beam3)" in result.output
    selection = json.loads((tmp_path / "scst" / "selection.json").read_text())
    assert (selection["select_by"], selection["kept_epoch"]) == ("val_beam_cider_d", best)
    # It trained: the last epoch's weights moved away from the source's.
    last = load_keras_model(tmp_path / "scst" / "last.keras").get_weights()
    start = load_run(tmp_path / "run").load_model().get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(last, start)) > 1e-4

    # Greedy and beam captions differ (here dev CIDEr-D 1.51 against 1.61 at epoch 0, 2.98
    # against 2.80 at epoch 1): each is logged as itself.
    assert any(h["val_beam_cider_d"] != h["val_cider_d"] for h in history)
    # evaluate's default decoding is the run's own, beam 3: the kept epoch's logged scores.
    beam = dev_scores(tmp_path / "scst")
    assert beam["CIDEr-D"] == pytest.approx(history[best]["val_beam_cider_d"], abs=1e-4)
    assert beam["BLEU-4"] == pytest.approx(history[best]["val_beam_bleu4"], abs=1e-4)


def test_finetune_refuses_to_overwrite_the_run_it_starts_from(tmp_path):
    from click.testing import CliRunner

    from captioner.cli import cli
    from captioner.model.rundir import shipped_run_dir

    run = str(shipped_run_dir())
    result = CliRunner().invoke(cli, ["finetune", "--run", run, "--run-dir", run])
    assert result.exit_code == 1
    assert result.output.strip().endswith("its own directory, not the source's")
