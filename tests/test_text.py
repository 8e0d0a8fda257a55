"""Caption cleaning, the vocabulary's JSON round trip, and teacher-forcing arrays."""

from __future__ import annotations

import numpy as np

from captioner.data.text import (
    END_ID,
    START_ID,
    UNK_ID,
    Vocabulary,
    build_vocabulary,
    clean_caption,
    teacher_forcing_arrays,
)


def test_cleaning_keeps_one_letter_words_and_drops_punctuation_and_digits():
    assert clean_caption("A dog's  T-shirt, 2 balls & a cat .") == [
        "a", "dogs", "tshirt", "balls", "a", "cat",
    ]  # fmt: skip
    assert clean_caption("I see 3 men in 4x4s!") == ["i", "see", "men", "in"]


def test_vocabulary_counts_only_frequent_words_and_round_trips_through_json(tmp_path):
    captions = [["a", "dog", "runs"], ["a", "dog", "sits"], ["a", "cat"]]
    vocabulary = build_vocabulary(captions, min_word_count=2)
    assert vocabulary.words == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog"]
    assert vocabulary.encode(["a", "cat"]) == [4, UNK_ID]
    vocabulary.save(tmp_path / "vocabulary.json")
    assert '"words"' in (tmp_path / "vocabulary.json").read_text()  # JSON, not a pickle
    loaded = Vocabulary.load(tmp_path / "vocabulary.json")
    assert loaded.words == vocabulary.words and loaded.min_word_count == 2
    assert loaded.decode([START_ID, 4, 5, END_ID, 4]) == ["a", "dog"]


def test_teacher_forcing_targets_are_inputs_shifted_by_one_with_padding():
    inputs, targets = teacher_forcing_arrays([[4, 5, 6], [7]], max_words=4)
    np.testing.assert_array_equal(inputs, [[START_ID, 4, 5, 6, 0], [START_ID, 7, 0, 0, 0]])
    np.testing.assert_array_equal(targets, [[4, 5, 6, END_ID, 0], [7, END_ID, 0, 0, 0]])
    np.testing.assert_array_equal(
        inputs[:, 1:][targets[:, :-1] != END_ID], targets[:, :-1][targets[:, :-1] != END_ID]
    )
    long_inputs, long_targets = teacher_forcing_arrays([[4] * 10], max_words=4)
    assert long_targets[0, -1] == END_ID and long_inputs.shape == (1, 5)
