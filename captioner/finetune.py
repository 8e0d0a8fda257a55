"""`captioner finetune`: self-critical sequence training (Rennie et al. 2017) on CIDEr-D.

Teacher forcing trains the decoder on the reference's previous words, but captions are made from
the decoder's own. Starting from a run trained that way, each step draws `samples` captions per
training image from the model, scores each by CIDEr-D against that image's references (document
frequencies from the train split), and moves the weights by

    loss = - sum_t (reward - baseline) * log P(word_t | words before, image)   (sampled words)

Samples that beat the baseline become more likely, the others less. The baseline is the mean
reward of the image's other samples (Luo 2020, the default) or the model's own greedy caption
(the original). Dropout is off and BatchNorm uses its trained statistics, so the model that
samples is the one that decodes. Each epoch ends with greedy captions of the dev split;
model.keras keeps the best epoch by dev BLEU-4 (epoch 0, the starting model, included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from captioner.config import FinetuneConfig
from captioner.errors import RunError
from captioner.text import PAD_ID, START_ID, clean_caption


@dataclass
class FinetuneSummary:
    run_dir: Path
    epochs_run: int
    best_epoch: int  # 0: no epoch beat the starting model, whose weights were kept
    start_val_bleu4: float
    best_val_bleu4: float
    best_val_cider_d: float
    seconds: float


def teacher_forcing_of_samples(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sampled ids (N, L) (<pad> after <end>) -> inputs `<start> w1..` and targets `w1.. <end>`,
    cut to the longest sample. Targets after <end> are <pad> and count nothing in the loss."""
    length = max(1, int((ids != PAD_ID).sum(axis=1).max()))
    targets = ids[:, :length].astype(np.int32)
    inputs = np.concatenate([np.full((len(ids), 1), START_ID, np.int32), targets[:, :-1]], 1)
    return inputs, targets


def self_critical_advantages(
    sample_rewards: np.ndarray, samples: int, greedy_rewards: np.ndarray | None = None
) -> np.ndarray:
    """How much better each sample did than its baseline.

    sample_rewards: (images * samples,) rewards, image-major. The baseline is the image's greedy
    caption's reward when `greedy_rewards` (images,) is given (Rennie et al. 2017), else the mean
    reward of the image's other samples (Luo 2020): advantages then sum to zero per image.
    """
    rewards = sample_rewards.reshape(-1, samples)
    if greedy_rewards is not None:
        baseline = greedy_rewards[:, None]
    else:
        baseline = (rewards.sum(axis=1, keepdims=True) - rewards) / (samples - 1)
    return (rewards - baseline).reshape(-1).astype(np.float32)


