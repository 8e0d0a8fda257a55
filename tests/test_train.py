"""The training pipeline computes the loss a plain per-caption loop would, and trains as told."""

from __future__ import annotations

import json

import numpy as np
import pytest

from captioner.config import Config, ModelConfig, TrainConfig, merge
from captioner.data.text import teacher_forcing_arrays
from captioner.features.arrays import CaptionArrays
from captioner.training.pipeline import count_batches, make_batches
from captioner.training.train import compile_decoder

CAPTIONS = [
    [4, 5, 6],
    [7, 8, 9, 10, 11, 12, 13, 14],
    [5],
    [9, 9, 4, 6, 7],
    [8, 4, 4, 4, 4, 4, 4, 4, 4],
]
ROWS = [0, 1, 0, 2, 1]
V, D = 16, 5


@pytest.fixture(scope="module")
def tiny():
    import keras

    from captioner.model.decoder import build_decoder

    keras.utils.set_random_seed(3)
    model = build_decoder(ModelConfig(embedding_dim=6, units=8, dropout=0.0), V, D)
    compile_decoder(model, TrainConfig())
    inputs, targets = teacher_forcing_arrays(CAPTIONS, max_words=12)
    features = np.random.RandomState(0).normal(size=(3, D)).astype(np.float32)
    arrays = CaptionArrays(["a", "b", "c"], features, np.array(ROWS, np.int32), inputs, targets)
    return model, arrays


def per_caption_losses(model, arrays) -> list[float]:
    """Each caption alone, unpadded: mean -log p(next word) over its words and <end>."""
    import tensorflow as tf

    losses = []
    for row, words in zip(ROWS, CAPTIONS):
        x = np.array([[1, *words]], np.int32)  # <start> w1 .. wn
        y = np.array([*words, 2])  # w1 .. wn <end>
        logits = model([arrays.features[row : row + 1], x], training=False)[0]
        log_probs = tf.nn.log_softmax(logits).numpy()
        losses.append(-log_probs[np.arange(len(y)), y].mean())
    return losses


def test_batched_masked_loss_equals_the_per_caption_computation(tiny):
    model, arrays = tiny
    expected = per_caption_losses(model, arrays)
    lengths = [len(c) + 1 for c in CAPTIONS]
    # Word-weighted mean over the whole set, from the padded, bucketed batches.
    total, words = 0.0, 0
    for (features, x), y, weights in make_batches(arrays, batch_size=2, shuffle=False):
        logits = model([features, x], training=False)
        batch_words = int(weights.numpy().sum())
        total += float(model.loss(y, logits, sample_weight=weights)) * batch_words
        words += batch_words
    assert words == sum(lengths)
    assert total / words == pytest.approx(np.dot(expected, lengths) / sum(lengths), rel=1e-5)


def test_one_batch_with_padding_gives_the_same_loss(tiny):
    model, arrays = tiny
    expected = per_caption_losses(model, arrays)
    x, y = arrays.inputs, arrays.targets  # padded to 13 positions, far past most captions
    weights = (y != 0).astype(np.float32)
    logits = model([arrays.features[ROWS], x], training=False)
    lengths = np.array([len(c) + 1 for c in CAPTIONS])
    assert float(model.loss(y, logits, sample_weight=weights)) == pytest.approx(
        np.dot(expected, lengths) / lengths.sum(), rel=1e-5
    )


def test_batch_count_is_known_before_the_epoch(tiny):
    _, arrays = tiny
    for batch_size in (1, 2, 64):
        batches = make_batches(arrays, batch_size, shuffle=True)
        assert sum(1 for _ in batches) == count_batches(arrays, batch_size) == len(batches)


def train_tiny_pooled(data, folder, **train_settings):
    """A 16-unit LSTM trained on the tiny encoder's pooled features into folder/run, with
    `train_settings` ([train]); returns train's summary."""
    from captioner.features.extract import extract_features
    from captioner.training.train import train
    from tests.conftest import TINY, TINY_ENCODER

    extract_features(data, folder / "f", TINY, progress=False)
    config = merge(Config(), {
        "encoder": {"name": TINY_ENCODER},
        "model": {"units": 16, "embedding_dim": 8},
        "text": {"min_word_count": 1},
        "train": train_settings,
    })  # fmt: skip
    return train(data, folder / "f", folder / "run", config, progress=False)


