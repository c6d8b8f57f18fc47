"""Running a function over many items in worker processes (data preparation).

Workers come from a `forkserver` that has imported `preload` (and with it
TensorFlow and PyAV) once, so starting them is cheap and safe: forking the
calling process itself is unsafe once TensorFlow has started its threads.
Items are submitted a few at a time (`max_in_flight`), so a long item list
does not pile up results in memory, and a worker that dies (killed, out of
memory, a crash inside FFmpeg) raises `WorkerDiedError` instead of hanging.

As with any multiprocessing code, a script that calls this must guard its
own entry point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class WorkerDiedError(RuntimeError):
  """A worker process died; `unfinished` holds the items it left undone."""

  def __init__(self, message: str, unfinished: list):
    super().__init__(message)
    self.unfinished = unfinished


_END = object()


def map_unordered(fn: Callable[[Any], Any], items: Iterable, *, workers: int, preload: str,
                  initializer: Callable[..., None] | None = None, initargs: tuple = (),
                  on_poll: Callable[[], None] | None = None,
                  max_in_flight: int | None = None) -> Iterator[tuple[Any, Any]]:
  """Yields (item, fn(item)) in the order items finish.

  Args:
    fn: a picklable (module-level) function of one item.
    items: the items; consumed lazily.
    workers: number of processes.
    preload: module the forkserver imports before forking workers (the one
      that defines `fn`).
    initializer, initargs: run once in each worker.
    on_poll: called about twice a second while waiting (e.g. progress).
    max_in_flight: items submitted but not yet yielded (default 2 x workers).

  Raises:
    WorkerDiedError: a worker process died; the exception lists the items
      submitted but not finished.
    Any exception `fn` raised, as soon as its item is reached.
  """
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload([preload])
  items = iter(items)
  max_in_flight = max_in_flight or 2 * workers
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                              initializer=initializer,
                                              initargs=initargs) as pool:
    pending = {}
    try:
      while True:
        while len(pending) < max_in_flight and (item := next(items, _END)) is not _END:
          pending[pool.submit(fn, item)] = item
        if not pending:
          return
        done, _ = concurrent.futures.wait(pending, timeout=0.5,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        if on_poll:
          on_poll()
        for future in done:
          yield pending.pop(future), future.result()
    except concurrent.futures.process.BrokenProcessPool as e:
      raise WorkerDiedError(f"a worker process died (killed, out of memory, or a crash in a "
                            f"native library) with {len(pending)} item(s) unfinished",
                            list(pending.values())) from e
    finally:
      for future in pending:
        future.cancel()
