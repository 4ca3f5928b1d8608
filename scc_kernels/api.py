"""The friendly Python API over torch.ops.scc.* (docstrings name the axes)."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch

from . import reference as R
from ._checks import check_scalars

ops = torch.ops.scc

# Which implementation runs each op, by device: correlation and fused_match are Triton kernels on
# CUDA (matmul-shaped), the other ops CUDA C++ (stencil/reduction-shaped); every op has a C++ CPU
# kernel. "auto" takes that kernel; "reference" runs scc_kernels.reference (plain PyTorch autograd).
_TRITON_OPS = frozenset({"correlation", "fused_match"})
BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
_backend: contextvars.ContextVar[str] = contextvars.ContextVar("scc_backend", default="auto")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the scc_kernels functions inside the block with backend ``name``.

    "auto" (default): the compiled kernel for the tensors' device; "reference": the pure-PyTorch
    reference; "cpu" / "cuda" / "triton": the compiled kernel, checked to be that one (an op on a
    device whose kernel is another kind raises ValueError, e.g. "triton" for mutual_nn).
    Under torch.compile the backend is guarded (a change recompiles); with a torch whose compiler cannot
    trace a ContextVar (2.11), a function compiled inside the block keeps the backend it was compiled with.
    """
    if name not in BACKENDS:
        raise ValueError(f"scc: backend must be one of {BACKENDS}, got {name!r}")
    token = _backend.set(name)
    try:
        yield
    finally:
        _backend.reset(token)


def kernel_kind(op: str, device: torch.device) -> str:
    """The kind of compiled kernel that runs ``op`` on ``device``: "cpu", "cuda" or "triton"."""
    if device.type == "cpu":
        return "cpu"
    return "triton" if op in _TRITON_OPS else "cuda"


def _current_backend() -> str:
    return _backend.get()


try:  # newer torch.compile traces ContextVar.get, and guards on its value
    from torch._dynamo.variables import ContextVarVariable  # noqa: F401
except ImportError:  # torch 2.11's cannot (a graph break; an error with fullgraph): read it once per compile
    _current_backend = torch.compiler.assume_constant_result(_current_backend)


def _use_reference(op: str, t: torch.Tensor) -> bool:
    name = _current_backend()
    if name == "reference":
        return True
    if name != "auto" and isinstance(t, torch.Tensor):
        kind = kernel_kind(op, t.device)
        if kind != name:
            raise ValueError(f"scc: backend {name!r} has no kernel for {op} on {t.device.type}; "
                             f"its kernel there is {kind!r} (or use 'reference')")
    return False


def _tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"scc: `{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x


def _cast(x, name: str, dtype: torch.dtype) -> torch.Tensor:
    """A mask or bin logit in the volume's dtype, as the kernels take it (differentiable: the gradient reaches x
    in x's own dtype)."""
    return _tensor(x, name).to(dtype)


