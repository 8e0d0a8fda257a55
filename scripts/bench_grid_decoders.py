"""Training cost of the decoders side by side: the plain LSTM and the grid decoders (attention,
Up-Down, the Transformer), in float32 and mixed_bfloat16, the code as it is against the code
as first written.

In one process, each decoder built as its Flickr8k recipe builds it (configs/flickr8k*.toml:
the LSTM, the attention decoder and Up-Down 512 wide, the attention decoder with dropout 0.6,
the Transformer from [transformer]'s defaults) over Lite1's 8 x 8 grid of 1,280 channels (the
LSTM: their mean) and Flickr8k's 2,535 words, compiled as `captioner train` compiles it, and
timed on the same random batch of 64 captions of 16 words (the length of a typical bucket):
the median of --steps train steps after two that compile and warm up. Where a decoder's code
has a first-written path (`first_written`: Keras' own LSTM loop in the LSTM and attention
decoders, Up-Down's products inside its loop, the attention einsum), that model is built from
the same seed and timed in turns with the current one, step for step, and their first losses
are compared (the same arithmetic: equal to float rounding).

Printed per decoder and precision: the weights; the work per batch counted from the layer
sizes (multiply-adds x 2, the backward pass counted as twice the forward); the milliseconds per
step as first written and now, and their ratio; the process's CPU milliseconds per step (both
cores; steadier than the wall clock when the machine is shared); the share of the float32
2,048 x 2,048 matrix-product rate measured in the same process (the better of a run before and
one after the decoders, each the best of short bursts) that the work per batch reached now.
Then the share of each grid decoder's work that normalizes and projects the cells, which depends
on the photo only (a batch holding several captions of a photo could do it once for them), and
each decoder's milliseconds now as a ratio to the attention decoder's.

--shared-photos N measures that sharing: the batch's 64 captions hold N photos, each photo's
captions next to each other (as a pipeline that shuffled photos and kept their captions
together inside each length bucket would give them: 44 of 64 on Flickr8k's train split,
simulated, issue 32), and a third model, the current one with its cells' projection replaced
by a photo-shared one (`use_photo_shared_projection`: in training, each run of equal rows
projected once and handed to all of them; the same arithmetic), is timed in turns with the
others. Not in the package: it measured too little to carry (docs/performance.md, "The grid
decoders' train step").

    python scripts/bench_grid_decoders.py                     # everything: a few minutes
    python scripts/bench_grid_decoders.py --steps 5 --only updown --precision float32
    python scripts/bench_grid_decoders.py --only attention updown transformer \
        --precision float32 --shared-photos 44
    python scripts/bench_grid_decoders.py --only attention transformer --precision float32 \
        --set train.jit_compile=true                            # XLA
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from captioner.config import load_config

CONFIGS = {
    "lstm": ("configs/flickr8k.toml", ()),
    "attention": ("configs/flickr8k-attention.toml", ("model.dropout=0.6",)),
    "updown": ("configs/flickr8k-updown.toml", ()),
    "transformer": ("configs/flickr8k-transformer.toml", ()),
}
PRECISIONS = ("float32", "mixed_bfloat16")
VOCABULARY, CELLS, CHANNELS, BATCH, WORDS = 2535, 64, 1280, 64, 16


def training_flops(name: str, config, first_written: bool = False) -> float:
    """Floating-point operations of one train step on BATCH captions of WORDS words: 3 x the
    forward pass's multiply-adds x 2 (element-wise work, softmaxes and the optimizer are not
    counted). first_written: Up-Down with the mean cell's product at every word."""
    m, v, p, c = config.model, VOCABULARY, CELLS, CHANNELS
    e, u, a = m.embedding_dim, m.units, m.attention_dim
    if name == "lstm":
        caption = c * u + 2 * u * u  # image -> projection -> h0, c0
        word = 4 * (e + u) * u + u * v + (u * u if m.hidden_layer else 0)
    elif name == "attention":
        caption = c * u + 2 * u * u + p * c * u + p * u * a  # + cells projected, their keys
        width = 2 * u  # [h; context] into the head
        word = 4 * (e + u) * u + (u * a + p * a + p * u) + width * v
        word += width * u + u * v - width * v if m.hidden_layer else 0
    elif name == "updown":
        ua, ul = config.updown.attention_units, config.updown.language_units
        caption = p * c * u + p * u * a + (0 if first_written else u * 4 * ua)
        word = 4 * ua * (ul + e + ua) + (4 * ua * u if first_written else 0)
        word += ua * a + p * a + p * u  # the attention: query, scores, context
        word += 4 * ul * (u + ua + ul) + ul * v
    elif name == "transformer":
        t = config.transformer
        w, f = t.width, t.feed_forward
        caption = p * c * w + t.blocks * p * w * 2 * w  # cells projected, each block's keys/values
        block = 3 * w * w + 2 * WORDS * w + w * w  # causal self-attention (all T rows computed)
        block += w * w + 2 * p * w + w * w + 2 * w * f  # cross-attention, feed-forward
        word = t.blocks * block + w * v
    else:
        raise ValueError(name)
    return 3 * 2 * (BATCH * caption + BATCH * WORDS * word)


