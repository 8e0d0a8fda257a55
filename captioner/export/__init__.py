"""`captioner export`: a trained captioner taken out of the toolkit, as a TensorFlow SavedModel
(TF Serving) or as ONNX models that the light runtime (captioner.runtime) runs without
TensorFlow."""
