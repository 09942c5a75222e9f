#!/usr/bin/env bash
# The device check: everything that needs a GPU, in one command that fits a 15-minute lease of
# one GPU (it stops starting steps after DEVICE_CHECK_DEADLINE seconds, 510 by default, so it
# ends within about 9 minutes, build included).
#
#   bash tools/device_check.sh         # on the GPU machine; logs under $OUT (else a fresh temporary folder)
#   bash tools/device_check.sh --cpu   # its plumbing on a machine without a GPU (also DEVICE_CHECK_CPU=1):
#                                      # the installed extension, the GPU-only steps reported
#                                      # 'skipped: no GPU', a small CPU benchmark
#   DEVICE_CHECK_STEPS=build,forward_walks bash tools/device_check.sh   # those steps only
#
# Needs python3 (PYTHON=...) with a CUDA torch, pytest, nvcc, ninja, compute-sanitizer; nothing is
# downloaded. Each step runs under `timeout` with its own limit, cut to what is left before the
# deadline; a step that finds under 5 s left is 'skipped: out of time'. Logs (8 files at most):
# environment.log, build.log, cuda_tests.log, retinanet.log (the RetinaNet test and the training
# step), sanitizer.log (memcheck, racecheck, initcheck and synccheck), benchmark.log and
# benchmark.csv (both benchmark runs), summary.md. The summary table
# (step, status, seconds, last line) is printed last; the exit status is 1 when a step failed or
# timed out ('skipped' and 'missing' are reported, not failures).
#
# Steps and their limits (the times of the latest GPU run, for the steps it had, are in
# benchmarks/results/<gpu>/summary.md):
#   environment          30 s   GPU name, driver, torch/CUDA versions, commit, nvidia-smi line
#   build               240 s   `pip install --no-index --no-build-isolation --no-deps -e .` with ninja,
#                               MAX_JOBS=nproc and the GPU's own architecture only; or no
#                               compile at all: the extension already in drloss_cuda/ when
#                               tools/prebuilt_extension.py finds it built from these very
#                               sources, against this torch, for this GPU (below)
#   cuda_tests          180 s   `pytest -m cuda` (4 workers when pytest-xdist is there)
#   retinanet           120 s   a torchvision RetinaNet on CUDA: the fused loss against the
#                               reference, then 6 SGD steps ('missing' if that test is absent)
#   memcheck             90 s   tools/sanitizer_case.py (small cases, every value checked against
#   racecheck            90 s   float64; misaligned 16-bit logits, running-max kernels and several
#   initcheck            90 s   work items per block among them) under compute-sanitizer, only
#   synccheck            90 s   this project's kernels instrumented (--kernel-name kns=drloss;
#                               initcheck instruments every kernel, so that PyTorch's writes count)
#   benchmark           150 s   the host cost per call (benchmark.py --host-time); then N = 8,
#                               A = 201,600, C = 80 in float32 and bfloat16: fused, fused_pooled,
#                               official_pooled, dense_masked, and the copy bandwidth
#   training_step       200 s   benchmarks/training_step.py: torchvision RetinaNet ResNet-50 FPN,
#                               batch 8, 800x1216, float32 and bfloat16 autocast, with torchvision's
#                               focal loss, the official DR code and the fused loss ('missing'
#                               without torchvision)
#   forward_walks       180 s   the forward's opt-in walks (aligned, pipelined): the benchmark's
#                               fused call with each walk, interleaved in one run (whole calls
#                               against the floor; their CSV rows are not kept);
#                               tools/profile_cuda_kernels.py: the three walks timed in turn,
#                               kernels alone, 3 rounds; then, with 60 s left, tests/test_cuda.py
#                               with DRLOSS_CUDA_FORWARD=pipelined
#   benchmark_compiled  rest    fused and dense_masked_compiled at the same points, as far as
#                               --budget allows (inductor compiles one graph per dtype)
#
# Prebuilt extension: on a machine without the GPU but with the GPU machine's Python and torch,
# build in place (TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 CUDA_HOME=... pip install
# --no-build-isolation --no-deps -e .) and send drloss_cuda/_C.cpython-312-x86_64-linux-gnu.so
# along with the checkout. Every step imports the checkout's own package (PYTHONPATH), so a
# reused extension needs no install.
set -u
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
# An absolute path: cuda_home() puts other folders first on PATH, where another python3 (one
# without torch) may be found.
PY=$(command -v "${PYTHON:-python3}") || { echo "device_check: ${PYTHON:-python3} not found" >&2; exit 2; }
export PY
# The checkout's own package first, whether pip installed it (build) or not (a reused extension).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ "${1:-}" = "--cpu" ] && export DEVICE_CHECK_CPU=1 && shift
CPU_MODE=${DEVICE_CHECK_CPU:-0}
DEADLINE=${DEVICE_CHECK_DEADLINE:-510}
# A comma-separated subset of the steps to run (a rerun after a first run in the same lease:
# include build on a fresh machine); unset or empty, all of them.
SELECTED=${DEVICE_CHECK_STEPS:-}
# The property tests' fixed examples: a device session is too short to chase a new random case.
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}

