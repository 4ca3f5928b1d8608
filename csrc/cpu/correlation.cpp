// correlation: C_ij = relu(<fs_i, ft_j> / (|fs_i| |ft_j| + eps)).
// One BLAS batched GEMM on the raw features, then a single fused epilogue pass (normalise + ReLU,
// in place) instead of the reference's normalise / divide / clamp passes over the volume.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../common.h"
#include "../ops.h"

namespace scc {

// Shared with fused_match: validates (fs, ft) as a pair of feature maps.
void check_feature_pair(const at::Tensor& fs, const at::Tensor& ft) {
  check_rank(fs, 4, "fs", "(B, C, hs, ws)");
  check_rank(ft, 4, "ft", "(B, C, ht, wt)");
  check_floating(fs, "fs");
  check_same_dtype(fs, "fs", ft, "ft");
  check_same_device(fs, "fs", ft, "ft");
  check_nonempty(fs, "fs");
  check_nonempty(ft, "ft");
  TORCH_CHECK_VALUE(fs.size(0) == ft.size(0), "scc: `fs` and `ft` must have the same batch size B, got ",
                    fs.size(0), " and ", ft.size(0));
  TORCH_CHECK_VALUE(fs.size(1) == ft.size(1), "scc: `fs` and `ft` must have the same number of channels C, got ",
                    fs.size(1), " and ", ft.size(1));
}

namespace cpu {

at::Tensor correlation(const at::Tensor& fs_in, const at::Tensor& ft_in, bool normalize, bool relu, double eps) {
  check_feature_pair(fs_in, ft_in);
  check_positive(eps, "eps");
  const at::Tensor fs = widen(fs_in), ft = widen(ft_in);
  const int64_t B = fs.size(0), C = fs.size(1), hs = fs.size(2), ws = fs.size(3), ht = ft.size(2), wt = ft.size(3);
  const int64_t Ns = hs * ws, Nt = ht * wt;
  at::Tensor out = alloc_output({B, hs, ws, ht, wt}, fs.options());
  at::Tensor flat = out.view({B, Ns, Nt});
  at::bmm_out(flat, fs.view({B, C, Ns}).transpose(1, 2), ft.view({B, C, Nt}));
  if (normalize || relu) {
    at::Tensor ns, nt;
    if (normalize) {
      ns = at::linalg_vector_norm(fs.view({B, C, Ns}), 2, {1}).contiguous();
      nt = at::linalg_vector_norm(ft.view({B, C, Nt}), 2, {1}).contiguous();
    }
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "scc_correlation_epilogue", [&] {
      scalar_t* o = flat.data_ptr<scalar_t>();
      const scalar_t* a = normalize ? ns.data_ptr<scalar_t>() : nullptr;
      const scalar_t* b = normalize ? nt.data_ptr<scalar_t>() : nullptr;
      const scalar_t e = static_cast<scalar_t>(eps);
      at::parallel_for(0, B * Ns, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          scalar_t* row = o + r * Nt;
          if (normalize) {
            const scalar_t ai = a[r];
            const scalar_t* bj = b + (r / Ns) * Nt;
            for (int64_t j = 0; j < Nt; ++j) row[j] = row[j] / (ai * bj[j] + e);
          }
          if (relu)  // NaN-propagating, like the reference's clamp (a NaN feature must not become 0)
            for (int64_t j = 0; j < Nt; ++j) row[j] = !(row[j] <= 0) ? row[j] : scalar_t(0);
        }
      });
    });
  }
  return out.to(fs_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> correlation_backward(const at::Tensor& grad_in, const at::Tensor& fs_in,
                                                        const at::Tensor& ft_in, bool normalize, bool relu,
                                                        double eps) {
  check_feature_pair(fs_in, ft_in);
  check_positive(eps, "eps");
  const at::Tensor fs = widen(fs_in), ft = widen(ft_in);
  const int64_t B = fs.size(0), C = fs.size(1), Ns = fs.size(2) * fs.size(3), Nt = ft.size(2) * ft.size(3);
  TORCH_CHECK_VALUE(grad_in.numel() == B * Ns * Nt, "scc: correlation_backward: `grad` must have ", B * Ns * Nt,
                    " elements (B, hs, ws, ht, wt), got shape ", shape_str(grad_in));
  const at::Tensor grad = grad_in.to(fs.scalar_type()).contiguous().view({B, Ns, Nt});
  const at::Tensor fsv = fs.view({B, C, Ns}), ftv = ft.view({B, C, Nt});
  // A = d relu(r) / d d  (r = d / n), Q = A * r: the two factors of the normalisation's gradient.
  at::Tensor d = at::bmm(fsv.transpose(1, 2), ftv);
  at::Tensor A = at::empty_like(d), Q;
  at::Tensor ns, nt;
  if (normalize) {
    ns = at::linalg_vector_norm(fsv, 2, {1}).contiguous();
    nt = at::linalg_vector_norm(ftv, 2, {1}).contiguous();
    Q = at::empty_like(d);
  }
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "scc_correlation_backward", [&] {
    const scalar_t* dp = d.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* ap = A.data_ptr<scalar_t>();
    scalar_t* qp = normalize ? Q.data_ptr<scalar_t>() : nullptr;
    const scalar_t* a = normalize ? ns.data_ptr<scalar_t>() : nullptr;
    const scalar_t* b = normalize ? nt.data_ptr<scalar_t>() : nullptr;
    const scalar_t e = static_cast<scalar_t>(eps);
    at::parallel_for(0, B * Ns, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t off = r * Nt;
        if (normalize) {
          const scalar_t ai = a[r];
          const scalar_t* bj = b + (r / Ns) * Nt;
          for (int64_t j = 0; j < Nt; ++j) {
            const scalar_t n = ai * bj[j] + e;
            const scalar_t rv = dp[off + j] / n;
            const scalar_t g = (!relu || rv > 0) ? gp[off + j] : scalar_t(0);
            ap[off + j] = g / n;
            qp[off + j] = g / n * rv;
          }
        } else {
          for (int64_t j = 0; j < Nt; ++j) ap[off + j] = (!relu || dp[off + j] > 0) ? gp[off + j] : scalar_t(0);
        }
      }
    });
  });
  at::Tensor gfs = at::bmm(ftv, A.transpose(1, 2));  // (B, C, Ns)
  at::Tensor gft = at::bmm(fsv, A);                  // (B, C, Nt)
  if (normalize) {
    // d|f|/df = f / |f|; positions with zero norm have d = 0 and contribute nothing.
    at::Tensor inv_a = at::where(ns > 0, ns.reciprocal(), at::zeros_like(ns));
    at::Tensor inv_b = at::where(nt > 0, nt.reciprocal(), at::zeros_like(nt));
    at::Tensor row = at::bmm(Q, nt.unsqueeze(2)).squeeze(2);             // sum_j Q_ij b_j
    at::Tensor col = at::bmm(ns.unsqueeze(1), Q).squeeze(1);             // sum_i Q_ij a_i
    gfs.sub_(fsv * (row * inv_a).unsqueeze(1));
    gft.sub_(ftv * (col * inv_b).unsqueeze(1));
  }
  return {gfs.view(fs_in.sizes()).to(fs_in.scalar_type()), gft.view(ft_in.sizes()).to(ft_in.scalar_type())};
}

}  // namespace cpu
}  // namespace scc
