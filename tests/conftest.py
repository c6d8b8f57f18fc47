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


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A data_dir with the tiny embedded datasets, built once per test session."""
  from cover_jax.input import pipeline
  from tests.helpers import load_config

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  pipeline.prepare_datasets(load_config(arg="tiny=true", data_dir=data_dir))
  return data_dir


@pytest.fixture
def tiny_config(tiny_data_dir):
  """The demo config's seconds-long variant (unlocked), on the tiny datasets."""
  from tests.helpers import load_config

  return load_config(arg="tiny=true", data_dir=tiny_data_dir)


TINY_RUN_SEED = 2  # the 'sample' mixture draws every tiny dataset within its 6 steps


@pytest.fixture(scope="session")
def tiny_run(tiny_data_dir, tmp_path_factory):
  """(workdir, result): one finished 6-step tiny demo run through the main command.

  Seed 2, checkpoints at steps 3 and 6. Shared by the tests that only read it;
  tests that change a workdir copy it first.
  """
  import subprocess
  import sys
  from tests.helpers import REPO

  workdir = tmp_path_factory.mktemp("tiny_run")
  cmd = [sys.executable, "-m", "cover_jax.main", "--config=configs/demo.py:tiny=true",
         f"--workdir={workdir}", f"--config.data_dir={tiny_data_dir}",
         f"--config.seed={TINY_RUN_SEED}"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result
