#!/usr/bin/env bash
# Everything that needs a GPU, in one run: build the extension with its CUDA kernels, record the
# machine, run the whole test suite, compute-sanitizer memcheck and racecheck on a small
# forward + backward, and the benchmark. Each step's log goes under ${OUT:-benchmarks/results/gpu};
# every step runs whatever the previous ones gave, and a summary table comes last. Exits
# non-zero when any step failed.
#
#   bash benchmarks/gpu_check.sh                     # every step
#   bash benchmarks/gpu_check.sh build pytest memcheck racecheck
#   bash benchmarks/gpu_check.sh benchmark           # after a build, e.g. in a second command
#
# Needs python3 with a CUDA torch, nvcc and pytest. Naming steps lets a machine that limits the
# length of one command run the check in parts. BENCH_ARGS overrides the benchmark's arguments
# (default: the RetinaNet size at N = 2, 8, 16 in float32 and bfloat16).
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}

names=()
codes=()
notes=()

# step NAME LOGFILE COMMAND...: runs COMMAND with its output in LOGFILE (and on the terminal).
step() {
  local name=$1 log=$2
  shift 2
  echo "=== $name: $*" | tee "$OUT_DIR/$log"
  "$@" 2>&1 | tee -a "$OUT_DIR/$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit status $rc" | tee -a "$OUT_DIR/$log"
  names+=("$name")
  codes+=("$rc")
  notes+=("$(grep -v '^===' "$OUT_DIR/$log" | grep -v '^[[:space:]]*$' | tail -n 1 | tr '|' '/' | cut -c1-100)")
  return 0
}

environment() {
  echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 | head -n 1
  "$PY" - <<'PYEOF'
import torch
print("torch:", torch.__version__, "CUDA:", torch.version.cuda, "available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("GPU:", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs", f"{p.total_memory / 2**30:.1f} GiB")
PYEOF
}

build() {
  FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -v -e . || return $?
  "$PY" -c "import drloss_cuda; info = drloss_cuda.build_info(); print('build_info:', info); assert info['cuda'], 'built without CUDA kernels'"
}

tests() {
  "$PY" -m pytest -q -rs tests
}

sanitizer() {
  local tool=$1
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
      [ -x "$d/compute-sanitizer" ] && PATH="$d:$PATH"
    done
  fi
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    echo "compute-sanitizer not found"
    return 127
  fi
  # The CUDA caching allocator hides out-of-bounds accesses inside its blocks: turn it off.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 99 \
    --target-processes all "$PY" benchmarks/sanitizer_case.py
}

benchmark() {
  if [ ! -f benchmarks/benchmark.py ]; then
    echo "benchmarks/benchmark.py does not exist: no benchmark run"
    return 3
  fi
  # shellcheck disable=SC2086
  "$PY" benchmarks/benchmark.py --device cuda ${BENCH_ARGS:---sizes 2x201600x80,8x201600x80,16x201600x80 --dtypes float32,bfloat16 --max-seconds 5}
}

wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(build pytest memcheck racecheck benchmark)
step environment environment.log environment
for name in "${wanted[@]}"; do
  case "$name" in
    build) step build build.log build ;;
    pytest) step pytest pytest.log tests ;;
    memcheck) step memcheck memcheck.log sanitizer memcheck ;;
    racecheck) step racecheck racecheck.log sanitizer racecheck ;;
    benchmark) step benchmark benchmark.log benchmark ;;
    *) echo "gpu_check: unknown step '$name' (build, pytest, memcheck, racecheck, benchmark)" >&2; exit 2 ;;
  esac
done

failed=0
{
  echo
  echo "| step | exit status | last lines |"
  echo "| --- | --- | --- |"
  for i in "${!names[@]}"; do
    echo "| ${names[$i]} | ${codes[$i]} | ${notes[$i]} |"
  done
  echo
  echo "logs: $OUT_DIR"
} | tee "$OUT_DIR/summary.md"
for c in "${codes[@]}"; do
  [ "$c" -ne 0 ] && failed=1
done
exit $failed
