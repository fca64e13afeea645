#!/usr/bin/env bash
# GPU check of rpdist, in one go (about 5–8 minutes on one H200): benchmarks/gpu_check.py does
#   1. the device-sensitive tests on CUDA (RPDIST_TEST_DEVICE=cuda),
#   2. CPU–CUDA agreement of CERTIFY/PREDICT decisions on the built-in models,
#   3. ResNet-18 certification throughput vs raw forward (goal >= 0.9) and the naive loop (goal >= 10x),
# and writes gpu_check.json, summary.md and pytest.log to the output folder.
#
# Usage:  scripts/gpu_check.sh [--device cuda|cpu] [--quick] [--out DIR] [other benchmarks/gpu_check.py options]
#         make gpu-check [ARGS="..."]
# Output: DIR, else $RPDIST_GPU_CHECK_OUT, else results/gpu-check/.
# CPU smoke run (tiny sizes, seconds): scripts/gpu_check.sh --device cpu --quick
#
# Which Python, and how it gets a CUDA torch. rpdist pins torch==2.13.0; the .venv that `make venv`
# builds on a CPU machine holds a CPU-only build and cannot be reused on a GPU machine (and a venv
# only runs where its base interpreter exists). The first interpreter below that imports torch,
# numpy, scipy, pandas and pyarrow and, for --device cuda, sees a GPU (torch.cuda.is_available()) is used:
#   1. $RPDIST_PYTHON, if set (then no other is tried);
#   2. .venv/bin/python;
#   3. python3, then python, on PATH (GPU images usually ship a CUDA torch there).
# ray and pytest are optional: without ray the Ray tests skip and part 2 runs the engine's plan in
# process (same counts and decision code, no actors); without pytest part 1 is reported as failed.
# A torch other than 2.13.0 is used with a warning. If none qualifies the script prints what each
# candidate lacks, nvidia-smi's view, and exits 2. To get a CUDA torch:
#   - online: `make venv` on the GPU machine (PyPI's Linux torch==2.13.0 wheel is the CUDA build), or
#     .venv/bin/pip install --force-reinstall torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
#   - offline: RPDIST_WHEELS=DIR, a folder of wheels (a CUDA torch and whatever else is missing, e.g.
#     ray); they are installed with `pip install --no-index --no-deps --target` into a temporary
#     folder put first on PYTHONPATH, for the chosen interpreter.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

DEVICE="${RPDIST_GPU_CHECK_DEVICE:-cuda}"
OUT="${RPDIST_GPU_CHECK_OUT:-$ROOT/results/gpu-check}"
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do
  case "${ARGS[i]}" in
    --device) DEVICE="${ARGS[i + 1]:-}" ;;
    --device=*) DEVICE="${ARGS[i]#*=}" ;;
    --out) OUT="${ARGS[i + 1]:-}" ;;
    --out=*) OUT="${ARGS[i]#*=}" ;;
  esac
done
mkdir -p "$OUT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Prints one line about an interpreter; exit 0 if it can run the check on $DEVICE.
probe() {
  "$1" - "$DEVICE" <<'PY' 2>&1
import importlib.util, sys
device = sys.argv[1]
missing = [m for m in ("numpy", "scipy", "pandas", "pyarrow") if importlib.util.find_spec(m) is None]
optional = [m for m in ("ray", "pytest") if importlib.util.find_spec(m) is None]
try:
    import torch
except Exception as exc:
    print(f"python {sys.version.split()[0]}: no usable torch ({type(exc).__name__}: {exc})"); sys.exit(1)
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else "-"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (built for CUDA {torch.version.cuda}), "
      f"sees GPU: {cuda} {name}; missing: {missing or 'none'}; optional missing: {optional or 'none'}")
sys.exit(0 if sys.version_info >= (3, 10) and not missing and (cuda or not device.startswith("cuda")) else 1)
PY
}

install_wheels() {  # $1 = interpreter
  [ -n "${RPDIST_WHEELS:-}" ] || return 0
  local site
  site="$(mktemp -d /tmp/rpdist-site.XXXXXX)"
  echo "[gpu_check.sh] installing the wheels of $RPDIST_WHEELS into $site"
  "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$RPDIST_WHEELS"/*.whl ||
    echo "[gpu_check.sh] WARNING: installing the wheels failed; going on without them"
  export PYTHONPATH="$site:$PYTHONPATH"
}

if [ -n "${RPDIST_PYTHON:-}" ]; then
  CANDIDATES=("$RPDIST_PYTHON")
else
  CANDIDATES=("$ROOT/.venv/bin/python" python3 python)
fi
PY=""
REPORT=""
for candidate in "${CANDIDATES[@]}"; do
  if ! command -v "$candidate" >/dev/null 2>&1; then
    REPORT+="  $candidate: not found"$'\n'
    continue
  fi
  install_wheels "$candidate"
  line="$(probe "$candidate")"
  status=$?
  REPORT+="  $candidate: $line"$'\n'
  if [ $status -eq 0 ]; then
    PY="$candidate"
    break
  fi
done
printf '[gpu_check.sh] interpreters tried for --device %s:\n%s' "$DEVICE" "$REPORT"

if [ -z "$PY" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then GPU_VIEW="$(nvidia-smi -L 2>&1)"; else GPU_VIEW="nvidia-smi not found"; fi
  {
    echo "# rpdist GPU check — not run"
    echo
    echo "No interpreter can run the check on --device $DEVICE (needs torch, numpy, scipy, pandas, pyarrow"
    echo "and, for cuda, a torch that sees the GPU). Tried:"
    echo
    echo '```'
    printf '%s' "$REPORT"
    echo '```'
    echo
    echo "nvidia-smi -L: $GPU_VIEW"
    echo
    echo "Fix: set RPDIST_PYTHON to a Python whose torch has CUDA, or RPDIST_WHEELS to a folder of wheels"
    echo "(see the header of scripts/gpu_check.sh), or rebuild .venv on this machine with \`make venv\`."
  } | tee "$OUT/summary.md"
  exit 2
fi

TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)')"
case "$TORCH_VERSION" in
  2.13.0*) ;;
  *) echo "[gpu_check.sh] WARNING: rpdist pins torch==2.13.0; this check runs torch $TORCH_VERSION" ;;
esac
echo "[gpu_check.sh] $PY benchmarks/gpu_check.py --device $DEVICE --out $OUT ${ARGS[*]}"
exec "$PY" "$ROOT/benchmarks/gpu_check.py" --device "$DEVICE" --out "$OUT" "${ARGS[@]}"
