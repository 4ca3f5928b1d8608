// masked_vote on CUDA. h = A(w) with w_ij = corr_ij mask_s_i mask_t_j and A the local or global vote
// operator, then g = h / (max over each batch item's volume of h + eps).
//   local:  A = a Gaussian blur over the target axes, then a diagonal box sum (opmath precision):
//           u_i = K * w_i on the target grid extended by r on every side (j + d may leave the grid while
//           j + d + e is inside it), then h_ij = sum_d u_(i+d),(j+d). Two kernels: one block per source
//           cell blurs its target plane in shared memory (x then y pass; the weights w = corr ms mt are
//           formed on the way in), then a block per run of 16 source cells along x sums the neighbouring
//           u planes along the diagonals (box_kernel: each u element read once per block, from L2) and
//           reduces its part of the per-batch peak. Traffic: read corr, write and read u, write h (then
//           normalise: read h, write g). Planes whose shared-memory stage exceeds 48 KiB, and radii whose
//           ring of column sums would exceed it (r > 23 in fp32, r > 11 in fp64), take four 1D passes
//           through global memory instead.
//   global: the offset histogram V(o) = sum over (i, i + o) of w: partial histograms per source row (a
//           block per (b, iy), reading w once and coalesced), summed over rows in a fixed order (no
//           atomics: deterministic), blurred by K with zero outside; h_ij = Vb(x_j - x_i). Every offset
//           occurs, so the peak of h is Vb's: the forward writes g = Vb(x_j - x_i) / (peak + eps) directly
//           (traffic: read corr once, write g once; h is never materialised).
// A is self-adjoint (K symmetric, symmetric ranges), so the backward applies the same operator.
#include "common.h"
#include "cuda/utils.cuh"
#include "ops.h"

#include <algorithm>
#include <cmath>

