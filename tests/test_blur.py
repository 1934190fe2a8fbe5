"""Edge blur (Algorithm 1) on anime faces, and the seeded, cached blurred subset.

On the shared real faces when present, else on 512 synthetic faces (a fresh clone without the data)."""

import cv2
import numpy as np
import pytest
import torch

from tests.paths import MINI_TAR
from training.blur import blur_subset, edge_blur
from training.data.dataset import load_images



@pytest.fixture(scope="module")
def real(tmp_path_factory):
    source = str(MINI_TAR) if MINI_TAR.is_file() else "synthetic"
    return load_images(source, cache_dir=tmp_path_factory.mktemp("cache"), synthetic_size=512, progress=False)


def test_edge_blur_changes_only_edges(real):
    changed = edges_total = 0
    for pixels in real.pixels[:32]:
        image = np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())
        before = image.copy()
        out = edge_blur(image)
        assert np.array_equal(image, before)  # input untouched
        assert out.dtype == np.uint8 and out.shape == image.shape
        edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 100, 200) != 0
        assert edges.any() and not np.array_equal(out, image)
        assert np.array_equal(out[~edges], image[~edges])  # every non-edge pixel identical
        blurred = cv2.GaussianBlur(image, (5, 5), 0)
        assert np.array_equal(out[edges], blurred[edges])  # edge pixels take the blurred image's values
        changed += int((out[edges] != image[edges]).any(axis=1).sum())
        edges_total += int(edges.sum())
    assert changed > 0.8 * edges_total  # most edge pixels really change


def test_edge_blur_parameters_matter(real):
    image = np.ascontiguousarray(real.pixels[0].permute(1, 2, 0).numpy())
    assert not np.array_equal(edge_blur(image, kernel=3), edge_blur(image, kernel=9))
    assert np.array_equal(edge_blur(image, kernel=1), image)  # a 1x1 Gaussian is the identity
    assert (edge_blur(image, 250, 255) != image).any(axis=2).sum() < (edge_blur(image, 20, 40) != image).any(axis=2).sum()


def test_blur_subset_fraction_seed_and_cache(real, tmp_path):
    pixels = real.pixels
    indices, blurred = blur_subset(pixels, 0.1, seed=0, progress=False)
    assert indices.dtype == torch.int64 and indices.shape == (round(0.1 * 512),)
    assert blurred.dtype == torch.uint8 and blurred.shape == (len(indices), 3, 64, 64)
    assert len(set(indices.tolist())) == len(indices) and 0 <= indices.min() and indices.max() < 512
    for row in (0, len(indices) - 1):
        expected = edge_blur(np.ascontiguousarray(pixels[indices[row]].permute(1, 2, 0).numpy()))
        assert np.array_equal(blurred[row].permute(1, 2, 0).numpy(), expected)

    same, _ = blur_subset(pixels, 0.1, seed=0, progress=False)
    other, _ = blur_subset(pixels, 0.1, seed=1, progress=False)
    assert torch.equal(same, indices) and not torch.equal(other, indices)
    assert len(blur_subset(pixels, 0.0, progress=False)[0]) == 0
    assert len(blur_subset(pixels, 1e-6, progress=False)[0]) == 1  # at least one when fraction > 0
    assert len(blur_subset(pixels, 1.0, progress=False)[0]) == 512

    first = blur_subset(pixels, 0.1, seed=0, cache_dir=tmp_path, cache_key=real.cache_key, progress=False)
    files = list(tmp_path.glob("blur-*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob(".*partial"))
    second = blur_subset(pixels, 0.1, seed=0, cache_dir=tmp_path, cache_key=real.cache_key, progress=False)
    assert list(tmp_path.glob("blur-*.pt")) == files  # served from the file, nothing new written
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and torch.equal(first[0], indices)
    blur_subset(pixels, 0.1, seed=0, kernel=7, cache_dir=tmp_path, cache_key=real.cache_key, progress=False)
    assert len(list(tmp_path.glob("blur-*.pt"))) == 2  # other parameters, other cache entry


def test_argument_validation(real):
    image = np.zeros((64, 64, 3), np.uint8)
    for kernel in (4, 0, -3, 2.5):
        with pytest.raises(ValueError, match="positive odd"):
            edge_blur(image, kernel=kernel)
    with pytest.raises(ValueError, match="t1 <= t2"):
        edge_blur(image, 200, 100)
    with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\]"):
        edge_blur(image.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\]"):
        edge_blur(image[:, :, 0])
    for fraction in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fraction must be in \\[0, 1\\]"):
            blur_subset(real.pixels, fraction)
    with pytest.raises(ValueError, match="uint8 \\[N, 3, H, W\\]"):
        blur_subset(real.pixels.float())
