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
model.keras keeps the best epoch by dev BLEU-4 (epoch 0, the starting model, included), or by
finetune.select_by: greedy CIDEr-D, or BLEU-4 or CIDEr-D of the dev captions decoded with the
run's own [decode] settings (beam search: the captions it ships), decoded after every epoch.

Any decoder: the pooled LSTM, and the grid decoders (attention, updown, transformer), which
sample through their one-step functions (DecoderSteps) from the cache's flattened grids and
take their gradient from the teacher-forced log-probabilities of the sampled captions. A run whose
encoder was fine-tuned (`finetune-encoder`) samples from its own encoder's features, computed
from the photos at the start; the encoder itself stays as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.config import FinetuneConfig
from captioner.data.text import PAD_ID, START_ID
from captioner.errors import ConfigError, DataError
from captioner.features.arrays import CaptionArrays, caption_arrays, caption_rows, references
from captioner.files import write_atomic
from captioner.metrics import CiderD
from captioner.model.decoder import DecoderSteps
from captioner.model.rundir import ENCODER_FILE, Run, load_run_features
from captioner.training.finetuning import FinetuneSummary, read_source, run_epochs, start_run
from captioner.training.validation import selection_decoding, selection_scores_function


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


@dataclass
class _Source:
    """The run SCST starts from, with the splits as arrays and the reward, read and checked
    before TensorFlow starts (but for a fine-tuned encoder's features, which it computes)."""

    run: Run
    train: CaptionArrays
    dev: CaptionArrays
    dev_references: list
    reward: CiderD
    info: dict[str, str]


def _read_source(source_run, run_dir, data_root, features_path) -> _Source:
    source = read_source(source_run, run_dir, data_root)
    run, dataset = source.run, source.dataset
    vocabulary, max_words = run.vocabulary, run.config.text.max_caption_words
    if run.encoder.finetuned:  # no cache holds what its own encoder computes
        if features_path is not None:
            raise ConfigError(f"{features_path}: {run.directory} has its own fine-tuned encoder, "
                              "whose features finetune computes: leave out --features")  # fmt: skip
        train_arrays, dev_arrays = own_encoder_arrays(run, dataset, ("train", "dev"))
        info = source.info
    else:
        cache, features_path = load_run_features(run, source.info["data"], features_path)
        train_arrays = caption_arrays(dataset, "train", cache, vocabulary, max_words)
        dev_arrays = caption_arrays(dataset, "dev", cache, vocabulary, max_words)
        info = {**source.info, "features": str(Path(features_path).resolve())}
    # CIDEr-D's document frequencies come from the train references, as the reward's should.
    reward = CiderD(references(dataset, train_arrays.names, vocabulary.tokenizer))
    dev_references = references(dataset, dev_arrays.names, vocabulary.tokenizer)
    return _Source(run, train_arrays, dev_arrays, dev_references, reward, info)


def own_encoder_arrays(run: Run, dataset, splits, chunk: int = 256) -> list[CaptionArrays]:
    """The splits' arrays with the features of the run's own fine-tuned encoder, computed now
    (its weights are the run's; no cache holds them) and kept in memory, grids in float16 as
    caches keep them: Flickr8k's 6,000 train photos take 1 GB, Flickr30k's 29,000 about 5."""
    from captioner.features.encoders import encode_files, make_encode_function

    batch_size, size = run.config.encoder.batch_size, run.encoder.input_size
    encode = make_encode_function(run.load_encoder(), batch_size)
    dtype = np.float16 if run.encoder.cells else np.float32
    arrays = []
    for split in splits:
        names = dataset.splits[split]
        if not names:
            raise DataError(f"{dataset.root}: the {split} split has no images with captions")
        paths = [dataset.image_path(name) for name in names]
        parts = [encode_files(encode, paths[i : i + chunk], size, batch_size).astype(dtype)
                 for i in range(0, len(paths), chunk)]  # fmt: skip
        features = np.concatenate(parts)
        rows, inputs, targets = caption_rows(dataset, names, run.vocabulary,
                                             run.config.text.max_caption_words)  # fmt: skip
        arrays.append(CaptionArrays(names, features, rows, inputs, targets))
    return arrays


