"""The Inception-v3 feature network for FID and KID: torch-fidelity's, with a weights file given by path.

FID and KID are only comparable across papers when computed with one network: the TensorFlow
Inception-v3 of 2015-12-05 (the `pool_3` 2048 features), as converted to PyTorch by pytorch-fid
(`pt_inception-2015-12-05-6726825d.pth`) and torch-fidelity (`weights-inception-2015-12-05-6726825d.pth`,
the same tensors). torch-fidelity's `FeatureExtractorInceptionV3` reproduces that graph, including
TF1's bilinear resize to 299 px, and takes uint8 images; we use it as is.

Why the package is imported without its `__init__`: `torch_fidelity/__init__.py` imports its CLIP and
VGG extractors and `torch_fidelity.utils`, which import torchvision, and the PyPI torchvision wheel
cannot load beside the CPU torch used here ("operator torchvision::nms does not exist"). The
Inception module itself needs only torch (it imports torch_fidelity.helpers, .defaults,
.deprecations, .feature_extractor_base and .interpolate_compat_tensorflow). So, unless
torch_fidelity is already imported in full, we register the package object without running its
`__init__` and import that one module. Its FID/KID helpers (metric_fid, metric_kid) import
torch_fidelity.utils -> torchvision and cannot be used here; training/metrics.py restates their
formulas (cited there) with the same defaults.

No weights file, no FID: this machine has no network, and features from other weights are not FID.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

FEATURES = "2048"  # pool_3: the layer FID and KID are defined on
FEATURE_DIM = 2048
WEIGHTS_NAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"


class InceptionError(ValueError):
    """A weights file that cannot be used, with the reason in one line."""


def feature_extractor_class():
    """torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3, importable without torchvision."""
    if "torch_fidelity" not in sys.modules:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None:
            raise InceptionError("torch-fidelity is not installed (make setup installs it: pip install --no-deps torch-fidelity==0.4.0)")
        # The package object without executing its __init__ (which needs torchvision; see the module docstring).
        sys.modules["torch_fidelity"] = importlib.util.module_from_spec(spec)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


def load_feature_network(weights: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The Inception-v3 feature network with the weights at `weights`; InceptionError in one line if unusable."""
    path = Path(weights)
    if not path.is_file():
        raise InceptionError(f"no Inception weights file at {path} (expected {WEIGHTS_NAMES[0]}, from {WEIGHTS_URL})")
    # torch-fidelity loads with weights_only=False (arbitrary pickles); check the file is plain tensors first.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as error:
        raise InceptionError(f"{path} is truncated or not a PyTorch weights file: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state or "fc.weight" not in state:
        raise InceptionError(f"{path} is not the FID Inception-v3 weights file (expected {WEIGHTS_NAMES[0]}, from {WEIGHTS_URL})")
    network_class = feature_extractor_class()
    try:
        network = network_class("inception-v3-compat", [FEATURES], feature_extractor_weights_path=str(path))
    except RuntimeError as error:  # load_state_dict: missing/unexpected keys, wrong shapes
        raise InceptionError(f"{path} does not fit the FID Inception-v3 architecture: {str(error).splitlines()[0]}") from None
    # channels_last: oneDNN's faster convolution layout on CPU (~1.5x here), same features to float rounding.
    return network.to(device, memory_format=torch.channels_last).eval()


@torch.inference_mode()
def inception_features(
    network: torch.nn.Module, images: np.ndarray, batch_size: int = 64, device="cpu", progress: bool = False, desc: str = "inception"
) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB -> float32 [N, 2048] pool_3 features."""
    features = np.empty((len(images), FEATURE_DIM), np.float32)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2).to(device)
        (output,) = network(batch)
        features[start : start + len(batch)] = output.float().cpu().numpy()
    return features
