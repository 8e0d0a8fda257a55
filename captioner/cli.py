"""The `captioner` command: parses options, calls one library function per command, prints.

TensorFlow is imported only when a command that needs it runs, so `--help` is instant, and
through captioner.quiet, so its start-up lines stay hidden unless --verbose or CAPTIONER_DEBUG.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from captioner.config import EXPORT_FORMATS, TOKENIZATIONS
from captioner.errors import CaptionerError
from captioner.options import (
    config_options,
    decode_options,
    run_options,
    serve_options,
    strategy_option,
    training_options,
)
from captioner.quiet import VERBOSE, import_tensorflow

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# Commands that run in a blink without it; caption imports it only when it needs it (not with
# a cached light export: captioner.inference.light).
WITHOUT_TENSORFLOW = {"encoders", "info", "caption"}


class CaptionerCommand(click.Command):
    """Imports TensorFlow quietly once its options are parsed (so `--help` stays instant)."""

    def invoke(self, ctx):
        if self.name not in WITHOUT_TENSORFLOW:
            import_tensorflow()
        return super().invoke(ctx)


class CaptionerGroup(click.Group):
    """Turns library errors into one line and exit 1 (CAPTIONER_DEBUG=1 keeps the traceback),
    and so a full disk, wherever a write met it (the library names most of them itself)."""

    command_class = CaptionerCommand

    def invoke(self, ctx):
        from captioner.files import disk_full

        try:
            return super().invoke(ctx)
        except CaptionerError as error:
            if os.environ.get("CAPTIONER_DEBUG"):
                raise
            raise click.ClickException(str(error)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished work was saved", err=True)
            sys.exit(130)
        except Exception as error:
            full = disk_full(error)
            if full is None or os.environ.get("CAPTIONER_DEBUG"):
                raise
            raise click.ClickException(str(full)) from None


def _load(config_path, assignments, **sections):
    """The config from defaults, file and --set, then the explicit CLI options on top."""
    from captioner.config import load_config, merge

    config = load_config(config_path, tuple(assignments))
    given = {s: {k: v for k, v in kv.items() if v is not None} for s, kv in sections.items()}
    return merge(config, {s: kv for s, kv in given.items() if kv}, "command line")


def _runs_and_decoding(run_dirs, beam, max_length, length_penalty, no_repeat_ngram):
    """The runs (read once) and their decoding settings with the command line's on top."""
    from captioner.model.ensembles import load_runs

    runs = load_runs(run_dirs)
    decode = runs[0].decoding(
        beam_size=beam,
        max_length=max_length,
        length_penalty=length_penalty,
        no_repeat_ngram=no_repeat_ngram,
    )
    return runs, decode


@click.group(cls=CaptionerGroup, context_settings=CONTEXT)
@click.version_option(package_name="captioner")
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow's start-up and info log lines (hidden otherwise).")  # fmt: skip
def cli(verbose):
    """Image captioning: a CNN encoder, a decoder (LSTM, attention, Up-Down or Transformer), a
    command per stage.

    \b
      captioner extract --data ../flickr8k --encoder efficientnet_lite0
      captioner train --data ../flickr8k --encoder efficientnet_lite0 --epochs 20
      captioner caption --run runs/flickr8k-efficientnet_lite0 photo.jpg
      captioner evaluate --run runs/flickr8k-efficientnet_lite0 --beam 3
    """
    VERBOSE["asked"] = verbose  # for TensorFlow's import, wherever it happens


def _default_run_dir(data: str, encoder: str) -> Path:
    return Path("runs") / f"{Path(data).resolve().name}-{encoder}"


