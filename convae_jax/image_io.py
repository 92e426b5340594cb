"""Images in and out for using a trained model: PNG/JPEG files or folders, any size or mode.

`iter_images` (or `load_images`) reads files and folders (their .png/.jpg/.jpeg files,
recursively if asked) into 8-bit arrays with the model's number of channels. Conversions, each
said once per kind with a count (not once per file):
  grayscale (L, 1-bit)      -> RGB by repeating the channel;
  transparency (RGBA, LA, palette or colour-key transparency) -> composited on white;
  16-bit (I;16 grayscale, 16-bit RGB PNG) -> 8 bits (v / 257, rounded; Pillow itself keeps
                               the high byte of 16-bit RGB);
  palette, CMYK, YCbCr, ... -> RGB;  an EXIF orientation -> applied (the image as shown).
A file that cannot be read (empty, truncated, not an image) is named in one line and skipped;
the others go on. A named file or folder that does not exist, or inputs that hold no readable
image at all, are refused (ImageInputError, before anything is read): the CLI and Python
alike, so that a mistyped name is never a silent empty result.
"""
import dataclasses
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from convae_jax import errors, paths


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'RGBa', 'La')

# Conversion kinds, in the order they are reported, and how each is said.
CONVERSIONS = {
    'sixteen_bit': 'reduced from 16 to 8 bits per channel',
    'grayscale': 'grayscale, repeated to RGB',
    'to_grayscale': 'colour, converted to grayscale (the model takes one channel)',
    'alpha': 'with transparency, composited on white',
    'palette': 'palette images, expanded to RGB',
    'other_mode': 'in another colour mode (CMYK, YCbCr, ...), converted to RGB',
    'exif': 'rotated or flipped as their EXIF orientation says',
}


@dataclasses.dataclass(frozen=True)
class LoadedImage:
  """One readable input: a unique `name` (the file's stem) and uint8 `pixels` [H, W, C]."""
  name: str
  path: str
  pixels: np.ndarray


class UnreadableImageError(Exception):
  """A file that is not a readable image; the message says why."""


class ImageInputError(errors.UserError, ValueError):
  """Inputs that give nothing to work on: a name that does not exist, or no readable image."""


def check_inputs(inputs: Sequence[str]) -> None:
  """Refuses (ImageInputError) inputs naming a file or folder that does not exist."""
  if isinstance(inputs, (str, os.PathLike)):
    raise ImageInputError(f'inputs={inputs!r}: pass a list of files and folders, e.g. '
                          f'[{inputs!r}]')
  missing = [str(entry) for entry in inputs if not os.path.exists(entry)]
  if missing:
    raise ImageInputError(f'{", ".join(missing)}: no such file or folder; pass PNG or JPEG '
                          'files or folders holding them')
  if not inputs:
    raise ImageInputError('no images given; pass PNG or JPEG files or folders holding them')


def find_image_files(inputs: Sequence[str], recursive: bool = False,
                     say: Callable[[str], None] = logging.warning) -> list[str]:
  """Files named in `inputs` (as given) and the PNG/JPEG files of folders in it, sorted.

  Raises ImageInputError if an input does not exist.
  """
  check_inputs(inputs)
  files = []
  for entry in inputs:
    if os.path.isdir(entry):
      found = []
      for root, dirs, names in os.walk(entry):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if recursive else []
        found += [os.path.join(root, n) for n in names
                  if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith('.')]
      if not found:
        say(f'skipped {entry}: no PNG or JPEG files in it'
            + ('' if recursive else ' (add --recursive to look in its subfolders)'))
      files += sorted(found)
    else:
      files.append(entry)
  return files


