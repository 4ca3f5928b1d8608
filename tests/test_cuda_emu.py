"""The CPU emulator of CUDA kernels (tests/cuda_emu) itself: barriers, shuffles, shared memory, launch limits.

tests/test_cuda_ops.py trusts it to run csrc/cuda/*.cu like a GPU would (for what they compute); here small
kernels check that trust: a block reduction through warp shuffles, static and dynamic shared memory and
__syncthreads gives the exact sum; shared memory nobody wrote reads as NaN; a missing barrier shows; a
barrier that not every live thread can reach is reported; launches a GPU refuses are refused (static and
dynamic shared memory counted together); built with
AddressSanitizer, a read past a tensor or past the shared memory is stopped. The launch rewriting is
checked on text.
"""

from __future__ import annotations

import pytest
import torch

import cuda_emu

pytestmark = pytest.mark.skipif(cuda_emu.enabled() is not None, reason=f"the CUDA emulator is off ({cuda_emu.enabled()})")

KERNELS = r"""
#include <torch/library.h>
#include "cuda/utils.cuh"

namespace scc {
namespace cuda {
namespace {

// out[b] = sum of x[b, :] (n <= 1024): one block per row, the real block_sum (shuffles, static shared).
__global__ void row_sum_kernel(const float* __restrict__ x, int64_t n, float* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  float* staged = reinterpret_cast<float*>(smem_raw);  // through dynamic shared memory, reversed
  const int64_t t = threadIdx.x;
  if (t < n) staged[n - 1 - t] = x[blockIdx.x * n + t];
  __syncthreads();
  const float v = block_sum(t < n ? staged[t] : 0.0f);
  if (t == 0) out[blockIdx.x] = v;
}

__global__ void unwritten_smem_kernel(float* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  out[threadIdx.x] = reinterpret_cast<const float*>(smem_raw)[threadIdx.x];
}

// Lanes 0-15 wait at __syncthreads, lanes 16-31 at a shuffle: neither barrier can be released.
__global__ void deadlock_kernel(float* __restrict__ out) {
  float v = 1.0f;
  if (threadIdx.x < 16) __syncthreads();
  else v = warp_sum(v);
  out[threadIdx.x] = v;
}

__global__ void noop_kernel() {}

// Reads one element past the end of x (global) or of the dynamic shared memory: found only with
// AddressSanitizer (cuda_emu.load(asan=True)), as compute-sanitizer would on a GPU.
__global__ void overrun_kernel(const float* __restrict__ x, int n, bool shared, float* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  float* staged = reinterpret_cast<float*>(smem_raw);
  staged[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  const int k = threadIdx.x + 1;  // k = n for the last thread
  out[threadIdx.x] = shared ? staged[k] : x[k];
}

// out[b, t] = t - 1 (-1 for t = 0), read from the lower neighbour's shared slot: needs the barrier. Without
// it the result is right whenever the lower thread happens to run first (increasing order).
__global__ void neighbour_kernel(bool barrier, float* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  float* slot = reinterpret_cast<float*>(smem_raw);
  const unsigned t = threadIdx.x, n = blockDim.x;
  slot[t] = static_cast<float>(t);
  if (barrier) __syncthreads();
  out[blockIdx.x * n + t] = t > 0 ? slot[t - 1] : -1.0f;
}

}  // namespace

// with `smem` bytes of dynamic shared memory (at least the row), beside block_sum's static 128 bytes
at::Tensor row_sum_smem(const at::Tensor& x, int64_t smem) {
  at::Tensor out = at::empty({x.size(0)}, x.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  row_sum_kernel<<<x.size(0), 1024, smem, stream>>>(x.const_data_ptr<float>(), x.size(1),
                                                    out.mutable_data_ptr<float>());
  return out;
}

at::Tensor row_sum(const at::Tensor& x) { return row_sum_smem(x, x.size(1) * sizeof(float)); }

at::Tensor unwritten_smem() {
  at::Tensor out = at::empty({64}, at::kFloat);
  unwritten_smem_kernel<<<1, 64, 64 * sizeof(float)>>>(out.mutable_data_ptr<float>());
  return out;
}

at::Tensor deadlock() {
  at::Tensor out = at::empty({32}, at::kFloat);
  deadlock_kernel<<<1, 32>>>(out.mutable_data_ptr<float>());
  return out;
}

at::Tensor neighbours(bool barrier) {
  at::Tensor out = at::empty({2, 64}, at::kFloat);
  neighbour_kernel<<<2, 64, 64 * sizeof(float)>>>(barrier, out.mutable_data_ptr<float>());
  return out;
}

void launch(int64_t threads, int64_t grid_y, int64_t smem) { noop_kernel<<<dim3(1, grid_y), threads, smem>>>(); }

at::Tensor overrun(const at::Tensor& x, bool shared) {
  at::Tensor out = at::empty({x.size(0)}, x.options());
  overrun_kernel<<<1, x.size(0), x.size(0) * sizeof(float)>>>(x.const_data_ptr<float>(), x.size(0), shared,
                                                               out.mutable_data_ptr<float>());
  return out;
}

}  // namespace cuda
}  // namespace scc

TORCH_LIBRARY(scc_cuda_emu_selftest, m) {
  m.def("row_sum(Tensor x) -> Tensor", &scc::cuda::row_sum);
  m.def("row_sum_smem(Tensor x, int smem) -> Tensor", &scc::cuda::row_sum_smem);
  m.def("unwritten_smem() -> Tensor", &scc::cuda::unwritten_smem);
  m.def("deadlock() -> Tensor", &scc::cuda::deadlock);
  m.def("launch(int threads, int grid_y, int smem) -> ()", &scc::cuda::launch);
  m.def("neighbours(bool barrier) -> Tensor", &scc::cuda::neighbours);
  m.def("overrun(Tensor x, bool shared) -> Tensor", &scc::cuda::overrun);
}
"""


