// calibrate on CUDA: P = softmax over j and one extra bin of l_ij = (log(corr_ij + eps) + lam log(g_ij + eps)) / tau.
// One block per row when the row's logits fit in shared memory: the row is read once, its logits
// kept in shared memory for the write pass. Longer rows: one warp per row, an online (max, sum)
// pass, then a write pass that recomputes the logits. bin_logit is read on the device (no host
// sync); -inf means no bin.
#include "common.h"
#include "cuda/utils.cuh"
#include "ops.h"

namespace scc {
namespace cuda {
namespace {

template <typename acc_t>
struct Calib {
  acc_t lam, inv_tau, eps;
  __device__ __forceinline__ acc_t logit(acc_t c, acc_t g) const {
    return (log(c + eps) + lam * log(g + eps)) * inv_tau;
  }
};

// Running softmax normaliser: sum_k exp(l_k - m). m = -inf means "nothing seen" (s is then 0).
template <typename acc_t>
struct Lse {
  acc_t m, s;
};

template <typename acc_t>
__device__ __forceinline__ Lse<acc_t> lse_add(Lse<acc_t> a, acc_t l) {
  if (l > a.m) return {l, a.s * exp(a.m - l) + acc_t(1)};
  if (l == neg_inf<acc_t>()) return a;  // exp(-inf) = 0; also avoids exp(-inf - -inf)
  return {a.m, a.s + exp(l - a.m)};
}

template <typename acc_t>
__device__ __forceinline__ Lse<acc_t> lse_merge(Lse<acc_t> a, Lse<acc_t> b) {
  if (a.m == neg_inf<acc_t>()) return b;
  if (b.m == neg_inf<acc_t>()) return a;
  const acc_t m = max(a.m, b.m);
  return {m, a.s * exp(a.m - m) + b.s * exp(b.m - m)};
}

template <typename scalar_t, typename acc_t, int V>
__global__ void calibrate_kernel(const scalar_t* __restrict__ corr, const scalar_t* __restrict__ g,
                                 const scalar_t* __restrict__ bin_logit, int64_t rows, int64_t nt,
                                 Calib<acc_t> k, scalar_t* __restrict__ p, scalar_t* __restrict__ pu) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;  // warp-uniform
  const scalar_t* cr = corr + row * nt;
  const scalar_t* gr = g + row * nt;
  Lse<acc_t> st{neg_inf<acc_t>(), acc_t(0)};
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * V; j < nt; j += kWarp * V) {
    scalar_t cv[V], gv[V];
    load_vec<V>(cr + j, cv);
    load_vec<V>(gr + j, gv);
#pragma unroll
    for (int u = 0; u < V; ++u) st = lse_add(st, k.logit(static_cast<acc_t>(cv[u]), static_cast<acc_t>(gv[u])));
  }
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const Lse<acc_t> other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
    st = lse_merge(st, other);
  }
  const acc_t bin = static_cast<acc_t>(*bin_logit);
  st = lse_add(st, bin);
  const acc_t inv_s = acc_t(1) / st.s;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * V; j < nt; j += kWarp * V) {
    scalar_t cv[V], gv[V], out[V];
    load_vec<V>(cr + j, cv);
    load_vec<V>(gr + j, gv);
#pragma unroll
    for (int u = 0; u < V; ++u)
      out[u] = static_cast<scalar_t>(exp(k.logit(static_cast<acc_t>(cv[u]), static_cast<acc_t>(gv[u])) - st.m) * inv_s);
    store_vec<V>(p + row * nt + j, out);
  }
  if (threadIdx.x == 0) pu[row] = static_cast<scalar_t>(exp(bin - st.m) * inv_s);
}

constexpr int kRowThreads = 256;
constexpr int64_t kBlockSmem = 48 * 1024;  // static + dynamic shared memory of a block without an opt-in

// One block per row; the logits stay in shared memory between the reduction and the write pass.
// Each thread reads back only the logits it wrote, so the reduction's barriers are the only ones.
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kRowThreads)
    calibrate_row_kernel(const scalar_t* __restrict__ corr, const scalar_t* __restrict__ g,
                         const scalar_t* __restrict__ bin_logit, int64_t nt, Calib<acc_t> k,
                         scalar_t* __restrict__ p, scalar_t* __restrict__ pu) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* logit = reinterpret_cast<acc_t*>(smem_raw);
  __shared__ acc_t wm[kRowThreads / kWarp], ws[kRowThreads / kWarp];
  const int64_t row = blockIdx.x, base = row * nt;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  Lse<acc_t> st{neg_inf<acc_t>(), acc_t(0)};
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * V; j < nt; j += kRowThreads * V) {
    scalar_t cv[V], gv[V];
    load_vec<V>(corr + base + j, cv);
    load_vec<V>(g + base + j, gv);
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const acc_t l = k.logit(static_cast<acc_t>(cv[u]), static_cast<acc_t>(gv[u]));
      logit[j + u] = l;
      st = lse_add(st, l);
    }
  }
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const Lse<acc_t> other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
    st = lse_merge(st, other);
  }
  if (lane == 0) {
    wm[warp] = st.m;
    ws[warp] = st.s;
  }
  __syncthreads();
  st = {wm[0], ws[0]};
