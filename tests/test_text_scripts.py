"""Captions in the world's scripts: the words a speaker would list, tokens for scripts written
without spaces, captions joined back as they are written, and nothing lost in silence."""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captioner.config import TextConfig
from captioner.data.caption_check import check_captions
from captioner.data.cleaning import (
    caption_tokens,
    choose_tokenizer,
    clean_caption,
    join_tokens,
    tokenize,
)
from captioner.data.datasets import load_dataset
from captioner.data.text import Vocabulary, build_vocabulary
from captioner.errors import DataError


def canonical(words: list[str]) -> list[str]:
    """Expected words in Unicode's canonical form: "ड़" typed as one code point or as
    "ड" + nukta is the same letter to a reader (NFC turns both into the latter)."""
    return [unicodedata.normalize("NFC", word) for word in words]


# (caption, the words a speaker of its language would list), hand-written.
WORDS = {
    "English, Unicode punctuation": (
        "A man—in a red shirt—runs “fast”.",
        ["a", "man", "in", "a", "red", "shirt", "runs", "fast"],
    ),
    "Spanish": (
        "¿Un perro corre? ¡Sí, corre rápido!",
        ["un", "perro", "corre", "sí", "corre", "rápido"],
    ),
    # An apostrophe inside a word joins it, typed straight or curly: "l’herbe" = "l'herbe".
    "French": (
        "Un chien court dans l’herbe verte.",
        ["un", "chien", "court", "dans", "lherbe", "verte"],
    ),
    "German": (
        "Die Straße ist naß – ein Hund läuft.",
        ["die", "straße", "ist", "naß", "ein", "hund", "läuft"],
    ),
    "Vietnamese": (
        "Một con chó đang chạy trên bãi cỏ.",
        ["một", "con", "chó", "đang", "chạy", "trên", "bãi", "cỏ"],
    ),
    "Greek": (
        "ΈΝΑΣ ΣΚΎΛΟΣ τρέχει στο γρασίδι;",
        ["ένας", "σκύλος", "τρέχει", "στο", "γρασίδι"],
    ),
    "Russian": (
        "Собака бежит по траве, а кошка — спит.",
        ["собака", "бежит", "по", "траве", "а", "кошка", "спит"],
    ),
    # Harakat (vowel marks) stay on their letters; tatweel is not a letter; "،" separates.
    "Arabic": (
        "كلبٌ يجري على العشبِ، والقـطة نائمة.",
        ["كلبٌ", "يجري", "على", "العشبِ", "والقطة", "نائمة"],
    ),
    "Hebrew": ("כלב רץ על הדשא, ליד צה״ל.", ["כלב", "רץ", "על", "הדשא", "ליד", "צהל"]),
    "Hindi": ("कुत्ता घास पर दौड़ रहा है।", ["कुत्ता", "घास", "पर", "दौड़", "रहा", "है"]),
    "Bengali": ("একটি কুকুর ঘাসে দৌড়াচ্ছে।", ["একটি", "কুকুর", "ঘাসে", "দৌড়াচ্ছে"]),
    "Tamil": ("ஒரு நாய் புல்லில் ஓடுகிறது.", ["ஒரு", "நாய்", "புல்லில்", "ஓடுகிறது"]),
    "Korean": ("강아지가 잔디밭에서 뛰고 있다.", ["강아지가", "잔디밭에서", "뛰고", "있다"]),
}

# (caption, its tokens under `characters`, the caption joined back), hand-written.
CHARACTERS = {
    "Chinese": (
        "一只狗在草地上奔跑。",
        ["一", "只", "狗", "在", "草", "地", "上", "奔", "跑"],
        "一只狗在草地上奔跑",
    ),
    # Full-width Latin letters typed in CJK text are the ordinary ones; a Latin word stays whole.
    "Chinese with Latin": (
        "ＮＢＡ球员在打篮球",
        ["nba", "球", "员", "在", "打", "篮", "球"],
        "nba球员在打篮球",
    ),
    # The long-vowel mark "ー" belongs to Katakana; the middle dot "・" separates.
    "Japanese": (
        "犬がボールを追う・コーヒー",
        ["犬", "が", "ボ", "ー", "ル", "を", "追", "う", "コ", "ー", "ヒ", "ー"],
        "犬がボールを追うコーヒー",
    ),
    # A Thai letter keeps its vowel and tone marks: one grapheme cluster, one token.
    "Thai": ("สุนัขกำลังวิ่ง", ["สุ", "นั", "ข", "กำ", "ลั", "ง", "วิ่", "ง"], "สุนัขกำลังวิ่ง"),
}


@pytest.mark.parametrize("language", sorted(WORDS))
def test_captions_keep_the_words_a_speaker_would_list(language):
    caption, words = WORDS[language]
    assert tokenize(caption, "words") == canonical(words)
    assert choose_tokenizer("auto", [caption]) == "words"
    assert join_tokens(tokenize(caption, "words"), "words") == " ".join(canonical(words))


@pytest.mark.parametrize("language", sorted(CHARACTERS))
def test_scripts_without_spaces_give_one_token_per_character(language):
    caption, tokens, written = CHARACTERS[language]
    assert choose_tokenizer("auto", [caption]) == "characters"
    assert tokenize(caption, "characters") == tokens
    assert join_tokens(tokens) == written
    assert caption_tokens(written, "characters") == tokens


def test_accents_typed_either_way_and_curly_apostrophes_are_the_same_words():
    composed = "Một con chó đang chạy"
    assert clean_caption(unicodedata.normalize("NFD", composed)) == clean_caption(composed)
    assert clean_caption("Don’t stop") == clean_caption("Don't stop") == ["dont", "stop"]
    assert clean_caption("a t‑shirt") == clean_caption("a t-shirt") == ["a", "tshirt"]


