"""The CUDA ops' argument checks (csrc/cuda/register.cpp), run without a GPU.

The checks live in host code and must raise before anything touches the device. A CPU machine cannot
make CUDA tensors, but a tensor subclass can claim the CUDA device without storage; calling an op's
CUDA kernel through the dispatcher with such tensors runs exactly the host-side checks a GPU run would
(the storage is never reached when the arguments are bad). The same cases run on a GPU in
tests/test_cuda_ops.py::test_argument_errors*.
"""

from __future__ import annotations

import pytest
import torch

import scc_kernels  # noqa: F401  (loads the extension)

pytestmark = pytest.mark.skipif(
    not torch._C._dispatch_has_kernel_for_dispatch_key("scc::mutual_nn", "CUDA"),
    reason="the extension was built without its CUDA kernels (needs nvcc and a CUDA build of torch)",
)

OPS = torch.ops.scc
CUDA_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


class Fake(torch.Tensor):
    """A CUDA-device tensor with shape and dtype only: any op that needs its data fails loudly."""

    @staticmethod
    def __new__(cls, *size, dtype=torch.float32):
        return torch.Tensor._make_wrapper_subclass(cls, size, dtype=dtype, device=torch.device("cuda", 0))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"the check let the arguments through: {func} was called")


def cuda_kernel(op: str, *args):
    return getattr(OPS, op).default.redispatch(CUDA_KEY, *args)


