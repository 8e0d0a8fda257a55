"""Does captioner keep its speed and memory as the data grows? In one run:

train   the shipped recipe (configs/flickr8k.toml: 512/512, batch 64) trained for a fixed
        number of steps on synthetic training sets of 1x, 4x and 16x Flickr8k's: every train
        photo's real Lite1 vector reused under new names (a cache folder on disk, as `extract`
        writes it) with captions resampled from its five real ones. Each scale runs in its own
        process: time per 1,000 captions (after the first steps, which trace the graph) and
        peak RSS. The cache is read the way `train` reads it: in memory at 1x and 4x, lazily
        (batch by batch from the memory-mapped parts) above 256 MB, i.e. at 16x.
caption `captioner caption FOLDER --output captions.jsonl` with the shipped model on 500 and
        5,000 Flickr8k photos: photos/s and peak RSS of the command, beside `captioner extract`
        of the same photos with the same encoder (whole commands both, model start included).

  python scripts/bench_scale.py                  # ../shared/flickr8k, its Lite1 cache
  python scripts/bench_scale.py --scales         # captioning only (--photos alone: training)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent


def build_scaled_cache(data: str, features: str, scale: int, folder: Path) -> Path:
    """Writes the synthetic cache (`scale` copies of the train split, renamed) part by part, so
    that building it holds one copy in memory at most; returns the cache folder."""
    from captioner.data.datasets import load_dataset
    from captioner.data.shards import Shard
    from captioner.features.store import CacheWriter, load_feature_cache

    dataset, cache = load_dataset(data), load_feature_cache(features)
    names = dataset.splits["train"]
    matrix = cache.matrix(names)
    writer = CacheWriter(folder / f"cache-{scale}x", cache.info, Shard())
    for copy in range(scale):
        writer.add([f"{copy}-{name}" for name in names], matrix)
        writer.flush()
    writer.finish(scale * len(names), {})
    return folder / f"cache-{scale}x"


def scaled_dataset(data: str, scale: int, seed: int = 0):
    """The Flickr8k dataset with its train split `scale` times over, captions resampled."""
    import random

    from captioner.data.datasets import Dataset, load_dataset

    real = load_dataset(data)
    rng = random.Random(seed)
    captions = {name: real.captions[name] for name in real.splits["dev"]}
    train = []
    for copy in range(scale):
        for name in real.splits["train"]:
            new = f"{copy}-{name}"
            captions[new] = [rng.choice(real.captions[name]) for _ in real.captions[name]]
            train.append(new)
    splits = {"train": train, "dev": real.splits["dev"], "test": []}
    return Dataset(real.root, real.images_dir, "synthetic", captions, splits)


def run_training(data: str, cache_path: str, scale: int, steps: int) -> dict:
    """One scale, in this process: the real arrays, pipeline and model for `steps` steps."""
    import keras

    from captioner.config import load_config
    from captioner.data.text import build_vocabulary
    from captioner.features.arrays import caption_arrays, cleaned_captions
    from captioner.features.store import FeatureRows, load_feature_cache
    from captioner.model.decoder import build_decoder
    from captioner.training.pipeline import make_batches
    from captioner.training.train import compile_decoder

    config = load_config(ROOT / "configs" / "flickr8k.toml")
    dataset, cache = scaled_dataset(data, scale), load_feature_cache(cache_path)
    # As train._prepare does it: words counted caption by caption, arrays filled row by row.
    vocabulary = build_vocabulary(cleaned_captions(dataset, dataset.splits["train"]), 5)
    arrays = caption_arrays(dataset, "train", cache, vocabulary, 30)
    gc.collect()
    gc.freeze()
    keras.utils.set_random_seed(0)
    model = build_decoder(config.model, len(vocabulary), cache.feature_dim)
    compile_decoder(model, config.train)
    batches = make_batches(arrays, config.train.batch_size, shuffle=True)
    warmup = 10
    timer = step_timer(warmup)
    model.fit(batches.take(steps), epochs=1, verbose=0, callbacks=[timer])
    seconds = timer.end - timer.start
    captions_timed = (steps - warmup) * config.train.batch_size
    return {
        "scale": scale,
        "captions": len(arrays.inputs),
        "lazy": isinstance(arrays.features, FeatureRows),
        "seconds_per_1000": 1000 * seconds / captions_timed,
        "loss": float(model.evaluate(batches.take(5), verbose=0)[0]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cache_mb": cache.nbytes / 2**20,
    }


def step_timer(warmup: int):
    """A callback noting the wall time at the end of the `warmup`-th batch and of the last."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == warmup:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    return StepTimer()