def make_policy_gradient_step(model, config: FinetuneConfig):
    """Returns a compiled f(features (N, D), inputs (N, T), targets (N, T), advantages (N,))
    -> loss, one Adam step on the self-critical loss (mean over sampled words)."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(config.learning_rate, clipnorm=config.clipnorm or None)
    optimizer.build(model.trainable_variables)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None], tf.float32),
        ]
    )
    def step(features, inputs, targets, advantages):
        words = tf.cast(tf.not_equal(targets, PAD_ID), tf.float32)
        with tf.GradientTape() as tape:
            logits = model([features, inputs], training=False)
            negative_log_p = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
            weighted = advantages[:, None] * negative_log_p * words
            loss = tf.reduce_sum(weighted) / tf.maximum(tf.reduce_sum(words), 1.0)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return step


def finetune(
    source_run: str | Path,
    run_dir: str | Path,
    config: FinetuneConfig,
    data_root: str | Path | None = None,
    features_path: str | Path | None = None,
    progress: bool = True,
) -> FinetuneSummary:
    """Self-critical training of a trained run's decoder into a new run directory.

    Args:
        source_run: a run directory written by `captioner train`.
        run_dir: the new run (created); `caption` and `evaluate` use it like any other.
        config: the [finetune] settings.
        data_root, features_path: default to those the source run was trained on.
    """
    from tqdm import tqdm

    from captioner.data import load_dataset
    from captioner.decode import make_greedy_search, make_sampler
    from captioner.metrics import CiderD
    from captioner.model import DecoderSteps
    from captioner.rundir import (
        HISTORY_FILE,
        LAST_FILE,
        MODEL_FILE,
        load_run,
        load_run_features,
        save_keras_model,
        save_run_info,
        write_json,
    )
    from captioner.train import caption_arrays, dev_scores_function

    start = time.perf_counter()
    source = load_run(source_run)
    if Path(run_dir).resolve() == source.directory.resolve():
        raise RunError(f"{run_dir}: give the fine-tuned run its own directory, not the source's")
    data_root = data_root or source.info["data"]
    dataset = load_dataset(data_root)
    cache, features_path = load_run_features(source, data_root, features_path)
    vocabulary, max_words = source.vocabulary, source.config.text.max_caption_words
    train_arrays = caption_arrays(dataset, "train", cache, vocabulary, max_words)
    dev_arrays = caption_arrays(dataset, "dev", cache, vocabulary, max_words)
    references = [[clean_caption(c) for c in dataset.captions[n]] for n in train_arrays.names]
    reward = CiderD(references)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    vocabulary.save(run_dir / "vocabulary.json")
    new_config = replace(source.config, finetune=config)
    save_run_info(
        run_dir,
        new_config,
        source.encoder,
        data=str(Path(data_root).resolve()),
        features=str(Path(features_path).resolve()),
        vocabulary_size=len(vocabulary),
        finetuned_from=str(Path(source_run).resolve()),
    )

    import keras  # only now: bad input above fails without TensorFlow's start-up time
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    model = source.load_model()
    steps = DecoderSteps(model)
    sample = make_sampler(steps, len(vocabulary), config.max_length, config.samples)
    if config.baseline == "greedy":  # the samples baseline needs no greedy captions
        greedy = make_greedy_search(steps, len(vocabulary), config.max_length)
    gradient_step = make_policy_gradient_step(model, config)
    dev_scores = dev_scores_function(model, dev_arrays, dataset, vocabulary, max_words)

    def rewards(ids: np.ndarray, images: np.ndarray) -> np.ndarray:
        return np.array(
            [reward.score(int(i), vocabulary.decode(row)) for i, row in zip(images, ids)]
        )

    best = dev_scores()
    start_bleu4 = best["BLEU-4"]
    save_keras_model(model, run_dir / MODEL_FILE)  # until an epoch beats the starting model
    history = [{"epoch": 0, "val_bleu4": best["BLEU-4"], "val_cider_d": best["CIDEr-D"]}]
    write_json(run_dir / HISTORY_FILE, history)
    rng = np.random.default_rng(config.seed)
    best_epoch, waited, step_number = 0, 0, 0
    images = len(train_arrays.names)
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(images)
        batches = range(0, images, config.batch_size)
        totals = {"loss": 0.0, "sample_cider_d": 0.0}
        if config.baseline == "greedy":
            totals["greedy_cider_d"] = 0.0
        for first in tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False):
            batch = order[first : first + config.batch_size]
            features = train_arrays.features[batch]
            seed = tf.constant([config.seed, step_number], tf.int32)
            sampled = sample(features, seed).numpy()
            sample_rewards = rewards(sampled, np.repeat(batch, config.samples))
            greedy_rewards = None
            if config.baseline == "greedy":
                greedy_rewards = rewards(greedy(features).numpy(), batch)
                totals["greedy_cider_d"] += float(greedy_rewards.sum())
            advantages = self_critical_advantages(sample_rewards, config.samples, greedy_rewards)
            inputs, targets = teacher_forcing_of_samples(sampled)
            repeated = np.repeat(features, config.samples, axis=0)
            loss = gradient_step(repeated, inputs, targets, advantages)
            totals["loss"] += float(loss) * len(batch)
            totals["sample_cider_d"] += float(sample_rewards.sum()) / config.samples
            step_number += 1
        scores = dev_scores()
        logs = {k: v / images for k, v in totals.items()}
        logs.update(val_bleu4=scores["BLEU-4"], val_cider_d=scores["CIDEr-D"])
        history.append({"epoch": epoch, **logs})
        save_keras_model(model, run_dir / LAST_FILE)
        if scores["BLEU-4"] > best["BLEU-4"]:
            best, best_epoch, waited = scores, epoch, 0
            save_keras_model(model, run_dir / MODEL_FILE)
        else:
            waited += 1
        write_json(run_dir / HISTORY_FILE, history)
        if progress:
            tqdm.write(
                f"epoch {epoch}: train CIDEr-D of samples {logs['sample_cider_d']:.3f}; "
                f"dev BLEU-4 {scores['BLEU-4']:.4f} "
                f"CIDEr-D {scores['CIDEr-D']:.4f}"
            )
        if config.early_stopping_patience and waited >= config.early_stopping_patience:
            break
    return FinetuneSummary(
        run_dir,
        len(history) - 1,
        best_epoch,
        start_bleu4,
        best["BLEU-4"],
        best["CIDEr-D"],
        time.perf_counter() - start,
    )
