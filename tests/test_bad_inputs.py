"""Bad input gives a clear error naming the argument and what was expected."""

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scc_kernels as K
from scc_kernels import reference as R

F64 = torch.float64


def vol(*shape, dtype=torch.float32):
    return torch.rand(*shape, dtype=dtype) + 0.05


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: K.correlation(torch.randn(2, 4, 3), torch.randn(2, 4, 3, 3)), r"`fs` must have shape \(B, C, hs, ws\)"),
        (lambda: K.correlation(torch.randn(2, 4, 3, 3), torch.randn(3, 4, 3, 3)), r"same batch size B, got 2 and 3"),
        (lambda: K.correlation(torch.randn(2, 4, 3, 3), torch.randn(2, 5, 3, 3)), r"same number of channels C, got 4 and 5"),
        (lambda: K.correlation(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3, dtype=F64)), r"`fs` and `ft` must have the same dtype"),
        (lambda: K.correlation(torch.ones(2, 4, 3, 3, dtype=torch.int32), torch.ones(2, 4, 3, 3, dtype=torch.int32)), r"`fs` must be float32, float64"),
        (lambda: K.correlation(torch.randn(2, 4, 0, 3), torch.randn(2, 4, 3, 3)), r"`fs` must not be empty"),
        (lambda: K.correlation([1.0], torch.randn(2, 4, 3, 3)), r"`fs` must be a torch.Tensor"),
        (lambda: K.mutual_nn(torch.rand(2, 3, 4, 5)), r"`corr` must have shape \(B, hs, ws, ht, wt\) or \(B, Ns, Nt\)"),
        (lambda: K.conv4d(torch.randn(1, 2, 3, 3, 3, 3), torch.randn(4, 3, 3, 3, 3, 3)), r"weight"),
        (lambda: K.conv4d(torch.randn(1, 2, 3, 3, 3, 3), torch.randn(4, 2, 2, 2, 2, 2)), r"odd"),
        (lambda: K.conv4d(torch.randn(1, 2, 3, 3, 3), torch.randn(4, 2, 3, 3, 3, 3)), r"`x`"),
        (lambda: K.conv4d(torch.randn(1, 2, 3, 3, 3, 3), torch.randn(4, 2, 3, 3, 3, 3), torch.randn(3)), r"bias"),
        (lambda: K.masked_vote(vol(2, 3, 4, 5, 6), torch.rand(2, 4, 3), None), r"`mask_s` must have shape \(B, hs, ws\) = \(2, 3, 4\)"),
        (lambda: K.masked_vote(vol(2, 3, 4, 5, 6), None, torch.rand(2, 5, 5)), r"`mask_t` must have shape \(B, ht, wt\) = \(2, 5, 6\)"),
        (lambda: K.masked_vote(vol(2, 3, 4, 5, 6), mode="hough"), r"`mode` must be 'local' or 'global', got 'hough'"),
        (lambda: K.masked_vote(vol(2, 3, 4, 5, 6), radius=-1), r"`radius` must be >= 0"),
        (lambda: K.masked_vote(vol(2, 3, 4, 5, 6), sigma=0.0), r"`sigma` must be a positive"),
        # the ops take masks and bin_logit in corr's dtype only (the API casts them: test_api_casts_masks_and_bin_logit)
        (lambda: torch.ops.scc.masked_vote(vol(2, 3, 4, 5, 6), torch.rand(2, 3, 4, dtype=F64), torch.rand(2, 5, 6), "local", 2, 1.0, 1e-6),
         r"`corr` and `mask_s` must have the same dtype"),
        (lambda: torch.ops.scc.calibrate(vol(2, 3, 4), vol(2, 3, 4), 1.0, 0.1, torch.tensor(0.0, dtype=F64), 1e-6),
         r"`corr` and `bin_logit` must have the same dtype"),
        (lambda: K.calibrate(vol(2, 3, 4), vol(2, 3, 5)), r"`g` must have the shape of `corr`"),
        (lambda: K.calibrate(vol(2, 3, 4), vol(2, 3, 4), tau=0.0), r"`tau` must be a positive"),
        (lambda: K.calibrate(vol(2, 3, 4), vol(2, 3, 4), bin_logit=torch.zeros(2)), r"`bin_logit` must be a scalar tensor"),
        (lambda: K.soft_argmax(vol(2, 3, 12), 3, 5), r"`ht` \* `wt` must equal the target size Nt = 12"),
        # ht * wt wraps around in int64 to 8 = Nt: the kernel read far past the rows (a segfault)
        (lambda: K.soft_argmax(vol(2, 3, 8), 4, 2**62 + 2), r"`ht` \* `wt` must equal the target size Nt = 8"),
        (lambda: K.soft_argmax(vol(2, 3, 12), 3, 4, window=-2), r"`window` must be -1 \(all cells\) or >= 0"),
        (lambda: K.soft_argmax(vol(2, 3, 4, 3, 4), 4, 3), r"do not match the target axes of `P`"),
        (lambda: K.fused_match(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), tau=-1.0), r"`tau` must be a positive"),
        (lambda: K.fused_match(torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)), r"same number of channels C, got 4 and 6"),
    ],
)
def test_bad_input_message(call, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        call()


def test_mixed_cpu_and_meta_devices_are_refused():
    """A CPU tensor with a meta one dispatches to the fake kernels, which returned an uninitialised CPU result."""
    meta = lambda t: t.to("meta")  # noqa: E731
    calls = [lambda: K.correlation(torch.randn(1, 3, 2, 2), meta(torch.randn(1, 3, 2, 2))),
             lambda: K.conv4d(torch.randn(1, 1, 3, 3, 3, 3), meta(torch.randn(2, 1, 3, 3, 3, 3))),
             lambda: K.masked_vote(vol(1, 2, 2, 3, 3), meta(torch.rand(1, 2, 2)), None),
             lambda: K.calibrate(vol(1, 2, 3), meta(vol(1, 2, 3))),
             lambda: K.fused_match(meta(torch.randn(1, 3, 2, 2)), torch.randn(1, 3, 2, 2))]
    for call in calls:
        with pytest.raises(ValueError, match=r"must be on the same device, got (cpu and meta|meta and cpu)"):
            call()


def test_bad_input_is_value_error():
    with pytest.raises(ValueError):
        K.correlation(torch.randn(2, 4, 3, 3), torch.randn(3, 4, 3, 3))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_api_casts_masks_and_bin_logit(backend):
    """The API takes bool, uint8 or float masks and an fp32 bin_logit parameter with a volume of another dtype (the
    ops take corr's dtype only): the same result as masks and bin in corr's dtype, the gradient in z's dtype."""
    c, g = vol(2, 3, 4, 5, 6, dtype=F64), vol(2, 3, 4, 5, 6, dtype=F64)
    ms, mt = torch.rand(2, 3, 4) > 0.3, torch.rand(2, 5, 6) > 0.3
    with K.use_backend(backend):
        want = K.masked_vote(c, ms.to(F64), mt.to(F64))
        torch.testing.assert_close(K.masked_vote(c, ms, mt), want)
        torch.testing.assert_close(K.masked_vote(c, ms.to(torch.uint8), mt.float()), want)
        z = torch.tensor(0.3, requires_grad=True)  # a float32 parameter
        z64 = torch.tensor(0.3, dtype=F64, requires_grad=True)
        _, pu = K.calibrate(c, g, 1.0, 0.1, z)
        _, pu64 = K.calibrate(c, g, 1.0, 0.1, z64)
        torch.testing.assert_close(pu, pu64)
        pu.sum().backward()
        pu64.sum().backward()
        assert z.grad.dtype == torch.float32
        torch.testing.assert_close(z.grad, z64.grad.float())
        P, _ = K.calibrate(c.to(torch.bfloat16), g.to(torch.bfloat16), 1.0, 0.1, z)  # autocast's bf16 volume
        assert P.dtype == torch.bfloat16 and torch.isfinite(P.float()).all()


def test_non_contiguous_inputs_are_accepted():
    fs = torch.randn(2, 3, 5, 6, dtype=F64).transpose(2, 3)  # (2, 3, 6, 5), non-contiguous
    ft = torch.randn(2, 7, 3, 4, dtype=F64).permute(0, 2, 1, 3)  # (2, 3, 7, 4)
    assert not fs.is_contiguous() and not ft.is_contiguous()
    torch.testing.assert_close(K.correlation(fs, ft), R.correlation(fs, ft))
    c = vol(2, 4, 3, 5, 6, dtype=F64).transpose(3, 4)
    torch.testing.assert_close(K.mutual_nn(c), R.mutual_nn(c))
    torch.testing.assert_close(K.masked_vote(c), R.masked_vote(c, torch.ones(2, 4, 3, dtype=F64), torch.ones(2, 6, 5, dtype=F64)))
    flow, conf, _ = K.fused_match(fs, ft, 0.1, 1)
    rflow, rconf, _ = R.fused_match(fs, ft, 0.1, 1)
    torch.testing.assert_close(flow, rflow)


# ---- shape fuzzing ------------------------------------------------------------------------------------

dims = st.integers(min_value=1, max_value=9)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 19), hs=dims, ws=dims, ht=dims, wt=dims)
def test_fuzz_correlation(b, c, hs, ws, ht, wt):
    fs, ft = torch.randn(b, c, hs, ws, dtype=F64), torch.randn(b, c, ht, wt, dtype=F64)
    torch.testing.assert_close(K.correlation(fs, ft), R.correlation(fs, ft))


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 19), hs=dims, ws=dims, ht=dims, wt=dims,
       window=st.integers(-1, 3), tau=st.floats(0.02, 2.0))
