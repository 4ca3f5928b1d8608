// soft_argmax on CUDA: j* = argmax_j P_ij (first), flow_i = sum_W P^beta x_j / sum_W P^beta over the
// (2 window + 1)^2 cells around j* inside the target grid (window = -1: all cells), conf_i = P_ij*.
// One warp per row. With window = -1 the argmax and the sums share one pass over the row; with a
// window a second pass visits only the window's cells.
#include "common.h"
#include "cuda/utils.cuh"
#include "ops.h"

#include <vector>

namespace scc {
namespace cuda {
namespace {

template <typename acc_t>
__device__ __forceinline__ acc_t pow_beta(acc_t p, acc_t beta) {
  return beta == acc_t(1) ? p : pow(p, beta);
}

// d(P^beta)/dP
template <typename acc_t>
__device__ __forceinline__ acc_t dpow_beta(acc_t p, acc_t beta) {
  return beta == acc_t(1) ? acc_t(1) : beta * pow(p, beta - acc_t(1));
}

// The window around j* clipped to the grid: rows [r0, r1], cols [c0, c1]. `window` is at most max(ht, wt)
// (clamped by the host functions below), so r + window cannot overflow.
struct Window {
  int64_t r0, r1, c0, c1;
  __device__ Window(int64_t jstar, int64_t ht, int64_t wt, int64_t window) {
    const int64_t r = jstar / wt, c = jstar - r * wt;
    r0 = max(int64_t(0), r - window);
    r1 = min(ht - 1, r + window);
    c0 = max(int64_t(0), c - window);
    c1 = min(wt - 1, c + window);
  }
  __device__ int64_t cols() const { return c1 - c0 + 1; }
  __device__ int64_t cells() const { return (r1 - r0 + 1) * cols(); }
};

// Per-row statistics: first argmax and sum_W P^beta (x, y, 1).
template <typename acc_t>
struct RowStats {
  MaxIdx<acc_t> best;
  acc_t s, sx, sy;
};

// Computes RowStats for the row `p` (all lanes of the warp get the result).
template <typename scalar_t, typename acc_t>
__device__ RowStats<acc_t> row_stats(const scalar_t* __restrict__ p, int64_t ht, int64_t wt, int64_t window,
                                     acc_t beta) {
  const int64_t nt = ht * wt;
  RowStats<acc_t> st{{neg_inf<acc_t>(), INT64_MAX}, 0, 0, 0};
  for (int64_t j = threadIdx.x; j < nt; j += kWarp) {
    const acc_t v = static_cast<acc_t>(p[j]);
    st.best = better(st.best, MaxIdx<acc_t>{v, j});
    if (window < 0) {
      const acc_t w = pow_beta(v, beta);
      const int64_t r = j / wt;
      st.s += w;
      st.sx += w * static_cast<acc_t>(j - r * wt);
      st.sy += w * static_cast<acc_t>(r);
    }
  }
  st.best = warp_max_idx(st.best);
  if (window >= 0) {
    const Window win(st.best.i, ht, wt, window);
    for (int64_t k = threadIdx.x; k < win.cells(); k += kWarp) {
      const int64_t r = win.r0 + k / win.cols(), c = win.c0 + k % win.cols();
      const acc_t w = pow_beta(static_cast<acc_t>(p[r * wt + c]), beta);
      st.s += w;
      st.sx += w * static_cast<acc_t>(c);
      st.sy += w * static_cast<acc_t>(r);
    }
  }
  st.s = warp_sum(st.s);
  st.sx = warp_sum(st.sx);
  st.sy = warp_sum(st.sy);
  return st;
}

template <typename scalar_t, typename acc_t>
__global__ void soft_argmax_kernel(const scalar_t* __restrict__ p, int64_t rows, int64_t ht, int64_t wt,
                                   int64_t window, acc_t beta, scalar_t* __restrict__ flow,
                                   scalar_t* __restrict__ conf) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;  // warp-uniform
  const RowStats<acc_t> st = row_stats<scalar_t, acc_t>(p + row * ht * wt, ht, wt, window, beta);
  if (threadIdx.x == 0) {
    // A window whose mass underflowed to 0 falls back to the argmax cell (the contract's rule); a NaN mass
    // stays NaN, as in the reference.
    const int64_t br = st.best.i / wt;
    flow[2 * row] = static_cast<scalar_t>(st.s != 0 ? st.sx / st.s : static_cast<acc_t>(st.best.i - br * wt));
    flow[2 * row + 1] = static_cast<scalar_t>(st.s != 0 ? st.sy / st.s : static_cast<acc_t>(br));
    conf[row] = p[row * ht * wt + st.best.i];
  }
}

// grad_P_ij = [j in W] grad_flow_i . (x_j - flow_i) dP^beta / S_i + [j = j*] grad_conf_i; zero elsewhere.
template <typename scalar_t, typename acc_t>
__global__ void soft_argmax_backward_kernel(const scalar_t* __restrict__ gflow, const scalar_t* __restrict__ gconf,
                                            const scalar_t* __restrict__ p, const scalar_t* __restrict__ flow,
                                            int64_t rows, int64_t ht, int64_t wt, int64_t window, acc_t beta,
                                            scalar_t* __restrict__ gp) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;  // warp-uniform
  const int64_t nt = ht * wt;
  const scalar_t* pr = p + row * nt;
  const RowStats<acc_t> st = row_stats<scalar_t, acc_t>(pr, ht, wt, window, beta);
  const acc_t gfx = static_cast<acc_t>(gflow[2 * row]), gfy = static_cast<acc_t>(gflow[2 * row + 1]);
  const acc_t fx = static_cast<acc_t>(flow[2 * row]), fy = static_cast<acc_t>(flow[2 * row + 1]);
  const acc_t gc = static_cast<acc_t>(gconf[row]);
  const int64_t jstar = st.best.i;
  const int64_t sr = jstar / wt, sc = jstar - sr * wt;
  for (int64_t j = threadIdx.x; j < nt; j += kWarp) {
    const int64_t r = j / wt, c = j - r * wt;
    const bool in_window = window < 0 || (abs(r - sr) <= window && abs(c - sc) <= window);
    acc_t g = 0;
    if (in_window && st.s != 0) {
      const acc_t dir = gfx * (static_cast<acc_t>(c) - fx) + gfy * (static_cast<acc_t>(r) - fy);
      g = dir * dpow_beta(static_cast<acc_t>(pr[j]), beta) / st.s;
    }
    if (j == jstar) g += gc;
    gp[row * nt + j] = static_cast<scalar_t>(g);
  }
}

// Shape of P's leading axes: (B, hs, ws) for 5D P, (B, Ns) for 3D P.
std::vector<int64_t> lead_shape(const at::Tensor& p) {
  return p.dim() == 5 ? std::vector<int64_t>{p.size(0), p.size(1), p.size(2)}
                      : std::vector<int64_t>{p.size(0), p.size(1)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> soft_argmax(const at::Tensor& P_in, int64_t ht, int64_t wt, int64_t window,
                                               double beta) {
  const c10::cuda::CUDAGuard guard(P_in.device());
  const at::Tensor p = P_in.contiguous();
  const int64_t rows = p.size(0) * vol_ns(p);
  window = window < 0 ? window : clamp_window(window, ht, wt);  // the same cells; r + window cannot overflow
  std::vector<int64_t> lead = lead_shape(p);
  at::Tensor conf = alloc_output(lead, p.options());
  lead.push_back(2);
  at::Tensor flow = alloc_output(lead, p.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(p.scalar_type(), "scc_soft_argmax_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    soft_argmax_kernel<scalar_t, acc_t><<<row_grid(rows), row_block(), 0, stream>>>(
        p.const_data_ptr<scalar_t>(), rows, ht, wt, window, static_cast<acc_t>(beta),
        flow.mutable_data_ptr<scalar_t>(), conf.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {flow, conf};
}

at::Tensor soft_argmax_backward(const at::Tensor& grad_flow_in, const at::Tensor& grad_conf_in,
                                const at::Tensor& P_in, const at::Tensor& flow_in, int64_t ht, int64_t wt,
                                int64_t window, double beta) {
  const c10::cuda::CUDAGuard guard(P_in.device());
  const at::Tensor p = P_in.contiguous(), flow = flow_in.contiguous();
  const at::Tensor gflow = grad_flow_in.contiguous(), gconf = grad_conf_in.contiguous();
  const int64_t rows = p.size(0) * vol_ns(p);
  window = window < 0 ? window : clamp_window(window, ht, wt);
  at::Tensor gp = alloc_output(p.sizes(), p.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(p.scalar_type(), "scc_soft_argmax_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    soft_argmax_backward_kernel<scalar_t, acc_t><<<row_grid(rows), row_block(), 0, stream>>>(
        gflow.const_data_ptr<scalar_t>(), gconf.const_data_ptr<scalar_t>(), p.const_data_ptr<scalar_t>(),
        flow.const_data_ptr<scalar_t>(), rows, ht, wt, window, static_cast<acc_t>(beta),
        gp.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gp;
}

}  // namespace cuda
}  // namespace scc
