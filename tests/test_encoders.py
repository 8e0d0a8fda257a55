"""The encoder registry: shapes of every encoder (random weights) and the offline error."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.encoders import build_encoder, get_encoder, list_encoders
from captioner.errors import EncoderError


@pytest.mark.parametrize("name", [n for n in list_encoders() if n != "tiny_test"])
def test_each_encoder_gives_its_feature_size(name):
    spec = get_encoder(name)
    model = build_encoder(name, "none")
    images = np.random.RandomState(0).randint(0, 256, (1, spec.input_size, spec.input_size, 3))
    features = model(images.astype(np.float32), training=False)
    assert tuple(features.shape) == (1, spec.feature_dim)


def test_unreachable_imagenet_weights_name_the_remedies(monkeypatch):
    import keras

    def no_network(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: Name not known")

    monkeypatch.setattr(keras.applications, "InceptionV3", no_network)
    with pytest.raises(EncoderError) as error:
        build_encoder("inception_v3", "imagenet")
    message = str(error.value)
    assert message.startswith("cannot get the ImageNet weights for InceptionV3 (URL fetch failure")
    assert "--weights FILE" in message and "--encoder efficientnet_lite0" in message


def test_missing_weights_file():
    with pytest.raises(EncoderError, match="nowhere.h5: weights file not found"):
        build_encoder("vgg16", "nowhere.h5")
