// CUDA kernels of the stencil / reduction shaped ops. The matmul-shaped ops (correlation,
// fused_match) run as Triton kernels on GPUs, registered from Python (scc_kernels/_triton_ops.py).
//
// Every argument check of the CUDA ops lives here, in host code built by the C++ compiler with the
// same flags as the CPU kernels: the scc::cuda::* entry points (csrc/cuda/*.cu, built by nvcc) take
// validated arguments and do not throw argument errors themselves (a c10::ValueError thrown from
// nvcc-built host code crashed the process instead of raising, on an H100 build).
#include <torch/library.h>

#include <string>

#include "../common.h"
#include "../ops.h"

namespace scc {
namespace {

// CUDA grid limits of the kernels (gridDim.y / gridDim.z), checked before any launch.
constexpr int64_t kMaxGridYZ = 65535;
constexpr int64_t kRowChunk = 32;  // source rows per column-partial block (mutual_nn, masked_vote)

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), "scc: `", name, "` must be a CUDA tensor, got device ", t.device());
}

// Another tensor that goes with `ref`: same device and dtype.
void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  check_same_device(t, name, ref, ref_name);
  check_same_dtype(t, name, ref, ref_name);
}

void check_same_shape(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), "scc: `", name, "` must have the shape of `", ref_name, "` ",
                    shape_str(ref), ", got ", shape_str(t));
}

void check_cuda_volume(const at::Tensor& corr, const char* name) {
  check_volume(corr, name);
  check_cuda(corr, name);
  TORCH_CHECK_VALUE(corr.size(0) <= kMaxGridYZ && (vol_ns(corr) + kRowChunk - 1) / kRowChunk <= kMaxGridYZ &&
                        vol_ns(corr) <= INT32_MAX && vol_nt(corr) <= INT32_MAX &&
                        corr.size(0) * vol_ns(corr) <= INT32_MAX,  // rows: one block each in calibrate's grid.x
                    "scc: `", name, "` is too large for the CUDA kernels, got shape ", shape_str(corr));
}

at::Tensor mutual_nn(const at::Tensor& corr, double eps) {
  check_cuda_volume(corr, "corr");
  check_positive(eps, "eps");
  return cuda::mutual_nn(corr, eps);
}

at::Tensor mutual_nn_backward(const at::Tensor& grad, const at::Tensor& corr, double eps) {
  check_cuda_volume(corr, "corr");
  check_positive(eps, "eps");
  check_floating(grad, "grad");
  check_like(grad, "grad", corr, "corr");
  check_same_shape(grad, "grad", corr, "corr");
  return cuda::mutual_nn_backward(grad, corr, eps);
}

void check_conv(const at::Tensor& x, const at::Tensor& weight) {
  check_rank(x, 6, "x", "(B, Cin, hs, ws, ht, wt)");
  check_floating(x, "x");
  check_nonempty(x, "x");
  check_cuda(x, "x");
  check_rank(weight, 6, "weight", "(Cout, Cin, k, k, k, k)");
  check_like(weight, "weight", x, "x");
  check_nonempty(weight, "weight");
  check_dim_eq(weight.size(1), x.size(1), "weight.shape[1] (Cin, = x.shape[1])");
  const int64_t k = weight.size(2);
  for (int d = 3; d < 6; ++d) check_dim_eq(weight.size(d), k, "weight kernel extent (all four must be equal)");
  TORCH_CHECK_VALUE(k % 2 == 1, "scc: conv4d kernel size must be odd, got ", k);
  TORCH_CHECK_VALUE(k == 3 || k == 5 || k == 7, "scc: conv4d on CUDA supports kernel sizes 3, 5 and 7, got ", k);
  // Grids: x = B hs ws positions, y = Cin k k (grad_weight), z = Cout or Cin (grad_x) over >= 8 per block.
  TORCH_CHECK_VALUE(x.size(0) * x.size(2) * x.size(3) <= INT32_MAX && weight.size(0) <= kMaxGridYZ * 8 &&
                        x.size(1) <= kMaxGridYZ * 8 && x.size(1) * k * k <= kMaxGridYZ,
                    "scc: conv4d: sizes too large for the CUDA grid");
}

