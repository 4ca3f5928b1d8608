"""CUDA kernels of the matmul-shaped ops (correlation, fused_match) from Triton.

Triton fits these (tensor-core tiles, fused epilogue, FlashAttention-style streaming) better than
hand-written CUDA; the stencil/reduction ops are CUDA C++ (csrc/cuda). Each is a
``torch.library.triton_op`` (``scc::correlation_triton``, ``scc::fused_match_triton`` and their
backward ops, with autograd), so torch.compile traces into the Triton kernels instead of seeing an
opaque call; the API (scc_kernels.correlation / fused_match) calls these on CUDA. The C++-defined
``scc::correlation`` / ``scc::fused_match`` schemas get the same kernels for their CUDA key, so
torch.ops.scc.* behave the same on every device. float64 has no tensor-core path: on CUDA it runs the
float64 reference composite instead. Triton is imported on first use, so CPU-only installs never need it.
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import is_fake

from . import _ops
from . import reference as R
from ._checks import check_scalars


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


def _device_of(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' one (e.g. tensors on cuda:1 while
    cuda:0 is current). Tracing (fake or functional-over-fake tensors) needs no device."""
    if t.is_cuda and not is_fake(t) and t.device.index not in (None, torch.cuda.current_device()):
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _fused_reference(fs, ft, tau, window):
    corr = R.correlation(fs, ft).flatten(3).flatten(1, 2)
    logits = corr / tau
    lse = torch.logsumexp(logits, dim=2)
    P = torch.softmax(logits, dim=2)
    flow, conf = R.soft_argmax(P, ft.shape[2], ft.shape[3], window)
    b, _, hs, ws = fs.shape
    return flow.reshape(b, hs, ws, 2), conf.reshape(b, hs, ws), P.argmax(2).reshape(b, hs, ws), lse


@torch.library.triton_op("scc::correlation_triton", mutates_args=())
def correlation_triton(fs: torch.Tensor, ft: torch.Tensor, normalize: bool = True, relu: bool = True,
                       eps: float = 1e-6) -> torch.Tensor:
    _check_pair(fs, ft)
    check_scalars(eps=eps)
    if fs.dtype == torch.float64:
        return R.correlation(fs, ft, normalize, relu, eps)
    from .triton.correlation import correlation_fwd

    with _device_of(fs):
        return correlation_fwd(fs, ft, normalize, relu, eps)


@torch.library.triton_op("scc::correlation_triton_backward", mutates_args=())
def correlation_triton_backward(grad: torch.Tensor, fs: torch.Tensor, ft: torch.Tensor, normalize: bool,
                                relu: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pair(fs, ft)
    check_scalars(eps=eps)
    if fs.dtype == torch.float64:
        with torch.enable_grad():
            a, b = fs.detach().requires_grad_(), ft.detach().requires_grad_()
            ga, gb = torch.autograd.grad(R.correlation(a, b, normalize, relu, eps), (a, b), grad)
        return ga, gb
    from .triton.correlation import correlation_bwd

    with _device_of(fs):
        return correlation_bwd(grad, fs, ft, normalize, relu, eps)


@torch.library.triton_op("scc::fused_match_triton", mutates_args=())
def fused_match_triton(fs: torch.Tensor, ft: torch.Tensor, tau: float, window: int = -1
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_pair(fs, ft)
    check_scalars(tau=tau, window=window)
    if fs.dtype == torch.float64:
        return _fused_reference(fs, ft, tau, window)
    from .triton.fused_match import fused_match_fwd

    with _device_of(fs):
        return fused_match_fwd(fs, ft, tau, window)


@torch.library.triton_op("scc::fused_match_triton_backward", mutates_args=())
def fused_match_triton_backward(grad_flow: torch.Tensor, grad_conf: torch.Tensor, fs: torch.Tensor,
                                ft: torch.Tensor, tau: float, window: int, flow: torch.Tensor,
                                argmax: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pair(fs, ft)
    check_scalars(tau=tau, window=window)
    if fs.dtype == torch.float64:
        with torch.enable_grad():
            a, b = fs.detach().requires_grad_(), ft.detach().requires_grad_()
            f, c, _, _ = _fused_reference(a, b, tau, window)
            ga, gb = torch.autograd.grad((f, c), (a, b), (grad_flow, grad_conf))
        return ga, gb
    from .triton.fused_match import fused_match_bwd

    with _device_of(fs):
        return fused_match_bwd(grad_flow, grad_conf, fs, ft, tau, window, argmax, lse)


def _correlation_triton_grad(ctx, grad):
    fs, ft = ctx.saved_tensors
    gfs, gft = _ops.first_order("correlation", torch.ops.scc.correlation_triton_backward, grad, fs, ft, *ctx.args)
    return gfs, gft, None, None, None


def _fused_triton_grad(ctx, grad_flow, grad_conf, _grad_arg, _grad_lse):
    fs, ft, flow, argmax, lse = ctx.saved_tensors
    grad_flow = torch.zeros_like(flow) if grad_flow is None else grad_flow
    grad_conf = flow.new_zeros(flow.shape[:-1]) if grad_conf is None else grad_conf
    tau, window = ctx.args
    gfs, gft = _ops.first_order("fused_match", torch.ops.scc.fused_match_triton_backward, grad_flow, grad_conf, fs, ft,
                                 tau, window, flow, argmax, lse)
    return gfs, gft, None, None


# same context as the C++-schema ops (scc_kernels._ops): what is saved and which outputs have no gradient
correlation_triton.register_autograd(_correlation_triton_grad, setup_context=_ops._correlation_setup)
fused_match_triton.register_autograd(_fused_triton_grad, setup_context=_ops._fused_setup)


# The C++-defined schemas on CUDA run the same Triton ops (torch.compile sees these as opaque calls; the
# API calls the triton ops directly).
@torch.library.register_kernel("scc::correlation", "cuda")
def _correlation_cuda(fs, ft, normalize=True, relu=True, eps=1e-6):
    return torch.ops.scc.correlation_triton(fs, ft, normalize, relu, eps)


@torch.library.register_kernel("scc::correlation_backward", "cuda")
def _correlation_backward_cuda(grad, fs, ft, normalize, relu, eps):
    return torch.ops.scc.correlation_triton_backward(grad, fs, ft, normalize, relu, eps)


@torch.library.register_kernel("scc::fused_match", "cuda")
def _fused_match_cuda(fs, ft, tau, window=-1):
    return torch.ops.scc.fused_match_triton(fs, ft, tau, window)


@torch.library.register_kernel("scc::fused_match_backward", "cuda")
def _fused_match_backward_cuda(grad_flow, grad_conf, fs, ft, tau, window, flow, argmax, lse):
    return torch.ops.scc.fused_match_triton_backward(grad_flow, grad_conf, fs, ft, tau, window, flow, argmax, lse)
