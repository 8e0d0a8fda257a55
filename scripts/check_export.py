"""The exports against `captioner caption` on a split's photos, each run where it is meant to.

In one run, on the split's photo files (default: Flickr8k's 1,000 test photos):
  caption     `captioner caption PHOTOS --output` with the shipped model (or --run)
  saved_model `captioner export --format saved_model`, loaded by --tf-python, a Python that has
              TensorFlow and nothing of captioner (`import captioner` is made to fail), fed the
              files' bytes 32 at a time
  onnx        `captioner export --format onnx`, run by `--lite-python -m captioner.runtime`, a
              Python where TensorFlow is not installed (pip install -e ".[lite]")
For each export: how many captions equal caption's, and corpus BLEU-4 of all three against the
references (as `captioner evaluate` scores, nltk, all references). Then the light runtime's
cold start on one photo, as a whole process, median of --repeats.

    python3 -m venv /tmp/venv-tf && /tmp/venv-tf/bin/pip install tensorflow-cpu
    python3 -m venv /tmp/venv-lite && /tmp/venv-lite/bin/pip install -e ".[lite]"
    python scripts/check_export.py --tf-python /tmp/venv-tf/bin/python \\
        --lite-python /tmp/venv-lite/bin/python
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD = """
import json, sys
sys.modules["captioner"] = None
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
paths = sys.argv[2:]
for first in range(0, len(paths), 32):
    chunk = paths[first:first + 32]
    out = serve(images=tf.constant([open(p, "rb").read() for p in chunk]))
    for path, caption in zip(chunk, out["captions"].numpy()):
        print(json.dumps([path, caption.decode()]))
"""


def run(command: list, **kwargs) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def captioner(*args) -> str:
    return run([sys.executable, "-m", "captioner", *args])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", default="../shared/flickr8k", help="the dataset folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", action="append", default=[], help="[default: the shipped model]")
    parser.add_argument("--tf-python", required=True, help="a Python with TensorFlow only")
    parser.add_argument("--lite-python", required=True, help="a Python without TensorFlow")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", help="where the exports go [default: a temporary folder]")
    args = parser.parse_args()

    from captioner.data.datasets import load_dataset
    from captioner.features.arrays import references
    from captioner.metrics import corpus_bleu_scores

    dataset = load_dataset(args.data)
    names = dataset.splits[args.split]
    paths = [str(dataset.image_path(name).resolve()) for name in names]
    work = Path(args.work or tempfile.mkdtemp(prefix="check-export-"))
    runs = [option for run in args.run for option in ("--run", run)]

    started = time.perf_counter()
    (work / "caption.jsonl").unlink(missing_ok=True)  # a captions file resumes: start afresh
    captioner("caption", *paths, *runs, "--output", work / "caption.jsonl", "--no-progress")
    rows = [json.loads(line) for line in (work / "caption.jsonl").read_text().splitlines()]
    want = {row["image"]: row["caption"] for row in rows}
    print(f"caption: {len(want)} photos in {time.perf_counter() - started:.0f} s")
    captioner("export", work / "saved", *runs, "--force")
    captioner("export", work / "light", *runs, "--format", "onnx", "--force")

    loaded = run([args.tf_python, "-c", LOAD, work / "saved" / "1", *paths], cwd=work)
    saved = dict(json.loads(line) for line in loaded.splitlines())
    light_out = run([args.lite_python, "-m", "captioner.runtime", work / "light", *paths], cwd=work)
    light = dict(line.split("\t", 1) for line in light_out.splitlines())

    refs = references(dataset, names)
    print(f"{'':12} {'same as caption':>16} {'BLEU-4':>8}")
    for label, got in (("caption", want), ("saved_model", saved), ("onnx", light)):
        same = sum(got.get(path) == want[path] for path in paths)
        bleu4 = corpus_bleu_scores(refs, [got[path].split() for path in paths])["BLEU-4"]
        print(f"{label:12} {same:>10} / {len(paths)} {bleu4:8.4f}")
        for path in [p for p in paths if got.get(p) != want[p]][:5]:
            print(f"    {Path(path).name}: {got.get(path)!r} / caption: {want[path]!r}")

    walls = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run([args.lite_python, "-m", "captioner.runtime", work / "light", paths[0]], cwd=work)
        walls.append(time.perf_counter() - start)
    print(f"light runtime, one photo cold: median {statistics.median(walls):.2f} s "
          f"(min {min(walls):.2f}, max {max(walls):.2f}, {args.repeats} runs)")  # fmt: skip
    for folder in ("saved", "light"):
        size = sum(f.stat().st_size for f in (work / folder).rglob("*") if f.is_file())
        print(f"{folder} export: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
