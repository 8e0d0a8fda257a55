"""captioner: image captioning with a CNN encoder and an LSTM decoder, in Keras 3.

The Python API (TensorFlow is imported when a model is loaded, not by `import captioner`):

    from captioner import Captioner
    Captioner.load().caption("photo.jpg")             # the shipped Flickr8k model

The stages, each one function (TensorFlow is imported only when a stage runs):

    from captioner.features.extract import extract_features  # photos -> cached feature vectors
    from captioner.training.train import train                # features + captions -> a run
    from captioner.inference.caption import caption_images    # a run + photos -> captions
    from captioner.inference.caption import caption_to_file   # ... -> a resumable captions file
    from captioner.inference.evaluate import evaluate         # a run + split -> BLEU, CIDEr-D
"""

from captioner.version import __version__

__all__ = ["Captioner", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `import captioner` (and so `captioner --help`) stays instant.
    if name == "Captioner":
        from captioner.inference.api import Captioner

        return Captioner
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