@cli.command(context_settings=CONTEXT)
@click.option(
    "--data",
    required=True,
    type=click.Path(),
    help="Dataset folder: Karpathy JSON, original Flickr8k or Kaggle layout.",
)
@click.option("--encoder", help="Encoder name (default inception_v3); see `captioner encoders`.")
@click.option("--weights", help='"imagenet" (default), "none" (random) or a weights file.')
@click.option(
    "--features",
    type=click.Path(),
    help="Cache folder to create or extend [default: data/<dataset>-<encoder>].",
)
@click.option("--batch-size", type=click.IntRange(1), help="Images per forward pass.")
@click.option(
    "--mirror",
    is_flag=True,
    help="Encode the photos flipped left to right, into their own cache "
    "[default: data/<dataset>-<encoder>-mirrored], for train.mirror_probability.",
)
@click.option(
    "--grid",
    is_flag=True,
    help="Keep each photo's grid of feature cells instead of their average, into their own "
    "cache [default: data/<dataset>-<encoder>-grid], for the grid decoders (model.decoder = "
    "attention, updown, transformer).",
)
@click.option(
    "--shard",
    metavar="I/N",
    help="Encode only the I-th of N slices of the photos into the same --features folder "
    "(run the N shards anywhere, at once or not; the later stages read them as one cache).",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@config_options
def extract(data, encoder, weights, features, batch_size, mirror, grid, shard, progress,
            config_path, assignments):  # fmt: skip
    """Encode every captioned photo of a dataset once and cache the feature vectors.

    Re-running adds only the photos the cache lacks; unreadable photos are listed and skipped.

    \b
      captioner extract --data ../flickr8k --encoder efficientnet_lite0
    """
    from captioner.features.extract import extract_features
    from captioner.features.store import default_cache_path

    config = _load(
        config_path,
        assignments,
        encoder={"name": encoder, "weights": weights, "batch_size": batch_size},
    )
    from captioner.data.shards import parse_shard

    cache = features or default_cache_path(data, config.encoder.name, mirror, grid)
    summary = extract_features(
        data,
        cache,
        config.encoder,
        progress=progress,
        mirror=mirror,
        grid=grid,
        shard=parse_shard(shard),
        text=config.text,
        notes=_note,
    )
    where = "" if summary.shard.whole else f" of shard {summary.shard}"
    click.echo(
        f"encoded {summary.encoded} images{where} ({summary.already_cached} already cached) "
        f"in {summary.seconds:.1f} s -> {summary.cache_path}"
    )
    for name, why in sorted(summary.failed.items()):
        click.echo(f"skipped {name}: {why}", err=True)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--data",
    type=click.Path(),
    help="Dataset folder: Karpathy JSON, original Flickr8k or Kaggle layout.",
)
@click.option("--encoder", help="Which encoder's features to train on (default inception_v3).")
@click.option(
    "--features",
    type=click.Path(),
    help="Feature cache [default: data/<dataset>-<encoder>, or -grid for the grid decoders].",
)
@click.option(
    "--mirrored-features",
    type=click.Path(),
    help="Cache of `extract --mirror`, used if train.mirror_probability > 0 "
    "[default: data/<dataset>-<encoder>-mirrored].",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="Where the model goes [default: runs/<dataset>-<encoder>].",
)
@click.option("--batch-size", type=click.IntRange(1), help="Captions per batch.")
@strategy_option
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
    help="Continue this run from its last finished epoch (after a crash, kill -9 or Ctrl-C).",
)
@training_options
@config_options
def train(
    data,
    encoder,
    features,
    mirrored_features,
    run_dir,
    epochs,
    batch_size,
    learning_rate,
    seed,
    strategy,
    resume,
    progress,
    config_path,
    assignments,
):
    """Train a decoder (model.decoder: lstm, attention, updown, transformer) on the train split,
    validating on dev each epoch.

    \b
      captioner train --data ../flickr8k --encoder efficientnet_lite0 --epochs 20
      captioner train --resume runs/flickr8k-efficientnet_lite0   # after a crash or kill
    """
    from captioner.features.store import default_cache_path
    from captioner.training.train import resume_training
    from captioner.training.train import train as train_decoder

    given = [data, encoder, features, mirrored_features, run_dir, epochs, batch_size,
             learning_rate, seed, strategy, config_path, *assignments]  # fmt: skip
    if resume:
        if any(option is not None for option in given):
            raise click.UsageError("--resume takes every setting from the run: give it alone")
        return _echo_trained(resume_training(resume, progress))
    if data is None:
        raise click.UsageError("Missing option '--data' (or --resume RUN).")
    config = _load(
        config_path,
        assignments,
        encoder={"name": encoder},
        train={
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "seed": seed,
            "strategy": strategy,
        },
    )
    features = features or default_cache_path(
        data, config.encoder.name, grid=config.model.needs_grid
    )
    run_dir = run_dir or _default_run_dir(data, config.encoder.name)
    _echo_trained(train_decoder(data, features, run_dir, config, progress, mirrored_features,
                                notes=_note))  # fmt: skip


