"""Caption text in any script: cleaned into words, split into tokens, and joined back.

Cleaning (`clean_caption`), in this order:
1. Unicode NFKC (after step 4 has spaced out the punctuation of CJK text): full-width Latin
   letters and digits typed in CJK text become the ordinary ones, ligatures and presentation
   forms (Arabic's, "ﬁ") their letters, and a letter typed as base + combining accent the same
   code points as the precomposed one. NFC would leave
   "ｄｏｇ" and "dog" two words; NFKC's other foldings (superscripts, fractions) only touch
   digits and symbols, which cleaning drops anyway. One exception is undone: NFKC splits
   Thai's and Lao's vowel AM in two.
2. Lower case (`str.lower`, not `casefold`: German "ß" stays "ß" rather than becoming "ss").
3. Inside a word, ASCII punctuation and the apostrophes and hyphens that mean the same
   ("’", "‐", "·", Hebrew geresh) are deleted, so "t-shirt" -> "tshirt" and "don’t" ->
   "dont", as with ASCII (Flickr8k's cleaning since captioner 0.1, kept to the digit). Invisible
   formatting (soft hyphens, direction marks, Arabic's tatweel) is deleted too.
4. Every other character that is not a letter (L*), a combining mark (M*), a digit (N*) or a
   zero-width (non-)joiner separates words: spaces of every kind, the punctuation of every
   other script (em and en dashes, "。", "،", "।", "¿", quotes, slashes "／"), symbols and emoji.
5. Words holding a digit are dropped ("4x4s", as before); what is left holds letters and their
   marks only, so a Devanagari or Thai word keeps its vowel signs.

Tokens (`tokenize`): `words` splits the cleaned caption at its spaces. `characters` makes
every grapheme cluster (a letter with its marks, as the `regex` module's \\X finds it) of a
script written without spaces (`SPACELESS_SCRIPTS`: Han, Hiragana, Katakana, Thai, Lao, Khmer,
Myanmar, Tibetan) a token of its own, while a run of letters of another script in the same
caption ("nba" in a Chinese caption) stays one word: splitting it would lose where its word
ends. `auto` picks `characters` when most training captions are mostly in those scripts.

Joining (`join_tokens`) puts a space between two character tokens except next to a character
of those scripts, so Chinese comes back as "一只狗在草地上奔跑"; words are joined by spaces.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterable

import regex

from captioner.config import TOKENIZERS

SPACELESS_SCRIPTS = ("Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar", "Tibetan")
# Script_Extensions, not Script: the long-vowel mark "ー" is Common by script but used only in
# Hiragana and Katakana, which its extensions say.
_SPACELESS = regex.compile("[" + "".join(rf"\p{{scx={s}}}" for s in SPACELESS_SCRIPTS) + "]")
_GRAPHEME = regex.compile(r"\X")

# Deleted inside a word: ASCII punctuation (as always) and its look-alikes from phone
# keyboards and other scripts that join the two halves of one word.
_JOINERS = set(string.punctuation) | set(
    "\u2019\u2018\u02bc"  # ’ ‘ ʼ: apostrophes ("don’t", "l’herbe")
    "\u2010\u2011\u00b7"  # ‐ ‑ (hyphens), · (Catalan "l·l")
    "\u05f3\u05f4"  # ׳ ״: Hebrew geresh and gershayim inside abbreviations
    "\u0640"  # Arabic tatweel: stretches a letter, is not one
)
_DELETE_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)
_KEEP_FORMAT = {"\u200c", "\u200d"}  # zero-width non-joiner and joiner: Persian, Indic spellings


def clean_caption(caption: str) -> list[str]:
    """The caption's words: NFKC, lower case, punctuation of every script deleted or spaced
    out (see the module's docstring), words holding digits dropped; "a" and "i" kept."""
    if caption.isascii():  # the same rules, three times as fast (Flickr8k, COCO)
        words = caption.lower().translate(_DELETE_ASCII_PUNCTUATION).split()
        return [word for word in words if word.isalpha()]
    # Punctuation is spaced out before NFKC too: NFKC turns the full-width "，" and "／" of CJK
    # text into ASCII punctuation, which would then join the words around it.
    text = _normalized("".join(map(_cleaned_char, caption))).lower()
    return [word for word in "".join(map(_cleaned_char, text)).split() if _is_word(word)]


def _normalized(text: str) -> str:
    """NFKC, with Thai's and Lao's AM vowel put back together: NFKC splits it into NIKHAHIT
    + AA, a spelling no keyboard types, which would make one vowel two tokens."""
    text = unicodedata.normalize("NFKC", text)
    return text.replace("\u0e4d\u0e32", "\u0e33").replace("\u0ecd\u0eb2", "\u0eb3")


def _cleaned_char(char: str) -> str:
    """What a character becomes in the cleaned text: itself, nothing, or a space."""
    if char in _JOINERS:
        return ""
    category = unicodedata.category(char)
    if category[0] in "LMN" or char in _KEEP_FORMAT:
        return char
    return "" if category == "Cf" else " "


def _is_word(word: str) -> bool:
    """A word holds a letter and no digit (its other characters are marks and joiners)."""
    categories = [unicodedata.category(char)[0] for char in word]
    return "L" in categories and "N" not in categories


def is_spaceless(char: str) -> bool:
    """Whether `char` belongs to a script written without spaces between words."""
    return bool(_SPACELESS.match(char))


def graphemes(text: str) -> list[str]:
    """The user-perceived characters of `text`: grapheme clusters, a letter with its marks."""
    return _GRAPHEME.findall(text)


def split_characters(word: str) -> list[str]:
    """A cleaned word as `characters` tokens: each grapheme cluster of a spaceless script
    alone, runs of the other graphemes together."""
    tokens: list[str] = []
    run = ""
    for grapheme in graphemes(word):
        if is_spaceless(grapheme[0]):
            tokens += [run, grapheme] if run else [grapheme]
            run = ""
        else:
            run += grapheme
    return tokens + [run] if run else tokens


def tokenize(caption: str, tokenizer: str = "words") -> list[str]:
    """The caption cleaned into tokens: `words` or `characters` (see the module's docstring)."""
    words = clean_caption(caption)
    if tokenizer == "words":
        return words
    if tokenizer == "characters":
        return [token for word in words for token in split_characters(word)]
    raise ValueError(f"unknown tokenizer {tokenizer!r} (expected words or characters)")


def join_tokens(tokens: Iterable[str], tokenizer: str = "characters") -> str:
    """Tokens as a caption. Words: spaces between them, as ever (a dataset segmented into
    words keeps its segmentation). Characters: spaces between tokens except next to a
    character of a script written without spaces, as the script is written."""
    if tokenizer == "words":
        return " ".join(tokens)
    text, previous = [], ""
    for token in tokens:
        if previous and token and not (ends_spaceless(previous) or is_spaceless(token[0])):
            text.append(" ")
        text.append(token)
        previous = token or previous
    return "".join(text)


def caption_tokens(caption: str, tokenizer: str) -> list[str]:
    """A caption made by `join_tokens` split back into its tokens."""
    pieces = caption.split()
    return pieces if tokenizer == "words" else [t for p in pieces for t in split_characters(p)]


def ends_spaceless(token: str) -> bool:
    """Whether the token's last letter (its trailing marks skipped) is of a spaceless script."""
    base = next((c for c in reversed(token) if unicodedata.category(c)[0] != "M"), token[-1])
    return is_spaceless(base)


def mostly_spaceless(caption: str) -> bool:
    """Whether most of the caption's letters are of scripts written without spaces."""
    if caption.isascii():  # no such script in ASCII: `auto` decides on COCO in no time
        return False
    letters = [char for char in caption if unicodedata.category(char)[0] == "L"]
    return 2 * sum(map(is_spaceless, letters)) > len(letters) > 0


def choose_tokenizer(tokenizer: str, captions: Iterable[str]) -> str:
    """`tokenizer` itself, or for `auto` what the (training) captions call for: `characters`
    when most are mostly in scripts written without spaces, else `words`."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r} (expected {', '.join(TOKENIZERS)})")
    if tokenizer != "auto":
        return tokenizer
    total = spaceless = 0
    for caption in captions:
        total += 1
        spaceless += mostly_spaceless(caption)
    return "characters" if 2 * spaceless > total else "words"


def letters(text: str) -> int:
    """How many letters and marks the text holds (after NFKC), the measure of what cleaning
    kept."""
    text = _normalized(text)
    return sum(unicodedata.category(char)[0] in "LM" for char in text)
