"""What a split's captions say about the model beyond its scores: how many photos got a caption
of their own, how many words it uses, how long its captions are, which captions it repeats. A
model that gives the same caption to many photos (it ignores the image) shows here at once."""

from __future__ import annotations

from collections import Counter

REPEATED_SHOWN = 5
# A caption given to more than this share of the photos is flagged: on Flickr8k's test split
# the shipped model's most repeated caption goes to under 2 % of them.
FLAGGED_SHARE = 0.10


def caption_diagnostics(captions: list[list[str]], references: list[list[list[str]]],
                        vocabulary_size: int, join=" ".join) -> dict:  # fmt: skip
    """Counts over one split; `references` as the metrics read them (tokens per reference);
    `join` writes a caption's tokens as text (Vocabulary.join: no spaces in Chinese)."""
    joined = [join(words) for words in captions]
    counts = Counter(joined)
    images = max(len(captions), 1)
    reference_lengths = [len(r) for refs in references for r in refs]
    repeated = [(c, n) for c, n in counts.most_common(REPEATED_SHOWN) if n > 1]
    return {
        "images": len(captions),
        "unique_captions": sum(counts[c] == 1 for c in joined),  # given to one photo only
        "distinct_captions": len(counts),
        "words_used": len({word for words in captions for word in words}),
        "vocabulary_words": vocabulary_size - 4,  # without <pad>, <start>, <end>, <unk>
        "mean_length": sum(map(len, captions)) / images,
        "reference_mean_length": sum(reference_lengths) / max(len(reference_lengths), 1),
        "most_repeated": [{"caption": c, "photos": n} for c, n in repeated],
        "flagged": [c for c, n in repeated if n / images > FLAGGED_SHARE],
    }


def diagnostics_lines(d: dict) -> list[str]:
    """The diagnostics as `evaluate` prints them (none for an empty dict)."""
    if not d:
        return []
    n = d["images"]
    lines = [
        f"captions of their own: {d['unique_captions']} of {n} photos "
        f"({d['unique_captions'] / max(n, 1):.1%}); {d['distinct_captions']} distinct captions; "
        f"{d['words_used']} of {d['vocabulary_words']} vocabulary words used; "
        f"{d['mean_length']:.2f} words per caption (references {d['reference_mean_length']:.2f})"
    ]
    if d["most_repeated"]:
        repeated = "; ".join(f"{r['photos']} x '{r['caption']}'" for r in d["most_repeated"])
        lines.append(f"most repeated: {repeated}")
    for caption in d["flagged"]:
        photos = next(r["photos"] for r in d["most_repeated"] if r["caption"] == caption)
        lines.append(f"warning: '{caption}' was given to {photos} of {n} photos "
                     f"({photos / n:.0%}): does the model look at the photos?")  # fmt: skip
    return lines