namespace scc {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kHistTile = 64 * 65;  // shared-memory elements of hist_partial_kernel's tile: 64 x 64 and pad
constexpr int64_t kHistTileCols = 256;  // at most, per tile row
static_assert(kHistTileCols <= kThreads, "hist_partial_kernel stages a tile row with one thread per column");
constexpr int kStage = 8;  // loads in flight per thread in the streaming loops (staged_loop, utils.cuh)
constexpr int kBoxRun = 16;  // source cells along x per box_kernel block

struct Dims {
  int64_t batch, hs, ws, ht, wt, r, rho;
  __host__ __device__ int64_t ns() const { return hs * ws; }
  __host__ __device__ int64_t nt() const { return ht * wt; }
};

// Row-layout kernels: one warp per row of the last axis, 8 rows per block. Exits are warp-uniform.
#define SCC_ROW_PROLOGUE(ROWS)                                                            \
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y; \
  if (row >= (ROWS)) return;

template <typename acc_t>
__device__ __forceinline__ acc_t gauss(int64_t e, acc_t inv_2s2) {
  // K(0) = 1 exactly: for a tiny sigma inv_2s2 is inf, and 0 * inf would make the centre tap NaN
  return e == 0 ? acc_t(1) : exp(-static_cast<acc_t>(e * e) * inv_2s2);
}

// ---- local operator, fused ----------------------------------------------------------------------

// Shared memory of plane_blur_kernel: the plane (ht x wt), its x-blur (ht x wx) and the 2 rho + 1 taps.
int64_t plane_blur_smem(const Dims& d, size_t elem) {
  return static_cast<int64_t>(elem) * (d.ht * d.wt + d.ht * (d.wt + 2 * d.r) + 2 * d.rho + 1);
}

// dst (rows x cols) = the taps kern (2 rho + 1) along x (kAlongX: output column x reads src columns
// x - r + e of the same row) or along y (output row y reads src rows y - r + e); src has src_cols columns
// and n_in entries along the blurred axis, zero outside. All threads of the block, 32-bit indices.
template <bool kAlongX, typename acc_t>
__device__ __forceinline__ void blur_1d(const acc_t* src, int src_cols, int n_in, int rows, int cols, int r,
                                        int rho, const acc_t* kern, acc_t* dst) {
  for (int k = threadIdx.x; k < rows * cols; k += blockDim.x) {
    const int y = k / cols, x = k - y * cols;
    acc_t s = 0;
    for (int e = -rho; e <= rho; ++e) {
      const int c = (kAlongX ? x : y) - r + e;
      if (c >= 0 && c < n_in) s += kern[e + rho] * src[kAlongX ? y * src_cols + c : c * src_cols + x];
    }
    dst[k] = s;
  }
}

// u[(b,i), yp, xp] = sum_{ey,ex} k(ey) k(ex) w_i[yp - r + ey, xp - r + ex] on the extended grid
// (ht + 2r) x (wt + 2r); a block per source cell (b, i). w_i = corr_i ms_i mt (kWeights) or in_i.
template <typename scalar_t, typename acc_t, bool kWeights>
__global__ void __launch_bounds__(kThreads)
    plane_blur_kernel(const scalar_t* __restrict__ corr, const scalar_t* __restrict__ ms,
                      const scalar_t* __restrict__ mt, const acc_t* __restrict__ in, Dims d, acc_t inv_2s2,
                      acc_t* __restrict__ u) {
  extern __shared__ unsigned char smem_raw[];
  // In-plane indices are 32-bit (the plane fits in 48 KiB): 64-bit division is slow on the GPU.
  const int ht = static_cast<int>(d.ht), wt = static_cast<int>(d.wt), r = static_cast<int>(d.r);
  const int rho = static_cast<int>(d.rho), wx = wt + 2 * r, hx = ht + 2 * r, nt = ht * wt;
  acc_t* plane = reinterpret_cast<acc_t*>(smem_raw);  // ht x wt
  acc_t* ux = plane + nt;                              // ht x wx
  acc_t* kern = ux + ht * wx;                          // 2 rho + 1 taps
  const int64_t bi = blockIdx.x;
  const int tid = threadIdx.x, nth = blockDim.x;
  for (int e = tid; e <= 2 * rho; e += nth) kern[e] = gauss(e - rho, inv_2s2);
  const acc_t m = kWeights ? static_cast<acc_t>(ms[bi]) : acc_t(1);
  const scalar_t* mtb = kWeights ? mt + (bi / d.ns()) * nt : nullptr;
  staged_loop<kStage, acc_t>(
      tid, nt, nth, [&](int j) { return kWeights ? static_cast<acc_t>(corr[bi * nt + j]) : in[bi * nt + j]; },
      [&](int j, acc_t v) { plane[j] = kWeights ? v * m * static_cast<acc_t>(mtb[j]) : v; });
  __syncthreads();
  blur_1d<true>(plane, wt, wt, ht, wx, r, rho, kern, ux);
  __syncthreads();
  blur_1d<false>(ux, wx, ht, hx, wx, r, rho, kern, u + bi * hx * wx);
}

// Shared memory of box_kernel: a ring of the 2r + 1 latest column sums for each thread.
int64_t box_smem(const Dims& d, size_t elem) { return static_cast<int64_t>(elem) * (2 * d.r + 1) * kThreads; }

// h[(b,i), jy, jx] = sum_{dy,dx in [-r,r]} u[(b, i+d), jy+dy+r, jx+dx+r] over i + d inside the source
// grid. A block per run of kBoxRun source cells along x, (b, iy, ix0 + t) for t < T. Along a diagonal
// q = jx - t the term (dy, dx) of cell t reads plane (iy + dy, c = ix0 + t + dx) at column q + c - ix0 + r,
// the same for every t: the column sums col_c = sum_dy u[(b, iy+dy, c)][jy+dy+r][q + c - ix0 + r] serve
// the 2r + 1 cells t with |c - ix0 - t| <= r. So a thread walks c once per (jy, q), keeps the latest 2r + 1
// column sums in a shared-memory ring and emits cell t's h once c has passed its window: each u element
// is read once per block, (T + 2r)(2r + 1) / T loads per output instead of (2r + 1)^2 (from L2:
// neighbouring blocks share the planes). Also writes the block's maximum of h with the first flat index
// (i Nt + j) attaining it: part[block].
template <typename acc_t>  // fp64 spilled on sm_80 under ptxas's default 64-register goal
__global__ void __launch_bounds__(kThreads, sizeof(acc_t) == 8 ? 2 : 4)
    box_kernel(const acc_t* __restrict__ u, Dims d, acc_t* __restrict__ h, MaxIdx<acc_t>* __restrict__ part) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* ring = reinterpret_cast<acc_t*>(smem_raw) + threadIdx.x;  // slot k at ring[k * blockDim.x]
  // in-plane indices 32-bit (only planes that fit plane_blur_kernel's shared memory come here)
  const int ht = static_cast<int>(d.ht), wt = static_cast<int>(d.wt), r = static_cast<int>(d.r);
  const int ws = static_cast<int>(d.ws), hs = static_cast<int>(d.hs), slots = 2 * r + 1;
  const int wx = wt + 2 * r, nt = ht * wt;
  const int64_t plane = static_cast<int64_t>(ht + 2 * r) * wx;
  const int nruns = (ws + kBoxRun - 1) / kBoxRun;
  const int64_t row = blockIdx.x / nruns;  // b hs + iy
  const int iy = static_cast<int>(row % hs), ix0 = static_cast<int>(blockIdx.x % nruns) * kBoxRun;
  const int T = min(kBoxRun, ws - ix0), nq = wt + T - 1;  // diagonals q = jx - t in [-(T - 1), wt - 1]
  const int dy0 = max(-r, -iy), dy1 = min(r, hs - 1 - iy);
  const int c0 = max(0, ix0 - r), c1 = min(ws - 1, ix0 + T - 1 + r);
  const int64_t i0 = static_cast<int64_t>(iy) * ws + ix0;  // source index of t = 0 within the batch item
  const int64_t dstep = ws * plane + wx;                      // (dy, row) -> (dy + 1, row + 1)
  acc_t* hb = h + (row / hs) * hs * ws * nt;                  // the batch item's h, indexed by i Nt + j
  MaxIdx<acc_t> m{neg_inf<acc_t>(), INT64_MAX};
  for (int p = threadIdx.x; p < ht * nq; p += blockDim.x) {
    const int jy = p / nq, q = p - jy * nq - (T - 1);
    // plane (b, iy + dy0, c0), row jy + dy0 + r; column added per c
    const acc_t* base = u + (row * ws + static_cast<int64_t>(dy0) * ws + c0) * plane +
                        static_cast<int64_t>(jy + dy0 + r) * wx;
    int head = -1;
    for (int c = c0; c <= c1; ++c) {
      const int col = q + c - ix0 + r;
      acc_t s = 0;
      if (col >= 0 && col < wx) {  // else only cells whose jx lies outside the grid would read it
        const acc_t* src = base + static_cast<int64_t>(c - c0) * plane + col;
        for (int dy = dy0; dy <= dy1; ++dy, src += dstep) s += *src;
      }
      head = head + 1 == slots ? 0 : head + 1;
      ring[head * blockDim.x] = s;
      // cells whose window [ix0 + t - r, ix0 + t + r] (clipped to the grid) ends at c
      const int t_hi = c == c1 ? T - 1 : c - r - ix0;
      for (int t = max(0, c - r - ix0); t <= t_hi; ++t) {
        const int jx = q + t;
        if (jx < 0 || jx >= wt) continue;
        const int first = max(c0, ix0 + t - r);  // sum the window in increasing c
        int k = head - (c - first);
        if (k < 0) k += slots;
        acc_t v = 0;
        for (int n = first; n <= c; ++n) {
          v += ring[k * blockDim.x];
          k = k + 1 == slots ? 0 : k + 1;
        }
        const int64_t flat = (i0 + t) * nt + jy * wt + jx;
        hb[flat] = v;
        m = better(m, MaxIdx<acc_t>{v, flat});
      }
    }
  }
  m = block_max_idx(m);
  if (threadIdx.x == 0) part[blockIdx.x] = m;
}

