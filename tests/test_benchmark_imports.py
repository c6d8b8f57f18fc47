"""The benchmarks' import path needs no TensorFlow, TFDS or clu (issue 17, item 1).

The GPU image has JAX, flax, optax and torch but none of those three, and
`libtpu`'s venv for the ahead-of-time compile has none either. A subprocess
makes them unimportable with an import hook (as if they were not installed,
on whatever stack runs the suite) and imports every module the step
benchmark, its workers, the device check and the ahead-of-time compile run,
then builds the CoVeR recipe's config as aot_compile.py does. A module that
starts importing TensorFlow fails here with the hook's message.
benchmarks/check_gpu_stack.sh runs this test on the newer stack too.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.helpers import REPO

BLOCKED = ("tensorflow", "tensorflow_datasets", "clu")

_HOOK = """
import importlib.abc, sys
BLOCKED = {blocked!r}

class Blocked(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{{name}} is blocked: the benchmark path must not import it")
    return None

sys.meta_path.insert(0, Blocked())
sys.path[:0] = [{repo!r}, {repo!r} + "/benchmarks", {repo!r} + "/configs"]
"""

_IMPORTS = """
import bench_common, jax_worker, memory, profile_step, train_step
sys.argv = ["aot_compile.py"]  # absl defines its flags at import
import aot_compile
from cover_jax.train import build
import cover
config = cover.get_config("variant=L/16")
assert sorted(config.datasets) == ["in21k", "k400", "mit", "ssv2"], sorted(config.datasets)
if {with_torch}:
  import torch_worker
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("imports ok")
"""


def _torch_available() -> bool:
  return all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


def test_benchmark_path_imports_no_tensorflow_tfds_or_clu():
  code = _HOOK.format(blocked=BLOCKED, repo=str(REPO)) + _IMPORTS.format(
      with_torch=_torch_available())
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "imports ok" in proc.stdout


def test_the_hook_blocks_what_it_names():
  # Guards the guard: with the hook, `import clu` (the trainer's metric writers) fails.
  code = _HOOK.format(blocked=BLOCKED, repo=str(REPO)) + "from cover_jax.train import loop\n"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=180)
  assert proc.returncode != 0 and "is blocked" in proc.stderr