def measure_command(command: list[str]) -> tuple[float, float]:
    """Runs a command in its own process: (wall seconds, its peak RSS in MB)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", RUSAGE_WRAPPER, *command], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start, float(result.stdout.strip().splitlines()[-1])


# Runs the command and prints its children's peak RSS (MB): the measured process only.
RUSAGE_WRAPPER = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def photo_folder(data: str, count: int, folder: Path) -> Path:
    """`count` Flickr8k photos linked into a Kaggle-layout folder, so `caption` reads the
    folder and `extract` the dataset, photos the same."""
    from bench_extract import temporary_dataset  # scripts/ is on the path when run as a script

    from captioner.data.datasets import load_dataset

    dataset = load_dataset(data)
    return temporary_dataset(dataset, sorted(dataset.captions)[:count], folder / f"photos-{count}")


CAPTIONER = [sys.executable, "-m", "captioner"]


def bench_caption(data: str, counts: list[int], folder: Path) -> list[dict]:
    rows = []
    for count in counts:
        photos = photo_folder(data, count, folder)
        output = folder / f"captions-{count}.jsonl"
        # `python -m captioner`, not the `captioner` script: run from a checkout (or with
        # PYTHONPATH), that checkout's code is measured, whichever one the venv installed.
        caption = [*CAPTIONER, "caption", str(photos / "Images"), "--output", str(output),
                   "--no-progress"]  # fmt: skip
        seconds, rss = measure_command(caption)
        extract = [*CAPTIONER, "extract", "--data", str(photos), "--encoder",
                   "efficientnet_lite1", "--features", str(folder / f"cache-{count}"),
                   "--no-progress"]  # fmt: skip
        extract_seconds, extract_rss = measure_command(extract)
        written = sum(1 for _ in output.open())
        rows.append({"photos": count, "written": written, "photos_per_s": count / seconds,
                     "peak_rss_mb": rss, "extract_photos_per_s": count / extract_seconds,
                     "extract_peak_rss_mb": extract_rss})  # fmt: skip
    return rows


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", default="../shared/flickr8k")
    parser.add_argument("--features", default="data/flickr8k-efficientnet_lite1")
    parser.add_argument("--scales", type=int, nargs="*", default=[1, 4, 16],
                        help="training-set scales to train at; none: skip training")  # fmt: skip
    parser.add_argument("--steps", type=int, default=60, help="training steps per scale")
    parser.add_argument("--photos", type=int, nargs="*", default=[500, 5000],
                        help="photo counts for `caption --output`; none: skip it")  # fmt: skip
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # cache scale steps
    args = parser.parse_args()
    if args.child:  # one scale's training, in its own process
        cache, scale, steps = args.child
        print(json.dumps(run_training(args.data, cache, int(scale), int(steps))))
        return

    train_rows = []
    with tempfile.TemporaryDirectory() as folder:
        for scale in args.scales:
            cache = build_scaled_cache(args.data, args.features, scale, Path(folder))
            child = ["--child", str(cache), str(scale), str(args.steps)]
            command = [sys.executable, __file__, "--data", args.data, *child]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(result.stderr[-3000:])
            train_rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(json.dumps(train_rows[-1]), flush=True)
        caption_rows = bench_caption(args.data, args.photos, Path(folder))
    report(train_rows, caption_rows, args.steps)


def report(train_rows: list[dict], caption_rows: list[dict], steps: int) -> None:
    if train_rows:
        report_training(train_rows, steps)
    if caption_rows:
        report_captioning(caption_rows)


def report_training(train_rows: list[dict], steps: int) -> None:
    print(f"\ntraining, {steps} steps of 64 captions per scale ({os.cpu_count()} CPUs)")
    print("scale  captions  features  s/1000 captions  peak RSS   cache")
    for row in train_rows:
        print(f"{row['scale']:4}x  {row['captions']:8}  {'lazy' if row['lazy'] else 'memory':8}"
              f"  {row['seconds_per_1000']:15.2f}  {row['peak_rss_mb']:6.0f} MB"
              f"  {row['cache_mb']:5.0f} MB")  # fmt: skip
    first, last = train_rows[0], train_rows[-1]
    print(f"time per 1,000 captions {last['scale']}x / {first['scale']}x: "
          f"{last['seconds_per_1000'] / first['seconds_per_1000']:.2f}")  # fmt: skip
    print(f"peak RSS {last['scale']}x - cache size: "
          f"{(last['peak_rss_mb'] - last['cache_mb']) / 1024:.2f} GB")  # fmt: skip


def report_captioning(caption_rows: list[dict]) -> None:
    print("\nphotos  caption photos/s  peak RSS   extract photos/s  peak RSS  caption/extract")
    for row in caption_rows:
        print(f"{row['photos']:6}  {row['photos_per_s']:16.1f}  {row['peak_rss_mb']:5.0f} MB"
              f"  {row['extract_photos_per_s']:16.1f}  {row['extract_peak_rss_mb']:5.0f} MB"
              f"  {row['photos_per_s'] / row['extract_photos_per_s']:15.2f}")  # fmt: skip
    small, large = caption_rows[0], caption_rows[-1]
    print(f"caption peak RSS {large['photos']} / {small['photos']} photos: "
          f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
