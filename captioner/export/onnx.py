"""A captioner as two ONNX models that the light runtime (captioner.runtime) runs with
onnxruntime, without TensorFlow: the search loop stays on the host, in NumPy.

    start.onnx   photos, float32 (N, S, S, 3) in [0, 255] as prepare_image gives them ->
                 state_0 .. state_k: every distinct encoder, then each decoder's initial state
    step.onnx    tokens int32 (M,), state_0 .. state_k -> log_probs (M, V), state_0 .. state_k:
                 one word of every ensemble member, their probabilities averaged

Why not the whole search as one graph, as the SavedModel has it: a Keras LSTM inside a while
loop does not convert (tf2onnx), and a converted loop would still need string ops for the
words. Converted on the CPU with tf2onnx (opset 17).
"""

from __future__ import annotations

from pathlib import Path

from captioner.errors import ConfigError
from captioner.export.int8_weights import int8_matrices, keep_int8
from captioner.model.ensembles import decoder_steps, encoder_runs
from captioner.model.rundir import Run

OPSET = 17


def _state_specs(state):
    import tensorflow as tf

    return [tf.TensorSpec([None, *s.shape[1:]], s.dtype, name=f"state_{i}")
            for i, s in enumerate(state)]  # fmt: skip


def start_and_step_functions(runs: list[Run]):
    """Returns (start, step): the two graphs as tf.functions with input signatures."""
    import tensorflow as tf

    size = runs[0].encoder.input_size
    encoders = [run.load_encoder() for run in encoder_runs(runs)[0]]
    steps = decoder_steps(runs)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="photos")])
    def start(photos):
        count = tf.shape(photos)[0]
        features = [tf.reshape(e(photos, training=False), [count, -1]) for e in encoders]
        state = steps.initial_state(tf.concat(features, axis=1))
        return {f"state_{i}": s for i, s in enumerate(state)}

    example = start.get_concrete_function().structured_outputs
    state_specs = _state_specs([example[f"state_{i}"] for i in range(len(example))])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="tokens"), state_specs])
    def step(tokens, state):
        log_probs, new_state = steps.step(tokens, list(state))
        return {"log_probs": log_probs, **{f"next_state_{i}": s for i, s in enumerate(new_state)}}

    return start, step


def write_onnx(runs: list[Run], folder: Path) -> None:
    """start.onnx and step.onnx of `runs` into `folder`."""
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError:
        raise ConfigError("--format onnx needs tf2onnx: pip install 'captioner[export]'") from None
    with tf.device("/cpu:0"):
        start, step = start_and_step_functions(runs)
        int8 = int8_matrices(runs)  # kept in 8 bits in the graph, as in the package
        for name, function in (("start", start), ("step", step)):
            tf2onnx.convert.from_function(
                function, input_signature=function.input_signature, opset=OPSET,
                output_path=str(folder / f"{name}.onnx"),
            )  # fmt: skip
            keep_int8(folder / f"{name}.onnx", int8)
