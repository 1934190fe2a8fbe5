"""Synthetic anime faces: deterministic per (seed, index), varied, and loadable as a dataset."""

import numpy as np
import pytest
import torch

from training.data.dataset import load_images
from training.data.synthetic import synthetic_faces


def test_deterministic_and_independent_of_count():
    faces = synthetic_faces(6, seed=3)
    assert faces.dtype == np.uint8 and faces.shape == (6, 64, 64, 3)
    assert np.array_equal(faces, synthetic_faces(6, seed=3))
    assert np.array_equal(faces[:2], synthetic_faces(2, seed=3))  # image i depends only on (seed, i)
    assert not np.array_equal(faces, synthetic_faces(6, seed=4))


def test_faces_are_varied_and_not_blank():
    faces = synthetic_faces(24, seed=0).astype(np.int16)
    assert all(face.std() > 20 for face in faces)  # drawn content, not a flat colour
    differences = [np.abs(faces[i] - faces[j]).mean() for i in range(len(faces)) for j in range(i)]
    assert min(differences) > 5  # no two alike
    hues = {tuple(face[8:24, 24:40].reshape(-1, 3).mean(0).round(-1)) for face in faces}  # hair region
    assert len(hues) > 12


def test_as_a_cached_dataset(tmp_path):
    first = load_images("synthetic", synthetic_size=16, seed=1, cache_dir=tmp_path, progress=False)
    assert first.pixels.shape == (16, 3, 64, 64) and first.pixels.dtype == torch.uint8 and not first.from_cache
    assert np.array_equal(first.pixels.permute(0, 2, 3, 1).numpy(), synthetic_faces(16, seed=1))
    second = load_images("synthetic", synthetic_size=16, seed=1, cache_dir=tmp_path, progress=False)
    assert second.from_cache and torch.equal(second.pixels, first.pixels)
    assert load_images("synthetic", synthetic_size=16, seed=2, cache_dir=tmp_path, progress=False).cache_key != first.cache_key
    assert len(load_images("synthetic", synthetic_size=16, max_images=5, cache_dir=tmp_path, progress=False)) == 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="count >= 0"):
        synthetic_faces(-1)
    with pytest.raises(ValueError, match="synthetic_size >= 1"):
        load_images("synthetic", synthetic_size=0)