def correlation(
    fs: torch.Tensor, ft: torch.Tensor, normalize: bool = True, relu: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """4D correlation volume C_ij = relu(<fs_i, ft_j> / (|fs_i| |ft_j| + eps)).

    fs: (B, C, hs, ws), ft: (B, C, ht, wt) -> corr: (B, hs, ws, ht, wt), in the input dtype
    (fp32 accumulation; float64 inputs stay float64).
    """
    if _use_reference("correlation", fs):
        check_scalars(eps=eps)  # the kernels check their own (csrc/common.h, the Triton launchers)
        return R.correlation(fs, ft, normalize, relu, eps)
    op = ops.correlation_triton if _tensor(fs, "fs").is_cuda else ops.correlation  # torch.compile sees the Triton kernels
    return op(fs, _tensor(ft, "ft"), normalize, relu, eps)


def mutual_nn(corr: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """NC-Net mutual filtering C * (C / max_i C) * (C / max_j C).

    corr: (B, hs, ws, ht, wt) or (B, Ns, Nt) -> same shape and dtype.
    """
    if _use_reference("mutual_nn", corr):
        check_scalars(eps=eps)
        return R.mutual_nn(corr, eps)
    return ops.mutual_nn(_tensor(corr, "corr"), eps)


def conv4d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """4D convolution with zero padding k//2 on all four axes, stride 1 (k odd).

    x: (B, Cin, hs, ws, ht, wt), weight: (Cout, Cin, k, k, k, k), bias: (Cout,) or None
    -> (B, Cout, hs, ws, ht, wt).
    """
    if _use_reference("conv4d", x):
        return R.conv4d(x, weight, bias)
    return ops.conv4d(_tensor(x, "x"), _tensor(weight, "weight"), bias)


def masked_vote(
    corr: torch.Tensor,
    mask_s: torch.Tensor | None = None,
    mask_t: torch.Tensor | None = None,
    mode: str = "local",
    radius: int = 2,
    sigma: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Masked correspondence voting (METHOD.md, stage 3.4), normalised by its per-item maximum.

    corr: (B, hs, ws, ht, wt), mask_s: (B, hs, ws), mask_t: (B, ht, wt) (None: all ones; bool, integer or
    float masks are cast to corr's dtype) -> g: (B, hs, ws, ht, wt). ``mode``: "local" (offset consensus of
    neighbouring source cells within ``radius``) or "global" (Hough voting of offsets); Gaussian spreading ``sigma``.
    """
    corr = _tensor(corr, "corr")
    if corr.dim() != 5:
        raise ValueError(f"scc: `corr` must have shape (B, hs, ws, ht, wt), got {tuple(corr.shape)}")
    b, hs, ws, ht, wt = corr.shape
    mask_s = corr.new_ones((b, hs, ws)) if mask_s is None else _cast(mask_s, "mask_s", corr.dtype)
    mask_t = corr.new_ones((b, ht, wt)) if mask_t is None else _cast(mask_t, "mask_t", corr.dtype)
    if _use_reference("masked_vote", corr):
        check_scalars(radius=radius, sigma=sigma, eps=eps)
        return R.masked_vote(corr, mask_s, mask_t, mode, radius, sigma, eps)
    return ops.masked_vote(corr, mask_s, mask_t, mode, radius, sigma, eps)


def calibrate(
    corr: torch.Tensor,
    g: torch.Tensor,
    lam: float = 1.0,
    tau: float = 0.05,
    bin_logit: torch.Tensor | float | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated match probabilities with a "no match" bin.

    corr, g: (B, hs, ws, ht, wt) or (B, Ns, Nt) -> P: (B, Ns, Nt), P_unmatched: (B, Ns).
    P = softmax over j and the bin of ((log(corr + eps) + lam log(g + eps)) / tau, bin_logit).
    ``bin_logit``: a learnable 0-dim tensor (cast to corr's dtype: an fp32 parameter works with a bf16 volume),
    a float, or None for no bin (P_unmatched = 0).
    """
    corr = _tensor(corr, "corr")
    if bin_logit is None:
        bin_logit = -math.inf
    if isinstance(bin_logit, torch.Tensor):
        bin_logit = _cast(bin_logit, "bin_logit", corr.dtype)
    else:
        # checked while it is a host number: a CUDA kernel reads the tensor on the device, unchecked (no sync)
        check_scalars(bin_logit=float(bin_logit))
        bin_logit = torch.tensor(float(bin_logit), dtype=corr.dtype, device=corr.device)
    if _use_reference("calibrate", corr):
        check_scalars(lam=lam, tau=tau, eps=eps, bin_logit=bin_logit)
        return R.calibrate(corr, g, lam, tau, bin_logit, eps)
    return ops.calibrate(corr, _tensor(g, "g"), lam, tau, bin_logit, eps)


def soft_argmax(
    P: torch.Tensor, ht: int, wt: int, window: int = -1, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed soft-argmax: flow in target grid cells (col, row) and confidence P at the argmax.

    P: (B, Ns, Nt) -> flow: (B, Ns, 2), conf: (B, Ns); P: (B, hs, ws, ht, wt) -> (B, hs, ws, 2), (B, hs, ws).
    ``window``: half-size of the window around the argmax (-1: all cells). The window is clipped at the
    grid's edges (no padding, no wrap-around): around an argmax within ``window`` cells of an edge it holds
    fewer than (2 window + 1)^2 cells, and flow is the P^beta-weighted mean over the cells inside the grid
    only, so there it leans toward the interior. A window of max(ht, wt) or more covers the whole grid
    (the same as -1). Where the window's mass is 0 (P underflowed), flow is the argmax cell.
    """
    if _use_reference("soft_argmax", P):
        check_scalars(window=window, beta=beta)
        return R.soft_argmax(P, ht, wt, window, beta)
    return ops.soft_argmax(_tensor(P, "P"), ht, wt, window, beta)


def fused_match(
    fs: torch.Tensor, ft: torch.Tensor, tau: float = 0.05, window: int = -1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """soft_argmax(softmax_j(correlation(fs, ft) / tau)) without materialising the Ns x Nt volume.

    fs: (B, C, hs, ws), ft: (B, C, ht, wt) -> flow: (B, hs, ws, 2) (col, row in target cells),
    conf: (B, hs, ws), argmax: (B, hs, ws) int64 (flat target index). flow and conf are float32
    (float64 for float64 inputs). Differentiable in fs and ft (backward by recomputation).
    """
    if _use_reference("fused_match", fs):
        check_scalars(tau=tau, window=window)
        return R.fused_match(fs, ft, tau, window)
    op = ops.fused_match_triton if _tensor(fs, "fs").is_cuda else ops.fused_match  # torch.compile sees the Triton kernels
    flow, conf, arg, _lse = op(fs, _tensor(ft, "ft"), tau, window)
    return flow, conf, arg
