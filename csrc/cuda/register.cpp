// CUDA kernels of the stencil / reduction shaped ops. The matmul-shaped ops (correlation,
// fused_match) run as Triton kernels on GPUs, registered from Python (scc_kernels/_triton_ops.py).
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(scc, CUDA, m) {
  m.impl("mutual_nn", &scc::cuda::mutual_nn);
  m.impl("mutual_nn_backward", &scc::cuda::mutual_nn_backward);
  m.impl("conv4d", &scc::cuda::conv4d);
  m.impl("conv4d_backward", &scc::cuda::conv4d_backward);
  m.impl("masked_vote", &scc::cuda::masked_vote);
  m.impl("masked_vote_backward", &scc::cuda::masked_vote_backward);
  m.impl("calibrate", &scc::cuda::calibrate);
  m.impl("calibrate_backward", &scc::cuda::calibrate_backward);
  m.impl("soft_argmax", &scc::cuda::soft_argmax);
  m.impl("soft_argmax_backward", &scc::cuda::soft_argmax_backward);
}
