"""Pixel values between their three homes: uint8 [0, 255], [0, 1] for metrics and pictures,
and the config's `input_range` for the model. Works on numpy and jax arrays alike."""
import numpy as np


def to_model_range(pixels, input_range: tuple[float, float]):
  """Float pixel values in [0, 255] -> `input_range`."""
  low, high = input_range
  return pixels * ((high - low) / 255.0) + low


def to_unit_range(x, value_range: tuple[float, float]):
  """Values in `value_range` -> [0, 1]."""
  low, high = value_range
  return (x - low) / (high - low)


def from_unit_range(x, value_range: tuple[float, float]):
  """[0, 1] -> `value_range`."""
  low, high = value_range
  return x * (high - low) + low


def model_input(images, input_range: tuple[float, float]):
  """uint8 pixels as float32 in `input_range` (fused into the first layer on a device);
  float images are taken to be in `input_range` already."""
  if images.dtype != np.uint8:
    return images
  return to_model_range(images.astype(np.float32), input_range)
