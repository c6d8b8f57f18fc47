"""Reading checkpoint files without executing code from them, and telling formats apart.

A checkpoint downloaded from the internet is untrusted input. Nothing here
unpickles it:

- ``.npz``: ``np.load(allow_pickle=False)``; an object array (which needs
  pickle) is refused with an explanation.
- ``.pyth`` / ``.pth`` / ``.pt`` / ``pytorch_model.bin``: these *are* pickles.
  They are read only through ``torch.load(weights_only=True)``, PyTorch's
  restricted unpickler that builds tensors and plain containers and refuses
  everything else. Without torch installed (it is an optional extra) the
  reader stops with a message saying how to get it; it never falls back to
  ``pickle``.
- ``.safetensors``: the ``safetensors`` package (a JSON header + raw buffers).

Remote paths (``gs://...`` and whatever else TensorFlow's file systems read)
go through ``tf.io.gfile``; local ones through the OS. This module needs
only NumPy (torch, safetensors and TensorFlow are imported on use), so it
can be used where JAX is not installed.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from cover_jax.config import allowed
from cover_jax.pretrained.weights import PretrainedError

FORMATS = allowed.INIT_FORMATS
TORCH_SUFFIXES = (".pyth", ".pth", ".pt", ".bin")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INSTALL_TORCH = 'pip install -e ".[torch]" (torch==2.13.0; the CPU build is enough)'


class CheckpointFileError(PretrainedError):
  """A checkpoint file that cannot be read safely; the message says why and what to do."""


def _gfile(path: str):
  """TensorFlow's gfile for a remote path (gs://...), None for a local one."""
  if "://" not in str(path):
    return None
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  return tf.io.gfile


def exists(path: str) -> bool:
  gfile = _gfile(path)
  return gfile.exists(path) if gfile else os.path.exists(path)


def isdir(path: str) -> bool:
  gfile = _gfile(path)
  return gfile.isdir(path) if gfile else os.path.isdir(path)


def isfile(path: str) -> bool:
  return exists(path) and not isdir(path)


def listdir(path: str) -> list[str]:
  gfile = _gfile(path)
  # Object stores list sub-directories with a trailing '/'.
  return [n.rstrip("/") for n in gfile.listdir(path)] if gfile else os.listdir(path)


def open_file(path: str, mode: str = "rb"):
  gfile = _gfile(path)
  return gfile.GFile(path, mode) if gfile else open(path, mode)  # pylint: disable=unspecified-encoding