template <typename scalar_t, typename acc_t>
__global__ void weight_kernel(const scalar_t* __restrict__ corr, const scalar_t* __restrict__ ms,
                              const scalar_t* __restrict__ mt, int64_t rows, int64_t ns, int64_t nt,
                              acc_t* __restrict__ w) {
  SCC_ROW_PROLOGUE(rows)
  const acc_t m = static_cast<acc_t>(ms[row]);
  const scalar_t* mtb = mt + (row / ns) * nt;
  for (int64_t j = threadIdx.x; j < nt; j += kWarp)
    w[row * nt + j] = static_cast<acc_t>(corr[row * nt + j]) * m * static_cast<acc_t>(mtb[j]);
}

// ---- local operator -------------------------------------------------------------------------

// ux[(b,i,jy), xp] = sum_ex k(ex) in[(b,i,jy), xp - r + ex], xp in [0, wt + 2r).
template <typename acc_t>
__global__ void blur_x_kernel(const acc_t* __restrict__ in, Dims d, acc_t inv_2s2, acc_t* __restrict__ ux) {
  const int64_t wx = d.wt + 2 * d.r;
  SCC_ROW_PROLOGUE(d.batch * d.ns() * d.ht)
  for (int64_t xp = threadIdx.x; xp < wx; xp += kWarp) {
    acc_t s = 0;
    for (int64_t e = -d.rho; e <= d.rho; ++e) {
      const int64_t jx = xp - d.r + e;
      if (jx >= 0 && jx < d.wt) s += gauss(e, inv_2s2) * in[row * d.wt + jx];
    }
    ux[row * wx + xp] = s;
  }
}

// u[(b,i), yp, xp] = sum_ey k(ey) ux[(b,i), yp - r + ey, xp], yp in [0, ht + 2r).
template <typename acc_t>
__global__ void blur_y_kernel(const acc_t* __restrict__ ux, Dims d, acc_t inv_2s2, acc_t* __restrict__ u) {
  const int64_t hx = d.ht + 2 * d.r, wx = d.wt + 2 * d.r;
  SCC_ROW_PROLOGUE(d.batch * d.ns() * hx)
  const int64_t bi = row / hx, yp = row - bi * hx;
  for (int64_t xp = threadIdx.x; xp < wx; xp += kWarp) {
    acc_t s = 0;
    for (int64_t e = -d.rho; e <= d.rho; ++e) {
      const int64_t jy = yp - d.r + e;
      if (jy >= 0 && jy < d.ht) s += gauss(e, inv_2s2) * ux[(bi * d.ht + jy) * wx + xp];
    }
    u[row * wx + xp] = s;
  }
}

// v[(b,iy,ix), yp, jx] = sum_dx u[(b,iy,ix+dx), yp, jx + dx + r] over 0 <= ix + dx < ws.
template <typename acc_t>
__global__ void box_x_kernel(const acc_t* __restrict__ u, Dims d, acc_t* __restrict__ v) {
  const int64_t hx = d.ht + 2 * d.r, wx = d.wt + 2 * d.r;
  SCC_ROW_PROLOGUE(d.batch * d.ns() * hx)
  const int64_t src = row / hx, yp = row - src * hx, ix = src % d.ws;
  for (int64_t jx = threadIdx.x; jx < d.wt; jx += kWarp) {
    acc_t s = 0;
    for (int64_t dx = -d.r; dx <= d.r; ++dx) {
      if (ix + dx >= 0 && ix + dx < d.ws) s += u[((src + dx) * hx + yp) * wx + jx + dx + d.r];
    }
    v[row * d.wt + jx] = s;
  }
}

// h[(b,iy,ix), jy, jx] = sum_dy v[(b,iy+dy,ix), jy + dy + r, jx] over 0 <= iy + dy < hs.
template <typename acc_t>
__global__ void box_y_kernel(const acc_t* __restrict__ v, Dims d, acc_t* __restrict__ h) {
  const int64_t hx = d.ht + 2 * d.r;
  SCC_ROW_PROLOGUE(d.batch * d.ns() * d.ht)
  const int64_t src = row / d.ht, jy = row - src * d.ht, iy = (src / d.ws) % d.hs;
  for (int64_t jx = threadIdx.x; jx < d.wt; jx += kWarp) {
    acc_t s = 0;
    for (int64_t dy = -d.r; dy <= d.r; ++dy) {
      if (iy + dy >= 0 && iy + dy < d.hs) s += v[((src + dy * d.ws) * hx + jy + dy + d.r) * d.wt + jx];
    }
    h[row * d.wt + jx] = s;
  }
}

// ---- global operator ------------------------------------------------------------------------

