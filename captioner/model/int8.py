"""8-bit weights: how a shipped model stores its large matrices in about a twelfth of float32's
room (captioner.model.rundir's weights.npz, `scripts/ship_reference.py --weights int8`)."""

from __future__ import annotations

import numpy as np

# Matrices of at least this many numbers (embedding, LSTM kernels, logits, attention) become
# int8 with a float32 scale per output channel; biases, BatchNorm and other small arrays stay
# float16, where 8 bits would cost accuracy and save nothing.
INT8_MIN_SIZE = 4096


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with a float32 scale per output channel (values = q * scale, |error| <=
    scale / 2): per column of a kernel (a unit), or per row where that errs less (an
    embedding's words, whose vectors differ in size). The scale keeps its axis (1, n) or (n, 1),
    so that q * scale restores the matrix."""
    matrix = weight.reshape(-1, weight.shape[-1]).astype(np.float32)
    best = None
    for axis in (0, 1):
        scale = np.abs(matrix).max(axis=axis, keepdims=True) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.round(matrix / scale).astype(np.int8)
        error = float(np.square(q * scale - matrix).mean())
        if best is None or error < best[0]:
            best = (error, q.reshape(weight.shape), scale)
    return best[1], best[2]


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 matrix quantize_int8's (q, scale) stand for."""
    matrix = q.reshape(-1, q.shape[-1]).astype(np.float32) * scale
    return matrix.reshape(q.shape)
