// Shared argument checks and small helpers for the scc CPU (and CUDA) kernels.
// Every check names the argument, what was expected and what was given, so that a
// user calling torch.ops.scc.* directly gets the same clear error as through the Python API.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

namespace scc {

// For ATen calls inside at::parallel_for. Worker threads do not inherit the dispatch state of the thread that
// called the op (autograd excluded below a custom op), so on an input that requires grad they would record
// autograd graphs, and refuse out= variants. Each lambda that calls ATen starts with one of these.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

// a > b with NaN above every number (torch.max / amax / argmax: a NaN is the maximum; with a "first index
// wins ties" rule, the first NaN). Not a > b alone: that leaves a NaN maximum to wherever the scan began.
template <typename T>
C10_HOST_DEVICE inline bool nan_gt(T a, T b) {
  return a > b || (a != a && b == b);
}

// The first maximum of [first, last) under nan_gt (torch.argmax: the first NaN if there is one). The scan makes
// one comparison per element, as std::max_element (nan_gt in the loop cost soft_argmax 60% on the CPU):
// !(v <= best) is v > best or a NaN on either side, and a range holding a NaN is searched again for the first.
template <typename T>
inline const T* first_max(const T* first, const T* last) {
  const T* best = first;
  for (const T* p = first; p != last; ++p) {
    if (!(*p <= *best)) {
      if (*p != *p || *best != *best) return std::find_if(first, last, [](T v) { return v != v; });
      best = p;
    }
  }
  return best;
}

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t d = 0; d < t.dim(); ++d) {
    s += std::to_string(t.size(d));
    if (d + 1 < t.dim()) s += ", ";
  }
  if (t.dim() == 1) s += ",";
  return s + ")";
}

inline void check_rank(const at::Tensor& t, int64_t rank, const char* name, const char* axes) {
  TORCH_CHECK_VALUE(t.dim() == rank, "scc: `", name, "` must have shape ", axes, " (", rank,
                    " dims), got shape ", shape_str(t));
}

inline void check_floating(const at::Tensor& t, const char* name) {
  auto st = t.scalar_type();
  TORCH_CHECK_VALUE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                    "scc: `", name, "` must be float32, float64, float16 or bfloat16, got ",
                    t.scalar_type());
}

inline void check_nonempty(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.numel() > 0, "scc: `", name, "` must not be empty, got shape ", shape_str(t));
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "scc: `", an, "` and `", bn,
                    "` must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type(), "scc: `", an, "` and `", bn,
                    "` must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

inline void check_dim_eq(int64_t got, int64_t want, const char* what) {
  TORCH_CHECK_VALUE(got == want, "scc: ", what, ": expected ", want, ", got ", got);
}

// CPU kernels compute in float32 or float64; half and bfloat16 inputs are widened to float32
// (accumulation precision is fp32 anyway) and results are narrowed back by the caller.
inline at::Tensor widen(const at::Tensor& t) {
  if (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16) return t.to(at::kFloat).contiguous();
  return t.contiguous();
}

// Output allocation. With SCC_POISON=1 in the environment (the test suite sets it) every output
// is filled with NaN (or -1 for integers) before a kernel writes it, so an element a kernel
// forgets to write shows up in the tests instead of passing with whatever memory held.
inline bool poison_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("SCC_POISON");
    return v != nullptr && v[0] == '1';
  }();
  return on;
}

inline at::Tensor alloc_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  if (poison_enabled()) {
    if (at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<double>::quiet_NaN());
    else t.fill_(-1);
  }
  return t;
}

// The 5D correlation volume (B, hs, ws, ht, wt) or its flat view (B, Ns, Nt).
inline void check_volume(const at::Tensor& corr, const char* name) {
  TORCH_CHECK_VALUE(corr.dim() == 5 || corr.dim() == 3, "scc: `", name,
                    "` must have shape (B, hs, ws, ht, wt) or (B, Ns, Nt), got shape ", shape_str(corr));
  check_floating(corr, name);
  check_nonempty(corr, name);
}