// Partial histograms by source row: P[(b, iy), jy, c] = sum_ix w[(b, iy, ix), jy, c - (ws - 1) + ix] for
// the offset (jy - iy, c - (ws - 1)); a block per (b, iy). For each target row jy, P[jy, :] are the diagonal
// sums of the (ws x wt) matrix M[ix, jx] = w[(b, iy, ix), (jy, jx)]. M is staged in shared memory in tiles
// (rows of ix contiguous along jx: coalesced loads with every lane busy, unrolled so that each thread has
// several in flight; GPU run 3 had a lane per offset, half the lanes idle and one load in flight per warp:
// 31% of bandwidth for the whole op), then thread q sums diagonal q of the tile in increasing ix, carrying
// each diagonal's sum from tile to tile through P itself: every sum is still taken in increasing ix, one
// term at a time (deterministic, the same order as before). Tiles: tile_rows x tile_cols of M, row stride
// tile_cols + 1 (an odd stride when the tile width is even, as at 64: the diagonals' reads fall in different
// banks). w = corr ms mt (kWeights) or in.
template <typename scalar_t, typename acc_t, bool kWeights>
// 4 blocks per SM (fp32): one wave at B = 8, hs = 64 on an H100; fp64 at 64 registers spilled (as box_kernel)
__global__ void __launch_bounds__(kThreads, sizeof(acc_t) == 8 ? 2 : 4)
    hist_partial_kernel(const scalar_t* __restrict__ corr, const scalar_t* __restrict__ ms,
                        const scalar_t* __restrict__ mt, const acc_t* __restrict__ in, Dims d, int tile_rows,
                        int tile_cols, acc_t* __restrict__ part) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* m = reinterpret_cast<acc_t*>(smem_raw);  // tile_rows x (tile_cols + 1)
  const int stride = tile_cols + 1, tid = threadIdx.x, nth = blockDim.x;
  const int64_t hw = d.ws + d.wt - 1, nt = d.nt();
  const int64_t row = blockIdx.x, b = row / d.hs, iy = row - b * d.hs;
  const int64_t cell0 = b * d.ns() + iy * d.ws;  // source cell (b, iy, 0)
  for (int64_t jy = 0; jy < d.ht; ++jy) {
    acc_t* p = part + (row * d.ht + jy) * hw;
    for (int64_t i0 = 0; i0 < d.ws; i0 += tile_rows) {
      const int rows = static_cast<int>(min(static_cast<int64_t>(tile_rows), d.ws - i0));
      for (int64_t j0 = 0; j0 < d.wt; j0 += tile_cols) {
        const int cols = static_cast<int>(min(static_cast<int64_t>(tile_cols), d.wt - j0));
        __syncthreads();  // the previous tile's sums are done with m (and P's carried sums are written)
        // thread (rt, cc) stages column cc of rows rt, rt + rstep, ... (cols <= threads; the rest idle)
        const int rstep = nth / cols, rt = tid / cols, cc = tid - rt * cols;
        if (rt < rstep) {
          const int64_t col = jy * d.wt + j0 + cc;  // of the target plane
          const acc_t mtv = kWeights ? static_cast<acc_t>(mt[b * nt + col]) : acc_t(1);
          const int64_t e0 = (cell0 + i0) * nt + col;  // row 0 of the tile, column cc
          staged_loop<kStage, acc_t>(
              rt, rows, rstep, [&](int r) { return kWeights ? static_cast<acc_t>(corr[e0 + r * nt]) : in[e0 + r * nt]; },
              [&](int r, acc_t v) {
                m[r * stride + cc] = kWeights ? v * static_cast<acc_t>(ms[cell0 + i0 + r]) * mtv : v;
              });
        }
        __syncthreads();
        // diagonal q of the tile: jx - ix = j0 - i0 + ox, ox = cols - 1 - q
        for (int q = tid; q < rows + cols - 1; q += nth) {
          const int ox = cols - 1 - q;                                // tile-relative jx - ix
          const int r0 = max(0, -ox), r1 = min(rows, cols - ox);      // tile rows on the diagonal
          const int64_t oxg = j0 - i0 + ox, c = oxg + d.ws - 1;
          // the tile that holds a diagonal's first term (smallest ix) starts its sum: no zeroing pass, and
          // no read of P when M fits one tile
          acc_t s = i0 + r0 == max(int64_t(0), -oxg) ? acc_t(0) : p[c];
#pragma unroll 8
          for (int r = r0; r < r1; ++r) s += m[r * stride + r + ox];
          p[c] = s;
        }
      }
    }
  }
}

// V[b, oy + hs - 1, c] = sum over source rows iy of P[(b, iy), iy + oy, c] (inside the target grid), in
// increasing iy (deterministic).
template <typename acc_t>
__global__ void hist_reduce_kernel(const acc_t* __restrict__ part, Dims d, acc_t* __restrict__ hist) {
  const int64_t hh = d.hs + d.ht - 1, hw = d.ws + d.wt - 1;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= d.batch * hh * hw) return;
  const int64_t b = t / (hh * hw), r = t / hw - b * hh, c = t - (t / hw) * hw, oy = r - (d.hs - 1);
  acc_t s = 0;
  for (int64_t iy = max(int64_t(0), -oy); iy < min(d.hs, d.ht - oy); ++iy)
    s += part[((b * d.hs + iy) * d.ht + iy + oy) * hw + c];
  hist[t] = s;
}

// Vb = K * V with zero outside the histogram.
template <typename acc_t>
__global__ void hist_blur_kernel(const acc_t* __restrict__ hist, Dims d, acc_t inv_2s2, acc_t* __restrict__ vb) {
  const int64_t hh = d.hs + d.ht - 1, hw = d.ws + d.wt - 1;
  SCC_ROW_PROLOGUE(d.batch * hh)
  const int64_t b = row / hh, oy = row - b * hh;
  for (int64_t ox = threadIdx.x; ox < hw; ox += kWarp) {
    acc_t s = 0;
    for (int64_t ey = -d.rho; ey <= d.rho; ++ey) {
      if (oy + ey < 0 || oy + ey >= hh) continue;
      const acc_t ky = gauss(ey, inv_2s2);
      for (int64_t ex = -d.rho; ex <= d.rho; ++ex) {
        if (ox + ex >= 0 && ox + ex < hw) s += ky * gauss(ex, inv_2s2) * hist[(b * hh + oy + ey) * hw + ox + ex];
      }
    }
    vb[row * hw + ox] = s;
  }
}

// out[b, i, j] = Vb[b, x_j - x_i], divided by (peak_b + eps) when `peak` is given: h (the backward's
// operator) or the global mode's output g without materialising h.
template <typename out_t, typename acc_t>
__global__ void gather_kernel(const acc_t* __restrict__ vb, const MaxIdx<acc_t>* __restrict__ peak, Dims d,
                              acc_t eps, out_t* __restrict__ out) {
  const int64_t hh = d.hs + d.ht - 1, hw = d.ws + d.wt - 1;
  SCC_ROW_PROLOGUE(d.batch * d.ns())
  const int64_t b = row / d.ns(), i = row - b * d.ns(), iy = i / d.ws, ix = i - iy * d.ws;
  const acc_t den = peak != nullptr ? peak[b].v + eps : acc_t(1);
  // by rows of the target plane (no index division per element)
  const acc_t* v0 = vb + (b * hh - iy + d.hs - 1) * hw - ix + d.ws - 1;  // Vb at x_j - x_i for j = (0, 0)
  out_t* o = out + row * d.nt();
  for (int64_t jx = threadIdx.x; jx < d.wt; jx += kWarp)
    staged_loop<kStage, acc_t>(
        int64_t(0), d.ht, int64_t(1), [&](int64_t jy) { return v0[jy * hw + jx]; },
        [&](int64_t jy, acc_t v) { o[jy * d.wt + jx] = static_cast<out_t>(v / den); });
}

