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


def test_a_depthwise_kernel_stays_float16_where_int8_would_be_larger(tmp_path):
    # A fine-tuned encoder's depthwise kernels (k, k, channels, 1) have one column: int8 with
    # a scale per number would take more room than float16 and save nothing.
    depthwise = np.random.default_rng(2).normal(size=(5, 5, 672, 1)).astype(np.float32)
    assert depthwise.size >= INT8_MIN_SIZE
    save_weights_npz(Weights([depthwise]), tmp_path, dtype="int8")
    with np.load(tmp_path / "weights.npz") as arrays:
        assert arrays.files == ["w0"] and arrays["w0"].dtype == np.float16
    back = read_weights_npz(tmp_path / "weights.npz")[0]
    np.testing.assert_array_equal(back, depthwise.astype(np.float16).astype(np.float32))


def test_an_embedding_is_scaled_by_word_where_that_errs_less():
    rng = np.random.default_rng(1)
    embedding = rng.normal(size=(500, 16)).astype(np.float32)
    embedding[:10] *= 50  # a few words with long vectors would crush the others' resolution
    q, scale = quantize_int8(embedding)
    assert scale.shape == (500, 1) and q.dtype == np.int8


def test_an_onnx_export_keeps_int8_matrices_and_computes_the_same_numbers(tmp_path):
    """A float32 initializer that is an int8 matrix dequantized (whole, transposed or a block of
    its rows, as tf2onnx and grappler leave them) becomes int8 + scales + DequantizeLinear; the
    runtime's session then computes the very same outputs."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from captioner.export.int8_weights import keep_int8
    from captioner.model.int8 import dequantize_int8

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(96, 128)).astype(np.float32)  # per column: (1, 128) scales
    embedding = rng.normal(size=(200, 64)).astype(np.float32) * rng.uniform(0.1, 3, (200, 1))
    pairs = [quantize_int8(kernel), quantize_int8(embedding.astype(np.float32))]
    k, e = (dequantize_int8(q, s) for q, s in pairs)
    inits = {"k": k, "k_block": k[32:64], "e_t": np.ascontiguousarray(e.T)}  # (64, 200)
    nodes = [helper.make_node("MatMul", ["x", "k"], ["a"]),
             helper.make_node("MatMul", ["y", "k_block"], ["b"]),
             helper.make_node("MatMul", ["z", "e_t"], ["c"])]  # fmt: skip
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, d])
              for n, d in (("x", 96), ("y", 32), ("z", 64))]  # fmt: skip
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None]) for n in "abc"]
    initializers = [numpy_helper.from_array(v, n) for n, v in inits.items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    feed = {"x": rng.normal(size=(5, 96)).astype(np.float32),
            "y": rng.normal(size=(5, 32)).astype(np.float32),
            "z": rng.normal(size=(5, 64)).astype(np.float32)}  # fmt: skip
    before = onnxruntime.InferenceSession(str(path)).run(None, feed)
    size = path.stat().st_size
    assert keep_int8(path, pairs) == 3
    assert path.stat().st_size < 0.4 * size
    kept = onnx.load(str(path))
    assert [n.op_type for n in kept.graph.node].count("DequantizeLinear") == 3
    assert all(i.data_type != TensorProto.FLOAT or np.prod(i.dims) < 4096
               for i in kept.graph.initializer)  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")  # as the runtime sets
    after = onnxruntime.InferenceSession(str(path), options).run(None, feed)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)


def test_a_saved_model_keeps_int8_matrices_in_its_graph_and_computes_the_same_numbers(tmp_path):
    """Frozen into constants, a weight that is an int8 matrix dequantized (as it is or
    transposed, read outside or inside a loop) becomes int8 + scales + Cast and Mul; the saved
    graph, loaded as TF Serving loads it, computes the very same outputs."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    from captioner.export.int8_weights import keep_int8_in_graph
    from captioner.export.saved_model import _save_graph
    from captioner.model.int8 import dequantize_int8

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(96, 128)).astype(np.float32)
    loop = rng.normal(size=(128, 128)).astype(np.float32) / 8
    embedding = (rng.normal(size=(200, 128)) * rng.uniform(0.1, 3, (200, 1))).astype(np.float32)
    pairs = [quantize_int8(m) for m in (kernel, loop, embedding)]
    k, m, e = (tf.Variable(dequantize_int8(q, s)) for q, s in pairs)
    e_t = tf.Variable(tf.transpose(e))  # stored transposed, as a Keras head may read it

    @tf.function(input_signature=[tf.TensorSpec([None, 96], tf.float32)])
    def f(x):
        h = tf.tanh(x @ k)
        _, h = tf.while_loop(lambda i, h: i < 3, lambda i, h: (i + 1, tf.tanh(h @ m)), (0, h))
        return {"logits": h @ e_t}

    x = rng.normal(size=(5, 96)).astype(np.float32)
    want = f(tf.constant(x))["logits"].numpy()
    frozen = convert_variables_to_constants_v2(f.get_concrete_function())
    graph_def = frozen.graph.as_graph_def()
    float_size = graph_def.ByteSize()
    assert keep_int8_in_graph(graph_def, pairs) == 3
    assert graph_def.ByteSize() < 0.4 * float_size
    _save_graph(graph_def, frozen.inputs[0].name, {"logits": frozen.outputs[0].name},
                tmp_path / "saved")  # fmt: skip
    serve = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    np.testing.assert_array_equal(serve(images=tf.constant(x))["logits"].numpy(), want)
