// mutual_nn on CUDA: C'_ij = C_ij^3 / ((max_i' C_i'j + eps) (max_j' C_ij' + eps)) on the flat view
// (B, Ns, Nt). Memory-bound: one pass reads the volume once for both maxima (a block owns a chunk of
// rows x a tile of columns: per-(row, tile) and per-(chunk, column) partial maxima), two tiny
// kernels reduce the partials, then one elementwise pass writes the result.
// Maxima carry their first argmax (torch.max(dim) semantics), which the backward needs.
#include "common.h"
#include "cuda/utils.cuh"
#include "ops.h"

namespace scc {
namespace cuda {
namespace {

constexpr int kColThreads = 256;
constexpr int kColChunk = 32;  // rows per column-partial block (backward)
constexpr int kMaxThreads = 256;
constexpr int kMaxWarps = kMaxThreads / kWarp;
constexpr int kMaxRows = 64;   // rows per block of the fused maxima pass
constexpr int kMaxVecs = 2;    // vectors of V columns per thread and row: a tile is 2 * 256 * V columns

template <typename acc_t>
__device__ __forceinline__ acc_t mnn_value(acc_t x, acc_t cm, acc_t rm, acc_t eps) {
  return x * (x / (cm + eps)) * (x / (rm + eps));
}

// A partial maximum with a 32-bit index; i < 0 means empty. The larger value wins (NaN above every number,
// as better() in utils.cuh), a tie goes to the smaller index, so partials may be combined in any order.
template <typename acc_t>
struct Arg {
  acc_t v;
  int i;
};

template <typename acc_t>
__device__ __forceinline__ Arg<acc_t> arg_better(Arg<acc_t> a, Arg<acc_t> b) {
  return (b.i >= 0 && (a.i < 0 || nan_gt(b.v, a.v) || (!nan_gt(a.v, b.v) && b.i < a.i))) ? b : a;
}

// Row and column partial maxima in one read of the volume. Block (tile, chunk, b) scans rows
// [chunk * kMaxRows, +kMaxRows) over columns [tile * 2 * 256 * V, +2 * 256 * V): each thread keeps
// the column maxima of its 2V columns in registers (rows in increasing order: first argmax), and each
// row's maximum over the tile is reduced per warp (shuffles) and then over the warps (shared memory).
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kMaxThreads)
    maxima_partial_kernel(const scalar_t* __restrict__ c, int64_t ns, int64_t nt, Arg<acc_t>* __restrict__ rpart,
                          Arg<acc_t>* __restrict__ cpart) {
  constexpr int kTile = kMaxVecs * kMaxThreads * V;
  __shared__ acc_t wv[kMaxRows][kMaxWarps];
  __shared__ int wi[kMaxRows][kMaxWarps];
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int64_t tile = blockIdx.x, chunk = blockIdx.y, b = blockIdx.z;
  const int64_t ntiles = gridDim.x, nchunks = gridDim.y;
  const int64_t i0 = chunk * kMaxRows, nrows = min(static_cast<int64_t>(kMaxRows), ns - i0);
  const int64_t col0 = tile * kTile + static_cast<int64_t>(tid) * V;
  const scalar_t* base = c + (b * ns + i0) * nt;
  Arg<acc_t> cm[kMaxVecs][V];
#pragma unroll
  for (int k = 0; k < kMaxVecs; ++k)
#pragma unroll
    for (int u = 0; u < V; ++u) cm[k][u] = {acc_t(0), -1};
  for (int r = 0; r < nrows; ++r) {
    Arg<acc_t> rm{acc_t(0), -1};
#pragma unroll
    for (int k = 0; k < kMaxVecs; ++k) {
      const int64_t j = col0 + k * kMaxThreads * V;
      if (j < nt) {  // V divides nt on the vector path: a vector is wholly inside or outside
        scalar_t x[V];
        load_vec<V>(base + r * nt + j, x);
#pragma unroll
        for (int u = 0; u < V; ++u) {
          const acc_t v = static_cast<acc_t>(x[u]);
          if (nan_gt(v, cm[k][u].v) || cm[k][u].i < 0) cm[k][u] = {v, static_cast<int>(i0) + r};
          if (nan_gt(v, rm.v) || rm.i < 0) rm = {v, static_cast<int>(j - tile * kTile) + u};
        }
      }
    }
#pragma unroll
    for (int o = kWarp / 2; o > 0; o /= 2)
      rm = arg_better(rm, Arg<acc_t>{__shfl_xor_sync(0xffffffffu, rm.v, o), __shfl_xor_sync(0xffffffffu, rm.i, o)});
    if (lane == 0) {
      wv[r][warp] = rm.v;
      wi[r][warp] = rm.i;
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxVecs; ++k) {
    const int64_t j = col0 + k * kMaxThreads * V;
#pragma unroll
    for (int u = 0; u < V; ++u)
      if (j + u < nt) cpart[(b * nchunks + chunk) * nt + j + u] = cm[k][u];
  }
  __syncthreads();
  if (tid < nrows) {
    Arg<acc_t> m{wv[tid][0], wi[tid][0]};
    for (int w = 1; w < kMaxWarps; ++w) m = arg_better(m, Arg<acc_t>{wv[tid][w], wi[tid][w]});
    rpart[(b * ns + i0 + tid) * ntiles + tile] = m;  // index relative to the tile
  }
}

// Row maxima from the per-tile partials: a thread per row.
template <typename acc_t, int kTile>
__global__ void row_max_final_kernel(const Arg<acc_t>* __restrict__ rpart, int64_t rows, int64_t ntiles,
                                     acc_t* __restrict__ rmax, int64_t* __restrict__ rarg) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  MaxIdx<acc_t> m{neg_inf<acc_t>(), INT64_MAX};
  for (int64_t t = 0; t < ntiles; ++t) {
    const Arg<acc_t> p = rpart[row * ntiles + t];
    if (p.i >= 0) m = better(m, MaxIdx<acc_t>{p.v, t * kTile + p.i});
  }
  rmax[row] = m.v;
  rarg[row] = m.i;
}

// Column maxima from the per-chunk partials (chunks in increasing row order): a thread per (b, j).
template <typename acc_t>
__global__ void col_max_final_kernel(const Arg<acc_t>* __restrict__ cpart, int64_t batch, int64_t nchunks,
                                     int64_t nt, acc_t* __restrict__ cmax, int64_t* __restrict__ carg) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= batch * nt) return;
  const int64_t b = t / nt, j = t % nt;
  Arg<acc_t> m = cpart[b * nchunks * nt + j];
  for (int64_t k = 1; k < nchunks; ++k) m = arg_better(m, cpart[(b * nchunks + k) * nt + j]);
  cmax[t] = m.v;
  carg[t] = m.i;
}

