#!/bin/bash
# Alternating A/B with one competing busy process on the 2-core machine (a data loader's stand-in).
source /work/venv-cpu/bin/activate
cd /work/main
yes > /dev/null &
BUSY=$!
trap "kill $BUSY" EXIT
for r in 1 2 3; do
  for side in base new; do
    if [ $side = base ]; then export PYTHONPATH=/tmp/ab_base; else export PYTHONPATH=/work/main; fi
    echo "== round $r $side $(date -u +%T) (one busy process beside it)"
    python benchmarks/profile_cpu_kernels.py --sizes 2x100000x80 --dtypes float32 --threads 2 --seconds 3
  done
done
