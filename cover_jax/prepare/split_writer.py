"""A split's videos -> shard files of DMVR-format records, in worker processes, resumably.

Files under the dataset directory:

    <split>-<i:05d>-of-<n:05d>.tfrecord  a finished shard (renamed into place when complete)
    .prepare/<split>-plan.json           what the split was planned from (inputs, settings)
    .prepare/<shard file>.json           a finished shard's outcome: records written, skips
    .prepare/<shard file>.tmp-<pid>      a shard being written

A shard counts as finished when its record file and its outcome file both
exist; a rerun skips those and writes the rest. The assignment of videos to
shards depends only on the video list, the seed and the shard count (a fixed
shuffle, then round robin), so a resumed run writes the same shards; the plan
file makes a rerun with other inputs or settings an error instead of a silent
mix.

One bad video never stops the job: `write_shard` records why it was skipped
and goes on. Shards are written in worker processes (`workers.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import multiprocessing
import os
import queue
import random
from collections.abc import Callable, Sequence

from etils import epath
import tensorflow as tf
import tqdm

from cover_jax.prepare import video_records
from cover_jax.prepare import workers as workers_lib
from cover_jax.prepare.annotations import VideoClip

STATE_DIR = ".prepare"
# ~64 Kinetics clips (10 s at 25 fps, 256 px) make a shard of ~100-300 MB.
VIDEOS_PER_SHARD = 64


class ShardError(RuntimeError):
  """The split cannot be (re)written as asked; the message says what to do."""


class WorkerDiedError(workers_lib.WorkerDiedError):
  """A worker process died; finished shards are kept and a rerun writes the rest."""


def shard_filename(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def auto_num_shards(num_videos: int) -> int:
  """One shard per VIDEOS_PER_SHARD videos (at least one)."""
  return max(1, math.ceil(num_videos / VIDEOS_PER_SHARD))


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One shard to write: its place and its (video, label index) pairs, in order."""

  dataset_dir: str
  split: str
  index: int
  num_shards: int
  items: tuple[tuple[VideoClip, int], ...]

  @property
  def filename(self) -> str:
    return shard_filename(self.split, self.index, self.num_shards)

  @property
  def record_path(self) -> epath.Path:
    return epath.Path(self.dataset_dir) / self.filename

  @property
  def outcome_path(self) -> epath.Path:
    return epath.Path(self.dataset_dir) / STATE_DIR / f"{self.filename}.json"


@dataclasses.dataclass(frozen=True)
class ShardOutcome:
  """What a finished shard holds: records written, and each skipped video with why."""

  filename: str
  written: int
  skipped: list[dict[str, str]]


