"""Edge blur (the BaMSGAN paper's Algorithm 1): real images with blurred edges, used as extra fakes.

Showing D real faces whose outlines are blurred, labelled fake, teaches it that soft edges are a
sign of a generated image, so G is pushed towards crisp line art.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from tqdm import tqdm

from training.data.dataset import cache_digest, cache_load, cache_root, cache_save

CACHE_FORMAT = 1


def validate_blur_args(t1: int, t2: int, kernel: int, fraction: float = 0.0) -> None:
    if not (isinstance(kernel, (int, np.integer)) and kernel > 0 and kernel % 2 == 1):
        raise ValueError(f"blur kernel size must be a positive odd integer, got {kernel!r}")
    if not (0 <= t1 <= t2):
        raise ValueError(f"Canny thresholds need 0 <= t1 <= t2, got t1={t1}, t2={t2}")
    if not (0.0 <= fraction <= 1.0):
        raise ValueError(f"blur fraction must be in [0, 1], got {fraction}")


def edge_blur(image_rgb: np.ndarray, t1: int = 100, t2: int = 200, kernel: int = 5) -> np.ndarray:
    """Blur only the edges of a uint8 [H, W, 3] RGB image (Algorithm 1).

    Edges are Canny(t1, t2) of the grayscale image; edge pixels take the value of the whole image
    Gaussian-blurred with a k x k kernel; every other pixel is returned unchanged.

    The paper's pseudo-code first sets non-edge pixels to black and then blurs that image, which
    mixes black into the edges (darkening them) rather than blurring them. We implement the stated
    intent, "replace the original edge with the GaussianBlur version", by blurring the intact image.
    """
    validate_blur_args(t1, t2, kernel)
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"edge_blur needs a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    image = np.ascontiguousarray(image)
    edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), t1, t2) != 0
    blurred = cv2.GaussianBlur(image, (kernel, kernel), 0)
    result = image.copy()
    result[edges] = blurred[edges]
    return result


def blur_subset(
    pixels: torch.Tensor,
    fraction: float = 0.1,
    seed: int = 0,
    t1: int = 100,
    t2: int = 200,
    kernel: int = 5,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge-blur a seeded random `fraction` of uint8 [N, 3, H, W] images (the paper's S_blur).

    Returns (indices int64 [M] sorted, blurred uint8 [M, 3, H, W]) with M = round(fraction * N)
    (at least 1 when fraction > 0). With `cache_key` (e.g. ImageSet.cache_key) the result is
    computed once and cached on disk next to the decoded dataset.
    """
    validate_blur_args(t1, t2, kernel, fraction)
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"blur_subset needs uint8 [N, 3, H, W] pixels, got {pixels.dtype} {tuple(pixels.shape)}")
    count = pixels.shape[0]
    chosen = 0 if fraction == 0 or count == 0 else max(1, round(fraction * count))

    path = None
    if cache_key is not None:
        description = {"format": CACHE_FORMAT, "images": cache_key, "n": count, "fraction": fraction, "seed": seed,
                       "t1": t1, "t2": t2, "kernel": kernel}
        path = cache_root(cache_dir) / f"blur-{cache_digest(description)}.pt"
        cached = cache_load(path)
        if cached is not None:
            return cached["indices"], cached["blurred"]

    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(count, generator=generator)[:chosen].sort().values
    blurred = torch.empty((chosen, *pixels.shape[1:]), dtype=torch.uint8)
    for row, index in enumerate(tqdm(indices.tolist(), desc="edge blur", unit="img", disable=not progress, leave=False)):
        image = pixels[index].permute(1, 2, 0).numpy()
        blurred[row] = torch.from_numpy(edge_blur(image, t1, t2, kernel)).permute(2, 0, 1)
    if path is not None:
        cache_save(path, {"indices": indices, "blurred": blurred})
    return indices, blurred
