// masked_vote: masked correspondence voting (local offset-consensus stencil or global Hough voting).
// Both modes are separable, so the CPU kernel never runs the (2r+1)^2 (2rho+1)^2 stencil literally:
//   local:  u = Gaussian blur of w over the target axes (on a target grid extended by r, since j+d may
//           leave the grid while j+d+e is inside), then a (2r+1) box sum along the (y, Y) diagonal and
//           one along the (x, X) diagonal: 2(2rho+1) + 2(2r+1) operations per element;
//   global: scatter w into the offset histogram (threads own histogram rows: no atomics), separable
//           Gaussian blur, gather.
// Both vote operators are self-adjoint, so backward applies the same operator to the incoming gradient.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../common.h"
#include "../ops.h"

namespace scc {
namespace cpu {
namespace {

struct Grid {
  int64_t B, hs, ws, ht, wt;
  int64_t ns() const { return hs * ws; }
  int64_t nt() const { return ht * wt; }
};

// The taps K(e), e in [-rho, rho] (rho from vote_rho: ceil(2 sigma), clamped to the grids' reach).
template <typename T>
std::vector<T> gauss_1d(double sigma, int64_t rho) {
  std::vector<T> k(2 * rho + 1);
  // -(e / sigma)^2 / 2: 2 sigma^2 underflows to 0 for a tiny sigma, and 0 / 0 made the centre tap NaN
  for (int64_t e = -rho; e <= rho; ++e) {
    const double u = double(e) / sigma;
    k[e + rho] = static_cast<T>(std::exp(-0.5 * u * u));
  }
  return k;
}

// h = A(w) with w_ij = src_ij * ms_i * mt_j (ms, mt may be null: all ones).
template <typename T>
void vote_local(const T* src, const T* ms, const T* mt, T* h, const Grid& G, int64_t r, double sigma, int64_t rho) {
  const auto k = gauss_1d<T>(sigma, rho);
  const int64_t He = G.ht + 2 * r, We = G.wt + 2 * r, Ns = G.ns(), Nt = G.nt();
  std::vector<T> u(G.B * Ns * He * We);
  std::vector<T> v(G.B * Ns * G.ht * We);
  // u_(i')(Y, X) on the extended grid, Y in [-r, ht-1+r], X in [-r, wt-1+r].
  at::parallel_for(0, G.B * Ns, 4, [&](int64_t t0, int64_t t1) {
    std::vector<T> w(Nt), tmp(G.ht * We);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Ns;
      const T* row = src + t * Nt;
      const T s = ms ? ms[t] : T(1);
      const T* m = mt ? mt + b * Nt : nullptr;
      for (int64_t j = 0; j < Nt; ++j) w[j] = row[j] * s * (m ? m[j] : T(1));
      for (int64_t Y = 0; Y < G.ht; ++Y)
        for (int64_t X = -r; X < G.wt + r; ++X) {
          T acc = 0;
          for (int64_t e = std::max(-rho, -X); e <= std::min(rho, G.wt - 1 - X); ++e) acc += k[e + rho] * w[Y * G.wt + X + e];
          tmp[Y * We + X + r] = acc;
        }
      T* ut = u.data() + t * He * We;
      for (int64_t Y = -r; Y < G.ht + r; ++Y) {
        T* urow = ut + (Y + r) * We;
        std::fill(urow, urow + We, T(0));
        for (int64_t e = std::max(-rho, -Y); e <= std::min(rho, G.ht - 1 - Y); ++e) {
          const T ke = k[e + rho];
          const T* trow = tmp.data() + (Y + e) * We;
          for (int64_t X = 0; X < We; ++X) urow[X] += ke * trow[X];
        }
      }
    }
  });
  // v_(y,x)(Y, X) = sum_dy u_(y+dy, x)(Y+dy, X), X still extended.
  at::parallel_for(0, G.B * Ns, 4, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Ns, y = (t % Ns) / G.ws, x = t % G.ws;
      T* vt = v.data() + t * G.ht * We;
      std::fill(vt, vt + G.ht * We, T(0));
      for (int64_t dy = std::max(-r, -y); dy <= std::min(r, G.hs - 1 - y); ++dy) {
        const T* ut = u.data() + (b * Ns + (y + dy) * G.ws + x) * He * We;
        for (int64_t Y = 0; Y < G.ht; ++Y) {
          const T* urow = ut + (Y + dy + r) * We;
          T* vrow = vt + Y * We;
          for (int64_t X = 0; X < We; ++X) vrow[X] += urow[X];
        }
      }
    }
  });
  // h_(y,x)(Y, X) = sum_dx v_(y, x+dx)(Y, X+dx).
  at::parallel_for(0, G.B * Ns, 4, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Ns, y = (t % Ns) / G.ws, x = t % G.ws;
      T* ht_ = h + t * Nt;
      std::fill(ht_, ht_ + Nt, T(0));
      for (int64_t dx = std::max(-r, -x); dx <= std::min(r, G.ws - 1 - x); ++dx) {
        const T* vt = v.data() + (b * Ns + y * G.ws + x + dx) * G.ht * We;
        for (int64_t Y = 0; Y < G.ht; ++Y) {
          const T* vrow = vt + Y * We + dx + r;
          T* hrow = ht_ + Y * G.wt;
          for (int64_t X = 0; X < G.wt; ++X) hrow[X] += vrow[X];
        }
      }
    }
  });
}