def read_image(path: str, channels: int = 3) -> tuple[np.ndarray, list[str]]:
  """uint8 pixels [H, W, channels] of one file, and the conversion kinds it needed.

  Raises UnreadableImageError (saying why) for an empty, truncated or non-image file.
  """
  if channels not in (1, 3):
    raise ValueError(f'channels={channels}: images can be read as 1 or 3 channels')
  if os.path.getsize(path) == 0:
    raise UnreadableImageError('empty file')
  kinds = []
  try:
    with Image.open(path) as image:
      # 16-bit RGB PNGs become 8-bit 'RGB' in Pillow: only the raw mode of the tile tells.
      if image.mode in _SIXTEEN_BIT_MODES or any(';16' in str(t.args) for t in image.tile):
        kinds.append('sixteen_bit')
      image.load()
      if image.getexif().get(0x0112, 1) not in (1, None):
        kinds.append('exif')
        image = ImageOps.exif_transpose(image)
      pixels = _to_8bit(image, kinds)
  except UnreadableImageError:
    raise
  except Image.UnidentifiedImageError:
    raise UnreadableImageError('not an image Pillow can read') from None
  except Exception as e:  # pylint: disable=broad-except  # Truncated, corrupt, too large, ...
    raise UnreadableImageError(f'cannot be read ({type(e).__name__}: '
                               f'{(str(e).splitlines() or [""])[0][:200]})') from None
  if pixels.shape[0] == 0 or pixels.shape[1] == 0:
    raise UnreadableImageError('has no pixels')
  if channels == 3 and pixels.shape[-1] == 1:
    pixels = np.repeat(pixels, 3, axis=-1)
  elif channels == 1 and pixels.shape[-1] == 3:
    kinds.append('to_grayscale')
    luma = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    pixels = np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
  return pixels, kinds


def _to_8bit(image: Image.Image, kinds: list[str]) -> np.ndarray:
  """uint8 [H, W, 1] (grayscale) or [H, W, 3] pixels of a loaded Pillow image."""
  mode = image.mode
  if mode in _SIXTEEN_BIT_MODES:
    kinds.append('grayscale')
    values = np.asarray(image).astype(np.float64)
    return np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)[..., None]
  if mode == 'F':
    kinds.append('grayscale')
    return np.clip(np.round(np.asarray(image, np.float64)), 0, 255).astype(np.uint8)[..., None]
  if mode == 'P':
    kinds.append('palette')
  has_alpha = mode in _ALPHA_MODES or 'transparency' in image.info
  gray = mode in ('L', '1', 'LA', 'La') or (mode == 'P' and _gray_palette(image))
  if has_alpha:
    kinds.append('alpha')
    rgba = np.asarray(image.convert('RGBA'), np.float64)
    alpha = rgba[..., 3:] / 255.0
    rgb = np.clip(np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255)
    pixels = rgb.astype(np.uint8)
    if gray:
      kinds.append('grayscale')
      return pixels[..., :1]
    return pixels
  if gray:
    kinds.append('grayscale')
    return np.asarray(image.convert('L'), np.uint8)[..., None]
  if mode not in ('RGB', 'P'):
    kinds.append('other_mode')
  return np.asarray(image.convert('RGB'), np.uint8)


def _gray_palette(image: Image.Image) -> bool:
  palette = np.asarray(image.convert('RGB'))
  return bool(np.all(palette[..., 0] == palette[..., 1]) and
              np.all(palette[..., 1] == palette[..., 2]))


