"""Ensembles: several runs decoding as one, their word probabilities averaged inside the search.
Members share a vocabulary and an encoder; fine-tuned members each bring their own encoder's
features, side by side."""

from __future__ import annotations

from dataclasses import replace

from captioner.errors import RunError
from captioner.model.rundir import Run, load_run


def load_runs(directories) -> list[Run]:
    """One run, or several to decode as an ensemble (None or empty: the shipped model).
    Runs already loaded pass through as they are."""
    if directories:
        runs = [d if isinstance(d, Run) else load_run(d) for d in directories]
    else:  # the shipped model, with the members of its ensemble if it has one
        runs = [load_run()]
        runs += [load_run(runs[0].directory / m) for m in runs[0].info.get("ensemble", [])]
    for run in runs[1:]:
        # Fine-tuned members each bring their own weights of the same encoder: the photos are
        # read once, at its size, and each member decodes its own encoder's features.
        same_encoder = replace(run.encoder, finetuned=False) == replace(
            runs[0].encoder, finetuned=False
        )
        if run.vocabulary.words != runs[0].vocabulary.words or not same_encoder:
            raise RunError(
                f"{run.directory}: an ensemble needs the same vocabulary and encoder as "
                f"{runs[0].directory}"
            )
    return runs


def encoder_runs(runs: list[Run]) -> tuple[list[Run], list[slice]]:
    """The runs whose encoders make an ensemble's features, one per distinct encoder (all runs
    share one, unless fine-tuned), and the columns of each run's features in their
    concatenation, in the order of `runs`."""
    keys = [_encoder_key(run) for run in runs]
    distinct = list(dict.fromkeys(keys))
    width = runs[0].encoder.feature_dim
    columns = [slice(distinct.index(k) * width, (distinct.index(k) + 1) * width) for k in keys]
    return [runs[keys.index(key)] for key in distinct], columns


def _encoder_key(run: Run) -> tuple:
    """Runs of one key read the same features; a fine-tuned encoder is its run's alone."""
    encoder = run.encoder
    if encoder.finetuned:
        return ("finetuned", str(run.directory.resolve()))
    return (encoder.name, encoder.weights, encoder.cells)


def finetuned(runs: list[Run]) -> bool:
    return any(run.encoder.finetuned for run in runs)


def decoder_steps(runs: list[Run]):
    """The step function of one run's decoder, or of an ensemble of several. It reads the
    features `encoder_runs` describes: one encoder's, or with fine-tuned members the
    concatenation of each distinct encoder's (each member its own columns)."""
    from captioner.model.decoder import DecoderSteps, EnsembleSteps

    members = [DecoderSteps(run.load_model()) for run in runs]
    if len(members) == 1:
        return members[0]
    distinct, columns = encoder_runs(runs)
    return EnsembleSteps(members, columns if len(distinct) > 1 else None)