@pytest.mark.slow
def test_mixed_precision_trains_and_leaves_float32_behind(flickr8k_data, tmp_path):
    import keras

    summary = train_tiny_pooled(flickr8k_data, tmp_path, epochs=2, precision="mixed_bfloat16")
    assert summary.epochs_run == 2 and np.isfinite(summary.best_val_loss)
    assert keras.mixed_precision.global_policy().name == "float32"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["learning_rate"] == pytest.approx(1e-3)
    assert all(0 <= h["val_bleu4"] <= 1 for h in history)  # dev BLEU-4 logged every epoch
    for name in ("loss.png", "training.csv", "logs"):
        assert (tmp_path / "run" / name).exists(), name


@pytest.mark.slow
def test_a_grid_run_trained_in_mixed_precision_decodes_in_float32(flickr8k_data, tmp_path):
    """model.keras keeps its layers' bfloat16 policies; loading rebuilds the decoder in float32
    (its weights are float32 either way), so Up-Down's beam search, whose state is float32,
    evaluates it. Found by a full Flickr8k run: evaluate failed with a dtype mismatch."""
    from click.testing import CliRunner

    from captioner.cli import cli
    from captioner.model.rundir import load_run
    from tests.conftest import tiny_conv_run

    train_settings = {"epochs": 1, "learning_rate": 0.01, "batch_size": 32,
                      "precision": "mixed_bfloat16"}  # fmt: skip
    run_dir = tiny_conv_run(flickr8k_data, tmp_path, 1, model={"decoder": "updown"},
                            updown={"attention_units": 16, "language_units": 16},
                            train=train_settings, decode={"beam_size": 3})  # fmt: skip
    model = load_run(run_dir).load_model()
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    result = CliRunner().invoke(cli, ["evaluate", "--run", str(run_dir), "--split", "dev"])
    assert result.exit_code == 0 and "beam 3" in result.output, result.output