class _SelfCriticalEpoch:
    """One pass over the training images: sample, reward, step. Returns the epoch's means."""

    def __init__(self, model, source: _Source, config: FinetuneConfig):
        from captioner.model.search import make_greedy_search, make_sampler

        steps, size = DecoderSteps(model), len(source.run.vocabulary)
        self.source, self.config = source, config
        self.sample = make_sampler(steps, size, config.max_length, config.samples)
        self.greedy = None  # the samples baseline needs no greedy captions
        if config.baseline == "greedy":
            self.greedy = make_greedy_search(steps, size, config.max_length)
        self.gradient_step = make_policy_gradient_step(model, config)
        self.rng = np.random.default_rng(config.seed)
        self.step_number = 0

    def rewards(self, ids: np.ndarray, images: np.ndarray) -> np.ndarray:
        decode, reward = self.source.run.vocabulary.decode, self.source.reward
        return np.array([reward.score(int(i), decode(row)) for i, row in zip(images, ids)])

    def __call__(self, progress_bar) -> dict[str, float]:
        images = len(self.source.train.names)
        order = self.rng.permutation(images)
        totals = {"loss": 0.0, "sample_cider_d": 0.0}
        if self.greedy is not None:
            totals["greedy_cider_d"] = 0.0
        for first in progress_bar(range(0, images, self.config.batch_size)):
            self._step(order[first : first + self.config.batch_size], totals)
        return {key: value / images for key, value in totals.items()}

    def _step(self, batch: np.ndarray, totals: dict[str, float]) -> None:
        import tensorflow as tf

        config = self.config
        features = self.source.train.features[batch]
        seed = tf.constant([config.seed, self.step_number], tf.int32)
        sampled = self.sample(features, seed).numpy()
        sample_rewards = self.rewards(sampled, np.repeat(batch, config.samples))
        greedy_rewards = None
        if self.greedy is not None:
            greedy_rewards = self.rewards(self.greedy(features)[0].numpy(), batch)
            totals["greedy_cider_d"] += float(greedy_rewards.sum())
        advantages = self_critical_advantages(sample_rewards, config.samples, greedy_rewards)
        inputs, targets = teacher_forcing_of_samples(sampled)
        repeated = np.repeat(features, config.samples, axis=0)
        loss = self.gradient_step(repeated, inputs, targets, advantages)
        totals["loss"] += float(loss) * len(batch)
        totals["sample_cider_d"] += float(sample_rewards.sum()) / config.samples
        self.step_number += 1


def _dev_scores(model, source: _Source, config: FinetuneConfig):
    """f() -> the dev scores each epoch logs: greedy captions' (val_bleu4, val_cider_d), and
    when finetune.select_by is one of them, those of the run's own [decode] settings
    (val_beam_bleu4, val_beam_cider_d: the captions `evaluate` scores)."""
    run = source.run
    return selection_scores_function(model, source.dev.features, source.dev_references,
                                     run.vocabulary, run.config.text.max_caption_words,
                                     config.select_by, run.decoding())  # fmt: skip


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
        source_run: a run directory written by `captioner train` (any decoder, pooled or grid),
            or a shipped one (captioner/reference and its member2).
        run_dir: the new run (created); `caption` and `evaluate` use it like any other.
        config: the [finetune] settings; select_by picks the epoch kept.
        data_root, features_path: default to those the source run was trained on.
        progress: show a progress bar over each epoch's batches.

    Returns: the summary, with `extra` decoding: "greedy", or the run's own decoding
        (evaluate's name for it, e.g. "beam3") when its scores pick the epoch.
    """
    started = time.perf_counter()
    source = _read_source(source_run, run_dir, data_root, features_path)
    run = source.run
    with start_run(run, source.info, run_dir, config, "finetune", config.select_by) as recorder:
        if run.encoder.finetuned:  # the decoder learns; the encoder it reads comes along as is
            write_atomic(
                recorder.run_dir / ENCODER_FILE, (run.directory / ENCODER_FILE).read_bytes()
            )
        model = run.load_model()
        dev_scores = _dev_scores(model, source, config)
        epoch_of_training = _SelfCriticalEpoch(model, source, config)

        def end_epoch(epoch: int, logs: dict) -> bool:
            return recorder.record(model, epoch, {**logs, **dev_scores()})

        summary = run_epochs(recorder, config.epochs, lambda epoch, bar: epoch_of_training(bar),
                             end_epoch, progress, started=started)  # fmt: skip
    summary.extra = {"decoding": selection_decoding(config.select_by, run.decoding())}
    return summary
