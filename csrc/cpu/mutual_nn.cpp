// mutual_nn: C'_ij = C_ij^3 / ((max_i' C_i'j + eps) (max_j' C_ij' + eps)).
// One read pass finds both maxima (row maxima directly, column maxima as per-chunk partials merged
// afterwards), one pass writes the result: two sweeps of the volume instead of the reference's five.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common.h"
#include "../ops.h"

namespace scc {
namespace cpu {
namespace {

// Row and column maxima with the first index attaining them (torch.max(dim) semantics on ties and NaN).
template <typename T>
struct Maxima {
  std::vector<T> row, col;              // (B*Ns), (B*Nt)
  std::vector<int64_t> row_arg, col_arg;
};

// Rows [i0, i1) of item b: their maxima into m, the chunk's partial column maxima into pc / pa. kNan: nan_gt
// (a NaN is the maximum, at its first index); else the fast loop (nan_gt in it cost 30%), which returns
// whether it saw a NaN: then the caller scans the chunk again with kNan.
template <bool kNan, typename T>
bool chunk_maxima(const T* c, int64_t b, int64_t i0, int64_t i1, int64_t Ns, int64_t Nt, T* pc, int64_t* pa,
                  Maxima<T>& m) {
  const T* first = c + (b * Ns + i0) * Nt;
  std::copy(first, first + Nt, pc);
  std::fill(pa, pa + Nt, i0);
  bool nan = false;
  for (int64_t i = i0; i < i1; ++i) {
    const T* row = c + (b * Ns + i) * Nt;
    T rm = row[0];
    int64_t ra = 0;
    for (int64_t j = 0; j < Nt; ++j) {
      const T v = row[j];
      if constexpr (kNan) {
        if (nan_gt(v, rm)) { rm = v; ra = j; }
        if (nan_gt(v, pc[j])) { pc[j] = v; pa[j] = i; }
      } else {  // one comparison per maximum, as a plain `>`: !(v <= m) is v > m or a NaN on either side
        if (!(v <= rm)) {
          if (v != v || rm != rm) nan = true;
          else { rm = v; ra = j; }
        }
        if (!(v <= pc[j])) {
          if (v != v || pc[j] != pc[j]) nan = true;
          else { pc[j] = v; pa[j] = i; }
        }
      }
    }
    m.row[b * Ns + i] = rm;
    m.row_arg[b * Ns + i] = ra;
  }
  return nan;
}

template <typename T>
Maxima<T> maxima(const T* c, int64_t B, int64_t Ns, int64_t Nt) {
  Maxima<T> m;
  m.row.resize(B * Ns);
  m.row_arg.resize(B * Ns);
  m.col.resize(B * Nt);
  m.col_arg.resize(B * Nt);
  // Chunks of source rows; each keeps partial column maxima so no two threads write the same memory.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(Ns, (Ns + 7) / 8));
  const int64_t nchunks = (Ns + chunk - 1) / chunk;
  std::vector<T> pcol(B * nchunks * Nt);
  std::vector<int64_t> parg(B * nchunks * Nt);
  at::parallel_for(0, B * nchunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nchunks, i0 = (t % nchunks) * chunk, i1 = std::min(Ns, i0 + chunk);
      T* pc = pcol.data() + t * Nt;
      int64_t* pa = parg.data() + t * Nt;
      if (chunk_maxima<false>(c, b, i0, i1, Ns, Nt, pc, pa, m)) chunk_maxima<true>(c, b, i0, i1, Ns, Nt, pc, pa, m);
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* col = m.col.data() + b * Nt;
      int64_t* arg = m.col_arg.data() + b * Nt;
      std::copy(pcol.data() + b * nchunks * Nt, pcol.data() + (b * nchunks + 1) * Nt, col);
      std::copy(parg.data() + b * nchunks * Nt, parg.data() + (b * nchunks + 1) * Nt, arg);
      for (int64_t k = 1; k < nchunks; ++k) {
        const T* pc = pcol.data() + (b * nchunks + k) * Nt;
        const int64_t* pa = parg.data() + (b * nchunks + k) * Nt;
        for (int64_t j = 0; j < Nt; ++j)
          if (nan_gt(pc[j], col[j])) { col[j] = pc[j]; arg[j] = pa[j]; }  // strict: earlier chunk wins ties
      }
    }
  });
  return m;
}

}  // namespace