# ---------------------------------------------------------------------------------------------
# Step bodies: run in a child bash under `timeout` (bash device_check.sh --step NAME). Exit 0 is ok,
# 77 skipped and 78 missing (with the reason as the last line printed), anything else failed.

skip() {
  echo "$1"
  exit 77
}

cuda_home() {
  # CUDA_HOME, when unset, from nvcc itself (torch's extension builder needs it; the nvcc on
  # PATH may be a wrapper outside the toolkit): the same finder CI uses.
  if [ -z "${CUDA_HOME:-}" ]; then
    CUDA_HOME=$(bash .ci/cuda_home.sh 2>/dev/null || true)
  fi
  export CUDA_HOME
  [ -n "${CUDA_HOME:-}" ] && PATH="$CUDA_HOME/bin:$PATH"
  # ninja comes with the Python environment: its bin folder (a venv's, not the folder its
  # python3 links to, which may hold a python3 without torch) after the toolkit's.
  PATH="$PATH:$(dirname "$PY")"
  export PATH
}

step_environment() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(uname -srm), $(nproc) cores"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes, or no git)')"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
    nvidia-smi | grep -m1 "Driver Version"
  else
    echo "nvidia-smi: not found"
  fi
  cuda_home
  echo "CUDA_HOME: ${CUDA_HOME:-unset}; nvcc: $(command -v nvcc >/dev/null 2>&1 && nvcc --version | grep -m1 release || echo 'not found'); ninja: $(ninja --version 2>/dev/null || echo 'not found')"
  echo "compute-sanitizer: $(find_sanitizer >/dev/null && "$(find_sanitizer)" --version | grep -m1 -i version || echo 'not found')"
  "$PY" - <<'PYEOF'
import platform
import torch
try:
    import torchvision
    vision = torchvision.__version__
except ImportError:
    vision = "not installed"
print(f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda}); torchvision {vision}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
else:
    print("GPU: none visible to torch")
PYEOF
}

step_build() {
  if [ "$CPU_MODE" = 1 ]; then
    "$PY" -c "import drloss_cuda; print('installed extension:', drloss_cuda.build_info())" || exit 1
    # The reuse check's plumbing: a build without CUDA kernels is declined.
    "$PY" tools/prebuilt_extension.py --arch 9.0
    skip "skipped: no GPU"
  fi
  cuda_home
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || exit 1
  "$PY" tools/prebuilt_extension.py --arch "$TORCH_CUDA_ARCH_LIST" && exit 0
  export TORCH_CUDA_ARCH_LIST MAX_JOBS=$(nproc) DRLOSS_USE_NINJA=1 FORCE_CUDA=1
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS CUDA_HOME=$CUDA_HOME ninja $(ninja --version 2>/dev/null || echo 'not found')"
  "$PY" -m pip install --no-index --no-build-isolation --no-deps -v -e . || exit 1
  "$PY" -c "import drloss_cuda, drloss_cuda._C as c; info = drloss_cuda.build_info(); print('built', c.__file__, info); assert info['cuda'], 'built without the CUDA kernels'"
}

# pytest "$@", failing when no test passed (a check whose every test skipped checked nothing).
pytest_some_pass() {
  local log
  log=$(mktemp)
  "$PY" -m pytest "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local last
  last=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1)
  rm -f "$log"
  [ "$rc" -ne 0 ] && exit "$rc"
  if ! echo "$last" | grep -q " passed"; then
    echo "no test passed: $last"
    exit 1
  fi
  echo "$last"
}

