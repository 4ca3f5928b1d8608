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

TORCH_LIBRARY_IMPL(scc, CPU, m) {
  m.impl("correlation", &scc::cpu::correlation);
  m.impl("correlation_backward", &scc::cpu::correlation_backward);
  m.impl("mutual_nn", &scc::cpu::mutual_nn);
  m.impl("mutual_nn_backward", &scc::cpu::mutual_nn_backward);
  m.impl("conv4d", &scc::cpu::conv4d);
  m.impl("conv4d_backward", &scc::cpu::conv4d_backward);
  m.impl("masked_vote", &scc::cpu::masked_vote);
  m.impl("masked_vote_backward", &scc::cpu::masked_vote_backward);
  m.impl("calibrate", &scc::cpu::calibrate);
  m.impl("calibrate_backward", &scc::cpu::calibrate_backward);
  m.impl("soft_argmax", &scc::cpu::soft_argmax);
  m.impl("soft_argmax_backward", &scc::cpu::soft_argmax_backward);
  m.impl("fused_match", &scc::cpu::fused_match);
  m.impl("fused_match_backward", &scc::cpu::fused_match_backward);
}
