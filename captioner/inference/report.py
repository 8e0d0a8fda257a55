"""What people look at: an HTML evaluation report, and a photo with its caption drawn under it.

For an attention run evaluated with attention=True, the best and worst captions also show
where the decoder looked for each word (captioner.inference.attention_maps).
"""

from __future__ import annotations

import base64
import html
import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from captioner.files import write_atomic
from captioner.inference import drawn_text

_THUMBNAIL = 224
_SAMPLE = 8  # images in each of the best, worst and random sections

# Captions come in any script: after the system's font, Noto's for the scripts it may lack,
# then whatever the browser falls back to.
_FONT_FAMILY = (
    'system-ui, "Noto Sans", "Noto Sans Arabic", "Noto Sans Hebrew", '
    '"Noto Sans Devanagari", "Noto Sans Bengali", "Noto Sans Thai", '
    '"Noto Sans CJK SC", "Noto Sans SC", "Noto Sans CJK JP", "Noto Sans JP", sans-serif'
)
_STYLE = (
    f"body{{font-family:{_FONT_FAMILY};margin:2em;max-width:70em;color:#222}}"
    + """
table.scores td,table.scores th{padding:.2em .8em;text-align:right}
.item{display:flex;gap:1em;margin:.8em 0;padding:.6em;border-bottom:1px solid #ddd}
.item img{width:160px;height:auto;border-radius:4px}
.generated{font-size:1.15em;font-weight:600}.refs{color:#555;margin:.3em 0 0 1.2em;padding:0}
.metric{color:#888;font-size:.85em}
.item img.attention{width:auto;max-width:100%;border-radius:0;margin-top:.4em}"""
)


def _thumbnail_data_uri(path: Path) -> str:
    """The photo as a small embedded JPEG, so the page works when copied anywhere."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((_THUMBNAIL, _THUMBNAIL))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _item_html(item: dict, image_path: Path, maps=None) -> str:
    """One photo, its caption, scores and references; with `maps` (words, rows, columns),
    the photo once per word under them, with that word's attention."""
    # dir="auto": each caption reads in its own script's direction (Arabic, Hebrew: from the
    # right), whatever the page's.
    references = "".join(f'<li dir="auto">{html.escape(r)}</li>' for r in item["references"])
    pictures = ""
    if maps is not None:
        from captioner.inference.attention_maps import attention_data_uri, words_of

        # The run's tokens where evaluate kept them (character tokens: "一只狗" is three).
        words = item.get("tokens") or words_of(item["caption"], len(maps))
        uri = attention_data_uri(image_path, words, maps)
        alt = html.escape(f"attention of each word of: {item['caption']}")
        pictures = f'<img class="attention" alt="{alt}" src="{uri}">' if uri else ""
    return (
        f'<div class="item"><img alt="{html.escape(item["image"])}" '
        f'src="{_thumbnail_data_uri(image_path)}"><div>'
        f'<div class="generated" dir="auto">{html.escape(item["caption"])}</div>'
        f'<div class="metric">{html.escape(item["image"])} · {_item_scores(item)}</div>'
        f'<ol class="refs">{references}</ol>{pictures}</div></div>'
    )


_ITEM_SCORES = {"bleu4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D",
                "spice": "SPICE"}  # fmt: skip


def _item_scores(item: dict) -> str:
    return " · ".join(f"{name} {item[key]:.3f}" for key, name in _ITEM_SCORES.items()
                      if key in item)  # fmt: skip


def _image_path(evaluation, name: str) -> Path:
    """Where the photo is: images_dir, unless elsewhere (a Karpathy COCO test photo in val2014/)."""
    return evaluation.paths_elsewhere.get(name) or evaluation.images_dir / name


def write_report(evaluation, path: str | Path, run_dir: str | Path, seed: int = 0) -> Path:
    """Writes a self-contained HTML page: scores, settings, best/worst/random captions."""
    items = sorted(evaluation.per_image, key=lambda item: item["cider_d"])
    sample = random.Random(seed).sample(items, min(_SAMPLE, len(items)))
    # The best and worst show their attention (an attention run's evaluation keeps it).
    sections = [
        ("Best (highest CIDEr-D)", items[::-1][:_SAMPLE], evaluation.attention),
        ("Worst (lowest CIDEr-D)", items[:_SAMPLE], evaluation.attention),
        ("Random", sample, {}),
    ]
    scores = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{value:.4f}</td></tr>"
        for name, value in evaluation.scores.items()
    )
    settings = ", ".join(f"{k} = {v}" for k, v in evaluation.decoding.items())
    from captioner.inference.diagnostics import diagnostics_lines

    notes = evaluation.left_out + diagnostics_lines(evaluation.diagnostics)
    body = [
        f"<h1>captioner: {html.escape(str(run_dir))}</h1>",
        f"<p>{evaluation.split} split, {evaluation.images} images; decoding: "
        f"{html.escape(settings)}; {evaluation.tokenize} tokenization</p>",
        f'<table class="scores">{scores}</table>',
        "".join(f"<p>{html.escape(line)}</p>" for line in notes),
    ]
    if evaluation.attention:
        body.append("<p>Under the best and worst captions: the photo once per word, brighter "
                    "where the decoder's attention looked for that word.</p>")  # fmt: skip
    for title, chosen, maps in sections:
        body.append(f"<h2>{title}</h2>")
        body += [
            _item_html(item, _image_path(evaluation, item["image"]), maps.get(item["image"]))
            for item in chosen
        ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>captioner report</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    write_atomic(path, page.encode("utf-8"))
    return Path(path)


def draw_caption(image_path: str | Path, caption: str, output: str | Path) -> Path:
    """Saves the photo with its caption written on a white band under it, in any script: each
    word in a font that has its letters, a right-to-left caption from the right edge."""
    with Image.open(image_path) as photo:
        photo = ImageOps.exif_transpose(photo).convert("RGB")
    size = max(14, photo.width // 28)
    lines = [drawn_text.runs(text, size, caption)
             for text in drawn_text.wrap(caption, size, photo.width - 20)]  # fmt: skip
    # One line height for all: the tallest font's, so that no vowel sign or mark is cut off.
    heights = [drawn_text.metrics(line, size) for line in lines]
    ascent, descent = max(a for a, _ in heights), max(d for _, d in heights)
    canvas = Image.new("RGB", (photo.width, photo.height + (ascent + descent) * len(lines) + 20),
                       "white")  # fmt: skip
    canvas.paste(photo, (0, 0))
    pen = ImageDraw.Draw(canvas)
    rtl = drawn_text.is_rtl(caption)
    for number, line in enumerate(lines):
        left = photo.width - 10 - drawn_text.width(line) if rtl else 10
        drawn_text.draw(pen, line, left, photo.height + 10 + number * (ascent + descent) + ascent)
    buffer = io.BytesIO()
    canvas.save(
        buffer, format=Path(output).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    )
    write_atomic(output, buffer.getvalue())
    return Path(output)