// ---- scalar arguments -------------------------------------------------------------------------------
// One set of checks for every op and backend (CPU kernels, csrc/cuda/register.cpp); the Triton launchers
// and the reference path of the Python API use scc_kernels/_checks.py, which words them the same.

// tau, sigma, beta, and every eps (each sits in a division or a log).
inline void check_positive(double v, const char* name) {
  TORCH_CHECK_VALUE(v > 0 && std::isfinite(v), "scc: `", name, "` must be a positive finite number, got ", v);
}

inline void check_finite(double v, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), "scc: `", name, "` must be a finite number, got ", v);
}

// bin_logit's value, where it is on the host: -inf means no bin; NaN and +inf make every probability NaN.
inline void check_bin_logit_value(double z) {
  TORCH_CHECK_VALUE(std::isfinite(z) || z < 0, "scc: `bin_logit` must be a finite number or -inf (no bin), got ",
                    z);
}

// bin_logit's shape: a learnable scalar, 0-dim or any one-element tensor.
inline void check_bin_logit_shape(const at::Tensor& bin_logit) {
  TORCH_CHECK_VALUE(bin_logit.numel() == 1, "scc: `bin_logit` must be a scalar tensor (one element), got shape ",
                    shape_str(bin_logit));
}

inline void check_radius(int64_t radius) {
  TORCH_CHECK_VALUE(radius >= 0, "scc: `radius` must be >= 0, got ", radius);
}

inline void check_window(int64_t window) {
  TORCH_CHECK_VALUE(window >= -1, "scc: `window` must be -1 (all cells) or >= 0, got ", window);
}

// Upper bounds that do not change results, applied before use (so a huge value costs nothing and cannot
// overflow). masked_vote: source offsets d beyond the source grid only reach cells outside it (zero terms),
// so the radius is clamped to max(hs, ws) - 1; Gaussian taps e farther than any two cells of the grids can be
// apart (local: the target grid extended by the radius; global: the offset histogram) only meet zeros, so
// rho = ceil(2 sigma) is clamped to max(hs, ws) + max(ht, wt) - 2 (also keeps ceil(2 sigma) within int64).
inline int64_t vote_radius(int64_t radius, int64_t hs, int64_t ws) {
  return std::min(radius, std::max(hs, ws) - 1);
}

inline int64_t vote_rho(double sigma, int64_t hs, int64_t ws, int64_t ht, int64_t wt) {
  const int64_t reach = std::max(hs, ws) + std::max(ht, wt) - 2;
  const double rho = std::ceil(2.0 * sigma);
  return rho < static_cast<double>(reach) ? static_cast<int64_t>(rho) : reach;
}

// soft-argmax window: a half-size of max(ht, wt) already covers the grid from any argmax.
inline int64_t clamp_window(int64_t window, int64_t ht, int64_t wt) {
  return std::min(window, std::max(ht, wt));
}

// The soft-argmax window: target cells within `window` rows and columns of the argmax (all for -1),
// clipped at the grid's edges (a window near an edge holds fewer cells).
struct Window {
  int64_t r0, r1, c0, c1;  // inclusive bounds
};

inline Window window_of(int64_t arg, int64_t ht, int64_t wt, int64_t window) {
  if (window < 0) return {0, ht - 1, 0, wt - 1};
  window = clamp_window(window, ht, wt);  // r + window cannot overflow
  const int64_t r = arg / wt, c = arg % wt;
  return {std::max<int64_t>(0, r - window), std::min(ht - 1, r + window), std::max<int64_t>(0, c - window),
          std::min(wt - 1, c + window)};
}

inline int64_t vol_ns(const at::Tensor& c) { return c.dim() == 5 ? c.size(1) * c.size(2) : c.size(1); }
inline int64_t vol_nt(const at::Tensor& c) { return c.dim() == 5 ? c.size(3) * c.size(4) : c.size(2); }

}  // namespace scc
