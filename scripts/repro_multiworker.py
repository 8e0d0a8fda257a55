"""Keras 3.15's `fit` under tf.distribute.MultiWorkerMirroredStrategy, as released and patched.

Two CPU worker processes on 127.0.0.1 train a one-layer model for two epochs:

    python scripts/repro_multiworker.py            # as released: both workers fail
    python scripts/repro_multiworker.py --patched  # with captioner.training.distribute's two fixes

As released (Keras 3.15.1, TensorFlow 2.21.0, measured 2026-11-29) each worker fails with
`ValueError: Attempt to convert a value (PerReplica:{...}) with an unsupported type` in
`TensorFlowTrainer._maybe_symbolic_build`; with that fixed alone, with `Invalid reduction
dimension 0 for input with 0 dimensions` in `reduce_per_replica` (tensorflow/tensorflow#72388,
keras-team/keras#20585). Patched, both train and print the same losses. When a Keras release
passes without --patched, `captioner.training.distribute._patch_keras_for_multiworker` can go.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def launch(patched: bool) -> None:
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
    for s in sockets:
        s.close()
    workers = []
    for index in range(2):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(task), "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, __file__, "--worker", *(["--patched"] if patched else [])]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True,
                                        stderr=subprocess.STDOUT))  # fmt: skip
    for index, worker in enumerate(workers):
        output, _ = worker.communicate(timeout=300)
        errors = [line for line in output.splitlines() if "Error:" in line or "FIT" in line]
        print(f"worker {index}: exit {worker.returncode}: {(errors or ['?'])[-1][:300]}")


def worker(patched: bool) -> None:
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TensorFlow op
    import keras

    if patched:
        from captioner.training.distribute import _patch_keras_for_multiworker

        _patch_keras_for_multiworker(tf)
    x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True))).batch(32)
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    history = model.fit(data.with_options(options), epochs=2, verbose=0)
    print(f"FIT OK loss={history.history['loss']} (keras {keras.__version__}, tf {tf.__version__})")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker("--patched" in sys.argv)
    else:
        launch("--patched" in sys.argv)
