"""Fake (meta) kernels and autograd formulas of the torch.ops.scc.* custom ops.

The schemas and the CPU/CUDA kernels live in C++ (csrc/ops.cpp); this module makes the ops
traceable by torch.compile (fake kernels: output shapes and dtypes only) and differentiable
(each backward is itself a custom op with C++ kernels, so it runs fused too).
"""

from __future__ import annotations

import functools
import inspect

import torch

ops = torch.ops.scc
_lib = "scc::"


def _reg_fake(name):
    """Registers a fake kernel, behind the kernels' device check of its tensor arguments: a CPU tensor with a meta
    one dispatches to the fake kernel, which without it returned an uninitialised CPU result."""
    def register(fake):
        sig = inspect.signature(fake)

        @functools.wraps(fake)
        def checked(*args, **kwargs):
            bound = sig.bind(*args, **kwargs).arguments
            _one_device(**{k: v for k, v in bound.items() if isinstance(v, torch.Tensor)})
            return fake(*args, **kwargs)

        return torch.library.register_fake(_lib + name)(checked)

    return register


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _out_like(t: torch.Tensor) -> torch.Tensor:
    """A fresh tensor shaped like t, in the layout the kernels return: contiguous. (empty_like keeps a
    channels_last or permuted t's strides, and inductor asserts the fake strides at run time.)"""
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _ns(t: torch.Tensor):
    return t.shape[1] * t.shape[2] if t.dim() == 5 else t.shape[1]


def _nt(t: torch.Tensor):
    return t.shape[3] * t.shape[4] if t.dim() == 5 else t.shape[2]


def _one_device(**tensors) -> None:
    (n0, t0), *rest = tensors.items()
    for n, t in rest:
        if t.device != t0.device:
            raise ValueError(f"scc: `{n0}` and `{n}` must be on the same device, got {t0.device} and {t.device}")


# ---- fake kernels -------------------------------------------------------------------------------


@_reg_fake("correlation")
def _(fs, ft, normalize=True, relu=True, eps=1e-6):
    torch._check(fs.dim() == 4 and ft.dim() == 4, lambda: "scc: `fs`, `ft` must have shape (B, C, h, w)")
    return fs.new_empty((fs.shape[0], fs.shape[2], fs.shape[3], ft.shape[2], ft.shape[3]))


@_reg_fake("correlation_backward")
def _(grad, fs, ft, normalize, relu, eps):
    return _out_like(fs), _out_like(ft)


@_reg_fake("mutual_nn")
def _(corr, eps=1e-5):
    return _out_like(corr)


@_reg_fake("mutual_nn_backward")
def _(grad, corr, eps):
    return _out_like(corr)


@_reg_fake("conv4d")
def _(x, weight, bias=None):
    torch._check(x.dim() == 6 and weight.dim() == 6, lambda: "scc: conv4d needs 6-D `x` and `weight`")
    return x.new_empty((x.shape[0], weight.shape[0], *x.shape[2:]))


@_reg_fake("conv4d_backward")
def _(grad, x, weight, bias_defined):
    gb = x.new_empty((weight.shape[0],) if bias_defined else (0,))
    return _out_like(x), _out_like(weight), gb


@_reg_fake("masked_vote")
def _(corr, mask_s, mask_t, mode="local", radius=2, sigma=1.0, eps=1e-6):
    return _out_like(corr)


@_reg_fake("masked_vote_backward")
def _(grad, corr, mask_s, mask_t, mode, radius, sigma, eps):
    return _out_like(corr), _out_like(mask_s), _out_like(mask_t)


@_reg_fake("calibrate")
def _(corr, g, lam, tau, bin_logit, eps=1e-6):
    b, ns, nt = corr.shape[0], _ns(corr), _nt(corr)
    return corr.new_empty((b, ns, nt)), corr.new_empty((b, ns))


@_reg_fake("calibrate_backward")
def _(grad_P, grad_unmatched, P, P_unmatched, corr, g, lam, tau, eps):
    return _out_like(corr), _out_like(g), corr.new_empty(())


@_reg_fake("soft_argmax")
def _(P, ht, wt, window=-1, beta=1.0):
    lead = P.shape[:3] if P.dim() == 5 else P.shape[:2]
    return P.new_empty((*lead, 2)), P.new_empty(lead)


@_reg_fake("soft_argmax_backward")
def _(grad_flow, grad_conf, P, flow, ht, wt, window, beta):
    return _out_like(P)


@_reg_fake("fused_match")
def _(fs, ft, tau, window=-1):
    b, hs, ws = fs.shape[0], fs.shape[2], fs.shape[3]
    dt = _wide(fs.dtype)
    return (
        fs.new_empty((b, hs, ws, 2), dtype=dt),
        fs.new_empty((b, hs, ws), dtype=dt),
        fs.new_empty((b, hs, ws), dtype=torch.int64),
        fs.new_empty((b, hs * ws), dtype=dt),
    )


@_reg_fake("fused_match_backward")
def _(grad_flow, grad_conf, fs, ft, tau, window, flow, argmax, lse):
    return _out_like(fs), _out_like(ft)


# ---- autograd -----------------------------------------------------------------------------------


