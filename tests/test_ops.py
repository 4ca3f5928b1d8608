"""Every op against its float64 reference: forward, backward, gradcheck, opcheck, torch.compile.

Shapes are deliberately odd (3x5 source against 7x4 target, C not a multiple of 8, batch 1 and 3)
and inputs random and away from zero; outputs are poisoned with NaN (conftest) before kernels run.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import scc_kernels as K
from scc_kernels import reference as R

ops = torch.ops.scc
F64 = torch.float64

# (B, C, hs, ws, ht, wt)
SHAPES = [(1, 5, 3, 5, 7, 4), (3, 11, 4, 3, 2, 6)]


def feats(b, c, hs, ws, ht, wt, dtype=F64, grad=False):
    fs = torch.randn(b, c, hs, ws, dtype=dtype, requires_grad=grad)
    ft = torch.randn(b, c, ht, wt, dtype=dtype, requires_grad=grad)
    return fs, ft


def volume(b, hs, ws, ht, wt, dtype=F64, grad=False):
    # strictly positive, as correlation volumes after ReLU + eps are where the ops live
    return (torch.rand(b, hs, ws, ht, wt, dtype=dtype) * 0.9 + 0.05).requires_grad_(grad)


def tol(dtype, ref):
    """float64 must agree to round-off; float32 to its precision, relative to the data's scale."""
    scale = 1.0 + ref.abs().max().item()
    return dict(rtol=1e-9, atol=1e-10 * scale) if dtype == F64 else dict(rtol=1e-4, atol=2e-6 * scale)


def check_grads(fn_kernel, fn_ref, inputs, dtype, outs_idx=None):
    """Forward and backward of the kernel (inputs in dtype) against the reference in float64."""
    ins = [x.detach().to(dtype).requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x for x in inputs]
    ref_ins = [x.detach().to(F64).requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x for x in inputs]
    out_k = fn_kernel(*ins)
    out_r = fn_ref(*ref_ins)
    out_k = out_k if isinstance(out_k, tuple) else (out_k,)
    out_r = out_r if isinstance(out_r, tuple) else (out_r,)
    idx = range(len(out_r)) if outs_idx is None else outs_idx
    for i in idx:
        if not out_r[i].is_floating_point():
            assert torch.equal(out_k[i], out_r[i])
            continue
        assert not torch.isnan(out_k[i]).any(), "NaN in output: an element was not written"
        torch.testing.assert_close(out_k[i].to(F64), out_r[i], **tol(dtype, out_r[i]))
    diff = [i for i in idx if out_r[i].is_floating_point()]
    ups = [torch.randn_like(out_r[i]) for i in diff]
    grad_k = torch.autograd.grad([out_k[i] for i in diff], [x for x in ins if isinstance(x, torch.Tensor) and x.requires_grad],
                                 [u.to(out_k[i].dtype) for u, i in zip(ups, diff)], allow_unused=True)
    grad_r = torch.autograd.grad([out_r[i] for i in diff], [x for x in ref_ins if isinstance(x, torch.Tensor) and x.requires_grad],
                                 ups, allow_unused=True)
    for gk, gr in zip(grad_k, grad_r):
        assert gk is not None and gr is not None
        assert not torch.isnan(gk).any()
        torch.testing.assert_close(gk.to(F64), gr, **tol(dtype, gr))


