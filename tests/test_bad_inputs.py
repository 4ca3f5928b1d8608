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
        (lambda: K.masked_vote(vol(2, 3, 4, 5, 6), torch.rand(2, 3, 4, dtype=F64), None), r"`corr` and `mask_s` must have the same dtype"),
        (lambda: K.calibrate(vol(2, 3, 4), vol(2, 3, 5)), r"`g` must have the shape of `corr`"),
        (lambda: K.calibrate(vol(2, 3, 4), vol(2, 3, 4), tau=0.0), r"`tau` must be a positive"),
        (lambda: K.calibrate(vol(2, 3, 4), vol(2, 3, 4), bin_logit=torch.zeros(2)), r"`bin_logit` must be a scalar tensor"),
        (lambda: K.soft_argmax(vol(2, 3, 12), 3, 5), r"`ht` \* `wt` must equal the target size Nt = 12"),
        (lambda: K.soft_argmax(vol(2, 3, 12), 3, 4, window=-2), r"`window` must be -1 \(all cells\) or >= 0"),
        (lambda: K.soft_argmax(vol(2, 3, 4, 3, 4), 4, 3), r"do not match the target axes of `P`"),
        (lambda: K.fused_match(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), tau=-1.0), r"`tau` must be a positive"),
        (lambda: K.fused_match(torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)), r"same number of channels C, got 4 and 6"),
    ],
)
def test_bad_input_message(call, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        call()


def test_bad_input_is_value_error():
    with pytest.raises(ValueError):
        K.correlation(torch.randn(2, 4, 3, 3), torch.randn(3, 4, 3, 3))


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