def test_fuzz_fused_match(b, c, hs, ws, ht, wt, window, tau):
    fs, ft = torch.randn(b, c, hs, ws, dtype=F64), torch.randn(b, c, ht, wt, dtype=F64)
    flow, conf, arg = K.fused_match(fs, ft, tau, window)
    rflow, rconf, rarg = R.fused_match(fs, ft, tau, window)
    assert torch.equal(arg, rarg)
    torch.testing.assert_close(flow, rflow)
    torch.testing.assert_close(conf, rconf)


def test_use_backend_switch():
    fs, ft = torch.randn(1, 4, 3, 5, dtype=F64), torch.randn(1, 4, 2, 6, dtype=F64)
    with K.use_backend("reference"), mock.patch.object(R, "correlation", wraps=R.correlation) as spy:
        ref = K.correlation(fs, ft)
    assert spy.call_count == 1
    with K.use_backend("cpu"):
        torch.testing.assert_close(K.correlation(fs, ft), ref)
    with K.use_backend("triton"), pytest.raises(ValueError, match="backend 'triton' has no kernel for correlation on cpu"):
        K.correlation(fs, ft)
    with pytest.raises(ValueError, match="backend must be one of"):
        with K.use_backend("tpu"):
            pass
    assert K.kernel_kind("correlation", torch.device("cuda")) == "triton"
    assert K.kernel_kind("mutual_nn", torch.device("cuda")) == "cuda"