at::Tensor conv4d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_conv(x, weight);
  if (bias.has_value()) {
    check_rank(*bias, 1, "bias", "(Cout,)");
    check_like(*bias, "bias", x, "x");
    check_dim_eq(bias->size(0), weight.size(0), "bias.shape[0] (Cout, = weight.shape[0])");
  }
  return cuda::conv4d(x, weight, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv4d_backward(const at::Tensor& grad, const at::Tensor& x,
                                                               const at::Tensor& weight, bool bias_defined) {
  check_conv(x, weight);
  check_like(grad, "grad", x, "x");
  const std::vector<int64_t> out_shape{x.size(0), weight.size(0), x.size(2), x.size(3), x.size(4), x.size(5)};
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(out_shape), "scc: `grad` must have shape ",
                    at::IntArrayRef(out_shape), ", got ", shape_str(grad));
  return cuda::conv4d_backward(grad, x, weight, bias_defined);
}

void check_vote(const at::Tensor& corr, const at::Tensor& ms, const at::Tensor& mt, c10::string_view mode,
                int64_t radius, double sigma, double eps) {
  check_rank(corr, 5, "corr", "(B, hs, ws, ht, wt)");
  check_cuda_volume(corr, "corr");
  check_rank(ms, 3, "mask_s", "(B, hs, ws)");
  check_rank(mt, 3, "mask_t", "(B, ht, wt)");
  check_like(ms, "mask_s", corr, "corr");
  check_like(mt, "mask_t", corr, "corr");
  check_dim_eq(ms.size(0), corr.size(0), "mask_s batch size (corr.shape[0])");
  check_dim_eq(ms.size(1), corr.size(1), "mask_s height (corr.shape[1] = hs)");
  check_dim_eq(ms.size(2), corr.size(2), "mask_s width (corr.shape[2] = ws)");
  check_dim_eq(mt.size(0), corr.size(0), "mask_t batch size (corr.shape[0])");
  check_dim_eq(mt.size(1), corr.size(3), "mask_t height (corr.shape[3] = ht)");
  check_dim_eq(mt.size(2), corr.size(4), "mask_t width (corr.shape[4] = wt)");
  TORCH_CHECK_VALUE(mode == "local" || mode == "global", "scc: `mode` must be 'local' or 'global', got '",
                    std::string(mode), "'");
  // a block per (b, source cell): B Ns within grid.x's limit
  TORCH_CHECK_VALUE(corr.size(0) * vol_ns(corr) <= INT32_MAX, "scc: `corr` is too large for the CUDA kernels, ",
                    "got shape ", shape_str(corr));
  check_radius(radius);
  check_positive(sigma, "sigma");  // an infinite sigma made 2 sigma^2 infinite and rho = ceil(2 sigma) undefined
  check_positive(eps, "eps");
}