def plan_shards(clips: Sequence[VideoClip], label_index: dict[str, int], *, dataset_dir: str,
                split: str, num_shards: int, seed: int) -> list[ShardTask]:
  """Shuffles the videos with `seed` and deals them round robin into `num_shards` shards.

  Shuffling first spreads every class over all shards (annotation files are
  often sorted by class), and the shuffled order within a shard is the order
  its records are written in.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be positive, got {num_shards}")
  order = list(range(len(clips)))
  random.Random(seed).shuffle(order)
  return [ShardTask(dataset_dir, split, s, num_shards,
                    tuple((clips[i], label_index[clips[i].label]) for i in order[s::num_shards]))
          for s in range(num_shards)]


def check_or_save_plan(dataset_dir: str, split: str, plan: dict) -> None:
  """Saves the split's plan, or checks that a rerun uses the same one.

  Args:
    dataset_dir: the dataset directory.
    split: the split.
    plan: JSON-able values that decide the split's shards, keyed by the
      command-line flag that sets each (so an error can name the flag).

  Raises:
    ShardError: the split was started with another plan, or shard files of
      the split exist without a plan.
  """
  state = epath.Path(dataset_dir) / STATE_DIR
  path = state / f"{split}-plan.json"
  if path.exists():
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = [f"{key}: {saved.get(key)!r} before, {plan.get(key)!r} now"
               for key in sorted(set(saved) | set(plan)) if saved.get(key) != plan.get(key)]
    if changed:
      raise ShardError(
          f"the {split!r} split in {dataset_dir} was started with other inputs or settings "
          f"({'; '.join(changed)}). To resume, rerun with the same flags; to start the split "
          f"over, delete {dataset_dir}/{split}-*.tfrecord and {path}")
    return
  stale = list(epath.Path(dataset_dir).glob(f"{split}-*.tfrecord"))
  if stale:
    raise ShardError(
        f"{dataset_dir} already has {len(stale)} {split!r} shard(s) (e.g. {stale[0].name}) that "
        f"this tool did not plan; delete them or choose another --output_dir")
  state.mkdir(parents=True, exist_ok=True)
  _write_json_atomically(path, plan)


def _write_json_atomically(path: epath.Path, content) -> None:
  temp = path.parent / f"{path.name}.tmp-{os.getpid()}"
  temp.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
  temp.replace(path)


def load_outcome(task: ShardTask) -> ShardOutcome | None:
  """The outcome of a finished shard; None if the shard is not finished."""
  if not (task.record_path.exists() and task.outcome_path.exists()):
    return None
  saved = json.loads(task.outcome_path.read_text(encoding="utf-8"))
  return ShardOutcome(task.filename, saved["written"], saved["skipped"])


def write_shard(task: ShardTask, settings: video_records.EncodeSettings,
                on_video: Callable[[], None] | None = None) -> ShardOutcome:
  """Writes one shard whole (temp file, then rename), skipping videos that fail.

  Args:
    task: the shard.
    settings: how videos become frames.
    on_video: called after each video (progress).
  """
  temp = task.record_path.parent / STATE_DIR / f"{task.filename}.tmp-{os.getpid()}"
  written, skipped = 0, []
  with tf.io.TFRecordWriter(os.fspath(temp)) as writer:
    for clip, label_index in task.items:
      try:
        record = video_records.clip_record(clip, label_index, settings)
      except Exception as e:  # pylint: disable=broad-except  # one bad file never stops the job
        skipped.append({"path": clip.path, "label": clip.label,
                        "reason": video_records.skip_reason(e, clip)})
      else:
        writer.write(record)
        written += 1
      if on_video:
        on_video()
  temp.replace(task.record_path)
  _write_json_atomically(task.outcome_path, {"written": written, "skipped": skipped})
  return ShardOutcome(task.filename, written, skipped)


def remove_stale_temp_files(dataset_dir: str, split: str) -> None:
  """Deletes shards a killed run left half-written."""
  for temp in (epath.Path(dataset_dir) / STATE_DIR).glob(f"{split}-*.tmp-*"):
    temp.unlink()


def write_shards(tasks: Sequence[ShardTask], settings: video_records.EncodeSettings, *,
                 workers: int, progress: bool = True) -> list[ShardOutcome]:
  """Writes every unfinished shard of `tasks`; returns all outcomes, in task order.

  Args:
    tasks: all shards of the split (finished ones are only read back).
    settings: how videos become frames.
    workers: processes writing shards in parallel (1: in this process).
    progress: show a tqdm progress bar (in videos).

  Raises:
    WorkerDiedError: a worker process died (the shards it was writing are
      rewritten by the next run).
  """
  outcomes = {task.index: load_outcome(task) for task in tasks}
  todo = [task for task in tasks if outcomes[task.index] is None]
  done_videos = sum(len(task.items) for task in tasks if outcomes[task.index] is not None)
  with tqdm.tqdm(total=sum(len(task.items) for task in tasks), initial=done_videos,
                 unit="video", desc=tasks[0].split if tasks else "", disable=not progress,
                 smoothing=0.05) as bar:
    if workers <= 1 or len(todo) <= 1:
      for task in todo:
        outcomes[task.index] = write_shard(task, settings, on_video=lambda: bar.update(1))
    else:
      for outcome, task in _write_in_workers(todo, settings, workers, bar):
        outcomes[task.index] = outcome
  return [outcomes[task.index] for task in tasks]


# Set in each worker process by `_init_worker`: where to report finished videos.
_worker_progress: multiprocessing.Queue | None = None


def _init_worker(progress: multiprocessing.Queue) -> None:
  global _worker_progress
  _worker_progress = progress


def _write_shard_in_worker(task: ShardTask, settings) -> ShardOutcome:
  return write_shard(task, settings, on_video=lambda: _worker_progress.put(1))


def _drain(progress: multiprocessing.Queue, bar: tqdm.tqdm) -> None:
  while True:
    try:
      bar.update(progress.get_nowait())
    except queue.Empty:
      return


def _write_in_workers(tasks, settings, workers, bar):
  """Yields (outcome, task) as shards finish in `workers` processes."""
  progress = multiprocessing.get_context("forkserver").Queue()
  try:
    for task, outcome in workers_lib.map_unordered(
        functools.partial(_write_shard_in_worker, settings=settings), tasks,
        workers=min(workers, len(tasks)), preload=__name__, initializer=_init_worker,
        initargs=(progress,), on_poll=lambda: _drain(progress, bar)):
      yield outcome, task
  except workers_lib.WorkerDiedError as e:
    unfinished = sorted(task.filename for task in e.unfinished)
    raise WorkerDiedError(
        f"{e} ({', '.join(unfinished[:5])}{'...' if len(unfinished) > 5 else ''}). Finished "
        "shards are kept: run the same command again to write the rest", e.unfinished) from e