class _FirstOrderOnly(torch.autograd.Function):
    """Runs a backward op; differentiating its result again raises. The backward ops have no derivative
    of their own, and without this a second derivative (a gradient penalty, gradgradcheck) came out as
    zero or wrong, with only PyTorch's one-time warning."""

    @staticmethod
    def forward(ctx, name, fn, *args):
        ctx.name = name
        return fn(*args)

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"scc: {ctx.name} has no second derivative: double backward (create_graph=True, then a backward "
            f"through the gradient) is not implemented; use scc_kernels.use_backend('reference') for it")


def first_order(name: str, fn, *args):
    """fn(*args), a backward op's call; guarded when the gradient is itself being recorded (create_graph)."""
    if torch.is_grad_enabled():
        return _FirstOrderOnly.apply(name, fn, *args)
    return fn(*args)



def _correlation_setup(ctx, inputs, output):
    fs, ft, normalize, relu, eps = inputs
    ctx.save_for_backward(fs, ft)
    ctx.args = (normalize, relu, eps)


def _correlation_backward(ctx, grad):
    fs, ft = ctx.saved_tensors
    gfs, gft = first_order("correlation", ops.correlation_backward, grad, fs, ft, *ctx.args)
    return gfs, gft, None, None, None


def _mutual_setup(ctx, inputs, output):
    corr, eps = inputs
    ctx.save_for_backward(corr)
    ctx.eps = eps


def _mutual_backward(ctx, grad):
    (corr,) = ctx.saved_tensors
    return first_order("mutual_nn", ops.mutual_nn_backward, grad, corr, ctx.eps), None


def _conv4d_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _conv4d_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    gx, gw, gb = first_order("conv4d", ops.conv4d_backward, grad, x, weight, ctx.has_bias)
    return gx, gw, gb if ctx.has_bias else None


def _vote_setup(ctx, inputs, output):
    corr, mask_s, mask_t, mode, radius, sigma, eps = inputs
    ctx.save_for_backward(corr, mask_s, mask_t)
    ctx.args = (mode, radius, sigma, eps)


def _vote_backward(ctx, grad):
    corr, mask_s, mask_t = ctx.saved_tensors
    gc, gs, gt = first_order("masked_vote", ops.masked_vote_backward, grad, corr, mask_s, mask_t, *ctx.args)
    return gc, gs, gt, None, None, None, None


def _calibrate_setup(ctx, inputs, output):
    corr, g, lam, tau, bin_logit, eps = inputs
    P, Pu = output
    ctx.save_for_backward(P, Pu, corr, g)
    ctx.args = (lam, tau, eps)
    ctx.bin_shape = bin_logit.shape


def _calibrate_backward(ctx, grad_P, grad_u):
    P, Pu, corr, g = ctx.saved_tensors
    grad_P = torch.zeros_like(P) if grad_P is None else grad_P
    grad_u = torch.zeros_like(Pu) if grad_u is None else grad_u
    gc, gg, gb = first_order("calibrate", ops.calibrate_backward, grad_P, grad_u, P, Pu, corr, g, *ctx.args)
    return gc, gg, None, None, gb.reshape(ctx.bin_shape), None


def _soft_argmax_setup(ctx, inputs, output):
    P, ht, wt, window, beta = inputs
    flow, _ = output
    ctx.save_for_backward(P, flow)
    ctx.args = (ht, wt, window, beta)


def _soft_argmax_backward(ctx, grad_flow, grad_conf):
    P, flow = ctx.saved_tensors
    grad_flow = torch.zeros_like(flow) if grad_flow is None else grad_flow
    grad_conf = flow.new_zeros(flow.shape[:-1]) if grad_conf is None else grad_conf
    gP = first_order("soft_argmax", ops.soft_argmax_backward, grad_flow, grad_conf, P, flow, *ctx.args)
    return gP, None, None, None, None


def _fused_setup(ctx, inputs, output):
    fs, ft, tau, window = inputs
    flow, conf, argmax, lse = output
    ctx.save_for_backward(fs, ft, flow, argmax, lse)
    ctx.mark_non_differentiable(argmax, lse)
    ctx.args = (tau, window)


def _fused_backward(ctx, grad_flow, grad_conf, _grad_arg, _grad_lse):
    fs, ft, flow, argmax, lse = ctx.saved_tensors
    grad_flow = torch.zeros_like(flow) if grad_flow is None else grad_flow
    grad_conf = flow.new_zeros(flow.shape[:-1]) if grad_conf is None else grad_conf
    tau, window = ctx.args
    gfs, gft = first_order("fused_match", ops.fused_match_backward, grad_flow, grad_conf, fs, ft, tau, window, flow,
                           argmax, lse)
    return gfs, gft, None, None


for _name, _bw, _setup in [
    ("correlation", _correlation_backward, _correlation_setup),
    ("mutual_nn", _mutual_backward, _mutual_setup),
    ("conv4d", _conv4d_backward, _conv4d_setup),
    ("masked_vote", _vote_backward, _vote_setup),
    ("calibrate", _calibrate_backward, _calibrate_setup),
    ("soft_argmax", _soft_argmax_backward, _soft_argmax_setup),
    ("fused_match", _fused_backward, _fused_setup),
]:
    torch.library.register_autograd(_lib + _name, _bw, setup_context=_setup)