// The maximum of h_ij = Vb[x_j - x_i] over each batch item and the first flat index i Nt + j attaining it:
// every offset of the histogram occurs, so the maximum is Vb's; the first (i, j) of an offset o has the
// smallest source cell i with i + o inside the target grid. A block per batch item.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    hist_peak_kernel(const acc_t* __restrict__ vb, Dims d, MaxIdx<acc_t>* __restrict__ peak) {
  const int64_t hh = d.hs + d.ht - 1, hw = d.ws + d.wt - 1, b = blockIdx.x;
  MaxIdx<acc_t> m{neg_inf<acc_t>(), INT64_MAX};
  for (int64_t k = threadIdx.x; k < hh * hw; k += blockDim.x) {
    const int64_t oy = k / hw - (d.hs - 1), ox = k % hw - (d.ws - 1);
    const int64_t iy = max(int64_t(0), -oy), ix = max(int64_t(0), -ox);
    const int64_t n = (iy * d.ws + ix) * d.nt() + (iy + oy) * d.wt + ix + ox;
    m = better(m, MaxIdx<acc_t>{vb[b * hh * hw + k], n});
  }
  m = block_max_idx(m);
  if (threadIdx.x == 0) peak[b] = m;
}

// ---- per-batch reductions (two stages, fixed order: deterministic) --------------------------

template <typename acc_t>
__global__ void max_partial_kernel(const acc_t* __restrict__ h, int64_t n, MaxIdx<acc_t>* __restrict__ part) {
  const int64_t b = blockIdx.y;
  MaxIdx<acc_t> m{neg_inf<acc_t>(), INT64_MAX};
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t v = h[b * n + k];
    m = better(m, MaxIdx<acc_t>{v, k});
  }
  m = block_max_idx(m);
  if (threadIdx.x == 0) part[b * gridDim.x + blockIdx.x] = m;
}

template <typename acc_t>
__global__ void max_final_kernel(const MaxIdx<acc_t>* __restrict__ part, int64_t nparts,
                                 MaxIdx<acc_t>* __restrict__ out) {
  const int64_t b = blockIdx.x;
  MaxIdx<acc_t> m{neg_inf<acc_t>(), INT64_MAX};
  for (int64_t k = threadIdx.x; k < nparts; k += blockDim.x) m = better(m, part[b * nparts + k]);
  m = block_max_idx(m);
  if (threadIdx.x == 0) out[b] = m;
}

template <typename scalar_t, typename acc_t>
__global__ void dot_partial_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ h, int64_t n,
                                   acc_t* __restrict__ part) {
  const int64_t b = blockIdx.y;
  acc_t s = 0;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    s += static_cast<acc_t>(g[b * n + k]) * h[b * n + k];
  s = block_sum(s);
  if (threadIdx.x == 0) part[b * gridDim.x + blockIdx.x] = s;
}

template <typename acc_t>
__global__ void sum_final_kernel(const acc_t* __restrict__ part, int64_t nparts, acc_t* __restrict__ out) {
  const int64_t b = blockIdx.x;
  acc_t s = 0;
  for (int64_t k = threadIdx.x; k < nparts; k += blockDim.x) s += part[b * nparts + k];
  s = block_sum(s);
  if (threadIdx.x == 0) out[b] = s;
}

// ---- normalisation and its gradient ---------------------------------------------------------

template <typename scalar_t, typename acc_t>
__global__ void normalize_kernel(const acc_t* __restrict__ h, const MaxIdx<acc_t>* __restrict__ peak,
                                 int64_t rows, int64_t ns, int64_t nt, acc_t eps, scalar_t* __restrict__ out) {
  SCC_ROW_PROLOGUE(rows)
  const acc_t den = peak[row / ns].v + eps;
  const acc_t* hr = h + row * nt;
  scalar_t* o = out + row * nt;
  staged_loop<kStage, acc_t>(static_cast<int64_t>(threadIdx.x), nt, int64_t(kWarp), [&](int64_t j) { return hr[j]; },
                             [&](int64_t j, acc_t v) { o[j] = static_cast<scalar_t>(v / den); });
}

// grad_h = G / (m + eps) - [n = argmax] sum(G h) / (m + eps)^2.
template <typename scalar_t, typename acc_t>
__global__ void grad_h_kernel(const scalar_t* __restrict__ g, const MaxIdx<acc_t>* __restrict__ peak,
                              const acc_t* __restrict__ dot, int64_t rows, int64_t ns, int64_t nt, acc_t eps,
                              acc_t* __restrict__ gh) {
  SCC_ROW_PROLOGUE(rows)
  const int64_t b = row / ns;
  const acc_t den = peak[b].v + eps;
  const int64_t arg = peak[b].i - (row - b * ns) * nt;  // column of the argmax if it lies in this row
  for (int64_t j = threadIdx.x; j < nt; j += kWarp) {
    acc_t v = static_cast<acc_t>(g[row * nt + j]) / den;
    if (j == arg) v -= dot[b] / (den * den);
    gh[row * nt + j] = v;
  }
}