def _build(asan: bool = False):
    cuda_emu.build("scc_cuda_emu_selftest", {"selftest.cpp": cuda_emu.translate(KERNELS), **cuda_emu.translated_headers()},
                   asan=asan)
    return torch.ops.scc_cuda_emu_selftest


@pytest.fixture(scope="module")
def ops():
    return _build()


@pytest.mark.parametrize("n", [1, 31, 33, 200, 1024])
def test_block_reduction_is_exact(ops, n):
    # integers in [-1000, 1000]: every float32 partial sum is exact, whatever the order
    x = torch.randint(-1000, 1001, (3, n), generator=torch.Generator().manual_seed(n)).float()
    torch.testing.assert_close(ops.row_sum(x), x.sum(1), rtol=0, atol=0)


def test_unwritten_shared_memory_reads_as_nan(ops):
    assert torch.isnan(ops.unwritten_smem()).all()


def test_a_missing_barrier_shows(ops):
    # Threads run one at a time, and every other block in decreasing order: there a thread reads its lower
    # neighbour's slot before the neighbour wrote it.
    torch.testing.assert_close(ops.neighbours(True), (torch.arange(64) - 1).float().expand(2, 64))
    racy = ops.neighbours(False)
    assert torch.isnan(racy).any(dim=1).tolist().count(True) == 1  # one of the two blocks


def test_a_barrier_not_every_thread_reaches_is_reported(ops):
    with pytest.raises(RuntimeError, match="deadlock"):
        ops.deadlock()


@pytest.mark.parametrize("threads,grid_y,smem,word", [(1025, 1, 0, "invalid launch"), (32, 65536, 0, "invalid launch"),
                                                      (32, 1, 48 * 1024 + 4, "shared memory")])
