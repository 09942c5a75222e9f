# Final device call: the whole device check, then ncu on the forward kernels.
set -u
export PYTHONUNBUFFERED=1 PYTHON=$(command -v python3)
CHECK=/tmp/check; mkdir -p $CHECK
echo "commit $(git rev-parse HEAD 2>/dev/null)"
OUT=$CHECK DEVICE_CHECK_DEADLINE=225 bash benchmarks/gpu_check.sh > /tmp/gpu_check.out 2>&1; rc=$?
grep -E "^\| (forward|step)|^\| [a-z_]+ \| " $CHECK/benchmark.log | head -40
echo "gpu_check rc=$rc"
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
timeout 45 $NCU --clock-control none --kernel-name regex:"forward_partials_kernel" --launch-count 2 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis $PYTHON .devrun/ncu_case.py > $CHECK/ncu_forward.log 2>&1; echo "ncu rc=$?"
grep -E "forward_partials|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Block Limit Registers|Grid Size" $CHECK/ncu_forward.log | cut -c1-140
cp /tmp/gpu_check.out $CHECK/
tar czf $OUT/final.tgz -C /tmp check
cat $CHECK/summary.md
