// fused_match: soft_argmax(softmax_j(correlation(fs, ft) / tau)) without the Ns x Nt volume.
// Each task owns a tile of source rows and streams over target tiles: one small GEMM per tile, the
// normalise + ReLU + 1/tau epilogue, an online softmax (running max, sum, and for window = -1 the
// running sums of p * col and p * row) and a running first argmax. A window >= 0 is resolved by a
// second pass over only the (2 window + 1)^2 cells around each argmax. Peak extra memory is one
// TI x TJ tile per thread plus O((Ns + Nt) C) for transposed features: never O(Ns Nt).
// Backward recomputes the tiles from fs, ft and the saved row log-normalisers (lse) three times: once for
// each row's statistics (flow, window mass, P at the argmax), then per source tile (grad_fs) and per target
// tile (grad_ft). The per-element row loops are vectorised (float: one copy per ISA, see isa.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../common.h"
#include "../ops.h"
#include "isa.h"

// inlined into each ISA's copy of the row loops below, and compiled for that ISA there
#define SCC_ALWAYS_INLINE __attribute__((always_inline)) inline

namespace scc {
void check_feature_pair(const at::Tensor& fs, const at::Tensor& ft);  // correlation.cpp

namespace cpu {
namespace {

constexpr int64_t TI = 64;   // source rows per task
constexpr int64_t TJ = 256;  // target columns per tile
constexpr double kEps = 1e-6;

struct Features {
  int64_t B, C, hs, ws, ht, wt, Ns, Nt;
  at::Tensor fsT;  // (B, Ns, C)
  at::Tensor ft;   // (B, C, Nt)
  at::Tensor ftT;  // (B, Nt, C), for per-cell dot products
  at::Tensor a, b; // norms (B, Ns), (B, Nt)
};

Features prepare(const at::Tensor& fs_in, const at::Tensor& ft_in, double tau, int64_t window) {
  check_feature_pair(fs_in, ft_in);
  check_positive(tau, "tau");
  check_window(window);
  Features F;
  const at::Tensor fs = widen(fs_in), ft = widen(ft_in);
  F.B = fs.size(0); F.C = fs.size(1); F.hs = fs.size(2); F.ws = fs.size(3); F.ht = ft.size(2); F.wt = ft.size(3);
  F.Ns = F.hs * F.ws; F.Nt = F.ht * F.wt;
  F.ft = ft.view({F.B, F.C, F.Nt});
  F.fsT = fs.view({F.B, F.C, F.Ns}).transpose(1, 2).contiguous();
  F.ftT = F.ft.transpose(1, 2).contiguous();
  F.a = at::linalg_vector_norm(fs.view({F.B, F.C, F.Ns}), 2, {1}).contiguous();
  F.b = at::linalg_vector_norm(F.ft, 2, {1}).contiguous();
  return F;
}

// The forward's window pass only (the backward takes every product from the tiles' GEMMs)
template <typename T>
inline T dot(const T* x, const T* y, int64_t n) {
  T s = 0;
  for (int64_t c = 0; c < n; ++c) s += x[c] * y[c];
  return s;
}

// Logit of one (i, j) pair from its dot product: relu(d / (a_i b_j + eps)) / tau. The ReLU keeps NaN
// (as the reference's clamp does): a NaN feature must not turn into a confident match.
template <typename T>
SCC_ALWAYS_INLINE T logit(T d, T ai, T bj, T inv_tau) {
  const T r = d / (ai * bj + static_cast<T>(kEps));
  const T l = r * inv_tau;  // outside the select: GCC does not vectorise arithmetic under a condition
  return !(r <= 0) ? l : T(0);
}

// exp of what this file exponentiates (a logit minus its row's running maximum or lse: <= 0 up to rounding;
// valid up to 88). float: a Cody-Waite reduction to r in [-ln2/2, ln2/2] and a degree-6 polynomial, at most
// 1.02 ulp from the exact value on [-87.3, 88]; 0 below about -87.7 (where exp < 1e-38), NaN kept.
// Unlike std::exp, GCC vectorises it (about 5x faster in the row loops below). double keeps std::exp.
SCC_ALWAYS_INLINE float exp_small(float x) {
  // Selects between values only, no arithmetic under a condition: GCC then vectorises without AVX-512's masks.
  // NaN -> -104: no NaN converted to int below (ternaries, not std::min/max: those would not be inlined into
  // the no-trapping-math copies below)
  const float xl = x > -104.0f ? x : -104.0f;
  const float xc = xl < 88.0f ? xl : 88.0f;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest, vectorisable
  const float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;  // ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * r) * r + r + 1.0f;
  const int32_t k = static_cast<int32_t>(n) + 127;
  const int32_t bits = (k > 0 ? k : 0) << 23;  // 2^n, or 0 below 2^-126
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float e = p * scale;
  return x != x ? x : e;
}
SCC_ALWAYS_INLINE double exp_small(double x) { return std::exp(x); }

// The logits of one tile row, in place; returns their maximum (NaN skipped), -inf if all are NaN.
template <typename T>
SCC_ALWAYS_INLINE T logits_row_impl(T* row, const T* bj, int64_t nj, T ai, T inv_tau) {
  T tm = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : tm)
  for (int64_t jj = 0; jj < nj; ++jj) {
    const T l = logit(row[jj], ai, bj[jj], inv_tau);
    row[jj] = l;
    tm = l > tm ? l : tm;
  }
  // logits are >= 0 or NaN: a negative maximum is a simd lane's starting value, i.e. no logit but NaN
  return tm >= 0 ? tm : -std::numeric_limits<T>::infinity();
}

// out = (sum_j e_j, sum_j e_j xs_j, sum_j e_j ys_j) with e_j = exp(row_j - m), in double; the last two only if xs.
template <typename T>
SCC_ALWAYS_INLINE void exp_sums_impl(const T* row, int64_t nj, T m, const T* xs, const T* ys, double* out) {
  double s = 0, sx = 0, sy = 0;
  if (xs == nullptr) {
#pragma omp simd reduction(+ : s)
    for (int64_t jj = 0; jj < nj; ++jj) s += exp_small(row[jj] - m);
  } else {
#pragma omp simd reduction(+ : s, sx, sy)
    for (int64_t jj = 0; jj < nj; ++jj) {
      const double e = exp_small(row[jj] - m);
      s += e;
      sx += e * xs[jj];
      sy += e * ys[jj];
    }
  }
  out[0] = s;
  out[1] = sx;
  out[2] = sy;
}

// What one source row of a backward tile needs: its norm and lse, the upstream gradients, flow, 1 / window mass,
// c_i, the window's bounds, the argmax's cell (as coordinates, compared with xs / ys) and 1 / sum_j exp(l_j - lse)
// (1 up to the rounding of the saved lse, which is large at a small tau). The row statistics pass reads only ai, lse,
// the window and the cell.
template <typename T>
struct GradRow {
  T ai, lse, gx, gy, fx, fy, inv_S, gconf, c, r0, r1, c0, c1, ax, ay, pscale;

