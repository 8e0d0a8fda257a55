"""Bulk captioning speed: `caption --output`'s pipeline against extract's, on the same photos.

In one run, on the first --images photos of the folder (sorted by name):
  pipeline  extract's pipeline for the run's encoder: threaded decoding overlapped with the
            compiled encoder (as scripts/bench_extract.py measures it), no captions;
  caption   `Captioner.caption_files` (captioner.runtime.captioning) end to end (photos
            read, encoded, beam-searched and captioned), once per --decode-batch, model built
            and compiled beforehand.

Rounds are interleaved and the best of each is kept: on a shared machine a busy spell slows
whatever runs then. CPU milliseconds per photo (all threads) hardly depend on other load.

    python scripts/bench_caption.py --images 1000 --decode-batch 16,256
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pipeline(run, paths, batch_size: int):
    """f() -> photos done by extract's pipeline (read on threads, encoded) for the run's encoder."""
    from captioner.data.images import batches_of_images
    from captioner.features.encoders import build_encoder, make_encode_function

    model = build_encoder(run.encoder.name, run.encoder.weights)
    encode = make_encode_function(model, batch_size)
    for _, images, _ in batches_of_images(paths[:batch_size], run.encoder.input_size, batch_size):
        encode(images)  # compile once, outside the timing

    def rate():
        for _, images, _ in batches_of_images(paths, run.encoder.input_size, batch_size):
            encode(images)
        return len(paths)

    return rate


def captioning(runs, photos, decode, batch_size: int, decode_batch: int):
    """f() -> photos captioned, all of `photos`; the model built and compiled beforehand."""
    from captioner.inference.api import Captioner

    captioner = Captioner.load(*runs)

    def caption(some):
        return captioner.caption_files(some, decode, batch_size, decode_batch)

    for _ in caption(photos[: max(batch_size, decode_batch)]):
        pass

    def rate():
        return sum(len(chunk) for chunk in caption(photos))

    return rate


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--photos", default="../shared/flickr8k/Images", help="a folder")
    parser.add_argument("--images", type=int, default=1000, help="how many of its photos")
    parser.add_argument("--run", action="append", help="run directory [default: shipped]")
    parser.add_argument("--decode-batch", default="16,256", help="comma-separated sizes")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many, interleaved")
    parser.add_argument("--beam", type=int, help="beam width [default: the run's]")
    args = parser.parse_args()

    from captioner.data.images import find_photos
    from captioner.model.ensembles import load_runs

    runs = load_runs(args.run)
    run = runs[0]
    batch_size = run.config.encoder.batch_size
    photos = find_photos([Path(args.photos)])[: args.images]
    decoding = run.decoding(beam_size=args.beam)
    print(
        f"{len(photos)} photos, encoder {run.encoder.name} (batch {batch_size}), "
        f"{len(runs)} decoder(s), beam {decoding.beam_size}, {os.cpu_count()} CPUs, "
        f"best of {args.rounds} interleaved rounds"
    )
    variants = {"pipeline": pipeline(run, [photo.path for photo in photos], batch_size)}
    for decode_batch in args.decode_batch.split(","):
        variants[decode_batch] = captioning(runs, photos, decoding, batch_size, int(decode_batch))
    rates = {name: [] for name in variants}  # (photos/s, CPU ms per photo) per round
    for _ in range(args.rounds):  # interleaved: a busy spell on a shared machine hits them all
        for name, work in variants.items():
            rates[name].append(timed(work))
        print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    base = rates.pop("pipeline")
    print(f"pipeline            {describe(base)}  extract's: read + encode")
    for name, found in rates.items():
        ratios = [rate / pipe for (rate, _), (pipe, _) in zip(found, base)]
        print(
            f"caption decode {name:>4} {describe(found)}  {max(found)[0] / max(base)[0]:.2f} "
            f"of the pipeline (best / best; per round: {', '.join(f'{r:.2f}' for r in ratios)})"
        )


def timed(work) -> tuple[float, float]:
    """(photos/s, CPU milliseconds per photo) of one call of `work`."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = work()
    return count / (time.perf_counter() - wall), (time.process_time() - cpu) * 1000 / count


def describe(found) -> str:
    """The best photos/s and the least CPU time per photo of the rounds, and every round's."""
    rate, cpu = max(r for r, _ in found), min(c for _, c in found)
    rounds = ", ".join(f"{r:.1f}" for r, _ in found)
    return f"{rate:6.1f} photos/s, {cpu:5.1f} CPU ms/photo (rounds: {rounds})"


if __name__ == "__main__":
    main()
