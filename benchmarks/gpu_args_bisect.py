"""Bad-input calls of the CUDA ops, each in its own process, for a lent GPU machine.

On an H100 build `torch.ops.scc.soft_argmax` with `ht * wt` not matching `P` crashed the process
(SIGSEGV inside the dispatcher's redispatch) where the same check raises ValueError on CPU, and where
the other CUDA ops' checks raise. Each case below isolates one layer (autograd wrapper, redispatch to
the CUDA kernel, the check itself, the tensors reused after an earlier error); a case that crashes is
run again under cuda-gdb (the device image has it; it debugs host code too) for a native backtrace.

    python3 benchmarks/gpu_args_bisect.py --out OUT     # writes OUT/args_bisect.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap

PRELUDE = """
import torch, scc_kernels
OPS = torch.ops.scc
D = torch.device("{device}")
KS = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
def expect(fn, word):
    try:
        fn()
    except ValueError as e:
        assert word in str(e), f"ValueError without {word!r}: {e}"
        print("RAISED", str(e).splitlines()[0][:160])
        return
    print("NO ERROR")
"""

CASES = {
    # The failing test's sequence: calibrate raises on `c`, then soft_argmax takes the same `c`.
    "test sequence (calibrate, then soft_argmax on the same tensor)": """
c = torch.rand(2, 3, 4, device=D)
expect(lambda: OPS.calibrate(c, torch.rand(2, 3, 5, device=D), 1.0, 0.1, torch.tensor(0.0, device=D), 1e-6), "g")
expect(lambda: OPS.soft_argmax(c, 2, 3, -1, 1.0), "wt")
""",
    "soft_argmax alone, 3-D P, ht*wt wrong": """
expect(lambda: OPS.soft_argmax(torch.rand(2, 3, 4, device=D), 2, 3, -1, 1.0), "wt")
""",
    "soft_argmax alone, 5-D P, ht*wt wrong": """
expect(lambda: OPS.soft_argmax(torch.rand(1, 2, 2, 2, 2, device=D), 2, 3, -1, 1.0), "wt")
""",
    "soft_argmax, window < -1 (check after the ht*wt one)": """
expect(lambda: OPS.soft_argmax(torch.rand(2, 3, 4, device=D), 2, 2, -5, 1.0), "window")
""",
    "soft_argmax, redispatch to the CUDA kernel (no autograd wrapper)": """
expect(lambda: OPS.soft_argmax.default.redispatch(KS, torch.rand(2, 3, 4, device=D), 2, 3, -1, 1.0), "wt")
""",
    "soft_argmax_backward, ht*wt wrong (same check, no autograd wrapper)": """
P = torch.rand(1, 4, 4, device=D)
expect(lambda: OPS.soft_argmax_backward(torch.rand(1, 4, 2, device=D), torch.rand(1, 4, device=D), P,
                                        torch.rand(1, 4, 2, device=D), 2, 3, -1, 1.0), "wt")
""",
    "soft_argmax, valid call (sanity)": """
f, c = OPS.soft_argmax(torch.rand(2, 3, 4, device=D), 2, 2, -1, 1.0); torch.cuda.synchronize()
print("OK", tuple(f.shape), tuple(c.shape))
""",
    "calibrate, wrong g (raised in run 2)": """
c = torch.rand(2, 3, 4, device=D)
expect(lambda: OPS.calibrate(c, torch.rand(2, 3, 5, device=D), 1.0, 0.1, torch.tensor(0.0, device=D), 1e-6), "g")
""",
    "masked_vote, rank-3 corr (message with an integer; raised in run 2)": """
m = torch.rand(1, 2, 2, device=D)
expect(lambda: OPS.masked_vote(torch.rand(2, 2, 2, device=D), m, m, "local", 1, 1.0, 1e-6), "corr")
""",
}


def source(code: str, device: str) -> str:
    return PRELUDE.replace("{device}", device) + textwrap.dedent(code)


def run_case(code: str, timeout: int = 120) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def backtrace(code: str) -> str:
    gdb = shutil.which("cuda-gdb") or shutil.which("gdb")
    if gdb is None:
        return "(no cuda-gdb/gdb on this machine)"
    path = os.path.abspath("_args_case.py")
    with open(path, "w") as f:
        f.write(code)
    try:
        proc = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 40", "--args", sys.executable, path],
                              capture_output=True, text=True, timeout=60)
        lines = (proc.stdout + proc.stderr).splitlines()
        keep = [ln for ln in lines if ln.startswith("#") or "SIGSEGV" in ln or "signal" in ln.lower()]
        return "\n".join(keep[-60:]) or "\n".join(lines[-60:])
    except subprocess.TimeoutExpired:
        return "(debugger timed out)"
    finally:
        os.remove(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (the CUDA-key cases fail)")
    ap.add_argument("--only", default="", help="comma-separated substrings: run the cases whose names hold one")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    report = ["# Bad-input calls of the CUDA ops, one process each", ""]
    wanted = [w for w in args.only.split(",") if w]
    for name, code in CASES.items():
        if wanted and not any(w in name for w in wanted):
            continue
        code = source(code, args.device)
        rc, log = run_case(code)
        verdict = "crashed (signal %d)" % -rc if rc < 0 else ("ok" if rc == 0 else f"exit {rc}")
        print(f"{verdict:>22}  {name}", flush=True)
        report += [f"## {name}: {verdict}", "", "```", log[-3000:], "```", ""]
        if rc < 0:
            report += ["native backtrace:", "", "```", backtrace(code), "```", ""]
        with open(os.path.join(args.out, "args_bisect.md"), "w") as f:  # after each case: a timeout keeps the rest
            f.write("\n".join(report))


if __name__ == "__main__":
    main()
