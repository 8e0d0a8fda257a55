"""Training speed and memory: this project's trainer against the classic prefix-expansion recipe.

In one run, on the same cached features of the Flickr8k training split, with embedding and LSTM
sizes 256 and 256, each variant in its own process (so that peak memory is its own):
  ours       teacher forcing on whole captions, length-bucketed tf.data batches of 64 captions,
             sparse targets with padding weighted 0; vocabulary: training words seen >= 5 times
  ours-full  the same with (b)'s vocabulary (every training word)
  *-bf16     (with --with-bf16) the same in mixed bfloat16 (train.precision=mixed_bfloat16)
  classic    every caption expanded into all its prefixes, each padded to the longest caption,
             one-hot targets, categorical cross-entropy, batches of 64 captions' prefixes from a
             Python generator, the seeds' merge model; vocabulary: every training word.
             Timed over --classic-steps batches and extrapolated to the epoch (said so below).
  ours-mirrored2
             ours under train.strategy=mirrored on the CPU split into 2 logical devices
             (CAPTIONER_CPU_DEVICES=2), the same global batches: what tf.distribute costs or
             gains when both "devices" share the same 2 cores
  matmul     not a trainer: float32 matrix products (2048 x 2048) timed for a few seconds,
             the rate this machine reaches on its best-suited work. Each ours* row is also
             given as floating-point work per second and as a fraction of that rate, the work
             counted as 3x the forward pass (backward ~ 2x forward) of, per padded word
             position, 8(E+H)H for the LSTM, 2H^2 for the hidden layer and 2HV for the
             logits, and per caption 2(DH + 2H^2) for the image path (E, H: embedding and LSTM
             widths, V: vocabulary, D: feature size).
  softmax-only, softmax-only-full
             a lower bound, not a trainer: ours with the LSTM and the image path removed
             (embedding -> logits), so only the work every recipe must do remains: a softmax
             over the vocabulary for every target word of the epoch, forward and
             backward, Adam, the same input pipeline. classic / softmax-only is the speed-up
             this trainer would reach if its LSTM and image path cost nothing.

    python scripts/bench_train.py --data ../shared/flickr8k \\
        --features data/flickr8k-efficientnet_lite0
    python scripts/bench_train.py --only ours ours-mirrored2 matmul   # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BATCH, SIZE = 64, 256


def load(data: str, features: str, min_count: int):
    from captioner.data.datasets import load_dataset
    from captioner.data.text import build_vocabulary
    from captioner.features.arrays import caption_arrays, references
    from captioner.features.store import load_feature_cache

    dataset = load_dataset(data)
    cache = load_feature_cache(features)
    captions = references(dataset, dataset.splits["train"])
    vocabulary = build_vocabulary((c for refs in captions for c in refs), min_count)
    # max_caption_words=40 keeps every Flickr8k caption whole, as the classic recipe does.
    return caption_arrays(dataset, "train", cache, vocabulary, 40), len(vocabulary)


def softmax_only_model(vocabulary_size: int):
    """[features, words] -> logits with nothing between the word embedding and the logits."""
    import keras
    from keras import layers

    features = keras.Input((None,), name="features")  # fed, unused: the same batches as ours
    words = keras.Input((None,), dtype="int32", name="words")
    x = layers.Embedding(vocabulary_size, SIZE)(words)
    return keras.Model([features, words], layers.Dense(vocabulary_size)(x))


def run_ours(
    data: str, features: str, min_count: int, precision: str = "float32", softmax_only=False
) -> dict:
    import keras

    from captioner.config import ModelConfig, TrainConfig
    from captioner.model.decoder import build_decoder
    from captioner.training.pipeline import make_batches
    from captioner.training.train import compile_decoder

    arrays, vocabulary_size = load(data, features, min_count)
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    if softmax_only:
        model = softmax_only_model(vocabulary_size)
    else:
        feature_dim = arrays.features.shape[1]
        model = build_decoder(ModelConfig(SIZE, SIZE, 0.5), vocabulary_size, feature_dim)
    compile_decoder(model, TrainConfig(batch_size=BATCH))
    batches = make_batches(arrays, BATCH, shuffle=True)
    model.fit(batches.take(10), verbose=0)  # trace and compile outside the timing
    start = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    flops = None if softmax_only else decoder_flops(batches, arrays, vocabulary_size)
    return {"samples": len(arrays.inputs), "vocabulary": vocabulary_size, "seconds": seconds,
            "flops": flops, "measured": "one full epoch"}  # fmt: skip


def run_mirrored(data: str, features: str) -> dict:
    """ours on 2 logical CPU devices under MirroredStrategy (set up before TensorFlow starts)."""
    os.environ["CAPTIONER_CPU_DEVICES"] = "2"
    from captioner.training.distribute import make_strategy, replicas

    strategy = make_strategy("mirrored")
    import keras

    from captioner.config import ModelConfig, TrainConfig
    from captioner.model.decoder import build_decoder
    from captioner.training.pipeline import make_batches
    from captioner.training.train import compile_decoder

    arrays, vocabulary_size = load(data, features, 5)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_decoder(ModelConfig(SIZE, SIZE, 0.5), vocabulary_size,
                              arrays.features.shape[1], synchronized=True)  # fmt: skip
        compile_decoder(model, TrainConfig(batch_size=BATCH), replicas(strategy))
    batches = make_batches(arrays, BATCH, shuffle=True, normalize_weights=True)
    model.fit(batches.take(10), verbose=0)
    start = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"samples": len(arrays.inputs), "vocabulary": vocabulary_size, "seconds": seconds,
            "flops": decoder_flops(batches, arrays, vocabulary_size),
            "measured": f"one full epoch, {replicas(strategy)} replicas"}  # fmt: skip


def decoder_flops(batches, arrays, vocabulary_size: int) -> float:
    """Floating-point operations of one training epoch of the SIZE/SIZE decoder with its hidden
    layer (the formula in this file's docstring), padding inside each batch included."""
    positions = sum(int(x.shape[0]) * int(x.shape[1]) for (_, x), _, _ in batches)
    e = h = SIZE
    per_position = 8 * (e + h) * h + 2 * h * h + 2 * h * vocabulary_size
    per_caption = 2 * (arrays.features.shape[1] * h + 2 * h * h)
    return 3.0 * (positions * per_position + len(arrays.inputs) * per_caption)


def run_matmul(seconds: float = 5.0, size: int = 2048) -> dict:
    """float32 matrix-product rate of this machine through TensorFlow, in FLOP/s."""
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    product = tf.function(lambda a, b: tf.matmul(a, b))
    product(a, b).numpy()  # trace and warm up outside the timing
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        product(a, b).numpy()
        count += 1
    elapsed = time.perf_counter() - start
    return {"samples": count, "vocabulary": 0, "seconds": elapsed,
            "flops_per_second": 2 * size**3 * count / elapsed,
            "measured": f"{count} products of {size} x {size}"}  # fmt: skip


def classic_batches(arrays, vocabulary_size: int, max_length: int, seed: int = 0):
    """The seeds' generator: per batch of captions, every prefix -> the next word, one-hot."""
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(arrays.inputs))
    for start in range(0, len(order), BATCH):
        images, prefixes, next_words = [], [], []
        for row in order[start : start + BATCH]:
            sequence = list(arrays.inputs[row][arrays.inputs[row] != 0]) + [2]  # + <end>
            for i in range(1, len(sequence)):
                images.append(arrays.features[arrays.image_rows[row]])
                prefixes.append(np.pad(sequence[:i], (max_length - i, 0)))  # pre-padding
                next_words.append(sequence[i])
        targets = np.zeros((len(next_words), vocabulary_size), np.float32)  # one-hot
        targets[np.arange(len(next_words)), next_words] = 1.0
        yield (np.array(images), np.array(prefixes)), targets