# ---- backward ops: arguments that index memory or go with `corr` --------------------------------------


def _match_backward_args(argmax_value):
    fs, ft = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 2, 5)
    flow, conf, arg, lse = torch.ops.scc.fused_match(fs, ft, 0.1, 1)
    arg = arg.clone()
    arg[1, 2, 0] = argmax_value
    return (torch.ones_like(flow), torch.ones_like(conf), fs, ft, 0.1, 1, flow, arg, lse)


@pytest.mark.parametrize("value", [10**6, 10, -1])
def test_fused_match_backward_checks_argmax_range(value):
    # Nt = 10: argmax indexes the target cells, so a value outside [0, Nt) read out of bounds (10**6 crashed)
    with pytest.raises(ValueError, match=r"`argmax` must hold target indices in \[0, Nt\) = \[0, 10\)"):
        torch.ops.scc.fused_match_backward(*_match_backward_args(value))


@pytest.mark.parametrize("value", [10**6, -1])
def test_fused_match_triton_backward_checks_argmax_range(value):
    # The Triton launcher checks on the device (asynchronously on a GPU, no host sync); on CPU tensors the
    # assert raises before the launch, so no interpreter is needed.
    pytest.importorskip("triton")
    with pytest.raises(RuntimeError, match=r"`argmax` must hold target indices in \[0, Nt\)"):
        torch.ops.scc.fused_match_triton_backward(*_match_backward_args(value))