def _note(line: str) -> None:
    """A stage's word to the user, on stderr beside the progress bars."""
    click.echo(line, err=True)


def _echo_trained(s) -> None:
    click.echo(
        f"trained {s.epochs_run} epochs in {s.seconds:.0f} s on {s.train_captions} "
        f"captions (vocabulary {s.vocabulary_size}); best epoch {s.best_epoch}, "
        f"val_loss {s.best_val_loss:.4f}, dev BLEU-4 (greedy) {s.best_val_bleu4:.4f} -> {s.run_dir}"
    )


@cli.command(context_settings=CONTEXT)
@click.option("--run", "source_run", required=True, type=click.Path(),
              help="The run to start from (written by `captioner train`).")  # fmt: skip
@click.option("--run-dir", required=True, type=click.Path(file_okay=False),
              help="Where the fine-tuned run goes (a new run directory).")  # fmt: skip
@click.option("--data", type=click.Path(), help="Dataset folder [default: the run's].")
@click.option("--features", type=click.Path(), help="Feature cache [default: the run's].")
@training_options
@config_options
def finetune(source_run, run_dir, data, features, epochs, learning_rate, seed, progress,
             config_path, assignments):  # fmt: skip
    """Fine-tune a trained run on CIDEr-D by self-critical sequence training.

    Samples captions from the model for each training photo and makes those that score better
    than the others more likely; any decoder, pooled or grid. Keeps the epoch of the best
    greedy dev BLEU-4, or by finetune.select_by (val_beam_cider_d: dev CIDEr-D of the run's own
    beam decoding). Settings: the [finetune] section of --config / --set.

    \b
      captioner finetune --run runs/flickr8k-seed0 --run-dir runs/flickr8k-seed0-scst
    """
    from captioner.training.scst import finetune as finetune_run

    config = _load(
        config_path,
        assignments,
        finetune={"epochs": epochs, "learning_rate": learning_rate, "seed": seed},
    )
    _echo_finetuned("fine-tuned", finetune_run(source_run, run_dir, config.finetune, data,
                                               features, progress))  # fmt: skip


def _echo_finetuned(what: str, s) -> None:
    """One line for both fine-tuning stages: each dev score from the start to the epoch kept."""
    scores = {"val_loss": "dev loss", "val_bleu4": "dev BLEU-4 (greedy)", "val_cider_d": "CIDEr-D"}
    decoding = s.extra.get("decoding")  # `finetune` selecting by the run's own decoding
    scores |= {"val_beam_bleu4": f"dev BLEU-4 ({decoding})", "val_beam_cider_d": "CIDEr-D"}
    moved = ", ".join(f"{label} {s.start[key]:.4f} -> {s.best[key]:.4f}"
                      for key, label in scores.items() if key in s.best)  # fmt: skip
    click.echo(f"{what} {s.epochs_run} epochs in {s.seconds:.0f} s; kept epoch {s.best_epoch}: "
               f"{moved} -> {s.run_dir}")  # fmt: skip


