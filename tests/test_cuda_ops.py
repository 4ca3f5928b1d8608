"""CUDA kernels (csrc/cuda/*.cu) against the float64 reference (scc_kernels.reference).

On a GPU the kernels run as torch.ops.scc.* on CUDA tensors. Without one (CI, most sessions) the same
sources run in the CPU emulator of tests/cuda_emu (torch.ops.scc_cuda_emu.*: CUDA threads as fibers with
real barriers and warp shuffles, the host code unchanged), so their logic is checked on every run.

Every case draws float64 inputs, rounds them to the dtype under test, and compares
  - the CUDA op (forward, and the *_backward op called directly) on those rounded inputs, with
  - the reference evaluated in float64 on the same rounded inputs (the truth; gradients by autograd).
float64 must match to ~1e-12 relative. For float32, float16 and bfloat16 the CUDA op's max error against the
truth must be at most twice the error of the same reference computation run by PyTorch on the device in that
dtype (plus a few ulps of the result's scale, for cases where PyTorch happens to be exact).
Ops whose gradient follows an argmax (mutual_nn, masked_vote, soft_argmax) take their truth on the CPU,
where torch.max(dim) returns the first index attaining the maximum, as the kernels do.
SCC_POISON=1 makes every output start as NaN, so an element a kernel forgets to write fails the test.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("SCC_POISON", "1")  # read once, when the extension first allocates an output

import scc_kernels  # noqa: E402,F401  (loads the extension and registers torch.ops.scc.*)
from scc_kernels import reference as ref  # noqa: E402

import cuda_emu  # noqa: E402  (tests/cuda_emu)

# the emulator also stands in on a GPU machine whose extension was built without nvcc
EMULATED = not cuda_emu.real_cuda_kernels()
if EMULATED:
    if (why := cuda_emu.enabled()) is not None:
        pytest.skip(f"no CUDA device, and the CUDA emulator is off ({why})", allow_module_level=True)
    cuda_emu.load()
    OPS, DEV = torch.ops.scc_cuda_emu, torch.device("cpu")
else:
    OPS, DEV = torch.ops.scc, torch.device("cuda")
gpu_only = pytest.mark.skipif(EMULATED, reason="CUDA tensors needed (the emulator takes CPU tensors; the "
                              "host-side argument checks run without a GPU in test_cuda_args_host.py)")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DT_IDS = ["f64", "f32", "f16", "bf16"]
B_SIZES = [1, 3]
SRC, TRG = (3, 5), (7, 4)  # odd, unequal source and target grids


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _round(t: torch.Tensor, dtype) -> torch.Tensor:
    """float64 CPU tensor -> the dtype under test (rounded) and back to float64: the truth's input."""
    return t.to(dtype).double()


def _run(fn, inputs, grad_outs, diff, dtype, device):
    """fn(*inputs) in `dtype` on `device`; returns (outputs, grads w.r.t. inputs[i] for i in diff)."""
    ins = []
    for k, t in enumerate(inputs):
        t = t.detach().to(device=device, dtype=dtype)
        ins.append(t.requires_grad_(k in diff))
    outs = fn(*ins)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gos = [g.to(device=device, dtype=dtype) for g in grad_outs]
    used = [(o, g) for o, g in zip(outs, gos) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in used], [ins[k] for k in diff], [g for _, g in used], allow_unused=True)
    grads = tuple(torch.zeros_like(ins[k]) if g is None else g for k, g in zip(diff, grads))
    return tuple(o.detach() for o in outs), grads


def _check(name, got, truth, low, dtype):
    """got: CUDA result; truth: float64 reference; low: reference in `dtype` (None for float64)."""
    assert got.shape == truth.shape, f"{name}: shape {tuple(got.shape)} != {tuple(truth.shape)}"
    got64, truth64 = got.detach().double().cpu(), truth.detach().double().cpu()
    assert torch.isfinite(got64).all() == torch.isfinite(truth64).all(), f"{name}: non-finite values"
    scale = truth64.abs().max().item() if truth64.numel() else 0.0
    err = (got64 - truth64).abs().max().item() if truth64.numel() else 0.0
    if dtype == torch.float64:
        bound = 1e-12 * max(scale, 1.0)
    else:
        low_err = (low.detach().double().cpu() - truth64).abs().max().item()
        bound = 2 * low_err + 4 * torch.finfo(dtype).eps * scale
    assert err <= bound, f"{name} ({dtype}): max error {err:.3e} > bound {bound:.3e} (scale {scale:.3e})"


