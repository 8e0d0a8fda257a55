"""A cold caption: each command as a whole new process on one photo, side by side in one run.

  import       python -c "import tensorflow": the floor of anything that uses TensorFlow
  caption      captioner caption PHOTO, as users run it: through the model's cached light
               export (captioner.inference.light; made here beforehand, as a first caption
               makes it in the background)
  caption-tf   the same with CAPTIONER_FAST_START=0: TensorFlow, Keras, the model built and
               its search traced, as before the light export
  saved_model  the SavedModel of `captioner export` loaded by plain TensorFlow and called
  runtime      python -m captioner.runtime on the ONNX export (no TensorFlow)
Rounds are interleaved (each command once per round), so a busy spell slows them all; the
median of --repeats rounds is reported, with each one's ratio to the import's median.

    python scripts/bench_cold.py                     # the shipped model, tests/data/chelsea.jpg
    python scripts/bench_cold.py --run runs/flickr8k-seed0 --photo photo.jpg --repeats 7
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAVED_MODEL = """
import sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(images=tf.constant([open(sys.argv[2], "rb").read()]))
print(out["captions"].numpy()[0].decode())
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed:\n{done.stderr[-2000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run", action="append", default=[], help="[default: the shipped model]")
    parser.add_argument("--photo", default=str(ROOT / "tests" / "data" / "chelsea.jpg"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    env = {**os.environ, "CAPTIONER_CACHE": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    python, runs = sys.executable, [a for run in args.run for a in ("--run", run)]
    captioner = [python, "-m", "captioner"]
    print(f"exporting into {work} ...", flush=True)
    timed([*captioner, "export", str(work / "saved"), *runs], env)
    timed([*captioner, "export", str(work / "light"), "--format", "onnx", *runs], env)
    from captioner.inference.light import light_export_dir
    from captioner.model.ensembles import load_runs

    os.environ["CAPTIONER_CACHE"] = env["CAPTIONER_CACHE"]  # where caption will look
    cache = light_export_dir(load_runs(args.run or None))
    timed([*captioner, "export", str(cache), "--format", "onnx", *runs], env)
    commands = {
        "import": ([python, "-c", "import tensorflow"], env),
        "caption": ([*captioner, "caption", args.photo, *runs], env),
        "caption-tf": ([*captioner, "caption", args.photo, *runs],
                       {**env, "CAPTIONER_FAST_START": "0"}),
        "saved_model": ([python, "-c", SAVED_MODEL, str(work / "saved" / "1"), args.photo], env),
        "runtime": ([python, "-m", "captioner.runtime", str(work / "light"), args.photo], env),
    }  # fmt: skip
    seconds = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, (command, command_env) in commands.items():
            seconds[name].append(timed(command, command_env))
    floor = statistics.median(seconds["import"])
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; {args.repeats} rounds; seconds, wall")
    print(f"{'':12} {'median':>7} {'min':>7} {'max':>7} {'/ import':>9}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:12} {median:7.2f} {min(values):7.2f} {max(values):7.2f} "
              f"{median / floor:9.2f}")  # fmt: skip
    for folder in ("saved", "light"):
        size = sum(f.stat().st_size for f in (work / folder).rglob("*") if f.is_file())
        print(f"{folder} export: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
