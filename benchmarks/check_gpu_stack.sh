#!/usr/bin/env bash
# The step benchmark on the GPU image's newer stack, checked here on CPU (issue 17, item 1).
#
# The GPU image runs Python 3.12 with jax 0.11.x (which needs Python >= 3.12),
# no TensorFlow, TFDS or clu, and a flax of its own; our pins are Python 3.11,
# jax 0.10.2, flax 0.12.8. This builds (once) a git-ignored Python 3.12 venv
# with jax 0.11.2 (CPU) and the flax / optax / orbax-checkpoint /
# ml-collections versions that resolve with it (flax 0.12.8 and 0.12.9 do not
# import with jax 0.11.2: "jax.experimental.hijax has no HiPrimitive"; 0.12.10
# and later do), then runs on it, with cover_jax from PYTHONPATH=. as on the
# GPU machine:
#   1. tests/test_benchmark_imports.py (no TensorFlow, TFDS or clu on the path),
#   2. benchmarks/train_step.py on the tiny config (video and image steps),
#   3. benchmarks/device_check.sh --smoke (its JAX side; PyTorch only if
#      TORCH_PYTHON names an interpreter with torch and transformers).
#
#   bash benchmarks/check_gpu_stack.sh
#   VENV=/path/to/venv bash benchmarks/check_gpu_stack.sh    # another (existing) venv
#
# Environment: PYTHON312 (the interpreter to build the venv from), VENV
# (.venv-gpustack), TORCH_PYTHON (unset: the PyTorch side is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
find_python312() {  # the first candidate that runs (a pyenv shim may exist and refuse)
  for candidate in "${PYTHON312:-}" python3.12 /root/.pyenv/versions/3.12.*/bin/python3; do
    if [ -n "$candidate" ] && "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 12)" \
        2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "no Python 3.12 found: set PYTHON312" >&2
  exit 1
}
VENV="${VENV:-.venv-gpustack}"
PINS=(jax==0.11.2 flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8 ml-collections==1.1.0
      einops==0.8.2 absl-py==2.5.1 pytest==9.2.0)

if [ ! -x "$VENV/bin/python" ]; then
  PYTHON312="$(find_python312)"
  echo "building $VENV from $PYTHON312: ${PINS[*]}"
  "$PYTHON312" -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PINS[@]}"
fi
PY="$VENV/bin/python"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" JAX_PLATFORMS=cpu
"$PY" --version
"$PY" -m pip list 2>/dev/null \
  | grep -iE "^(jax|jaxlib|flax|optax|orbax-checkpoint|ml.collections|numpy) "
echo "== 1. import path"
"$PY" -m pytest -q -p no:cacheprovider tests/test_benchmark_imports.py
echo "== 2. step benchmark, tiny"
"$PY" benchmarks/train_step.py --configs=tiny --rounds=1 --steps=2
echo "== 3. device check, smoke"
PYTHON="$PY" TORCH_PYTHON="${TORCH_PYTHON:-$PY}" bash benchmarks/device_check.sh --smoke
