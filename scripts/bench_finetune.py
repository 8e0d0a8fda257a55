"""Training from pixels against `extract`'s forward pass, on the same photos and encoder.

In one run, each in its own process (so each peak RSS is its own), on the first --photos train
photos of the dataset, read from their files on threads as every stage reads them:
  extract      the encoder's forward pass alone, in extract's batches (what `captioner extract`
               and every frozen-encoder stage pay per photo);
  decoder      `finetune-encoder` with encoder_learning_rate 0: photos augmented and encoded,
               the decoder trained on all their captions, the encoder out of the gradient;
  end to end   `finetune-encoder` as it runs: encoder and decoder trained together.
Rates are photos per second after one untimed warm-up batch (graph tracing); training photos
bring all their captions (Flickr8k: 5).

    python scripts/bench_finetune.py                       # the shipped model on ../shared/flickr8k
    python scripts/bench_finetune.py --run runs/flickr8k-seed0 --photos 960 --batch-size 32
    python scripts/bench_finetune.py --encoder efficientnet_lite0       # Lite0, same decoder
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODES = ("extract", "decoder", "end to end")


def measure(mode: str, args) -> dict:
    """One mode, in this process: photos/s after a warm-up batch."""
    from dataclasses import replace

    import numpy as np

    from captioner.config import EncoderFinetuneConfig
    from captioner.data.datasets import load_dataset
    from captioner.data.images import batches_of_images
    from captioner.features.encoders import get_encoder, make_encode_function
    from captioner.model.rundir import load_run
    from captioner.training.encoder_finetune import (
        TrainingEpochs,
        freeze_batch_norm,
        make_training_step,
        photo_captions,
    )

    run = load_run(args.run)
    if args.encoder:  # another encoder of the same feature size: the run's decoder still fits
        spec = get_encoder(args.encoder)
        if spec.feature_dim != run.encoder.feature_dim:
            raise SystemExit(f"{args.encoder}: {spec.feature_dim} features, the run's decoder "
                             f"reads {run.encoder.feature_dim}")  # fmt: skip
        run = replace(run, encoder=replace(run.encoder, name=spec.name,
                                           input_size=spec.input_size))  # fmt: skip
    train = photo_captions(load_dataset(args.data), "train", run)
    photos = args.photos + args.batch_size  # the first batch warms up
    warm_up, timed = (_subset(train, 0, args.batch_size), _subset(train, args.batch_size, photos))
    encoder, size = run.load_encoder(), run.encoder.input_size
    if mode == "extract":
        encode = make_encode_function(encoder, run.config.encoder.batch_size)
        for paths in (warm_up.paths, timed.paths):
            start = time.perf_counter()
            for _, images, _ in batches_of_images(paths, size, run.config.encoder.batch_size):
                encode(images)
        seconds = time.perf_counter() - start
    else:
        decoder = run.load_model()
        freeze_batch_norm(encoder)
        freeze_batch_norm(decoder)
        config = EncoderFinetuneConfig(batch_size=args.batch_size)
        if mode == "decoder":
            config = replace(config, encoder_learning_rate=0.0)
        step = make_training_step(encoder, decoder, config)
        TrainingEpochs(warm_up, step, size, config).run(1, lambda batches: batches)
        epochs = TrainingEpochs(timed, step, size, config)
        epochs.run(1, lambda batches: batches)
        seconds = epochs.seconds
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    captions = int(np.sum(timed.counts))
    return {"mode": mode, "photos": len(timed.names), "captions": captions,
            "seconds": seconds, "photos_per_s": len(timed.names) / seconds,
            "peak_rss_mb": rss}  # fmt: skip


def _subset(split, start: int, stop: int):
    """Photos start..stop of a PhotoCaptions, with their captions."""
    from captioner.training.encoder_finetune import PhotoCaptions

    rows = (split.image_rows >= start) & (split.image_rows < stop)
    first = split.first[start:stop] - split.first[start]
    return PhotoCaptions(split.names[start:stop], split.paths[start:stop],
                         split.image_rows[rows] - start, split.inputs[rows], split.targets[rows],
                         first, split.counts[start:stop])  # fmt: skip


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", default="../shared/flickr8k")
    parser.add_argument("--run", help="a run directory [default: the shipped model's first run]")
    parser.add_argument("--encoder", help="another encoder with the run's feature size, e.g. "
                        "efficientnet_lite0 for the shipped Lite1 model (its ImageNet weights, "
                        "the run's decoder)")  # fmt: skip
    parser.add_argument("--photos", type=int, default=480, help="timed photos per mode")
    parser.add_argument("--batch-size", type=int, default=16, help="photos per training step")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return

    rows = []
    for mode in MODES:
        given = ["--data", args.data, "--photos", str(args.photos), "--batch-size",
                 str(args.batch_size), *(["--run", args.run] if args.run else []),
                 *(["--encoder", args.encoder] if args.encoder else [])]  # fmt: skip
        command = [sys.executable, __file__, *given, "--child", mode]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    report(rows, args)


def report(rows: list[dict], args) -> None:
    encoder = args.encoder or "the run's encoder"
    print(f"\n{encoder}, {rows[0]['photos']} photos ({rows[-1]['captions']} captions), training "
          f"batches of {args.batch_size} photos, {os.cpu_count()} CPUs")  # fmt: skip
    print("what          photos/s   peak RSS   of extract's rate")
    extract = rows[0]["photos_per_s"]
    for row in rows:
        print(f"{row['mode']:12} {row['photos_per_s']:9.1f}  {row['peak_rss_mb']:6.0f} MB"
              f"  {row['photos_per_s'] / extract:17.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