  // bitwise &, not &&: no branches in the vectorised loops
  SCC_ALWAYS_INLINE bool in_window(T x, T y) const { return (y >= r0) & (y <= r1) & (x >= c0) & (x <= c1); }
  SCC_ALWAYS_INLINE bool at_argmax(T x, T y) const { return (x == ax) & (y == ay); }
};

// Row statistics from one row of a backward tile, with P_j = exp(l_j - lse): adds sum_{j in W} P_j,
// sum_{j in W} P_j x_j, sum_{j in W} P_j y_j, P at the argmax's cell (0 if it is not in this tile) and sum_j P_j to
// out[0..4], in double.
template <typename T>
SCC_ALWAYS_INLINE void stats_row_impl(const T* d, const T* bj, const T* xs, const T* ys, int64_t nj, T inv_tau,
                                      const GradRow<T>& g, double* out) {
  double s = 0, sx = 0, sy = 0, pa = 0, z = 0;
#pragma omp simd reduction(+ : s, sx, sy, pa, z)
  for (int64_t jj = 0; jj < nj; ++jj) {
    const T prob = exp_small(logit(d[jj], g.ai, bj[jj], inv_tau) - g.lse);
    const double pw = g.in_window(xs[jj], ys[jj]) ? prob : T(0);
    s += pw;
    sx += pw * xs[jj];
    sy += pw * ys[jj];
    pa += g.at_argmax(xs[jj], ys[jj]) ? prob : T(0);
    z += prob;
  }
  out[0] += s;
  out[1] += sx;
  out[2] += sy;
  out[3] += pa;
  out[4] += z;
}

// One row of a backward tile: the dot products p_j -> A_j = dL/d(dot_j) in place. Returns
// sum_j A_j r_j b_j (the row's normalisation gradient) and adds A_j r_j a_i to colq_j when colq is given.
template <typename T>
SCC_ALWAYS_INLINE double grad_row_impl(T* p, const T* bj, const T* xs, const T* ys, int64_t nj, T inv_tau,
                                       const GradRow<T>& g, T* colq) {
  double rowq = 0;
#pragma omp simd reduction(+ : rowq)
  for (int64_t jj = 0; jj < nj; ++jj) {
    const T n = g.ai * bj[jj] + static_cast<T>(kEps);
    const T rv = p[jj] / n;
    const T prob = exp_small(logit(p[jj], g.ai, bj[jj], inv_tau) - g.lse) * g.pscale;  // stats_row_impl's P
    // every value computed, then selected: GCC does not vectorise arithmetic under a condition
    const T flow_term = (g.gx * (xs[jj] - g.fx) + g.gy * (ys[jj] - g.fy)) * g.inv_S;
    T gp = g.in_window(xs[jj], ys[jj]) ? flow_term : T(0);
    gp += g.at_argmax(xs[jj], ys[jj]) ? g.gconf : T(0);
    const T A_any = prob * (gp - g.c) * inv_tau / n;
    const T A = rv > 0 ? A_any : T(0);
    p[jj] = A;
    rowq += A * rv * bj[jj];
    if (colq != nullptr) colq[jj] += A * rv * g.ai;
  }
  return rowq;
}

}  // namespace

// The float row loops in one copy per ISA (isa.h): GCC vectorises each for its ISA. no-trapping-math (results are
// the same, only floating-point exception flags could differ) lets it compute both sides of the selects above in
// vector lanes: otherwise it moves the arithmetic of one side under a branch, which only AVX-512's masks vectorise.
#define SCC_FM_ROW_FUNCS(T)                                                                               \
  T logits_row(T* row, const T* bj, int64_t nj, T ai, T inv_tau) {                                        \
    return logits_row_impl(row, bj, nj, ai, inv_tau);                                                     \
  }                                                                                                       \
  void exp_sums(const T* row, int64_t nj, T m, const T* xs, const T* ys, double* out) {                   \
    exp_sums_impl(row, nj, m, xs, ys, out);                                                               \
  }                                                                                                       \
  double grad_row(T* p, const T* bj, const T* xs, const T* ys, int64_t nj, T inv_tau, const GradRow<T>& g, \
                  T* colq) {                                                                              \
    return grad_row_impl(p, bj, xs, ys, nj, inv_tau, g, colq);                                            \
  }                                                                                                       \
  void stats_row(const T* d, const T* bj, const T* xs, const T* ys, int64_t nj, T inv_tau,                \
                 const GradRow<T>& g, double* out) {                                                      \
    stats_row_impl(d, bj, xs, ys, nj, inv_tau, g, out);                                                   \
  }

#ifdef SCC_CPU_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#pragma GCC optimize("no-trapping-math")
namespace {
namespace fm_avx512 {
SCC_FM_ROW_FUNCS(float)
}  // namespace fm_avx512
}  // namespace
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("no-trapping-math")
namespace {
namespace fm_avx2 {
SCC_FM_ROW_FUNCS(float)
}  // namespace fm_avx2
}  // namespace
#pragma GCC pop_options
#endif

#ifdef SCC_CPU_X86
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif
namespace {
namespace fm_base {
SCC_FM_ROW_FUNCS(float)
SCC_FM_ROW_FUNCS(double)  // float64 has only this copy (std::exp does not vectorise)
}  // namespace fm_base
}  // namespace
#ifdef SCC_CPU_X86
#pragma GCC pop_options
#endif
#undef SCC_FM_ROW_FUNCS

namespace {

template <typename T>
struct RowFuncs {
  T (*logits)(T*, const T*, int64_t, T, T);
  void (*sums)(const T*, int64_t, T, const T*, const T*, double*);
  double (*grad)(T*, const T*, const T*, const T*, int64_t, T, const GradRow<T>&, T*);
  void (*stats)(const T*, const T*, const T*, const T*, int64_t, T, const GradRow<T>&, double*);
};

// The row loops for T on this CPU (looked up once per call, outside the loops).
const RowFuncs<float>& row_funcs(float) {
  static const RowFuncs<float> f = []() -> RowFuncs<float> {
    switch (detect_isa()) {
#ifdef SCC_CPU_X86
      case Isa::avx512: return {fm_avx512::logits_row, fm_avx512::exp_sums, fm_avx512::grad_row, fm_avx512::stats_row};
      case Isa::avx2: return {fm_avx2::logits_row, fm_avx2::exp_sums, fm_avx2::grad_row, fm_avx2::stats_row};
#endif
      default: return {fm_base::logits_row, fm_base::exp_sums, fm_base::grad_row, fm_base::stats_row};
    }
  }();
  return f;
}
const RowFuncs<double>& row_funcs(double) {
  static const RowFuncs<double> f{fm_base::logits_row, fm_base::exp_sums, fm_base::grad_row, fm_base::stats_row};
  return f;
}

// Column and row coordinates of every target cell, as T (the row loops compare and weight with them).
template <typename T>
void cell_coords(int64_t Nt, int64_t wt, std::vector<T>& xs, std::vector<T>& ys) {
  xs.resize(Nt);
  ys.resize(Nt);
  for (int64_t j = 0; j < Nt; ++j) {
    xs[j] = static_cast<T>(j % wt);
    ys[j] = static_cast<T>(j / wt);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_match(const at::Tensor& fs_in, const at::Tensor& ft_in,
                                                                       double tau, int64_t window) {
  const Features F = prepare(fs_in, ft_in, tau, window);
  const auto opts = F.fsT.options();
  at::Tensor flow = alloc_output({F.B, F.hs, F.ws, 2}, opts);
  at::Tensor conf = alloc_output({F.B, F.hs, F.ws}, opts);
  at::Tensor arg = alloc_output({F.B, F.hs, F.ws}, opts.dtype(at::kLong));
  at::Tensor lse = alloc_output({F.B, F.Ns}, opts);
  const int64_t ntiles = (F.Ns + TI - 1) / TI;
  AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "scc_fused_match", [&] {
    using T = scalar_t;
    // The row sums in double: the backward takes sum_j P_ij (x_j - flow_i) = 0 on trust, so a flow or lse
    // off by float32 summation error over Nt terms came back as 3-6x PyTorch's own error in the gradients.
    using Acc = double;
    const T inv_tau = T(1) / static_cast<T>(tau);
    const T *a = F.a.data_ptr<T>(), *bn = F.b.data_ptr<T>();
    const T *fsT = F.fsT.data_ptr<T>(), *ftT = F.ftT.data_ptr<T>();
    T *fl = flow.data_ptr<T>(), *cf = conf.data_ptr<T>(), *ls = lse.data_ptr<T>();
    int64_t* am = arg.data_ptr<int64_t>();
    const RowFuncs<T>& rf = row_funcs(T());
    std::vector<T> xs, ys;
    cell_coords(F.Nt, F.wt, xs, ys);
    at::parallel_for(0, F.B * ntiles, 1, [&](int64_t t0, int64_t t1) {
      const BelowAutograd below_autograd;
      std::vector<T> m(TI);
      std::vector<Acc> s(TI), sx(TI), sy(TI);
      std::vector<int64_t> best(TI);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / ntiles, i0 = (t % ntiles) * TI, ni = std::min(TI, F.Ns - i0);
        std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
        std::fill(s.begin(), s.end(), Acc(0));
        std::fill(sx.begin(), sx.end(), Acc(0));
        std::fill(sy.begin(), sy.end(), Acc(0));
        std::fill(best.begin(), best.end(), int64_t(0));  // a row of NaN logits never updates it
        const at::Tensor fs_tile = F.fsT[b].narrow(0, i0, ni);
        for (int64_t j0 = 0; j0 < F.Nt; j0 += TJ) {
          const int64_t nj = std::min(TJ, F.Nt - j0);
          at::Tensor d = at::mm(fs_tile, F.ft[b].narrow(1, j0, nj));  // (ni, nj)
          T* dp = d.data_ptr<T>();
          const T* bj = bn + b * F.Nt + j0;
          for (int64_t ii = 0; ii < ni; ++ii) {
            T* row = dp + ii * nj;
            const T ai = a[b * F.Ns + i0 + ii];
            const T tm = rf.logits(row, bj, nj, ai, inv_tau);
            if (tm > m[ii]) {  // strict: an earlier tile keeps the argmax on ties
              const Acc scale = std::exp(static_cast<Acc>(m[ii]) - tm);
              s[ii] *= scale; sx[ii] *= scale; sy[ii] *= scale;
              m[ii] = tm;
              // the first maximum of this tile's row: tm is one of the stored logits, bit for bit
              static_assert(FLT_EVAL_METHOD == 0, "no excess precision: stored logits must equal their maximum");
              int64_t targ = 0;
              while (targ + 1 < nj && row[targ] != tm) ++targ;
              best[ii] = j0 + targ;
            }
            Acc sums[3];
            rf.sums(row, nj, m[ii], window < 0 ? xs.data() + j0 : nullptr, ys.data() + j0, sums);
            s[ii] += sums[0]; sx[ii] += sums[1]; sy[ii] += sums[2];
          }
        }
        for (int64_t ii = 0; ii < ni; ++ii) {
          const int64_t r = b * F.Ns + i0 + ii;
          ls[r] = static_cast<T>(m[ii] + std::log(s[ii]));
          cf[r] = static_cast<T>(1 / s[ii]);  // exp(max logit - lse)
          am[r] = best[ii];
          if (s[ii] != s[ii]) {  // a NaN logit (NaN or inf feature): the reference's softmax row is all NaN,
            am[r] = 0;           // so its argmax is the first cell and flow is NaN, windowed or not
            fl[2 * r] = fl[2 * r + 1] = std::numeric_limits<T>::quiet_NaN();
            continue;
          }
          if (window < 0) {
            fl[2 * r] = static_cast<T>(sx[ii] / s[ii]);
            fl[2 * r + 1] = static_cast<T>(sy[ii] / s[ii]);
            continue;
          }
          const Window w = window_of(best[ii], F.ht, F.wt, window);
          const T* fi = fsT + r * F.C;
          Acc S = 0, X = 0, Y = 0;
          for (int64_t y = w.r0; y <= w.r1; ++y)
            for (int64_t x = w.c0; x <= w.c1; ++x) {
              const int64_t j = y * F.wt + x;
              const T l = logit(dot(fi, ftT + (b * F.Nt + j) * F.C, F.C), a[r], bn[b * F.Nt + j], inv_tau);
              const T p = exp_small(l - m[ii]);
              S += p; X += p * x; Y += p * y;
            }
          fl[2 * r] = static_cast<T>(X / S);
          fl[2 * r + 1] = static_cast<T>(Y / S);
        }
      }
    });
  });
  const auto dt = fs_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {flow.to(dt), conf.to(dt), arg, lse.to(dt)};
}

std::tuple<at::Tensor, at::Tensor> fused_match_backward(const at::Tensor& gflow_in, const at::Tensor& gconf_in,
                                                        const at::Tensor& fs_in, const at::Tensor& ft_in, double tau,
                                                        int64_t window, const at::Tensor& flow_in,
                                                        const at::Tensor& arg_in, const at::Tensor& lse_in) {
  const Features F = prepare(fs_in, ft_in, tau, window);
  const int64_t BN = F.B * F.Ns;
  TORCH_CHECK_VALUE(gflow_in.numel() == 2 * BN && flow_in.numel() == 2 * BN && gconf_in.numel() == BN &&
                        arg_in.numel() == BN && lse_in.numel() == BN,
                    "scc: fused_match_backward: `grad_flow`/`flow` need ", 2 * BN,
                    " elements and `grad_conf`/`argmax`/`lse` ", BN);
  const auto wdt = F.fsT.scalar_type();
  const at::Tensor gflow = gflow_in.to(wdt).contiguous(), gconf = gconf_in.to(wdt).contiguous();
  const at::Tensor lse = lse_in.to(wdt).contiguous();
  const at::Tensor argm = arg_in.to(at::kLong).contiguous();
  // argmax indexes the target cells below: a value from anywhere but fused_match would read out of bounds
  {
    const int64_t* am = argm.data_ptr<int64_t>();
    for (int64_t r = 0; r < BN; ++r)
      TORCH_CHECK_VALUE(am[r] >= 0 && am[r] < F.Nt, "scc: fused_match_backward: `argmax` must hold target indices ",
                        "in [0, Nt) = [0, ", F.Nt, "), got ", am[r]);
  }
  at::Tensor gfsT = at::zeros({F.B, F.Ns, F.C}, F.fsT.options());
  at::Tensor gft = at::zeros({F.B, F.C, F.Nt}, F.fsT.options());
  AT_DISPATCH_FLOATING_TYPES(wdt, "scc_fused_match_backward", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / static_cast<T>(tau);
    // `flow` is only checked (above): the row statistics below recompute it from the tiles
    const T *a = F.a.data_ptr<T>(), *bn = F.b.data_ptr<T>(), *fsT = F.fsT.data_ptr<T>(), *ftT = F.ftT.data_ptr<T>();
    const T *gf = gflow.data_ptr<T>(), *gc = gconf.data_ptr<T>(), *ls = lse.data_ptr<T>();
    const int64_t* am = argm.data_ptr<int64_t>();
    const RowFuncs<T>& rf = row_funcs(T());
    std::vector<T> xs, ys;
    cell_coords(F.Nt, F.wt, xs, ys);
    const int64_t ti = (F.Ns + TI - 1) / TI, tj = (F.Nt + TJ - 1) / TJ;
    auto tile = [&](int64_t b, int64_t i0, int64_t ni, int64_t j0, int64_t nj) {
      return at::mm(F.fsT[b].narrow(0, i0, ni), F.ft[b].narrow(1, j0, nj));
    };
    auto row_of = [&](int64_t r) {
      const Window w = window_of(am[r], F.ht, F.wt, window);
      return GradRow<T>{a[r], ls[r], gf[2 * r], gf[2 * r + 1], T(0), T(0), T(0), gc[r], T(0),
                        static_cast<T>(w.r0), static_cast<T>(w.r1), static_cast<T>(w.c0), static_cast<T>(w.c1),
                        xs[am[r]], ys[am[r]], T(1)};
    };
    // Per-row statistics, from the same GEMM tiles as the gradient passes: the window mass S_i, the flow (the
    // forward's, recomputed), and c_i = sum_j gP_ij P_ij, which reduces to grad_conf_i P_ij* because the flow term
    // sums to zero over the window (up to the flow's rounding); all with P normalised by its own sum. Per-cell dot products (as the forward's
    // window pass) round differently, and so does the saved lse (by up to an ulp of the largest logit): 1/tau
    // amplifies either in the cancellation gP - c (the gradients were up to 70x PyTorch's float32 error at tau = 0.004).
    std::vector<GradRow<T>> rows(BN);
    at::parallel_for(0, F.B * ti, 1, [&](int64_t t0, int64_t t1) {
      const BelowAutograd below_autograd;
      std::vector<double> st(5 * TI);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / ti, i0 = (t % ti) * TI, ni = std::min(TI, F.Ns - i0);
        std::fill(st.begin(), st.end(), 0.0);
        for (int64_t ii = 0; ii < ni; ++ii) rows[b * F.Ns + i0 + ii] = row_of(b * F.Ns + i0 + ii);
        for (int64_t j0 = 0; j0 < F.Nt; j0 += TJ) {
          const int64_t nj = std::min(TJ, F.Nt - j0);
          const at::Tensor d = tile(b, i0, ni, j0, nj);
          const T* dp = d.data_ptr<T>();
          for (int64_t ii = 0; ii < ni; ++ii)
            rf.stats(dp + ii * nj, bn + b * F.Nt + j0, xs.data() + j0, ys.data() + j0, nj, inv_tau,
                      rows[b * F.Ns + i0 + ii], st.data() + 5 * ii);
        }
        for (int64_t ii = 0; ii < ni; ++ii) {
          GradRow<T>& g = rows[b * F.Ns + i0 + ii];
          const double* v = st.data() + 5 * ii;
          const double fx = v[1] / v[0], fy = v[2] / v[0];
          g.fx = static_cast<T>(fx);
          g.fy = static_cast<T>(fy);
          g.inv_S = static_cast<T>(v[4] / v[0]);
          // the flow term sums to u . (flow - flow rounded to T), not 0, over the window: kept in c
          g.c = static_cast<T>(g.gconf * v[3] / v[4] + g.gx * (fx - g.fx) + g.gy * (fy - g.fy));
          g.pscale = static_cast<T>(1 / v[4]);
        }
      }
    });
    // A_ij = dL/d(dot_ij) and Q_ij = A_ij r_ij (the normalisation's factor) for one tile.
    auto tile_grads = [&](int64_t b, int64_t i0, int64_t ni, int64_t j0, int64_t nj, at::Tensor& A, T* rowq, T* colq) {
      at::Tensor d = tile(b, i0, ni, j0, nj);
      A = d;  // overwritten in place
      T* p = d.data_ptr<T>();
      for (int64_t ii = 0; ii < ni; ++ii) {
        const T q = static_cast<T>(rf.grad(p + ii * nj, bn + b * F.Nt + j0, xs.data() + j0, ys.data() + j0, nj,
                                            inv_tau, rows[b * F.Ns + i0 + ii], colq));
        if (rowq) rowq[ii] += q;
      }
    };
    // grad_fs: tasks own source tiles.
    at::parallel_for(0, F.B * ti, 1, [&](int64_t t0, int64_t t1) {
      const BelowAutograd below_autograd;
      std::vector<T> rowq(TI);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / ti, i0 = (t % ti) * TI, ni = std::min(TI, F.Ns - i0);
        std::fill(rowq.begin(), rowq.end(), T(0));
        at::Tensor g = gfsT[b].narrow(0, i0, ni);
        for (int64_t j0 = 0; j0 < F.Nt; j0 += TJ) {
          const int64_t nj = std::min(TJ, F.Nt - j0);
          at::Tensor A;
          tile_grads(b, i0, ni, j0, nj, A, rowq.data(), nullptr);
          g.addmm_(A, F.ft[b].narrow(1, j0, nj).t());
        }
        T* gp = g.data_ptr<T>();
        for (int64_t ii = 0; ii < ni; ++ii) {
          const int64_t r = b * F.Ns + i0 + ii;
          if (a[r] <= 0) continue;  // zero feature: dot products are 0, no normalisation gradient
          const T k = rowq[ii] / a[r];
          for (int64_t c = 0; c < F.C; ++c) gp[ii * F.C + c] -= k * fsT[r * F.C + c];
        }
      }
    });
    // grad_ft: tasks own target tiles.
    at::parallel_for(0, F.B * tj, 1, [&](int64_t t0, int64_t t1) {
      const BelowAutograd below_autograd;
      std::vector<T> colq(TJ);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / tj, j0 = (t % tj) * TJ, nj = std::min(TJ, F.Nt - j0);
        std::fill(colq.begin(), colq.end(), T(0));
        at::Tensor g = gft[b].narrow(1, j0, nj);
        for (int64_t i0 = 0; i0 < F.Ns; i0 += TI) {
          const int64_t ni = std::min(TI, F.Ns - i0);
          at::Tensor A;
          tile_grads(b, i0, ni, j0, nj, A, nullptr, colq.data());
          g.addmm_(F.fsT[b].narrow(0, i0, ni).t(), A);
        }
        T* gp = gft.data_ptr<T>() + b * F.C * F.Nt;
        for (int64_t jj = 0; jj < nj; ++jj) {
          const int64_t j = j0 + jj;
          const T bj = bn[b * F.Nt + j];
          if (bj <= 0) continue;
          const T k = colq[jj] / bj;
          for (int64_t c = 0; c < F.C; ++c) gp[c * F.Nt + j] -= k * ftT[(b * F.Nt + j) * F.C + c];
        }
      }
    });
  });
  // contiguous, as the fake kernel promises (a transposed view would be channels_last)
  at::Tensor gfs = gfsT.transpose(1, 2).contiguous().view(fs_in.sizes());
  return {gfs.to(fs_in.scalar_type()), gft.view(ft_in.sizes()).to(ft_in.scalar_type())};
}

}  // namespace cpu
}  // namespace scc
