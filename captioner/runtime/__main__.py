"""python -m captioner.runtime EXPORT PHOTO...: PATH<TAB>CAPTION per photo, without TensorFlow.

EXPORT is a folder of `captioner export --format onnx`; PHOTO a file or a folder (every image
below it). Unreadable photos are listed on stderr and make the exit status 1; a bad export, or
paths that hold no photo, is one line and exit 1.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    from captioner.data.images import find_some_photos
    from captioner.errors import CaptionerError
    from captioner.runtime.captioning import Captioner

    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        captioner = Captioner.from_export(argv[0])
        photos = find_some_photos(argv[1:])
    except CaptionerError as error:
        if os.environ.get("CAPTIONER_DEBUG"):
            raise
        print(f"Error: {error}", file=sys.stderr)
        return 1
    failed = 0
    for chunk in captioner.caption_files(photos):
        for result in chunk:
            if result.caption is None:
                failed += 1
                print(f"{result.path}: cannot read this image ({result.error})", file=sys.stderr)
            else:
                print(f"{result.path}\t{result.caption}", flush=True)
    return 1 if failed else 0


sys.exit(main(sys.argv[1:]))