def _compare(fn, cuda_fwd, cuda_bwd, inputs, grad_outs, diff, dtype, truth_device, names):
    """Checks the CUDA forward outputs and backward gradients against the reference."""
    inputs = [_round(t, dtype) for t in inputs]
    grad_outs = [_round(g, dtype) for g in grad_outs]
    t_out, t_grad = _run(fn, inputs, grad_outs, diff, torch.float64, truth_device)
    low_out, low_grad = (None,) * len(t_out), (None,) * len(t_grad)
    if dtype != torch.float64:
        low_out, low_grad = _run(fn, inputs, grad_outs, diff, dtype, DEV)
    cuda_in = [t.to(DEV, dtype) for t in inputs]
    outs = cuda_fwd(*cuda_in)
    outs = outs if isinstance(outs, tuple) else (outs,)
    for k, (o, t, lo) in enumerate(zip(outs, t_out, low_out)):
        assert o.dtype == dtype and o.device.type == DEV.type
        _check(f"{names[0]}[{k}]", o, t, lo, dtype)
    grads = cuda_bwd(cuda_in, outs, [g.to(DEV, dtype) for g in grad_outs])
    for k, (gr, t, lo) in enumerate(zip(grads, t_grad, low_grad)):
        assert gr.dtype == dtype
        _check(f"{names[1]}[{k}]", gr, t, lo, dtype)


# ---- mutual_nn --------------------------------------------------------------------------------

