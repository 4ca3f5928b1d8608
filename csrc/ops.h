// Signatures of every scc kernel. The CPU kernels (csrc/cpu/*.cpp, namespace scc::cpu) and the
// CUDA kernels (csrc/cuda/*.cu, namespace scc::cuda) implement the same functions; csrc/ops.cpp
// registers them as torch.ops.scc.* (schemas documented there and in METHOD.md).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#define SCC_DECLARE_KERNELS                                                                          \
  at::Tensor correlation(const at::Tensor& fs, const at::Tensor& ft, bool normalize, bool relu,     \
                         double eps);                                                                \
  std::tuple<at::Tensor, at::Tensor> correlation_backward(const at::Tensor& grad, const at::Tensor& fs, \
                                                          const at::Tensor& ft, bool normalize,      \
                                                          bool relu, double eps);                    \
  at::Tensor mutual_nn(const at::Tensor& corr, double eps);                                          \
  at::Tensor mutual_nn_backward(const at::Tensor& grad, const at::Tensor& corr, double eps);        \
  at::Tensor conv4d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias); \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> conv4d_backward(                                    \
      const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, bool bias_defined);     \
  at::Tensor masked_vote(const at::Tensor& corr, const at::Tensor& mask_s, const at::Tensor& mask_t, \
                         c10::string_view mode, int64_t radius, double sigma, double eps);          \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_vote_backward(                               \
      const at::Tensor& grad, const at::Tensor& corr, const at::Tensor& mask_s,                      \
      const at::Tensor& mask_t, c10::string_view mode, int64_t radius, double sigma, double eps);   \
  std::tuple<at::Tensor, at::Tensor> calibrate(const at::Tensor& corr, const at::Tensor& g,         \
                                               double lam, double tau, const at::Tensor& bin_logit, \
                                               double eps);                                          \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> calibrate_backward(                                 \
      const at::Tensor& grad_P, const at::Tensor& grad_unmatched, const at::Tensor& P,               \
      const at::Tensor& P_unmatched, const at::Tensor& corr, const at::Tensor& g, double lam,        \
      double tau, double eps);                                                                       \
  std::tuple<at::Tensor, at::Tensor> soft_argmax(const at::Tensor& P, int64_t ht, int64_t wt,        \
                                                 int64_t window, double beta);                       \
  at::Tensor soft_argmax_backward(const at::Tensor& grad_flow, const at::Tensor& grad_conf,          \
                                  const at::Tensor& P, const at::Tensor& flow, int64_t ht,           \
                                  int64_t wt, int64_t window, double beta);                          \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_match(                            \
      const at::Tensor& fs, const at::Tensor& ft, double tau, int64_t window);                       \
  std::tuple<at::Tensor, at::Tensor> fused_match_backward(                                           \
      const at::Tensor& grad_flow, const at::Tensor& grad_conf, const at::Tensor& fs,                \
      const at::Tensor& ft, double tau, int64_t window, const at::Tensor& flow, const at::Tensor& argmax,                    \
      const at::Tensor& lse);

namespace scc {
namespace cpu {
SCC_DECLARE_KERNELS
}  // namespace cpu
namespace cuda {
SCC_DECLARE_KERNELS
}  // namespace cuda
}  // namespace scc