template <typename scalar_t, typename acc_t, int V>
__global__ void mnn_forward_kernel(const scalar_t* __restrict__ c, const acc_t* __restrict__ rmax,
                                   const acc_t* __restrict__ cmax, int64_t rows, int64_t ns, int64_t nt,
                                   acc_t eps, scalar_t* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const acc_t rm = rmax[row];
  const acc_t* cm = cmax + (row / ns) * nt;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * V; j < nt; j += kWarp * V) {
    scalar_t x[V], y[V];
    acc_t cv[V];
    load_vec<V>(c + row * nt + j, x);
    load_vec<V>(cm + j, cv);
#pragma unroll
    for (int u = 0; u < V; ++u) y[u] = static_cast<scalar_t>(mnn_value(static_cast<acc_t>(x[u]), cv[u], rm, eps));
    store_vec<V>(out + row * nt + j, y);
  }
}

// rowterm_i = -sum_j G_ij C'_ij / (rmax_i + eps): the gradient reaching row i's maximum.
template <typename scalar_t, typename acc_t, int V>
__global__ void row_term_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ c,
                                const acc_t* __restrict__ rmax, const acc_t* __restrict__ cmax,
                                int64_t rows, int64_t ns, int64_t nt, acc_t eps, acc_t* __restrict__ rterm) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const acc_t rm = rmax[row];
  const acc_t* cm = cmax + (row / ns) * nt;
  acc_t s = 0;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * V; j < nt; j += kWarp * V) {
    scalar_t x[V], gv[V];
    acc_t cv[V];
    load_vec<V>(c + row * nt + j, x);
    load_vec<V>(g + row * nt + j, gv);
    load_vec<V>(cm + j, cv);
#pragma unroll
    for (int u = 0; u < V; ++u)
      s += static_cast<acc_t>(gv[u]) * mnn_value(static_cast<acc_t>(x[u]), cv[u], rm, eps);
  }
  s = warp_sum(s);
  if (threadIdx.x == 0) rterm[row] = -s / (rm + eps);
}

// Partial column sums of G_ij C'_ij over kColChunk rows.
template <typename scalar_t, typename acc_t>
__global__ void col_term_partial_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ c,
                                        const acc_t* __restrict__ rmax, const acc_t* __restrict__ cmax,
                                        int64_t ns, int64_t nt, acc_t eps, acc_t* __restrict__ part) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColThreads + threadIdx.x;
  if (j >= nt) return;
  const int64_t chunk = blockIdx.y, b = blockIdx.z, nchunks = gridDim.y;
  const int64_t i0 = chunk * kColChunk, i1 = min(ns, i0 + kColChunk);
  const acc_t cm = cmax[b * nt + j];
  acc_t s = 0;
