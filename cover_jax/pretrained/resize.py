"""Resizing position and time embeddings when a checkpoint's grid or frame count differs.

Position embedding (1 + N, D), slot 0 the cls token's (never resized), the
rest a square grid in row-major order:

- ``nearest`` (TimeSformer checkpoints, official / HuggingFace / ours): the
  grid is resized with PyTorch's legacy nearest rule (source index
  floor(i * old / new)), the same rule the official model applies at run time
  when an input's grid differs. So a checkpoint converted to a new image size
  computes exactly what the original model computes on inputs of that size.
  (The official ``load_pretrained`` instead interpolates the *flattened*
  token sequence in 1-D, which mixes rows; we do not copy that.)
- ``bilinear`` (ViT image checkpoints): ``scipy.ndimage.zoom(order=1)`` over
  the grid, exactly big_vision's and vision_transformer's ``resample_posemb``.

Time embedding (T, D): nearest, as the official code (``F.interpolate`` with
mode 'nearest'), both when loading and at run time.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from cover_jax.config import allowed
from cover_jax.models.timesformer import nearest_indices

RESIZE_METHODS = allowed.POSEMB_RESIZE


def grid_size(num_patches: int) -> int:
  side = int(round(num_patches ** 0.5))
  if side * side != num_patches:
    raise ValueError(f"{num_patches} position embeddings do not form a square grid")
  return side


def resize_pos_embed(pos_ld: np.ndarray, length: int, method: str) -> np.ndarray:
  """(1 + N, D) -> (length, D): the cls slot kept, the patch grid resized."""
  if method not in RESIZE_METHODS:
    raise ValueError(f"unknown resize method {method!r}; use one of {RESIZE_METHODS}")
  if pos_ld.shape[0] == length:
    return pos_ld
  old, new = grid_size(pos_ld.shape[0] - 1), grid_size(length - 1)
  grid_hwd = pos_ld[1:].reshape(old, old, -1)
  if method == "nearest":
    index = nearest_indices(old, new)
    grid_hwd = grid_hwd[index][:, index]
  else:
    grid_hwd = scipy.ndimage.zoom(grid_hwd, (new / old, new / old, 1), order=1)
  return np.concatenate([pos_ld[:1], grid_hwd.reshape(new * new, -1)]).astype(pos_ld.dtype)


def resize_time_embed(time_td: np.ndarray, num_frames: int) -> np.ndarray:
  """(T, D) -> (num_frames, D) by nearest (official TimeSformer)."""
  return time_td[nearest_indices(time_td.shape[0], num_frames)]
