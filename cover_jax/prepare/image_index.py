r"""An index of an image folder's files: list them once, not at every start.

`source=image_folder` (input/sources.py) reads `<root>/<class>/<image>`. For
ImageNet-21k that is ~14M files in ~21k folders: listing them takes minutes
on a network file system, and every process of every run would do it. Write
the index once:

  python -m cover_jax.prepare.image_index --path=$RAW/imagenet21k              # <path>/<class>/...
  python -m cover_jax.prepare.image_index --path=$RAW/imagenet --split=train   # <path>/train/<class>/...

It writes `<root>/image_index.txt`: one `<class folder>/<file>` per line, in
the order a listing gives (folders sorted, files sorted within each), so a
run that started without the index and resumes with it reads the same
stream. Images added later are not in it (write it again); images removed
later are skipped and counted like any unreadable file.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys

from absl import app, flags, logging
import tensorflow as tf

INDEX_NAME = "image_index.txt"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def class_folders(root: str) -> list[str]:
  """The sorted names of the folders directly under `root`."""
  if not tf.io.gfile.isdir(root):
    return []
  return sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root)
                if tf.io.gfile.isdir(os.path.join(root, d)))


def _images_in(root: str, folder: str) -> list[str]:
  return [f"{folder}/{file}" for file in sorted(tf.io.gfile.listdir(os.path.join(root, folder)))
          if file.lower().endswith(IMAGE_SUFFIXES)]


def list_images(root: str, workers: int = 16) -> list[str]:
  """Every `<class folder>/<image>` under `root`, folders and files sorted.

  The folders are listed by `workers` threads: on a network file system a
  listing is a round trip, and threads overlap them.
  """
  folders = class_folders(root)
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    per_folder = pool.map(lambda folder: _images_in(root, folder), folders)
    return [image for images in per_folder for image in images]


def read_index(root: str) -> list[str] | None:
  """The entries of `<root>/image_index.txt`, or None without one."""
  path = os.path.join(root, INDEX_NAME)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return [line for line in f.read().splitlines() if line]


def write_index(root: str, workers: int = 16) -> tuple[str, int]:
  """Lists `root` and writes its index (to a temporary name first); (path, images)."""
  images = list_images(root, workers)
  path = os.path.join(root, INDEX_NAME)
  with tf.io.gfile.GFile(path + ".tmp", "w") as f:
    f.write("".join(image + "\n" for image in images))
  tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
  return path, len(images)


_PATH = flags.DEFINE_string("path", None, "The image folder (config.datasets.<name>.path).")
_SPLIT = flags.DEFINE_string("split", "", "Index <path>/<split> when the split has its own "
                             "folder (e.g. train); empty: <path> itself.")
_WORKERS = flags.DEFINE_integer("workers", 16, "Threads listing class folders.")


def main(argv) -> int:
  del argv
  root = os.path.join(_PATH.value, _SPLIT.value) if _SPLIT.value else _PATH.value
  folders = class_folders(root)
  if not folders:
    print(f"error: {root} has no class folders; --path should be the folder holding "
          "<class>/<image> (or <split>/<class>/<image> with --split)", file=sys.stderr)
    return 2
  path, count = write_index(root, _WORKERS.value)
  logging.info("indexed %d images in %d class folders", count, len(folders))
  print(f"wrote {path}: {count} images in {len(folders)} class folders")
  return 0


if __name__ == "__main__":
  flags.mark_flag_as_required("path")
  app.run(main)
