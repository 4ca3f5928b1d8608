// conv4d on CUDA: out[b,o,p] = bias[o] + sum_{c, q in [0,K)^4} w[o,c,q] x[b,c,p+q-K/2], zero padding, stride 1.
//
// Forward (direct convolution): a block owns one (b, p1, p2) source position, a tile of the
// (ht, wt) target plane and COB output channels. For every (c, q1, q2) it stages the plane
// x[b, c, p1+q1-P, p2+q2-P] tile plus its halo and the K x K weight slice in shared memory (fp32,
// or fp64 for double inputs); each thread accumulates kR consecutive outputs of the row for COB
// channels in registers, reusing a register window of kR + K - 1 inputs across the q4 taps.
// grad_x is the same kernel on grad with the weights transposed (Cin <-> Cout) and flipped.
// grad_weight[o,c,q] = sum_{b,p} grad[b,o,p] x[b,c,p+q-P] is a split reduction: a block owns one
// (c, q1, q2), COB output channels and a chunk of (b, p1, p2) rows; thread groups split the plane's
// positions, each thread owns one (q3, q4) tap for COB channels; groups are summed in shared
// memory, chunks by a second kernel in a fixed order (deterministic, no atomics).
#include "common.h"
#include "cuda/utils.cuh"
#include "ops.h"

#include <algorithm>
#include <type_traits>