def _calib_backward_args(**override):
    c, g = vol(2, 3, 4), vol(2, 3, 4)
    P, Pu = torch.ops.scc.calibrate(c, g, 0.5, 0.1, torch.tensor(0.2), 1e-6)
    args = dict(grad_P=torch.ones_like(P), grad_unmatched=torch.ones_like(Pu), P=P, P_unmatched=Pu, corr=c, g=g)
    args.update(override)
    return (*args.values(), 0.5, 0.1, 1e-6)


@pytest.mark.parametrize("override,match", [
    (dict(g=vol(2, 3, 5)), r"`g` must have the shape of `corr`"),
    (dict(g=vol(2, 12)), r"`g` must have the shape of `corr`"),  # the same number of elements
    (dict(g=vol(2, 3, 4, dtype=F64)), r"`g` and `corr` must have the same dtype"),
    (dict(P=vol(2, 4, 3)), r"`P` must have shape \(2, 3, 4\)"),
    (dict(grad_P=vol(2, 3, 4, dtype=F64)), r"`grad_P` and `corr` must have the same dtype"),
    (dict(P_unmatched=vol(3, 2)), r"`P_unmatched` must have shape \(2, 3\)"),
])
def test_calibrate_backward_checks_like_cuda(override, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.scc.calibrate_backward(*_calib_backward_args(**override))


def test_triton_launchers_refuse_feature_maps_past_int32():
    # The Triton kernels index one batch item's (C, h w) features in int32; meta tensors: nothing is allocated.
    pytest.importorskip("triton")
    from scc_kernels.triton.correlation import correlation_fwd
    from scc_kernels.triton.fused_match import fused_match_fwd

    fs = torch.empty(1, 2**16, 2**8, 2**7, device="meta")  # C * h * w = 2^31
    ft = torch.empty(1, 2**16, 2, 8, device="meta")
    with pytest.raises(ValueError, match=r"`fs` is too large for the Triton kernels"):
        correlation_fwd(fs, ft)
    with pytest.raises(ValueError, match=r"`ft` is too large for the Triton kernels"):
        fused_match_fwd(ft, fs, 0.1)


# ---- scalar arguments: the same checks on every backend --------------------------------------------------

NAN, INF = float("nan"), float("inf")
CPU_BACKENDS = ["cpu", "reference", "triton"]  # triton: its launchers' ops on CPU tensors raise before a launch
POSITIVE = "must be a positive finite number"


def _call(backend, op, **kw):
    """op with small valid tensors and the scalar keyword arguments kw, on `backend`."""
    fs, ft = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 2, 5)
    c = vol(1, 3, 3, 2, 5)
    if backend == "triton":
        if op == "correlation":
            return torch.ops.scc.correlation_triton(fs, ft, True, True, kw.get("eps", 1e-6))
        if op == "fused_match":
            return torch.ops.scc.fused_match_triton(fs, ft, kw.get("tau", 0.1), kw.get("window", -1))
    with K.use_backend(backend):
        if op == "correlation":
            return K.correlation(fs, ft, **kw)
        if op == "mutual_nn":
            return K.mutual_nn(c, **kw)
        if op == "masked_vote":
            return K.masked_vote(c, **kw)
        if op == "calibrate":
            return K.calibrate(c, vol(1, 3, 3, 2, 5), **{"bin_logit": 0.3, **kw})
        if op == "soft_argmax":
            return K.soft_argmax(c, 2, 5, **kw)
        if op == "fused_match":
            return K.fused_match(fs, ft, **kw)
    raise AssertionError(op)