# The CUDA tests of "$@" (4 workers when pytest-xdist is there), failing when none passed.
pytest_cuda() {
  local workers=()
  "$PY" -c "import xdist" 2>/dev/null && workers=(-n 4)
  pytest_some_pass -q -rs -m cuda "${workers[@]}" "$@"
}

step_cuda_tests() {
  [ "$CPU_MODE" = 1 ] && skip "skipped: no GPU"
  pytest_cuda tests
}

step_retinanet() {
  if [ ! -f tests/test_integrations.py ]; then
    echo "missing: tests/test_integrations.py is not in this checkout"
    exit 78
  fi
  [ "$CPU_MODE" = 1 ] && skip "skipped: no GPU"
  pytest_some_pass -q -rs tests/test_integrations.py -k "retinanet and cuda"
}

find_sanitizer() {
  local candidate
  for candidate in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
    /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [ -n "$candidate" ] && [ -x "$candidate" ] && echo "$candidate" && return 0
  done
  return 1
}

# compute-sanitizer --tool $1 on sanitizer_case.py, only this project's kernels instrumented
# (initcheck: every kernel).
step_sanitizer() {
  local tool=$1
  [ "$CPU_MODE" = 1 ] && skip "skipped: no GPU"
  cuda_home
  local sanitizer
  sanitizer=$(find_sanitizer) || { echo "compute-sanitizer not found"; exit 1; }
  # The filter matches a substring of the mangled kernel names (namespace drloss::cuda); make
  # sure it matches the kernels in this build, so that a clean report means they were checked.
  local so
  so=$("$PY" -c "import drloss_cuda._C as c; print(c.__file__)") || exit 1
  local sass
  sass=$(mktemp)
  if command -v cuobjdump >/dev/null 2>&1 && cuobjdump -sass "$so" >"$sass" 2>&1; then
    local kernels
    kernels=$(grep -o 'Function : [^ ]*' "$sass" | grep -c drloss)
    echo "$tool: the filter kns=drloss matches $kernels kernel instantiations in $(basename "$so")"
    rm -f "$sass"
    [ "$kernels" -gt 0 ] || { echo "the kernel filter matches no kernel: nothing would be checked"; exit 1; }
  else
    echo "cuobjdump could not list the kernels: $(tail -n 1 "$sass" 2>/dev/null)"
    rm -f "$sass"
  fi
  # initcheck instruments every kernel: a write by a kernel left out (PyTorch's copy of the
  # inputs, the poisoning fill) would not count, and the reads after it would look uninitialized.
  local filter=(--kernel-name kns=drloss)
  [ "$tool" = initcheck ] && filter=()
  # The CUDA caching allocator hides out-of-bounds accesses inside its blocks: turn it off.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" "${filter[@]}" \
    --error-exitcode 99 --print-limit 20 "$PY" tools/sanitizer_case.py || exit $?
  echo "$tool: no error in this project's kernels, and every case matches float64"
}

# benchmark.py "$@" with its CSV in $OUT_DIR, then the table's last fused forward+backward line
# again, as one sentence, as the last line (for the summary: the benchmark's own output ends
# with the column legend and the file it wrote).
run_benchmark() {
  local log
  log=$(mktemp)
  "$PY" benchmarks/benchmark.py "$@" --out-dir "$OUT_DIR" --no-plot 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local headline
  headline=$(fused_headline "$log")
  rm -f "$log"
  [ -n "$headline" ] && echo "$headline"
  return "$rc"
}

# "forward_backward N=.. A=.. C=.. DTYPE: fused X ms; speedup of fused over P Yx, ..." from the
# table rows of the last point that fused measured forward+backward (cells: mode, N, A, C,
# dtype, provider, median ms, ..., fused speedup last).
fused_headline() {
  awk -F'|' '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    $2 ~ /^ forward_backward / {
      key = trim($3) " " trim($4) " " trim($5) " " trim($6)
      if (key != last) { last = key; fused = ""; peers = "" }
      if (trim($7) == "fused") fused = trim($8)
      else peers = peers (peers == "" ? "" : ", ") trim($7) " " trim($(NF - 1))
      if (fused != "") { done_key = key; done_fused = fused; done_peers = peers }
    }
    END {
      if (done_key == "") exit
      split(done_key, k, " ")
      line = "forward_backward N=" k[1] " A=" k[2] " C=" k[3] " " k[4] ": fused " done_fused " ms"
      print line (done_peers == "" ? "" : "; speedup of fused over " done_peers)
    }' "$1"
}

