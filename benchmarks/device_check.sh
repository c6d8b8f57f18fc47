#!/usr/bin/env bash
# One prepared GPU run (at most 8 minutes): TimeSformer-B/16, 8x224, bfloat16,
# our train step with cuDNN and with XLA attention beside HuggingFace's PyTorch
# TimeSformer (bf16 autocast; HF's eager attention and SDPA patched in, see
# benchmarks/torch_worker.py) trained with AdamW, all at the same batch, sized
# from memory probes taken in the same run (train_step.py auto_batch). Prints
# step ms, clips/s, MFU against the bf16 matmul peak measured in the run, and
# peak device memory; then ViT-L/16 (ours with cuDNN, PyTorch with SDPA) if
# at least LARGE_MIN_S seconds of the budget are left, stopped at the budget. docs/performance.md "On a GPU" has the
# commands; the device README's notes say how wheels travel.
#
#   bash benchmarks/device_check.sh --fetch-wheels  # here, once: the wheels into .whl/ (ignored)
#   bash benchmarks/device_check.sh --dry-run       # print what would run, run nothing
#   bash benchmarks/device_check.sh --smoke         # the same path on CPU, tiny config, float32
#   bash benchmarks/device_check.sh                 # on the GPU machine (carry .whl)
#
# Environment: PYTHON (python3), TORCH_PYTHON (the PyTorch worker's
# interpreter, $PYTHON), BUDGET_S (480), LARGE_MIN_S (200), OUT (where the
# JSON results go, if set).
#
# Packages. The GPU image has jax 0.11.x, torch and transformers but no
# ml-collections, and a flax of unknown version (flax < 0.12.10 does not
# import with jax 0.11.2). The carried wheels are installed with --no-deps into
# /tmp/site, put first on PYTHONPATH: ml-collections always, flax only when the
# image's flax is missing or older than 0.12.10 (0.12.12 needs jax >= 0.11.1;
# a newer image flax is kept). cover_jax itself comes from PYTHONPATH=. (pip
# install -e . would try to download its pins).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"
PYTHON="${PYTHON:-python3}"
TORCH_PYTHON="${TORCH_PYTHON:-$PYTHON}"
BUDGET_S="${BUDGET_S:-480}"
LARGE_MIN_S="${LARGE_MIN_S:-200}"
WHEELS=(flax==0.12.12 ml-collections==1.1.0)
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
START=$SECONDS

fetch_wheels() {  # here, where pip reaches a registry; pure-Python wheels for Python 3.12
  mkdir -p .whl && "$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation py --abi none --platform any -d .whl "${WHEELS[@]}" \
    && ls -l .whl
}

install_wheels() {  # on the device: carried wheels into /tmp/site (see Packages above)
  local wheels=(.whl/ml_collections-*.whl)
  if ! "$PYTHON" - <<'EOF'
import sys
from importlib import metadata
try:
  version = tuple(int(p) for p in metadata.version("flax").split(".")[:3])
except metadata.PackageNotFoundError:
  sys.exit(1)
sys.exit(0 if version >= (0, 12, 10) else 1)
EOF
  then
    echo "image flax missing or older than 0.12.10: installing the carried flax"
    wheels+=(.whl/flax-*.whl)
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${wheels[@]}" || { echo "installing ${wheels[*]} failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
}

versions() {
  "$PYTHON" --version
  "$PYTHON" - <<'EOF'
from importlib import metadata
names = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
         "orbax-checkpoint", "ml-collections", "numpy", "torch", "transformers")
found = []
for name in names:
  try:
    found.append(f"{name} {metadata.version(name)}")
  except metadata.PackageNotFoundError:
    pass
print("packages: " + ", ".join(found))
import flax, jax  # what actually imports (PYTHONPATH first)
print(f"imported: jax {jax.__version__} ({jax.default_backend()}: {jax.devices()[0].device_kind}), "
      f"flax {flax.__version__} from {flax.__file__}")
EOF
}

torch_flags() {  # $1 attentions: the PyTorch side, or a line saying why it is skipped
  if [ "$MODE" = "--dry-run" ] || "$TORCH_PYTHON" -c "import torch, transformers" 2>/dev/null; then
    echo "--compare-torch --torch-python=$TORCH_PYTHON --torch-attention=$1"
  else
    echo "PyTorch side skipped: torch or transformers does not import in $TORCH_PYTHON" >&2
  fi
}

bench() {  # $1 config, $2 seconds allowed, then train_step.py flags
  local config="$1" seconds="$2"
  shift 2
  local cmd=("$PYTHON" benchmarks/train_step.py "--configs=$config" --batch=auto
             --no-image-step --sequential=yes "$@")
  [ -n "${OUT:-}" ] && cmd+=("--json=$OUT/device_check_${config//\//}.json")
  echo "+ timeout $seconds ${cmd[*]}"
  [ "$MODE" = "--dry-run" ] && return 0
  timeout "$seconds" "${cmd[@]}"
  local rc=$?
  [ $rc -eq 124 ] && echo "$config: stopped at the time limit ($seconds s)"
  return $rc
}

case "$MODE" in
  --fetch-wheels) fetch_wheels; exit $? ;;
  --smoke)  # CPU, tiny config, float32 (no cuDNN on CPU: 'auto' resolves to XLA there)
    export JAX_PLATFORMS=cpu
    versions || exit 1
    bench tiny 300 --attention-impl=auto,xla --device-memory-gib=0.004 --rounds=1 --steps=2 \
      $(torch_flags eager,sdpa)
    exit $? ;;
  --dry-run)
    echo "would install: .whl/ml_collections-*.whl;" \
      ".whl/flax-*.whl too if the image's flax is older than 0.12.10"
    echo "would print: python and package versions, nvidia-smi's GPU line"
    echo "would skip the PyTorch side if torch or transformers does not import in $TORCH_PYTHON"
    echo "budget ${BUDGET_S} s; L/16 only if ${LARGE_MIN_S} s are left after B/16, within them" ;;
  run)
    [ -d .whl ] || { echo "no .whl/: run --fetch-wheels here and carry .whl"; exit 1; }
    install_wheels
    versions || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 ;;  # one worker at a time holds the GPU
  *) echo "usage: $0 [--dry-run|--smoke|--fetch-wheels]"; exit 2 ;;
esac

# B/16: both attentions of ours, both of PyTorch's. L/16, if there is time:
# the fastest of each (three compiles fewer than B/16 would take).
bench B/16 $((BUDGET_S - (SECONDS - START) - 5)) --attention-impl=cudnn,xla --rounds=2 \
  --steps=5 $(torch_flags eager,sdpa)
STATUS=$?
LEFT=$((BUDGET_S - (SECONDS - START) - 5))
if [ "$MODE" = "--dry-run" ] || [ $LEFT -ge "$LARGE_MIN_S" ]; then
  bench L/16 $LEFT --attention-impl=cudnn --rounds=2 --steps=5 $(torch_flags sdpa)
else
  echo "L/16 skipped: ${LEFT} s left of the ${BUDGET_S} s budget (needs ${LARGE_MIN_S})"
fi
echo "device_check: $((SECONDS - START)) s"
exit $STATUS