def test_launches_a_gpu_refuses_are_refused(ops, threads, grid_y, smem, word):
    ops.launch(1024, 1, 48 * 1024)  # the limits themselves are fine
    ops.launch(1, 65535, 0)
    with pytest.raises(RuntimeError, match=word):
        ops.launch(threads, grid_y, smem)


def test_static_and_dynamic_shared_memory_share_the_limit(ops):
    # A GPU refuses a block whose static and dynamic shared memory together exceed 48 KiB (without an opt-in),
    # though each fits alone: calibrate's one-block-per-row kernel sized its dynamic buffer to the whole 48 KiB.
    x = torch.arange(6.0).view(2, 3)
    torch.testing.assert_close(ops.row_sum_smem(x, 48 * 1024 - 128), x.sum(1))  # block_sum's 32 floats
    with pytest.raises(RuntimeError, match="128 bytes of static and 49028 bytes of dynamic"):
        ops.row_sum_smem(x, 48 * 1024 - 124)


def test_launch_rewriting():
    src = ("  k<T, 4><<<grid, dim3(a, b), smem, stream>>>(x, f(y, z),\n      w);\n"
           "  if (c) g<<<n, 32>>>();\n"
           "  extern __shared__ unsigned char smem_raw[];\n"
           "  extern __shared__ __align__(16) unsigned char aligned_raw[];\n"
           "  __shared__ float a[8], b[2][K / 2];  // two arrays\n")
    out = cuda_emu.translate(src)
    assert ('::emu::launch(::emu::dims(grid, "grid"), ::emu::dims(dim3(a, b), "block"), smem, '
            "[&]() { k<T, 4>(x, f(y, z),\n      w); });") in out
    assert 'if (c) ::emu::launch(::emu::dims(n, "grid"), ::emu::dims(32, "block"), 0, [&]() { g(); });' in out
    assert "unsigned char* smem_raw = reinterpret_cast<unsigned char*>(::emu::dynamic_smem());" in out
    assert "unsigned char* aligned_raw = reinterpret_cast<unsigned char*>(::emu::dynamic_smem());" in out
    assert ("  static char a_emu_site; float(&a)[8] = ::emu::block_shared<float[8]>(&a_emu_site); "
            "static char b_emu_site; float(&b)[2][K / 2] = ::emu::block_shared<float[2][K / 2]>(&b_emu_site);"
            "  // two arrays") in out
    assert "<<<" not in out and "__shared__" not in out


# ---- memory checking (AddressSanitizer) ------------------------------------------------------------

asan_only = pytest.mark.skipif(cuda_emu.asan_runtime() is None, reason="the C++ compiler has no AddressSanitizer runtime")


def _overrun_child(shared: str, asan: str) -> None:
    """Child process: one overrunning launch (with the instrumented build when asan == "1")."""
    ops = _build(asan=asan == "1")
    x = torch.arange(1, 33, dtype=torch.float32)
    out = ops.overrun(x, shared == "shared")
    print("finished", out[:-1].tolist() == x[1:].tolist())


@asan_only
@pytest.mark.parametrize("shared", ["global", "shared"])
def test_asan_finds_an_overrun(shared):
    # The same kernel runs unnoticed without the sanitizer (it reads whatever lies past the end) and is
    # stopped with it, pointing at the kernel: reads outside a tensor or outside shared memory are found.
    plain = cuda_emu.run_child([__file__, "_overrun_child", shared, "0"], asan=False)
    assert plain.returncode == 0 and "finished True" in plain.stdout, plain.stderr[-3000:]
    checked = cuda_emu.run_child([__file__, "_overrun_child", shared, "1"], asan=True)
    assert checked.returncode != 0 and "heap-buffer-overflow" in checked.stderr, checked.stderr[-3000:]
    assert "cuda::overrun(" in checked.stderr, checked.stderr[-3000:]  # the launch (the kernel is inlined)


if __name__ == "__main__":  # a child of run_child
    import sys

    globals()[sys.argv[1]](*sys.argv[2:])
