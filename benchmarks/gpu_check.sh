#!/usr/bin/env bash
# One script for a lent GPU machine (run from the repository root): build the extension against that
# machine's own torch, run the CUDA/Triton tests, time the kernels. Results go to $OUT (default ./out).
# SCC_GPU_QUICK=1 (a short re-check): benchmarks first, torch.compile baseline skipped, and only the
# tests of the matmul ops and of the changed CUDA ops (-k expression in SCC_GPU_TESTS_K).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

echo "== build"
build() {
  SCC_BUILD_CUDA=1 SCC_PTXAS_VERBOSE=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 \
    timeout 360 python3 setup.py build_ext --inplace >> "$OUT/build.log" 2>&1
}
start=$(date +%s)
: > "$OUT/build.log"
build || { tail -60 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
# GPU run 3: the extension built with this machine's default compiler (/opt/gcc) and its Python's link flags
# (-Wl,-Bsymbolic-functions) carried its own copy of libstdc++'s stream code, and every argument check that
# formats an integer crashed. Then rebuild with the system compiler and a plain link line.
if ! python3 -m pytest -q -p no:cacheprovider tests/test_extension_link.py >> "$OUT/build.log" 2>&1 \
   && [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then
  echo "the extension carries its own libstdc++ (tests/test_extension_link.py): rebuilding with /usr/bin/g++"
  rm -rf build scc_kernels/_C*.so
  CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared" LDCXXSHARED="/usr/bin/g++ -shared" build || { echo "failed with /usr/bin/g++: back to the default compiler";
    rm -rf build scc_kernels/_C*.so; build || { tail -60 "$OUT/build.log"; exit 1; }; }
  python3 -m pytest -q -p no:cacheprovider tests/test_extension_link.py 2>&1 | tail -1
  echo "built in $(( $(date +%s) - start )) s"
fi
grep -E "spill stores|spill loads" "$OUT/build.log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" | head -5 || true

run_tests() {
  echo "== tests"
  timeout "${SCC_GPU_TEST_TIMEOUT:-200}" python3 -m pytest -q -p no:cacheprovider -rf --tb=short \
    tests/test_cuda_ops.py tests/test_gpu_matmul_ops.py tests/test_gpu_cuda_ops.py tests/test_extension_link.py --deselect tests/test_cuda_ops.py::test_argument_errors \
    ${SCC_GPU_TESTS_K:+-k "$SCC_GPU_TESTS_K"} > "$OUT/tests.log" 2>&1
  tail -15 "$OUT/tests.log"
}
run_bench() {
  echo "== benchmarks"
  timeout "${SCC_GPU_BENCH_TIMEOUT:-300}" python3 benchmarks/bench_gpu.py --out "$OUT" ${SCC_GPU_QUICK:+--no-compile} 2>&1 \
    | tee "$OUT/bench.log" | tail -45
}
if [ -n "${SCC_GPU_QUICK:-}" ]; then run_bench; run_tests; else run_tests; run_bench; fi

echo "== fused_match float32 error / PyTorch's, Triton (docs/performance.md: small temperatures)"
timeout 60 python3 benchmarks/fused_match_precision.py --triton > "$OUT/fused_match_precision.md" 2>&1
tail -17 "$OUT/fused_match_precision.md"
# the sums themselves (PyTorch's CUDA float32 error differs from its CPU one; docs/performance.md has the
# interpreter's sums for the same inputs)
{ echo; timeout 60 python3 benchmarks/fused_match_precision.py --triton --absolute; } >> "$OUT/fused_match_precision.md" 2>&1

echo "== argument errors (own process: a crash here must not hide the results above)"
timeout 60 python3 -X faulthandler -m pytest -q -p no:cacheprovider --tb=short tests/test_cuda_ops.py::test_argument_errors \
  > "$OUT/tests_args.txt" 2>&1
tail -5 "$OUT/tests_args.txt"
# at most 8 files come back from the device machine: this log joins tests.log
{ echo; echo "== tests/test_cuda_ops.py::test_argument_errors"; cat "$OUT/tests_args.txt"; } >> "$OUT/tests.log"
rm -f "$OUT/tests_args.txt"
if grep -q "Fatal Python error" "$OUT/tests.log"; then
  echo "== argument errors crashed: each bad-input call in its own process (native backtrace: args_bisect.md)"
  timeout 150 python3 benchmarks/gpu_args_bisect.py --out "$OUT"
fi
