"""fused_match's float32 error against float64, as a multiple of PyTorch's own float32 error, per temperature
and window.

Each entry is the kernel's error (max |kernel - float64| over flow, conf, or the gradients of a random linear
function of both) summed over several random inputs, divided by the same sum for PyTorch's float32 autograd of
the reference composite (plus one float32 ulp at the result's scale); tests/test_ops.py match_float32_errors. One
input alone scatters (both sides round float32 logits, differently), hence the sums. 2.0 is the bound the tests
hold the kernels to.

    python benchmarks/fused_match_precision.py                                  # the CPU kernel
    python benchmarks/fused_match_precision.py --triton                         # the Triton kernels on a GPU
    TRITON_INTERPRET=1 python benchmarks/fused_match_precision.py --triton --seeds 3   # interpreted, on a CPU (minutes)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # scc_kernels built in place (gpu_check.sh) need not be installed
from test_ops import SMALL_TAU_SHAPE, summed_float32_errors  # noqa: E402

TAUS = (0.1, 0.05, 0.02, 0.01, 0.004)
WINDOWS = (-1, 1, 2)
NAMES = ("flow", "conf", "grad_fs", "grad_ft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton", action="store_true", help="the Triton kernels (a GPU, or TRITON_INTERPRET=1)")
    parser.add_argument("--seeds", type=int, default=8, help="random inputs per entry")
    parser.add_argument("--absolute", action="store_true",
                        help="print both sums (kernel / PyTorch) instead of their ratio: tells whether a ratio moved "
                             "with the kernel or with PyTorch's own error (which differs between CPU and GPU)")
    args = parser.parse_args()
    kernel = None
    device = "cpu"
    if args.triton:
        if not torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET"):
            parser.error("--triton needs a CUDA device, or TRITON_INTERPRET=1 to interpret the kernels on the CPU")
        device = "cpu" if os.environ.get("TRITON_INTERPRET") else "cuda"

        def kernel(a, b, tau, window):
            return torch.ops.scc.fused_match_triton(a, b, tau, window)[:3]
    what = "summed float32 errors, kernel / PyTorch" if args.absolute else "float32 error / PyTorch's float32 error"
    print(f"fused_match {what}, {'Triton' if args.triton else 'CPU'} kernel "
          f"on {device}, shape {SMALL_TAU_SHAPE}, sums over {args.seeds} inputs")
    print("| tau | window | " + " | ".join(NAMES) + " |")
    print("|---|---|" + "---|" * len(NAMES))
    for tau in TAUS:
        for window in WINDOWS:
            extra = {} if kernel is None else {"kernel": kernel}
            total = summed_float32_errors(tau, window, args.seeds, device=device, **extra)
            cells = (f"{k:.2e} / {t:.2e}" if args.absolute else f"{k / t:.2f}" for k, t in total.values())
            print(f"| {tau} | {window} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
