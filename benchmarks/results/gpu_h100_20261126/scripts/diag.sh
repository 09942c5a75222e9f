# Why a C++ error thrown by the CUDA op crashes: toolchain facts, each throw in its own process
# (with a SIGSEGV reporter preloaded), and the same with a build made by the system compiler.
PY=${PY:-python3}
REPO=$(pwd)
echo "--- toolchain"; echo "CC=${CC:-} CXX=${CXX:-}"; for c in /opt/gcc/bin/g++ /usr/bin/g++ g++ c++; do command -v $c >/dev/null && echo "$c: $($c --version | head -1) -> $(readlink -f $(command -v $c))"; done
so=$($PY -c "import drloss_cuda._C as c; print(c.__file__)")
echo "--- ldd $so"; ldd "$so" | grep -E "stdc|gcc_s|c10|torch_cpu|cudart"
$PY -c "
import torch, drloss_cuda._C
print('libs in process:', sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libstdc' in l or 'libgcc_s' in l}))
print('torch compiled with:', torch.__config__.show().split('C++ Version')[0].strip().splitlines()[-1] if 'C++' in torch.__config__.show() else '?')
" 2>&1
echo "--- readelf eh_frame_hdr of $so"; readelf -lW "$so" | grep -E "EH_FRAME|GNU_STACK" 
/opt/gcc/bin/gcc -shared -fPIC -O1 -o /tmp/segv.so $REPO/.devrun/segv.c -ldl 2>&1 || gcc -shared -fPIC -O1 -o /tmp/segv.so $REPO/.devrun/segv.c -ldl
run_cases() {
  for case in cpu_op cpu_op_after_cuda_init cuda_op cuda_op_valid_then_bad aten_cuda cuda_op_redispatch_cpu_tensors; do
    out=$(LD_PRELOAD=/tmp/segv.so timeout 30 $PY $REPO/.devrun/throw_case.py $case 2>&1); rc=$?
    echo "[$1] $case: rc=$rc"; echo "$out" | grep -vE "^\s*$" | tail -n 25 | sed 's/^/    /'
  done
}
echo "--- throws, build made by ${CXX:-default}"; run_cases default
if [ -n "${SYSGCC_DIR:-}" ] && [ -f "$SYSGCC_DIR/ok" ]; then
  echo "--- throws, build made by /usr/bin/g++ ($SYSGCC_DIR)"; (cd "$SYSGCC_DIR" && PYTHONPATH="$SYSGCC_DIR" run_cases sysgcc)
else
  echo "--- no system-compiler build: $(tail -n 3 "${SYSGCC_DIR:-/nonexistent}/build.log" 2>/dev/null)"
fi
