"""Host-side cost of the Triton launchers (correlation, fused_match), measurable without a GPU.

On a GPU, small problems take a few microseconds of device time, so a call costs what the host spends on
it: the launcher's Python (allocations, config choice, grid) plus one Triton launch per kernel. This
script runs the launchers on CPU tensors with every Triton kernel replaced by a stub that counts launches,
and prints the Python time per call and the launches per call. The Triton launch itself (its argument
binder and the driver call) is not included: it needs a GPU.

    python benchmarks/host_overhead.py [checkout]   # a checkout of scc to measure (default: this one)
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import types

ROOT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    # the launcher modules only, without the compiled extension (scc_kernels/__init__)
    pkg = types.ModuleType("scc_kernels")
    pkg.__path__ = [os.path.join(ROOT, "scc_kernels")]
    sys.modules["scc_kernels"] = pkg
    import torch

    corr = importlib.import_module("scc_kernels.triton.correlation")
    match = importlib.import_module("scc_kernels.triton.fused_match")
    launches = [0]

    class Stub:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches[0] += 1
            return launch

    for mod in (corr, match):
        for name in dir(mod):
            if name.startswith("_") and name.endswith("_kernel"):
                setattr(mod, name, Stub())
        mod.wrap_triton = lambda kernel: kernel
    torch.set_num_threads(1)

    def bench(name, fn, n=3000):
        for _ in range(100):
            fn()
        launches[0] = 0
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        us = (time.perf_counter() - t0) / n * 1e6
        print(f"{name}: {us:.1f} us of Python per call, {launches[0] / n:g} Triton launches")

    print(f"checkout {ROOT}, torch {torch.__version__}")
    for shape in [(8, 256, 32, 32), (8, 1024, 32, 32)]:
        fs, ft = torch.randn(shape).bfloat16(), torch.randn(shape).bfloat16()
        bench(f"correlation_fwd B{shape[0]} C{shape[1]} {shape[2]}x{shape[3]} bf16", lambda: corr.correlation_fwd(fs, ft))
    fs, ft = torch.randn(8, 256, 32, 32).bfloat16(), torch.randn(8, 256, 32, 32).bfloat16()
    bench("fused_match_fwd B8 C256 32x32 bf16 window2", lambda: match.fused_match_fwd(fs, ft, 0.1, 2))


if __name__ == "__main__":
    main()
