"""Pictures of what a model does: originals beside their reconstructions, code usage."""
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Floats in [0, 1] -> uint8 pixels, rounded to nearest."""
  return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def tile(images: np.ndarray, columns: int = 8, border: int = 2) -> np.ndarray:
  """uint8 [rows*(H+b)+b, columns*(W+b)+b, C] grid of [N, H, W, C] floats in [0, 1]."""
  n, h, w, c = images.shape
  columns = min(columns, n)
  rows = -(-n // columns)
  grid = np.ones((rows * (h + border) + border, columns * (w + border) + border, c), np.float32)
  for i in range(n):
    r, col = divmod(i, columns)
    top, left = r * (h + border) + border, col * (w + border) + border
    grid[top:top + h, left:left + w] = images[i]
  return to_uint8(grid)


def side_by_side_grid(originals: np.ndarray, reconstructions: np.ndarray,
                      columns: int = 8, gap: int = 1) -> np.ndarray:
  """A grid whose cells hold an original above its reconstruction ([N, H, W, C] in [0, 1]),
  `gap` white rows apart so that neither image's edge runs into the other."""
  spacer = np.ones(originals.shape[:1] + (gap,) + originals.shape[2:], np.float32)
  return tile(np.concatenate([originals, spacer, reconstructions], axis=1), columns)


def save_png(image: np.ndarray, path: str) -> None:
  """Writes uint8 [H, W, C] pixels (floats in [0, 1] are converted) as a PNG."""
  if image.dtype != np.uint8:
    image = to_uint8(image)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path)


def bar_chart(counts: np.ndarray, height: int = 96) -> np.ndarray:
  """uint8 [height, len(counts), 3]: one bar per code, as tall as its count (the largest fills
  the height), blue on white; a code never used is a white column."""
  counts = np.asarray(counts, np.float32)
  bar_heights = counts / max(float(counts.max()), 1.0) * height
  rows = np.arange(height, 0, -1, dtype=np.float32)[:, None]  # Top row first.
  filled = (rows <= bar_heights[None, :])[..., None]
  bar, white = np.array([0.12, 0.35, 0.75], np.float32), np.ones(3, np.float32)
  return to_uint8(np.where(filled, bar, white))
