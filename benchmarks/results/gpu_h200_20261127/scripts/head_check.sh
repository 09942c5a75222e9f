# The shipped kernels themselves (HEAD): build for sm_90, the CUDA tests, memcheck.
set -u
export PYTHONUNBUFFERED=1
PY=$(command -v python3)
C=/tmp/hc; mkdir -p $C
trap 'cp $C/* $OUT/ 2>/dev/null' EXIT
cp .devrun/commit.txt $C/
export CUDA_HOME=$(bash .ci/cuda_home.sh || echo /usr/local/cuda)
export PATH="$CUDA_HOME/bin:$PATH:$(dirname $PY)"
T0=$SECONDS
FORCE_CUDA=1 DRLOSS_USE_NINJA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 timeout 90 $PY setup.py build_ext --inplace > $C/build.log 2>&1; echo "build rc=$? $((SECONDS - T0)) s"
HYPOTHESIS_PROFILE=ci timeout 100 $PY -m pytest -q -rs -m cuda -n 4 -p no:cacheprovider tests > $C/cuda_tests.log 2>&1; echo "tests rc=$? $((SECONDS - T0)) s"; tail -n 1 $C/cuda_tests.log
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 40 compute-sanitizer --tool memcheck --kernel-name kns=drloss --error-exitcode 99 --print-limit 20 $PY benchmarks/sanitizer_case.py > $C/memcheck.log 2>&1; echo "memcheck rc=$? $((SECONDS - T0)) s"; tail -n 2 $C/memcheck.log
