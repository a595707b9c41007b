"""Sample grids as PNG: a batch of images in [-1, 1] tiled into one picture."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lmforge.io import atomic_write_bytes

__all__ = ["image_grid", "save_grid"]


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] → uint8 [rows·(H+pad)+pad, cols·(W+pad)+pad, C] (C = 1 or 3),
    ``nrow`` images per row (default ⌈√N⌉), grey padding between tiles."""
    x = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, np.uint8)
    pix = np.round((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).astype(np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = pix[i]
    return grid


def save_grid(
    images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 4
) -> Path:
    """Write `image_grid` as a PNG (each pixel ``scale``×``scale``, nearest), atomically."""
    grid = image_grid(images, nrow)
    mode = "L" if grid.shape[2] == 1 else "RGB"
    im = Image.fromarray(grid[..., 0] if mode == "L" else grid, mode)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path