SCALAR_CASES = (
    [("correlation", {"eps": v}, f"`eps` {POSITIVE}") for v in (NAN, INF, 0.0, -1e-6)]
    + [("mutual_nn", {"eps": v}, f"`eps` {POSITIVE}") for v in (NAN, 0.0)]
    + [("masked_vote", {"sigma": v}, f"`sigma` {POSITIVE}") for v in (INF, NAN, 0.0, -1.0)]
    + [("masked_vote", {"radius": -1}, r"`radius` must be >= 0, got -1"),
       ("masked_vote", {"eps": 0.0}, f"`eps` {POSITIVE}"), ("masked_vote", {"eps": NAN}, f"`eps` {POSITIVE}")]
    + [("calibrate", {"lam": v}, r"`lam` must be a finite number") for v in (NAN, INF, -INF)]
    + [("calibrate", {"tau": v}, f"`tau` {POSITIVE}") for v in (INF, NAN, 0.0, -0.1)]
    + [("calibrate", {"eps": v}, f"`eps` {POSITIVE}") for v in (0.0, NAN)]
    + [("calibrate", {"bin_logit": v}, r"`bin_logit` must be a finite number or -inf \(no bin\)")
       for v in (NAN, INF, torch.tensor(NAN), torch.tensor([INF]))]
    + [("calibrate", {"bin_logit": torch.zeros(2)}, r"`bin_logit` must be a scalar tensor \(one element\)")]
    + [("soft_argmax", {"beta": v}, f"`beta` {POSITIVE}") for v in (INF, NAN, 0.0)]
    + [("soft_argmax", {"window": -2}, r"`window` must be -1 \(all cells\) or >= 0, got -2")]
    + [("fused_match", {"tau": v}, f"`tau` {POSITIVE}") for v in (INF, NAN, 0.0)]
    + [("fused_match", {"window": -2}, r"`window` must be -1 \(all cells\) or >= 0, got -2")]
)


TRITON_OPS = ("correlation", "fused_match")
BACKEND_CASES = [(b, *case) for b in CPU_BACKENDS for case in SCALAR_CASES if b != "triton" or case[0] in TRITON_OPS]


@pytest.mark.parametrize("backend,op,kw,match", BACKEND_CASES,
                         ids=[f"{b}-{op}-{k}={v!r}" for b, op, kw, _ in BACKEND_CASES for k, v in kw.items()])
def test_bad_scalar(backend, op, kw, match):
    with pytest.raises(ValueError, match=match):
        _call(backend, op, **kw)


@pytest.mark.parametrize("backend,op", [(b, op) for b in CPU_BACKENDS for op in (
    "correlation", "mutual_nn", "masked_vote", "calibrate", "soft_argmax", "fused_match")
    if b != "triton" or op in TRITON_OPS])
def test_good_scalars_pass(backend, op):
    # the harness: valid scalars (a one-element bin_logit of any rank, -inf for no bin) get through
    if op == "calibrate" and backend != "triton":
        _call(backend, op, bin_logit=torch.tensor([[0.3]]))
        _call(backend, op, bin_logit=-INF)
    if backend == "triton":  # no launch without a GPU (or the interpreter): the checks passed if it got that far
        pytest.importorskip("triton")
        with pytest.raises(Exception) as info:
            _call(backend, op)
        assert "scc:" not in str(info.value), info.value
        return
    _call(backend, op)


def _bw_args():
    c, g = vol(1, 3, 3, 2, 5), vol(1, 3, 3, 2, 5)
    ms, mt = torch.rand(1, 3, 3), torch.rand(1, 2, 5)
    fs, ft = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 2, 5)
    P, Pu = ops_.calibrate(c, g, 0.5, 0.1, torch.tensor(0.2), 1e-6)
    Pf = torch.softmax(torch.randn(1, 9, 10), 2)
    flow, conf = ops_.soft_argmax(Pf, 2, 5, 1, 1.0)
    mflow, mconf, marg, mlse = ops_.fused_match(fs, ft, 0.1, 1)
    return {
        "correlation_backward": lambda eps=1e-6: ops_.correlation_backward(torch.ones(1, 3, 3, 2, 5), fs, ft, True,
                                                                           True, eps),
        "mutual_nn_backward": lambda eps=1e-5: ops_.mutual_nn_backward(c, c, eps),
        "masked_vote_backward": lambda radius=1, sigma=1.0, eps=1e-6: ops_.masked_vote_backward(
            c, c, ms, mt, "local", radius, sigma, eps),
        "calibrate_backward": lambda lam=0.5, tau=0.1, eps=1e-6: ops_.calibrate_backward(
            P, Pu, P, Pu, c, g, lam, tau, eps),
        "soft_argmax_backward": lambda window=1, beta=1.0: ops_.soft_argmax_backward(flow, conf, Pf, flow, 2, 5,
                                                                                    window, beta),
        "fused_match_backward": lambda tau=0.1, window=1: ops_.fused_match_backward(mflow, mconf, fs, ft, tau, window,
                                                                                   mflow, marg, mlse),
    }


