#!/usr/bin/env bash
# Compile-checks every csrc/cuda/*.cu with plain nvcc (no torch headers, no GPU needed) for every
# architecture torch's CUDA 13 wheels ship (sm_75, 80, 86, 90, 100, 120) in C++17, and for sm_90
# in C++20 too (the language standard needs one architecture), with every warning an error.
# Object files go to a temporary directory. Prints each check and its register/spill report;
# exits non-zero on any failure.
set -u
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda_compile: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 2
fi
echo "check_cuda_compile: $("$NVCC" --version | tail -n 2 | head -n 1)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "check_cuda_compile: no csrc/cuda/*.cu found" >&2
  exit 2
fi

failures=0
checks=0
for src in "${sources[@]}"; do
  for arch in 75 80 86 90 100 120; do
    stds=(c++17)
    [ "$arch" = 90 ] && stds+=(c++20)
    for std in "${stds[@]}"; do
      checks=$((checks + 1))
      obj="$tmp/$(basename "$src" .cu).sm_${arch}.${std}.o"
      log="$tmp/log"
      # The -D flags are the ones torch's extension builder passes to nvcc.
      if "$NVCC" -std="$std" -O3 --expt-relaxed-constexpr -lineinfo \
          -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
          -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
          -gencode "arch=compute_${arch},code=sm_${arch}" \
          -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
          --resource-usage -Icsrc -c "$src" -o "$obj" >"$log" 2>&1; then
        spills=$(grep -Eo '[0-9]+ bytes spill stores' "$log" | awk '{s += $1} END {print s + 0}')
        regs=$(grep -Eo 'Used [0-9]+ registers' "$log" | awk '{if ($2 > m) m = $2} END {print m + 0}')
        echo "ok    $src sm_${arch} -std=${std} (max ${regs} registers/thread, ${spills} bytes spilled in all)"
      else
        failures=$((failures + 1))
        echo "FAIL  $src sm_${arch} -std=${std}"
        cat "$log"
      fi
    done
  done
done

echo "check_cuda_compile: $checks checks, $failures failed"
[ "$failures" -eq 0 ]
