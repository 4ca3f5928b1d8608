"""CUDA kernels of the matmul-shaped ops (correlation, fused_match) from Triton.

Triton fits these (tensor-core tiles, fused epilogue, FlashAttention-style streaming) better than
hand-written CUDA; the stencil/reduction ops are CUDA C++ (csrc/cuda). They are registered for the
CUDA dispatch key of the C++-defined schemas, so torch.ops.scc.* and autograd are the same on every
device. float64 has no tensor-core path: on CUDA it runs the float64 reference composite instead.
Triton is imported on first use, so CPU-only installs never need it.
"""

from __future__ import annotations

import torch

from . import reference as R


def _check_pair(fs: torch.Tensor, ft: torch.Tensor) -> None:
    if fs.dim() != 4:
        raise ValueError(f"scc: `fs` must have shape (B, C, hs, ws) (4 dims), got shape {tuple(fs.shape)}")
    if ft.dim() != 4:
        raise ValueError(f"scc: `ft` must have shape (B, C, ht, wt) (4 dims), got shape {tuple(ft.shape)}")
    if fs.dtype != ft.dtype:
        raise ValueError(f"scc: `fs` and `ft` must have the same dtype, got {fs.dtype} and {ft.dtype}")
    if fs.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"scc: `fs` must be float32, float64, float16 or bfloat16, got {fs.dtype}")
    if fs.device != ft.device:
        raise ValueError(f"scc: `fs` and `ft` must be on the same device, got {fs.device} and {ft.device}")
    if fs.numel() == 0 or ft.numel() == 0:
        raise ValueError(f"scc: `fs` and `ft` must not be empty, got shapes {tuple(fs.shape)}, {tuple(ft.shape)}")
    if fs.shape[0] != ft.shape[0]:
        raise ValueError(f"scc: `fs` and `ft` must have the same batch size B, got {fs.shape[0]} and {ft.shape[0]}")
    if fs.shape[1] != ft.shape[1]:
        raise ValueError(f"scc: `fs` and `ft` must have the same number of channels C, got {fs.shape[1]} and {ft.shape[1]}")


def _check_match(tau: float, window: int) -> None:
    if not tau > 0:
        raise ValueError(f"scc: `tau` must be a positive finite number, got {tau}")
    if window < -1:
        raise ValueError(f"scc: `window` must be -1 (all cells) or >= 0, got {window}")


def _fused_reference(fs, ft, tau, window):
    corr = R.correlation(fs, ft).flatten(3).flatten(1, 2)
    logits = corr / tau
    lse = torch.logsumexp(logits, dim=2)
    P = torch.softmax(logits, dim=2)
    flow, conf = R.soft_argmax(P, ft.shape[2], ft.shape[3], window)
    b, _, hs, ws = fs.shape
    return flow.reshape(b, hs, ws, 2), conf.reshape(b, hs, ws), P.argmax(2).reshape(b, hs, ws), lse


@torch.library.register_kernel("scc::correlation", "cuda")
def _correlation_cuda(fs, ft, normalize=True, relu=True, eps=1e-6):
    _check_pair(fs, ft)
    if fs.dtype == torch.float64:
        return R.correlation(fs, ft, normalize, relu, eps)
    from .triton.correlation import correlation_fwd

    return correlation_fwd(fs, ft, normalize, relu, eps)


@torch.library.register_kernel("scc::correlation_backward", "cuda")
def _correlation_backward_cuda(grad, fs, ft, normalize, relu, eps):
    _check_pair(fs, ft)
    if fs.dtype == torch.float64:
        with torch.enable_grad():
            a, b = fs.detach().requires_grad_(), ft.detach().requires_grad_()
            return torch.autograd.grad(R.correlation(a, b, normalize, relu, eps), (a, b), grad)
    from .triton.correlation import correlation_bwd

    return correlation_bwd(grad, fs, ft, normalize, relu, eps)


@torch.library.register_kernel("scc::fused_match", "cuda")
def _fused_match_cuda(fs, ft, tau, window=-1):
    _check_pair(fs, ft)
    _check_match(tau, window)
    if fs.dtype == torch.float64:
        return _fused_reference(fs, ft, tau, window)
    from .triton.fused_match import fused_match_fwd

    return fused_match_fwd(fs, ft, tau, window)


@torch.library.register_kernel("scc::fused_match_backward", "cuda")
def _fused_match_backward_cuda(grad_flow, grad_conf, fs, ft, tau, window, flow, argmax, lse):
    _check_pair(fs, ft)
    if fs.dtype == torch.float64:
        with torch.enable_grad():
            a, b = fs.detach().requires_grad_(), ft.detach().requires_grad_()
            f, c, _, _ = _fused_reference(a, b, tau, window)
            return torch.autograd.grad((f, c), (a, b), (grad_flow, grad_conf))
    from .triton.fused_match import fused_match_bwd

    return fused_match_bwd(grad_flow, grad_conf, fs, ft, tau, window, argmax, lse)
