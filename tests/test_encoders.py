"""The encoder registry: shapes of every encoder (random weights) and the offline error."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.errors import EncoderError
from captioner.features.encoders import build_encoder, get_encoder, list_encoders


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_encoders() if n != "tiny_test"])
def test_each_encoder_gives_its_feature_size(name):
    spec = get_encoder(name)
    model = build_encoder(name, "none")
    images = np.random.RandomState(0).randint(0, 256, (1, spec.input_size, spec.input_size, 3))
    features = model(images.astype(np.float32), training=False)
    assert tuple(features.shape) == (1, spec.feature_dim)


def test_unreachable_imagenet_weights_name_the_remedies(monkeypatch):
    """A download that really fails: Keras fetches InceptionV3's weights into the session's
    empty Keras home (conftest) from a local port where nothing listens, and its own error
    becomes one line with the remedies."""
    import socket

    from keras.src.applications import inception_v3

    with socket.socket() as closed:  # bound but never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/inception_v3_notop.h5"
        monkeypatch.setattr(inception_v3, "WEIGHTS_PATH_NO_TOP", url)
        with pytest.raises(EncoderError) as error:
            build_encoder("inception_v3", "imagenet")
    message = str(error.value)
    assert message.startswith(
        f"cannot get the ImageNet weights for InceptionV3 (URL fetch failure on {url}"
    )
    assert "--weights FILE" in message and "--encoder efficientnet_lite0" in message
    assert "\n" not in message


def test_missing_weights_file():
    with pytest.raises(EncoderError, match="nowhere.h5: weights file not found"):
        build_encoder("vgg16", "nowhere.h5")


@pytest.mark.parametrize("name, side", [("efficientnet_lite0", 7), ("xception", 10)])
def test_a_grid_encoder_keeps_the_cells_that_pooling_averages(name, side):
    from captioner.features.encoders import grid_cells

    spec = get_encoder(name)
    pooled, grid = build_encoder(name, "none"), build_encoder(name, "none", grid=True)
    grid.set_weights(pooled.get_weights())  # the same network, only the pooling differs
    images = np.random.RandomState(0).randint(0, 256, (1, spec.input_size, spec.input_size, 3))
    cells = grid(images.astype(np.float32), training=False).numpy()
    assert cells.shape == (1, side, side, spec.feature_dim) and grid_cells(grid) == side * side
    average = pooled(images.astype(np.float32), training=False).numpy()
    np.testing.assert_allclose(cells.mean(axis=(1, 2)), average, rtol=1e-4, atol=1e-5)


def test_vgg16_has_no_grid_to_attend_over():
    with pytest.raises(EncoderError, match="fc2 layer, not a grid"):
        build_encoder("vgg16", "none", grid=True)
