"""The CUDA C++ ops (mutual_nn, conv4d, masked_vote, calibrate, soft_argmax) on a real GPU, as torch.ops.scc
and through the public API: float64 gradcheck, torch.library.opcheck (schema, fake kernel, autograd
registration, AOT dispatch) and an inductor compile of forward and backward with channels_last / permuted
inputs (all seven ops, the Triton ones included). Values against the reference: tests/test_cuda_ops.py.

Skipped without a CUDA device and an extension built with its CUDA kernels (the CPU emulator of
tests/test_cuda_ops.py takes CPU tensors, which none of these checks can use).
"""

from __future__ import annotations

import pytest
import torch

import scc_kernels as K
import cuda_emu  # tests/cuda_emu (conftest puts tests/ on the path)
from test_ops import GRADCHECK, _opcheck_cases, check_compiled, compile_cases

pytestmark = pytest.mark.skipif(not cuda_emu.real_cuda_kernels(),
                                reason="no CUDA device, or the extension was built without its CUDA kernels")

F64 = torch.float64
CUDA_OPS = ("mutual_nn", "conv4d", "masked_vote", "calibrate", "soft_argmax")


def _cuda(*xs):
    return tuple(x.detach().to("cuda").requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x
                 for x in xs)


def _gradcheck_case(name: str, device: str = "cuda"):
    """(fn, inputs) of gradcheck case `name`, float64 on `device`."""
    f64 = dict(dtype=F64, device=device)
    c = lambda: (torch.rand(2, 3, 4, 4, 3, **f64) * 0.9 + 0.05).requires_grad_()  # noqa: E731
    ms, mt = torch.rand(2, 3, 4, **f64).requires_grad_(), torch.rand(2, 4, 3, **f64).requires_grad_()
    x = torch.randn(1, 2, 3, 4, 3, 5, **f64).requires_grad_()
    w = torch.randn(3, 2, 3, 3, 3, 3, **f64).requires_grad_()
    b = torch.randn(3, **f64).requires_grad_()
    z = torch.tensor(0.2, **f64).requires_grad_()
    P = torch.softmax(torch.randn(2, 6, 12, **f64) * 3, dim=2).requires_grad_()
    return {
        "mutual_nn": lambda: (K.mutual_nn, (c(),)),
        "mutual_nn-ops": lambda: (lambda t: torch.ops.scc.mutual_nn(t, 1e-5), (c(),)),
        "conv4d": lambda: (K.conv4d, (x, w, b)),
        "conv4d-nobias": lambda: (lambda a, ww: torch.ops.scc.conv4d(a, ww, None), (x, w)),
        "masked_vote-local": lambda: (lambda *a: K.masked_vote(*a, mode="local", radius=1, sigma=0.8), (c(), ms, mt)),
        "masked_vote-global": lambda: (lambda *a: torch.ops.scc.masked_vote(*a, "global", 0, 0.8, 1e-6),
                                       (c(), ms, mt)),
        "calibrate": lambda: (lambda a, g, zz: K.calibrate(a, g, 0.5, 0.2, zz), (c(), c(), z)),
        "calibrate-ops": lambda: (lambda a, g, zz: torch.ops.scc.calibrate(a, g, 0.5, 0.2, zz, 1e-6), (c(), c(), z)),
        "soft_argmax": lambda: (lambda p: K.soft_argmax(p, 3, 4, -1, 1.3), (P,)),
        "soft_argmax-window-ops": lambda: (lambda p: torch.ops.scc.soft_argmax(p, 3, 4, 1, 1.3), (P,)),
    }[name]()


GRADCHECK_CASES = ["mutual_nn", "mutual_nn-ops", "conv4d", "conv4d-nobias", "masked_vote-local", "masked_vote-global",
                   "calibrate", "calibrate-ops", "soft_argmax", "soft_argmax-window-ops"]


@pytest.mark.parametrize("name", GRADCHECK_CASES)
def test_gradcheck_cuda(name):
    fn, inputs = _gradcheck_case(name)
    assert torch.autograd.gradcheck(fn, inputs, **GRADCHECK)


@pytest.mark.parametrize("name,args", [c for c in _opcheck_cases() if c[0] in CUDA_OPS],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck_cuda(name, args):
    torch.library.opcheck(getattr(torch.ops.scc, name).default, _cuda(*args))


@pytest.mark.parametrize("name", [c[0] for c in compile_cases("cpu")])
def test_inductor_noncontiguous_cuda(name):
    fn, inputs = next((f, i) for n, f, i in compile_cases("cuda") if n == name)
    check_compiled(fn, inputs)