def run_classic(data: str, features: str, steps: int) -> dict:
    import keras
    from keras import layers

    arrays, vocabulary_size = load(data, features, 1)
    max_length = int(arrays.lengths.max())
    image = keras.Input((arrays.features.shape[1],))
    words = keras.Input((max_length,))
    x1 = layers.Dense(SIZE, activation="relu")(layers.Dropout(0.5)(image))
    x2 = layers.Embedding(vocabulary_size, SIZE, mask_zero=True)(words)
    x2 = layers.LSTM(SIZE)(layers.Dropout(0.5)(x2))
    x = layers.Dense(SIZE, activation="relu")(layers.add([x1, x2]))
    model = keras.Model([image, words], layers.Dense(vocabulary_size, activation="softmax")(x))
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    batches = classic_batches(arrays, vocabulary_size, max_length)
    for _ in range(2):  # compile outside the timing
        model.train_on_batch(*next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(*next(batches))
    per_batch = (time.perf_counter() - start) / steps
    epoch_batches = -(-len(arrays.inputs) // BATCH)
    return {"samples": int(arrays.lengths.sum()), "vocabulary": vocabulary_size,
            "seconds": per_batch * epoch_batches,
            "measured": f"{steps} batches, extrapolated to {epoch_batches}"}  # fmt: skip


def child(args) -> None:
    if args.variant == "classic":
        result = run_classic(args.data, args.features, args.classic_steps)
    elif args.variant == "matmul":
        result = run_matmul()
    elif args.variant == "ours-mirrored2":
        result = run_mirrored(args.data, args.features)
    else:
        precision = "mixed_bfloat16" if args.variant.endswith("-bf16") else "float32"
        vocabulary_rule = 1 if "-full" in args.variant else 5
        softmax_only = args.variant.startswith("softmax-only")
        result = run_ours(args.data, args.features, vocabulary_rule, precision, softmax_only)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", default="../shared/flickr8k")
    parser.add_argument("--features", default="data/flickr8k-efficientnet_lite0")
    parser.add_argument("--classic-steps", type=int, default=20)
    parser.add_argument("--with-bf16", action="store_true",
                        help="also time ours with train.precision=mixed_bfloat16")  # fmt: skip
    parser.add_argument("--only", nargs="+", help="run only these variants")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args()
    if args.variant:
        return child(args)
    results = {}
    variants = ["ours", "ours-full", "ours-mirrored2", "classic", "softmax-only",
                "softmax-only-full", "matmul"]  # fmt: skip
    if args.with_bf16:
        variants[3:3] = ["ours-bf16", "ours-full-bf16"]
    variants = [v for v in variants if not args.only or v in args.only]
    for variant in variants:
        command = [sys.executable, __file__, "--variant", variant, "--data", args.data,
                   "--features", args.features,
                   "--classic-steps", str(args.classic_steps)]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(output.split("RESULT ", 1)[1])
        print(f"{variant}: {results[variant]}", flush=True)
    print(f"Flickr8k train split, embedding/LSTM {SIZE}/{SIZE}, batches of {BATCH} captions, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'variant':17} {'vocab':>6} {'samples/epoch':>14} {'s/epoch':>8} {'peak RSS MB':>12}"
          "  measured")  # fmt: skip
    for name, r in results.items():
        print(f"{name:17} {r['vocabulary']:6d} {r['samples']:14,d} {r['seconds']:8.1f} "
              f"{r['peak_rss_mb']:12.0f}  {r['measured']}")  # fmt: skip
    report_hardware_fraction(results)
    if "classic" not in results:
        return
    classic = results["classic"]["seconds"]
    for name in results:
        if name != "classic":
            label = "same vocabulary" if "-full" in name else "recipe against recipe"
            if name.startswith("softmax-only"):
                label = f"ceiling if the LSTM and the image cost nothing, {label}"
            ratio = classic / results[name]["seconds"]
            print(f"speed-up, {label} ({name} vs classic): {ratio:.1f}x")


def report_hardware_fraction(results: dict) -> None:
    """Each ours* row's work per second against the measured matmul rate; mirrored vs one."""
    rate = results.get("matmul", {}).get("flops_per_second")
    for name, r in results.items():
        if r.get("flops") and rate:
            achieved = r["flops"] / r["seconds"]
            print(
                f"{name}: {r['flops'] / 1e12:.2f} TFLOP per epoch, {achieved / 1e9:.1f} GFLOP/s"
                f" = {achieved / rate:.1%} of the float32 matmul rate ({rate / 1e9:.1f} GFLOP/s)"
            )
    if "ours" in results and "ours-mirrored2" in results:
        ratio = results["ours"]["seconds"] / results["ours-mirrored2"]["seconds"]
        print(f"mirrored on 2 logical CPUs against one device: {ratio:.2f}x the speed")


if __name__ == "__main__":
    main()