def test_words_holding_digits_are_dropped_in_every_script():
    assert clean_caption("٣ كلاب و ٢قطط") == ["كلاب", "و"]  # Arabic-Indic digits
    assert clean_caption("३ कुत्ते") == ["कुत्ते"]  # Devanagari digit
    assert clean_caption("ｂ２ bomber") == ["bomber"]  # full-width "b2"


def test_em_dashes_and_ideographic_punctuation_separate_words_as_ascii_joins_them():
    assert clean_caption("dog—cat dog–cat") == ["dog", "cat", "dog", "cat"]
    # ASCII punctuation joins, as Flickr8k's cleaning always did; CJK text's full-width
    # punctuation separates, though NFKC would make it ASCII.
    assert clean_caption("black/white") == ["blackwhite"]
    assert clean_caption("black／white") == ["black", "white"]
    assert clean_caption("狗，猫") == ["狗", "猫"]
    assert clean_caption("a 🐶 runs ★") == ["a", "runs"]


@given(st.text(alphabet=string.printable, max_size=60))
def test_ascii_captions_clean_as_they_always_did(caption):
    """The fast ASCII path and the Unicode path agree (Flickr8k's README row rests on it)."""
    old = [
        w
        for w in caption.lower().translate(str.maketrans("", "", string.punctuation)).split()
        if w.isalpha()
    ]
    assert clean_caption(caption) == old
    spaced = caption + "\u00a0"  # a non-ASCII space forces the Unicode path
    assert clean_caption(spaced) == old


def test_auto_picks_characters_only_when_most_captions_are_written_without_spaces():
    chinese, english = ["一只狗在跑"] * 3, ["a dog runs"] * 2
    assert choose_tokenizer("auto", chinese + english) == "characters"
    assert choose_tokenizer("auto", chinese[:1] + english) == "words"
    assert choose_tokenizer("words", chinese) == "words"
    with pytest.raises(ValueError, match="unknown tokenizer"):
        choose_tokenizer("jieba", chinese)


def test_the_vocabulary_records_its_tokenizer_and_old_files_hold_words(tmp_path):
    captions = [tokenize(c, "characters") for c in ["一只狗", "一只猫"]]
    vocabulary = build_vocabulary(captions, 1, "characters")
    vocabulary.save(tmp_path / "vocabulary.json")
    loaded = Vocabulary.load(tmp_path / "vocabulary.json")
    assert loaded.tokenizer == "characters" and loaded.words == vocabulary.words
    assert loaded.join(["一", "只", "狗"]) == "一只狗"
    assert loaded.tokenize("两只狗。") == ["两", "只", "狗"]
    # A vocabulary file written before tokenizers existed.
    old = (
        '{"format": "captioner-vocabulary/1", "min_word_count": 1, '
        + '"words": ["<pad>", "<start>", "<end>", "<unk>", "dog"]}'
    )
    (tmp_path / "old.json").write_text(old)
    assert Vocabulary.load(tmp_path / "old.json").tokenizer == "words"
    assert Vocabulary.load(tmp_path / "old.json").join(["a", "dog"]) == "a dog"


def write_kaggle_captions(root, captions: list[str]):
    (root / "Images").mkdir(parents=True)
    lines = ["image,caption"]
    for index, caption in enumerate(captions):
        (root / "Images" / f"{index}.jpg").write_bytes(b"")
        lines.append(f"{index}.jpg,{caption}")
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_dataset(root)


def test_captions_that_lose_their_words_are_counted_with_where_they_are(tmp_path):
    captions = ["a dog runs"] * 6 + ["🐶🐶 2024", "a b2b 4x4 deal2 x1y2z3"]
    dataset = write_kaggle_captions(tmp_path / "data", captions)
    check = check_captions(dataset, TextConfig())
    assert (check.captions, check.empty, check.lossy) == (8, 1, 1)
    path = tmp_path / "data" / "captions.txt"
    assert check.line().startswith("1 of 8 captions cleaned to nothing and 1 lost most of their ")
    assert f"(e.g. {path}:8, {path}:9)" in check.line()


def test_a_dataset_whose_captions_clean_to_nothing_is_refused(tmp_path):
    dataset = write_kaggle_captions(tmp_path / "data", ["12 34", "5", "a dog"])
    with pytest.raises(DataError, match=r"captions.txt: 2 of 3 captions cleaned to nothing"):
        check_captions(dataset, TextConfig())


def test_spaceless_captions_split_at_spaces_are_told(tmp_path):
    dataset = write_kaggle_captions(tmp_path / "data", ["一只狗在草地上奔跑"] * 8)
    assert check_captions(dataset, TextConfig()).line() is None  # auto: characters
    said = check_captions(dataset, TextConfig(tokenizer="words")).line()
    assert "8 of 8 captions are in scripts written without spaces" in said


def test_the_saved_model_graph_joins_tokens_as_the_vocabulary_does():
    import tensorflow as tf

    from captioner.export.saved_model import words_of

    vocabulary = Vocabulary(["nba", "球", "员", "在", "a", "กำ", "ลั", "ง"], 1, "characters")
    rows = [[4, 5, 6, 7, 8, 9, 2, 0], [1, 8, 4, 9, 10, 11, 2, 5], [2, 4, 0, 0, 0, 0, 0, 0]]
    got = words_of(tf.constant(rows, tf.int32), vocabulary).numpy()
    want = [vocabulary.join(vocabulary.decode(row)) for row in rows]
    assert [c.decode("utf-8") for c in got] == want == ["nba球员在aกำ", "a nbaกำลัง", ""]
