"""Command-line options that several commands share, each written once and made from the
settings they set: the decoding ranges from captioner.config.DECODE_RANGES, the server's options
from ServeConfig's fields, the strategies from STRATEGIES."""

from __future__ import annotations

from dataclasses import fields

import click

from captioner.config import DECODE_RANGES, STRATEGIES, ServeConfig

DECODE_HELP = {
    "beam": "Beam width; 1 is greedy search.",
    "max_length": "Most words per caption.",
    "length_penalty": "Beam ranking: log P / length**ALPHA; 0 favours short captions.",
    "no_repeat_ngram": "Forbid repeating any n-gram of this size (beam search); 0 = off.",
}


def _with(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def _range(low, high):
    """A click type for [low, high]: float if either bound is."""
    if isinstance(low, float) or isinstance(high, float):
        return click.FloatRange(low, high)
    return click.IntRange(low, high)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_options(command):
    """--run RUN, repeatable: one run or an ensemble; none, the shipped model."""
    return click.option(
        "--run", "run_dirs", multiple=True, type=click.Path(),
        help="Run directory; repeat it to decode with an ensemble "
        "[default: the reference Flickr8k model shipped with captioner].",
    )(command)  # fmt: skip


def decode_options(command):
    """--beam, --max-length, --length-penalty, --no-repeat-ngram, in DECODE_RANGES' ranges."""
    options = [
        click.option(_flag(name), type=_range(low, high), help=DECODE_HELP[name])
        for name, (_, low, high) in DECODE_RANGES.items()
    ]
    return _with(command, options)


def config_options(command):
    """--config FILE and --set SECTION.KEY=VALUE (repeatable)."""
    return _with(command, [
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="TOML file of settings that differ from the defaults (see configs/)."),
        click.option("--set", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one setting, e.g. --set model.units=512 (repeatable)."),
    ])  # fmt: skip


def training_options(command):
    """The options every training command has: --epochs, --learning-rate, --seed, --progress."""
    return _with(command, [
        click.option("--epochs", type=click.IntRange(1),
                     help="Most epochs (early stopping may end sooner)."),
        click.option("--learning-rate", type=float, help="Adam's learning rate (the decoder's)."),
        click.option("--seed", type=int, help="Random seed: the same seed, the same run."),
        click.option("--progress/--no-progress", default=True, help="Show progress bars."),
    ])  # fmt: skip


def strategy_option(command):
    return click.option(
        "--strategy", type=click.Choice(STRATEGIES),
        help="Train on one device (default), every local GPU (mirrored; CAPTIONER_CPU_DEVICES=N "
        "splits the CPU into N), or the machines of TF_CONFIG (multiworker). --batch-size stays "
        "the global batch.",
    )(command)  # fmt: skip


def serve_options(command):
    """One option per ServeConfig field, with its default, range and help."""
    options = [
        click.option(_flag(setting.name), default=setting.default, show_default=True,
                     type=_range(*setting.metadata["range"]), help=setting.metadata["help"])
        for setting in fields(ServeConfig)
    ]  # fmt: skip
    return _with(command, options)