template <typename T>
void vote_global(const T* src, const T* ms, const T* mt, T* h, const Grid& G, double sigma, int64_t rho) {
  const auto k = gauss_1d<T>(sigma, rho);
  const int64_t Hh = G.hs + G.ht - 1, Hw = G.ws + G.wt - 1, Ns = G.ns(), Nt = G.nt();
  std::vector<T> hist(G.B * Hh * Hw), tmp(G.B * Hh * Hw), blur(G.B * Hh * Hw);
  // Scatter: each task owns one histogram row (one row offset oy), so no two threads add to the same bin.
  at::parallel_for(0, G.B * Hh, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Hh, oy = t % Hh;
      T* hrow = hist.data() + t * Hw;
      std::fill(hrow, hrow + Hw, T(0));
      for (int64_t y = std::max<int64_t>(0, G.hs - 1 - oy); y < G.hs; ++y) {
        const int64_t Y = y + oy - (G.hs - 1);
        if (Y >= G.ht) break;
        for (int64_t x = 0; x < G.ws; ++x) {
          const int64_t i = y * G.ws + x;
          const T s = ms ? ms[b * Ns + i] : T(1);
          const T* crow = src + (b * Ns + i) * Nt + Y * G.wt;
          const T* m = mt ? mt + b * Nt + Y * G.wt : nullptr;
          T* bins = hrow + (G.ws - 1 - x);  // bin of X is X - x + ws - 1
          for (int64_t X = 0; X < G.wt; ++X) bins[X] += crow[X] * s * (m ? m[X] : T(1));
        }
      }
    }
  });
  // Separable blur with zero outside the histogram.
  at::parallel_for(0, G.B * Hh, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t X = 0; X < Hw; ++X) {
        T acc = 0;
        for (int64_t e = std::max(-rho, -X); e <= std::min(rho, Hw - 1 - X); ++e) acc += k[e + rho] * hist[t * Hw + X + e];
        tmp[t * Hw + X] = acc;
      }
  });
  at::parallel_for(0, G.B * Hh, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Hh, Y = t % Hh;
      T* out = blur.data() + t * Hw;
      std::fill(out, out + Hw, T(0));
      for (int64_t e = std::max(-rho, -Y); e <= std::min(rho, Hh - 1 - Y); ++e) {
        const T* in = tmp.data() + (b * Hh + Y + e) * Hw;
        for (int64_t X = 0; X < Hw; ++X) out[X] += k[e + rho] * in[X];
      }
    }
  });
  at::parallel_for(0, G.B * Ns, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Ns, y = (t % Ns) / G.ws, x = t % G.ws;
      for (int64_t Y = 0; Y < G.ht; ++Y) {
        const T* bins = blur.data() + (b * Hh + Y - y + G.hs - 1) * Hw + (G.ws - 1 - x);
        T* hrow = h + t * Nt + Y * G.wt;
        for (int64_t X = 0; X < G.wt; ++X) hrow[X] = bins[X];
      }
    }
  });
}

struct VoteArgs {
  Grid grid;
  bool local;
  int64_t radius, rho;  // clamped (vote_radius, vote_rho in common.h): the same result, bounded work
};

template <typename T>
void vote(const T* src, const T* ms, const T* mt, T* h, const VoteArgs& a, double sigma) {
  if (a.local) vote_local(src, ms, mt, h, a.grid, a.radius, sigma, a.rho);
  else vote_global(src, ms, mt, h, a.grid, sigma, a.rho);
}

VoteArgs check_vote_args(const at::Tensor& corr, const at::Tensor& ms, const at::Tensor& mt, c10::string_view mode,
                         int64_t radius, double sigma, double eps) {
  check_rank(corr, 5, "corr", "(B, hs, ws, ht, wt)");
  check_floating(corr, "corr");
  check_nonempty(corr, "corr");
  const int64_t B = corr.size(0), hs = corr.size(1), ws = corr.size(2), ht = corr.size(3), wt = corr.size(4);
  TORCH_CHECK_VALUE(ms.dim() == 3 && ms.size(0) == B && ms.size(1) == hs && ms.size(2) == ws,
                    "scc: `mask_s` must have shape (B, hs, ws) = (", B, ", ", hs, ", ", ws, "), got ", shape_str(ms));
  TORCH_CHECK_VALUE(mt.dim() == 3 && mt.size(0) == B && mt.size(1) == ht && mt.size(2) == wt,
                    "scc: `mask_t` must have shape (B, ht, wt) = (", B, ", ", ht, ", ", wt, "), got ", shape_str(mt));
  check_same_dtype(corr, "corr", ms, "mask_s");
  check_same_dtype(corr, "corr", mt, "mask_t");
  check_same_device(corr, "corr", ms, "mask_s");
  check_same_device(corr, "corr", mt, "mask_t");
  TORCH_CHECK_VALUE(mode == "local" || mode == "global", "scc: `mode` must be 'local' or 'global', got '",
                    std::string(mode), "'");
  check_radius(radius);
  check_positive(sigma, "sigma");
  check_positive(eps, "eps");
  return {{B, hs, ws, ht, wt}, mode == "local", vote_radius(radius, hs, ws), vote_rho(sigma, hs, ws, ht, wt)};
}

}  // namespace