F = Fake
CASES = [
    ("mutual_nn", (F(2, 3, 4, 5), 1e-5), "corr"),
    ("mutual_nn", (F(0, 3, 4), 1e-5), "empty"),
    ("mutual_nn", (F(2, 3, 4, dtype=torch.int32), 1e-5), "float"),
    ("mutual_nn_backward", (F(2, 3, 4), torch.rand(2, 3, 4), 1e-5), "CUDA"),
    ("mutual_nn_backward", (F(2, 3, 5), F(2, 3, 4), 1e-5), "grad"),
    ("masked_vote", (F(1, 2, 2, 2, 2), F(1, 2, 2), F(1, 2, 2), "diagonal", 1, 1.0, 1e-6), "mode"),
    ("masked_vote", (F(1, 2, 2, 2, 2), F(1, 2, 2, dtype=torch.float64), F(1, 2, 2), "local", 1, 1.0, 1e-6), "mask_s"),
    ("masked_vote", (F(2, 2, 2), F(1, 2, 2), F(1, 2, 2), "local", 1, 1.0, 1e-6), "corr"),
    ("masked_vote", (F(1, 2, 2, 2, 2), F(1, 2, 2), F(1, 3, 2), "local", 1, 1.0, 1e-6), "mask_t"),
    ("masked_vote", (F(1, 2, 2, 2, 2), F(1, 2, 2), F(1, 2, 2), "local", -1, 1.0, 1e-6), "radius"),
    ("calibrate", (F(2, 3, 4), F(2, 3, 5), 1.0, 0.1, F(), 1e-6), "g"),
    ("calibrate", (F(1, 2, 2, 2, 2), F(1, 2, 2, 2, 2), 1.0, 0.1, torch.tensor(0.0), 1e-6), "bin_logit"),
    ("calibrate", (F(2, 3, 4), F(2, 3, 4), 1.0, 0.0, F(), 1e-6), "tau"),
    # B Ns = 2.2e9 rows: calibrate's grid.x takes 2^31 - 1 blocks (each bound on B and Ns alone holds)
    ("calibrate", (F(1100, 2_000_000, 1), F(1100, 2_000_000, 1), 1.0, 0.1, F(), 1e-6), "too large"),
    ("calibrate_backward", (F(1, 2, 2, 2, 2), F(1, 4), F(1, 4, 3), F(1, 4), F(1, 2, 2, 2, 2), F(1, 2, 2, 2, 2),
                            1.0, 0.1, 1e-6), "P"),
    ("soft_argmax", (F(2, 3, 4), 2, 3, -1, 1.0), "wt"),  # crashes on the H100 build (docs/performance.md)
    ("soft_argmax", (F(2, 3, 8), 4, 2**62 + 2, -1, 1.0), "wt"),  # ht * wt wraps around in int64 to Nt = 8
    ("soft_argmax", (F(1, 2, 2, 2, 2), 2, 2, -2, 1.0), "window"),
    ("soft_argmax", (F(2, 3, 4), 2, 2, -1, 0.0), "beta"),
    ("soft_argmax_backward", (F(1, 4, 3), F(1, 4), F(1, 4, 4), F(1, 4, 2), 2, 2, -1, 1.0), "flow"),
    # scalars: the checks of csrc/common.h, as on CPU (tests/test_bad_inputs.py)
    ("mutual_nn", (F(2, 3, 4), 0.0), "eps"),
    ("mutual_nn_backward", (F(2, 3, 4), F(2, 3, 4), float("nan")), "eps"),
    ("masked_vote", (F(1, 2, 2, 2, 2), F(1, 2, 2), F(1, 2, 2), "local", 1, float("inf"), 1e-6), "sigma"),
    ("masked_vote", (F(1, 2, 2, 2, 2), F(1, 2, 2), F(1, 2, 2), "local", 1, float("nan"), 1e-6), "sigma"),
    ("masked_vote", (F(1, 2, 2, 2, 2), F(1, 2, 2), F(1, 2, 2), "local", 1, 1.0, 0.0), "eps"),
    ("masked_vote_backward", (F(1, 2, 2, 2, 2), F(1, 2, 2, 2, 2), F(1, 2, 2), F(1, 2, 2), "global", 0,
                              float("inf"), 1e-6), "sigma"),
    ("calibrate", (F(2, 3, 4), F(2, 3, 4), 1.0, float("inf"), F(), 1e-6), "tau"),
    ("calibrate", (F(2, 3, 4), F(2, 3, 4), 1.0, -0.1, F(), 1e-6), "tau"),
    ("calibrate", (F(2, 3, 4), F(2, 3, 4), float("nan"), 0.1, F(), 1e-6), "lam"),
    ("calibrate", (F(2, 3, 4), F(2, 3, 4), 1.0, 0.1, F(), 0.0), "eps"),
    ("calibrate", (F(2, 3, 4), F(2, 3, 4), 1.0, 0.1, F(2), 1e-6), "bin_logit"),
    ("calibrate_backward", (F(1, 4, 3), F(1, 4), F(1, 4, 3), F(1, 4), F(1, 4, 3), F(1, 4, 3), 1.0, -1.0, 1e-6),
     "tau"),
    ("soft_argmax", (F(2, 3, 4), 2, 2, -1, float("inf")), "beta"),
    ("soft_argmax_backward", (F(1, 4, 2), F(1, 4), F(1, 4, 4), F(1, 4, 2), 2, 2, 1, float("nan")), "beta"),
    ("conv4d", (F(1, 2, 3, 3, 3, 3), F(1, 3, 3, 3, 3, 3), None), "weight"),
    ("conv4d", (F(1, 1, 3, 3, 3, 3), F(1, 1, 9, 9, 9, 9), None), "kernel size"),
    ("conv4d", (F(1, 1, 3, 3, 3, 3), F(2, 1, 3, 3, 3, 3), F(3)), "bias"),
    ("conv4d_backward", (F(1, 1, 3, 3, 3, 3, dtype=torch.float16), F(1, 1, 3, 3, 3, 3), F(1, 1, 3, 3, 3, 3), False),
     "grad"),
]


@pytest.mark.parametrize("op,args,word", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_cuda_argument_check_raises(op, args, word):
    with pytest.raises(ValueError, match=word):
        cuda_kernel(op, *args)


@pytest.mark.parametrize("bin_logit", [F(), F(1), F(1, 1)], ids=["0d", "1", "1x1"])
def test_cuda_calibrate_accepts_one_element_bin_logit(bin_logit):
    # as the CPU kernel: any one-element tensor; the checks pass and the kernel then asks for the data
    with pytest.raises(Exception) as info:
        cuda_kernel("calibrate", F(2, 3, 4), F(2, 3, 4), 1.0, 0.1, bin_logit, 1e-6)
    assert not isinstance(info.value, ValueError) and "scc:" not in str(info.value), info.value


def test_fake_tensors_reach_the_cuda_kernel():
    # The harness itself: good arguments pass the checks and the kernel then asks for the data, which
    # the storage-less tensors refuse. So the ValueErrors above come from the checks, not the harness.
    with pytest.raises(Exception) as info:
        cuda_kernel("mutual_nn", F(2, 3, 4), 1e-5)
    assert not isinstance(info.value, ValueError) and "scc:" not in str(info.value), info.value
