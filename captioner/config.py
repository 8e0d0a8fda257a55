"""Configuration: frozen dataclasses hold the defaults; TOML files and `--set` override them.

A config file holds only what differs from the defaults, in sections named like the dataclasses
below (`[model]`, `[train]`, ...). Unknown keys and wrong types raise `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from captioner.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DECODERS = ("lstm", "attention", "updown", "transformer")
STRATEGIES = ("one", "mirrored", "multiworker")  # built by captioner.training.distribute
# How `captioner evaluate` splits captions into words: "captioner" cleans references and
# captions as training captions are cleaned (the README's rows); "coco" runs coco-caption's PTB
# tokenizer and scorers, as papers report (captioner.inference.coco_metrics).
TOKENIZATIONS = ("captioner", "coco")
# How captions become tokens, text.tokenizer (captioner.data.cleaning).
TOKENIZERS = ("auto", "words", "characters")
# What `captioner export` writes: a TensorFlow SavedModel (TF Serving), or ONNX models for the
# light runtime without TensorFlow (captioner.runtime).
EXPORT_FORMATS = ("saved_model", "onnx")
# The description an export carries beside its models, read by the light runtime.
EXPORT_MANIFEST = "captioner-export.json"
# A selection score -> which way is better: it picks model.keras, drives early stopping, and
# tells `captioner info` which epoch a run kept.
SELECT_MODE = {"val_loss": "min", "val_bleu4": "max"}
# finetune.select_by: the dev score that picks the epoch `finetune` keeps. val_bleu4 and
# val_cider_d score greedy captions (what every stage logs, cheap); val_beam_bleu4 and
# val_beam_cider_d the captions of the run's own [decode] settings (beam search: what
# `evaluate` and `caption` give), decoded after every epoch only when one of them is chosen.
FINETUNE_SELECT_BY = ("val_bleu4", "val_cider_d", "val_beam_bleu4", "val_beam_cider_d")
# Every score that can pick an epoch, and which way is better (RunRecorder, `captioner info`).
SCORE_MODE = {**SELECT_MODE, **dict.fromkeys(FINETUNE_SELECT_BY, "max")}
# Accepted decoding values, by the name the command line, the API and the server give them:
# (DecodeConfig field, lowest, highest). DecodeConfig checks them whoever builds it.
DECODE_RANGES = {
    "beam": ("beam_size", 1, 50),
    "max_length": ("max_length", 1, 200),
    "length_penalty": ("length_penalty", 0.0, 10.0),
    "no_repeat_ngram": ("no_repeat_ngram", 0, 10),
}


def check_length(max_length: int, limit: int | None) -> None:
    """A Transformer decoder keeps transformer.max_words words' keys and values (its state
    cannot grow inside a search's loop): the searches and exports refuse longer captions
    instead of decoding them wrong. limit None: the decoder decodes any length."""
    if limit is not None and max_length > limit:
        raise ConfigError(f"max_length: {max_length} words is more than this decoder's "
                          f"transformer.max_words ({limit})")  # fmt: skip


def _check_choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(valid)}")


def _check_range(name: str, value: float, low: float, high: float | None) -> None:
    """Finite and within [low, high] (no upper bound when high is None)."""
    if math.isfinite(value) and low <= value and (high is None or value <= high):
        return
    if high is None:
        raise ConfigError(f"{name}: {value!r} is not at least {low}")
    raise ConfigError(f"{name}: {value!r} is not between {low} and {high}")


@dataclass(frozen=True)
class TextConfig:
    # Words seen fewer times in the training captions become <unk>: rare words cannot be learnt
    # from a handful of examples and only slow down the softmax.
    min_word_count: int = 5
    # Longer captions are cut (Flickr8k's longest has 37 words; 99.9% have fewer than 30).
    max_caption_words: int = 30
    # How cleaned captions become tokens (captioner.data.cleaning): "words" at spaces;
    # "characters", one per character of the scripts written without spaces (Chinese,
    # Japanese, Thai...); "auto" picks characters when most training captions are in those.
    tokenizer: str = "auto"
    # The captions' language (ISO 639-1): METEOR scores in it where METEOR 1.5 knows it.
    language: str = "en"

    def __post_init__(self):
        _check_choice("text.tokenizer", self.tokenizer, TOKENIZERS)
        if not (self.language.isascii() and self.language.isalpha() and
                2 <= len(self.language) <= 3 and self.language.islower()):  # fmt: skip
            raise ConfigError(f"text.language: {self.language!r} is not an ISO 639 code "
                              "such as en, hi or zh")  # fmt: skip


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "inception_v3"
    # "imagenet" (Keras downloads them once), a path to a weights file, or "none" (random; tests).
    weights: str = "imagenet"
    batch_size: int = 32


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = 256
    units: int = 256  # LSTM width; the image is projected to this size to start the LSTM
    dropout: float = 0.5
    # The Dense + ReLU layer between the LSTM and the logits (the classic Keras design); off
    # gives the plain Show-and-Tell head, LSTM -> logits.
    hidden_layer: bool = True
    # "lstm": the image only starts the LSTM. The grid decoders read the encoder's grid of cells
    # (`captioner extract --grid`): "attention" attends after the LSTM (captioner.model.attention),
    # "updown" through a second LSTM ([updown]), "transformer" with blocks of attention
    # ([transformer]); see captioner.model.decoder.
    decoder: str = "lstm"
    attention_dim: int = 256  # width of the attention's scoring layer

    def __post_init__(self):
        _check_choice("model.decoder", self.decoder, DECODERS)

    @property
    def needs_grid(self) -> bool:
        """The grid decoders read each photo's grid of cells (`captioner extract --grid`), the
        plain one its pooled vector: this picks the cache either way."""
        return self.decoder != "lstm"


@dataclass(frozen=True)
class UpDownConfig:
    """model.decoder = "updown" (captioner.model.updown); the words' embedding, the cells'
    projection (model.units), dropout and attention_dim come from [model]."""

    # The attention LSTM, whose state chooses the cells. 512 rather than the paper's 1,000:
    # Flickr8k's 6,000 photos overfit the 512-wide decoders already (docs/results.md).
    attention_units: int = 512
    # The language LSTM, fed by the attended context: the same width, as in the paper.
    language_units: int = 512


@dataclass(frozen=True)
class TransformerConfig:
    """model.decoder = "transformer" (captioner.model.transformer)."""

    # Width of words and cells alike. 256, half of the LSTMs': self-attention needs no wide
    # state to carry the caption, and 6,000 photos do not feed a wider one.
    width: int = 256
    # 2 blocks (keras-io's captioning example has 1, the base Transformer 6): each block adds a
    # look at the cells; more overfits small datasets.
    blocks: int = 2
    heads: int = 4  # 64 numbers per head, as in the base Transformer
    feed_forward: int = 1024  # 4 x width, as in the base Transformer
    # Higher than the base Transformer's 0.1: our LSTMs needed 0.5 on Flickr8k's 6,000 photos.
    dropout: float = 0.3
    # The longest caption it can decode: each block keeps this many words' keys and values
    # while decoding (decode.max_length may not exceed it; training captions are not limited).
    max_words: int = 64


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    clipnorm: float = 5.0  # gradient clipping by global norm; 0 turns it off
    # "plateau": reduce-on-plateau on the validation loss, LR *= factor after `patience` flat
    # epochs. "cosine": a linear warm-up from 0 over `warmup_epochs`, then a cosine decay, step
    # by step, to min_learning_rate at the end of `epochs`: a schedule that needs no plateau to
    # lower the rate, for recipes with fewer epochs.
    schedule: str = "plateau"
    warmup_epochs: float = 0.5
    lr_factor: float = 0.5
    lr_patience: int = 1
    min_learning_rate: float = 1e-5
    early_stopping_patience: int = 4  # epochs without a better selection score; 0 turns it off
    # Which epoch's weights become model.keras (and what early stopping watches): the lowest
    # dev loss, or the highest dev BLEU-4 of greedy captions (val_bleu4 is logged either way).
    select_by: str = "val_loss"
    # Targets (1 - e) on the caption's word and e spread over the vocabulary; 0 = plain
    # cross-entropy. The dev loss is then smoothed the same way.
    label_smoothing: float = 0.0
    # Augmentation: each epoch, a caption is paired with the features of its photo flipped left
    # to right with this probability (needs `captioner extract --mirror`); 0 = off.
    mirror_probability: float = 0.0
    seed: int = 0
    # "float32", or "mixed_float16" (GPUs) / "mixed_bfloat16" (GPUs and CPUs with AVX512-BF16):
    # compute in 16 bits, keep weights and the softmax in 32.
    precision: str = "float32"
    # XLA compilation of the training step: measured no faster on a 2-core CPU
    # (docs/performance.md), so off.
    jit_compile: bool = False
    # Where the split's features are during training: "memory" (copied in), "lazy" (read from
    # the cache batch by batch: a cache larger than RAM), or "auto": lazy for grids and for
    # pooled caches over 256 MB (captioner.features.store.LAZY_BYTES).
    feature_reading: str = "auto"
    # "one" device, "mirrored" (every local GPU, or CAPTIONER_CPU_DEVICES logical CPUs) or
    # "multiworker" (the machines of TF_CONFIG); batch_size stays the global batch
    # (captioner.training.distribute).
    strategy: str = "one"

    def __post_init__(self):
        _check_choice("train.precision", self.precision, PRECISIONS)
        _check_choice("train.schedule", self.schedule, ("plateau", "cosine"))
        _check_range("train.warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs))
        _check_choice("train.select_by", self.select_by, tuple(SELECT_MODE))
        _check_choice("train.feature_reading", self.feature_reading, ("auto", "memory", "lazy"))
        _check_choice("train.strategy", self.strategy, STRATEGIES)

    @property
    def lazy_features(self) -> bool | None:
        """True/False when told, None to let the cache decide."""
        return {"auto": None, "memory": False, "lazy": True}[self.feature_reading]


@dataclass(frozen=True)
class FinetuneConfig:
    """Self-critical sequence training on CIDEr-D after teacher forcing (`captioner finetune`)."""

    epochs: int = 10
    learning_rate: float = 5e-5  # well below teacher forcing's: small steps from a good model
    clipnorm: float = 5.0
    batch_size: int = 50  # images per step; each gives `samples` sampled captions
    samples: int = 5
    # What a sample's reward is compared with: the mean of the image's other samples (Luo 2020;
    # stabler, no greedy decoding) or the model's greedy caption (Rennie et al. 2017).
    baseline: str = "samples"
    max_length: int = 16  # words per sampled caption (Flickr8k's captions average 11)
    # The dev score that picks the epoch kept (epoch 0, the source run, included) and drives
    # early stopping: one of FINETUNE_SELECT_BY. The default scores greedy captions; the
    # val_beam_ ones those of the run's [decode] settings, the captions it ships (on Flickr8k
    # greedy and beam 3 disagreed: docs/finetuning.md), at the cost of a beam search of the
    # dev split after every epoch.
    select_by: str = "val_bleu4"
    early_stopping_patience: int = 2  # epochs without a better dev score; 0 turns it off
    seed: int = 0

    def __post_init__(self):
        _check_choice("finetune.baseline", self.baseline, ("samples", "greedy"))
        _check_choice("finetune.select_by", self.select_by, FINETUNE_SELECT_BY)
        if self.baseline == "samples" and self.samples < 2:
            raise ConfigError("finetune.samples: the samples baseline needs at least 2 samples")


@dataclass(frozen=True)
class EncoderFinetuneConfig:
    """Training the encoder and the decoder together from pixels (`captioner finetune-encoder`),
    starting from a run trained on cached features."""

    epochs: int = 3
    # Photos per step; each brings all its captions (Flickr8k: 5), so the encoder runs once per
    # photo and the decoder sees batch_size * 5 captions.
    batch_size: int = 16
    learning_rate: float = 1e-4  # the decoder's, below teacher forcing's: it starts trained
    # The encoder's own, lower rate: ImageNet features are moved, not relearnt.
    encoder_learning_rate: float = 1e-5
    clipnorm: float = 5.0  # over encoder and decoder gradients together; 0 turns it off
    # Each photo, each epoch: a random square crop of at least crop_scale of its side, resized
    # back, and flipped left to right half of the time. Off: the photo as `extract` reads it.
    augment: bool = True
    crop_scale: float = 0.8
    # The epoch kept (encoder and decoder): the lowest dev loss, or the highest dev score as
    # finetune.select_by names them (greedy BLEU-4 moves by about 0.01 between epochs on
    # Flickr8k's 1,000 dev photos: on seed 0 it stopped the run after 2 epochs while the dev
    # loss still fell; val_beam_ scores decode with the run's own settings, as evaluate does).
    select_by: str = "val_loss"
    early_stopping_patience: int = 2  # epochs without a better selection score; 0: never
    seed: int = 0

    def __post_init__(self):
        _check_choice("encoder_finetune.select_by", self.select_by,
                      ("val_loss", *FINETUNE_SELECT_BY))  # fmt: skip
        if not 0.1 <= self.crop_scale <= 1.0:
            raise ConfigError(f"encoder_finetune.crop_scale: {self.crop_scale} is not in [0.1, 1]")


@dataclass(frozen=True)
class DecodeConfig:
    beam_size: int = 1  # 1 is greedy search
    max_length: int = 30  # words, not counting <end>
    # Beam hypotheses are ranked by log P / length ** length_penalty (length counts <end>):
    # 0 favours short captions, 1 is the average log-probability per word.
    length_penalty: float = 0.7
    # Forbid repeating any n-gram of this size within a caption ("a dog and a dog"); 0 = off.
    no_repeat_ngram: int = 0

    def __post_init__(self):
        for name, (key, low, high) in DECODE_RANGES.items():
            _check_range(name, getattr(self, key), low, high)


def decoding_with(base: DecodeConfig, where: str = "decoding options", **given) -> DecodeConfig:
    """`base` with the settings `given` by field name (beam_size=3; None keeps the base's),
    each checked as a config file's value would be; ConfigError names what is wrong."""
    given = {key: value for key, value in given.items() if value is not None}
    return merge(Config(decode=base), {"decode": given}, where).decode


def _limit(default: float, low: float, high: float | None, help: str):
    """A ServeConfig field: its default, accepted range and the help of its command-line option
    (captioner.options.serve_options makes the options from these fields)."""
    return field(default=default, metadata={"range": (low, high), "help": help})


@dataclass(frozen=True)
class ServeConfig:
    """The limits and batching of `captioner serve` (not part of a run's Config)."""

    max_upload_mb: float = _limit(20.0, 0.001, None, "Largest request body, all photos together "
                                  "(MB = 10^6 bytes): 413 past it.")  # fmt: skip
    max_files: int = _limit(16, 1, 256, "Most photos per request.")
    # Per photo, read from its header before any pixel is decoded: 40 MP is a large camera's
    # photo, 120 MB once decoded; Pillow's own guard (Image.MAX_IMAGE_PIXELS) is set to it.
    max_megapixels: float = _limit(40.0, 0.001, None, "Most pixels per photo, read from its "
                                   "header before decoding: 413 past it.")  # fmt: skip
    # TF Serving's max_batch_size: photos of concurrent requests share one model call.
    max_batch: int = _limit(32, 1, 256, "Most photos per model call, from concurrent requests; "
                            "1 turns batching off.")  # fmt: skip
    batch_wait_ms: float = _limit(5.0, 0.0, 1000.0, "How long a batch's first photo waits for "
                                  "others to join it.")  # fmt: skip

    def __post_init__(self):
        for setting in fields(self):
            _check_range(setting.name, getattr(self, setting.name), *setting.metadata["range"])

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)


