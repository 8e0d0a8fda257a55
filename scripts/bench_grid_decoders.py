"""Training cost of the grid decoders side by side: attention, Up-Down and the Transformer.

In one run, each decoder built as its Flickr8k recipe builds it (configs/flickr8k-*.toml: the
attention decoder and Up-Down 512 wide with dropout 0.6, the Transformer from [transformer]'s
defaults) over Lite1's 8 x 8 grid of 1,280 channels and Flickr8k's 2,535 words, compiled as
`captioner train` compiles it, and timed on the same random batches of 64 captions of 16 words
(the length of a typical bucket): the median of --steps train steps after one that compiles.
Prints the weights, the milliseconds per batch and each one's ratio to the attention decoder.
The ratios, not the milliseconds, carry over to a machine that is busy with something else.

    python scripts/bench_grid_decoders.py
    python scripts/bench_grid_decoders.py --steps 20 --only updown transformer
"""

from __future__ import annotations

import argparse
import statistics
import time

from captioner.config import load_config

CONFIGS = {
    "attention": ("configs/flickr8k-attention.toml", ("model.dropout=0.6",)),
    "updown": ("configs/flickr8k-updown.toml", ()),
    "transformer": ("configs/flickr8k-transformer.toml", ()),
}
VOCABULARY, CELLS, CHANNELS, BATCH, WORDS = 2535, 64, 1280, 64, 16


def milliseconds_per_batch(name: str, steps: int) -> tuple[int, float]:
    import keras
    import numpy as np

    from captioner.model.decoder import build_decoder
    from captioner.training.train import compile_decoder

    config = load_config(*CONFIGS[name])
    keras.utils.set_random_seed(0)
    model = build_decoder(config.model, VOCABULARY, CELLS * CHANNELS, CELLS,
                          updown=config.updown, transformer=config.transformer)  # fmt: skip
    compile_decoder(model, config.train)
    rng = np.random.default_rng(0)
    features = rng.random((BATCH, CELLS * CHANNELS), np.float32)
    words = rng.integers(4, VOCABULARY, (BATCH, WORDS), dtype=np.int32)
    model.train_on_batch([features, words], words)  # compiles
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch([features, words], words)
        times.append(time.perf_counter() - start)
    return model.count_params(), 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    results = {name: milliseconds_per_batch(name, args.steps) for name in args.only}
    reference = results.get("attention", next(iter(results.values())))[1]
    print(f"{'decoder':12} {'weights':>10} {'ms/batch':>9} {'ratio':>6}")
    for name, (weights, ms) in results.items():
        print(f"{name:12} {weights:>10,} {ms:>9.0f} {ms / reference:>6.2f}")


if __name__ == "__main__":
    main()
