"""training/metrics.py: each metric against an independent reference, plus the FID/KID plumbing.

The FID/KID plumbing test runs the real product path (weights file -> torch-fidelity's Inception-v3
-> features -> FID/KID -> cached real statistics) on a weights file of the same architecture with
RANDOM weights, built here: it checks the code path only. No figure from it is reported anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.linalg
import torch

from training import metrics
from training.metrics import MetricsError, compute_metrics, format_metric

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
    from training.synthetic import synthetic_faces

    return synthetic_faces(256, seed=7)


@pytest.fixture(scope="module")
def real_faces() -> np.ndarray:
    if not MINI_TAR.is_file():
        pytest.skip(f"needs the real faces at {MINI_TAR}")
    from training.dataset import load_images

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
    got = metrics.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
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
    value, spread = metrics.fid_from_features(fake, real, np.random.default_rng(0))
    assert value == pytest.approx(direct, rel=1e-6)
    assert value == pytest.approx(metrics.frechet_distance(fake.mean(0), s_fake, real.mean(0), s_real), rel=1e-6)
    assert 0 < spread < value


def test_fid_of_large_gaussian_samples_approaches_the_population_value():
    rng = np.random.default_rng(2)
    dim = 8
    fake = rng.standard_normal((20000, dim)) * 2.0 + 1.0  # N(1, 4 I)
    real = rng.standard_normal((20000, dim))  # N(0, I): FID = 8 * 1 + 8 * (2 - 1)^2 = 16
    value, spread = metrics.fid_from_features(fake, real, np.random.default_rng(0))
    assert value == pytest.approx(16.0, abs=4 * spread + 0.2)


def test_kid_is_zero_for_two_samples_of_one_set_and_positive_for_a_shift():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((400, 16)).astype(np.float32)
    same, same_std, size = metrics.kid_from_features(features[:200], features[200:], np.random.default_rng(0))
    assert size == 100 and same_std > 0  # subsets of half the set: they differ
    # Unbiased: the mean over subsets of one distribution is 0 up to noise (the full-set estimate's
    # std, about half a subset's std here); a biased estimate would sit well above 0.
    assert abs(same) < 2 * same_std
    moved, moved_std, _ = metrics.kid_from_features(features[:200] + 0.5, features[200:], np.random.default_rng(0))
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
    assert entry["real_rate"] > 0.9 and entry["fake_rate"] > 0.9  # README: ~98 % of real faces
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
    results = compute_metrics(faces[:16], faces[16:32], ["fid", "kid", "detector"])
    for name in ("fid", "kid"):
        assert results[name]["value"] is None and "--inception-weights" in results[name]["unavailable"]
    assert results["detector"]["value"] is None and "--detector" in results["detector"]["unavailable"]
    assert results["fid"]["n_fake"] == 16 and results["fid"]["n_real"] == 16
    line = format_metric("fid", results["fid"])
    assert line.startswith("fid") and "unavailable" in line and "\n" not in line


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
    with pytest.raises(MetricsError, match="truncated or not a PyTorch weights file"):
        compute_metrics(faces[:8], faces[8:16], ["fid"], inception_weights=truncated)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(MetricsError, match="not the FID Inception-v3 weights"):
        compute_metrics(faces[:8], faces[8:16], ["kid"], inception_weights=other)


def test_found_files_follow_path_then_environment(tmp_path, monkeypatch):
    chosen = tmp_path / "chosen.xml"
    chosen.write_text("x")
    monkeypatch.setenv("BAMSGAN_DETECTOR", str(chosen))
    assert metrics.find_detector() == chosen
    assert metrics.find_detector(chosen) == chosen
    monkeypatch.setenv("BAMSGAN_INCEPTION_WEIGHTS", str(chosen))
    assert metrics.find_inception_weights() == chosen


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
    from training.images import to_uint8_nhwc
    from training.latents import seeds_to_latents
    from training.networks import Generator

    torch.manual_seed(0)
    generator = Generator(channels=8).train()
    faces = metrics.faces_from_generator(generator, 10, batch_size=4)
    assert faces.shape == (10, 64, 64, 3) and faces.dtype == np.uint8
    assert generator.training  # mode restored
    with torch.no_grad():
        direct = to_uint8_nhwc(generator.eval()(torch.from_numpy(seeds_to_latents(np.arange(10), generator.z_dim)))).numpy()
    np.testing.assert_array_equal(faces, direct)


# ---------------------------------------------------------------------------------------------- FID/KID plumbing


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory) -> Path:
    """PLUMBING ONLY: an Inception-v3 weights file of the FID architecture with random weights.

    torch-fidelity's constructor always loads a state dict; a subclass that skips the load keeps
    PyTorch's random initialisation (re-drawn He-normal so the features are not vanishingly small)."""
    from training.inception import feature_extractor_class

    class Unloaded(feature_extractor_class()):
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None

    folder = tmp_path_factory.mktemp("random-inception")
    torch.save({}, folder / "empty.pt")
    torch.manual_seed(0)
    network = Unloaded("random", ["2048"], feature_extractor_weights_path=str(folder / "empty.pt"))
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = folder / "random-inception-PLUMBING-TEST-ONLY.pth"
    torch.save(network.state_dict(), path)
    return path


def test_fid_kid_plumbing_with_random_weights(faces, random_inception_weights, tmp_path):
    fakes, reals = blurred(faces[:4], 2.0), faces[4:8]
    results = compute_metrics(fakes, reals, ["fid", "kid"], inception_weights=random_inception_weights)
    for name in ("fid", "kid"):
        entry = results[name]
        assert entry["unavailable"] is None and math.isfinite(entry["value"]) and math.isfinite(entry["uncertainty"])
        assert (entry["n_fake"], entry["n_real"]) == (4, 4)
    assert results["fid"]["value"] > 0
    cached = list((tmp_path / "cache").glob("metrics-inception-*.pt"))
    assert len(cached) == 1  # the real features, keyed by content and weights
    same = compute_metrics(reals, reals, ["fid"], inception_weights=random_inception_weights)  # reals from the cache
    assert abs(same["fid"]["value"]) < 1e-6 * results["fid"]["value"] + 1e-9


# ---------------------------------------------------------------------------------------------- make data: the detector


def test_download_fetches_the_detector_and_keeps_an_existing_one(tmp_path, capsys):
    from training import download

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