at::Tensor masked_vote(const at::Tensor& corr_in, const at::Tensor& ms_in, const at::Tensor& mt_in, c10::string_view mode,
                       int64_t radius, double sigma, double eps) {
  const VoteArgs a = check_vote_args(corr_in, ms_in, mt_in, mode, radius, sigma, eps);
  const at::Tensor corr = widen(corr_in), ms = widen(ms_in), mt = widen(mt_in);
  at::Tensor out = alloc_output(corr.sizes(), corr.options());
  AT_DISPATCH_FLOATING_TYPES(corr.scalar_type(), "scc_masked_vote", [&] {
    scalar_t* h = out.data_ptr<scalar_t>();
    vote(corr.data_ptr<scalar_t>(), ms.data_ptr<scalar_t>(), mt.data_ptr<scalar_t>(), h, a, sigma);
    const int64_t per = a.grid.ns() * a.grid.nt();
    at::parallel_for(0, a.grid.B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* hb = h + b * per;
        const scalar_t inv = scalar_t(1) / (*first_max(hb, hb + per) + static_cast<scalar_t>(eps));
        for (int64_t n = 0; n < per; ++n) hb[n] *= inv;
      }
    });
  });
  return out.to(corr_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_vote_backward(const at::Tensor& grad_in, const at::Tensor& corr_in,
                                                                    const at::Tensor& ms_in, const at::Tensor& mt_in,
                                                                    c10::string_view mode, int64_t radius, double sigma,
                                                                    double eps) {
  const VoteArgs a = check_vote_args(corr_in, ms_in, mt_in, mode, radius, sigma, eps);
  TORCH_CHECK_VALUE(grad_in.sizes() == corr_in.sizes(), "scc: masked_vote_backward: `grad` must have the shape of `corr` ",
                    shape_str(corr_in), ", got ", shape_str(grad_in));
  const at::Tensor corr = widen(corr_in), ms = widen(ms_in), mt = widen(mt_in);
  const at::Tensor grad = grad_in.to(corr.scalar_type()).contiguous();
  const int64_t B = a.grid.B, Ns = a.grid.ns(), Nt = a.grid.nt(), per = Ns * Nt;
  at::Tensor h = at::empty_like(corr), gh = at::empty_like(corr), gw = alloc_output(corr.sizes(), corr.options());
  AT_DISPATCH_FLOATING_TYPES(corr.scalar_type(), "scc_masked_vote_backward", [&] {
    scalar_t* hp = h.data_ptr<scalar_t>();
    scalar_t* ghp = gh.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    vote(corr.data_ptr<scalar_t>(), ms.data_ptr<scalar_t>(), mt.data_ptr<scalar_t>(), hp, a, sigma);
    // g = h / (max h + eps): the gradient reaches h directly and through its (first) maximum.
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* hb = hp + b * per;
        const scalar_t* gb = gp + b * per;
        scalar_t* out = ghp + b * per;
        const int64_t am = first_max(hb, hb + per) - hb;
        const scalar_t den = hb[am] + static_cast<scalar_t>(eps);
        scalar_t dot = 0;
        for (int64_t n = 0; n < per; ++n) {
          out[n] = gb[n] / den;
          dot += gb[n] * hb[n];
        }
        out[am] -= dot / (den * den);
      }
    });
    vote<scalar_t>(ghp, nullptr, nullptr, gw.data_ptr<scalar_t>(), a, sigma);
  });
  // gw = dL/dw with w = corr * ms * mt.
  at::Tensor gw_flat = gw.view({B, Ns, Nt});
  at::Tensor gwc = gw_flat * corr.view({B, Ns, Nt});
  at::Tensor g_ms = at::bmm(gwc, mt.view({B, Nt, 1})).view(ms.sizes());
  at::Tensor g_mt = at::bmm(ms.view({B, 1, Ns}), gwc).view(mt.sizes());
  at::Tensor g_corr = gw_flat.mul_(ms.view({B, Ns, 1})).mul_(mt.view({B, 1, Nt})).view(corr.sizes());
  const auto dt = corr_in.scalar_type();
  return {g_corr.to(dt), g_ms.to(dt), g_mt.to(dt)};
}

}  // namespace cpu
}  // namespace scc