def projection_flops(name: str, config) -> float:
    """The part of training_flops spent normalizing and projecting the cells (forward, and
    backward into the normalization's scale): work that depends on the photo only, which a batch
    holding several captions of one photo could do once for them."""
    width = {"attention": config.model.units, "updown": config.model.units,
             "transformer": config.transformer.width}.get(name, 0)  # fmt: skip
    return 3 * 2 * BATCH * CELLS * CHANNELS * width


def as_first_written(model) -> bool:
    """Switches the model's layers that have one to their first-written path (before compiling
    or the first call); False if none has."""
    layers = [layer for layer in model.layers if hasattr(layer, "first_written")]
    for layer in layers:
        layer.first_written = True
    return bool(layers)


def use_photo_shared_projection(model) -> None:
    """Makes the grid decoder's "region_projection" (a Dense, before compiling or the first
    call) project each run of equal consecutive rows of a training batch once: the same
    weights, and the same dropout draws as its twin built from the same seed."""
    from keras import layers

    class PhotoSharedDense(layers.Dense):
        def call(self, inputs, training=None):
            if not training:
                return super().call(inputs)
            import tensorflow as tf

            flat = tf.reshape(inputs, [tf.shape(inputs)[0], -1])
            repeats = tf.reduce_all(tf.equal(flat[1:], flat[:-1]), axis=1)
            first = tf.concat([tf.ones([1], tf.bool), tf.logical_not(repeats)], 0)
            owner = tf.cumsum(tf.cast(first, tf.int32)) - 1  # each row's run
            return tf.gather(super().call(tf.boolean_mask(inputs, first)), owner)

    model.get_layer("region_projection").__class__ = PhotoSharedDense


def photo_batch(rng, photos: int, cells: int):
    """BATCH captions' features (their photos' runs of equal rows) and words."""
    import numpy as np

    grids = rng.random((photos, max(cells, 1) * CHANNELS), np.float32)
    rows = np.sort(np.concatenate([np.arange(photos), rng.integers(0, photos, BATCH - photos)]))
    return [grids[rows], rng.integers(4, VOCABULARY, (BATCH, WORDS), dtype=np.int32)]