at::Tensor masked_vote(const at::Tensor& corr, const at::Tensor& ms, const at::Tensor& mt, c10::string_view mode,
                       int64_t radius, double sigma, double eps) {
  check_vote(corr, ms, mt, mode, radius, sigma, eps);
  return cuda::masked_vote(corr, ms, mt, mode, radius, sigma, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_vote_backward(const at::Tensor& grad, const at::Tensor& corr,
                                                                    const at::Tensor& ms, const at::Tensor& mt,
                                                                    c10::string_view mode, int64_t radius,
                                                                    double sigma, double eps) {
  check_vote(corr, ms, mt, mode, radius, sigma, eps);
  check_like(grad, "grad", corr, "corr");
  check_same_shape(grad, "grad", corr, "corr");
  return cuda::masked_vote_backward(grad, corr, ms, mt, mode, radius, sigma, eps);
}

void check_calib(const at::Tensor& corr, const at::Tensor& g, double lam, double tau, double eps) {
  check_cuda_volume(corr, "corr");
  check_volume(g, "g");
  check_like(g, "g", corr, "corr");
  check_same_shape(g, "g", corr, "corr");
  check_finite(lam, "lam");
  check_positive(tau, "tau");
  check_positive(eps, "eps");
}

std::tuple<at::Tensor, at::Tensor> calibrate(const at::Tensor& corr, const at::Tensor& g, double lam, double tau,
                                             const at::Tensor& bin_logit, double eps) {
  check_calib(corr, g, lam, tau, eps);
  // one element, of any rank, as on CPU; its value is read on the device (no host sync), so it is not checked
  // here: a NaN or +inf bin makes the probabilities NaN, as in the reference
  check_bin_logit_shape(bin_logit);
  check_like(bin_logit, "bin_logit", corr, "corr");
  return cuda::calibrate(corr, g, lam, tau, bin_logit, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> calibrate_backward(const at::Tensor& grad_P,
                                                                  const at::Tensor& grad_unmatched,
                                                                  const at::Tensor& P, const at::Tensor& P_unmatched,
                                                                  const at::Tensor& corr, const at::Tensor& g,
                                                                  double lam, double tau, double eps) {
  check_calib(corr, g, lam, tau, eps);
  const int64_t batch = corr.size(0), ns = vol_ns(corr), nt = vol_nt(corr);
  const std::pair<const at::Tensor*, const char*> probs[] = {{&grad_P, "grad_P"}, {&P, "P"}};
  for (const auto& [t, name] : probs) {
    check_rank(*t, 3, name, "(B, Ns, Nt)");
    check_like(*t, name, corr, "corr");
    TORCH_CHECK_VALUE(t->size(0) == batch && t->size(1) == ns && t->size(2) == nt, "scc: `", name,
                      "` must have shape (", batch, ", ", ns, ", ", nt, "), got ", shape_str(*t));
  }
  const std::pair<const at::Tensor*, const char*> bins[] = {{&grad_unmatched, "grad_unmatched"},
                                                            {&P_unmatched, "P_unmatched"}};
  for (const auto& [t, name] : bins) {
    check_rank(*t, 2, name, "(B, Ns)");
    check_like(*t, name, corr, "corr");
    TORCH_CHECK_VALUE(t->size(0) == batch && t->size(1) == ns, "scc: `", name, "` must have shape (", batch, ", ",
                      ns, "), got ", shape_str(*t));
  }
  return cuda::calibrate_backward(grad_P, grad_unmatched, P, P_unmatched, corr, g, lam, tau, eps);
}

void check_p(const at::Tensor& p, int64_t ht, int64_t wt, int64_t window, double beta) {
  check_cuda_volume(p, "P");
  TORCH_CHECK_VALUE(ht > 0 && wt > 0 && vol_nt(p) % ht == 0 && vol_nt(p) / ht == wt, "scc: `ht` * `wt` must equal the number of target ",
                    "cells of `P` (", vol_nt(p), "), got ht = ", ht, ", wt = ", wt);
  if (p.dim() == 5) {
    check_dim_eq(p.size(3), ht, "P.shape[3] (ht)");
    check_dim_eq(p.size(4), wt, "P.shape[4] (wt)");
  }
  check_window(window);
  check_positive(beta, "beta");
}

std::tuple<at::Tensor, at::Tensor> soft_argmax(const at::Tensor& P, int64_t ht, int64_t wt, int64_t window,
                                               double beta) {
  check_p(P, ht, wt, window, beta);
  return cuda::soft_argmax(P, ht, wt, window, beta);
}

at::Tensor soft_argmax_backward(const at::Tensor& grad_flow, const at::Tensor& grad_conf, const at::Tensor& P,
                                const at::Tensor& flow, int64_t ht, int64_t wt, int64_t window, double beta) {
  check_p(P, ht, wt, window, beta);
  std::vector<int64_t> lead = P.dim() == 5 ? std::vector<int64_t>{P.size(0), P.size(1), P.size(2)}
                                           : std::vector<int64_t>{P.size(0), P.size(1)};
  TORCH_CHECK_VALUE(grad_conf.sizes() == at::IntArrayRef(lead), "scc: `grad_conf` must have shape ",
                    at::IntArrayRef(lead), ", got ", shape_str(grad_conf));
  lead.push_back(2);
  const std::pair<const at::Tensor*, const char*> flows[] = {{&grad_flow, "grad_flow"}, {&flow, "flow"}};
  for (const auto& [t, name] : flows) {
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef(lead), "scc: `", name, "` must have shape ",
                      at::IntArrayRef(lead), ", got ", shape_str(*t));
  }
  const std::pair<const at::Tensor*, const char*> all[] = {
      {&grad_flow, "grad_flow"}, {&grad_conf, "grad_conf"}, {&flow, "flow"}};
  for (const auto& [t, name] : all) check_like(*t, name, P, "P");
  return cuda::soft_argmax_backward(grad_flow, grad_conf, P, flow, ht, wt, window, beta);
}

}  // namespace
}  // namespace scc

TORCH_LIBRARY_IMPL(scc, CUDA, m) {
  m.impl("mutual_nn", &scc::mutual_nn);
  m.impl("mutual_nn_backward", &scc::mutual_nn_backward);
  m.impl("conv4d", &scc::conv4d);
  m.impl("conv4d_backward", &scc::conv4d_backward);
  m.impl("masked_vote", &scc::masked_vote);
  m.impl("masked_vote_backward", &scc::masked_vote_backward);
  m.impl("calibrate", &scc::calibrate);
  m.impl("calibrate_backward", &scc::calibrate_backward);
  m.impl("soft_argmax", &scc::soft_argmax);
  m.impl("soft_argmax_backward", &scc::soft_argmax_backward);
}