def read_npz(path: str) -> dict[str, np.ndarray]:
  """All arrays of an .npz file, refusing pickled (object) arrays."""
  try:
    with open_file(path) as f:
      if not zipfile.is_zipfile(f):
        raise CheckpointFileError(f"{path}: not a readable .npz file (not a zip archive)")
      f.seek(0)
      with np.load(f, allow_pickle=False) as data:
        return {key: np.asarray(data[key]) for key in data.files}
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise CheckpointFileError(
          f"{path}: the .npz holds an object array, which can only be read by unpickling "
          "it (running code from the file). Refusing. Re-save the weights as plain numeric "
          "arrays (np.savez(path, **{name: np.asarray(x, np.float32)})).") from None
    raise CheckpointFileError(f"{path}: not a readable .npz file ({e})") from None
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise CheckpointFileError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def read_torch(path: str):
  """A torch-saved object (state dict or training checkpoint) via weights_only loading.

  Tensors come back as NumPy arrays (float32 for floating point); strings,
  numbers and containers as they are.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointFileError(
        f"{path} is a PyTorch pickle file, which is read only with PyTorch's safe "
        f"loader (torch.load(weights_only=True)), and torch is not installed. Install it "
        f"with {INSTALL_TORCH}, or convert the file elsewhere: for a HuggingFace model "
        "use its model.safetensors instead of pytorch_model.bin.") from None
  try:
    source = path if _gfile(path) is None else io.BytesIO(open_file(path).read())
    obj = torch.load(source, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    # weights_only refuses any global it does not know (UnpicklingError) and
    # reports damaged files with assorted exception types.
    raise CheckpointFileError(
        f"{path}: torch.load(weights_only=True) refused or failed to read the file "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Files that need "
        "arbitrary unpickling are never loaded; re-save the state dict with plain tensors.") from None
  return _tensors_to_numpy(obj, torch)


def _tensors_to_numpy(obj, torch):
  if isinstance(obj, torch.Tensor):
    t = obj.detach().cpu()
    return t.float().numpy() if t.is_floating_point() else t.numpy()
  if isinstance(obj, dict):
    return {k: _tensors_to_numpy(v, torch) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_tensors_to_numpy(v, torch) for v in obj)
  return obj


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load, load_file  # pylint: disable=import-outside-toplevel

  try:
    with open_file(path) as f:  # fails clearly if missing; a local file is then mapped
      arrays = load_file(path) if _gfile(path) is None else load(f.read())
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
  except (SafetensorError, OSError) as e:
    raise CheckpointFileError(f"{path}: not a readable safetensors file ({e})") from None


def is_orbax_dir(path: str) -> bool:
  """A convert output / workdir / checkpoints dir / step dir of ours."""
  if not isdir(path):
    return False
  names = set(listdir(path))
  return bool({"checkpoints", "_CHECKPOINT_METADATA", "state"} & names) or any(
      n.isdigit() and isdir(os.path.join(path, n)) for n in names)


def hf_weight_file(path: str) -> str | None:
  """The weights file of a HuggingFace model directory (safetensors preferred)."""
  for name in HF_WEIGHT_FILES:
    if isfile(os.path.join(path, name)):
      return os.path.join(path, name)
  return None


def npz_keys(path: str) -> list[str]:
  """The array names of an .npz without reading the arrays."""
  try:
    with open_file(path) as f, zipfile.ZipFile(f) as z:
      return [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
  except (zipfile.BadZipFile, OSError) as e:
    raise CheckpointFileError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def detect_format(path: str) -> str:
  """One of FORMATS, from the path and (for .npz) the key names."""
  if not exists(path):
    raise CheckpointFileError(f"{path}: no such file or directory")
  if isdir(path):
    if hf_weight_file(path):
      return "hf"
    if is_orbax_dir(path):
      return "orbax"
    raise CheckpointFileError(
        f"{path}: a directory that is neither a HuggingFace model (config.json with "
        f"{' or '.join(HF_WEIGHT_FILES)}) nor an Orbax checkpoint of ours.")
  name = os.path.basename(path)
  if name.endswith(".safetensors") or name == "pytorch_model.bin":
    return "hf"
  if name.endswith(TORCH_SUFFIXES):
    return "timesformer_pyth"
  if name.endswith(".npz"):
    return _npz_format(path, npz_keys(path))
  raise CheckpointFileError(
      f"{path}: cannot tell the checkpoint format from the name; pass --format "
      f"(one of {', '.join(FORMATS)}).")


def _npz_format(path: str, keys: list[str]) -> str:
  if any(k.startswith(("params/", "opt/target/")) or k in ("pos_embedding",) or
         k.startswith("Transformer/encoderblock/") for k in keys):
    return "big_vision_npz"
  if any(k.startswith("Transformer/") for k in keys):
    return "vit_npz"
  if any(k.startswith(("blocks.", "model.blocks.", "pos_embed", "model.pos_embed")) for k in keys):
    return "timesformer_pyth"  # the official state dict saved as .npz (torch-free)
  if any(k.startswith("timesformer.") for k in keys):
    return "hf"
  raise CheckpointFileError(
      f"{path}: an .npz whose keys ({', '.join(sorted(keys)[:5])}, ...) match no known "
      "layout (ViT, big_vision, official TimeSformer, HuggingFace TimeSformer); pass --format.")
