"""Training on several devices or machines with TensorFlow's distribution strategies.

    one          the default device (what `train` always did)
    mirrored     tf.distribute.MirroredStrategy: every local GPU; with CAPTIONER_CPU_DEVICES=N
                 the CPU split into N logical devices (to run and test the path without GPUs)
    multiworker  tf.distribute.MultiWorkerMirroredStrategy: the machines of TF_CONFIG, each
                 running the same `captioner train` command; worker 0 (or the "chief") writes
                 the run directory, the others write nothing

The model is built and compiled inside the strategy's scope; batches keep the global batch size
and the strategy splits each one across the replicas. Keras 3.15 cannot run `fit` under
MultiWorkerMirroredStrategy as released (keras-team/keras#20585, tensorflow/tensorflow#72388):
`_patch_keras_for_multiworker` works around its two bugs (scripts/repro_multiworker.py shows
both, and the patched run).
"""

from __future__ import annotations

import json
import os

from captioner.errors import ConfigError

CPU_DEVICES_VARIABLE = "CAPTIONER_CPU_DEVICES"


def is_chief() -> bool:
    """Whether this process writes the run directory: always, except under a TF_CONFIG that makes
    it a worker other than worker 0 (or any worker, when the cluster has a "chief")."""
    task = _tf_config().get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    has_chief = "chief" in _tf_config().get("cluster", {})
    return task.get("type") == "worker" and task.get("index") == 0 and not has_chief


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        raise ConfigError("TF_CONFIG: not valid JSON") from None


def make_strategy(name: str):
    """The tf.distribute strategy for train.strategy `name`; call before TensorFlow runs any op
    (logical devices and collective ops can only be set up before)."""
    import tensorflow as tf

    if name == "one":
        return tf.distribute.get_strategy()
    _split_cpu(tf)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not _tf_config().get("cluster"):
        raise ConfigError(
            "train.strategy=multiworker needs TF_CONFIG: a JSON cluster and this task, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}} (docs/distributed.md)'
        )
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _patch_keras_for_multiworker(tf)
    return strategy


def _split_cpu(tf) -> None:
    """CAPTIONER_CPU_DEVICES=N: N logical CPU devices, each a replica for the strategy."""
    count = os.environ.get(CPU_DEVICES_VARIABLE)
    if not count:
        return
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"{CPU_DEVICES_VARIABLE}={count}: expected a whole number >= 1")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * int(count)
        )
    except RuntimeError:  # TensorFlow already started: the split can no longer change
        raise ConfigError(
            f"{CPU_DEVICES_VARIABLE}: set it before the process starts TensorFlow"
        ) from None


def replicas(strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def _patch_keras_for_multiworker(tf) -> None:
    """Two fixes to Keras 3.15's TensorFlow trainer, which fails under MultiWorkerMirroredStrategy:

    1. `_maybe_symbolic_build` reduces a whole batch of PerReplica values with strategy.reduce,
       which collective strategies refuse ("unsupported type PerReplica"): build from this
       worker's first local batch instead.
    2. `reduce_per_replica` reduces the step's scalar metrics along axis 0 ("Invalid reduction
       dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388): average them
       across replicas with axis=None.
    Both only change what runs under a multi-worker strategy; applied once per process.
    """
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_captioner_patched", False):
        return
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(batches)
                )
                break
        return original_build(self, iterator=None, data_batch=data_batch)

    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._captioner_patched = True