ops_ = torch.ops.scc
BW_CASES = [("correlation_backward", {"eps": 0.0}), ("mutual_nn_backward", {"eps": NAN}),
            ("masked_vote_backward", {"sigma": INF}), ("masked_vote_backward", {"radius": -1}),
            ("masked_vote_backward", {"eps": 0.0}), ("calibrate_backward", {"lam": NAN}),
            ("calibrate_backward", {"tau": INF}), ("calibrate_backward", {"eps": -1.0}),
            ("soft_argmax_backward", {"beta": INF}), ("soft_argmax_backward", {"window": -3}),
            ("fused_match_backward", {"tau": NAN}), ("fused_match_backward", {"window": -2})]


@pytest.mark.parametrize("op,kw", BW_CASES, ids=[f"{op}-{k}" for op, kw in BW_CASES for k in kw])
def test_bad_scalar_backward_ops(op, kw):
    (name,) = kw
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        _bw_args()[op](**kw)
    _bw_args()[op]()  # the defaults pass


# ---- upper bounds: clamped before use, results unchanged ---------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("mode", ["local", "global"])
def test_huge_radius_and_sigma(backend, mode, monkeypatch):
    # radius = 100000 made the CPU kernel allocate (2r + ht)(2r + wt) planes (std::bad_alloc); a sigma past
    # 2^62 made ceil(2 sigma) overflow int64. Offsets and taps past the grids only meet zeros.
    c = vol(2, 3, 4, 5, 2, dtype=F64)
    ms, mt = torch.rand(2, 3, 4, dtype=F64), torch.rand(2, 5, 2, dtype=F64)
    with K.use_backend(backend):
        big = K.masked_vote(c, ms, mt, mode, 100000, 1.0)
        edge = K.masked_vote(c, ms, mt, mode, 3, 1.0)  # max(hs, ws) - 1
        torch.testing.assert_close(big, edge, rtol=0, atol=0)
        wide = K.masked_vote(c, ms, mt, mode, 1, 1e30)
        mid = K.masked_vote(c, ms, mt, mode, 1, 5.0)  # rho = 10, past the reach bound of these grids (7)
    torch.testing.assert_close(wide, R.masked_vote(c, ms, mt, mode, 1, 1e6), rtol=1e-9, atol=1e-12)
    # the bound itself: the same vote with every tap of the Gaussian (no clamp anywhere)
    taps = R.gaussian_taps
    monkeypatch.setattr(R, "gaussian_taps", lambda sigma, dtype=F64, device=None, max_rho=None: taps(sigma, dtype, device))
    torch.testing.assert_close(mid, R.masked_vote(c, ms, mt, mode, 1, 5.0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_huge_window(backend):
    # window = 2**63 - 1 overflowed `r + window` (csrc/common.h window_of); a window of max(ht, wt) covers the grid
    P = torch.softmax(torch.randn(2, 6, 12, dtype=F64) * 3, dim=2)
    fs, ft = torch.randn(1, 4, 3, 3, dtype=F64), torch.randn(1, 4, 2, 5, dtype=F64)
    with K.use_backend(backend):
        for a, b in zip(K.soft_argmax(P, 3, 4, 2**63 - 1), K.soft_argmax(P, 3, 4, -1)):
            torch.testing.assert_close(a, b)
        for a, b in zip(K.fused_match(fs, ft, 0.1, 2**63 - 1), K.fused_match(fs, ft, 0.1, -1)):
            torch.testing.assert_close(a, b)


def test_float_bin_logit_checked_before_it_reaches_a_device():
    # A CUDA kernel reads bin_logit on the device (unchecked, no sync); a float one is checked on the host
    # first. Meta tensors stand in for the device (their kernels are the fake ones, which check nothing).
    c = torch.empty(2, 3, 4, device="meta")
    K.calibrate(c, c, bin_logit=0.3)
    with pytest.raises(ValueError, match=r"`bin_logit` must be a finite number or -inf"):
        K.calibrate(c, c, bin_logit=float("nan"))