#pragma unroll
  for (int w = 1; w < kRowThreads / kWarp; ++w) st = lse_merge(st, Lse<acc_t>{wm[w], ws[w]});
  const acc_t bin = static_cast<acc_t>(*bin_logit);
  st = lse_add(st, bin);
  const acc_t inv_s = acc_t(1) / st.s;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * V; j < nt; j += kRowThreads * V) {
    scalar_t out[V];
#pragma unroll
    for (int u = 0; u < V; ++u) out[u] = static_cast<scalar_t>(exp(logit[j + u] - st.m) * inv_s);
    store_vec<V>(p + base + j, out);
  }
  if (threadIdx.x == 0) pu[row] = static_cast<scalar_t>(exp(bin - st.m) * inv_s);
}

// Per row: gl = s (G - sum(G s)) with s = [P, Pu]; writes grad_corr, grad_g and the bin's gl.
template <typename scalar_t, typename acc_t, int V>
__global__ void calibrate_backward_kernel(const scalar_t* __restrict__ gp, const scalar_t* __restrict__ gu,
                                          const scalar_t* __restrict__ p, const scalar_t* __restrict__ pu,
                                          const scalar_t* __restrict__ corr, const scalar_t* __restrict__ g,
                                          int64_t rows, int64_t nt, Calib<acc_t> k,
                                          scalar_t* __restrict__ gcorr, scalar_t* __restrict__ gg,
                                          double* __restrict__ gbin_rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;  // warp-uniform
  const int64_t base = row * nt;
  acc_t dot = 0;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * V; j < nt; j += kWarp * V) {
    scalar_t a[V], b[V];
    load_vec<V>(gp + base + j, a);
    load_vec<V>(p + base + j, b);
#pragma unroll
    for (int u = 0; u < V; ++u) dot += static_cast<acc_t>(a[u]) * static_cast<acc_t>(b[u]);
  }
  const acc_t gur = static_cast<acc_t>(gu[row]), pur = static_cast<acc_t>(pu[row]);
  dot = warp_sum(dot) + gur * pur;
  const acc_t scale_g = k.lam * k.inv_tau;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * V; j < nt; j += kWarp * V) {
    scalar_t a[V], b[V], cv[V], gv[V], oc[V], og[V];
    load_vec<V>(gp + base + j, a);
    load_vec<V>(p + base + j, b);
    load_vec<V>(corr + base + j, cv);
    load_vec<V>(g + base + j, gv);
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const acc_t gl = static_cast<acc_t>(b[u]) * (static_cast<acc_t>(a[u]) - dot);
      oc[u] = static_cast<scalar_t>(gl * k.inv_tau / (static_cast<acc_t>(cv[u]) + k.eps));
      og[u] = static_cast<scalar_t>(gl * scale_g / (static_cast<acc_t>(gv[u]) + k.eps));
    }
    store_vec<V>(gcorr + base + j, oc);
    store_vec<V>(gg + base + j, og);
  }
  if (threadIdx.x == 0) gbin_rows[row] = static_cast<double>(pur) * (static_cast<double>(gur) - dot);
}

// grad_bin = sum over all rows (one block, fixed order), in double: B * Ns terms.
template <typename scalar_t>
__global__ void sum_rows_kernel(const double* __restrict__ v, int64_t n, scalar_t* __restrict__ out) {
  double s = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) s += v[k];
  s = block_sum(s);
  if (threadIdx.x == 0) *out = static_cast<scalar_t>(s);
}