at::Tensor mutual_nn(const at::Tensor& corr_in, double eps) {
  check_volume(corr_in, "corr");
  check_positive(eps, "eps");
  const at::Tensor corr = widen(corr_in);
  const int64_t B = corr.size(0), Ns = vol_ns(corr), Nt = vol_nt(corr);
  at::Tensor out = alloc_output(corr.sizes(), corr.options());
  AT_DISPATCH_FLOATING_TYPES(corr.scalar_type(), "scc_mutual_nn", [&] {
    const scalar_t* c = corr.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto m = maxima(c, B, Ns, Nt);
    const scalar_t e = static_cast<scalar_t>(eps);
    at::parallel_for(0, B * Ns, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t inv_row = scalar_t(1) / (m.row[r] + e);
        const scalar_t* cm = m.col.data() + (r / Ns) * Nt;
        const scalar_t* row = c + r * Nt;
        scalar_t* orow = o + r * Nt;
        for (int64_t j = 0; j < Nt; ++j) {
          const scalar_t v = row[j];
          orow[j] = v * (v * inv_row) * (v / (cm[j] + e));  // v^3 first would overflow fp32 from 7e12
        }
      }
    });
  });
  return out.to(corr_in.scalar_type());
}

at::Tensor mutual_nn_backward(const at::Tensor& grad_in, const at::Tensor& corr_in, double eps) {
  check_volume(corr_in, "corr");
  check_positive(eps, "eps");
  TORCH_CHECK_VALUE(grad_in.sizes() == corr_in.sizes(), "scc: mutual_nn_backward: `grad` must have the shape of `corr` ",
                    shape_str(corr_in), ", got ", shape_str(grad_in));
  const at::Tensor corr = widen(corr_in);
  const at::Tensor grad = grad_in.to(corr.scalar_type()).contiguous();
  const int64_t B = corr.size(0), Ns = vol_ns(corr), Nt = vol_nt(corr);
  at::Tensor out = alloc_output(corr.sizes(), corr.options());
  AT_DISPATCH_FLOATING_TYPES(corr.scalar_type(), "scc_mutual_nn_backward", [&] {
    const scalar_t* c = corr.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto m = maxima(c, B, Ns, Nt);
    const scalar_t e = static_cast<scalar_t>(eps);
    // Elementwise term, plus the gradient flowing into each row maximum (row_sum) and, per chunk of
    // rows, into each column maximum (partial column sums, merged below without races).
    std::vector<scalar_t> row_sum(B * Ns);
    const int64_t chunk = std::max<int64_t>(1, (Ns + 7) / 8), nchunks = (Ns + chunk - 1) / chunk;
    std::vector<scalar_t> pcol(B * nchunks * Nt, scalar_t(0));
    at::parallel_for(0, B * nchunks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / nchunks, i0 = (t % nchunks) * chunk, i1 = std::min(Ns, i0 + chunk);
        const scalar_t* cm = m.col.data() + b * Nt;
        scalar_t* pc = pcol.data() + t * Nt;
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t r = b * Ns + i;
          const scalar_t ir = scalar_t(1) / (m.row[r] + e);
          const scalar_t* crow = c + r * Nt;
          const scalar_t* grow = g + r * Nt;
          scalar_t* orow = o + r * Nt;
          scalar_t rs = 0;
          for (int64_t j = 0; j < Nt; ++j) {
            const scalar_t v = crow[j], ic = scalar_t(1) / (cm[j] + e);
            const scalar_t gv = grow[j] * (v * ir) * (v * ic);  // G * C^2 / den, without forming C^2
            orow[j] = 3 * gv;
            rs -= gv * v * ir;
            pc[j] -= gv * v * ic;
          }
          row_sum[r] = rs;
        }
      }
    });
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t i = 0; i < Ns; ++i) o[(b * Ns + i) * Nt + m.row_arg[b * Ns + i]] += row_sum[b * Ns + i];
        for (int64_t j = 0; j < Nt; ++j) {
          scalar_t s = 0;
          for (int64_t k = 0; k < nchunks; ++k) s += pcol[(b * nchunks + k) * Nt + j];
          o[(b * Ns + m.col_arg[b * Nt + j]) * Nt + j] += s;
        }
      }
    });
  });
  return out.to(corr_in.scalar_type());
}

}  // namespace cpu
}  // namespace scc
