import numpy as np
import torch
from PIL import Image

from training.data.images import from_uint8_nchw, image_grid, save_png, to_uint8_nhwc


def test_uint8_round_trip_is_exact():
    pixels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(1, 3, 16, 16)
    back = to_uint8_nhwc(from_uint8_nchw(pixels))
    assert back.dtype == torch.uint8 and back.shape == (1, 16, 16, 3)
    assert torch.equal(back.permute(0, 3, 1, 2), pixels)


def test_range_ends_and_clamping():
    images = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8_nhwc(images)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_grid_and_png(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    grid = image_grid(images, columns=3, padding=1)
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 3)
    assert np.array_equal(grid[1:9, 10:18], images[1])
    path = save_png(tmp_path / "sub" / "grid.png", grid)
    assert np.array_equal(np.asarray(Image.open(path)), grid)
    assert not list(tmp_path.glob("sub/.*partial"))