#pragma unroll 4
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t e = (b * ns + i) * nt + j;
    s += static_cast<acc_t>(g[e]) * mnn_value(static_cast<acc_t>(c[e]), cm, rmax[b * ns + i], eps);
  }
  part[(b * nchunks + chunk) * nt + j] = s;
}

// colterm_j = -sum_i G_ij C'_ij / (cmax_j + eps), summing the chunk partials in a fixed order.
template <typename acc_t>
__global__ void col_term_final_kernel(const acc_t* __restrict__ part, const acc_t* __restrict__ cmax,
                                      int64_t batch, int64_t nchunks, int64_t nt, acc_t eps,
                                      acc_t* __restrict__ cterm) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= batch * nt) return;
  const int64_t b = t / nt, j = t % nt;
  acc_t s = 0;
  for (int64_t k = 0; k < nchunks; ++k) s += part[(b * nchunks + k) * nt + j];
  cterm[t] = -s / (cmax[t] + eps);
}

// grad_ij = G_ij 3 C_ij^2 / den_ij, plus the max terms at each row's / column's first argmax.
template <typename scalar_t, typename acc_t, int V>
__global__ void mnn_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ c,
                                    const acc_t* __restrict__ rmax, const int64_t* __restrict__ rarg,
                                    const acc_t* __restrict__ rterm, const acc_t* __restrict__ cmax,
                                    const int64_t* __restrict__ carg, const acc_t* __restrict__ cterm,
                                    int64_t rows, int64_t ns, int64_t nt, acc_t eps,
                                    scalar_t* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const int64_t b = row / ns, i = row - b * ns;
  const acc_t rinv = acc_t(1) / (rmax[row] + eps);
  const int64_t ra = rarg[row];
  const acc_t rt = rterm[row];
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * V; j < nt; j += kWarp * V) {
    scalar_t x[V], gv[V], y[V];
    load_vec<V>(c + row * nt + j, x);
    load_vec<V>(g + row * nt + j, gv);
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int64_t jj = j + u, bj = b * nt + jj;
      const acc_t xv = static_cast<acc_t>(x[u]);
      acc_t r = static_cast<acc_t>(gv[u]) * 3 * (xv * rinv) * (xv / (cmax[bj] + eps));  // C^2 unformed: no overflow
      if (carg[bj] == i) r += cterm[bj];
      if (jj == ra) r += rt;
      y[u] = static_cast<scalar_t>(r);
    }
    store_vec<V>(out + row * nt + j, y);
  }
}