template <typename acc_t>
Calib<acc_t> make_calib(double lam, double tau, double eps) {
  return {static_cast<acc_t>(lam), static_cast<acc_t>(1.0 / tau), static_cast<acc_t>(eps)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> calibrate(const at::Tensor& corr_in, const at::Tensor& g_in, double lam,
                                             double tau, const at::Tensor& bin_logit_in, double eps) {
  const c10::cuda::CUDAGuard guard(corr_in.device());
  const at::Tensor corr = corr_in.contiguous(), g = g_in.contiguous();
  const int64_t batch = corr.size(0), ns = vol_ns(corr), nt = vol_nt(corr), rows = batch * ns;
  at::Tensor p = alloc_output({batch, ns, nt}, corr.options());
  at::Tensor pu = alloc_output({batch, ns}, corr.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(corr.scalar_type(), "scc_calibrate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Calib<acc_t> k = make_calib<acc_t>(lam, tau, eps);
    const scalar_t* cp = corr.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* bp = bin_logit_in.const_data_ptr<scalar_t>();
    scalar_t* pp = p.mutable_data_ptr<scalar_t>();
    scalar_t* pup = pu.mutable_data_ptr<scalar_t>();
    const int64_t smem = nt * static_cast<int64_t>(sizeof(acc_t));
    // the logits share the block's 48 KiB with the row kernel's static wm / ws (a GPU refuses the launch
    // when the two together exceed it)
    const bool fits = smem <= kBlockSmem - 2 * (kRowThreads / kWarp) * static_cast<int64_t>(sizeof(acc_t));
    const bool vec = can_vec4<scalar_t>(nt, {cp, gp, pp});
    if (fits && vec) {
      calibrate_row_kernel<scalar_t, acc_t, 4><<<rows, kRowThreads, smem, stream>>>(cp, gp, bp, nt, k, pp, pup);
    } else if (fits) {
      calibrate_row_kernel<scalar_t, acc_t, 1><<<rows, kRowThreads, smem, stream>>>(cp, gp, bp, nt, k, pp, pup);
    } else if (vec) {
      calibrate_kernel<scalar_t, acc_t, 4><<<row_grid(rows), row_block(), 0, stream>>>(cp, gp, bp, rows, nt, k, pp, pup);
    } else {
      calibrate_kernel<scalar_t, acc_t, 1><<<row_grid(rows), row_block(), 0, stream>>>(cp, gp, bp, rows, nt, k, pp, pup);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {p, pu};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> calibrate_backward(
    const at::Tensor& grad_P_in, const at::Tensor& grad_unmatched_in, const at::Tensor& P_in,
    const at::Tensor& P_unmatched_in, const at::Tensor& corr_in, const at::Tensor& g_in, double lam, double tau,
    double eps) {
  const c10::cuda::CUDAGuard guard(corr_in.device());
  const at::Tensor corr = corr_in.contiguous(), g = g_in.contiguous();
  const int64_t rows = corr.size(0) * vol_ns(corr), nt = vol_nt(corr);
  const at::Tensor gp = grad_P_in.contiguous(), gu = grad_unmatched_in.contiguous();
  const at::Tensor p = P_in.contiguous(), pu = P_unmatched_in.contiguous();
  at::Tensor gcorr = alloc_output(corr.sizes(), corr.options());
  at::Tensor gg = alloc_output(g.sizes(), g.options());
  at::Tensor gbin = alloc_output({}, corr.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(corr.scalar_type(), "scc_calibrate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Calib<acc_t> k = make_calib<acc_t>(lam, tau, eps);
    at::Tensor gbin_rows = at::empty({rows}, corr.options().dtype(at::kDouble));
    const scalar_t* a = gp.const_data_ptr<scalar_t>();
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    const scalar_t* cp = corr.const_data_ptr<scalar_t>();
    const scalar_t* gv = g.const_data_ptr<scalar_t>();
    scalar_t* oc = gcorr.mutable_data_ptr<scalar_t>();
    scalar_t* og = gg.mutable_data_ptr<scalar_t>();
    if (can_vec4<scalar_t>(nt, {a, pp, cp, gv, oc, og})) {
      calibrate_backward_kernel<scalar_t, acc_t, 4><<<row_grid(rows), row_block(), 0, stream>>>(
          a, gu.const_data_ptr<scalar_t>(), pp, pu.const_data_ptr<scalar_t>(), cp, gv, rows, nt, k, oc, og,
          gbin_rows.mutable_data_ptr<double>());
    } else {
      calibrate_backward_kernel<scalar_t, acc_t, 1><<<row_grid(rows), row_block(), 0, stream>>>(
          a, gu.const_data_ptr<scalar_t>(), pp, pu.const_data_ptr<scalar_t>(), cp, gv, rows, nt, k, oc, og,
          gbin_rows.mutable_data_ptr<double>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_rows_kernel<scalar_t><<<1, 1024, 0, stream>>>(gbin_rows.const_data_ptr<double>(), rows,
                                                              gbin.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gcorr, gg, gbin};
}

}  // namespace cuda
}  // namespace scc
