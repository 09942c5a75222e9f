# One H100 call: the device check at HEAD (build, CUDA tests, RetinaNet step, memcheck,
# racecheck, benchmark), then the backward's L2 prefetch (kBackwardPrefetchSteps 1, shipped, vs 0)
# in two interleaved rounds of profile_kernels.py. Everything is tarred into $OUT.
set -u
export PYTHONUNBUFFERED=1
PY=$(command -v python3)
C=/tmp/pf; mkdir -p $C /tmp/check
trap 'tar czf $OUT/h100.tgz -C /tmp pf check; cp /tmp/check/summary.md $OUT/ 2>/dev/null' EXIT
cp .devrun/commit.txt .devrun/h100.sh $C/
export CUDA_HOME=$(bash .ci/cuda_home.sh || echo /usr/local/cuda)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv > $C/gpu.txt
lscpu | grep -E "Model name|^CPU\(s\)" >> $C/gpu.txt
T0=$SECONDS
# The prefetch-free variant, built in its own copy beside the check's build.
d=/tmp/v0; mkdir -p $d
tar c --exclude=./.git --exclude=./build --exclude=./.devrun --exclude='*.so' . | tar x -C $d
sed -i "s/^constexpr int kBackwardPrefetchSteps = .*/constexpr int kBackwardPrefetchSteps = 0;/" $d/csrc/cuda/dr_loss_kernels.cu
grep -h "kBackwardPrefetchSteps = " $d/csrc/cuda/dr_loss_kernels.cu csrc/cuda/dr_loss_kernels.cu > $C/variants.txt
(cd $d && PATH="$CUDA_HOME/bin:$PATH" FORCE_CUDA=1 DRLOSS_USE_NINJA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=4 timeout 240 $PY setup.py build_ext --inplace > $C/build_v0.log 2>&1; echo "build v0 rc=$? $((SECONDS - T0)) s") &
OUT=/tmp/check DEVICE_CHECK_DEADLINE=260 bash benchmarks/gpu_check.sh; echo "check rc=$? $((SECONDS - T0)) s"
wait
(cd /tmp/v0 && PYTHONPATH=/tmp/v0 $PY -c "import drloss_cuda; print('v0 imports', drloss_cuda.__file__)")
for round in 1 2; do
  for v in head v0; do
    dir=$PWD; [ $v = v0 ] && dir=/tmp/v0
    (cd $dir && PYTHONPATH=$dir timeout 60 $PY benchmarks/profile_kernels.py --sizes 8x201600x80 --dtypes float32,bfloat16,float16 --blocks 0 --repeats 30 > $C/profile_${v}_$round.log 2>&1; echo "profile $v round $round rc=$? $((SECONDS - T0)) s")
  done
done
echo "total: $((SECONDS - T0)) s"
for f in $C/profile_*_*.log; do echo "== $(basename $f)"; grep -vE "^#|host launch" $f | cut -c1-120; done