@cli.command("finetune-encoder", context_settings=CONTEXT)
@click.option("--run", "source_run", required=True, type=click.Path(),
              help="The run to start from, of any decoder (with a grid decoder, the "
              "encoder's grid is trained).")  # fmt: skip
@click.option("--run-dir", required=True, type=click.Path(file_okay=False),
              help="Where the fine-tuned run goes (a new run directory).")  # fmt: skip
@click.option(
    "--data", type=click.Path(), help="Dataset folder, with its photos [default: the run's]."
)
@click.option(
    "--batch-size", type=click.IntRange(1), help="Photos per step, each with all its captions."
)
@click.option("--augment/--no-augment", default=None, help="Random crops and flips of each photo.")
@click.option("--encoder-learning-rate", type=float,
              help="The encoder's learning rate (0: the encoder stays as it is).")  # fmt: skip
@training_options
@config_options
def finetune_encoder(source_run, run_dir, data, epochs, learning_rate, encoder_learning_rate,
                     batch_size, augment, seed, progress, config_path, assignments):  # fmt: skip
    """Train a run's encoder with its decoder, from the photos' pixels.

    Reads and augments the train photos as `extract` reads them, encodes them with the run's
    encoder and trains both at their own learning rates; keeps the best epoch by dev loss,
    encoder included (the run directory's encoder.npz, which caption, evaluate and serve use).
    Settings: the [encoder_finetune] section of --config / --set.

    \b
      captioner finetune-encoder --run runs/flickr8k-seed0 --run-dir runs/flickr8k-seed0-cnn \\
          --data ../flickr8k
    """
    from captioner.training.encoder_finetune import finetune_encoder as finetune_run

    settings = {"epochs": epochs, "learning_rate": learning_rate, "seed": seed,
                "encoder_learning_rate": encoder_learning_rate, "batch_size": batch_size,
                "augment": augment}  # fmt: skip
    config = _load(config_path, assignments, encoder_finetune=settings)
    s = finetune_run(source_run, run_dir, config.encoder_finetune, data, progress)
    what = "fine-tuned encoder and decoder"
    if config.encoder_finetune.encoder_learning_rate == 0:
        what = "trained the decoder from pixels (encoder frozen)"
    _echo_finetuned(what, s)
    click.echo(f"{s.extra['photos_per_second']:.1f} training photos/s")
    if s.extra["unreadable"]:
        click.echo(f"{s.extra['unreadable']} unreadable train photos skipped", err=True)


@cli.command(context_settings=CONTEXT)
@click.argument("images", nargs=-1, required=True, type=click.Path())
@run_options
@click.option("--output", type=click.Path(dir_okay=False),
              help="Append the captions to this file as they come, .jsonl, .csv or .tsv (by "
              "its suffix), instead of printing them; photos already in it are skipped, so a "
              "stopped run resumes.")  # fmt: skip
@click.option("--shard", metavar="I/N",
              help="Caption only shard I of N (e.g. 2/4): a photo's shard comes from its "
              "name, so N jobs can share a folder, each with its own --output.")  # fmt: skip
@click.option("--decode-batch", type=click.IntRange(1),
              help="Photos decoded together: the larger, the faster per photo "
              "[default: 256].")  # fmt: skip
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar on stderr [default: with --output].")  # fmt: skip
@click.option("--save", type=click.Path(),
              help="Write the photo with its caption under it: a file for one photo, "
              "a folder (PHOTO.captioned.png in it) for several.")  # fmt: skip
@click.option("--attention", type=click.Path(),
              help="Draw the photo once per word, with where the decoder looked for "
              "it (a run with a grid decoder: model.decoder = attention, updown or "
              "transformer; an ensemble: the mean of its members' "
              "maps): a PNG file for one photo, a folder (PHOTO.attention.png in it) for "
              "several.")  # fmt: skip
