# One call on the GPU machine's CPU (an AVX-512 Xeon, 2 threads of 16 cores): the CPU test suite
# at HEAD (the AVX-512 clone, changed by e6076d6 and not run since), the kernels of e6076d6^
# (base) and HEAD alternated by profile_cpu_kernels.py, and the benchmark's fused provider in
# three dtypes, both orders. Everything is tarred into $OUT.
set -u
export PYTHONUNBUFFERED=1
PY=$(command -v python3)
C=/tmp/xe; mkdir -p $C
trap 'tar czf $OUT/xeon.tgz -C /tmp xe' EXIT
cp .devrun/commit.txt .devrun/xeon.sh $C/
lscpu > $C/lscpu.txt; grep -E "Model name|^CPU\(s\)|Model:|family" $C/lscpu.txt; grep -o "avx512[a-z_0-9]*" $C/lscpu.txt | sort -u | tr '\n' ' '; echo
$PY -c "import torch; print('torch', torch.__version__)"
T0=$SECONDS
(DRLOSS_CPU_ONLY=1 MAX_JOBS=8 timeout 200 $PY setup.py build_ext --inplace > $C/build_head.log 2>&1; echo "build head rc=$? $((SECONDS - T0)) s") &
(cd .devrun/base && DRLOSS_CPU_ONLY=1 MAX_JOBS=8 timeout 200 $PY setup.py build_ext --inplace > $C/build_base.log 2>&1; echo "build base rc=$? $((SECONDS - T0)) s") &
wait
for t in . .devrun/base; do PYTHONPATH=$t $PY -c "import drloss_cuda; print('imports', drloss_cuda.__file__, drloss_cuda.build_info() if hasattr(drloss_cuda, 'build_info') else '')"; done
PYTHONPATH=. HYPOTHESIS_PROFILE=ci timeout 200 $PY -m pytest -q -rs -n 8 -p no:cacheprovider tests > $C/tests_head.log 2>&1; echo "tests rc=$? $((SECONDS - T0)) s"; tail -n 1 $C/tests_head.log
for round in 1 2; do for v in base head; do
  t=.; [ $v = base ] && t=.devrun/base
  PYTHONPATH=$t timeout 90 $PY benchmarks/profile_cpu_kernels.py --sizes 2x4000x80,2x100000x80 --threads 2 --dtypes float32,bfloat16,float16 > $C/profile_${v}_$round.log 2>&1; echo "profile $v $round rc=$? $((SECONDS - T0)) s"
done; done
for order in float32,bfloat16,float16 bfloat16,float16,float32; do
  PYTHONPATH=. timeout 100 $PY benchmarks/benchmark.py --device cpu --providers fused --sizes 2x100000x80 --dtypes $order --threads 2 --repeats 30 --no-plot --no-log --out-dir $C/bench_${order%%,*}_first > $C/bench_${order%%,*}_first.log 2>&1; echo "bench $order rc=$? $((SECONDS - T0)) s"
done
echo "total $((SECONDS - T0)) s"
for f in $C/profile_*.log; do echo "== $(basename $f)"; grep -E "forward|backward" $f | sed -E 's/ +/ /g' | cut -c1-90; done
for f in $C/bench_*.log; do echo "== $(basename $f)"; grep -E "fused N=.*median|copy bandwidth \(|pace:" $f | sed -E 's/ +/ /g' | cut -c1-150; done
