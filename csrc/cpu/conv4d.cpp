// conv4d: direct 4D convolution, zero padding k//2 on all four axes, stride 1, and its backward.
// x is copied once into planes zero-padded on (ht, wt) (see conv4d_kernel.inc for the flat layout);
// taps along (hs, ws) that fall outside the grid are skipped rather than padded. Each output plane
// (b, a, bb) is computed in register tiles of output channels x flat positions. grad_x is the same
// convolution of grad with the flipped, channel-transposed weights; grad_weight has its own kernel,
// parallel over (output-channel block, ci, ka) so that no two threads write the same weight.
// The hot loops are compiled for AVX-512, AVX2+FMA and the x86-64 baseline and picked at runtime (isa.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../common.h"
#include "../ops.h"
#include "isa.h"

namespace scc {
namespace cpu {
namespace {

struct Geom {
  int64_t B, Cin, Cout, H1, W1, H2, W2, k, p;
  int64_t W2p;  // padded row length W2 + 2p
  int64_t Mv;   // flat output positions computed per plane: H2 * W2p rounded up to 16 (any vector width)
  int64_t PS;   // padded plane stride: covers every read Mv - 1 + (k - 1) * (W2p + 1), rounded up to 16

  Geom(int64_t B_, int64_t Cin_, int64_t Cout_, const at::Tensor& x, int64_t k_)
      : B(B_), Cin(Cin_), Cout(Cout_), H1(x.size(2)), W1(x.size(3)), H2(x.size(4)), W2(x.size(5)), k(k_),
        p(k_ / 2) {
    W2p = W2 + 2 * p;
    Mv = (H2 * W2p + 15) / 16 * 16;
    PS = (Mv + (k - 1) * (W2p + 1) + 15) / 16 * 16;
  }
};

// One (ht, wt) plane into rows of length W2p starting at dst (the caller's padding offset).
template <typename T>
inline void pad_plane(const T* src, T* dst, const Geom& g) {
  for (int64_t c = 0; c < g.H2; ++c) std::memcpy(dst + c * g.W2p, src + c * g.W2, g.W2 * sizeof(T));
}

}  // namespace

#ifdef SCC_CPU_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace {
namespace conv4d_avx512 {
#define SCC_VEC_BYTES 64
#define SCC_NUM_REGS 32
#include "conv4d_kernel.inc"
#undef SCC_VEC_BYTES
#undef SCC_NUM_REGS
}  // namespace conv4d_avx512
}  // namespace
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace {
namespace conv4d_avx2 {
#define SCC_VEC_BYTES 32
#define SCC_NUM_REGS 16
#include "conv4d_kernel.inc"
#undef SCC_VEC_BYTES
#undef SCC_NUM_REGS
}  // namespace conv4d_avx2
}  // namespace
#pragma GCC pop_options
#endif

namespace {
namespace conv4d_base {
#define SCC_VEC_BYTES 16
#define SCC_NUM_REGS 16
#include "conv4d_kernel.inc"
#undef SCC_VEC_BYTES
#undef SCC_NUM_REGS
}  // namespace conv4d_base
}  // namespace

namespace {

// Output-channel block of the grad_weight items, which differs per ISA.
int64_t gw_cob(Isa isa) {
  switch (isa) {
#ifdef SCC_CPU_X86
    case Isa::avx512: return conv4d_avx512::kGwCob;
    case Isa::avx2: return conv4d_avx2::kGwCob;
#endif
    default: return conv4d_base::kGwCob;
  }
}

// out = conv(x, w) (+ bias) for x (B, Cin, ...) and wr (Cin, k, k, k, k, Cout), both contiguous.
template <typename T>
void conv_forward(const T* x, const T* wr, const T* bias, T* out, const Geom& g) {
  const Isa isa = detect_isa();
  at::parallel_for(0, g.B * g.H1, 1, [&](int64_t begin, int64_t end) {
    switch (isa) {
#ifdef SCC_CPU_X86
      case Isa::avx512: conv4d_avx512::conv_rows<T>(x, wr, bias, out, g, begin, end); break;
      case Isa::avx2: conv4d_avx2::conv_rows<T>(x, wr, bias, out, g, begin, end); break;
#endif
      default: conv4d_base::conv_rows<T>(x, wr, bias, out, g, begin, end);
    }
  });
}

void check_conv4d_args(const at::Tensor& x, const at::Tensor& weight) {
  check_rank(x, 6, "x", "(B, Cin, hs, ws, ht, wt)");
  check_rank(weight, 6, "weight", "(Cout, Cin, k, k, k, k)");
  check_floating(x, "x");
  check_same_dtype(x, "x", weight, "weight");
  check_same_device(x, "x", weight, "weight");
  check_nonempty(x, "x");
  check_nonempty(weight, "weight");
  const int64_t k = weight.size(2);
  TORCH_CHECK_VALUE(weight.size(3) == k && weight.size(4) == k && weight.size(5) == k && k % 2 == 1,
                    "scc: `weight` must have four equal, odd kernel dims (Cout, Cin, k, k, k, k), got shape ",
                    shape_str(weight));
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), "scc: `weight`.size(1) (Cin) must equal `x`.size(1): expected ",
                    x.size(1), ", got ", weight.size(1));
}

}  // namespace

