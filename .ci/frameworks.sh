#!/usr/bin/env bash
# The integrations on the real frameworks: a fresh environment with CUDA torch (run on the CPU),
# detectron2 built from the vendored source, the full mmcv 2.1.0 (compiled ops) from the vendored
# wheel, mmengine and mmdetection from the registry, and drloss_cuda built CPU-only (no nvcc
# needed). Consistency checks come first (pip check, the frameworks' compiled modules), then the
# integration tests with DRLOSS_REQUIRE_FRAMEWORKS=1: a framework that does not import fails them.
#
# Usage: bash .ci/frameworks.sh VENV_DIR   (VENV_DIR is created afresh)
#   DRLOSS_VENDOR_DIR   the vendored sources (default: ../shared/vendor from the repository root)
#   DRLOSS_CI_CACHE     where the detectron2 wheel is kept between runs (default:
#                       ${XDG_CACHE_HOME:-$HOME/.cache}/drloss-ci), keyed by torch, Python and the
#                       vendored files' checksums; removing it only costs the build (minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
source .ci/lib.sh
PART_START=$SECONDS

VENV=${1:?usage: frameworks.sh VENV_DIR}
VENDOR=${DRLOSS_VENDOR_DIR:-../shared/vendor}
if [ ! -f "$VENDOR/SHA256SUMS" ]; then
  echo "no vendored sources at $VENDOR (shared/ beside the clone; DRLOSS_VENDOR_DIR overrides)" >&2
  exit 1
fi
VENDOR=$(realpath "$VENDOR")
CACHE=${DRLOSS_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/drloss-ci}
export MAX_JOBS=${MAX_JOBS:-2}

TORCH=("torch==2.14.1" "torchvision==0.29.1")
DETECTRON2_SOURCE=detectron2-02b5c4e.tar.gz
MMCV_WHEEL=mmcv-2.1.0-cp311-cp311-linux_x86_64.whl
# The frameworks' runtime dependencies, none of which requires torch (each was read from the
# package's metadata); torch stays pinned by a constraints file all the same, so that no
# resolution can replace it. detectron2's: its setup.py's install_requires. mmcv's and
# mmengine's: addict, yapf, pyyaml, rich, termcolor, opencv-python. mmdetection's: scipy,
# shapely, six, terminaltables, pycocotools.
FRAMEWORKS=("mmengine==0.10.7" "mmdet==3.3.0")
DETECTRON2_DEPS=("Pillow>=7.1" matplotlib "pycocotools>=2.0.2" "termcolor>=1.1" "yacs>=0.1.8" tabulate
                 cloudpickle "tqdm>4.29.0" tensorboard "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10"
                 "omegaconf>=2.1,<2.4" "hydra-core>=1.1" black packaging)

STEP_TIMES=()
STEP_NAME=""
timed_step() {  # timed_step NAME: starts a timed step (closing the previous one)
  if [ -n "$STEP_NAME" ]; then STEP_TIMES+=("$(printf '%6ds  %s' $((SECONDS - STEP_START)) "$STEP_NAME")"); fi
  STEP_NAME=$1
  STEP_START=$SECONDS
  [ -n "$STEP_NAME" ] && step "$STEP_NAME"
  return 0
}

timed_step "the vendored files: $VENDOR"
(cd "$VENDOR" && sha256sum --check --strict SHA256SUMS)

timed_step "fresh environment, ${TORCH[*]}"
rm -rf "$VENV"
fresh_venv "$VENV"
constraints="$VENV/torch-constraints.txt"
printf '%s\n' "${TORCH[@]}" >"$constraints"
python -m pip install -q "${TORCH[@]}" ninja wheel
torch_key=$(python -c "import sys, torch; print(f'torch{torch.__version__}-py{sys.version_info[0]}.{sys.version_info[1]}')")

timed_step "detectron2 from $DETECTRON2_SOURCE (a cached wheel when there is one)"
source_sum=$(sha256sum "$VENDOR/$DETECTRON2_SOURCE" | cut -c1-16)
wheel_dir="$CACHE/detectron2-$torch_key-$source_sum"
if ! compgen -G "$wheel_dir/detectron2-*.whl" >/dev/null; then
  echo "no cached wheel in $wheel_dir: building detectron2 (CPU only, MAX_JOBS=$MAX_JOBS)"
  build=$(mktemp -d "${TMPDIR:-/tmp}/drloss-detectron2-XXXXXX")
  tar xzf "$VENDOR/$DETECTRON2_SOURCE" -C "$build"
  env -u FORCE_CUDA -u CUDA_HOME python -m pip wheel -q --no-build-isolation --no-deps -w "$build/wheel" "$build/detectron2"
  mkdir -p "$CACHE"
  rm -rf "$wheel_dir"
  mv "$build/wheel" "$wheel_dir"  # whole or not at all: a half-built wheel is never cached
  rm -rf "$build"
else
  echo "cached: $wheel_dir"
fi
python -m pip install -q --no-deps "$wheel_dir"/detectron2-*.whl

timed_step "full mmcv from $MMCV_WHEEL, ${FRAMEWORKS[*]}, the frameworks' dependencies"
python -m pip install -q --no-deps "$VENDOR/$MMCV_WHEEL"
python -m pip install -q -c "$constraints" "${FRAMEWORKS[@]}" "${DETECTRON2_DEPS[@]}" opencv-python "setuptools<81"

timed_step "consistency: pip check, torch unchanged, the frameworks' compiled ops load"
python -m pip check
python - "${TORCH[@]}" <<'EOF'
import sys
import torch, torchvision
want = dict(arg.split("==") for arg in sys.argv[1:])
have = {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]}
assert have == want, f"the framework installs changed torch: {have}, expected {want}"
import detectron2, detectron2._C, mmcv, mmcv._ext, mmengine, mmdet
import mmdet.models.dense_heads, detectron2.modeling
for module in (torch, torchvision, detectron2, mmcv, mmengine, mmdet):
    print(f"{module.__name__} {module.__version__}")
EOF

timed_step "drloss_cuda, CPU only"
DRLOSS_CPU_ONLY=1 python -m pip install -q --no-build-isolation -e ".[test]"
python .ci/check_build.py --no-cuda

timed_step "the integration tests, every framework required"
DRLOSS_REQUIRE_FRAMEWORKS=1 OMP_NUM_THREADS=2 run_pytest -q -rs -s \
  tests/test_integrations.py tests/test_integration_mmdet.py tests/test_integration_detectron2.py

timed_step ""
echo "== time of each step"
printf '%s\n' "${STEP_TIMES[@]}"