template <typename acc_t>
at::Tensor acc_empty(int64_t n, const at::Tensor& like) {
  return at::empty({n}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

struct Maxima {
  at::Tensor rmax, rarg, cmax, carg;
};

template <typename scalar_t, typename acc_t, int V>
void launch_maxima(const scalar_t* cp, int64_t batch, int64_t ns, int64_t nt, const Maxima& m,
                   const at::Tensor& like, cudaStream_t stream) {
  constexpr int kTile = kMaxVecs * kMaxThreads * V;
  const int64_t ntiles = ceil_div(nt, kTile), nchunks = ceil_div(ns, kMaxRows), rows = batch * ns;
  const int64_t rec = sizeof(Arg<acc_t>);
  at::Tensor rpart = at::empty({rows * ntiles * rec}, like.options().dtype(at::kByte));
  at::Tensor cpart = at::empty({batch * nchunks * nt * rec}, like.options().dtype(at::kByte));
  auto* rp = reinterpret_cast<Arg<acc_t>*>(rpart.mutable_data_ptr());
  auto* cpp = reinterpret_cast<Arg<acc_t>*>(cpart.mutable_data_ptr());
  maxima_partial_kernel<scalar_t, acc_t, V><<<dim3(ntiles, nchunks, batch), kMaxThreads, 0, stream>>>(cp, ns, nt, rp,
                                                                                                      cpp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  row_max_final_kernel<acc_t, kTile><<<ceil_div(rows, 256), 256, 0, stream>>>(
      rp, rows, ntiles, m.rmax.mutable_data_ptr<acc_t>(), m.rarg.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  col_max_final_kernel<acc_t><<<ceil_div(batch * nt, 256), 256, 0, stream>>>(
      cpp, batch, nchunks, nt, m.cmax.mutable_data_ptr<acc_t>(), m.carg.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Row and column maxima with first argmax. Arguments are checked by the caller (register.cpp):
// batch and ceil(ns / 32) fit a grid axis, nt and ns fit int32.
template <typename scalar_t, typename acc_t>
Maxima compute_maxima(const at::Tensor& c, int64_t batch, int64_t ns, int64_t nt, cudaStream_t stream) {
  const int64_t rows = batch * ns;
  Maxima m{acc_empty<acc_t>(rows, c), at::empty({rows}, c.options().dtype(at::kLong)),
           acc_empty<acc_t>(batch * nt, c), at::empty({batch * nt}, c.options().dtype(at::kLong))};
  const scalar_t* cp = c.const_data_ptr<scalar_t>();
  if (can_vec4<scalar_t>(nt, {cp})) {
    launch_maxima<scalar_t, acc_t, 4>(cp, batch, ns, nt, m, c, stream);
  } else {
    launch_maxima<scalar_t, acc_t, 1>(cp, batch, ns, nt, m, c, stream);
  }
  return m;
}

}  // namespace

at::Tensor mutual_nn(const at::Tensor& corr_in, double eps) {
  const c10::cuda::CUDAGuard guard(corr_in.device());
  const at::Tensor c = corr_in.contiguous();
  const int64_t batch = c.size(0), ns = vol_ns(c), nt = vol_nt(c), rows = batch * ns;
  at::Tensor out = alloc_output(c.sizes(), c.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(c.scalar_type(), "scc_mutual_nn_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Maxima m = compute_maxima<scalar_t, acc_t>(c, batch, ns, nt, stream);
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const acc_t* cm = m.cmax.const_data_ptr<acc_t>();
    if (can_vec4<scalar_t>(nt, {cp, op}) && can_vec4<acc_t>(nt, {cm})) {
      mnn_forward_kernel<scalar_t, acc_t, 4><<<row_grid(rows), row_block(), 0, stream>>>(
          cp, m.rmax.const_data_ptr<acc_t>(), cm, rows, ns, nt, static_cast<acc_t>(eps), op);
    } else {
      mnn_forward_kernel<scalar_t, acc_t, 1><<<row_grid(rows), row_block(), 0, stream>>>(
          cp, m.rmax.const_data_ptr<acc_t>(), cm, rows, ns, nt, static_cast<acc_t>(eps), op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor mutual_nn_backward(const at::Tensor& grad_in, const at::Tensor& corr_in, double eps) {
  const c10::cuda::CUDAGuard guard(corr_in.device());
  const at::Tensor c = corr_in.contiguous(), g = grad_in.contiguous();
  const int64_t batch = c.size(0), ns = vol_ns(c), nt = vol_nt(c), rows = batch * ns;
  const int64_t nchunks = ceil_div(ns, kColChunk);
  at::Tensor out = alloc_output(c.sizes(), c.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(c.scalar_type(), "scc_mutual_nn_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Maxima m = compute_maxima<scalar_t, acc_t>(c, batch, ns, nt, stream);
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const acc_t* rmax = m.rmax.const_data_ptr<acc_t>();
    const acc_t* cmax = m.cmax.const_data_ptr<acc_t>();
    const acc_t e = static_cast<acc_t>(eps);
    const bool vec = can_vec4<scalar_t>(nt, {cp, gp, op}) && can_vec4<acc_t>(nt, {cmax});

    at::Tensor rterm = acc_empty<acc_t>(rows, c);
    if (vec) {
      row_term_kernel<scalar_t, acc_t, 4><<<row_grid(rows), row_block(), 0, stream>>>(
          gp, cp, rmax, cmax, rows, ns, nt, e, rterm.mutable_data_ptr<acc_t>());
    } else {
      row_term_kernel<scalar_t, acc_t, 1><<<row_grid(rows), row_block(), 0, stream>>>(
          gp, cp, rmax, cmax, rows, ns, nt, e, rterm.mutable_data_ptr<acc_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    at::Tensor part = acc_empty<acc_t>(batch * nchunks * nt, c);
    at::Tensor cterm = acc_empty<acc_t>(batch * nt, c);
    const dim3 pgrid(ceil_div(nt, kColThreads), nchunks, batch);
    col_term_partial_kernel<scalar_t, acc_t><<<pgrid, kColThreads, 0, stream>>>(
        gp, cp, rmax, cmax, ns, nt, e, part.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    col_term_final_kernel<acc_t><<<ceil_div(batch * nt, 256), 256, 0, stream>>>(
        part.const_data_ptr<acc_t>(), cmax, batch, nchunks, nt, e, cterm.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const int64_t* rarg = m.rarg.const_data_ptr<int64_t>();
    const int64_t* carg = m.carg.const_data_ptr<int64_t>();
    if (vec) {
      mnn_backward_kernel<scalar_t, acc_t, 4><<<row_grid(rows), row_block(), 0, stream>>>(
          gp, cp, rmax, rarg, rterm.const_data_ptr<acc_t>(), cmax, carg, cterm.const_data_ptr<acc_t>(),
          rows, ns, nt, e, op);
    } else {
      mnn_backward_kernel<scalar_t, acc_t, 1><<<row_grid(rows), row_block(), 0, stream>>>(
          gp, cp, rmax, rarg, rterm.const_data_ptr<acc_t>(), cmax, carg, cterm.const_data_ptr<acc_t>(),
          rows, ns, nt, e, op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace scc