def matmul_rate(seconds: float, dtype: str = "float32", size: int = 2048) -> float:
    """FLOP/s of size x size matrix products through TensorFlow in this process: the best of
    bursts of 5 products over `seconds` (on a shared machine, the least disturbed one)."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([size, size]), dtype)
    b = tf.cast(tf.random.normal([size, size]), dtype)
    product = tf.function(lambda a, b: tf.matmul(a, b))
    product(a, b).numpy()
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        burst = time.perf_counter()
        for _ in range(5):
            product(a, b).numpy()
        best = max(best, 5 * 2 * size**3 / (time.perf_counter() - burst))
    return best


def time_decoder(name: str, precision: str, steps: int, shared_photos: int = 0,
                 settings: tuple[str, ...] = ()) -> dict:  # fmt: skip
    """Builds the decoder (and its first-written twin, if it has one; with `shared_photos`,
    its photo-shared twin) under `precision`, and times their train steps in turns on the same
    batch (of `shared_photos` photos, if given). settings: more SECTION.KEY=VALUE overrides of
    the recipe's config (`--set`)."""
    import keras
    import numpy as np

    from captioner.model.decoder import build_decoder
    from captioner.training.train import compile_decoder

    path, overrides = CONFIGS[name]
    config = load_config(path, (*overrides, *settings))
    cells = 0 if name == "lstm" else CELLS
    keras.mixed_precision.set_global_policy(precision)
    try:
        models = {}
        for variant in ("now", "first", "shared"):
            if variant == "shared" and not (shared_photos and cells):
                continue
            keras.utils.set_random_seed(0)  # the same weights and dropout draws for all
            model = build_decoder(config.model, VOCABULARY, max(cells, 1) * CHANNELS, cells,
                                  updown=config.updown, transformer=config.transformer)  # fmt: skip
            if variant == "first" and not as_first_written(model):
                continue
            if variant == "shared":
                use_photo_shared_projection(model)
            compile_decoder(model, config.train)
            models[variant] = model
        rng = np.random.default_rng(0)
        batch = photo_batch(rng, shared_photos or BATCH, cells)
        first_loss = {v: float(m.train_on_batch(batch, batch[1])[0]) for v, m in models.items()}
        for model in models.values():
            model.train_on_batch(batch, batch[1])  # warm
        wall = {variant: [] for variant in models}
        cpu = {variant: [] for variant in models}
        for _ in range(steps):
            for variant, model in models.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                model.train_on_batch(batch, batch[1])
                wall[variant].append(time.perf_counter() - start)
                cpu[variant].append(time.process_time() - start_cpu)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    result = {
        "weights": models["now"].count_params(),
        "flops": training_flops(name, config),
        "ms": {v: 1000 * statistics.median(times) for v, times in wall.items()},
        "cpu_ms": {v: 1000 * statistics.median(times) for v, times in cpu.items()},
    }
    if "first" in models:
        result["flops_first"] = training_flops(name, config, first_written=True)
        result["loss_difference"] = abs(first_loss["now"] - first_loss["first"])
    if "shared" in models:
        result["shared_loss_difference"] = abs(first_loss["now"] - first_loss["shared"])
    return result


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            lines = file.read().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "")
    flags = next((line for line in lines if line.startswith("flags")), "").split()
    extras = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{name}, {os.cpu_count()} logical CPUs, {' '.join(extras)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--matmul-seconds", type=float, default=3.0)
    parser.add_argument("--shared-photos", type=int, default=0, metavar="N",
                        help=f"the batch holds N photos (1..{BATCH}); time the photo-shared "
                             "projection too")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting for every recipe (train.jit_compile=true)")  # fmt: skip
    args = parser.parse_args()
    if not 0 <= args.shared_photos <= BATCH:
        parser.error(f"--shared-photos: 1 to {BATCH}")

    print(f"CPU: {cpu_name()}; load average {os.getloadavg()[0]:.2f} at the start")
    rates = [matmul_rate(args.matmul_seconds)]
    results = {(name, precision): time_decoder(name, precision, args.steps, args.shared_photos,
                                               tuple(args.set))
               for precision in args.precision for name in args.only}  # fmt: skip
    rates.append(matmul_rate(args.matmul_seconds))
    bf16_rate = matmul_rate(args.matmul_seconds, "bfloat16")
    rate = max(rates)
    print(f"float32 2048 x 2048 matmul: {rates[0] / 1e9:.0f} GFLOP/s before the decoders, "
          f"{rates[1] / 1e9:.0f} after (bfloat16: {bf16_rate / 1e9:.0f}); load average "
          f"{os.getloadavg()[0]:.2f} at the end")  # fmt: skip
    print()
    header = ("| decoder | precision | weights | GFLOP/step | ms first written | ms now | ratio "
              "| CPU ms first written | CPU ms now | CPU ratio | share of f32 matmul rate "
              "| first loss difference |")  # fmt: skip
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for (name, precision), r in results.items():
        ms, cpu = r["ms"], r["cpu_ms"]
        first = "first" in ms
        cells = [
            name,
            precision,
            f"{r['weights']:,}",
            f"{r['flops'] / 1e9:.1f}" + (f" ({r['flops_first'] / 1e9:.1f})" if first else ""),
            f"{ms['first']:.0f}" if first else "—",
            f"{ms['now']:.0f}",
            f"{ms['now'] / ms['first']:.2f}" if first else "—",
            f"{cpu['first']:.0f}" if first else "—",
            f"{cpu['now']:.0f}",
            f"{cpu['now'] / cpu['first']:.2f}" if first else "—",
            f"{r['flops'] / (ms['now'] / 1000) / rate:.1%}",
            f"{r['loss_difference']:.1e}" if first else "—",
        ]
        print("| " + " | ".join(cells) + " |")
    shares = ", ".join(
        f"{name} {projection_flops(name, load_config(*CONFIGS[name])) / r['flops']:.0%}"
        for (name, precision), r in results.items()
        if precision == args.precision[0] and name != "lstm"
    )
    if shares:
        print(f"the cells' normalization and projection, per caption: {shares} of the GFLOP/step")
    if args.shared_photos:
        print(f"\n{BATCH} captions of {args.shared_photos} photos, the cells projected once a "
              "photo (photo-shared) against once a caption (now):")  # fmt: skip
    for (name, precision), r in results.items():
        if "shared" in r["ms"]:
            ms, cpu = r["ms"], r["cpu_ms"]
            print(f"  {name} {precision}: {ms['now']:.0f} -> {ms['shared']:.0f} ms "
                  f"({ms['shared'] / ms['now']:.2f}x), CPU {cpu['now']:.0f} -> "
                  f"{cpu['shared']:.0f} ms ({cpu['shared'] / cpu['now']:.2f}x); first loss "
                  f"difference {r['shared_loss_difference']:.1e}")  # fmt: skip
    for precision in args.precision:  # as docs/results.md compares the decoders' cost
        now = {name: r["ms"]["now"] for (name, p), r in results.items() if p == precision}
        if "attention" in now:
            ratios = ", ".join(f"{name} {ms / now['attention']:.2f}" for name, ms in now.items())
            print(f"{precision}, ms now as a ratio to the attention decoder's: {ratios}")


if __name__ == "__main__":
    main()