@pytest.mark.slow
def test_the_best_epoch_can_be_chosen_by_dev_bleu(flickr8k_data, tmp_path):
    from captioner.features.extract import extract_features
    from captioner.training.train import train
    from tests.conftest import TINY, TINY_ENCODER

    extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False)
    config = merge(Config(), {
        "encoder": {"name": TINY_ENCODER},
        "model": {"units": 32, "embedding_dim": 16, "dropout": 0.0},
        "text": {"min_word_count": 1},
        "train": {"epochs": 6, "select_by": "val_bleu4", "learning_rate": 0.01},
    })  # fmt: skip
    summary = train(flickr8k_data, tmp_path / "f", tmp_path / "run", config, progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    bleu = [h["val_bleu4"] for h in history]
    assert summary.best_epoch == 1 + bleu.index(max(bleu))
    assert summary.best_val_bleu4 == pytest.approx(max(bleu))


def test_label_smoothing_spreads_the_target_over_the_vocabulary(tiny):
    from captioner.training.train import smoothed_cross_entropy

    model, arrays = tiny
    x, y = arrays.inputs, arrays.targets
    weights = (y != 0).astype(np.float32)
    logits = model([arrays.features[ROWS], x], training=False).numpy()
    log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    e = 0.1
    target = np.full(log_p.shape, e / V)  # (1 - e) one-hot + e uniform, written out
    np.put_along_axis(target, y[..., None], 1 - e + e / V, axis=-1)
    per_word = -(target * log_p).sum(axis=-1)
    expected = (per_word * weights).sum() / weights.sum()
    loss = smoothed_cross_entropy(e)(y, logits, sample_weight=weights)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    plain = smoothed_cross_entropy(0.0)(y, logits, sample_weight=weights)
    assert float(plain) == pytest.approx(float(model.loss(y, logits, sample_weight=weights)))


def test_mirroring_swaps_in_the_mirrored_features_at_the_asked_rate_anew_each_epoch():
    from captioner.training.pipeline import make_batches

    images, captions = 50, 2000
    rng = np.random.RandomState(0)
    features = rng.normal(size=(images, 4)).astype(np.float32)
    mirrored = -features  # tells each row's source apart
    rows = rng.randint(0, images, captions).astype(np.int32)
    inputs, targets = teacher_forcing_arrays([[5, 6]] * captions, max_words=3)
    arrays = CaptionArrays([str(i) for i in range(images)], features, rows, inputs, targets)
    arrays.mirrored = mirrored

    def mirrored_masks(epochs):
        batches = make_batches(arrays, 500, False, seed=1, mirror_probability=0.3, epochs=epochs)
        taken = np.concatenate([f.numpy() for (f, _), _, _ in batches]).reshape(-1, captions, 4)
        is_mirrored = np.isclose(taken, -features[rows]).all(axis=2)
        assert (is_mirrored | np.isclose(taken, features[rows]).all(axis=2)).all()
        return is_mirrored

    first, second = mirrored_masks((0, 2))
    assert 0.25 < first.mean() < 0.35 and 0.25 < second.mean() < 0.35  # sd 0.01
    assert (first != second).any()  # drawn anew every epoch
    # An epoch's draws depend on its number alone: a resumed run draws the same.
    assert (mirrored_masks((1, 2))[0] == second).all()


def test_an_epoch_order_depends_on_the_seed_and_the_epoch_alone():
    from captioner.training.pipeline import count_batches, make_batches

    captions = 300
    rng = np.random.RandomState(1)
    inputs, targets = teacher_forcing_arrays(
        [list(rng.randint(4, 50, rng.randint(1, 12))) for _ in range(captions)], max_words=12
    )
    features = np.arange(captions, dtype=np.float32)[:, None]  # row i's feature is i
    arrays = CaptionArrays([str(i) for i in range(captions)], features,
                           np.arange(captions, dtype=np.int32), inputs, targets)  # fmt: skip

    def orders(epochs, seed=0):
        batches = make_batches(arrays, 32, True, seed=seed, epochs=epochs)
        rows = [f.numpy()[:, 0].astype(int) for (f, _), _, _ in batches]
        per_epoch = count_batches(arrays, 32)
        return [np.concatenate(rows[i : i + per_epoch]) for i in range(0, len(rows), per_epoch)]

    whole = orders((0, 3))
    assert all(sorted(order) == list(range(captions)) for order in whole)  # each caption once
    assert not (whole[0] == whole[1]).all()  # reshuffled every epoch
    assert (orders((2, 3))[0] == whole[2]).all()  # resuming at epoch 3 replays its order
    assert not (orders((0, 1), seed=1)[0] == whole[0]).all()


def test_mirroring_without_a_mirrored_cache_says_which_command_makes_it(flickr8k_data, tmp_path):
    from captioner.errors import CacheError
    from captioner.features.extract import extract_features
    from captioner.training.train import train
    from tests.conftest import TINY, TINY_ENCODER

    extract_features(flickr8k_data, tmp_path / "f", TINY, progress=False)
    config = merge(
        Config(), {"encoder": {"name": TINY_ENCODER}, "train": {"mirror_probability": 0.5}}
    )
    with pytest.raises(CacheError, match="feature cache not found: run `captioner extract`"):
        train(flickr8k_data, tmp_path / "f", tmp_path / "run", config, progress=False,
              mirrored_features_path=tmp_path / "none")  # fmt: skip
    with pytest.raises(CacheError, match="holds features of photos as they are"):
        train(flickr8k_data, tmp_path / "f", tmp_path / "run", config, progress=False,
              mirrored_features_path=tmp_path / "f")  # fmt: skip


def test_the_cosine_schedule_warms_up_then_decays_to_its_floor():
    from captioner.training.train import learning_rate

    config = TrainConfig(epochs=4, learning_rate=1e-3, min_learning_rate=1e-5,
                         schedule="cosine", warmup_epochs=0.4)  # fmt: skip
    rate = learning_rate(config, steps_per_epoch=10)
    at = {step: float(rate(step)) for step in (0, 1, 4, 5, 22, 40)}
    assert at[0] == 0.0 and at[1] == pytest.approx(2.5e-4)  # warm-up: 4 steps to 1e-3
    assert at[4] == pytest.approx(1e-3) and at[5] < 1e-3  # then it only decays
    assert at[22] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2, rel=1e-3)  # half way down
    assert at[40] == pytest.approx(1e-5)  # the floor at the last step of the last epoch
    assert learning_rate(TrainConfig(), 10) == 1e-3  # plateau: a number its callback lowers
    with pytest.raises(Exception, match="train.warmup_epochs: 5.0 is not between 0.0 and 4.0"):
        TrainConfig(epochs=4, warmup_epochs=5.0)


def test_a_run_trains_on_the_cosine_schedule_and_logs_its_rates(flickr8k_data, tmp_path):
    train_tiny_pooled(flickr8k_data, tmp_path, epochs=3, schedule="cosine", warmup_epochs=1.0,
                      early_stopping_patience=0)  # fmt: skip
    rates = [
        h["learning_rate"] for h in json.loads((tmp_path / "run" / "history.json").read_text())
    ]
    # Logged after each epoch: the warm-up's top, half way down, the floor.
    assert rates == pytest.approx([1e-3, (1e-3 + 1e-5) / 2, 1e-5], rel=1e-3)
