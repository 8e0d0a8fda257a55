"""The light runtime: an exported captioner run with NumPy, Pillow and onnxruntime only.

Nothing here imports TensorFlow or Keras: the encoder and one decoder step are ONNX models, and
the search (`captioner.runtime.search`) runs on the host in NumPy.
"""
