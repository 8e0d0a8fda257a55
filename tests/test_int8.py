"""8-bit weight storage: large matrices as int8 with a scale per channel, read back within half
a step of each value; small arrays stay float16."""

from __future__ import annotations

import numpy as np

from captioner.model.int8 import INT8_MIN_SIZE, quantize_int8
from captioner.model.rundir import read_weights_npz, save_weights_npz


class Weights:
    """What save_weights_npz reads of a Keras model."""

    def __init__(self, arrays):
        self.arrays = arrays

    def get_weights(self):
        return self.arrays


def test_int8_weights_read_back_within_half_a_step_of_each_channel(tmp_path):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(64, 256)).astype(np.float32)  # scales differ by column
    kernel *= rng.uniform(0.01, 3.0, size=256).astype(np.float32)
    embedding = rng.normal(size=(300, 32)).astype(np.float32)  # and by row
    embedding *= rng.uniform(0.01, 3.0, size=(300, 1)).astype(np.float32)
    bias = rng.normal(size=256).astype(np.float32)
    save_weights_npz(Weights([kernel, embedding, bias]), tmp_path, dtype="int8")
    got = read_weights_npz(tmp_path / "weights.npz")
    for original, back in zip((kernel, embedding), got):
        _, scale = quantize_int8(original)
        assert np.all(np.abs(back - original) <= scale / 2 + 1e-7)  # half a step, per channel
    np.testing.assert_array_equal(got[2], bias.astype(np.float16).astype(np.float32))
    assert kernel.size >= INT8_MIN_SIZE > bias.size
    save_weights_npz(Weights([kernel, embedding, bias]), tmp_path / "f16", dtype=np.float16)
    int8_size = (tmp_path / "weights.npz").stat().st_size
    assert int8_size < 0.6 * (tmp_path / "f16" / "weights.npz").stat().st_size


def test_an_embedding_is_scaled_by_word_where_that_errs_less():
    rng = np.random.default_rng(1)
    embedding = rng.normal(size=(500, 16)).astype(np.float32)
    embedding[:10] *= 50  # a few words with long vectors would crush the others' resolution
    q, scale = quantize_int8(embedding)
    assert scale.shape == (500, 1) and q.dtype == np.int8
