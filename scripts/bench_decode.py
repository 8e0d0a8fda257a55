"""Decoding speed over the test split: the batched compiled decoder against the seeds' loop.

In one run, on the same trained model and the same features (cached, or for a run whose encoder
was fine-tuned, such as the shipped one, computed from the photos first, untimed):
  greedy    captioner's batched greedy search, one compiled graph for the whole split
  beam-3    captioner's batched beam search, width 3, early exit
  seeds     the classic loop: per image, per word, `model.predict` on the prefix so far and
            the arg-max of its last position. Timed on --seed-images and extrapolated.

    python scripts/bench_decode.py                       # the shipped model on ../shared/flickr8k
    python scripts/bench_decode.py --run runs/flickr8k-seed0 --data ../flickr8k
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run", help="a run directory [default: the shipped model]")
    parser.add_argument("--data", default="../shared/flickr8k", help="the dataset folder")
    parser.add_argument(
        "--features",
        help="feature cache [default: the run's, else data/<dataset>-<encoder>]",
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed-images", type=int, default=10)
    args = parser.parse_args()

    import numpy as np

    from captioner.config import DecodeConfig
    from captioner.data.datasets import load_dataset
    from captioner.data.text import END_ID, START_ID
    from captioner.model.decoder import DecoderSteps
    from captioner.model.rundir import load_run, load_run_features
    from captioner.model.search import make_decoder

    run = load_run(args.run)
    dataset = load_dataset(args.data)
    names = dataset.splits[args.split]
    if run.encoder.finetuned:  # its own encoder's features, which no cache holds (the shipped one)
        from captioner.inference.api import Captioner

        features = Captioner([run]).features_of_files([dataset.image_path(n) for n in names])
    else:
        features = load_run_features(run, args.data, args.features)[0].matrix(names)
    model = run.load_model()
    steps, size = DecoderSteps(model), len(run.vocabulary)
    max_length = run.config.decode.max_length

    timings = {}
    for label, beam in (("greedy", 1), ("beam-3", 3)):
        decode = make_decoder(steps, size, DecodeConfig(beam_size=beam, max_length=max_length))
        decode(features[:2])  # trace and compile outside the timing
        start = time.perf_counter()
        decode(features)
        timings[label] = time.perf_counter() - start

    start = time.perf_counter()
    for vector in features[: args.seed_images]:
        words = [START_ID]
        for _ in range(max_length):
            logits = model.predict([vector[None], np.array([words])], verbose=0)
            word = int(logits[0, -1].argmax())
            if word == END_ID:
                break
            words.append(word)
    per_image = (time.perf_counter() - start) / args.seed_images

    print(f"{len(names)} {args.split} images, vocabulary {size}, {os.cpu_count()} CPUs")
    for label, seconds in timings.items():
        print(f"{label:8} {seconds:7.2f} s   ({len(names) / seconds:6.0f} images/s)")
    seeds = per_image * len(names)
    print(f"seeds    {seeds:7.1f} s   ({per_image:.2f} s per image over {args.seed_images} images,"
          f" extrapolated to {len(names)})")  # fmt: skip
    print(f"greedy speed-up over the seeds' loop: {seeds / timings['greedy']:.0f}x")


if __name__ == "__main__":
    main()