@decode_options
def caption(images, run_dirs, output, shard, decode_batch, progress, save, attention, beam,
            max_length, length_penalty, no_repeat_ngram):  # fmt: skip
    """Caption photos (files, or folders: every image below them) with the run's own decoding
    settings. Prints PATH<TAB>CAPTION lines, or with --output writes a captions file (columns
    image, caption, error; a photo found in a folder is named by its path relative to it).

    The shipped model decodes with beam 3 (chosen on the dev split); --beam 1 is greedy.

    Exit status: without --output, 1 if a photo could not be read. With --output, 0 even then:
    unreadable photos are listed on stderr and written to the file with their error, so that
    a resumed run does not try them again; 1 for anything else.

    \b
      captioner caption --run runs/flickr8k-efficientnet_lite0 photo.jpg
      captioner caption --run runs/flickr8k-efficientnet_lite0 --beam 3 holiday/
      captioner caption archive/ --output captions.jsonl
      captioner caption archive/ --output captions-2.csv --shard 2/4
    """
    from captioner.data.shards import parse_shard

    shard = parse_shard(shard)
    runs, decode = _runs_and_decoding(run_dirs, beam, max_length, length_penalty, no_repeat_ngram)
    batch = {"decode_batch": decode_batch} if decode_batch else {}
    if attention:
        from captioner.inference.api import attention_grid

        attention_grid(runs, "--attention")  # one line, before any photo is read
    if output:
        drawing = {"--save": save, "--attention": attention}
        _caption_to_file(runs, images, output, decode, shard, progress, drawing, batch)
        return
    from captioner.inference.api import Captioner
    from captioner.inference.caption import select_photos, stream_captions
    from captioner.inference.light import fast_start_note

    photos = select_photos(images, shard)  # none: one line, before the model loads
    # The ONNX engine's NumPy search carries no attention: --attention decodes in TensorFlow.
    captioner = Captioner.load(*runs, engine="tensorflow" if attention else "auto")
    failures = 0
    for result in stream_captions(captioner, photos, decode, progress=bool(progress),
                                  attention=bool(attention), **batch):  # fmt: skip
        if result.caption is None:
            failures += 1
            click.echo(f"{result.path}: cannot read this image ({result.error})", err=True)
        else:
            click.echo(f"{result.path}\t{result.caption}")
            _draw(result, images, save, attention)
    if started := captioner.export_for_fast_start():
        click.echo(fast_start_note(started), err=True)  # said once: when it starts
    if failures:
        sys.exit(1)


def _draw(result, images, save, attention):
    """--save and --attention: a file for one photo, a folder (PHOTO.<kind>.png) for several.
    A caption in a script that no font here has is drawn all the same (missing letters as
    boxes), and what to install is said once on stderr."""
    several = len(images) > 1 or Path(images[0]).is_dir()
    if save or attention:
        from captioner.inference.fonts import missing_font_note

        note = missing_font_note(result.caption)
        said = click.get_current_context().meta.setdefault("captioner.font_notes", set())
        if note and note not in said:
            said.add(note)
            click.echo(note, err=True)
    if save:
        from captioner.inference.report import draw_caption

        output = Path(save) / f"{result.path.stem}.captioned.png" if several else Path(save)
        draw_caption(result.path, result.caption, output)
    if attention:
        from captioner.inference.attention_maps import draw_attention

        output = Path(attention) / f"{result.path.stem}.attention.png" if several else attention
        draw_attention(result.path, result.caption, result.attention, output)


