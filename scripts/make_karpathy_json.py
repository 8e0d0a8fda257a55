"""Converts the original Flickr8k layout into Karpathy's split-file schema.

    python scripts/make_karpathy_json.py ../shared/flickr8k /tmp/karpathy8k

reads `Flickr8k.token.txt` and `Flickr_8k.{train,dev,test}Images.txt` (at the top of the source
folder or in `Flickr8k_text/`) and writes `<out>/dataset_flickr8k.json`:

    {"images": [{"filename": "2513260012_03d33305cf.jpg", "split": "train", "imgid": 0,
                 "sentids": [0, 1, 2, 3, 4],
                 "sentences": [{"raw": "A black dog is running ...", "tokens": ["a", ...],
                                "imgid": 0, "sentid": 0}, ...]}, ...],
     "dataset": "flickr8k"}

Splits keep the official lists and order (train, then dev as `val`, then test); photos in no
split file are left out, as in Karpathy's own file (8,000 of the 8,091 photos). `raw` is the
token file's caption; `tokens` are its lower-cased words with punctuation deleted, close to but
not exactly Karpathy's tokeniser (captioner reads only `raw`). Unless --no-link, `<out>/Images`
becomes a symlink to the source's photo folder, so `<out>` is a dataset folder in the Karpathy
layout without copying a photo. Do not write into the source folder itself: there the JSON
would win over the token file (see captioner.data.datasets).
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

from captioner.data.datasets import read_split_file, read_token_file
from captioner.errors import DataError
from captioner.files import write_atomic

TOKEN_FILE = "Flickr8k.token.txt"
# Our split name -> Karpathy's, and the official file that lists it.
SPLITS = {"train": "train", "dev": "val", "test": "test"}
PHOTO_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def find_token_file(source: Path) -> Path:
    for folder in (source, source / "Flickr8k_text"):
        if (folder / TOKEN_FILE).is_file():
            return folder / TOKEN_FILE
    raise DataError(f"{source}: no {TOKEN_FILE} (looked in it and in its Flickr8k_text/)")


def karpathy_json(source: Path, name: str = "flickr8k") -> dict:
    """The original layout's captions and official splits in Karpathy's schema."""
    token_file = find_token_file(source)
    captions = read_token_file(token_file)
    images, sentence_id = [], 0
    for ours, theirs in SPLITS.items():
        for filename in read_split_file(token_file.parent / f"Flickr_8k.{ours}Images.txt"):
            if filename not in captions:
                raise DataError(f"{token_file}: no captions for {filename} (split {ours})")
            image_id = len(images)
            sentences = _sentences(captions[filename], image_id, sentence_id)
            sentence_id += len(sentences)
            images.append(
                {
                    "filename": filename,
                    "split": theirs,
                    "imgid": image_id,
                    "sentids": [s["sentid"] for s in sentences],
                    "sentences": sentences,
                }
            )
    return {"images": images, "dataset": name}


def _sentences(raws: list[str], image_id: int, first_id: int) -> list[dict]:
    return [
        {
            "raw": raw,
            "tokens": raw.lower().translate(_DELETE_PUNCTUATION).split(),
            "imgid": image_id,
            "sentid": first_id + i,
        }
        for i, raw in enumerate(raws)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="Flickr8k in the original layout")
    parser.add_argument("out", type=Path, help="folder for dataset_<name>.json (and Images)")
    parser.add_argument("--name", default="flickr8k", help="the <name> in dataset_<name>.json")
    parser.add_argument("--no-link", action="store_true", help="do not link <out>/Images")
    args = parser.parse_args()
    if args.out.resolve() == args.source.resolve():
        parser.error("write into another folder: in the source the JSON would win")
    try:
        data = karpathy_json(args.source, args.name)
    except DataError as error:  # one line, as the CLI prints it
        raise SystemExit(f"error: {error}") from None
    path = args.out / f"dataset_{args.name}.json"
    write_atomic(path, json.dumps(data).encode("utf-8"))
    counts = {s: sum(image["split"] == s for image in data["images"]) for s in SPLITS.values()}
    print(
        f"{path}: {len(data['images'])} images, " + ", ".join(f"{n} {s}" for s, n in counts.items())
    )
    photos = next((args.source / d for d in PHOTO_DIRS if (args.source / d).is_dir()), None)
    link = args.out / "Images"
    if not args.no_link and photos is not None and not link.exists():
        link.symlink_to(photos.resolve(), target_is_directory=True)
        print(f"{link} -> {photos.resolve()}")


if __name__ == "__main__":
    main()