// grad_corr = gw ms mt, and grad_ms_i = sum_j gw_ij corr_ij mt_j (the warp owns row i).
template <typename scalar_t, typename acc_t>
__global__ void grad_corr_ms_kernel(const acc_t* __restrict__ gw, const scalar_t* __restrict__ corr,
                                    const scalar_t* __restrict__ ms, const scalar_t* __restrict__ mt,
                                    int64_t rows, int64_t ns, int64_t nt, scalar_t* __restrict__ gcorr,
                                    scalar_t* __restrict__ gms) {
  SCC_ROW_PROLOGUE(rows)
  const acc_t m = static_cast<acc_t>(ms[row]);
  const scalar_t* mtb = mt + (row / ns) * nt;
  acc_t s = 0;
  for (int64_t j = threadIdx.x; j < nt; j += kWarp) {
    const acc_t gv = gw[row * nt + j], t = static_cast<acc_t>(mtb[j]);
    gcorr[row * nt + j] = static_cast<scalar_t>(gv * m * t);
    s += gv * static_cast<acc_t>(corr[row * nt + j]) * t;
  }
  s = warp_sum(s);
  if (threadIdx.x == 0) gms[row] = static_cast<scalar_t>(s);
}

constexpr int kColChunk = 32;

// Partial sums over kColChunk source rows of gw_ij corr_ij ms_i, a thread per target column.
template <typename scalar_t, typename acc_t>
__global__ void grad_mt_partial_kernel(const acc_t* __restrict__ gw, const scalar_t* __restrict__ corr,
                                       const scalar_t* __restrict__ ms, int64_t ns, int64_t nt,
                                       acc_t* __restrict__ part) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= nt) return;
  const int64_t chunk = blockIdx.y, b = blockIdx.z, nchunks = gridDim.y;
  const int64_t i0 = chunk * kColChunk, i1 = min(ns, i0 + kColChunk);
  acc_t s = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t e = (b * ns + i) * nt + j;
    s += gw[e] * static_cast<acc_t>(corr[e]) * static_cast<acc_t>(ms[b * ns + i]);
  }
  part[(b * nchunks + chunk) * nt + j] = s;
}

template <typename scalar_t, typename acc_t>
__global__ void grad_mt_final_kernel(const acc_t* __restrict__ part, int64_t batch, int64_t nchunks, int64_t nt,
                                     scalar_t* __restrict__ gmt) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= batch * nt) return;
  const int64_t b = t / nt, j = t - b * nt;
  acc_t s = 0;
  for (int64_t k = 0; k < nchunks; ++k) s += part[(b * nchunks + k) * nt + j];
  gmt[t] = static_cast<scalar_t>(s);
}

#undef SCC_ROW_PROLOGUE

// ---- host side ------------------------------------------------------------------------------

