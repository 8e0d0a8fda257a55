"""Same seed, same run: what `train`, `finetune` and `finetune-encoder` call before building
a model."""

from __future__ import annotations


def seed_everything(seed: int) -> None:
    """Same seed, same run: Python, numpy and backend draws, and deterministic TF kernels."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
