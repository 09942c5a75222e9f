# One device call: the whole device check, the large-slope sweep on CUDA, the kernels alone, and
# a fused-only CPU run at 2 threads on this host (a data point, not the AMD/Intel machines).
set -u
export PYTHONUNBUFFERED=1 PYTHON=$(command -v python3)
C=/tmp/check; mkdir -p $C
cp .devrun/commit.txt $C/commit.txt
{ lscpu; nvidia-smi; } > $C/machine.log 2>&1
OUT=$C DEVICE_CHECK_DEADLINE=330 bash benchmarks/gpu_check.sh > $C/check_stdout.log 2>&1; echo "gpu_check rc=$?"
PYTHONPATH=. timeout 90 $PYTHON benchmarks/results/cpu_xeon_20261127_d/large_slope_sweep.py 3 300 cuda > $C/large_slope_sweep_cuda.txt 2>&1; echo "sweep rc=$?"; tail -n 3 $C/large_slope_sweep_cuda.txt
timeout 80 $PYTHON benchmarks/profile_kernels.py --blocks 0 --repeats 20 > $C/profile_kernels.log 2>&1; echo "profile rc=$?"
timeout 70 $PYTHON benchmarks/benchmark.py --device cpu --threads 2 --sizes 2x100000x80 --dtypes float32 --providers fused --repeats 30 --no-plot --no-log --out-dir $C --csv $C/cpu_fused_2threads.csv > $C/cpu_fused_2threads.log 2>&1; echo "cpu bench rc=$?"
tar czf $OUT/check.tgz -C /tmp check
grep -m1 "Model name" $C/machine.log
grep -E "^- forward" $C/cpu_fused_2threads.log | cut -c1-200
tail -n 25 $C/profile_kernels.log | cut -c1-160
cat $C/summary.md
