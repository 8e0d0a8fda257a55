"""Chooses beam search settings on the dev split: scores every combination, best last.

    python scripts/tune_decoding.py --run runs/flickr8k-seed0 [--run runs/flickr8k-seed1]

Repeat --run for an ensemble. Only the dev split is read: the test split is scored once, with
the settings chosen here (`captioner evaluate --split test --beam ... --length-penalty ...`).
"""

from __future__ import annotations

import argparse
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run", action="append", required=True)
    parser.add_argument("--beam", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--length-penalty", type=float, nargs="+", default=[0.7, 1.0])
    parser.add_argument("--no-repeat-ngram", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--select", default="BLEU-4", help="score to rank by")
    args = parser.parse_args()

    import tensorflow as tf

    from captioner.config import DecodeConfig
    from captioner.inference.evaluate import evaluate
    from captioner.model.ensembles import load_runs

    runs = load_runs(args.run)  # read once; each setting builds its own decoder
    tf.get_logger().setLevel("ERROR")  # each setting builds a new decoder: retracing is expected

    rows = []
    for beam, alpha, ngram in itertools.product(
        args.beam, args.length_penalty, args.no_repeat_ngram
    ):
        if beam == 1 and (alpha, ngram) != (args.length_penalty[0], args.no_repeat_ngram[0]):
            continue  # greedy search ignores both
        decode = DecodeConfig(beam_size=beam, length_penalty=alpha, no_repeat_ngram=ngram)
        scores = evaluate(runs, "dev", decode).scores
        rows.append((scores[args.select], beam, alpha, ngram, scores))
        print(f"beam {beam} length_penalty {alpha} no_repeat_ngram {ngram}: "
              + " ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)  # fmt: skip
    best = max(rows, key=lambda row: row[0])
    print(f"best on dev by {args.select}: --beam {best[1]} --length-penalty {best[2]} "
          f"--no-repeat-ngram {best[3]}")  # fmt: skip


if __name__ == "__main__":
    main()