def _caption_to_file(runs, images, output, decode, shard, progress, drawing, batch):
    """`caption --output`: one library call, then a summary and the unreadable photos."""
    from captioner.inference.caption import caption_to_file

    for option, given in drawing.items():
        if given:
            raise click.ClickException(f"{option} draws photos one at a time: use it without "
                                       "--output")  # fmt: skip
    progress = True if progress is None else progress
    s = caption_to_file(runs, list(images), output, decode, shard=shard, progress=progress,
                        **batch)  # fmt: skip
    for name, why in sorted(s.unreadable.items()):
        click.echo(f"{name}: cannot read this image ({why})", err=True)
    click.echo(
        f"captioned {s.captioned} photos ({s.already_done} already in the output, "
        f"{len(s.unreadable)} unreadable) in {s.seconds:.1f} s -> {s.output}"
    )


@cli.command(context_settings=CONTEXT)
@run_options
@click.option(
    "--split",
    type=click.Choice(["train", "dev", "test"]),
    default="test",
    show_default=True,
    help="Which split to score.",
)
@click.option("--data", type=click.Path(), help="Dataset folder [default: the run's].")
@click.option("--features", type=click.Path(), help="Feature cache [default: the run's].")
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    help="Also write an HTML page with the scores and sample captions beside photos (for an "
    "attention run, with each word's attention under the best and worst).",
)
@click.option("--tokenize", type=click.Choice(TOKENIZATIONS), default="captioner",
              show_default=True, help="captioner: references and captions cleaned as training "
              "captions are (the README's rows); coco: coco-caption's PTB tokenizer and scorers, "
              "as papers report (needs Java).")  # fmt: skip
@decode_options
def evaluate(run_dirs, split, data, features, report, tokenize, beam, max_length, length_penalty,
             no_repeat_ngram):  # fmt: skip
    """Caption every image of a split; print corpus BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (and
    SPICE where its models are installed), then what the captions say about the model.

    METEOR, ROUGE-L and SPICE come from coco-caption (pip install -e ".[metrics]"; METEOR and
    SPICE need Java): a score that cannot be computed here is left out with one line saying
    what to install.

    \b
      captioner evaluate --run runs/flickr8k-efficientnet_lite0 --beam 3
      captioner evaluate --run runs/flickr8k-efficientnet_lite0 --report report.html
    """
    from captioner.inference.evaluate import evaluate as evaluate_run

    runs, decode = _runs_and_decoding(run_dirs, beam, max_length, length_penalty, no_repeat_ngram)
    # A report of an attention run shows where it looked: its search carries the weights.
    result = evaluate_run(runs, split, decode, data, features, tokenize, attention=bool(report))
    mode = "greedy" if decode.beam_size <= 1 else (
        f"beam {decode.beam_size}, length penalty {decode.length_penalty}, "
        f"no-repeat n-gram {decode.no_repeat_ngram or 'off'}")  # fmt: skip
    click.echo(f"{result.split} split: {result.images} images, {mode}, "
               f"max {decode.max_length} words, {tokenize} tokenization"
               f"{' on ' + result.tokens if tokenize == 'captioner' else ''}, "
               f"{result.seconds:.1f} s")  # fmt: skip
    click.echo("  ".join(f"{name:>7}" for name in result.scores))
    click.echo("  ".join(f"{score:7.4f}" for score in result.scores.values()))
    for line in result.left_out:
        click.echo(line, err=True)
    from captioner.inference.diagnostics import diagnostics_lines

    for line in diagnostics_lines(result.diagnostics):
        click.echo(line)
    click.echo(f"captions -> {result.captions_path}")
    if report:
        from captioner.inference.report import write_report

        click.echo(
            f"report -> {write_report(result, report, ', '.join(run_dirs) or 'reference model')}"
        )


@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(file_okay=False))
@run_options
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), default="saved_model",
              show_default=True, help="saved_model: TensorFlow (TF Serving), photo bytes in and "
              "words out; onnx: for python -m captioner.runtime, without TensorFlow.")  # fmt: skip
@click.option("--version", "model_version", type=click.IntRange(1), default=1, show_default=True,
              help="The SavedModel's version folder, OUT/VERSION, as TF Serving reads "
              "them.")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace an export already there.")
