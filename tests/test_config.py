"""Settings: defaults, TOML files, `--set`, and the exact errors for what does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.config import (
    Config,
    ModelConfig,
    config_from_dict,
    load_config,
    merge,
    parse_assignment,
)
from captioner.errors import ConfigError

CONFIGS = Path(__file__).parents[1] / "configs"
SECTIONS = "text, encoder, model, updown, transformer, train, decode, finetune, encoder_finetune"


def test_defaults_without_file_or_assignments():
    config = load_config()
    assert config == Config()
    assert (config.encoder.name, config.model.decoder, config.decode.beam_size) == (
        "inception_v3",
        "lstm",
        1,
    )
    assert config.train.learning_rate == 1e-3 and config.text.min_word_count == 5


def test_a_file_overrides_only_what_it_names_and_set_goes_on_top(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nunits = 512\n\n[encoder]\nname = "vgg16"\n')
    config = load_config(path, ("model.units=64", "train.epochs=3"))
    assert (config.model.units, config.encoder.name, config.train.epochs) == (64, "vgg16", 3)
    assert config.model.embedding_dim == 256 and config.train.batch_size == 64  # defaults
    assert load_config(str(path)).model.units == 512  # a str path works as well


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.epochs=5", {"train": {"epochs": 5}}),
        ("train.learning_rate=1e-4", {"train": {"learning_rate": 1e-4}}),
        ("model.hidden_layer=false", {"model": {"hidden_layer": False}}),
        ('encoder.name="vgg16"', {"encoder": {"name": "vgg16"}}),
        ("encoder.name=vgg16", {"encoder": {"name": "vgg16"}}),  # a bare word is a string
        ("encoder.weights=/w/lite 1.h5", {"encoder": {"weights": "/w/lite 1.h5"}}),
        ("encoder.weights=a=b", {"encoder": {"weights": "a=b"}}),  # split at the first =
        (" model.units = 512 ", {"model": {"units": 512}}),
        ("model.units=", {"model": {"units": ""}}),
    ],
)
def test_parse_assignment_reads_toml_values_and_bare_words(text, expected):
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["epochs=5", "train.epochs", ".epochs=5", "train.=5", "=5"])
def test_parse_assignment_needs_section_key_and_value(text):
    with pytest.raises(ConfigError) as error:
        parse_assignment(text)
    assert str(error.value) == f"--set {text!r}: expected section.key=value, e.g. train.epochs=5"


def test_unknown_section_and_setting_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(None, ("optimizer.lr=0.1",))
    assert str(error.value) == (
        f"--set optimizer.lr=0.1: unknown section [optimizer] (valid: {SECTIONS})"
    )
    with pytest.raises(ConfigError) as error:
        load_config(None, ("decode.beam=3",))
    assert str(error.value) == (
        "--set decode.beam=3: unknown setting decode.beam "
        "(valid: beam_size, length_penalty, max_length, no_repeat_ngram)"
    )
    path = tmp_path / "c.toml"
    path.write_text("[model]\nsize = 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: unknown setting model.size (valid: attention_dim")
    path.write_text("units = 3\n")  # a setting outside any section
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: unknown section [units] (valid: {SECTIONS})"
    path.write_text("model = 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: [model] must be a table of settings"


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("model", "units", "big", "model.units: expected int, got 'big'"),
        ("model", "units", 2.5, "model.units: expected int, got 2.5"),
        ("model", "units", True, "model.units: expected int, got True"),  # bool is not an int
        ("model", "dropout", "0.5", "model.dropout: expected float, got '0.5'"),
        ("model", "dropout", False, "model.dropout: expected float, got False"),
        ("model", "hidden_layer", 1, "model.hidden_layer: expected bool, got 1"),
        ("encoder", "name", 16, "encoder.name: expected str, got 16"),
        ("train", "epochs", [5], "train.epochs: expected int, got [5]"),
    ],
)
def test_wrong_types_are_config_errors(section, key, value, message):
    with pytest.raises(ConfigError) as error:
        merge(Config(), {section: {key: value}}, "here")
    assert str(error.value) == f"here: {message}"


def test_an_int_becomes_a_float_where_a_float_is_expected():
    config = load_config(None, ("train.learning_rate=1", "model.dropout=0"))
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        (
            "model.decoder=gru",
            "model.decoder: 'gru' is not one of lstm, attention, updown, transformer",
        ),
        (
            "train.precision=float16",
            "train.precision: 'float16' is not one of float32, mixed_float16, mixed_bfloat16",
        ),
        ("train.select_by=bleu", "train.select_by: 'bleu' is not one of val_loss, val_bleu4"),
        ("finetune.baseline=mean", "finetune.baseline: 'mean' is not one of samples, greedy"),
        ("finetune.samples=1", "finetune.samples: the samples baseline needs at least 2 samples"),
    ],
)
def test_invalid_choices_are_config_errors(assignment, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, (assignment,))
    assert str(error.value) == message


def test_the_dataclasses_check_their_choices_themselves():
    with pytest.raises(ConfigError, match="model.decoder: 'gru' is not one of"):
        ModelConfig(decoder="gru")


def test_one_sample_is_enough_for_the_greedy_baseline():
    config = merge(Config(), {"finetune": {"baseline": "greedy", "samples": 1}})
    assert (config.finetune.baseline, config.finetune.samples) == ("greedy", 1)


def test_config_files_that_cannot_be_read(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "none.toml")
    assert str(error.value) == (
        f"{tmp_path / 'none.toml'}: cannot read config file (No such file or directory)"
    )
    (tmp_path / "bad.toml").write_text("[model]\nunits = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: Invalid value \(at line 2, column 9\)"):
        load_config(tmp_path / "bad.toml")


def test_config_from_dict_round_trips_to_dict_through_json():
    config = load_config(
        CONFIGS / "flickr8k-attention.toml", ("train.learning_rate=2e-4", "text.min_word_count=3")
    )
    saved = json.loads(json.dumps(config.to_dict()))  # what a run directory stores
    assert config_from_dict(saved, "run.json") == config
    assert config_from_dict(Config().to_dict(), "run.json") == Config()
    saved["model"]["size"] = 3  # e.g. written by a newer captioner
    with pytest.raises(ConfigError, match=r"^run\.json: unknown setting model\.size "):
        config_from_dict(saved, "run.json")


def test_encoder_finetune_crop_scale_must_leave_a_crop():
    with pytest.raises(ConfigError) as error:
        load_config(None, ("encoder_finetune.crop_scale=0.0",))
    assert str(error.value) == "encoder_finetune.crop_scale: 0.0 is not in [0.1, 1]"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("decode.beam_size=0", "beam: 0 is not between 1 and 50"),
        ("decode.length_penalty=11.0", "length_penalty: 11.0 is not between 0.0 and 10.0"),
        ("decode.length_penalty=nan", "length_penalty: nan is not between 0.0 and 10.0"),
        ("decode.no_repeat_ngram=-1", "no_repeat_ngram: -1 is not between 0 and 10"),
    ],
)
def test_decoding_ranges_are_checked_wherever_the_settings_come_from(assignment, message):
    """One range per setting (DECODE_RANGES): a config file, the API and the server meet the
    same check, which the command line's options are made from."""
    with pytest.raises(ConfigError) as error:
        load_config(None, (assignment,))
    assert str(error.value) == message