at::Tensor conv4d(const at::Tensor& x_in, const at::Tensor& weight_in, const std::optional<at::Tensor>& bias_in) {
  check_conv4d_args(x_in, weight_in);
  const int64_t Cout = weight_in.size(0);
  if (bias_in.has_value()) {
    const at::Tensor& bias = *bias_in;
    TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == Cout, "scc: `bias` must have shape (Cout,) = (", Cout,
                      ",), got shape ", shape_str(bias));
    check_same_dtype(x_in, "x", bias, "bias");
    check_same_device(x_in, "x", bias, "bias");
  }
  const at::Tensor x = widen(x_in);
  const at::Tensor wr = widen(weight_in).permute({1, 2, 3, 4, 5, 0}).contiguous();
  const at::Tensor bias = bias_in.has_value() ? widen(*bias_in) : at::Tensor();
  const Geom g(x.size(0), x.size(1), Cout, x, weight_in.size(2));
  at::Tensor out = alloc_output({g.B, Cout, g.H1, g.W1, g.H2, g.W2}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scc_conv4d", [&] {
    conv_forward<scalar_t>(x.data_ptr<scalar_t>(), wr.data_ptr<scalar_t>(),
                           bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), g);
  });
  return out.scalar_type() == x_in.scalar_type() ? out : out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv4d_backward(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                              const at::Tensor& weight_in, bool bias_defined) {
  check_conv4d_args(x_in, weight_in);
  check_rank(grad_in, 6, "grad", "(B, Cout, hs, ws, ht, wt)");
  check_same_dtype(x_in, "x", grad_in, "grad");
  check_same_device(x_in, "x", grad_in, "grad");
  const int64_t B = x_in.size(0), Cin = x_in.size(1), Cout = weight_in.size(0), k = weight_in.size(2);
  const std::vector<int64_t> want{B, Cout, x_in.size(2), x_in.size(3), x_in.size(4), x_in.size(5)};
  TORCH_CHECK_VALUE(grad_in.sizes() == at::IntArrayRef(want), "scc: `grad` must have shape (B, Cout, hs, ws, ht, wt) = (",
                    B, ", ", Cout, ", ", want[2], ", ", want[3], ", ", want[4], ", ", want[5], "), got shape ",
                    shape_str(grad_in));

  const at::Tensor x = widen(x_in), grad = widen(grad_in);
  // grad_x = conv(grad, w') with w'[ci, co, q] = w[co, ci, k-1-q], laid out (Cout, k, k, k, k, Cin).
  const at::Tensor wr_t = widen(weight_in).flip({2, 3, 4, 5}).permute({0, 2, 3, 4, 5, 1}).contiguous();
  const Geom gx(B, Cout, Cin, x, k);  // the grad_x convolution: Cout -> Cin
  const Geom g(B, Cin, Cout, x, k);
  at::Tensor grad_x = alloc_output(x.sizes(), x.options());
  at::Tensor grad_w = alloc_output({Cout, Cin, k, k, k, k}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scc_conv4d_backward", [&] {
    using T = scalar_t;
    const T* gd = grad.data_ptr<T>();
    const T* xd = x.data_ptr<T>();
    T* gwd = grad_w.data_ptr<T>();
    conv_forward<T>(gd, wr_t.data_ptr<T>(), nullptr, grad_x.data_ptr<T>(), gx);
    const Isa isa = detect_isa();
    const int64_t cob = gw_cob(isa);
    const int64_t items = (Cout + cob - 1) / cob * Cin * k;
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      switch (isa) {
#ifdef SCC_CPU_X86
        case Isa::avx512: conv4d_avx512::grad_weight_items<T>(xd, gd, gwd, g, begin, end); break;
        case Isa::avx2: conv4d_avx2::grad_weight_items<T>(xd, gd, gwd, g, begin, end); break;
#endif
        default: conv4d_base::grad_weight_items<T>(xd, gd, gwd, g, begin, end);
      }
    });
  });
  at::Tensor grad_b = bias_defined ? grad.sum({0, 2, 3, 4, 5}) : at::zeros({0}, x.options());
  const auto st = x_in.scalar_type();
  return {grad_x.to(st), grad_w.to(st), grad_b.to(st)};
}

}  // namespace cpu
}  // namespace scc
