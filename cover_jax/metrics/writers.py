"""Metric writers: TensorBoard and JSON lines in the workdir, process 0 only."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers


class JsonLinesWriter(metric_writers.MetricWriter):
  """Appends one JSON object per write: {"step": s, "name": value, ...}.

  Scalars, texts and hyper-parameters are written; images, videos, audio and
  histograms are TensorBoard's business and are ignored here.
  """

  def __init__(self, path: str):
    self._path = path
    self._lock = threading.Lock()
    os.makedirs(os.path.dirname(path), exist_ok=True)

  def _append(self, record: Mapping[str, Any]) -> None:
    with self._lock, open(self._path, "a") as f:
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
      metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")),
      JsonLinesWriter(os.path.join(workdir, "metrics.jsonl")),
  ])
