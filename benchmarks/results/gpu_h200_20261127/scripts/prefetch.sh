# One device call: four builds of the kernels (L2 prefetch steps forward:backward 0:0 = the
# committed kernels, 1:0, 1:1, 2:2), their kernel times in two interleaved rounds, a bitwise
# comparison of their outputs, and the CUDA tests and memcheck on the 1:1 and 2:2 builds.
set -u
export PYTHONUNBUFFERED=1
PY=$(command -v python3)
C=/tmp/pf; mkdir -p $C
trap 'tar czf $OUT/prefetch.tgz -C /tmp pf' EXIT
cp .devrun/commit.txt .devrun/prefetch.diff .devrun/prefetch.sh $C/
export CUDA_HOME=$(bash .ci/cuda_home.sh || echo /usr/local/cuda)
export PATH="$CUDA_HOME/bin:$PATH:$(dirname $PY)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $C/gpu.txt
T0=$SECONDS
for v in A:0:0 B:1:0 C:1:1 D:2:2; do
  IFS=: read n f b <<<"$v"; d=/tmp/v$n; mkdir -p $d
  tar c --exclude=./.git --exclude=./build --exclude=./.devrun --exclude='*.so' . | tar x -C $d
  sed -i "s/^constexpr int kForwardPrefetchSteps = .*/constexpr int kForwardPrefetchSteps = $f;/; s/^constexpr int kBackwardPrefetchSteps = .*/constexpr int kBackwardPrefetchSteps = $b;/" $d/csrc/cuda/dr_loss_kernels.cu
  grep -h "PrefetchSteps = " $d/csrc/cuda/dr_loss_kernels.cu >> $C/variants.txt
  (cd $d && FORCE_CUDA=1 DRLOSS_USE_NINJA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=4 $PY setup.py build_ext --inplace > $C/build_$n.log 2>&1; echo "build $n rc=$?") &
done
wait
echo "builds: $((SECONDS - T0)) s"
for round in 1 2; do for n in A B C D; do
  (cd /tmp/v$n && PYTHONPATH=/tmp/v$n timeout 60 $PY benchmarks/profile_kernels.py --sizes 8x201600x80 --dtypes float32,bfloat16 --blocks 0 --repeats 30 > $C/profile_${n}_$round.log 2>&1; echo "profile $n round $round rc=$?")
done; done
echo "profiles: $((SECONDS - T0)) s"
for n in A B C D; do PYTHONPATH=/tmp/v$n timeout 60 $PY .devrun/bitwise.py $C/out_$n.pt > $C/bitwise_$n.log 2>&1; echo "bitwise $n rc=$?"; done
$PY .devrun/compare.py $C/out_A.pt $C/out_B.pt $C/out_C.pt $C/out_D.pt | tee $C/compare.txt
rm -f $C/out_*.pt
for n in C D; do
  (cd /tmp/v$n && PYTHONPATH=/tmp/v$n HYPOTHESIS_PROFILE=ci timeout 150 $PY -m pytest -q -m cuda -n 4 -p no:cacheprovider tests > $C/cuda_tests_$n.log 2>&1; echo "tests $n rc=$?"; tail -n 1 $C/cuda_tests_$n.log)
  (cd /tmp/v$n && PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONPATH=/tmp/v$n timeout 60 compute-sanitizer --tool memcheck --kernel-name kns=drloss --error-exitcode 99 --print-limit 20 $PY benchmarks/sanitizer_case.py > $C/memcheck_$n.log 2>&1; echo "memcheck $n rc=$?"; tail -n 2 $C/memcheck_$n.log)
done
echo "total: $((SECONDS - T0)) s"
for f in $C/profile_*_*.log; do echo "== $(basename $f)"; grep -E "per_image|blocks/group" $f | grep -v host | sed 's/blocks\/group auto//' | cut -c1-100; done
