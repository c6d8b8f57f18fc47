"""Test-wide settings, applied before JAX or TensorFlow is imported.

JAX's persistent compilation cache lets tests (and the subprocesses they
start) reuse compiled steps across the suite and across CI runs. On a clean
clone the cache is empty and compiling is most of the suite's time, so tests
compile cheaply (XLA's HLO passes are unchanged; the code is slower, but the
tests' models are tiny): LLVM's cheap settings, and XLA:CPU's classic
elemental emitters for fusions instead of its MLIR fusion emitters, which
take most of a small step's compile (the tiny train step: 2.5 s with XLA's
defaults, 1.6 s with the LLVM settings, 0.5 s with both). Float results can
differ in the last bits from the optimised build, so equivalence tests
compare with float32 tolerances. Speed is measured by benchmarks/, which use
XLA's defaults. A subprocess that needs fake devices adds them to these
flags (helpers.fake_devices_env).
"""

import fcntl
import gc
import json
import os
import pathlib

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true "
                      "--xla_cpu_use_fusion_emitters=false")
# Tests never touch a GPU or the network, even where one is present.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

# The imports of collection (JAX, TensorFlow, every test module) leave about
# a million long-lived objects; each full garbage collection would walk them
# all again, in every in-process training run. So: no collection until the
# tests are collected, then those objects are frozen out of later ones, as
# the commands do (cover_jax/train/exits.py).
gc.disable()


def pytest_collection_finish(session):  # pylint: disable=unused-argument
  gc.freeze()
  gc.enable()


def _built_once(tmp_path_factory, worker_id: str, name: str, build) -> pathlib.Path:
  """`build(directory)` done once per test session, not once per pytest-xdist worker.

  The workers share the parent of their base temp directories (pytest-xdist's
  way to share a session fixture): the first worker to get there builds under
  a lock, the others wait and reuse what it built. Returns the directory.
  """
  if worker_id == "master":  # not distributed (-n 0): nothing to share
    directory = tmp_path_factory.mktemp(name)
    build(directory)
    return directory
  root = tmp_path_factory.getbasetemp().parent
  directory, done = root / name, root / f"{name}.done"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not done.exists():
      directory.mkdir(exist_ok=True)
      build(directory)
      done.touch()
  return directory


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, worker_id):
  """A data_dir with the tiny embedded datasets, built once per test session."""
  from cover_jax.input import pipeline
  from tests.helpers import load_config

  def build(directory):
    pipeline.prepare_datasets(load_config(arg="tiny=true", data_dir=str(directory)))

  return str(_built_once(tmp_path_factory, worker_id, "tfds", build))


@pytest.fixture
def tiny_config(tiny_data_dir):
  """The demo config's seconds-long variant (unlocked), on the tiny datasets."""
  from tests.helpers import load_config

  return load_config(arg="tiny=true", data_dir=tiny_data_dir)


TINY_RUN_SEED = 2  # the 'sample' mixture draws every tiny dataset within its 6 steps


@pytest.fixture(scope="session")
def tiny_run(tiny_data_dir, tmp_path_factory, worker_id):
  """(workdir, result): one finished 6-step tiny demo run through the main command.

  Seed 2, checkpoints at steps 3 and 6. Built once per session and shared by
  the tests that only read it; tests that change a workdir copy it first.
  """
  import subprocess
  import sys
  from tests.helpers import REPO

  def build(directory):
    workdir = directory / "workdir"
    cmd = [sys.executable, "-m", "cover_jax.main", "--config=configs/demo.py:tiny=true",
           f"--workdir={workdir}", f"--config.data_dir={tiny_data_dir}",
           f"--config.seed={TINY_RUN_SEED}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (directory / "result.json").write_text(json.dumps(
        {"args": cmd, "stdout": result.stdout, "stderr": result.stderr}))

  directory = _built_once(tmp_path_factory, worker_id, "tiny_run", build)
  saved = json.loads((directory / "result.json").read_text())
  return directory / "workdir", subprocess.CompletedProcess(saved["args"], 0, saved["stdout"],
                                                            saved["stderr"])


@pytest.fixture
def failed_restores_collected():
  """A failed Orbax restore leaves asyncio callbacks behind whose event loop has closed.

  Collected as garbage they raise 'Event loop is closed' where nothing can
  catch it (the commands send that to log.txt: metrics/run_log.py). Here they
  are collected when the test ends, so that they are this test's, and
  expected (the tests' filterwarnings marks).
  """
  yield
  gc.collect()
