// Schemas of the torch.ops.scc.* custom ops, CPU kernel registration, and the Python module stub.
// Fake (meta) kernels and autograd formulas are registered from Python (scc_kernels/_ops.py);
// CUDA kernels from csrc/cuda/register.cpp (C++) and scc_kernels/triton (Triton).
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

// Importing scc_kernels._C loads this library, which runs the TORCH_LIBRARY static initialisers.
// No pybind11: the module has no Python-visible functions, everything goes through torch.ops.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(scc, m) {
  m.def("correlation(Tensor fs, Tensor ft, bool normalize=True, bool relu=True, float eps=1e-6) -> Tensor");
  m.def("correlation_backward(Tensor grad, Tensor fs, Tensor ft, bool normalize, bool relu, float eps)"
        " -> (Tensor, Tensor)");
  m.def("mutual_nn(Tensor corr, float eps=1e-5) -> Tensor");
  m.def("mutual_nn_backward(Tensor grad, Tensor corr, float eps) -> Tensor");
  m.def("conv4d(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("conv4d_backward(Tensor grad, Tensor x, Tensor weight, bool bias_defined) -> (Tensor, Tensor, Tensor)");
  m.def("masked_vote(Tensor corr, Tensor mask_s, Tensor mask_t, str mode='local', int radius=2, "
        "float sigma=1.0, float eps=1e-6) -> Tensor");
  m.def("masked_vote_backward(Tensor grad, Tensor corr, Tensor mask_s, Tensor mask_t, str mode, int radius, "
        "float sigma, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("calibrate(Tensor corr, Tensor g, float lam, float tau, Tensor bin_logit, float eps=1e-6) -> (Tensor, Tensor)");
  m.def("calibrate_backward(Tensor grad_P, Tensor grad_unmatched, Tensor P, Tensor P_unmatched, Tensor corr, "
        "Tensor g, float lam, float tau, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("soft_argmax(Tensor P, int ht, int wt, int window=-1, float beta=1.0) -> (Tensor, Tensor)");
  m.def("soft_argmax_backward(Tensor grad_flow, Tensor grad_conf, Tensor P, Tensor flow, int ht, int wt, "
        "int window, float beta) -> Tensor");
  m.def("fused_match(Tensor fs, Tensor ft, float tau, int window=-1) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("fused_match_backward(Tensor grad_flow, Tensor grad_conf, Tensor fs, Tensor ft, float tau, int window, "
        "Tensor flow, Tensor argmax, Tensor lse) -> (Tensor, Tensor)");
}

namespace {
// The CPU kernels compute in fp32 / fp64 whatever autocast region they are called from: without this guard their
// own at::mm / at::bmm calls were autocast to bf16 (correlation lost precision, fused_match failed on the mixed
// dtypes). The CUDA kernels call no op that autocast casts; the Triton launchers turn it off around theirs.
template <auto F>
struct NoAutocast;
template <typename R, typename... A, R (*F)(A...)>
struct NoAutocast<F> {
  static R call(A... args) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    return F(std::forward<A>(args)...);
  }
};
}  // namespace

#define SCC_CPU_IMPL(op) m.impl(#op, &NoAutocast<&scc::cpu::op>::call)

TORCH_LIBRARY_IMPL(scc, CPU, m) {
  SCC_CPU_IMPL(correlation);
  SCC_CPU_IMPL(correlation_backward);
  SCC_CPU_IMPL(mutual_nn);
  SCC_CPU_IMPL(mutual_nn_backward);
  SCC_CPU_IMPL(conv4d);
  SCC_CPU_IMPL(conv4d_backward);
  SCC_CPU_IMPL(masked_vote);
  SCC_CPU_IMPL(masked_vote_backward);
  SCC_CPU_IMPL(calibrate);
  SCC_CPU_IMPL(calibrate_backward);
  SCC_CPU_IMPL(soft_argmax);
  SCC_CPU_IMPL(soft_argmax_backward);
  SCC_CPU_IMPL(fused_match);
  SCC_CPU_IMPL(fused_match_backward);
}
