// calibrate: P_ij = softmax over j and one "no match" bin of (log(corr+eps) + lam log(g+eps)) / tau.
// Forward: cache-sized blocks of rows, each log-combined, normalised and written in place with ATen's
// vectorised kernels. Backward: one fused pass per row.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>

#include "../common.h"
#include "../ops.h"

namespace scc {
namespace cpu {
namespace {

void check_calibrate_scalars(double lam, double tau, double eps) {
  check_finite(lam, "lam");
  check_positive(tau, "tau");
  check_positive(eps, "eps");
}

void check_calibrate_args(const at::Tensor& corr, const at::Tensor& g, double lam, double tau,
                          const at::Tensor& bin_logit, double eps) {
  check_volume(corr, "corr");
  TORCH_CHECK_VALUE(g.sizes() == corr.sizes(), "scc: `g` must have the shape of `corr` ", shape_str(corr), ", got ",
                    shape_str(g));
  check_same_dtype(corr, "corr", g, "g");
  check_same_device(corr, "corr", g, "g");
  check_bin_logit_shape(bin_logit);
  check_same_dtype(corr, "corr", bin_logit, "bin_logit");
  check_same_device(corr, "corr", bin_logit, "bin_logit");
  check_calibrate_scalars(lam, tau, eps);
}

// Another tensor that goes with `corr`: same device and dtype.
void check_like_corr(const at::Tensor& t, const char* name, const at::Tensor& corr) {
  check_same_device(t, name, corr, "corr");
  check_same_dtype(t, name, corr, "corr");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> calibrate(const at::Tensor& corr_in, const at::Tensor& g_in, double lam, double tau,
                                             const at::Tensor& bin_logit, double eps) {
  check_calibrate_args(corr_in, g_in, lam, tau, bin_logit, eps);
  const at::Tensor corr = widen(corr_in), g = widen(g_in);
  const int64_t B = corr.size(0), Ns = vol_ns(corr), Nt = vol_nt(corr), rows = B * Ns;
  at::Tensor P = alloc_output({B, Ns, Nt}, corr.options());
  at::Tensor Pu = alloc_output({B, Ns}, corr.options());
  const double z = bin_logit.item<double>();
  check_bin_logit_value(z);
  const at::Tensor c2 = corr.view({rows, Nt}), g2 = g.view({rows, Nt});
  at::Tensor P2 = P.view({rows, Nt}), Pu1 = Pu.view({rows});
  // Blocks of rows small enough to stay in cache go through ATen's vectorised log/exp (SLEEF) in place:
  // one read of corr and g, one write of P, instead of the reference's six full-volume passes.
  const int64_t block = std::max<int64_t>(1, (int64_t(1) << 15) / Nt);
  const double min_log = corr.scalar_type() == at::kDouble ? -708.0 : -87.3;
  at::parallel_for(0, rows, block, [&](int64_t r0, int64_t r1) {
    const BelowAutograd below_autograd;
    for (int64_t a = r0; a < r1; a += block) {
      const int64_t n = std::min(block, r1 - a);
      at::Tensor l = P2.narrow(0, a, n);
      at::log_out(l, c2.narrow(0, a, n) + eps);                    // log(corr + eps)
      l.add_(at::log(g2.narrow(0, a, n) + eps), lam).div_(tau);   // (.. + lam log(g + eps)) / tau
      const at::Tensor lmax = std::get<0>(l.max(1, true));
      const at::Tensor m = at::clamp_min(lmax, z);  // includes the bin's logit
      // The exponentials are taken relative to the row's own largest logit (base), then scaled by
      // exp(base - m): exp of arguments below log(smallest normal) takes a very slow path in the vectorised
      // exp, so they are clamped there, which changes only terms that small next to the row's largest. (Taken
      // relative to m, a row far below the bin's logit had every term clamped: all P equal, argmax lost.)
      const at::Tensor base = at::where(lmax == -INFINITY, m, lmax);  // a row of -inf: as before, relative to m
      l.sub_(base).clamp_min_(min_log).exp_();
      const at::Tensor scale = at::exp(base - m);                  // 1 unless the bin's logit is the largest
      const at::Tensor bin = at::exp(z - m);                       // 0 when z = -inf (no bin)
      const at::Tensor inv = (l.sum(1, true) * scale + bin).reciprocal_();
      l.mul_(scale * inv);
      Pu1.narrow(0, a, n).copy_((bin * inv).view({n}));
    }
  });
  const auto dt = corr_in.scalar_type();
  return {P.to(dt), Pu.to(dt)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> calibrate_backward(const at::Tensor& gP_in, const at::Tensor& gu_in,
                                                                  const at::Tensor& P_in, const at::Tensor& Pu_in,
                                                                  const at::Tensor& corr_in, const at::Tensor& g_in,
                                                                  double lam, double tau, double eps) {
  check_volume(corr_in, "corr");
  check_calibrate_scalars(lam, tau, eps);
  check_like_corr(g_in, "g", corr_in);
  TORCH_CHECK_VALUE(g_in.sizes() == corr_in.sizes(), "scc: `g` must have the shape of `corr` ", shape_str(corr_in),
                    ", got ", shape_str(g_in));
  const int64_t B = corr_in.size(0), Ns = vol_ns(corr_in), Nt = vol_nt(corr_in);
  // the same checks as the CUDA op (csrc/cuda/register.cpp)
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&gP_in, "grad_P"}, {&P_in, "P"}}) {
    check_like_corr(*t, name, corr_in);
    TORCH_CHECK_VALUE(t->dim() == 3 && t->size(0) == B && t->size(1) == Ns && t->size(2) == Nt, "scc: `", name,
                      "` must have shape (", B, ", ", Ns, ", ", Nt, "), got ", shape_str(*t));
  }
  for (const auto& [t, name] :
       {std::pair<const at::Tensor*, const char*>{&gu_in, "grad_unmatched"}, {&Pu_in, "P_unmatched"}}) {
    check_like_corr(*t, name, corr_in);
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == B && t->size(1) == Ns, "scc: `", name, "` must have shape (", B,
                      ", ", Ns, "), got ", shape_str(*t));
  }
  const at::Tensor corr = widen(corr_in), g = widen(g_in);
  const auto wt = corr.scalar_type();
  const at::Tensor P = P_in.to(wt).contiguous(), Pu = Pu_in.to(wt).contiguous();
  const at::Tensor gP = gP_in.to(wt).contiguous(), gu = gu_in.to(wt).contiguous();
  at::Tensor gc = alloc_output(corr.sizes(), corr.options());
  at::Tensor gg = alloc_output(corr.sizes(), corr.options());
  at::Tensor gbin_rows = at::empty({B * Ns}, corr.options());
  AT_DISPATCH_FLOATING_TYPES(wt, "scc_calibrate_backward", [&] {
    const scalar_t *c = corr.data_ptr<scalar_t>(), *gv = g.data_ptr<scalar_t>();
    const scalar_t *p = P.data_ptr<scalar_t>(), *pu = Pu.data_ptr<scalar_t>();
    const scalar_t *dp = gP.data_ptr<scalar_t>(), *du = gu.data_ptr<scalar_t>();
    scalar_t *oc = gc.data_ptr<scalar_t>(), *og = gg.data_ptr<scalar_t>(), *ob = gbin_rows.data_ptr<scalar_t>();
    const scalar_t inv_tau = scalar_t(1) / static_cast<scalar_t>(tau), l = static_cast<scalar_t>(lam);
    const scalar_t e = static_cast<scalar_t>(eps);
    at::parallel_for(0, B * Ns, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t o = r * Nt;
        scalar_t dot = du[r] * pu[r];
        for (int64_t j = 0; j < Nt; ++j) dot += dp[o + j] * p[o + j];
        for (int64_t j = 0; j < Nt; ++j) {
          const scalar_t gl = p[o + j] * (dp[o + j] - dot) * inv_tau;  // d/d(log-combined term)
          oc[o + j] = gl / (c[o + j] + e);
          og[o + j] = gl * l / (gv[o + j] + e);
        }
        ob[r] = pu[r] * (du[r] - dot);
      }
    });
  });
  const auto dt = corr_in.scalar_type();
  return {gc.to(dt), gg.to(dt), gbin_rows.sum().reshape({}).to(dt)};
}

}  // namespace cpu
}  // namespace scc
