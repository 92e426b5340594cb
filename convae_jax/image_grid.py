"""Pictures of what a model does: originals beside their reconstructions."""
import os

import numpy as np
from PIL import Image


def side_by_side_grid(originals: np.ndarray, reconstructions: np.ndarray, columns: int = 8,
                      border: int = 2) -> np.ndarray:
  """uint8 [rows*(2H+b), columns*(W+b), C]: each cell an original above its reconstruction.

  Inputs are [N, H, W, C] floats in [0, 1].
  """
  n, h, w, c = originals.shape
  rows = -(-n // columns)
  cell_h, cell_w = 2 * h + border, w + border
  grid = np.ones((rows * cell_h + border, columns * cell_w + border, c), np.float32)
  for i in range(n):
    r, col = divmod(i, columns)
    top, left = r * cell_h + border, col * cell_w + border
    grid[top:top + h, left:left + w] = originals[i]
    grid[top + h:top + 2 * h, left:left + w] = reconstructions[i]
  return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(image: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path)
