#!/usr/bin/env bash
# One script for a lent GPU machine (run from the repository root): build the extension against that
# machine's own torch, run the CUDA/Triton tests, time the kernels. Results go to $OUT (default ./out; through
# the device tool, its own $OUT, which is what comes back).
# SCC_GPU_QUICK=1 (a short re-check): benchmarks first, torch.compile baseline skipped, and only the
# tests of the matmul ops and of the changed CUDA ops (-k expression in SCC_GPU_TESTS_K).
# SCC_GPU_BUDGET (seconds, default 560): the whole script's time. The device tool stops a command at 600 s,
# so each stage's timeout is cut to what is left of the budget; the benchmarks (which write their tables after
# every group, the correlation sweep last) take the rest, so a late stop loses the least.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
BUDGET=${SCC_GPU_BUDGET:-560}
left() { echo $(( BUDGET - SECONDS )); }
# timeout for a stage: its own limit, but never past the budget less `reserve` seconds kept for later stages
limit() { local own=$1 reserve=${2:-0} rest; rest=$(( $(left) - reserve )); (( rest < own )) && own=$rest;
          (( own < 10 )) && own=10; echo "$own"; }
stage() { echo "== $1 (at ${SECONDS} s of ${BUDGET})"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

stage build
build() {
  SCC_BUILD_CUDA=1 SCC_PTXAS_VERBOSE=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 \
    timeout "$(limit 300 240)" python3 setup.py build_ext --inplace >> "$OUT/build.log" 2>&1
}
linked_ok() { python3 -m pytest -q -p no:cacheprovider tests/test_extension_link.py >> "$OUT/build.log" 2>&1; }
: > "$OUT/build.log"
# GPU run 3: the extension built with this machine's default compiler (/opt/gcc) and its Python's link flags
# (-Wl,-Bsymbolic-functions) carried its own copy of libstdc++'s stream code, and every argument check that
# formats an integer crashed. So the system compiler and a plain link line first; the default one if that fails.
built=""
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then
  CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared" LDCXXSHARED="/usr/bin/g++ -shared" build \
    && linked_ok && built="/usr/bin/g++"
fi
if [ -z "$built" ]; then
  echo "building with the default compiler (/usr/bin/g++ missing, failed, or its build carries libstdc++)"
  rm -rf build scc_kernels/_C*.so
  build || { tail -60 "$OUT/build.log"; exit 1; }
  linked_ok || echo "!! the extension carries its own libstdc++ (tests/test_extension_link.py): argument checks may crash"
  built=default
fi
echo "built with $built compiler at ${SECONDS} s"
grep -E "spill stores|spill loads" "$OUT/build.log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" | head -5 || true

# SIGINT, not SIGTERM: pytest then still prints which tests failed
run_tests() {
  stage tests
  timeout -s INT -k 15 "$(limit "${SCC_GPU_TEST_TIMEOUT:-200}" 200)" python3 -m pytest -q -p no:cacheprovider -rf \
    --tb=short tests/test_cuda_ops.py tests/test_gpu_matmul_ops.py tests/test_gpu_cuda_ops.py tests/test_extension_link.py \
    --deselect tests/test_cuda_ops.py::test_argument_errors ${SCC_GPU_TESTS_K:+-k "$SCC_GPU_TESTS_K"} > "$OUT/tests.log" 2>&1
  tail -15 "$OUT/tests.log"
  stage "argument errors (own process: a crash here must not hide the results above)"
  timeout -s INT -k 15 "$(limit 60 150)" python3 -X faulthandler -m pytest -q -p no:cacheprovider --tb=short \
    tests/test_cuda_ops.py::test_argument_errors > "$OUT/tests_args.txt" 2>&1
  tail -5 "$OUT/tests_args.txt"
  # at most 8 files come back from the device machine: this log joins tests.log
  { echo; echo "== tests/test_cuda_ops.py::test_argument_errors"; cat "$OUT/tests_args.txt"; } >> "$OUT/tests.log"
  rm -f "$OUT/tests_args.txt"
  if grep -q "Fatal Python error" "$OUT/tests.log"; then
    stage "argument errors crashed: each bad-input call in its own process (native backtrace: args_bisect.md)"
    timeout "$(limit 150 120)" python3 benchmarks/gpu_args_bisect.py --out "$OUT"
  fi
  stage "fused_match float32 error / PyTorch's, Triton (docs/performance.md: small temperatures)"
  timeout "$(limit 60 120)" python3 benchmarks/fused_match_precision.py --triton > "$OUT/fused_match_precision.md" 2>&1
  tail -17 "$OUT/fused_match_precision.md"
}
run_bench() {
  stage benchmarks
  timeout -s INT -k 15 "$(limit "${SCC_GPU_BENCH_TIMEOUT:-300}" "${1:-0}")" python3 benchmarks/bench_gpu.py --out "$OUT" \
    ${SCC_GPU_QUICK:+--no-compile} 2>&1 | tee "$OUT/bench.log" | tail -45
}
if [ -n "${SCC_GPU_QUICK:-}" ]; then run_bench 200; run_tests; else run_tests; run_bench; fi

# the sums themselves, if time is left (PyTorch's CUDA float32 error differs from its CPU one;
# docs/performance.md has the interpreter's sums for the same inputs)
if (( $(left) > 40 )); then
  stage "fused_match summed float32 errors"
  { echo; timeout "$(limit 60)" python3 benchmarks/fused_match_precision.py --triton --absolute; } \
    >> "$OUT/fused_match_precision.md" 2>&1
fi
echo "== done at ${SECONDS} s"
