"""Exports that keep a package's 8-bit weights: 20 MB of int8 matrices instead of 80 MB of
float32 ones, in the ONNX files and in the SavedModel.

tf2onnx, and TensorFlow's graph with its variables frozen into constants, write every weight as
float32. A matrix that the run stores in 8 bits (captioner.model.int8) holds exactly q * scale
in float32, so its constant is found by its bytes (as it is, transposed, or a block of its
rows) and replaced by the int8 matrix, its scales, and the product that computes the same
float32 numbers inside the graph (ONNX: DequantizeLinear; TensorFlow: Cast and Mul): the same
log-probabilities to the bit, the same captions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from captioner.model.int8 import INT8_MIN_SIZE, dequantize_int8
from captioner.model.rundir import WEIGHTS_FILE, Run


def int8_matrices(runs: list[Run]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (q, scale) pair stored in the runs' weights.npz (none for runs kept in float)."""
    pairs = []
    for run in runs:
        path = run.directory / WEIGHTS_FILE
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as arrays:
            pairs += [(arrays[name], arrays[f"s{name[1:]}"]) for name in arrays.files
                      if name.startswith("q")]  # fmt: skip
    return pairs


class _Rows:
    """Finds a float32 initializer among the rows of the int8 matrices: a whole matrix, its
    transpose, or a block of its rows (grappler folds a split of an LSTM's input kernel into one
    constant per part)."""

    def __init__(self, pairs):
        self.matrices, self.rows = [], {}
        for q, scale in pairs:
            if q.ndim != 2:
                continue
            axis = 1 if scale.shape[0] == 1 else 0  # the scales run along the kept axis
            matrix = dequantize_int8(q, scale)
            for flip in (False, True):  # tf2onnx may store a kernel transposed
                m, qq, a = (matrix.T, q.T, 1 - axis) if flip else (matrix, q, axis)
                m = np.ascontiguousarray(m)
                self.matrices.append((m, np.ascontiguousarray(qq), scale.ravel(), a))
                for row in range(len(m)):
                    self.rows.setdefault(m[row].tobytes(), (len(self.matrices) - 1, row))

    def find(self, array: np.ndarray):
        """(q, scale, axis) standing for `array` exactly, or None."""
        if array.ndim != 2 or array[0].tobytes() not in self.rows:
            return None
        index, first = self.rows[array[0].tobytes()]
        matrix, q, scale, axis = self.matrices[index]
        rows = slice(first, first + len(array))
        if matrix[rows].shape != array.shape or matrix[rows].tobytes() != array.tobytes():
            return None
        return q[rows], scale[rows] if axis == 0 else scale, axis


def keep_int8(path: Path, pairs) -> int:
    """Rewrites the ONNX model at `path` with the int8 matrices of `pairs` in place of their
    float32 initializers; returns how many it replaced."""
    import onnx
    from onnx import helper, numpy_helper

    if not pairs:
        return 0
    model = onnx.load(str(path))
    wanted, graph, replaced = _Rows(pairs), model.graph, 0
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims) < INT8_MIN_SIZE:
            continue
        match = wanted.find(numpy_helper.to_array(init))
        if match is None:
            continue
        q, scale, axis = match
        name = init.name
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(q), f"{name}/q"),
                                  numpy_helper.from_array(scale, f"{name}/scale")])  # fmt: skip
        inputs = [f"{name}/q", f"{name}/scale"]
        node = helper.make_node("DequantizeLinear", inputs, [name], axis=axis, name=f"{name}/dq")
        graph.node.insert(0, node)
        replaced += 1
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return replaced


def keep_int8_in_graph(graph_def, pairs) -> int:
    """Rewrites a frozen TensorFlow GraphDef in place: each float32 constant that is one of the
    int8 matrices of `pairs` (or its transpose, or a block of its rows) becomes an int8
    constant times its scales, in the graph and in the functions of its library (the search's
    loops); returns how many it replaced."""
    if not pairs:
        return 0
    wanted = _Rows(pairs)
    replaced = _int8_nodes(graph_def.node, wanted, inside_function=False)
    for function in graph_def.library.function:
        replaced += _int8_nodes(function.node_def, wanted, inside_function=True)
    return replaced


def _int8_nodes(nodes, wanted: _Rows, inside_function: bool) -> int:
    """Replaces the matching Const nodes of `nodes` (a repeated NodeDef field): the node keeps
    its name, as an Identity of Cast(q) * scale, so every reader of it reads the same."""
    import tensorflow as tf

    replaced = 0
    for node in list(nodes):
        if node.op != "Const" or node.attr["dtype"].type != tf.float32.as_datatype_enum:
            continue
        dims = [d.size for d in node.attr["value"].tensor.tensor_shape.dim]
        if len(dims) != 2 or dims[0] * dims[1] < INT8_MIN_SIZE:
            continue
        match = wanted.find(tf.make_ndarray(node.attr["value"].tensor))
        if match is None:
            continue
        q, scale, axis = match
        scale = scale.reshape((-1, 1) if axis == 0 else (1, -1)).astype(np.float32)
        nodes.remove(node)
        nodes.extend(_dequantize(node.name, q, scale, node.device, inside_function))
        replaced += 1
    return replaced


def _dequantize(name: str, q: np.ndarray, scale: np.ndarray, device: str, inside_function):
    """The NodeDefs computing `name` = float32(q) * scale (a function body names outputs by
    their argument: Cast's y, Mul's z)."""
    import tensorflow as tf

    def out(node: str, arg: str) -> str:
        return f"{node}:{arg}:0" if inside_function else node

    def const(suffix: str, array: np.ndarray):
        node = tf.compat.v1.NodeDef(name=f"{name}/{suffix}", op="Const", device=device)
        node.attr["dtype"].type = tf.as_dtype(array.dtype).as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.ascontiguousarray(array)))
        return node

    def op(suffix: str, kind: str, inputs: list[str], **types):
        node = tf.compat.v1.NodeDef(name=f"{name}{suffix}", op=kind, input=inputs, device=device)
        for key, dtype in types.items():
            node.attr[key].type = dtype.as_datatype_enum
        return node

    cast = op("/float", "Cast", [out(f"{name}/q", "output")], SrcT=tf.int8, DstT=tf.float32)
    cast.attr["Truncate"].b = False
    mul = op("/dequantized", "Mul", [out(f"{name}/float", "y"), out(f"{name}/scale", "output")],
             T=tf.float32)  # fmt: skip
    identity = op("", "Identity", [out(f"{name}/dequantized", "z")], T=tf.float32)
    return [const("q", q), const("scale", scale), cast, mul, identity]