namespace scc {
namespace cuda {
namespace {

constexpr int kR = 4;               // consecutive output columns per thread (forward)
constexpr int kFwdThreads = 128;    // at most, per forward block
constexpr int kGradWThreads = 256;  // per grad_weight block

struct Geo {
  int64_t batch, cin, cout, h1, w1, h2, w2;
};

// a[o][r] += sum_{q3, q4} ws[q3, q4, o] xs[ty + q3, tx kR + r + q4]: one staged (c, q1, q2) slice.
// Each thread keeps a register window of kR + K - 1 inputs across the q4 taps. The weights of a tap lie
// contiguous over the channels: read 16 bytes at a time (every lane the same address: a broadcast), four
// channels per shared-memory load instead of one; one load per channel and tap made the loop bound by
// shared-memory issue (a load per 4 FMAs) rather than by the FMAs.
template <typename acc_t, int K, int COB>
__device__ __forceinline__ void accumulate_slice(const acc_t* __restrict__ xs, const acc_t* __restrict__ ws, int SW,
                                                 int tx, int ty, acc_t (&a)[COB][kR]) {
  constexpr int V = 16 / sizeof(acc_t);  // channels per vector load
#pragma unroll
  for (int q3 = 0; q3 < K; ++q3) {
    acc_t xr[kR + K - 1];
    const acc_t* xrow = xs + (ty + q3) * SW + tx * kR;
#pragma unroll
    for (int t = 0; t < kR + K - 1; ++t) xr[t] = xrow[t];
#pragma unroll
    for (int q4 = 0; q4 < K; ++q4) {
      const acc_t* wt = ws + (q3 * K + q4) * COB;
      if constexpr (COB % V == 0) {
#pragma unroll
        for (int o0 = 0; o0 < COB; o0 += V) {
          acc_t wv[V];
          load_vec<V>(wt + o0, wv);
#pragma unroll
          for (int u = 0; u < V; ++u)
#pragma unroll
            for (int r = 0; r < kR; ++r) a[o0 + u][r] += wv[u] * xr[r + q4];
        }
      } else {
#pragma unroll
        for (int o = 0; o < COB; ++o)
#pragma unroll
          for (int r = 0; r < kR; ++r) a[o][r] += wt[o] * xr[r + q4];
      }
    }
  }
}

// sm_80's ptxas keeps the 1- and 4-channel variants at its default register target (32-40) and spills a few
// loop variables there; a minimum of one block per SM lifts the target. sm_90's default fits without spills
// and leaves those variants at 32-72 registers (more blocks per SM), so it keeps the default.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define SCC_CONV4D_BOUNDS __launch_bounds__(kFwdThreads, 1)
#else
#define SCC_CONV4D_BOUNDS __launch_bounds__(kFwdThreads)
#endif

template <typename scalar_t, typename acc_t, int K, int COB>
__global__ void SCC_CONV4D_BOUNDS
    conv4d_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                  Geo g, int tiles_w, scalar_t* __restrict__ out) {
  constexpr int P = K / 2, KK = K * K;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
  const int SW = TX * kR + K - 1, SH = TY + K - 1;
  // first the K x K x COB weights of the current (c, q1, q2), tap-major (read as 16-byte vectors: the base
  // is aligned), then the SH x SW input tile with halo
  acc_t* ws = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* xs = ws + COB * KK;

  const int64_t pos = blockIdx.x;
  const int64_t p2 = pos % g.w1, p1 = (pos / g.w1) % g.h1, b = pos / (g.w1 * g.h1);
  const int64_t row0 = static_cast<int64_t>(blockIdx.y / tiles_w) * TY;
  const int64_t col0 = static_cast<int64_t>(blockIdx.y % tiles_w) * TX * kR;
  const int64_t o0 = static_cast<int64_t>(blockIdx.z) * COB;
  const int tid = ty * TX + tx, nthreads = TX * TY;
  const int64_t plane = g.h2 * g.w2;

  acc_t acc[COB][kR];
#pragma unroll
  for (int o = 0; o < COB; ++o)
#pragma unroll
    for (int r = 0; r < kR; ++r) acc[o][r] = 0;

  for (int64_t c = 0; c < g.cin; ++c) {
    for (int q1 = 0; q1 < K; ++q1) {
      const int64_t i1 = p1 + q1 - P;
      if (i1 < 0 || i1 >= g.h1) continue;  // uniform over the block: the whole plane is padding
      for (int q2 = 0; q2 < K; ++q2) {
        const int64_t i2 = p2 + q2 - P;
        if (i2 < 0 || i2 >= g.w1) continue;
        const scalar_t* xp = x + (((b * g.cin + c) * g.h1 + i1) * g.w1 + i2) * plane;
        __syncthreads();  // the previous iteration is done with xs / ws
        // the tile by rows, thread (tx, ty) at column steps of TX: no index division per element
        for (int yy = ty; yy < SH; yy += TY) {
          const int64_t y = row0 + yy - P;
          const bool row_in = y >= 0 && y < g.h2;
          for (int xx = tx; xx < SW; xx += TX) {
            const int64_t col = col0 + xx - P;
            xs[yy * SW + xx] = row_in && col >= 0 && col < g.w2 ? static_cast<acc_t>(xp[y * g.w2 + col]) : acc_t(0);
          }
        }
        for (int k = tid; k < COB * KK; k += nthreads) {
          const int64_t o = o0 + k % COB;
          const int tap = k / COB;
          ws[k] = o < g.cout ? static_cast<acc_t>(w[((o * g.cin + c) * KK + q1 * K + q2) * KK + tap]) : acc_t(0);
        }
        __syncthreads();
        // fp32 with few channels per block sums in two levels: the K x K products of this slice go
        // to `part` first, so a long sum (Cin K^4 terms) rounds like Cin K^2 sums of K^2 terms. One
        // fp32 accumulator over 10^4 terms erred up to 1.9x over the test's bound on an H100 (k=5,
        // Cin=16). Not done where it does not pay: 16 channels per block would spill, fp64 needs no
        // help, and fp16/bf16 results are dominated by their own rounding (and spilled at k=5).
        if constexpr (COB <= 4 && std::is_same_v<scalar_t, float>) {
          acc_t part[COB][kR];
#pragma unroll
          for (int o = 0; o < COB; ++o)
#pragma unroll
            for (int r = 0; r < kR; ++r) part[o][r] = 0;
          accumulate_slice<acc_t, K, COB>(xs, ws, SW, tx, ty, part);
#pragma unroll
          for (int o = 0; o < COB; ++o)
#pragma unroll
            for (int r = 0; r < kR; ++r) acc[o][r] += part[o][r];
        } else {
          accumulate_slice<acc_t, K, COB>(xs, ws, SW, tx, ty, acc);
        }
      }
    }
  }

  const int64_t y = row0 + ty;
  if (y >= g.h2) return;
#pragma unroll
  for (int o = 0; o < COB; ++o) {
    if (o0 + o >= g.cout) break;
    const acc_t bv = bias != nullptr ? static_cast<acc_t>(bias[o0 + o]) : acc_t(0);
    scalar_t* op = out + (((b * g.cout + o0 + o) * g.h1 + p1) * g.w1 + p2) * plane + y * g.w2;
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const int64_t xx = col0 + tx * kR + r;
      if (xx < g.w2) op[xx] = static_cast<scalar_t>(acc[o][r] + bv);
    }
  }
}

template <typename scalar_t, typename acc_t, int K, int COB>
__global__ void __launch_bounds__(kGradWThreads, 1)
    conv4d_grad_weight_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x, Geo g, int TH,
                              int TW, int64_t rows_per_chunk, acc_t* __restrict__ part) {
  constexpr int P = K / 2, KK = K * K;
  constexpr int kGroups = kGradWThreads / KK;  // thread groups splitting the positions of a tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int npos = TH * TW, SW = TW + K - 1, SH = TH + K - 1;
  acc_t* gs = reinterpret_cast<acc_t*>(smem_raw);                 // [max(npos, threads)][COB] grad tile
  acc_t* xs = gs + static_cast<int64_t>(max(npos, kGradWThreads)) * COB;  // SH x SW input tile with halo

  const int64_t chunk = blockIdx.x;
  const int64_t c = blockIdx.y / KK;
  const int q1 = (blockIdx.y % KK) / K, q2 = blockIdx.y % K;
  const int64_t o0 = static_cast<int64_t>(blockIdx.z) * COB;
  const int tid = threadIdx.x, grp = tid / KK, qq = tid % KK, q3 = qq / K, q4 = qq % K;
  const int64_t plane = g.h2 * g.w2, nrows = g.batch * g.h1 * g.w1;
  const int64_t tiles_w = ceil_div(g.w2, TW), tiles = ceil_div(g.h2, TH) * tiles_w;

  acc_t acc[COB];
#pragma unroll
  for (int o = 0; o < COB; ++o) acc[o] = 0;

  const int64_t r1 = min(nrows, (chunk + 1) * rows_per_chunk);
  for (int64_t row = chunk * rows_per_chunk; row < r1; ++row) {
    const int64_t p2 = row % g.w1, p1 = (row / g.w1) % g.h1, b = row / (g.w1 * g.h1);
    const int64_t i1 = p1 + q1 - P, i2 = p2 + q2 - P;
    if (i1 < 0 || i1 >= g.h1 || i2 < 0 || i2 >= g.w1) continue;  // uniform: contributes nothing
    const scalar_t* gp = grad + ((b * g.cout * g.h1 + p1) * g.w1 + p2) * plane;  // channel 0
    const int64_t gstride = g.h1 * g.w1 * plane;                                // between channels
    const scalar_t* xp = x + (((b * g.cin + c) * g.h1 + i1) * g.w1 + i2) * plane;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t y0 = (t / tiles_w) * TH, x0 = (t % tiles_w) * TW;
      __syncthreads();  // the previous tile is done with gs / xs
      for (int k = tid; k < COB * npos; k += kGradWThreads) {
        const int o = k / npos, p = k % npos;
        const int64_t y = y0 + p / TW, xx = x0 + p % TW;
        gs[p * COB + o] = (o0 + o < g.cout && y < g.h2 && xx < g.w2)
                              ? static_cast<acc_t>(gp[(o0 + o) * gstride + y * g.w2 + xx])
                              : acc_t(0);
      }
      for (int k = tid; k < SH * SW; k += kGradWThreads) {
        const int64_t y = y0 + k / SW - P, xx = x0 + k % SW - P;
        xs[k] = (y >= 0 && y < g.h2 && xx >= 0 && xx < g.w2) ? static_cast<acc_t>(xp[y * g.w2 + xx]) : acc_t(0);
      }
      __syncthreads();
      if (grp < kGroups) {
        for (int p = grp; p < npos; p += kGroups) {
          const acc_t xv = xs[(p / TW + q3) * SW + p % TW + q4];
#pragma unroll
          for (int o = 0; o < COB; ++o) acc[o] += gs[p * COB + o] * xv;
        }
      }
    }
  }

  // Sum the groups' partials in shared memory (gs is free now), then write this chunk's sums.
  __syncthreads();
  if (grp < kGroups) {
#pragma unroll
    for (int o = 0; o < COB; ++o) gs[tid * COB + o] = acc[o];
  }
  __syncthreads();
  const int64_t k4 = static_cast<int64_t>(KK) * KK;
  for (int k = tid; k < KK * COB; k += kGradWThreads) {
    const int o = k / KK, tap = k % KK;
    if (o0 + o >= g.cout) continue;
    acc_t s = 0;
    for (int gi = 0; gi < kGroups; ++gi) s += gs[(gi * KK + tap) * COB + o];
    part[((chunk * g.cout + o0 + o) * g.cin + c) * k4 + (q1 * K + q2) * KK + tap] = s;
  }
}

