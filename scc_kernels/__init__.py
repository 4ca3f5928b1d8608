"""scc_kernels: fused kernels for 4D correlation volumes, registered as torch.ops.scc.* custom ops.

Friendly functions (axes named einops-style):

- ``correlation(fs, ft)``: (B, C, hs, ws), (B, C, ht, wt) -> corr (B, hs, ws, ht, wt)
- ``mutual_nn(corr)``: corr -> corr
- ``conv4d(x, weight, bias)``: (B, Cin, hs, ws, ht, wt) -> (B, Cout, hs, ws, ht, wt)
- ``masked_vote(corr, mask_s, mask_t, mode, radius, sigma)``: corr -> g (like corr)
- ``calibrate(corr, g, lam, tau, bin_logit)``: -> P (B, Ns, Nt), P_unmatched (B, Ns)
- ``soft_argmax(P, ht, wt, window, beta)``: -> flow (..., 2), conf (...)
- ``fused_match(fs, ft, tau, window)``: -> flow (B, hs, ws, 2), conf (B, hs, ws), argmax (B, hs, ws)

``scc_kernels.reference`` holds the pure-PyTorch ground truth of each op; ``use_backend("reference")``
runs it through the same functions (tests and benchmarks compare the two).
"""

import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from . import _C  # noqa: F401  (loading the library registers the ops)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "scc_kernels: the compiled extension scc_kernels._C is missing or failed to load "
        f"({exc}). Build it from the repository root with:\n"
        "    pip install torch==2.14.1 torchvision==0.29.1 setuptools wheel ninja\n"
        "    pip install --no-build-isolation -e .\n"
        "(SCC_BUILD_CUDA=0 skips the CUDA kernels if nvcc is broken.)"
    ) from exc

from . import _ops  # noqa: E402,F401  (fake kernels and autograd)
from . import _triton_ops  # noqa: E402,F401  (CUDA kernels of correlation and fused_match)
from .api import (  # noqa: E402
    BACKENDS,
    calibrate,
    conv4d,
    correlation,
    fused_match,
    kernel_kind,
    masked_vote,
    mutual_nn,
    soft_argmax,
    use_backend,
)

__all__ = [
    "correlation", "mutual_nn", "conv4d", "masked_vote", "calibrate", "soft_argmax", "fused_match",
    "use_backend", "kernel_kind", "BACKENDS",
]
