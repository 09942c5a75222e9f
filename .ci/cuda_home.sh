#!/usr/bin/env bash
# Prints the root of the CUDA toolkit that the nvcc on PATH (or $NVCC) belongs to, for CUDA_HOME.
# That nvcc may be a wrapper script or a symlink outside the toolkit, and torch then guesses
# CUDA_HOME as the folder above it, which has no CUDA headers. nvcc's dry run names the folder
# the real compiler runs from ("#$ TOP=<toolkit>/bin/.."), whatever called it; an nvcc that does
# not print it is followed through its symlinks instead.
set -euo pipefail

nvcc=${NVCC:-nvcc}
if ! command -v "$nvcc" >/dev/null 2>&1; then
  echo "cuda_home: $nvcc not found" >&2
  exit 2
fi
top=$("$nvcc" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
if [ -z "$top" ]; then
  top="$(dirname "$(readlink -f "$(command -v "$nvcc")")")/.."
fi
root=$(cd "$top" && pwd -P)
if [ ! -f "$root/include/cuda_runtime.h" ] || [ ! -x "$root/bin/nvcc" ]; then
  echo "cuda_home: $root (found from $nvcc) has no include/cuda_runtime.h or bin/nvcc" >&2
  exit 1
fi
echo "$root"
