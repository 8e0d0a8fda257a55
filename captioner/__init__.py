"""captioner: image captioning with a CNN encoder and an LSTM decoder, in Keras 3.

The stages, each one function (TensorFlow is imported only when a stage runs):

    from captioner.features import extract_features   # images -> cached feature vectors
    from captioner.train import train                  # features + captions -> run directory
    from captioner.caption import caption_images       # run directory + photos -> captions
    from captioner.caption import caption_to_file      # ... -> a resumable captions file
    from captioner.evaluate import evaluate            # run directory + split -> BLEU, CIDEr-D
"""

__version__ = "0.1.0"
