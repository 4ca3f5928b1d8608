// Small device helpers shared by the scc CUDA kernels (csrc/cuda/*.cu).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <initializer_list>
#include <limits>

namespace scc {
namespace cuda {

#define SCC_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

constexpr int kWarp = 32;
// "Row" kernels use one warp per row and 8 warps (rows) per block.
constexpr int kRowsPerBlock = 8;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline dim3 row_grid(int64_t rows) { return dim3(static_cast<unsigned>(ceil_div(rows, kRowsPerBlock))); }
inline dim3 row_block() { return dim3(kWarp, kRowsPerBlock); }

// Elements loaded together by the vectorised paths.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Vector width 4 when every pointer is aligned for Vec<T, 4> and the rows are a multiple of 4 long.
template <typename T>
inline bool can_vec4(int64_t row_len, std::initializer_list<const void*> ptrs) {
  if (row_len % 4 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<std::uintptr_t>(p) % (sizeof(T) * 4) != 0) return false;
  return true;
}

template <int V, typename T>
__device__ __forceinline__ void load_vec(const T* p, T (&out)[V]) {
  const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(p);
#pragma unroll
  for (int u = 0; u < V; ++u) out[u] = v.v[u];
}

template <int V, typename T>
__device__ __forceinline__ void store_vec(T* p, const T (&in)[V]) {
  Vec<T, V> v;
#pragma unroll
  for (int u = 0; u < V; ++u) v.v[u] = in[u];
  *reinterpret_cast<Vec<T, V>*>(p) = v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// A running maximum with the index of its first occurrence (torch.max(dim) semantics).
template <typename T>
struct MaxIdx {
  T v;
  int64_t i;
};

// Larger value wins, NaN above every number (nan_gt, csrc/common.h: torch.max semantics); on a tie (or two
// NaNs) the smaller index wins, so the result does not depend on the order in which partials are combined.
template <typename T>
__device__ __forceinline__ MaxIdx<T> better(MaxIdx<T> a, MaxIdx<T> b) {
  return (nan_gt(b.v, a.v) || (!nan_gt(a.v, b.v) && b.i < a.i)) ? b : a;
}

template <typename T>
__device__ __forceinline__ MaxIdx<T> warp_max_idx(MaxIdx<T> m) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) {
    MaxIdx<T> other{__shfl_xor_sync(0xffffffffu, m.v, o), __shfl_xor_sync(0xffffffffu, m.i, o)};
    m = better(m, other);
  }
  return m;
}

// use(k, load(k)) for k = first, first + step, ... < n, kS indices per step, all of a step's loads issued
// before the first use: a load -> use loop whose use divides or multiplies waits for every load in turn (one in
// flight per warp, far from the bandwidth; a division's slow-path branch also stops the compiler's own
// unrolling). I is the index type (32-bit where the caller's indices are).
template <int kS, typename T, typename I, typename Load, typename Use>
__device__ __forceinline__ void staged_loop(I first, I n, I step, Load load, Use use) {
  for (I k0 = first; k0 < n; k0 += kS * step) {
    T v[kS];
#pragma unroll
    for (int u = 0; u < kS; ++u) v[u] = k0 + u * step < n ? load(k0 + u * step) : T(0);
#pragma unroll
    for (int u = 0; u < kS; ++u)
      if (k0 + u * step < n) use(k0 + u * step, v[u]);
  }
}

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// Block-wide sum for 1D blocks of at most 1024 threads; the result is valid in every thread.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T partial[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = (blockDim.x + kWarp - 1) / kWarp;
  v = warp_sum(v);
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < nwarps ? partial[lane] : T(0);
  return warp_sum(v);
}

// Block-wide MaxIdx reduction for 1D blocks of at most 1024 threads; valid in every thread.
template <typename T>
__device__ MaxIdx<T> block_max_idx(MaxIdx<T> m) {
  __shared__ T pv[kWarp];
  __shared__ int64_t pi[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = (blockDim.x + kWarp - 1) / kWarp;
  m = warp_max_idx(m);
  __syncthreads();
  if (lane == 0) {
    pv[warp] = m.v;
    pi[warp] = m.i;
  }
  __syncthreads();
  m = lane < nwarps ? MaxIdx<T>{pv[lane], pi[lane]} : MaxIdx<T>{neg_inf<T>(), INT64_MAX};
  return warp_max_idx(m);
}

}  // namespace cuda
}  // namespace scc
