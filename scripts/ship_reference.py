"""Copies a trained run into the package (captioner/reference/) as the shipped model.

    python scripts/ship_reference.py --run runs/flickr8k --scores results/flickr8k.json

Only what `caption` and `evaluate` need travels: the weights in float16 (weights.npz),
vocabulary.json and run.json. The
run.json gains a `provenance` entry: the data, encoder, config, commit and measured scores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from captioner.rundir import load_keras_model

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "captioner" / "reference"
SIZE_LIMIT_MB = 25


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run", required=True)
    parser.add_argument("--scores", help="JSON of measured scores to record with the model")
    args = parser.parse_args()
    run = Path(args.run)
    info = json.loads((run / "run.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    info["provenance"] = {
        "data": "Flickr8k (Hodosh, Young and Hockenmaier 2013), official train/dev/test splits, "
        "photos resized to 224x224",
        "encoder": info["encoder"]["name"],
        "config": "configs/flickr8k.toml",
        "commit": commit.strip(),
        "command": "make flickr8k DATA=../shared/flickr8k",
        "scores": json.loads(Path(args.scores).read_text()) if args.scores else None,
    }
    # Paths of the machine it was trained on mean nothing elsewhere.
    info["data"], info["features"] = "flickr8k", "flickr8k-efficientnet_lite0.pkl"
    PACKAGE_DIR.mkdir(exist_ok=True)
    shutil.copyfile(run / "vocabulary.json", PACKAGE_DIR / "vocabulary.json")
    # float16 weights, no optimizer state: a sixth of model.keras; rebuilt from run.json.
    model = load_keras_model(run / "model.keras")
    weights = {f"w{i}": w.astype(np.float16) for i, w in enumerate(model.get_weights())}
    np.savez_compressed(PACKAGE_DIR / "weights.npz", **weights)
    (PACKAGE_DIR / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(p.stat().st_size for p in PACKAGE_DIR.iterdir()) / 2**20
    print(f"shipped {run} -> {PACKAGE_DIR} ({size:.1f} MB)")
    if size > SIZE_LIMIT_MB:
        raise SystemExit(f"the shipped model is over {SIZE_LIMIT_MB} MB")


if __name__ == "__main__":
    main()
