"""Metric writers: TensorBoard and JSON lines in the workdir, process 0 only."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers
from etils import epath


class JsonLinesWriter(metric_writers.MetricWriter):
  """Appends one JSON object per write: {"step": s, "name": value, ...}.

  Scalars, texts and hyper-parameters are written; images, videos, audio and
  histograms are TensorBoard's business and are ignored here. The file is an
  `etils.epath` path: on an object store (gs://) each append rewrites the
  object (TensorFlow's file system does so for mode 'a'), which is cheap for
  a metrics file and keeps every line on the bucket, as big_vision does.
  Only process 0 writes it, from one thread at a time.
  """

  def __init__(self, path):
    self._path = epath.Path(path)
    self._lock = threading.Lock()
    self._path.parent.mkdir(parents=True, exist_ok=True)

  def _append(self, record: Mapping[str, Any]) -> None:
    with self._lock, self._path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._append({"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}})

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._append({"step": int(step), **{k: str(v) for k, v in texts.items()}})

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._append({"hparams": {k: _jsonable(v) for k, v in hparams.items()}})

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def _jsonable(value):
  try:
    json.dumps(value)
    return value
  except TypeError:
    return str(value)


def create_writer(workdir: str, process_index: int) -> metric_writers.MetricWriter:
  """TensorBoard + `metrics.jsonl` on process 0; nothing on the others."""
  if process_index != 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([
      metric_writers.SummaryWriter(str(epath.Path(workdir) / "tensorboard")),
      JsonLinesWriter(epath.Path(workdir) / "metrics.jsonl"),
  ])