step_benchmark() {
  local providers=fused,fused_pooled,official_pooled,dense_masked
  if [ "$CPU_MODE" = 1 ]; then
    run_benchmark --device cpu --sizes 1x2000x80 --dtypes float32,bfloat16 --providers "$providers" --repeats 5 --warmup 1 --max-seconds 1
  else
    # The host's cost per call on the GPU (its own table), then the benchmark, whose headline
    # is the step's last line.
    "$PY" benchmarks/benchmark.py --host-time --device cuda || exit 1
    run_benchmark --device cuda --sizes 8x201600x80 --dtypes float32,bfloat16 --providers "$providers"
  fi
}

step_training_step() {
  [ "$CPU_MODE" = 1 ] && skip "skipped: no GPU"
  if ! "$PY" -c "import torchvision" 2>/dev/null; then
    echo "missing: torchvision is not installed"
    exit 78
  fi
  # No configuration starts in the last 40 s of the step's limit (one takes about 10-20 s).
  [ "$STEP_LIMIT" -lt 60 ] && skip "skipped: out of time ($STEP_LIMIT s left)"
  "$PY" benchmarks/training_step.py --device cuda --max-seconds $((STEP_LIMIT - 40))
}

step_forward_walks() {
  [ "$CPU_MODE" = 1 ] && skip "skipped: no GPU"
  local t0=$SECONDS
  # Each walk's whole call (its finalize and launch gaps included) against the floor, the three
  # walks' calls interleaved in one run (fused speedup: general / walk); the rows go to a
  # scratch CSV, not benchmark.csv.
  local scratch
  scratch=$(mktemp -d)
  echo "--- the fused calls with each forward walk"
  "$PY" benchmarks/benchmark.py --device cuda --sizes 8x201600x80 --dtypes float32,bfloat16 \
    --providers fused,fused_aligned,fused_pipelined --out-dir "$scratch" --no-plot || exit 1
  rm -rf "$scratch"
  # The A/B of the kernels alone; its one-line comparison of the walks ends the step.
  local profile
  profile=$(mktemp)
  "$PY" tools/profile_cuda_kernels.py --sizes 8x201600x80 --dtypes float32,bfloat16 --blocks 0 \
    --forward-walks general,aligned,pipelined --rounds 3 --repeats 10 2>&1 | tee "$profile"
  local rc=${PIPESTATUS[0]}
  local comparison
  comparison=$(tail -n 1 "$profile")
  rm -f "$profile"
  [ "$rc" -ne 0 ] && exit "$rc"
  # After the measurements, as time allows: the CUDA kernels' own tests once more with the
  # pipelined walk wherever it applies (the walk tests themselves ran in cuda_tests).
  local left=$((STEP_LIMIT - (SECONDS - t0)))
  if [ "$left" -ge 60 ]; then
    echo "--- tests/test_cuda.py with DRLOSS_CUDA_FORWARD=pipelined"
    DRLOSS_CUDA_FORWARD=pipelined pytest_cuda tests/test_cuda.py
  else
    echo "--- tests/test_cuda.py with DRLOSS_CUDA_FORWARD=pipelined: not run, $left s left of the step"
  fi
  echo "$comparison"
}

step_benchmark_compiled() {
  [ "$CPU_MODE" = 1 ] && skip "skipped: no GPU"
  # No provider's check starts in the last 60 s of the step's limit: a compile started then
  # could not finish and be timed before the limit.
  local budget=$((STEP_LIMIT - 60))
  [ "$budget" -lt 30 ] && skip "skipped: out of time ($STEP_LIMIT s left)"
  run_benchmark --device cuda --sizes 8x201600x80 --dtypes float32,bfloat16 --providers fused,dense_masked_compiled --budget "$budget"
}

if [ "${1:-}" = "--step" ]; then
  case "$2" in
    environment) step_environment ;;
    build) step_build ;;
    cuda_tests) step_cuda_tests ;;
    retinanet) step_retinanet ;;
    memcheck) step_sanitizer memcheck ;;
    racecheck) step_sanitizer racecheck ;;
    initcheck) step_sanitizer initcheck ;;
    synccheck) step_sanitizer synccheck ;;
    benchmark) step_benchmark ;;
    training_step) step_training_step ;;
    forward_walks) step_forward_walks ;;
    benchmark_compiled) step_benchmark_compiled ;;
    *) echo "device_check: unknown step $2" >&2; exit 2 ;;
  esac
  exit $?