def iter_images(inputs: Sequence[str], *, channels: int = 3, recursive: bool = False,
                say: Callable[[str], None] = logging.warning) -> Iterator[LoadedImage]:
  """Every readable image of `inputs` (files and folders), one at a time, with unique names
  (file stems; a repeated stem gets -2, -3, ...).

  Each unreadable file is named through `say` and skipped; once all are read, each kind of
  conversion is said once, with how many images needed it. Raises ImageInputError, naming
  the inputs, for an input that does not exist (before reading any) or when none is readable.
  """
  used, converted = set(), {kind: [] for kind in CONVERSIONS}
  skipped = []
  for path in find_image_files(inputs, recursive, say):
    try:
      pixels, kinds = read_image(path, channels)
    except UnreadableImageError as e:
      say(f'skipped {path}: {e}')
      skipped.append(f'{path}: {e}')
      continue
    for kind in kinds:
      converted[kind].append(os.path.basename(path))
    yield LoadedImage(_unique_name(path, used), path, pixels)
  if not used:
    why = f' ({"; ".join(skipped[:3])}{"; ..." if len(skipped) > 3 else ""})' if skipped else ''
    raise ImageInputError(f'no readable image in {" ".join(map(str, inputs))}{why}; pass PNG '
                          'or JPEG files or folders holding them')
  for kind, names in converted.items():
    if names:
      shown = ', '.join(names[:3]) + (f', ... ({len(names) - 3} more)' if len(names) > 3 else '')
      say(f'{len(names)} image{"s" if len(names) > 1 else ""} {CONVERSIONS[kind]}: {shown}')


def load_images(inputs: Sequence[str], *, channels: int = 3, recursive: bool = False,
                say: Callable[[str], None] = logging.warning) -> list[LoadedImage]:
  """`iter_images` as a list."""
  return list(iter_images(inputs, channels=channels, recursive=recursive, say=say))


def _unique_name(path: str, used: set[str]) -> str:
  stem = os.path.splitext(os.path.basename(path))[0] or 'image'
  name, i = stem, 2
  while name in used:
    name, i = f'{stem}-{i}', i + 1
  used.add(name)
  return name


def check_output_dir(output_dir: str, inputs: Iterable[str]) -> None:
  """Refuses (errors.UserError) an output folder that cannot be made, that holds an input
  file, or that is (or lies inside) an input folder: the outputs never mix with, or
  overwrite, the inputs."""
  paths.check_dir(output_dir, '--output')
  out = os.path.realpath(output_dir)
  for entry in inputs:
    if os.path.isdir(entry):
      folder = os.path.realpath(entry)
      inside = out.startswith(folder + os.sep)
    elif os.path.exists(entry):
      folder, inside = os.path.realpath(os.path.dirname(entry) or '.'), False
    else:
      continue
    if out == folder or inside:
      raise errors.UserError(
          f'--output {output_dir} is {"" if out == folder else "inside "}the folder of input '
          f'{entry}; choose a folder apart from the inputs so that none is ever overwritten')


def pairs_grid(pairs: Sequence[tuple[np.ndarray, np.ndarray]], cell: int = 256,
               columns: int = 4, border: int = 4) -> np.ndarray:
  """uint8 grid of (original, reconstruction) uint8 pairs of any sizes, side by side.

  Each image is shown at full resolution so the loss of detail is visible (`full_view`:
  small ones enlarged by whole factors, large ones a centre crop of `cell` x `cell`).
  """
  channels = pairs[0][0].shape[-1]
  columns = min(columns, len(pairs))
  rows = -(-len(pairs) // columns)
  pair_width = 2 * cell + border
  grid = np.full((rows * (cell + border) + border, columns * (pair_width + border) + border,
                  channels), 255, np.uint8)
  for i, pair in enumerate(pairs):
    row, col = divmod(i, columns)
    top, left = border + row * (cell + border), border + col * (pair_width + border)
    for j, pixels in enumerate(pair):
      view = full_view(pixels, cell)
      x = left + j * (cell + border)
      grid[top:top + view.shape[0], x:x + view.shape[1]] = view
  return grid


def full_view(pixels: np.ndarray, cell: int = 256) -> np.ndarray:
  """uint8 pixels in a `cell` x `cell` box with no resampling blur: a side longer than
  `cell` is centre-cropped; a small image is enlarged by a whole factor (nearest)."""
  h, w = pixels.shape[:2]
  top, left = max(0, (h - cell) // 2), max(0, (w - cell) // 2)
  pixels = pixels[top:top + cell, left:left + cell]
  factor = max(1, cell // max(pixels.shape[:2]))
  return pixels.repeat(factor, axis=0).repeat(factor, axis=1)