def test_the_command_line_takes_its_ranges_and_defaults_from_the_settings():
    from click.testing import CliRunner

    from captioner.cli import cli

    result = CliRunner().invoke(cli, ["caption", "--length-penalty", "10.5", "photo.jpg"])
    assert result.exit_code == 2
    assert "'--length-penalty': 10.5 is not in the range 0.0<=x<=10.0" in result.output
    result = CliRunner().invoke(cli, ["serve", "--max-batch", "257"])
    assert result.exit_code == 2
    assert "'--max-batch': 257 is not in the range 1<=x<=256" in result.output


def test_serve_limits_come_with_their_ranges():
    from captioner.config import ServeConfig

    assert ServeConfig(max_files=3).max_files == 3
    with pytest.raises(ConfigError) as error:
        ServeConfig(max_batch=0)
    assert str(error.value) == "max_batch: 0 is not between 1 and 256"
    with pytest.raises(ConfigError) as error:
        ServeConfig(max_upload_mb=0.0)
    assert str(error.value) == "max_upload_mb: 0.0 is not at least 0.001"


def test_a_transformer_config_is_checked_before_anything_is_built():
    """Its heads split the width evenly, and its caches hold the longest caption it trains on
    or decodes: refused in one line before training starts, not by a search halfway through."""
    with pytest.raises(ConfigError, match=r"transformer.width: 100 is not a multiple of 2 x 8"):
        load_config(None, ("transformer.width=100", "transformer.heads=8"))
    grid = ("model.decoder=transformer", "transformer.max_words=20")
    with pytest.raises(ConfigError, match=r"text.max_caption_words: 30 is more than "
                       r"transformer.max_words \(20\)"):  # fmt: skip
        load_config(None, (*grid, "decode.max_length=20"))
    with pytest.raises(ConfigError, match=r"max_length: 25 words is more than this decoder's"):
        load_config(None, (*grid, "text.max_caption_words=20", "decode.max_length=25"))
    assert load_config(None, (*grid, "text.max_caption_words=20", "decode.max_length=20"))