fi

# ---------------------------------------------------------------------------------------------
# The driver: each step in turn under its limit, then the summary.

if [ -n "${1:-}" ]; then
  echo "usage: bash tools/device_check.sh [--cpu]" >&2
  exit 2
fi
if [ -n "${OUT:-}" ]; then
  OUT_DIR=$OUT
else
  OUT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/drloss-device-check-XXXXXX")
fi
mkdir -p "$OUT_DIR"
export OUT_DIR
export PYTHONUNBUFFERED=1
START=$SECONDS
names=() statuses=() seconds=() lasts=()

# run_step NAME LIMIT LOGFILE: the step's output is appended to LOGFILE.
run_step() {
  local name=$1 limit=$2 log="$OUT_DIR/$3"
  local left=$((DEADLINE - (SECONDS - START)))
  local status last secs=0
  if [ -n "$SELECTED" ] && [[ ",$SELECTED," != *",$name,"* ]]; then
    status="skipped: not selected"
    last="DEVICE_CHECK_STEPS=$SELECTED"
  elif [ "$left" -lt 5 ]; then
    status="skipped: out of time"
    last="under 5 s left of the ${DEADLINE} s deadline"
  else
    [ "$limit" -gt "$left" ] && limit=$left
    local before=0
    [ -f "$log" ] && before=$(wc -l <"$log")
    echo "=== $name (limit $limit s)" >>"$log"
    echo "=== $name (limit $limit s, log $log)"
    local t0=$SECONDS
    STEP_LIMIT=$limit timeout -k 5 "$limit" bash "$SELF" --step "$name" >>"$log" 2>&1
    local rc=$?
    secs=$((SECONDS - t0))
    last=$(tail -n +"$((before + 2))" "$log" | grep -v '^[[:space:]]*$' | tail -n 1 | tr '|' '/' | cut -c1-160)
    case $rc in
      0) status=ok ;;
      77) status=$last ;;
      78) status=missing ;;
      124 | 137) status="FAILED: timeout after $limit s" ;;
      *) status="FAILED (exit $rc)" ;;
    esac
    echo "=== $name: $status, $secs s" >>"$log"
    echo "=== $name: $status, $secs s"
    case $status in FAILED*) tail -n +"$((before + 1))" "$log" | tail -n 15 | sed 's/^/    /' ;; esac
  fi
  names+=("$name")
  statuses+=("$status")
  seconds+=("$secs")
  lasts+=("$last")
}

# The steps in order: name, limit in seconds, log file.
STEPS=(
  "environment 30 environment.log"
  "build 240 build.log"
  "cuda_tests 180 cuda_tests.log"
  "retinanet 120 retinanet.log"
  "memcheck 90 sanitizer.log"
  "racecheck 90 sanitizer.log"
  "initcheck 90 sanitizer.log"
  "synccheck 90 sanitizer.log"
  "benchmark 150 benchmark.log"
  "training_step 200 retinanet.log"
  "forward_walks 180 benchmark.log"
  "benchmark_compiled 600 benchmark.log"
)
for wanted in ${SELECTED//,/ }; do
  if ! printf '%s\n' "${STEPS[@]}" | grep -q "^$wanted "; then
    echo "device_check: DEVICE_CHECK_STEPS names no step '$wanted' (steps: $(printf '%s\n' "${STEPS[@]}" | cut -d' ' -f1 | paste -sd' ' -))" >&2
    exit 2
  fi
done

echo "device check$([ "$CPU_MODE" = 1 ] && echo ' (CPU mode)'): logs in $OUT_DIR, deadline $DEADLINE s"
for step in "${STEPS[@]}"; do
  # shellcheck disable=SC2086  # three words: name, limit, log
  run_step $step
done

failed=0
{
  echo
  echo "| step | status | seconds | last line |"
  echo "| --- | --- | --- | --- |"
  for i in "${!names[@]}"; do
    echo "| ${names[$i]} | ${statuses[$i]} | ${seconds[$i]} | ${lasts[$i]} |"
  done
  echo
  echo "total $((SECONDS - START)) s; logs in $OUT_DIR"
} | tee "$OUT_DIR/summary.md"
for status in "${statuses[@]}"; do
  case $status in FAILED*) failed=1 ;; esac
done
exit $failed
