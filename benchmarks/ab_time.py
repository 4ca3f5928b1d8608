"""A/B timing of the CPU kernels of two (or more) builds on a noisy machine: each build is a repository
checkout with its extension built in place (`python setup.py build_ext --inplace`); the builds run in
turns, each in its own process, so a slow spell of the machine hits all of them.

    python benchmarks/ab_time.py /path/to/old/checkout . --rounds 3

Prints, per round and build, the median of --calls calls of each op (B=2, 32x32 volumes, fp32, 2 threads).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[1])
import scc_kernels as K
torch.set_num_threads(2)
torch.manual_seed(0)
c = torch.rand(2, 32, 32, 32, 32)
P = torch.softmax(torch.randn(2, 1024, 1024), -1)
ms, mt = torch.rand(2, 32, 32), torch.rand(2, 32, 32)
ops = {"mutual_nn": lambda: K.mutual_nn(c, 1e-5), "soft_argmax": lambda: K.soft_argmax(P, 32, 32, 2),
       "masked_vote global": lambda: K.masked_vote(c, ms, mt, "global", 0, 1.0, 1e-6)}
out = []
with K.use_backend("cpu"):
    for name, fn in ops.items():
        for _ in range(3):
            fn()
        ts = []
        for _ in range(int(sys.argv[2])):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        out.append(f"{name} {sorted(ts)[len(ts) // 2] * 1e3:.2f} ms")
print(", ".join(out))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+", help="repository checkouts with scc_kernels built in place")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()
    for r in range(args.rounds):
        for build in args.builds:
            res = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(build), str(args.calls)],
                                 capture_output=True, text=True, check=True, cwd="/")
            print(f"round {r + 1} {build}: {res.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
