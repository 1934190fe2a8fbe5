"""Image conversion: the one definition of how pixels map to the model's value range and back.

The model works in float [-1, 1], NCHW. Stored and served images are uint8. The exported
ONNX graph ends with `to_uint8_nhwc`, so the trainer's PNGs, the exported model and the
served images all round the same way (round-half-to-even, as torch.round and ONNX Round do).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: clients that only tile and save PNGs start fast
    import torch


def to_uint8_nhwc(images: torch.Tensor) -> torch.Tensor:
    """Model output, float [-1, 1] [B, C, H, W] -> uint8 [B, H, W, C]."""
    import torch

    pixels = (images.float() * 127.5 + 127.5).clamp(0.0, 255.0).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1)


def from_uint8_nchw(pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 [B, C, H, W] -> model range float [-1, 1] (float32 by default); exact inverse of to_uint8_nhwc."""
    return pixels.float() / 127.5 - 1.0 if dtype is None else pixels.to(dtype) / 127.5 - 1.0


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 [N, H, W, 3] images into one uint8 [rows*H', columns*W', 3] picture."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"image_grid needs uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    count, height, width, channels = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    grid = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), 255, np.uint8)
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an RGB uint8 [H, W, 3] array as PNG atomically (a reader never sees half a file)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(np.ascontiguousarray(image)).save(partial, format="PNG")
    os.replace(partial, path)
    return path


def side_by_side(panels: list[tuple[np.ndarray, str]], path: str | os.PathLike) -> Path:
    """Face grids in a row, each under its label, at 2 screen pixels per image pixel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(grid.shape[0] for grid, _ in panels)
    width = sum(grid.shape[1] for grid, _ in panels)
    figure, axes = plt.subplots(1, len(panels), figsize=(2 * width / 100 + 0.4, 2 * height / 100 + 0.5), dpi=100,
                                gridspec_kw={"width_ratios": [grid.shape[1] for grid, _ in panels]}, squeeze=False)
    for axis, (grid, label) in zip(axes[0], panels):
        axis.imshow(grid, interpolation="nearest")
        axis.set_title(label, fontsize=11)
        axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
