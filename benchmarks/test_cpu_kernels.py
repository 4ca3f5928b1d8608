"""CPU kernels against the reference composites (and NC-Net's conv4d), at realistic sizes.

Run: `pytest benchmarks` (prints pytest-benchmark tables, then the speed-up ratios). Sizes follow
the kernel-library issue: B=2, C=128, 32x32 against 32x32; conv4d 1->16 and 16->1 channels on 24^4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import scc_kernels as K
from scc_kernels import reference as R

B, C, H, W = 2, 128, 32, 32
ROUNDS = dict(rounds=5, iterations=1, warmup_rounds=1)
SLOW = dict(rounds=2, iterations=1, warmup_rounds=0)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(os.cpu_count() or 1)


def run(benchmark, group, impl, fn, slow=False):
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    with torch.no_grad():
        benchmark.pedantic(fn, **(SLOW if slow else ROUNDS))


def features():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g)


def corr_volume():
    fs, ft = features()
    return K.correlation(fs, ft) + 1e-3


@pytest.mark.parametrize("impl", ["scc", "reference"])
def test_correlation(benchmark, impl):
    fs, ft = features()
    fn = K.correlation if impl == "scc" else R.correlation
    run(benchmark, "correlation B2 C128 32x32", impl, lambda: fn(fs, ft))


@pytest.mark.parametrize("impl", ["scc", "reference"])
def test_mutual_nn(benchmark, impl):
    c = corr_volume()
    fn = K.mutual_nn if impl == "scc" else R.mutual_nn
    run(benchmark, "mutual_nn B2 32x32", impl, lambda: fn(c))


@pytest.mark.parametrize("impl", ["scc", "reference"])
@pytest.mark.parametrize("mode,radius,sigma", [("local", 1, 0.5), ("global", 0, 1.0)])
def test_masked_vote(benchmark, impl, mode, radius, sigma):
    c = corr_volume()
    ms, mt = torch.rand(B, H, W), torch.rand(B, H, W)
    fn = K.masked_vote if impl == "scc" else R.masked_vote
    run(benchmark, f"masked_vote {mode} r{radius} sigma{sigma} B2 32x32", impl,
        lambda: fn(c, ms, mt, mode, radius, sigma), slow=impl == "reference")


@pytest.mark.parametrize("impl", ["scc", "reference"])
def test_calibrate(benchmark, impl):
    c = corr_volume()
    g = torch.rand_like(c)
    fn = K.calibrate if impl == "scc" else R.calibrate
    z = torch.tensor(0.0)
    run(benchmark, "calibrate B2 32x32", impl, lambda: fn(c, g, 1.0, 0.05, z))


@pytest.mark.parametrize("impl", ["scc", "reference"])
def test_soft_argmax(benchmark, impl):
    P = torch.softmax(corr_volume().reshape(B, H * W, H * W) / 0.05, dim=2)
    fn = K.soft_argmax if impl == "scc" else R.soft_argmax
    run(benchmark, "soft_argmax window2 B2 32x32", impl, lambda: fn(P, H, W, 2))


@pytest.mark.parametrize("impl", ["scc", "reference"])
def test_fused_match(benchmark, impl):
    fs, ft = features()
    fn = K.fused_match if impl == "scc" else R.fused_match
    run(benchmark, "fused_match window2 B2 C128 32x32", impl, lambda: fn(fs, ft, 0.05, 2))


@pytest.mark.parametrize("impl", ["scc", "reference"])
def test_fused_match_backward(benchmark, impl):
    """Forward and backward (what training through the matcher costs)."""
    fs, ft = (x.requires_grad_() for x in features())
    fn = K.fused_match if impl == "scc" else R.fused_match

    def step():
        with torch.enable_grad():
            flow, conf, _ = fn(fs, ft, 0.05, 2)
            torch.autograd.grad(flow.sum() + conf.sum(), (fs, ft))

    run(benchmark, "fused_match forward+backward window2 B2 C128 32x32", impl, step)


def ncnet_conv4d(x, w, b):
    """NC-Net's Conv4d: a Python loop of conv3d over the first spatial axis (the baseline)."""
    _, _, h1, _, _, _ = x.shape
    k = w.shape[2]
    p = k // 2
    xs = F.pad(x, (0, 0, 0, 0, 0, 0, p, p))
    outs = []
    for i in range(h1):
        o = None
        for q in range(k):
            r = F.conv3d(xs[:, :, i + q], w[:, :, q], bias=b if q == 0 else None, padding=p)
            o = r if o is None else o + r
        outs.append(o)
    return torch.stack(outs, 2)


@pytest.mark.parametrize("impl", ["scc", "ncnet-conv3d-loop", "reference"])
@pytest.mark.parametrize("cin,cout", [(1, 16), (16, 1)])
def test_conv4d(benchmark, impl, cin, cout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, cin, 24, 24, 24, 24, generator=g)
    w = torch.randn(cout, cin, 3, 3, 3, 3, generator=g)
    b = torch.randn(cout, generator=g)
    fn = {"scc": K.conv4d, "ncnet-conv3d-loop": ncnet_conv4d, "reference": R.conv4d}[impl]
    run(benchmark, f"conv4d {cin}->{cout} B2 24^4 k3", impl, lambda: fn(x, w, b), slow=impl == "reference")


_MEMORY_SCRIPT = r"""
import json, resource, sys, torch
import scc_kernels as K
from scc_kernels import reference as R
impl, b, c, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
fs, ft = torch.randn(b, c, h, h, generator=g), torch.randn(b, c, h, h, generator=g)
fn = K.fused_match if impl == "scc" else R.fused_match
with torch.no_grad():
    fn(fs[:, :, :2, :2], ft[:, :, :2, :2], 0.05, 2)  # warm up lazy initialisation
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(fs, ft, 0.05, 2)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_increase_kib": after - before}))
"""


def test_fused_match_peak_memory(request):
    """Peak resident memory added by one call at 64x64 (B=2, C=128), each in a fresh process."""
    peaks = {}
    for impl in ("scc", "reference"):
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, impl, "2", "128", "64"], capture_output=True,
                             text=True, check=True)
        peaks[impl] = json.loads(out.stdout.strip().splitlines()[-1])["peak_increase_kib"]
    # Below 1 MiB the allocator's reuse of freed memory hides the increase: count it as 1 MiB.
    ratio = peaks["reference"] / max(peaks["scc"], 1024)
    line = (f"fused_match B2 C128 64x64: peak RSS increase scc {peaks['scc'] / 1024:.1f} MiB, reference "
            f"{peaks['reference'] / 1024:.1f} MiB (one volume is {B * 64**4 * 4 / 2**20:.0f} MiB) "
            f"-> at least {ratio:.0f}x less peak memory")
    request.config._scc_memory = getattr(request.config, "_scc_memory", []) + [line]
    assert ratio >= 8, line
