"""ONNX exports that keep a package's 8-bit weights: 20 MB of int8 matrices instead of 80 MB of
float32 ones.

tf2onnx writes every weight as a float32 initializer. A matrix that the run stores in 8 bits
(captioner.model.int8) holds exactly q * scale in float32, so its initializer is found by its
bytes (as it is, transposed, or a block of its rows) and replaced by the int8 matrix,
its scales, and a DequantizeLinear node that computes the same float32 numbers inside the graph:
the same log-probabilities to the bit, the same captions.
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
