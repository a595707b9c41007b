import numpy as np
import torch
from PIL import Image

from lmforge.vision.grid import image_grid, save_grid


def test_grid_layout_and_png(tmp_path):
    x = torch.full((5, 1, 4, 4), -1.0)
    x[2] = 1.0
    grid = image_grid(x, nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 11, 0] == 255 and grid[0, 0, 0] == 128
    path = save_grid(torch.rand(4, 3, 4, 4) * 2 - 1, tmp_path / "g.png", scale=2)
    im = Image.open(path)
    assert im.mode == "RGB" and im.size == (2 * 11, 2 * 11)
    assert np.asarray(im).shape == (22, 22, 3)