@decode_options
def export(out, run_dirs, export_format, model_version, force, beam, max_length, length_penalty,
           no_repeat_ngram):  # fmt: skip
    """Write a trained captioner out for programs without captioner: TF Serving, or the light
    runtime (no TensorFlow). Decodes with the run's settings unless told.

    \b
      captioner export exported/                       # the shipped model -> exported/1/
      captioner export exported/ --run runs/flickr8k-seed0 --version 2
      captioner export light/ --format onnx && python -m captioner.runtime light/ photo.jpg
    """
    from captioner.export.export import export_model

    runs, decode = _runs_and_decoding(run_dirs, beam, max_length, length_penalty, no_repeat_ngram)
    s = export_model(out, runs, export_format, decode, model_version, force)
    click.echo(
        f"exported {export_format} ({s.bytes / 1e6:.1f} MB) in {s.seconds:.0f} s -> {s.folder}"
    )


@cli.command(context_settings=CONTEXT)
@click.argument("path", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
def info(path, as_json):
    """What a feature cache or a run directory holds [default: the shipped model].

    \b
      captioner info data/flickr8k-efficientnet_lite1
      captioner info runs/flickr8k-seed0 --json
    """
    import json

    from captioner.info import describe

    about = describe(path)
    if as_json:
        click.echo(json.dumps(about, indent=2))
        return
    for key, value in about.items():
        if isinstance(value, dict) and key in ("config", "shards", "encoder", "best", "damaged"):
            value = ", ".join(f"{k} {_compact(v)}" for k, v in value.items())
        click.echo(f"{key + ':':16} {_compact(value)}")


def _compact(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


@cli.command(context_settings=CONTEXT)
@click.option("--clear", is_flag=True, help="Delete it all (made again when needed).")
def cache(clear):
    """List what captioner keeps in its cache folder ($CAPTIONER_CACHE, else
    ~/.cache/captioner), with sizes: converted encoder weights, and the light exports the fast
    start of `captioner caption` makes. --clear deletes them.

    \b
      captioner cache
      captioner cache --clear
    """
    from captioner.files import user_cache_dir
    from captioner.info import cache_entries, clear_cache

    if clear:
        click.echo(f"cleared {user_cache_dir()}: {clear_cache() / 1e6:.1f} MB freed")
        return
    entries = cache_entries()
    for entry in entries:
        click.echo(f"{entry['bytes'] / 1e6:9.1f} MB  {entry['kind']:8} {entry['path']}")
    total = sum(entry["bytes"] for entry in entries)
    click.echo(f"{total / 1e6:9.1f} MB  in {user_cache_dir()}")


@cli.command(context_settings=CONTEXT)
def encoders():
    """List the image encoders by name, with input and feature sizes."""
    from captioner.features.encoders import get_encoder, list_encoders

    for name in list_encoders():
        spec = get_encoder(name)
        where = "offline" if spec.offline else "downloads ImageNet weights"
        click.echo(
            f"{name:20} {spec.input_size}px -> {spec.feature_dim:5}  {spec.description} ({where})"
        )


@cli.command("serve", context_settings=CONTEXT)
@run_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens it to the network.")  # fmt: skip
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@serve_options
def serve_command(run_dirs, host, port, **limits):
    """Serve captions over HTTP: a page to caption photos, and a JSON API.

    The model is loaded once; POST /api/caption takes photos (multipart field `file`, or an
    image body) with decoding options as query parameters (?beam=3&length_penalty=0.7).

    \b
      captioner serve                                  # http://127.0.0.1:8000
      captioner serve --run runs/flickr8k-seed0 --port 8080
      curl -F file=@photo.jpg 'http://127.0.0.1:8000/api/caption?beam=1'
    """
    from captioner.config import ServeConfig
    from captioner.serving.app import serve

    serve(run_dirs, host, port, ServeConfig(**limits))
    click.echo("stopped", err=True)


def main():
    cli(prog_name="captioner")