// grad_weight[e] = sum over chunks of part[chunk][e].
template <typename scalar_t, typename acc_t>
__global__ void sum_chunks_kernel(const acc_t* __restrict__ part, int64_t nchunks, int64_t numel,
                                  scalar_t* __restrict__ out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= numel) return;
  acc_t s = 0;
  for (int64_t k = 0; k < nchunks; ++k) s += part[k * numel + e];
  out[e] = static_cast<scalar_t>(s);
}

// grad_bias[o] = sum over b and positions of grad[b, o, :]: per-(o, block) partials, then a final sum.
constexpr int kBiasThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void bias_partial_kernel(const scalar_t* __restrict__ grad, int64_t batch, int64_t cout, int64_t n,
                                    acc_t* __restrict__ part) {
  const int64_t o = blockIdx.x;  // channels along x: grid y stops at 65535
  acc_t s = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const scalar_t* gp = grad + (b * cout + o) * n;
    for (int64_t k = static_cast<int64_t>(blockIdx.y) * kBiasThreads + threadIdx.x; k < n;
         k += static_cast<int64_t>(gridDim.y) * kBiasThreads)
      s += static_cast<acc_t>(gp[k]);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) part[o * gridDim.y + blockIdx.y] = s;
}

template <typename scalar_t, typename acc_t>
__global__ void bias_final_kernel(const acc_t* __restrict__ part, int64_t nparts, scalar_t* __restrict__ out) {
  acc_t s = 0;
  for (int64_t k = threadIdx.x; k < nparts; k += kBiasThreads) s += part[blockIdx.x * nparts + k];
  s = block_sum(s);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<scalar_t>(s);
}

