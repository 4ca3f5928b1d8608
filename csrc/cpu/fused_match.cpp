// fused_match: soft_argmax(softmax_j(correlation(fs, ft) / tau)) without the Ns x Nt volume.
// Each task owns a tile of source rows and streams over target tiles: one small GEMM per tile, the
// normalise + ReLU + 1/tau epilogue, an online softmax (running max, sum, and for window = -1 the
// running sums of p * col and p * row) and a running first argmax. A window >= 0 is resolved by a
// second pass over only the (2 window + 1)^2 cells around each argmax. Peak extra memory is one
// TI x TJ tile per thread plus O((Ns + Nt) C) for transposed features: never O(Ns Nt).
// Backward recomputes the tiles from fs, ft and the saved row log-normalisers (lse).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common.h"
#include "../ops.h"

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

template <typename T>
inline T dot(const T* x, const T* y, int64_t n) {
  T s = 0;
  for (int64_t c = 0; c < n; ++c) s += x[c] * y[c];
  return s;
}

// Logit of one (i, j) pair from its dot product: relu(d / (a_i b_j + eps)) / tau. The ReLU keeps NaN
// (as the reference's clamp does): a NaN feature must not turn into a confident match.
template <typename T>
inline T logit(T d, T ai, T bj, T inv_tau) {
  const T r = d / (ai * bj + static_cast<T>(kEps));
  return !(r <= 0) ? r * inv_tau : T(0);
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
    at::parallel_for(0, F.B * ntiles, 1, [&](int64_t t0, int64_t t1) {
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
            T tm = -std::numeric_limits<T>::infinity();
            int64_t targ = 0;
            for (int64_t jj = 0; jj < nj; ++jj) {
              const T l = logit(row[jj], ai, bj[jj], inv_tau);
              row[jj] = l;
              if (l > tm) { tm = l; targ = jj; }
            }
            if (tm > m[ii]) {  // strict: an earlier tile keeps the argmax on ties
              const Acc scale = std::exp(static_cast<Acc>(m[ii]) - tm);
              s[ii] *= scale; sx[ii] *= scale; sy[ii] *= scale;
              m[ii] = tm;
              best[ii] = j0 + targ;
            }
            Acc acc = 0, ax = 0, ay = 0;
            for (int64_t jj = 0; jj < nj; ++jj) {
              const T e = std::exp(row[jj] - m[ii]);
              acc += e;
              if (window < 0) {
                const int64_t j = j0 + jj;
                ax += e * static_cast<Acc>(j % F.wt);
                ay += e * static_cast<Acc>(j / F.wt);
              }
            }
            s[ii] += acc; sx[ii] += ax; sy[ii] += ay;
          }
        }
        for (int64_t ii = 0; ii < ni; ++ii) {
          const int64_t r = b * F.Ns + i0 + ii;
          ls[r] = static_cast<T>(m[ii] + std::log(s[ii]));
          cf[r] = static_cast<T>(1 / s[ii]);  // exp(max logit - lse)
          am[r] = best[ii];
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
              const T p = std::exp(l - m[ii]);
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
  const at::Tensor flow = flow_in.to(wdt).contiguous(), lse = lse_in.to(wdt).contiguous();
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
    const T *a = F.a.data_ptr<T>(), *bn = F.b.data_ptr<T>(), *fsT = F.fsT.data_ptr<T>(), *ftT = F.ftT.data_ptr<T>();
    const T *gf = gflow.data_ptr<T>(), *gc = gconf.data_ptr<T>(), *fl = flow.data_ptr<T>(), *ls = lse.data_ptr<T>();
    const int64_t* am = argm.data_ptr<int64_t>();
    // Per-row constants: S_i (window mass), and c_i = sum_j gP_ij P_ij, which reduces to
    // grad_conf_i * conf_i because the flow term sums to zero over the window.
    std::vector<T> S(BN), cst(BN);
    at::parallel_for(0, BN, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / F.Ns, js = am[r];
        const T* fi = fsT + r * F.C;
        auto prob = [&](int64_t j) {
          return std::exp(logit(dot(fi, ftT + (b * F.Nt + j) * F.C, F.C), a[r], bn[b * F.Nt + j], inv_tau) - ls[r]);
        };
        cst[r] = gc[r] * prob(js);
        if (window < 0) { S[r] = T(1); continue; }
        const Window w = window_of(js, F.ht, F.wt, window);
        T s = 0;
        for (int64_t y = w.r0; y <= w.r1; ++y)
          for (int64_t x = w.c0; x <= w.c1; ++x) s += prob(y * F.wt + x);
        S[r] = s;
      }
    });
    // A_ij = dL/d(dot_ij) and Q_ij = A_ij r_ij (the normalisation's factor) for one tile.
    auto tile_grads = [&](int64_t b, int64_t i0, int64_t ni, int64_t j0, int64_t nj, at::Tensor& A, T* rowq, T* colq) {
      at::Tensor d = at::mm(F.fsT[b].narrow(0, i0, ni), F.ft[b].narrow(1, j0, nj));
      A = d;  // overwritten in place
      T* p = d.data_ptr<T>();
      for (int64_t ii = 0; ii < ni; ++ii) {
        const int64_t r = b * F.Ns + i0 + ii;
        const Window w = window_of(am[r], F.ht, F.wt, window);
        const T ai = a[r], fx = fl[2 * r], fy = fl[2 * r + 1], gx = gf[2 * r], gy = gf[2 * r + 1];
        for (int64_t jj = 0; jj < nj; ++jj) {
          const int64_t j = j0 + jj, y = j / F.wt, x = j % F.wt;
          const T n = ai * bn[b * F.Nt + j] + static_cast<T>(kEps);
          const T rv = p[ii * nj + jj] / n;
          T A_ = 0;
          if (rv > 0) {
            const T prob = std::exp(rv * inv_tau - ls[r]);
            T gp = (y >= w.r0 && y <= w.r1 && x >= w.c0 && x <= w.c1) ? (gx * (x - fx) + gy * (y - fy)) / S[r] : T(0);
            if (j == am[r]) gp += gc[r];
            A_ = prob * (gp - cst[r]) * inv_tau / n;
          }
          p[ii * nj + jj] = A_;
          if (rowq) rowq[ii] += A_ * rv * bn[b * F.Nt + j];
          if (colq) colq[jj] += A_ * rv * ai;
        }
      }
    };
    const int64_t ti = (F.Ns + TI - 1) / TI, tj = (F.Nt + TJ - 1) / TJ;
    // grad_fs: tasks own source tiles.
    at::parallel_for(0, F.B * ti, 1, [&](int64_t t0, int64_t t1) {
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
