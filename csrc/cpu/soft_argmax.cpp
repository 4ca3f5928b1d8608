// soft_argmax: argmax per row, then the P^beta-weighted mean of the cell coordinates over the
// (2 window + 1)^2 cells around it (all cells for window = -1). One read of each row for the argmax,
// then only the window is touched, instead of the reference's full-volume mask, power and matmul.
// Where the window's mass is 0 (all of P underflowed), flow is the argmax cell and has no gradient.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common.h"
#include "../ops.h"

namespace scc {
namespace cpu {
namespace {

// Output shapes: (B, hs, ws, 2) for a 5D P, (B, Ns, 2) for a flat one.
std::vector<int64_t> lead_shape(const at::Tensor& P) {
  return P.dim() == 5 ? std::vector<int64_t>{P.size(0), P.size(1), P.size(2)} : std::vector<int64_t>{P.size(0), P.size(1)};
}

void check_soft_argmax_args(const at::Tensor& P, int64_t ht, int64_t wt, int64_t window, double beta) {
  check_volume(P, "P");
  // Nt / ht, not ht * wt: the product wraps around in int64 (ht = 4, wt = 2^62 + 2 "equals" Nt = 8)
  TORCH_CHECK_VALUE(ht > 0 && wt > 0 && vol_nt(P) % ht == 0 && vol_nt(P) / ht == wt,
                    "scc: `ht` * `wt` must equal the target size Nt = ", vol_nt(P), " of `P` ", shape_str(P),
                    ", got ht=", ht, ", wt=", wt);
  TORCH_CHECK_VALUE(P.dim() != 5 || (P.size(3) == ht && P.size(4) == wt), "scc: `ht`, `wt` = (", ht, ", ", wt,
                    ") do not match the target axes of `P` ", shape_str(P));
  check_window(window);
  check_positive(beta, "beta");
}

template <typename T>
inline T powb(T p, T beta) {
  return beta == T(1) ? p : std::pow(p, beta);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> soft_argmax(const at::Tensor& P_in, int64_t ht, int64_t wt, int64_t window,
                                               double beta) {
  check_soft_argmax_args(P_in, ht, wt, window, beta);
  const at::Tensor P = widen(P_in);
  const int64_t BN = P.size(0) * vol_ns(P), Nt = vol_nt(P);
  auto lead = lead_shape(P);
  auto fshape = lead;
  fshape.push_back(2);
  at::Tensor flow = alloc_output(fshape, P.options());
  at::Tensor conf = alloc_output(lead, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "scc_soft_argmax", [&] {
    const scalar_t* p = P.data_ptr<scalar_t>();
    scalar_t* f = flow.data_ptr<scalar_t>();
    scalar_t* cf = conf.data_ptr<scalar_t>();
    const scalar_t bt = static_cast<scalar_t>(beta);
    at::parallel_for(0, BN, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = p + r * Nt;
        const int64_t arg = first_max(row, row + Nt) - row;
        const Window w = window_of(arg, ht, wt, window);
        scalar_t s = 0, sx = 0, sy = 0;
        for (int64_t y = w.r0; y <= w.r1; ++y)
          for (int64_t x = w.c0; x <= w.c1; ++x) {
            const scalar_t v = powb(row[y * wt + x], bt);
            s += v;
            sx += v * x;
            sy += v * y;
          }
        // A window whose mass underflowed to 0 falls back to the argmax cell (a NaN mass stays NaN).
        f[2 * r] = s != 0 ? sx / s : static_cast<scalar_t>(arg % wt);
        f[2 * r + 1] = s != 0 ? sy / s : static_cast<scalar_t>(arg / wt);
        cf[r] = row[arg];
      }
    });
  });
  const auto dt = P_in.scalar_type();
  return {flow.to(dt), conf.to(dt)};
}

at::Tensor soft_argmax_backward(const at::Tensor& gflow_in, const at::Tensor& gconf_in, const at::Tensor& P_in,
                                const at::Tensor& flow_in, int64_t ht, int64_t wt, int64_t window, double beta) {
  check_soft_argmax_args(P_in, ht, wt, window, beta);
  const at::Tensor P = widen(P_in);
  const int64_t BN = P.size(0) * vol_ns(P), Nt = vol_nt(P);
  TORCH_CHECK_VALUE(gflow_in.numel() == 2 * BN && flow_in.numel() == 2 * BN && gconf_in.numel() == BN,
                    "scc: soft_argmax_backward: `grad_flow`/`flow` need ", 2 * BN, " elements and `grad_conf` ", BN);
  const auto wt_ = P.scalar_type();
  const at::Tensor gflow = gflow_in.to(wt_).contiguous(), gconf = gconf_in.to(wt_).contiguous();
  const at::Tensor flow = flow_in.to(wt_).contiguous();
  at::Tensor grad = alloc_output(P.sizes(), P.options());
  AT_DISPATCH_FLOATING_TYPES(wt_, "scc_soft_argmax_backward", [&] {
    const scalar_t *p = P.data_ptr<scalar_t>(), *gf = gflow.data_ptr<scalar_t>(), *gc = gconf.data_ptr<scalar_t>();
    const scalar_t* f = flow.data_ptr<scalar_t>();
    scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t bt = static_cast<scalar_t>(beta);
    at::parallel_for(0, BN, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = p + r * Nt;
        scalar_t* grow = g + r * Nt;
        std::fill(grow, grow + Nt, scalar_t(0));
        const int64_t arg = first_max(row, row + Nt) - row;  // the forward's argmax (NaN first)
        const Window w = window_of(arg, ht, wt, window);
        scalar_t s = 0;
        for (int64_t y = w.r0; y <= w.r1; ++y)
          for (int64_t x = w.c0; x <= w.c1; ++x) s += powb(row[y * wt + x], bt);
        const scalar_t fx = f[2 * r], fy = f[2 * r + 1], gx = gf[2 * r], gy = gf[2 * r + 1];
        for (int64_t y = w.r0; y <= w.r1 && s != 0; ++y)
          for (int64_t x = w.c0; x <= w.c1; ++x) {
            const scalar_t v = row[y * wt + x];
            const scalar_t dpow = bt == scalar_t(1) ? scalar_t(1) : bt * std::pow(v, bt - 1);
            grow[y * wt + x] = (gx * (x - fx) + gy * (y - fy)) * dpow / s;
          }
        grow[arg] += gc[r];
      }
    });
  });
  return grad.to(P_in.scalar_type());
}

}  // namespace cpu
}  // namespace scc
