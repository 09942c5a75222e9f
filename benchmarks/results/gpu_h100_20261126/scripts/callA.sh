# Device call A: build, why errors crash, kernel times and counters, the compile test, a benchmark.
set -u
export PYTHONUNBUFFERED=1 PY=$(command -v python3)
L=/tmp/logs; mkdir -p $L
T0=$SECONDS; t() { echo "[t=$((SECONDS - T0))s] $*"; }
# A second build by the system compiler, in the background, for the crash diagnosis.
export SYSGCC_DIR=/tmp/sysgcc
if [ -x /usr/bin/g++ ] && [ "$(readlink -f /usr/bin/g++)" != "$(readlink -f /opt/gcc/bin/g++ 2>/dev/null)" ]; then
  mkdir -p $SYSGCC_DIR && cp -r csrc drloss_cuda setup.py pyproject.toml $SYSGCC_DIR/
  (cd $SYSGCC_DIR && CC=/usr/bin/gcc CXX=/usr/bin/g++ TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=4 CUDA_HOME=/usr/local/cuda FORCE_CUDA=1 timeout 150 $PY setup.py build_ext --inplace >build.log 2>&1 && touch ok) &
fi
t env; bash benchmarks/gpu_check.sh --step environment > $L/environment.log 2>&1; tail -4 $L/environment.log
t build; timeout 150 bash benchmarks/gpu_check.sh --step build > $L/build.log 2>&1; echo "build rc=$?"; tail -1 $L/build.log
t compile_test; timeout 60 $PY -m pytest -q -x tests/test_compile_autocast.py -k "cuda" -p no:cacheprovider > $L/compile_test.log 2>&1; tail -3 $L/compile_test.log | cut -c1-300
t profile; timeout 70 $PY benchmarks/profile_kernels.py --repeats 10 > $L/profile.log 2>&1; echo "profile rc=$?"; cat $L/profile.log
t bench; timeout 40 $PY benchmarks/benchmark.py --device cuda --sizes 8x201600x80 --dtypes float32,bfloat16 --providers fused,fused_pooled --repeats 20 --no-plot --no-log --out-dir /tmp/benchA > $L/bench.log 2>&1; echo "bench rc=$?"; grep -E "^\| forward|timing:|copy bandwidth" $L/bench.log
wait
t diag; timeout 75 bash .devrun/diag.sh > $L/diag.log 2>&1; echo "diag rc=$?"; cat $L/diag.log | cut -c1-250
t ncu; NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
timeout 50 $NCU --clock-control none --kernel-name regex:"forward_kernel|backward_kernel" --launch-count 4 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats $PY .devrun/ncu_case.py > $L/ncu.log 2>&1; echo "ncu rc=$?"
grep -E "drloss|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Theoretical Occupancy|Stall|Issue" $L/ncu.log | cut -c1-150 | head -60
cp -r /tmp/benchA $L/ 2>/dev/null; cp $SYSGCC_DIR/build.log $L/sysgcc_build.log 2>/dev/null
tar czf $OUT/callA.tgz -C /tmp logs; t done