template <typename acc_t>
at::Tensor acc_empty(int64_t n, const at::Tensor& like) {
  return at::empty({n}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// out = A(in), local mode, in four 1D passes through global memory: for planes too large for
// plane_blur_kernel's shared memory. (B, Ns, Nt) opmath buffers.
template <typename acc_t>
void local_vote_passes(const at::Tensor& in, at::Tensor& out, const Dims& d, double sigma, cudaStream_t stream) {
  const acc_t inv_2s2 = static_cast<acc_t>(1.0 / (2.0 * sigma * sigma));
  const int64_t hx = d.ht + 2 * d.r, wx = d.wt + 2 * d.r, bns = d.batch * d.ns();
  at::Tensor ux = acc_empty<acc_t>(bns * d.ht * wx, in);
  at::Tensor u = acc_empty<acc_t>(bns * hx * wx, in);
  at::Tensor v = acc_empty<acc_t>(bns * hx * d.wt, in);
  blur_x_kernel<acc_t><<<row_grid(bns * d.ht), row_block(), 0, stream>>>(in.const_data_ptr<acc_t>(), d, inv_2s2,
                                                                         ux.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  blur_y_kernel<acc_t><<<row_grid(bns * hx), row_block(), 0, stream>>>(ux.const_data_ptr<acc_t>(), d, inv_2s2,
                                                                      u.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  box_x_kernel<acc_t><<<row_grid(bns * hx), row_block(), 0, stream>>>(u.const_data_ptr<acc_t>(), d,
                                                                     v.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  box_y_kernel<acc_t><<<row_grid(bns * d.ht), row_block(), 0, stream>>>(v.const_data_ptr<acc_t>(), d,
                                                                       out.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The global mode's blurred offset histogram Vb (B, hs + ht - 1, ws + wt - 1) of w = corr ms mt (in null)
// or w = *in.
template <typename scalar_t, typename acc_t>
at::Tensor blurred_hist(const scalar_t* corr, const scalar_t* ms, const scalar_t* mt, const at::Tensor* in,
                        const Dims& d, double sigma, const at::Tensor& like, cudaStream_t stream) {
  const acc_t inv_2s2 = static_cast<acc_t>(1.0 / (2.0 * sigma * sigma));
  const int64_t hh = d.hs + d.ht - 1, hw = d.ws + d.wt - 1;
  at::Tensor part = acc_empty<acc_t>(d.batch * d.hs * d.ht * hw, like);
  // tiles of M: whole rows up to kHistTileCols, as many rows (with their pad) as fit kHistTile elements
  const int cols = static_cast<int>(std::min<int64_t>(d.wt, kHistTileCols));
  const int rows = static_cast<int>(std::clamp<int64_t>(kHistTile / (cols + 1), 1, d.ws));
  const size_t smem = sizeof(acc_t) * rows * (cols + 1);
  if (in == nullptr) {
    hist_partial_kernel<scalar_t, acc_t, true><<<d.batch * d.hs, kThreads, smem, stream>>>(
        corr, ms, mt, nullptr, d, rows, cols, part.mutable_data_ptr<acc_t>());
  } else {
    hist_partial_kernel<scalar_t, acc_t, false><<<d.batch * d.hs, kThreads, smem, stream>>>(
        nullptr, nullptr, nullptr, in->const_data_ptr<acc_t>(), d, rows, cols, part.mutable_data_ptr<acc_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor hist = acc_empty<acc_t>(d.batch * hh * hw, like);
  at::Tensor vb = acc_empty<acc_t>(d.batch * hh * hw, like);
  hist_reduce_kernel<acc_t><<<ceil_div(d.batch * hh * hw, kThreads), kThreads, 0, stream>>>(
      part.const_data_ptr<acc_t>(), d, hist.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  hist_blur_kernel<acc_t><<<row_grid(d.batch * hh), row_block(), 0, stream>>>(
      hist.const_data_ptr<acc_t>(), d, inv_2s2, vb.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return vb;
}

// Per-batch peak records (MaxIdx<acc_t>, as bytes) of h from Vb.
template <typename acc_t>
at::Tensor hist_peak(const at::Tensor& vb, const Dims& d, cudaStream_t stream) {
  at::Tensor peak = at::empty({d.batch * static_cast<int64_t>(sizeof(MaxIdx<acc_t>))}, vb.options().dtype(at::kByte));
  hist_peak_kernel<acc_t><<<d.batch, kThreads, 0, stream>>>(vb.const_data_ptr<acc_t>(), d,
                                                            reinterpret_cast<MaxIdx<acc_t>*>(peak.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return peak;
}

int64_t reduce_parts(int64_t n) { return std::min<int64_t>(ceil_div(n, kThreads), 512); }

// Per-batch maximum of h with its first flat index: (B,) MaxIdx records.
template <typename acc_t>
at::Tensor batch_peak(const at::Tensor& h, const Dims& d, cudaStream_t stream) {
  const int64_t n = d.ns() * d.nt(), nparts = reduce_parts(n);
  const int64_t rec = sizeof(MaxIdx<acc_t>);
  at::Tensor part = at::empty({d.batch * nparts * rec}, h.options().dtype(at::kByte));
  at::Tensor peak = at::empty({d.batch * rec}, h.options().dtype(at::kByte));
  auto* pp = reinterpret_cast<MaxIdx<acc_t>*>(part.mutable_data_ptr());
  max_partial_kernel<acc_t><<<dim3(nparts, d.batch), kThreads, 0, stream>>>(h.const_data_ptr<acc_t>(), n, pp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  max_final_kernel<acc_t><<<d.batch, kThreads, 0, stream>>>(pp, nparts,
                                                           reinterpret_cast<MaxIdx<acc_t>*>(peak.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return peak;
}

struct Checked {
  Dims d;
  bool local;
};

// Arguments are checked by the caller (register.cpp): shapes, dtypes, devices, mode, radius >= 0, sigma > 0
// finite. Radius and rho are clamped to what can reach a grid cell (common.h): the same result, and bounded
// shared memory / grids for any radius or sigma.
Checked make_dims(const at::Tensor& corr, c10::string_view mode, int64_t radius, double sigma) {
  const int64_t hs = corr.size(1), ws = corr.size(2), ht = corr.size(3), wt = corr.size(4);
  return {Dims{corr.size(0), hs, ws, ht, wt, vote_radius(radius, hs, ws), vote_rho(sigma, hs, ws, ht, wt)},
          mode == "local"};
}

constexpr int64_t kMaxSmem = 48 * 1024;  // dynamic shared memory without an opt-in

// h = A(w) into `h` (B Ns Nt opmath values) and, if `peak` is given, each batch item's maximum of h with its
// first flat index. w is corr * ms * mt when `in` is null (the forward's weights, formed on the way in),
// else *in (opmath values: a gradient in the backward).
template <typename scalar_t, typename acc_t>
void vote(const scalar_t* corr, const scalar_t* ms, const scalar_t* mt, const at::Tensor* in, const Checked& a,
          double sigma, at::Tensor& h, at::Tensor* peak, const at::Tensor& like, cudaStream_t stream) {
  const Dims& d = a.d;
  const int64_t rows = d.batch * d.ns(), smem = plane_blur_smem(d, sizeof(acc_t));
  const acc_t inv_2s2 = static_cast<acc_t>(1.0 / (2.0 * sigma * sigma));
  const int64_t rec = sizeof(MaxIdx<acc_t>);
  if (!a.local) {
    const at::Tensor vb = blurred_hist<scalar_t, acc_t>(corr, ms, mt, in, d, sigma, like, stream);
    if (peak != nullptr) *peak = hist_peak<acc_t>(vb, d, stream);
    gather_kernel<acc_t, acc_t><<<row_grid(rows), row_block(), 0, stream>>>(
        vb.const_data_ptr<acc_t>(), nullptr, d, acc_t(0), h.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t ring_smem = box_smem(d, sizeof(acc_t));
  if (smem <= kMaxSmem && ring_smem <= kMaxSmem) {
    at::Tensor u = acc_empty<acc_t>(rows * (d.ht + 2 * d.r) * (d.wt + 2 * d.r), like);
    acc_t* up = u.mutable_data_ptr<acc_t>();
    if (in == nullptr) {
      plane_blur_kernel<scalar_t, acc_t, true><<<rows, kThreads, smem, stream>>>(corr, ms, mt, nullptr, d, inv_2s2, up);
    } else {
      plane_blur_kernel<scalar_t, acc_t, false><<<rows, kThreads, smem, stream>>>(
          nullptr, nullptr, nullptr, in->const_data_ptr<acc_t>(), d, inv_2s2, up);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t parts = d.hs * ceil_div(d.ws, kBoxRun);  // box_kernel blocks per batch item
    at::Tensor part = at::empty({d.batch * parts * rec}, like.options().dtype(at::kByte));
    auto* pp = reinterpret_cast<MaxIdx<acc_t>*>(part.mutable_data_ptr());
    box_kernel<acc_t><<<d.batch * parts, kThreads, ring_smem, stream>>>(
        u.const_data_ptr<acc_t>(), d, h.mutable_data_ptr<acc_t>(), pp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (peak != nullptr) {
      *peak = at::empty({d.batch * rec}, like.options().dtype(at::kByte));
      max_final_kernel<acc_t><<<d.batch, kThreads, 0, stream>>>(
          pp, parts, reinterpret_cast<MaxIdx<acc_t>*>(peak->mutable_data_ptr()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return;
  }
  at::Tensor w = in != nullptr ? *in : acc_empty<acc_t>(rows * d.nt(), like);
  if (in == nullptr) {
    weight_kernel<scalar_t, acc_t><<<row_grid(rows), row_block(), 0, stream>>>(corr, ms, mt, rows, d.ns(), d.nt(),
                                                                              w.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  local_vote_passes<acc_t>(w, h, d, sigma, stream);
  if (peak != nullptr) *peak = batch_peak<acc_t>(h, d, stream);
}

}  // namespace

at::Tensor masked_vote(const at::Tensor& corr_in, const at::Tensor& mask_s_in, const at::Tensor& mask_t_in,
                       c10::string_view mode, int64_t radius, double sigma, double eps) {
  const Checked a = make_dims(corr_in, mode, radius, sigma);
  const Dims& d = a.d;
  const c10::cuda::CUDAGuard guard(corr_in.device());
  const at::Tensor corr = corr_in.contiguous(), ms = mask_s_in.contiguous(), mt = mask_t_in.contiguous();
  const int64_t rows = d.batch * d.ns();
  at::Tensor out = alloc_output(corr.sizes(), corr.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(corr.scalar_type(), "scc_masked_vote_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* cp = corr.const_data_ptr<scalar_t>();
    const scalar_t* msp = ms.const_data_ptr<scalar_t>();
    const scalar_t* mtp = mt.const_data_ptr<scalar_t>();
    if (!a.local) {  // g straight from the blurred histogram: h is never materialised
      const at::Tensor vb = blurred_hist<scalar_t, acc_t>(cp, msp, mtp, nullptr, d, sigma, corr, stream);
      const at::Tensor peak = hist_peak<acc_t>(vb, d, stream);
      gather_kernel<scalar_t, acc_t><<<row_grid(rows), row_block(), 0, stream>>>(
          vb.const_data_ptr<acc_t>(), reinterpret_cast<const MaxIdx<acc_t>*>(peak.const_data_ptr()), d,
          static_cast<acc_t>(eps), out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    at::Tensor h = acc_empty<acc_t>(rows * d.nt(), corr);
    at::Tensor peak;
    vote<scalar_t, acc_t>(cp, msp, mtp, nullptr, a, sigma, h, &peak, corr, stream);
    normalize_kernel<scalar_t, acc_t><<<row_grid(rows), row_block(), 0, stream>>>(
        h.const_data_ptr<acc_t>(), reinterpret_cast<const MaxIdx<acc_t>*>(peak.const_data_ptr()), rows, d.ns(),
        d.nt(), static_cast<acc_t>(eps), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_vote_backward(const at::Tensor& grad_in,
                                                                    const at::Tensor& corr_in,
                                                                    const at::Tensor& mask_s_in,
                                                                    const at::Tensor& mask_t_in,
                                                                    c10::string_view mode, int64_t radius,
                                                                    double sigma, double eps) {
  const Checked a = make_dims(corr_in, mode, radius, sigma);
  const Dims& d = a.d;
  const c10::cuda::CUDAGuard guard(corr_in.device());
  const at::Tensor corr = corr_in.contiguous(), ms = mask_s_in.contiguous(), mt = mask_t_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const int64_t rows = d.batch * d.ns(), n = d.ns() * d.nt();
  at::Tensor gcorr = alloc_output(corr.sizes(), corr.options());
  at::Tensor gms = alloc_output(ms.sizes(), ms.options());
  at::Tensor gmt = alloc_output(mt.sizes(), mt.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SCC_DISPATCH_FLOATING(corr.scalar_type(), "scc_masked_vote_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* cp = corr.const_data_ptr<scalar_t>();
    const scalar_t* msp = ms.const_data_ptr<scalar_t>();
    const scalar_t* mtp = mt.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    // Recompute h and its peak.
    at::Tensor h = acc_empty<acc_t>(rows * d.nt(), corr);
    at::Tensor peak;
    vote<scalar_t, acc_t>(cp, msp, mtp, nullptr, a, sigma, h, &peak, corr, stream);
    const auto* pk = reinterpret_cast<const MaxIdx<acc_t>*>(peak.const_data_ptr());
    // sum(G h) per batch item.
    const int64_t nparts = reduce_parts(n);
    at::Tensor part = acc_empty<acc_t>(d.batch * nparts, corr);
    at::Tensor dot = acc_empty<acc_t>(d.batch, corr);
    dot_partial_kernel<scalar_t, acc_t><<<dim3(nparts, d.batch), kThreads, 0, stream>>>(
        gp, h.const_data_ptr<acc_t>(), n, part.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_final_kernel<acc_t><<<d.batch, kThreads, 0, stream>>>(part.const_data_ptr<acc_t>(), nparts,
                                                             dot.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // grad_h, then grad_w = A(grad_h) into `h`'s buffer (A is self-adjoint).
    at::Tensor gh = acc_empty<acc_t>(rows * d.nt(), corr);
    grad_h_kernel<scalar_t, acc_t><<<row_grid(rows), row_block(), 0, stream>>>(
        gp, pk, dot.const_data_ptr<acc_t>(), rows, d.ns(), d.nt(), static_cast<acc_t>(eps),
        gh.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    vote<scalar_t, acc_t>(nullptr, nullptr, nullptr, &gh, a, sigma, h, nullptr, corr, stream);
    const acc_t* gw = h.const_data_ptr<acc_t>();
    grad_corr_ms_kernel<scalar_t, acc_t><<<row_grid(rows), row_block(), 0, stream>>>(
        gw, cp, msp, mtp, rows, d.ns(), d.nt(), gcorr.mutable_data_ptr<scalar_t>(), gms.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t nchunks = ceil_div(d.ns(), kColChunk);
    at::Tensor cpart = acc_empty<acc_t>(d.batch * nchunks * d.nt(), corr);
    grad_mt_partial_kernel<scalar_t, acc_t><<<dim3(ceil_div(d.nt(), kThreads), nchunks, d.batch), kThreads, 0, stream>>>(
        gw, cp, msp, d.ns(), d.nt(), cpart.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_mt_final_kernel<scalar_t, acc_t><<<ceil_div(d.batch * d.nt(), kThreads), kThreads, 0, stream>>>(
        cpart.const_data_ptr<acc_t>(), d.batch, nchunks, d.nt(), gmt.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gcorr, gms, gmt};
}

}  // namespace cuda
}  // namespace scc