MNN_SHAPES = {
    "5d": (SRC, TRG),  # Nt = 28: vectorised path
    "5d_odd": (SRC, (5, 3)),  # Nt = 15: scalar path
    "flat_big": ((70,), (37,)),  # several column chunks (32 rows each), flat (B, Ns, Nt)
    # Fused maxima pass (64-row chunks x 2048-column tiles vectorised, 512 scalar): partial edges.
    "tiles_vec": ((70,), (2100,)),
    "tiles_scalar": ((65,), (1027,)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("b", B_SIZES)
@pytest.mark.parametrize("shape", list(MNN_SHAPES))
@pytest.mark.parametrize("signed", [False, True], ids=["pos", "signed"])
def test_mutual_nn(dtype, b, shape, signed):
    src, trg = MNN_SHAPES[shape]
    g = _gen(1)
    size = (b, *src, *trg)
    corr = torch.randn(size, generator=g, dtype=torch.float64)
    corr = corr if signed else corr.abs()
    grad = torch.randn(size, generator=g, dtype=torch.float64)
    eps = 1e-5
    _compare(
        lambda c: ref.mutual_nn(c, eps),
        lambda c: OPS.mutual_nn(c, eps),
        lambda ins, outs, gos: (OPS.mutual_nn_backward(gos[0], ins[0], eps),),
        [corr], [grad], [0], dtype, "cpu", ("mutual_nn", "mutual_nn_backward"),
    )


def test_mutual_nn_noncontiguous():
    g = _gen(2)
    base = torch.rand(2, 7, 4, 3, 5, generator=g, dtype=torch.float64)
    corr = base.permute(0, 3, 4, 1, 2)  # (B, hs=3, ws=5, ht=7, wt=4), not contiguous
    out = OPS.mutual_nn(corr.to(DEV), 1e-5)
    torch.testing.assert_close(out.cpu(), ref.mutual_nn(corr, 1e-5), rtol=1e-12, atol=1e-14)


# ---- masked_vote ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("b", B_SIZES)
@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("radius,sigma", [(2, 1.0), (1, 0.6)])
def test_masked_vote(dtype, b, mode, radius, sigma):
    g = _gen(3)
    corr = torch.rand(b, *SRC, *TRG, generator=g, dtype=torch.float64)
    ms = torch.rand(b, *SRC, generator=g, dtype=torch.float64)
    mt = torch.rand(b, *TRG, generator=g, dtype=torch.float64)
    ms[:, 0, 1] = 0  # masked-out cells
    mt[:, 2, :] = 0
    grad = torch.randn(b, *SRC, *TRG, generator=g, dtype=torch.float64)
    eps = 1e-6
    _compare(
        lambda c, s, t: ref.masked_vote(c, s, t, mode, radius, sigma, eps),
        lambda c, s, t: OPS.masked_vote(c, s, t, mode, radius, sigma, eps),
        lambda ins, outs, gos: OPS.masked_vote_backward(gos[0], *ins, mode, radius, sigma, eps),
        [corr, ms, mt], [grad], [0, 1, 2], dtype, "cpu", ("masked_vote", "masked_vote_backward"),
    )


@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("dtype,sigma", [(torch.float64, 1e-170), (torch.float32, 1e-23)], ids=["f64", "f32"])
def test_masked_vote_tiny_sigma(mode, dtype, sigma):
    # The centre tap alone, as at sigma = 0.01; 1 / (2 sigma^2) is inf in the kernel's precision, and the
    # centre tap was exp(-0 * inf), NaN.
    g = _gen(31)
    corr = torch.rand(2, *SRC, *TRG, generator=g, dtype=torch.float64)
    ms = torch.rand(2, *SRC, generator=g, dtype=torch.float64)
    mt = torch.rand(2, *TRG, generator=g, dtype=torch.float64)
    expect = ref.masked_vote(corr, ms, mt, mode, 1, 0.01, 1e-6)
    out = OPS.masked_vote(*(t.to(dtype).to(DEV) for t in (corr, ms, mt)), mode, 1, sigma, 1e-6)
    torch.testing.assert_close(out.cpu().double(), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("src,trg", [((2, 3), (56, 60)), ((3, 20), (2, 300))], ids=["56x60", "2x300"])
def test_masked_vote_large_plane(dtype, mode, src, trg):
    # A 56 x 60 target plane: float32 takes the fused local path (the plane and its blur in 28 KiB of shared
    # memory), float64 the four-pass one (56 KiB would exceed the 48 KiB a block gets without an opt-in).
    # 3 x 20 -> 2 x 300: the global mode stages each (ix, jx) matrix of a source row and a target row in tiles
    # of at most 256 columns and 64 x 65 elements, here 2 x 2 tiles (16 + 4 rows, 256 + 44 columns), so its
    # diagonal sums are carried from tile to tile in both directions.
    g = _gen(8)
    corr = torch.rand(2, *src, *trg, generator=g, dtype=torch.float64)
    ms = torch.rand(2, *src, generator=g, dtype=torch.float64)
    mt = torch.rand(2, *trg, generator=g, dtype=torch.float64)
    grad = torch.randn(2, *src, *trg, generator=g, dtype=torch.float64)
    _compare(
        lambda c, s, t: ref.masked_vote(c, s, t, mode, 2, 1.0, 1e-6),
        lambda c, s, t: OPS.masked_vote(c, s, t, mode, 2, 1.0, 1e-6),
        lambda ins, outs, gos: OPS.masked_vote_backward(gos[0], *ins, mode, 2, 1.0, 1e-6),
        [corr, ms, mt], [grad], [0, 1, 2], dtype, "cpu", ("masked_vote", "masked_vote_backward"),
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("src,radius", [((3, 37), 2), ((2, 13), 12)], ids=["runs", "r12"])
def test_masked_vote_local_box_runs(dtype, src, radius):
    # The local box sum takes runs of 16 source cells along x and a ring of the 2r + 1 latest column sums per
    # thread. 3 x 37: runs of 16, 16 and 5 cells (each reads a neighbouring run's planes; the 5-slot ring
    # wraps several times per walk). r = 12 on a source row of 13: one run whose every window is clipped by
    # both edges of the row (25 slots, 13 filled), in float32; float64's 25 x 256 ring would exceed 48 KiB,
    # so it takes the four-pass path (the ring fits up to r = 11 there).
    g = _gen(11)
    trg = (4, 6)
    corr = torch.rand(2, *src, *trg, generator=g, dtype=torch.float64)
    ms = torch.rand(2, *src, generator=g, dtype=torch.float64)
    mt = torch.rand(2, *trg, generator=g, dtype=torch.float64)
    grad = torch.randn(2, *src, *trg, generator=g, dtype=torch.float64)
    _compare(
        lambda c, s, t: ref.masked_vote(c, s, t, "local", radius, 0.8, 1e-6),
        lambda c, s, t: OPS.masked_vote(c, s, t, "local", radius, 0.8, 1e-6),
        lambda ins, outs, gos: OPS.masked_vote_backward(gos[0], *ins, "local", radius, 0.8, 1e-6),
        [corr, ms, mt], [grad], [0, 1, 2], dtype, "cpu", ("masked_vote", "masked_vote_backward"),
    )


@pytest.mark.parametrize("mode", ["local", "global"])
def test_masked_vote_huge_radius_and_sigma(mode):
    # Clamped before use (csrc/common.h): radius to the source grid, rho = ceil(2 sigma) to the grids' reach.
    # Unclamped, a radius of 100000 sized the extended planes and sigma = 1e30 overflowed rho.
    g = _gen(10)
    corr = torch.rand(1, *SRC, *TRG, generator=g, dtype=torch.float64)
    ms = torch.rand(1, *SRC, generator=g, dtype=torch.float64)
    mt = torch.rand(1, *TRG, generator=g, dtype=torch.float64)
    grad = torch.randn(1, *SRC, *TRG, generator=g, dtype=torch.float64)
    for radius, sigma in ((100000, 1.0), (1, 1e30)):
        out = OPS.masked_vote(corr.to(DEV), ms.to(DEV), mt.to(DEV), mode, radius, sigma, 1e-6).cpu()
        truth = ref.masked_vote(corr, ms, mt, mode, radius, sigma, 1e-6)
        torch.testing.assert_close(out, truth, rtol=1e-10, atol=1e-12)
        gc, _, _ = OPS.masked_vote_backward(grad.to(DEV), corr.to(DEV), ms.to(DEV), mt.to(DEV), mode, radius, sigma,
                                            1e-6)
        c64 = corr.clone().requires_grad_()
        (tc,) = torch.autograd.grad(ref.masked_vote(c64, ms, mt, mode, radius, sigma, 1e-6), c64, grad)
        torch.testing.assert_close(gc.cpu(), tc, rtol=1e-10, atol=1e-12)


# ---- calibrate --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("b", B_SIZES)
@pytest.mark.parametrize("flat", [False, True], ids=["5d", "flat"])
@pytest.mark.parametrize("bin_logit", [0.3, -math.inf], ids=["bin", "nobin"])
def test_calibrate(dtype, b, flat, bin_logit):
    g = _gen(4)
    size = (b, SRC[0] * SRC[1], TRG[0] * TRG[1]) if flat else (b, *SRC, *TRG)
    corr = torch.rand(size, generator=g, dtype=torch.float64)
    gg = torch.rand(size, generator=g, dtype=torch.float64)
    ns, nt = SRC[0] * SRC[1], TRG[0] * TRG[1]
    grad_p = torch.randn(b, ns, nt, generator=g, dtype=torch.float64)
    grad_u = torch.randn(b, ns, generator=g, dtype=torch.float64)
    z = torch.tensor(bin_logit, dtype=torch.float64)
    lam, tau, eps = 0.5, 0.3, 1e-6
    diff = [0, 1, 2] if math.isfinite(bin_logit) else [0, 1]

    def bwd(ins, outs, gos):
        gc, g_g, gb = OPS.calibrate_backward(gos[0], gos[1], outs[0], outs[1], ins[0], ins[1], lam, tau, eps)
        assert gb.dim() == 0
        if not math.isfinite(bin_logit):
            assert gb.item() == 0 and torch.all(outs[1] == 0)
            return gc, g_g
        return gc, g_g, gb

    _compare(
        lambda c, q, zz: ref.calibrate(c, q, lam, tau, zz, eps),
        lambda c, q, zz: OPS.calibrate(c, q, lam, tau, zz, eps),
        bwd, [corr, gg, z], [grad_p, grad_u], diff, dtype, DEV, ("calibrate", "calibrate_backward"),
    )


@pytest.mark.parametrize("nt", [1001, 1024, 6128, 6144, 12272, 12288, 12289])
def test_calibrate_long_rows(nt):
    # Rows longer than a block's vector loop (4 x 256), a non-multiple of 4, and rows whose logits do not fit
    # in shared memory (the one-warp-per-row kernel): 12289 in both dtypes, 6144 in float64. At 6128 (float64)
    # and 12272 (float32) the logits and the kernel's static shared memory fill 48 KiB exactly; 12288 float32
    # logits fill it alone, which a GPU refused (the row kernel's static 64 bytes on top).
    g = _gen(5)
    corr = torch.rand(2, 9, nt, generator=g, dtype=torch.float64)
    gg = torch.rand(2, 9, nt, generator=g, dtype=torch.float64)
    z = torch.tensor(-1.0, dtype=torch.float64)
    p, pu = OPS.calibrate(corr.to(DEV), gg.to(DEV), 1.0, 0.1, z.to(DEV), 1e-6)
    rp, rpu = ref.calibrate(corr, gg, 1.0, 0.1, z, 1e-6)
    torch.testing.assert_close(p.cpu(), rp, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(pu.cpu(), rpu, rtol=1e-10, atol=1e-14)
    p32, pu32 = OPS.calibrate(corr.float().to(DEV), gg.float().to(DEV), 1.0, 0.1, z.float().to(DEV), 1e-6)
    torch.testing.assert_close(p32.cpu().double(), rp, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(pu32.cpu().double(), rpu, rtol=1e-4, atol=1e-7)


# ---- soft_argmax ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("b", B_SIZES)
@pytest.mark.parametrize("window", [-1, 0, 2])
@pytest.mark.parametrize("flat", [False, True], ids=["5d", "flat"])
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_soft_argmax(dtype, b, window, flat, beta):
    g = _gen(6)
    ht, wt = TRG
    ns, nt = SRC[0] * SRC[1], ht * wt
    p = torch.softmax(3 * torch.randn(b, ns, nt, generator=g, dtype=torch.float64), dim=-1)
    lead = (b, ns) if flat else (b, *SRC)
    p = p.reshape(*lead, *((nt,) if flat else TRG))
    grad_flow = torch.randn(*lead, 2, generator=g, dtype=torch.float64)
    grad_conf = torch.randn(*lead, generator=g, dtype=torch.float64)
    _compare(
        lambda q: ref.soft_argmax(q, ht, wt, window, beta),
        lambda q: OPS.soft_argmax(q, ht, wt, window, beta),
        lambda ins, outs, gos: (OPS.soft_argmax_backward(gos[0], gos[1], ins[0], outs[0], ht, wt, window, beta),),
        [p], [grad_flow, grad_conf], [0], dtype, "cpu", ("soft_argmax", "soft_argmax_backward"),
    )


def test_soft_argmax_huge_window():
    # window = 2**63 - 1 overflowed `r + window`; clamped to max(ht, wt) it covers the grid, like window = -1
    p = torch.softmax(3 * torch.randn(2, 6, 12, generator=_gen(11), dtype=torch.float64), dim=-1)
    gflow, gconf = torch.randn(2, 6, 2, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    flow, conf = OPS.soft_argmax(p.to(DEV), 3, 4, 2**63 - 1, 1.0)
    rflow, rconf = ref.soft_argmax(p, 3, 4, -1)
    torch.testing.assert_close(flow.cpu(), rflow, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conf.cpu(), rconf)
    gp = OPS.soft_argmax_backward(gflow.to(DEV), gconf.to(DEV), p.to(DEV), flow, 3, 4, 2**63 - 1, 1.0)
    gp_all = OPS.soft_argmax_backward(gflow.to(DEV), gconf.to(DEV), p.to(DEV), flow, 3, 4, -1, 1.0)
    torch.testing.assert_close(gp, gp_all, rtol=1e-12, atol=1e-12)


def test_soft_argmax_nan_mass_stays_nan():
    # The argmax-cell fallback is for a window mass of 0 (P underflowed); a NaN in P stays NaN, as in the reference.
    p = torch.softmax(torch.randn(2, 6, 12, generator=_gen(9), dtype=torch.float64), dim=-1)
    p[0, 4] = float("nan")
    p[1, 2, 7] = float("nan")  # one NaN cell: the row's argmax (torch.argmax's rule), so its conf and flow are NaN
    for window in (-1, 1):
        flow, conf = OPS.soft_argmax(p.to(DEV), 3, 4, window, 1.0)
        rflow, rconf = ref.soft_argmax(p, 3, 4, window)
        assert torch.isnan(rflow[0, 4]).all() and torch.isnan(rconf[1, 2])
        assert torch.equal(torch.isnan(flow).cpu(), torch.isnan(rflow))
        assert torch.equal(torch.isnan(conf).cpu(), torch.isnan(rconf))


@pytest.mark.parametrize("src,radius", [((3, 5), 1), ((2, 13), 12)], ids=["box", "four-pass"])
def test_nan_is_the_maximum(src, radius):
    # A NaN in the volume is its row's, column's and item's maximum (torch.max / amax): mutual_nn is NaN on its
    # row and column, masked_vote on its whole item (the peak that normalises it). float64 r = 12 takes the
    # local mode's four-pass path (max_partial_kernel), r = 1 the box kernel's per-block peaks.
    g = _gen(12)
    corr = torch.rand(2, *src, 4, 6, generator=g, dtype=torch.float64) + 0.05
    corr[1, 1, 2, 0, 3] = float("nan")
    ms = torch.rand(2, *src, generator=g, dtype=torch.float64)
    mt = torch.rand(2, 4, 6, generator=g, dtype=torch.float64)
    out = OPS.mutual_nn(corr.to(DEV), 1e-5).cpu()
    truth = ref.mutual_nn(corr, 1e-5)
    assert torch.isnan(truth[1, 1, 2]).all() and torch.equal(torch.isnan(out), torch.isnan(truth))
    first = corr.clone()
    first[0, 0, 0, 0, 0] = float("nan")  # where the scans start (the first row, the first column)
    assert torch.equal(torch.isnan(OPS.mutual_nn(first.to(DEV), 1e-5).cpu()), torch.isnan(ref.mutual_nn(first, 1e-5)))
    for mode in ("local", "global"):
        out = OPS.masked_vote(corr.to(DEV), ms.to(DEV), mt.to(DEV), mode, radius, 1.0, 1e-6).cpu()
        truth = ref.masked_vote(corr, ms, mt, mode, radius, 1.0, 1e-6)
        assert torch.isnan(truth[1]).all() and not torch.isnan(truth[0]).any()
        assert torch.equal(torch.isnan(out), torch.isnan(truth)), mode


# ---- conv4d -----------------------------------------------------------------------------------

def _conv_case(dtype, b, cin, cout, k, bias, src=SRC, trg=TRG):
    g = _gen(7)
    x = torch.randn(b, cin, *src, *trg, generator=g, dtype=torch.float64)
    w = torch.randn(cout, cin, k, k, k, k, generator=g, dtype=torch.float64) / math.sqrt(cin * k**4)
    bvec = torch.randn(cout, generator=g, dtype=torch.float64)
    grad = torch.randn(b, cout, *src, *trg, generator=g, dtype=torch.float64)
    if bias:
        fn = ref.conv4d
        fwd = lambda xx, ww, bb: OPS.conv4d(xx, ww, bb)  # noqa: E731
        inputs, diff = [x, w, bvec], [0, 1, 2]
    else:
        fn = lambda xx, ww: ref.conv4d(xx, ww, None)  # noqa: E731
        fwd = lambda xx, ww: OPS.conv4d(xx, ww, None)  # noqa: E731
        inputs, diff = [x, w], [0, 1]

    def bwd(ins, outs, gos):
        gx, gw, gb = OPS.conv4d_backward(gos[0], ins[0], ins[1], bias)
        if bias:
            return gx, gw, gb
        assert gb.numel() == 0
        return gx, gw

    _compare(fn, fwd, bwd, inputs, [grad], diff, dtype, DEV, ("conv4d", "conv4d_backward"))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("b", B_SIZES)
@pytest.mark.parametrize("cin,cout", [(1, 1), (2, 3), (3, 16), (1, 16), (16, 1), (3, 18)])
@pytest.mark.parametrize("k", [3, 5])
def test_conv4d(dtype, b, cin, cout, k):
    _conv_case(dtype, b, cin, cout, k, bias=(cout != 1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [False, True])
def test_conv4d_large_plane(dtype, bias):
    # Target plane larger than one tile (forward: 16 x 32 outputs, grad_weight: 8 x 32 positions).
    _conv_case(dtype, 2, 2, 5, 3, bias, src=(3, 4), trg=(21, 37))


def test_conv4d_k7():
    _conv_case(torch.float64, 1, 2, 2, 7, True, src=(3, 5), trg=(7, 9))


def test_conv4d_plane_too_large_for_the_grid():
    # 2^23 rows of width 1: 65625 row tiles of 128 rows, over grid y's 65535 (a ValueError, not a refused launch)
    x, w = torch.rand(1, 1, 1, 1, 8_400_000, 1, device=DEV), torch.rand(1, 1, 3, 3, 3, 3, device=DEV)
    with pytest.raises(ValueError, match=r"target plane \(8400000 x 1\) is too large for the CUDA grid"):
        OPS.conv4d(x, w, None)


# ---- argument checks ------------------------------------------------------------------------

@gpu_only
def test_argument_errors():
    c = torch.rand(2, 3, 4, device=DEV)
    with pytest.raises(ValueError, match="corr"):
        OPS.mutual_nn(torch.rand(2, 3, 4, 5, device=DEV), 1e-5)
    with pytest.raises(ValueError, match="mode"):
        OPS.masked_vote(torch.rand(1, 2, 2, 2, 2, device=DEV), torch.rand(1, 2, 2, device=DEV),
                        torch.rand(1, 2, 2, device=DEV), "diagonal", 1, 1.0, 1e-6)
    with pytest.raises(ValueError, match="g"):
        OPS.calibrate(c, torch.rand(2, 3, 5, device=DEV), 1.0, 0.1, torch.tensor(0.0, device=DEV), 1e-6)
    with pytest.raises(ValueError, match="wt"):
        OPS.soft_argmax(c, 2, 3, -1, 1.0)
    with pytest.raises(ValueError, match="wt"):  # ht * wt wraps around in int64 to Nt = 4
        OPS.soft_argmax(c, 4, 2**62 + 1, -1, 1.0)
    with pytest.raises(ValueError, match="weight"):
        OPS.conv4d(torch.rand(1, 2, 3, 3, 3, 3, device=DEV), torch.rand(1, 3, 3, 3, 3, 3, device=DEV), None)


@gpu_only
def test_argument_errors_more():
    # Every CUDA op checks its arguments in host code before touching the device: ValueError, no crash.
    c5 = torch.rand(1, 2, 2, 2, 2, device=DEV)
    m = torch.rand(1, 2, 2, device=DEV)
    with pytest.raises(ValueError, match="empty"):
        OPS.mutual_nn(torch.rand(0, 3, 4, device=DEV), 1e-5)
    with pytest.raises(ValueError, match="float"):
        OPS.mutual_nn(torch.ones(2, 3, 4, dtype=torch.int32, device=DEV), 1e-5)
    with pytest.raises(ValueError, match="CUDA"):
        OPS.mutual_nn_backward(torch.rand(2, 3, 4, device=DEV), torch.rand(2, 3, 4), 1e-5)
    with pytest.raises(ValueError, match="grad"):
        OPS.mutual_nn_backward(torch.rand(2, 3, 5, device=DEV), torch.rand(2, 3, 4, device=DEV), 1e-5)
    with pytest.raises(ValueError, match="mask_s"):
        OPS.masked_vote(c5, m.double(), m, "local", 1, 1.0, 1e-6)
    with pytest.raises(ValueError, match="corr"):
        OPS.masked_vote(torch.rand(2, 2, 2, device=DEV), m, m, "local", 1, 1.0, 1e-6)
    with pytest.raises(ValueError, match="bin_logit"):
        OPS.calibrate(c5, c5, 1.0, 0.1, torch.tensor(0.0), 1e-6)
    with pytest.raises(ValueError, match="P"):
        OPS.calibrate_backward(c5, torch.rand(1, 4, device=DEV), torch.rand(1, 4, 3, device=DEV),
                               torch.rand(1, 4, device=DEV), c5, c5, 1.0, 0.1, 1e-6)
    with pytest.raises(ValueError, match="flow"):
        OPS.soft_argmax_backward(torch.rand(1, 4, 3, device=DEV), torch.rand(1, 4, device=DEV),
                                 torch.rand(1, 4, 4, device=DEV), torch.rand(1, 4, 2, device=DEV), 2, 2, -1, 1.0)
    with pytest.raises(ValueError, match="kernel size"):
        OPS.conv4d(torch.rand(1, 1, 3, 3, 3, 3, device=DEV), torch.rand(1, 1, 9, 9, 9, 9, device=DEV), None)
    with pytest.raises(ValueError, match="bias"):
        OPS.conv4d(torch.rand(1, 1, 3, 3, 3, 3, device=DEV), torch.rand(2, 1, 3, 3, 3, 3, device=DEV),
                   torch.rand(3, device=DEV))
    with pytest.raises(ValueError, match="grad"):
        OPS.conv4d_backward(torch.rand(1, 1, 3, 3, 3, 3, device=DEV).half(), torch.rand(1, 1, 3, 3, 3, 3, device=DEV),
                            torch.rand(1, 1, 3, 3, 3, 3, device=DEV), False)
