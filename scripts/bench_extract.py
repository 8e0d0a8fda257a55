"""Feature extraction speed: the real `extract` pipeline against its bound and the seeds' loop.

In one run, on the same photos and the same encoder:
  bound     the encoder alone on photos already decoded into memory (compiled, batched);
  pipeline  `captioner.features.extract.extract_features` end to end (threaded decoding overlapped
            with the CNN, cache writes included), on a temporary dataset of the same photos;
  seeds     the classic loop: open one photo, resize, `model.predict` on a batch of one.

    python scripts/bench_extract.py --data ../shared/flickr8k --images 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def temporary_dataset(source, names: list[str], folder: Path) -> Path:
    """A Kaggle-layout dataset of `names` whose photos are links to the originals."""
    (folder / "Images").mkdir(parents=True)
    lines = ["image,caption"]
    for name in names:
        (folder / "Images" / name).symlink_to(source.image_path(name).resolve())
        lines.append(f"{name},a photo")
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    return folder


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", default="../shared/flickr8k")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=512, help="photos for bound and pipeline")
    parser.add_argument("--seed-images", type=int, default=64, help="photos for the slow loop")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import keras
    import numpy as np

    from captioner.config import EncoderConfig
    from captioner.data.datasets import load_dataset
    from captioner.data.images import batches_of_images, load_image
    from captioner.features.encoders import build_encoder, get_encoder, make_encode_function
    from captioner.features.extract import extract_features

    spec = get_encoder(args.encoder)
    dataset = load_dataset(args.data)
    names = sorted(dataset.captions)[: args.images]
    model = build_encoder(spec.name, "imagenet")
    encode = make_encode_function(model, args.batch_size)

    photos = np.stack([load_image(dataset.image_path(n), spec.input_size) for n in names])
    encode(photos[: args.batch_size])  # compile once, outside the timing
    start = time.perf_counter()
    for i in range(0, len(photos), args.batch_size):
        encode(photos[i : i + args.batch_size])
    bound = len(photos) / (time.perf_counter() - start)

    # The pipeline as extract_features runs it: threaded decoding overlapped with the CNN.
    paths = [dataset.image_path(n) for n in names]
    start = time.perf_counter()
    for _, images, _ in batches_of_images(paths, spec.input_size, args.batch_size):
        encode(images)
    pipeline = len(names) / (time.perf_counter() - start)

    # And the whole command, building the model, compiling and writing the cache included.
    with tempfile.TemporaryDirectory() as folder:
        data = temporary_dataset(dataset, names, Path(folder) / "data")
        encoder = EncoderConfig(spec.name, "imagenet", args.batch_size)
        summary = extract_features(data, Path(folder) / "f", encoder, progress=False)
    whole = len(names) / summary.seconds

    seed_names = names[: args.seed_images]
    start = time.perf_counter()
    for name in seed_names:
        image = keras.utils.load_img(dataset.image_path(name), target_size=(spec.input_size,) * 2)
        batch = np.expand_dims(keras.utils.img_to_array(image), 0)
        model.predict(batch, verbose=0)
    seeds = len(seed_names) / (time.perf_counter() - start)

    print(
        f"encoder {spec.name} ({spec.input_size} px), batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs, {len(names)} photos ({len(seed_names)} for the seeds' loop)"
    )
    print(f"bound     {bound:7.1f} images/s  encoder alone on photos decoded in memory")
    print(f"pipeline  {pipeline:7.1f} images/s  decoding threads overlapped with the encoder")
    print(f"extract   {whole:7.1f} images/s  the whole command: model build, compile, cache")
    print(f"seeds     {seeds:7.1f} images/s  load_img + predict() on one photo at a time")
    print(f"pipeline / bound = {pipeline / bound:.2f}   pipeline / seeds = {pipeline / seeds:.1f}x")


if __name__ == "__main__":
    main()
