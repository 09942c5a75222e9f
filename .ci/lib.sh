# Helpers of .ci/run (sourced).

PART_TIMES=()

# part NAME: starts a timed part of the run (closing the previous one).
part() {
  part_close
  PART_NAME=$1
  PART_START=$SECONDS
  echo
  echo "==== $PART_NAME"
}

part_close() {
  if [ -n "${PART_NAME:-}" ]; then
    PART_TIMES+=("$(printf '%6ds  %s' $((SECONDS - PART_START)) "$PART_NAME")")
    PART_NAME=""
  fi
}

step() {
  echo "== [$((SECONDS - PART_START))s into the part] $*"
}

# fresh_venv DIR: creates a virtual environment at DIR and activates it.
fresh_venv() {
  if declare -F deactivate >/dev/null; then deactivate; fi  # the previous venv's function
  python3 -m venv "$1"
  # shellcheck disable=SC1091
  source "$1/bin/activate"
  echo "fresh virtual environment: $1"
}

# run_pytest ARGS...: pytest, with "no tests collected" (exit 5) a failure like any other.
run_pytest() {
  local status=0
  python -m pytest "$@" || status=$?
  if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    return 1
  fi
  return "$status"
}

# readme_has TEXT: fails unless README.md contains TEXT verbatim (so CI runs what it says).
readme_has() {
  if ! grep -qF -- "$1" README.md; then
    echo "README.md no longer contains the command CI runs: $1" >&2
    return 1
  fi
}

# cuda_major NVCC: the CUDA major version of an nvcc ("release 13.0," -> 13).
cuda_major() {
  "$1" --version | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p'
}