@dataclass(frozen=True)
class Config:
    text: TextConfig = field(default_factory=TextConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    updown: UpDownConfig = field(default_factory=UpDownConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    encoder_finetune: EncoderFinetuneConfig = field(default_factory=EncoderFinetuneConfig)

    def check_together(self) -> None:
        """Settings of different sections that must agree, checked once all are set (one at a
        time, a `--set` could pass through a combination that is wrong only for a moment)."""
        transformer = self.transformer
        if transformer.width % (2 * transformer.heads):  # heads split it, sines and cosines too
            raise ConfigError(f"transformer.width: {transformer.width} is not a multiple of 2 x "
                              f"{transformer.heads} heads")  # fmt: skip
        if self.model.decoder == "transformer":  # its caches are as long as the captions it reads
            limit = transformer.max_words
            check_length(self.decode.max_length, limit)
            if self.text.max_caption_words > limit:
                raise ConfigError(f"text.max_caption_words: {self.text.max_caption_words} "
                                  f"is more than transformer.max_words ({limit})")  # fmt: skip

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def _check_value(where: str, value: Any, default: Any) -> Any:
    """Returns `value` converted to the type of `default`, or raises ConfigError."""
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not expected:
        raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def merge(config: Config, overrides: dict[str, Any], where: str = "config") -> Config:
    """Returns `config` with `{section: {key: value}}` applied; unknown names raise ConfigError."""
    sections = {}
    for section_name, values in overrides.items():
        if section_name not in {f.name for f in fields(Config)}:
            valid = ", ".join(f.name for f in fields(Config))
            raise ConfigError(f"{where}: unknown section [{section_name}] (valid: {valid})")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section_name}] must be a table of settings")
        section = getattr(config, section_name)
        known = {f.name for f in fields(section)}
        changes = {}
        for key, value in values.items():
            if key not in known:
                valid = ", ".join(sorted(known))
                raise ConfigError(f"{where}: unknown setting {section_name}.{key} (valid: {valid})")
            default = getattr(section, key)
            changes[key] = _check_value(f"{where}: {section_name}.{key}", value, default)
        sections[section_name] = replace(section, **changes)
    return replace(config, **sections)


def parse_assignment(text: str) -> dict[str, dict[str, Any]]:
    """Parses `section.key=value` (value in TOML syntax; bare words are strings)."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.epochs=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as `encoder.name=vgg16`
    return {section: {key: value}}


def load_config(path: str | Path | None = None, assignments: tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file at `path` (if any), then each `section.key=value`."""
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            config = merge(config, tomllib.loads(path.read_text(encoding="utf-8")), str(path))
        except OSError as error:
            raise ConfigError(f"{path}: cannot read config file ({error.strerror})") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: {error}") from None
    for assignment in assignments:
        config = merge(config, parse_assignment(assignment), f"--set {assignment}")
    config.check_together()
    return config


def config_from_dict(data: dict[str, Any], where: str) -> Config:
    """Rebuilds a saved config (run directories store `Config.to_dict()` as JSON)."""
    return merge(Config(), data, where)