// ---- host side ------------------------------------------------------------------------------

// Output channels per block: 1, 4 or 16 (8 for double); more channels per block reuse each staged
// input more.
int pick_cob(int64_t cout) { return cout <= 1 ? 1 : (cout <= 4 ? 4 : 16); }

template <typename scalar_t, typename acc_t, int K, int COB>
void launch_conv(const scalar_t* x, const scalar_t* w, const scalar_t* bias, const Geo& g, scalar_t* out,
                 cudaStream_t stream) {
  // Thread layout: TX threads along wt (kR columns each), TY rows, at most kFwdThreads threads,
  // with the rows split evenly over the row tiles so that little of a tile falls off the plane.
  const int tx = static_cast<int>(std::min<int64_t>(8, ceil_div(g.w2, kR)));
  const int64_t row_tiles = ceil_div(g.h2, kFwdThreads / tx);
  const int ty = static_cast<int>(ceil_div(g.h2, row_tiles));
  const int tiles_w = static_cast<int>(ceil_div(g.w2, static_cast<int64_t>(tx) * kR));
  // grid y tiles the target plane (checked here: the tiling is this function's): over 2^25 cells, or
  // 2^23 rows of at most 4 columns
  TORCH_CHECK_VALUE(row_tiles * tiles_w <= 65535, "scc: conv4d: the target plane (", g.h2, " x ", g.w2,
                    ") is too large for the CUDA grid (", row_tiles * tiles_w, " tiles, 65535 at most)");
  const dim3 grid(g.batch * g.h1 * g.w1, row_tiles * tiles_w, ceil_div(g.cout, COB));
  const size_t smem = sizeof(acc_t) * ((ty + K - 1) * (tx * kR + K - 1) + COB * K * K);
  conv4d_kernel<scalar_t, acc_t, K, COB><<<grid, dim3(tx, ty), smem, stream>>>(x, w, bias, g, tiles_w, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t, int K, int COB>
void launch_grad_weight(const scalar_t* grad, const scalar_t* x, const Geo& g, scalar_t* gw, const at::Tensor& like,
                        cudaStream_t stream) {
  const int tw = static_cast<int>(std::min<int64_t>(g.w2, 32));
  const int th = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(g.h2, kGradWThreads / tw)));
  const int64_t oblocks = ceil_div(g.cout, COB), nrows = g.batch * g.h1 * g.w1;
  // Enough chunks over the (b, p1, p2) rows to fill the GPU with about 2048 blocks.
  int64_t nchunks = std::clamp<int64_t>(ceil_div(2048, g.cin * K * K * oblocks), 1, nrows);
  const int64_t rows_per_chunk = ceil_div(nrows, nchunks);
  nchunks = ceil_div(nrows, rows_per_chunk);
  const int64_t numel = g.cout * g.cin * K * K * K * K;
  at::Tensor part = at::empty({nchunks * numel}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const dim3 grid(nchunks, g.cin * K * K, oblocks);
  const size_t smem =
      sizeof(acc_t) * (static_cast<size_t>(std::max(th * tw, kGradWThreads)) * COB + (th + K - 1) * (tw + K - 1));
  conv4d_grad_weight_kernel<scalar_t, acc_t, K, COB><<<grid, kGradWThreads, smem, stream>>>(
      grad, x, g, th, tw, rows_per_chunk, part.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sum_chunks_kernel<scalar_t, acc_t><<<ceil_div(numel, 256), 256, 0, stream>>>(part.const_data_ptr<acc_t>(), nchunks,
                                                                               numel, gw);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f.template operator()<K, COB>() for the runtime kernel size and channel block. fp64
// accumulators take twice the registers, so double uses blocks of 8 channels instead of 16.
template <typename acc_t, typename F>
void dispatch_k_cob(int64_t k, int cob, F&& f) {
  constexpr int kMaxCob = sizeof(acc_t) == 8 ? 8 : 16;
  auto by_cob = [&](auto kc) {
    constexpr int K = decltype(kc)::value;
    switch (cob) {
      case 1: f.template operator()<K, 1>(); break;
      case 4: f.template operator()<K, 4>(); break;
      default: f.template operator()<K, kMaxCob>(); break;
    }
  };
  switch (k) {
    case 3: by_cob(std::integral_constant<int, 3>{}); break;
    case 5: by_cob(std::integral_constant<int, 5>{}); break;
    default: by_cob(std::integral_constant<int, 7>{}); break;  // k is 3, 5 or 7 (checked by register.cpp)
  }
}

// Arguments are checked by the caller (register.cpp): 6-D, same dtype and device, K in {3, 5, 7},
// sizes that fit the grids.
Geo geometry(const at::Tensor& x, const at::Tensor& weight) {
  return {x.size(0), x.size(1), weight.size(0), x.size(2), x.size(3), x.size(4), x.size(5)};
}

}  // namespace

at::Tensor conv4d(const at::Tensor& x_in, const at::Tensor& weight_in, const std::optional<at::Tensor>& bias_in) {
  const Geo g = geometry(x_in, weight_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = weight_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  at::Tensor out = alloc_output({g.batch, g.cout, g.h1, g.w1, g.h2, g.w2}, x.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(x.scalar_type(), "scc_conv4d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    dispatch_k_cob<acc_t>(w.size(2), pick_cob(g.cout), [&]<int K, int COB>() {
      launch_conv<scalar_t, acc_t, K, COB>(x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp, g,
                                           out.mutable_data_ptr<scalar_t>(), stream);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv4d_backward(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                               const at::Tensor& weight_in, bool bias_defined) {
  const Geo g = geometry(x_in, weight_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = weight_in.contiguous(), grad = grad_in.contiguous();
  // grad_x = conv4d(grad, w') with w'[c, o, q] = w[o, c, K-1-q] (odd K: the padding stays centred).
  const at::Tensor wt = w.flip({2, 3, 4, 5}).transpose(0, 1).contiguous();
  const Geo gt{g.batch, g.cout, g.cin, g.h1, g.w1, g.h2, g.w2};
  at::Tensor grad_x = alloc_output(x.sizes(), x.options());
  at::Tensor grad_w = alloc_output(w.sizes(), w.options());
  at::Tensor grad_b = bias_defined ? alloc_output({g.cout}, x.options()) : at::zeros({0}, x.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(x.scalar_type(), "scc_conv4d_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    dispatch_k_cob<acc_t>(w.size(2), pick_cob(g.cin), [&]<int K, int COB>() {
      launch_conv<scalar_t, acc_t, K, COB>(gp, wt.const_data_ptr<scalar_t>(), nullptr, gt,
                                           grad_x.mutable_data_ptr<scalar_t>(), stream);
    });
    dispatch_k_cob<acc_t>(w.size(2), pick_cob(g.cout), [&]<int K, int COB>() {
      launch_grad_weight<scalar_t, acc_t, K, COB>(gp, xp, g, grad_w.mutable_data_ptr<scalar_t>(), x, stream);
    });
    if (bias_defined) {
      const int64_t n = g.h1 * g.w1 * g.h2 * g.w2;
      const int64_t nparts = std::min<int64_t>(ceil_div(n, kBiasThreads), 64);
      at::Tensor part = at::empty({g.cout * nparts}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      bias_partial_kernel<scalar_t, acc_t><<<dim3(g.cout, nparts), kBiasThreads, 0, stream>>>(
          gp, g.batch, g.cout, n, part.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bias_final_kernel<scalar_t, acc_t><<<g.cout, kBiasThreads, 0, stream>>>(part.const_data_ptr<acc_t>(), nparts,
                                                                               grad_b.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace cuda
}  // namespace scc