# ---- forward + backward against the reference -----------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("normalize,relu", [(True, True), (False, True), (True, False)])
def test_correlation(shape, dtype, normalize, relu):
    fs, ft = feats(*shape, grad=True)
    check_grads(lambda a, b: K.correlation(a, b, normalize, relu), lambda a, b: R.correlation(a, b, normalize, relu),
                [fs, ft], dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("flat", [False, True])
def test_mutual_nn(shape, dtype, flat):
    b, _, hs, ws, ht, wt = shape
    c = volume(b, hs, ws, ht, wt)
    if flat:
        c = c.reshape(b, hs * ws, ht * wt)
    check_grads(K.mutual_nn, R.mutual_nn, [c.requires_grad_()], dtype)


@pytest.mark.parametrize("scale", [1e13, 1e30, 1e-14])
def test_mutual_nn_float32_range(scale):
    """C^3 is never formed: above 7e12 it overflows float32 (inf came out), below 1e-13 it flushes to 0."""
    c = volume(2, 3, 2, 4, 3, dtype=torch.float32) * scale
    c64 = c.double().requires_grad_()
    ref = R.mutual_nn(c64, 1e-5 * scale)
    ref.backward(torch.ones_like(ref))
    c.requires_grad_()
    out = K.mutual_nn(c, 1e-5 * scale)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(c.grad.double(), c64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cin,cout,k,bias", [(1, 4, 3, True), (3, 1, 3, False), (2, 5, 5, True)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("b,dims", [(1, (3, 5, 7, 4)), (3, (2, 3, 3, 6))])
def test_conv4d(cin, cout, k, bias, dtype, b, dims):
    x = torch.randn(b, cin, *dims, dtype=F64, requires_grad=True)
    w = torch.randn(cout, cin, k, k, k, k, dtype=F64, requires_grad=True)
    bb = torch.randn(cout, dtype=F64, requires_grad=True) if bias else None
    inputs = [x, w] + ([bb] if bias else [])
    check_grads(lambda *a: K.conv4d(*a), lambda *a: R.conv4d(*a), inputs, dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("mode,radius,sigma", [("local", 2, 1.0), ("local", 1, 0.6), ("global", 0, 1.0), ("global", 0, 1.7)])
def test_masked_vote(shape, dtype, mode, radius, sigma):
    b, _, hs, ws, ht, wt = shape
    c = volume(b, hs, ws, ht, wt, grad=True)
    ms = torch.rand(b, hs, ws, dtype=F64, requires_grad=True)
    mt = torch.rand(b, ht, wt, dtype=F64, requires_grad=True)
    check_grads(lambda c_, s, t: K.masked_vote(c_, s, t, mode, radius, sigma),
                lambda c_, s, t: R.masked_vote(c_, s, t, mode, radius, sigma), [c, ms, mt], dtype)


@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("dtype,sigma", [(F64, 1e-170), (torch.float32, 1e-23)])
def test_masked_vote_tiny_sigma(mode, dtype, sigma):
    # K is then the centre tap alone, as at sigma = 0.01 (K(1) = exp(-5000) = 0). 2 sigma^2 underflows to 0 (in
    # float64 below 1.5e-162, in the reference's float32 below 2.6e-23): the centre tap was 0 / 0, all NaN.
    c = volume(2, 3, 4, 5, 3).to(dtype)
    ms, mt = torch.rand(2, 3, 4, dtype=dtype), torch.rand(2, 5, 3, dtype=dtype)
    expect = R.masked_vote(c.double(), ms.double(), mt.double(), mode, 1, 0.01)
    for backend in ("cpu", "reference"):
        with K.use_backend(backend):
            out = K.masked_vote(c, ms, mt, mode, 1, sigma)
        torch.testing.assert_close(out.double(), expect, rtol=1e-6, atol=1e-7, msg=backend)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("bin_value", [0.4, float("-inf")])
def test_calibrate(shape, dtype, bin_value):
    b, _, hs, ws, ht, wt = shape
    c, g = volume(b, hs, ws, ht, wt, grad=True), volume(b, hs, ws, ht, wt, grad=True)
    inputs = [c, g]
    if bin_value == float("-inf"):
        fk = lambda c_, g_: K.calibrate(c_, g_, 0.7, 0.1, None)  # noqa: E731
        fr = lambda c_, g_: R.calibrate(c_, g_, 0.7, 0.1, float("-inf"))  # noqa: E731
        outs = [0]  # the bin's share is identically 0
    else:
        inputs.append(torch.tensor(bin_value, dtype=F64, requires_grad=True))
        fk = lambda c_, g_, z: K.calibrate(c_, g_, 0.7, 0.1, z)  # noqa: E731
        fr = lambda c_, g_, z: R.calibrate(c_, g_, 0.7, 0.1, z)  # noqa: E731
        outs = None
    check_grads(fk, fr, inputs, dtype, outs)


@pytest.mark.parametrize("dtype,tau,atol", [(torch.float32, 0.05, 3e-45), (F64, 0.006, 1e-322)])
def test_calibrate_rows_far_below_the_bin(dtype, tau, atol):
    # Rows whose every logit lies far below the bin's: P is subnormal there, its order still the order of the
    # logits. The CPU kernel had clamped every exponent 87 (float32; 708 in float64) below the bin's logit:
    # all of such a row's P came out equal, its argmax at cell 0 and its soft-argmax flow wrong.
    c = torch.rand(2, 5, 11, dtype=F64) * 0.1 + 0.05
    g = torch.full_like(c, 0.1)
    z = torch.tensor(0.0, dtype=F64)
    expect, expect_u = R.calibrate(c, g, 1.0, tau, z)
    P, Pu = K.calibrate(c.to(dtype), g.to(dtype), 1.0, tau, z.to(dtype))
    torch.testing.assert_close(P.double(), expect, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=atol)
    torch.testing.assert_close(Pu.double(), expect_u)
    assert torch.equal(P.argmax(-1), expect.argmax(-1))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_calibrate_with_grad_on_several_threads(dtype):
    # Enough rows (2 x 1320) for the CPU kernel's blocks of rows (2^15 / Nt = 2048 here) to reach a second thread,
    # and inputs that require grad. The ATen calls in that thread ran with autograd on (worker threads do not
    # inherit the caller's dispatch state), and log(out=) refused: the op failed on any machine with 2+ threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        c, g = volume(2, 40, 33, 4, 4, grad=True), volume(2, 40, 33, 4, 4, grad=True)
        kernel = lambda c_, g_: K.calibrate(c_, g_, 0.7, 0.1, None)  # noqa: E731
        ref = lambda c_, g_: R.calibrate(c_, g_, 0.7, 0.1, float("-inf"))  # noqa: E731
        check_grads(kernel, ref, [c, g], dtype, [0])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("window", [-1, 0, 1, 2])
@pytest.mark.parametrize("beta", [1.0, 1.5])
@pytest.mark.parametrize("flat", [False, True])
def test_soft_argmax(shape, dtype, window, beta, flat):
    b, _, hs, ws, ht, wt = shape
    P = torch.softmax(torch.randn(b, hs * ws, ht * wt, dtype=F64) * 3, dim=2)
    if not flat:
        P = P.reshape(b, hs, ws, ht, wt)
    check_grads(lambda p: K.soft_argmax(p, ht, wt, window, beta), lambda p: R.soft_argmax(p, ht, wt, window, beta),
                [P.requires_grad_()], dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("window", [-1, 0, 2])
def test_fused_match(shape, dtype, window):
    fs, ft = feats(*shape, grad=True)
    check_grads(lambda a, b: K.fused_match(a, b, 0.1, window), lambda a, b: R.fused_match(a, b, 0.1, window),
                [fs, ft], dtype)


def test_fused_match_large_tiles():
    """More source rows and target columns than one CPU tile (64 x 256): exercises tile edges."""
    fs, ft = feats(2, 9, 9, 11, 17, 19)
    for window in (-1, 1):
        out_k = K.fused_match(fs, ft, 0.07, window)
        out_r = R.fused_match(fs, ft, 0.07, window)
        for a, b in zip(out_k, out_r):
            torch.testing.assert_close(a.to(b.dtype), b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("window", [-1, 1])
def test_fused_match_backward_large_tiles(window, dtype):
    """Backward just past one CPU tile each way (TI = 64 source rows, TJ = 256 target columns in
    csrc/cpu/fused_match.cpp): Ns = 65, Nt = 259, so both gradient loops accumulate over two tiles and end on a
    one-row / three-column partial tile. Gradient of a random linear function of flow and conf."""
    fs, ft = feats(2, 7, 5, 13, 7, 37, grad=True)
    check_grads(lambda a, b: K.fused_match(a, b, 0.07, window), lambda a, b: R.fused_match(a, b, 0.07, window),
                [fs, ft], dtype, outs_idx=[0, 1, 2])


def match_float32_errors(shape, tau, window, seed, kernel=K.fused_match, device="cpu") -> dict[str, tuple[float, float]]:
    """fused_match's float32 errors against float64 (flow, conf, and the gradients of a random linear function of
    both): `kernel`'s, and PyTorch's float32 autograd of the reference plus one float32 ulp at the result's scale
    (the floor where PyTorch happens to be exact), on inputs drawn from `seed`. Also used by
    benchmarks/fused_match_precision.py."""
    torch.manual_seed(seed)
    fs, ft = (x.to(device) for x in feats(*shape))
    b, _, hs, ws = fs.shape
    u_flow, u_conf = torch.randn(b, hs, ws, 2, dtype=F64).to(device), torch.randn(b, hs, ws, dtype=F64).to(device)

    def run(fn, dtype):
        a, t = fs.to(dtype).requires_grad_(), ft.to(dtype).requires_grad_()
        flow, conf = fn(a, t, tau, window)[:2]
        loss = (flow.double() * u_flow).sum() + (conf.double() * u_conf).sum()
        return [flow.detach().double(), conf.detach().double(), *[g.double() for g in torch.autograd.grad(loss, [a, t])]]

    names = ("flow", "conf", "grad_fs", "grad_ft")
    exact, ours, torch32 = run(R.fused_match, F64), run(kernel, torch.float32), run(R.fused_match, torch.float32)
    assert all(torch.isfinite(k).all() for k in ours)
    return {n: ((k - e).abs().max().item(), (t - e).abs().max().item() + 1.2e-7 * e.abs().max().item())
            for n, k, t, e in zip(names, ours, torch32, exact)}


SMALL_TAU_SHAPE = (2, 9, 5, 7, 6, 11)  # B, C, hs, ws, ht, wt


def summed_float32_errors(tau, window, seeds=8, shape=SMALL_TAU_SHAPE, **kw) -> dict[str, tuple[float, float]]:
    """match_float32_errors summed over inputs 0 .. seeds - 1 (one input alone scatters: both sides round float32
    logits, differently): {name: (kernel's error, PyTorch's)}. kw: kernel, device."""
    total = {}
    for seed in range(seeds):
        for name, (err, err_torch) in match_float32_errors(shape, tau, window, seed, **kw).items():
            k, t = total.get(name, (0.0, 0.0))
            total[name] = (k + err, t + err_torch)
    return total


@pytest.mark.parametrize("window", [-1, 1])
def test_fused_match_backward_float32_error(window):
    """float32 gradients over a long row (Nt = 259, tau = 0.07) within twice the error of PyTorch's float32 autograd
    of the reference. The backward relies on sum_j P_ij (x_j - flow_i) = 0: while the forward summed its rows in
    float32, and the backward took P at the argmax and in the window from per-cell dot products, that was 3-6x
    PyTorch's error."""
    for seed in range(3):
        errors = match_float32_errors((2, 7, 5, 13, 7, 37), 0.07, window, seed)
        for name in ("grad_fs", "grad_ft"):
            err, err_torch = errors[name]
            assert err <= 2 * err_torch, f"seed {seed}, {name}: kernel error {err:.3g}, PyTorch float32 {err_torch:.3g}"


@pytest.mark.parametrize("tau", [0.01, 0.004])
@pytest.mark.parametrize("window", [-1, 1])
def test_fused_match_float32_small_tau(window, tau):
    """Small temperatures: logits up to 1 / tau = 250, so the exponentials span the kernel's whole float32 range
    (csrc/cpu/fused_match.cpp exp_small flushes arguments below about -87.7 to 0) and 1 / tau amplifies any inconsistency
    between the forward's and the backward's probabilities (the gradients were 10-70x PyTorch's float32 error).
    Forward and gradients against float64: summed over eight inputs, at most twice PyTorch's float32 error (one input
    alone scatters from 0.3x to about 4x: both are float32 logits, rounded differently)."""
    for name, (err, err_torch) in summed_float32_errors(tau, window).items():
        assert err <= 2 * err_torch, f"{name}: error {err:.3g}, PyTorch float32 {err_torch:.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    """fp16/bf16 are computed in fp32 on CPU: error comparable to PyTorch's own low-precision path."""
    fs, ft = feats(2, 16, 4, 5, 6, 3)
    exact = R.correlation(fs, ft)
    lo = K.correlation(fs.to(dtype), ft.to(dtype))
    assert lo.dtype == dtype
    torch_lo = R.correlation(fs.to(dtype).float(), ft.to(dtype).float()).to(dtype)
    err = (lo.double() - exact).abs().max()
    err_torch = (torch_lo.double() - exact).abs().max()
    assert err <= 2 * err_torch + 1e-6
    flow, conf, _ = K.fused_match(fs.to(dtype), ft.to(dtype), 0.1, 1)
    assert flow.dtype == torch.float32 and conf.dtype == torch.float32


# ---- fp16 / bf16 on the CPU kernels: every op, forward and backward ---------------------------------

LOWP = [torch.float16, torch.bfloat16]


def _lowp_bound(lo, exact, dtype):
    """Twice PyTorch's error in the same precision (tests/test_gpu_matmul_ops.py), plus half an ulp at the result's
    scale: the rounding of the output itself, which is all a kernel computing in fp32 should add, and the floor where
    PyTorch is exact. (test_gpu_matmul_ops' 4 ulps of 1 + scale would let a result narrowed through bf16 pass.)"""
    from test_gpu_matmul_ops import ULP

    return 2 * (lo.double() - exact).abs().max().item() + 0.5 * ULP[dtype] * exact.abs().max().item()


def check_low_precision(fn_kernel, fn_ref, inputs, dtype, ref_dtype=None):
    """The kernel on `inputs` rounded to `dtype` (forward, and backward for every input that requires grad) against
    the float64 reference on the same rounded inputs. Bound: twice the error of the reference computed by PyTorch in
    `ref_dtype` (default `dtype`; float32 where the kernel's contract is float32 compute) and cast to the kernel's
    output dtype, plus a few ulps of that dtype at the result's scale (PyTorch can be exact)."""
    ref_dtype = ref_dtype or dtype
    rounded = [x.detach().to(dtype) if isinstance(x, torch.Tensor) else x for x in inputs]

    def run(fn, dt):
        ins = [x.to(dt).requires_grad_(i.requires_grad) if isinstance(x, torch.Tensor) else x
               for x, i in zip(rounded, inputs)]
        outs = fn(*ins)
        return ins, outs if isinstance(outs, tuple) else (outs,)

    ins_k, out_k = run(fn_kernel, dtype)
    ins_e, out_e = run(fn_ref, F64)
    ins_l, out_l = run(fn_ref, ref_dtype)
    diff = [i for i, o in enumerate(out_e) if o.is_floating_point()]
    for i, (k, e, lo) in enumerate(zip(out_k, out_e, out_l)):
        if i not in diff:
            assert torch.equal(k, e), f"output {i}"
            continue
        assert k.dtype == (dtype if ref_dtype == dtype else torch.float32), (i, k.dtype)
        err = (k.detach().double() - e.detach()).abs().max().item()
        bound = _lowp_bound(lo.detach().to(k.dtype), e.detach(), k.dtype)
        assert err <= bound, f"output {i} ({dtype}): error {err:.3e} > bound {bound:.3e}"
    ups = [torch.randn_like(out_e[i]).to(dtype) for i in diff]  # rounded: the same upstream for all three
    grads = []
    for ins, outs in ((ins_k, out_k), (ins_e, out_e), (ins_l, out_l)):
        leaves = [x for x in ins if isinstance(x, torch.Tensor) and x.requires_grad]
        grads.append(torch.autograd.grad([outs[i] for i in diff], leaves, [u.to(outs[i].dtype) for u, i in zip(ups, diff)]))
    for n, (k, e, lo) in enumerate(zip(*grads)):
        assert k.dtype == dtype, (n, k.dtype)
        err = (k.double() - e).abs().max().item()
        bound = _lowp_bound(lo.to(dtype), e, dtype)
        assert err <= bound, f"grad {n} ({dtype}): error {err:.3e} > bound {bound:.3e}"


def _lowp_cases():
    b, c, (hs, ws), (ht, wt) = 2, 11, (3, 5), (7, 4)
    fs, ft = feats(b, c, hs, ws, ht, wt, grad=True)
    vol = lambda: volume(b, hs, ws, ht, wt, grad=True)  # noqa: E731
    ms = (torch.rand(b, hs, ws, dtype=F64) * 0.9 + 0.05).requires_grad_()
    mt = (torch.rand(b, ht, wt, dtype=F64) * 0.9 + 0.05).requires_grad_()
    x = torch.randn(b, 2, hs, ws, ht, wt, dtype=F64, requires_grad=True)
    w = (torch.randn(3, 2, 3, 3, 3, 3, dtype=F64) / 12).requires_grad_()
    bias = torch.randn(3, dtype=F64, requires_grad=True)
    z = torch.tensor(0.3, dtype=F64, requires_grad=True)
    P = torch.softmax(torch.randn(b, hs * ws, ht * wt, dtype=F64) * 3, dim=2).reshape(b, hs, ws, ht, wt)
    P.requires_grad_()
    cases = {
        "correlation": (K.correlation, R.correlation, [fs, ft]),
        "correlation_raw": (lambda a, bb: K.correlation(a, bb, False, False), lambda a, bb: R.correlation(a, bb, False, False),
                            [fs, ft]),
        "mutual_nn": (K.mutual_nn, R.mutual_nn, [vol()]),
        "conv4d": (K.conv4d, R.conv4d, [x, w, bias]),
        "masked_vote_local": (lambda *a: K.masked_vote(*a, "local", 1, 0.8), lambda *a: R.masked_vote(*a, "local", 1, 0.8),
                              [vol(), ms, mt]),
        "masked_vote_global": (lambda *a: K.masked_vote(*a, "global", 0, 1.3),
                               lambda *a: R.masked_vote(*a, "global", 0, 1.3), [vol(), ms, mt]),
        "calibrate": (lambda c_, g, zz: K.calibrate(c_, g, 0.7, 0.1, zz), lambda c_, g, zz: R.calibrate(c_, g, 0.7, 0.1, zz),
                      [vol(), vol(), z]),
    }
    for window in (-1, 1):
        cases[f"soft_argmax_w{window}"] = (lambda p, w_=window: K.soft_argmax(p, ht, wt, w_, 1.5),
                                           lambda p, w_=window: R.soft_argmax(p, ht, wt, w_, 1.5), [P])
        cases[f"fused_match_w{window}"] = (lambda a, bb, w_=window: K.fused_match(a, bb, 0.1, w_)[:3],
                                           lambda a, bb, w_=window: R.fused_match(a, bb, 0.1, w_)[:3], [fs, ft])
    return cases


@pytest.mark.parametrize("dtype", LOWP, ids=["f16", "bf16"])
@pytest.mark.parametrize("name", list(_lowp_cases()))
def test_low_precision_cpu(name, dtype):
    """fp16/bf16 inputs on the CPU kernels (widened to fp32 inside, results narrowed back; fused_match keeps fp32
    outputs, so its comparison is PyTorch in fp32 on the same rounded inputs)."""
    fk, fr, inputs = _lowp_cases()[name]
    check_low_precision(fk, fr, inputs, dtype, torch.float32 if name.startswith("fused_match") else None)


# ---- the CPU kernels' ISA paths (csrc/cpu/isa.h: conv4d's and fused_match's copies for AVX-512, AVX2+FMA and the
# x86-64 baseline) ---------------------------------------------------------------------------------------------


def _cpu_best_isa() -> str:
    """What csrc/cpu/isa.h's detect_isa() picks with SCC_CPU_ISA unset (x86-64 Linux; else the portable copy)."""
    import platform

    try:
        flags = set(next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        flags = set()
    if platform.machine() not in ("x86_64", "AMD64") or not {"avx2", "fma"} <= flags:
        return "base"
    return "avx512" if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags else "avx2"


def _effective_isa(want: str | None) -> str:
    """detect_isa() for SCC_CPU_ISA = want: 'base' always; 'avx2' only below AVX-512; anything else: the best."""
    best = _cpu_best_isa()
    if want == "base" or (want == "avx2" and best == "avx512"):
        return want
    return best


def _digest(*tensors) -> str:
    import hashlib

    return hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in tensors)).hexdigest()


def isa_fingerprints() -> dict[str, str]:
    """Hashes of one float32 forward and backward per multi-ISA op (the ISA copies can round differently: vector
    widths, FMA, summation order). Deterministic for any thread count."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 3, 5, 7, 9, generator=g)
    w = torch.randn(4, 3, 3, 3, 3, 3, generator=g) / 9
    bias, grad = torch.randn(4, generator=g), torch.randn(2, 4, 3, 5, 7, 9, generator=g)
    gx, gw, _ = ops.conv4d_backward(grad, x, w, True)
    fs, ft = torch.randn(2, 7, 5, 13, generator=g), torch.randn(2, 7, 7, 37, generator=g)
    gflow, gconf = torch.randn(2, 5, 13, 2, generator=g), torch.randn(2, 5, 13, generator=g)
    match = []
    for window in (-1, 1):
        flow, conf, arg, lse = torch.ops.scc.fused_match(fs, ft, 0.07, window)
        grads = torch.ops.scc.fused_match_backward(gflow, gconf, fs, ft, 0.07, window, flow, arg, lse)
        match += [flow, conf, lse, *grads]
    return {"conv4d": _digest(ops.conv4d(x, w, bias), gx, gw), "fused_match": _digest(*match)}


_ISA_CHILD = """import json, sys, pytest
rc = pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_ops.py", "-k", sys.argv[1]])
import test_ops
print("FINGERPRINTS", json.dumps(test_ops.isa_fingerprints()))
sys.exit(int(rc))
"""


@pytest.mark.parametrize("isa", ["avx512", "avx2", "base"])
def test_cpu_isa_paths(isa):
    """The conv4d and fused_match comparisons (float64 / float32 forward + backward against the reference, fp16 /
    bf16) in a child process per SCC_CPU_ISA value (read once per process): CI's CPU has AVX-512, so without this
    the AVX2 and baseline copies never run."""
    import cuda_emu

    if os.environ.get("SCC_CPU_ISA_CHILD"):
        pytest.skip("in an ISA child already")  # the -k below excludes this test; this guards against recursion
    if _effective_isa(isa) != isa:
        pytest.skip(f"this CPU lacks {isa} (best: {_cpu_best_isa()})")
    tests = "((test_conv4d or test_fused_match) and not isa) or (test_low_precision_cpu and (conv4d or fused_match))"
    proc = cuda_emu.run_child(["-c", _ISA_CHILD, tests], asan=False,
                              env={"SCC_CPU_ISA": isa, "SCC_CPU_ISA_CHILD": "1"}, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and " passed" in proc.stdout and " failed" not in proc.stdout, out[-4000:]
    child = json.loads(next(l.split(maxsplit=1)[1] for l in proc.stdout.splitlines() if l.startswith("FINGERPRINTS")))
    same_path = _effective_isa(os.environ.get("SCC_CPU_ISA")) == isa
    here = isa_fingerprints()
    # conv4d's copies always round differently, so its fingerprint shows that the child ran another ISA (both ops
    # dispatch on the one detect_isa()); fused_match's AVX2 and AVX-512 copies may agree to the last bit (their
    # sums are in double), so for it only the same path is checked to give the same bits
    assert (child["conv4d"] == here["conv4d"]) == same_path, (isa, _effective_isa(os.environ.get("SCC_CPU_ISA")))
    assert child["fused_match"] == here["fused_match"] or not same_path


# ---- gradcheck ------------------------------------------------------------------------------------

GRADCHECK = dict(eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_gradcheck_correlation():
    fs, ft = feats(2, 5, 3, 5, 4, 3, grad=True)
    assert torch.autograd.gradcheck(lambda a, b: K.correlation(a, b), (fs, ft), **GRADCHECK)


def test_gradcheck_mutual_nn():
    c = volume(2, 3, 4, 2, 5, grad=True)
    assert torch.autograd.gradcheck(K.mutual_nn, (c,), **GRADCHECK)


def test_gradcheck_conv4d():
    x = torch.randn(1, 2, 3, 4, 3, 5, dtype=F64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, 3, 3, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(K.conv4d, (x, w, b), **GRADCHECK)


@pytest.mark.parametrize("mode", ["local", "global"])
def test_gradcheck_masked_vote(mode):
    c = volume(2, 3, 4, 4, 3, grad=True)
    ms = torch.rand(2, 3, 4, dtype=F64, requires_grad=True)
    mt = torch.rand(2, 4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: K.masked_vote(*a, mode=mode, radius=1, sigma=0.8), (c, ms, mt), **GRADCHECK)


def test_gradcheck_calibrate():
    c, g = volume(2, 3, 2, 4, 3, grad=True), volume(2, 3, 2, 4, 3, grad=True)
    z = torch.tensor(0.2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, zz: K.calibrate(a, b, 0.5, 0.2, zz), (c, g, z), **GRADCHECK)


@pytest.mark.parametrize("window", [-1, 1])
def test_gradcheck_soft_argmax(window):
    P = torch.softmax(torch.randn(2, 6, 12, dtype=F64) * 3, dim=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: K.soft_argmax(p, 3, 4, window, 1.3), (P,), **GRADCHECK)


@pytest.mark.parametrize("window", [-1, 1])
def test_gradcheck_fused_match(window):
    fs, ft = feats(2, 4, 3, 2, 3, 4, grad=True)
    fn = lambda a, b: K.fused_match(a, b, 0.2, window)[:2]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (fs, ft), **GRADCHECK)


# ---- opcheck (schema, fake kernel, autograd registration, aot dispatch) ----------------------------


def _opcheck_cases():
    fs, ft = feats(2, 5, 3, 5, 4, 3, grad=True)
    c = volume(2, 3, 5, 4, 3, grad=True)
    g = volume(2, 3, 5, 4, 3, grad=True)
    ms = torch.rand(2, 3, 5, dtype=F64, requires_grad=True)
    mt = torch.rand(2, 4, 3, dtype=F64, requires_grad=True)
    z = torch.tensor(0.1, dtype=F64, requires_grad=True)
    P = torch.softmax(torch.randn(2, 15, 12, dtype=F64), 2).requires_grad_()
    x = torch.randn(1, 2, 3, 4, 3, 5, dtype=F64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, 3, 3, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    return [
        ("correlation", (fs, ft, True, True, 1e-6)),
        ("mutual_nn", (c, 1e-5)),
        ("conv4d", (x, w, b)),
        ("conv4d", (x, w, None)),
        ("masked_vote", (c, ms, mt, "local", 1, 1.0, 1e-6)),
        ("masked_vote", (c, ms, mt, "global", 0, 1.0, 1e-6)),
        ("calibrate", (c, g, 0.5, 0.1, z, 1e-6)),
        ("soft_argmax", (P, 4, 3, 1, 1.0)),
        ("fused_match", (fs, ft, 0.1, -1)),
        ("fused_match", (fs, ft, 0.1, 1)),
    ]


@pytest.mark.parametrize("name,args", _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(ops, name).default, args)


@pytest.mark.parametrize("name,args", _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_double_backward_raises(name, args):
    """A second derivative through an op raises, naming the op (its backward ops have no derivative; it used to
    come out zero or wrong behind a one-time warning); the gradient taken with create_graph=True is the plain one."""
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def loss():
        outs = getattr(ops, name)(*args)
        return sum((o**2).sum() for o in (outs if isinstance(outs, tuple) else (outs,)) if o.requires_grad)

    plain = torch.autograd.grad(loss(), leaves, allow_unused=True)
    graded = torch.autograd.grad(loss(), leaves, create_graph=True, allow_unused=True)
    for a, b in zip(plain, graded):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match=f"scc: {name} has no second derivative"):
        sum(g.sum() for g in graded if g is not None).backward()


@pytest.mark.parametrize("name,args", _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_kernels_ignore_autocast(name, args):
    """In a bf16 autocast region the CPU kernels compute as outside it, forward and backward: their own at::bmm calls
    used to be autocast (correlation lost precision; fused_match failed on the mixed dtypes)."""
    args = [a.detach().float().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def run():
        outs = getattr(ops, name)(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = torch.autograd.grad(sum((o**2).sum() for o in outs if o.requires_grad), leaves, allow_unused=True)
        return [o.detach() for o in outs] + [g for g in grads if g is not None]

    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run()
    for a, b in zip(plain, auto, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_double_backward_reference_backend():
    """The error's advice: the reference backend has second derivatives."""
    c = volume(1, 2, 3, 3, 2, grad=True)
    with K.use_backend("reference"):
        assert torch.autograd.gradgradcheck(K.mutual_nn, (c,), **GRADCHECK)


# ---- torch.compile ----------------------------------------------------------------------------------


def test_torch_compile_fullgraph():
    """A small matching pipeline built from the ops compiles without graph breaks and matches eager."""

    def pipeline(fs, ft, ms, mt, weight, z):
        corr = K.correlation(fs, ft)
        corr = K.mutual_nn(corr)
        corr = corr + K.conv4d(corr.unsqueeze(1), weight).squeeze(1).relu()
        g = K.masked_vote(corr, ms, mt, "local", 1, 1.0)
        P, _ = K.calibrate(corr, g, 1.0, 0.1, z)
        flow, conf = K.soft_argmax(P, ft.shape[2], ft.shape[3], 1)
        fflow, fconf, _ = K.fused_match(fs, ft, 0.1, 1)
        return flow.sum() + conf.sum() + fflow.sum() + fconf.sum()

    torch._dynamo.reset()
    fs, ft = feats(2, 6, 3, 5, 4, 3, dtype=torch.float32, grad=True)
    ms, mt = torch.rand(2, 3, 5), torch.rand(2, 4, 3)
    weight = torch.randn(1, 1, 3, 3, 3, 3) * 0.1
    z = torch.tensor(0.0)
    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")
    out_c = compiled(fs, ft, ms, mt, weight, z)
    out_e = pipeline(fs, ft, ms, mt, weight, z)
    torch.testing.assert_close(out_c, out_e)
    gc = torch.autograd.grad(out_c, fs)[0]
    ge = torch.autograd.grad(out_e, fs)[0]
    torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize("window", [-1, 0, 2])
def test_soft_argmax_zero_mass_falls_back_to_argmax(window):
    """A row whose probabilities all underflowed to 0 gets the argmax cell, not NaN."""
    P = torch.softmax(torch.randn(2, 6, 12, dtype=F64), dim=2)
    P[0, 3] = 0.0
    for fn in (K.soft_argmax, R.soft_argmax):
        flow, conf = fn(P.clone().requires_grad_(), 3, 4, window)
        assert torch.equal(flow[0, 3].detach(), torch.tensor([0.0, 0.0], dtype=F64))
        assert conf[0, 3] == 0 and torch.isfinite(flow).all()
    Pk = P.clone().requires_grad_()
    flow, conf = K.soft_argmax(Pk, 3, 4, window)
    (g,) = torch.autograd.grad(flow.sum() + conf.sum(), Pk)
    assert torch.isfinite(g).all()


# ---- torch.compile (inductor) with non-contiguous inputs ----------------------------------------------


def compile_cases(device):
    """(name, fn, inputs) per op that takes feature maps or volumes, with channels_last / permuted inputs:
    inductor checks the strides the fake kernels promise against what the kernels return."""
    dev = torch.device(device)
    f32 = dict(dtype=torch.float32, device=dev)
    fs = torch.randn(2, 6, 3, 5, **f32).to(memory_format=torch.channels_last).requires_grad_()
    ft = torch.randn(2, 6, 4, 3, **f32).to(memory_format=torch.channels_last).requires_grad_()
    vol = lambda: (torch.rand(2, 4, 3, 3, 5, **f32) * 0.9 + 0.05).permute(0, 3, 4, 1, 2).requires_grad_()  # noqa: E731
    masks = (torch.rand(2, 5, 3, **f32).transpose(1, 2).requires_grad_(),  # (2, 3, 5), permuted
             torch.rand(2, 3, 4, **f32).transpose(1, 2).requires_grad_())  # (2, 4, 3), permuted
    x = torch.randn(1, 2, 3, 4, 3, 5, **f32).permute(0, 1, 3, 2, 5, 4).requires_grad_()  # (1, 2, 4, 3, 5, 3)
    w = (torch.randn(3, 2, 3, 3, 3, 3, **f32) * 0.1).permute(0, 1, 3, 2, 5, 4).requires_grad_()
    P = torch.softmax(torch.randn(2, 12, 15, **f32), 2).transpose(1, 2).requires_grad_()  # (2, 15, 12)
    z = torch.tensor(0.1, **f32).requires_grad_()
    return [
        ("correlation", lambda a, b: K.correlation(a, b) * 2, (fs, ft)),
        ("fused_match", lambda a, b: K.fused_match(a, b, 0.1, 1)[:2], (fs, ft)),
        ("mutual_nn", lambda c: K.mutual_nn(c) * 2, (vol(),)),
        ("conv4d", lambda a, b: K.conv4d(a, b) * 2, (x, w)),
        ("masked_vote", lambda c, s, t: K.masked_vote(c, s, t, "local", 1, 1.0) * 2, (vol(), *masks)),
        ("calibrate", lambda c, g, zz: K.calibrate(c, g, 0.5, 0.1, zz), (vol(), vol(), z)),
        ("soft_argmax", lambda p: K.soft_argmax(p, 3, 4, 1, 1.0), (P,)),
    ]


def check_compiled(fn, inputs):
    """Inductor-compiled forward and backward of fn match eager (on inputs with unusual strides)."""

    def loss(*a):
        out = fn(*a)
        out = out if isinstance(out, tuple) else (out,)
        return sum((o * torch.linspace(0.5, 1.5, o.numel(), device=o.device).view(o.shape)).sum() for o in out)

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    diff = [x for x in inputs if x.requires_grad]
    # no cached compile: the cache keys do not cover the fake kernels, so a stale graph could hide a bad one
    with torch.compiler.config.patch(force_disable_caches=True):
        out_c = compiled(*inputs)
        grads_c = torch.autograd.grad(out_c, diff)
    out_e = loss(*inputs)
    grads_e = torch.autograd.grad(out_e, diff)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-4)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [c[0] for c in compile_cases("cpu")])
def test_inductor_noncontiguous(name):
    """Inductor (default backend) with channels_last / permuted inputs, forward and backward: the fake kernels
    must promise the contiguous outputs the kernels return (empty_like(x) kept x's strides)."""
    fn, inputs = next((f, i) for n, f, i in compile_cases("cpu") if n == name)
    check_compiled(fn, inputs)


# ---- NaN propagation ----------------------------------------------------------------------------------


def nan_feats(dtype=F64):
    """Features with one NaN channel value at source cell (1, 2, 1): that cell's row of the volume is NaN."""
    fs, ft = feats(2, 5, 3, 4, 4, 3, dtype=dtype)
    fs[1, 3, 2, 1] = float("nan")
    return fs, ft


def assert_nan_like(got, ref):
    assert torch.isnan(ref).any()
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), (torch.isnan(got).nonzero(), torch.isnan(ref).nonzero())


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_nan_feature_propagates(backend, dtype):
    """A NaN feature gives NaN where the reference has it (the ReLU used to turn it into 0: a confident 'no
    match' or, in fused_match, a finite flow), not a plausible number."""
    fs, ft = nan_feats(dtype)
    ref_corr = R.correlation(fs.double(), ft.double())
    assert torch.isnan(ref_corr[1, 2, 1]).all() and torch.isnan(ref_corr).sum() == ref_corr[1, 2, 1].numel()
    with K.use_backend(backend):
        assert_nan_like(K.correlation(fs, ft), ref_corr)
        for window in (-1, 1):
            flow, conf, arg = K.fused_match(fs, ft, 0.1, window)
            rflow, rconf, rarg = R.fused_match(fs.double(), ft.double(), 0.1, window)
            assert_nan_like(conf, rconf)
            assert_nan_like(flow, rflow)
            assert torch.equal(arg, rarg)
        # a NaN target feature: every row has a NaN logit, so the reference's softmax rows are all NaN (argmax 0),
        # also where the window around the largest number holds no NaN
        ft_nan = ft.clone()
        ft_nan[0, 1, 2, 1] = float("nan")
        for window in (-1, 0, 1):
            flow, conf, arg = K.fused_match(fs, ft_nan, 0.1, window)
            rflow, rconf, rarg = R.fused_match(fs.double(), ft_nan.double(), 0.1, window)
            assert torch.isnan(rflow[0]).all() and torch.isnan(rconf[0]).all()
            assert_nan_like(flow, rflow)
            assert_nan_like(conf, rconf)
            assert torch.equal(arg, rarg)
        P = torch.softmax(torch.randn(2, 6, 12, dtype=dtype), dim=2)
        P[0, 4] = float("nan")  # a NaN window mass stays NaN (the argmax-cell fallback is for mass 0)
        P[1, 2, 7] = float("nan")  # one NaN cell: the row's argmax (torch.argmax's rule), its flow NaN
        for window in (-1, 1):
            flow, conf = K.soft_argmax(P, 3, 4, window)
            rflow, rconf = R.soft_argmax(P.double(), 3, 4, window)
            assert_nan_like(flow, rflow)
            assert_nan_like(conf, rconf)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_soft_argmax_backward_window_around_nan(backend, dtype):
    """The backward takes the forward's window, around the NaN (the row's argmax): with window 0 only that cell
    gets a gradient. (The reference's window mask had spread the NaN over the whole row, 0 * NaN.)"""
    P = torch.softmax(torch.randn(2, 6, 12, dtype=dtype), dim=2)
    P[1, 2, 7] = float("nan")
    P.requires_grad_()
    with K.use_backend(backend):
        sum(o.sum() for o in K.soft_argmax(P, 3, 4, 0)).backward()
    g = P.grad[1, 2]
    assert torch.isnan(g[7]) and (g[torch.arange(12) != 7] == 0).all(), g


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_nan_volume_maxima(backend, dtype):
    """A NaN in the volume is the maximum of its row, column and batch item, as torch.max / amax have it: mutual_nn
    gives NaN on its whole row and column, masked_vote on its whole item (the normaliser), not only near it."""
    corr = volume(2, 3, 4, 3, 5, dtype=dtype)
    corr[1, 1, 2, 0, 3] = float("nan")
    ms, mt = torch.rand(2, 3, 4, dtype=dtype), torch.rand(2, 3, 5, dtype=dtype)
    first = corr.clone()
    first[0, 0, 0, 0, 0] = float("nan")  # where the scans start (the first row, the first column)
    with K.use_backend(backend):
        assert_nan_like(K.mutual_nn(corr, 1e-5), R.mutual_nn(corr.double(), 1e-5))
        assert_nan_like(K.mutual_nn(first, 1e-5), R.mutual_nn(first.double(), 1e-5))
        for mode in ("local", "global"):
            ref = R.masked_vote(corr.double(), ms.double(), mt.double(), mode, 1, 1.0, 1e-6)
            assert torch.isnan(ref[1]).all() and not torch.isnan(ref[0]).any()
            assert_nan_like(K.masked_vote(corr, ms, mt, mode, 1, 1.0, 1e-6), ref)
