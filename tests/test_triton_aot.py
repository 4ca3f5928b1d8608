"""Ahead-of-time compilation of every shipped Triton kernel config for sm_90 (H100), without a GPU.

Runs in a separate process (with TRITON_INTERPRET unset, so the kernels are real JIT functions) that
compiles each kernel for each dtype and constexpr variant, and reports registers, spills (local memory /
stack in the cubin, read with the cuobjdump that ships with Triton) and shared memory. Fails on any spill
or on shared memory above the H100's 227 KB per block. The configs a GPU with less shared memory runs
(correlation.small_smem: A100, and the 99 KiB of sm_86 / sm_89 / sm_120) are compiled for sm_80 and held to
99 KiB (a launch over it fails); their few spills there are printed, not failed (the configs are tuned for
sm_90). Run as a script to print the table (`--sm80` for the second set; `--sm80 --h100-configs`: the H100's
configs compiled for sm_80, which is why the second set exists).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import cuda_emu  # cores()

SMEM_LIMIT = 227 * 1024
SMEM_LIMIT_SMALL = 99 * 1024  # sm_86 / sm_89 / sm_120; an A100 has 163 KiB
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# Integer and float scalar arguments of the kernels; every other non-constexpr argument is a pointer.
FLOAT_ARGS = {"eps", "scale", "inv_tau"}
# The JIT specialises integer arguments that are multiples of 16 (sizes and strides of typical maps, e.g.
# 64x64 with C = 256), which lets loads vectorise and the K-loops pipeline through shared memory: a
# different compile from the one for odd sizes. Both are checked; the window radius stays unaligned, and the
# feature strides are always aligned (the launchers pad the rows of fs and ft to a multiple of 16).
UNALIGNED_ARGS = {"window"}
ALIGNED_ARGS = {"stride_sb", "stride_sc", "stride_tb", "stride_tc"}


def _stub_package():
    """Makes `scc_kernels` importable without running its __init__ (which loads the compiled C++ extension
    and registers the ops): the Triton kernels need neither, and a broken C++ build must not hide them."""
    import types

    pkg = types.ModuleType("scc_kernels")
    pkg.__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scc_kernels")]
    sys.modules["scc_kernels"] = pkg


def _variants(small_smem: bool = False):
    """(name, kernel, constexprs and launch options, pointer dtypes) for every kernel, dtype, flag setting
    and shipped config; fused_match kernels in both channel variants (resident / sliced), with the block
    sizes their launchers derive. small_smem: the configs a device with less shared memory than an H100 runs
    (no TMA kernel: sm_90 only, and not a default)."""
    import torch

    from scc_kernels.triton import correlation as corr
    from scc_kernels.triton import fused_match as fm

    def ptr_types(dt):
        # Feature tensors and their gradients / the correlation output use the input dtype.
        return {"x_ptr": dt, "fs_ptr": dt, "ft_ptr": dt, "out_ptr": dt, "grad_ptr": dt, "gfs_ptr": dt,
                "gft_ptr": dt, "arg_ptr": "i64"}

    def channels(cfg):
        # C at the resident limit (whole channel dimension in one tile) and above it (sliced).
        return ([cfg["RESIDENT_C"]] if cfg["RESIDENT_C"] else []) + [cfg["RESIDENT_C"] + 1]

    out = []
    for tdt in (torch.float32, torch.float16, torch.bfloat16):
        dt = DTYPES[str(tdt).split(".")[1]]
        out.append(("norm", corr._norm_kernel, corr.NORM_CONFIG, ptr_types(dt)))
        for flags in ({"NORMALIZE": n, "RELU": r} for n in (True, False) for r in (True, False)):
            for cfg in corr.FWD_CONFIGS[tdt]:
                out.append(("corr_fwd", corr._corr_fwd_kernel, {**cfg, **flags, "NORMS_IN_LOOP": False},
                            ptr_types(dt)))
            if flags["NORMALIZE"]:  # small problems: the last config, norms in the K-loop
                out.append(("corr_fwd", corr._corr_fwd_kernel,
                            {**corr.FWD_CONFIGS[tdt][-1], **flags, "NORMS_IN_LOOP": True}, ptr_types(dt)))
            out.append(("corr_bwd", corr._corr_bwd_kernel, {**corr.BWD_CONFIGS[tdt], **flags}, ptr_types(dt)))
            if tdt != torch.float32 and not small_smem:  # the persistent TMA kernel (16-bit), an H100's SMs
                out.append(("corr_fwd_tma", corr._corr_fwd_tma_kernel, {**corr.TMA_CONFIG, **flags, "NUM_SMS": 132},
                            {**ptr_types(dt), **{k: f"tensordesc<{dt}[{','.join(map(str, v))}]>"
                                                 for k, v in corr.tma_block_shapes(corr.TMA_CONFIG).items()}}))
        fwd, bwd = fm.FWD_CONFIGS[tdt], fm.BWD_CONFIGS[tdt]
        if small_smem:  # what fm.device_config gives on such a device
            fwd, bwd = {**fwd, **fm.SMALL_SMEM}, {**bwd, **fm.SMALL_SMEM}
        for windowed in (False, True):
            flags = {"WINDOWED": windowed}
            for c in channels(fwd):
                cfg = fm._launch_cfg(fwd, c, ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                out.append(("match_fwd", fm._fused_match_fwd_kernel, {**cfg, **flags}, ptr_types(dt)))
                out.append(("match_rowstats", fm._row_stats_kernel, {**cfg, **flags}, ptr_types(dt)))
            for c in channels(bwd):
                fs_cfg, ft_cfg = fm._grad_cfgs(bwd, c)
                out.append(("match_grad_fs", fm._grad_fs_kernel, {**fs_cfg, **flags}, ptr_types(dt)))
                out.append(("match_grad_ft", fm._grad_ft_kernel, {**ft_cfg, **flags}, ptr_types(dt)))
    return out


def _res_usage(cubin: bytes) -> dict:
    import tempfile

    import triton

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-res-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", text))
    return {k.lower(): int(v) for k, v in fields.items()}


def compile_all(float_type: str = "fp32", small_smem: bool = False, arch: int = 90) -> list[dict]:
    """Every variant, aligned and not, with the float scalars typed float_type; with "fp64" (how torch 2.11's
    inductor passes Python floats to a user's Triton kernel), one variant per kernel, not aligned. The H100's
    configs or (small_smem) those of GPUs with less shared memory, for sm_`arch` (no TMA kernel below sm_90)."""
    import triton
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    results = []
    variants = [(v, a) for v in _variants(small_smem) for a in (False, True) if arch >= 90 or v[0] != "corr_fwd_tma"]
    if float_type != "fp32":
        variants = list({v[0]: (v, False) for v, _ in reversed(variants)}.values())
    for (name, kernel, cfg, ptrs), aligned in variants:
        constexprs = {k: v for k, v in cfg.items() if k in kernel.arg_names}
        flags = {k: v for k, v in constexprs.items() if not k.startswith("BLOCK") and k != "GROUP_M"}
        signature, attrs = {}, {}
        for i, arg in enumerate(kernel.arg_names):
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg.endswith("_desc"):
                signature[arg] = ptrs[arg]
            elif arg.endswith("_ptr"):
                signature[arg] = "*" + ptrs.get(arg, "fp32")
                attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
            elif arg in FLOAT_ARGS:
                signature[arg] = float_type
            else:
                signature[arg] = "i32"
                if (aligned and arg not in UNALIGNED_ARGS) or arg in ALIGNED_ARGS:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=target,
                                  options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
        usage = _res_usage(compiled.asm["cubin"])
        results.append({
            "kernel": name, "dtype": ptrs["fs_ptr"], "flags": flags, "aligned": aligned,
            "blocks": {k: v for k, v in constexprs.items() if k.startswith("BLOCK") or k == "GROUP_M"},
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "regs": usage["reg"], "spill": usage["local"] + usage["stack"], "shared": compiled.metadata.shared,
        })
    return results


def _compile_in_child(*flags: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--json", *flags], env=env, cwd=root,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def children():
    """{flags: a future of _compile_in_child(flags)}: the three compile runs side by side, the slowest first
    (each is one single-threaded process), as tests/test_triton_interpret.py runs its children."""
    with ThreadPoolExecutor(max_workers=cuda_emu.cores()) as pool:
        yield {f: pool.submit(_compile_in_child, *f.split()) for f in ("", "--sm80", "--fp64-scalars")}
        pool.shutdown(cancel_futures=True)


@pytest.fixture(scope="module")
def aot_results(children):
    return children[""].result()


def test_aot_compiles_with_fp64_scalars(children):
    """torch.compile on torch 2.11 (the GPU machine's) hands the kernels' float arguments (eps, scale, inv_tau)
    over as fp64: unless the kernels cast them, their logits became fp64 and fused_match's loop-carried running
    maximum changed type (a CompilationError; GPU run 3)."""
    res = children["--fp64-scalars"].result()
    assert {r["kernel"] for r in res} == {"norm", "corr_fwd", "corr_bwd", "corr_fwd_tma", "match_fwd",
                                          "match_rowstats", "match_grad_fs", "match_grad_ft"}


def test_aot_compiles_every_kernel(aot_results):
    names = {r["kernel"] for r in aot_results}
    assert names == {"norm", "corr_fwd", "corr_bwd", "corr_fwd_tma", "match_fwd", "match_rowstats",
                     "match_grad_fs", "match_grad_ft"}
    assert {r["dtype"] for r in aot_results} == set(DTYPES.values())


def test_aot_no_spills(aot_results):
    bad = [r for r in aot_results if r["spill"] > 0]
    assert not bad, bad


def test_aot_shared_memory(aot_results):
    bad = [r for r in aot_results if r["shared"] > SMEM_LIMIT]
    assert not bad, bad


def test_aot_small_smem_devices_fit(children):
    # The resident fused_match kernels needed up to 194 KiB at sm_80: Triton refused them on an A100 and on
    # sm_86 / sm_89 (fused_match.SMALL_SMEM). What such a device runs must fit 99 KiB.
    res = children["--sm80"].result()
    assert {r["kernel"] for r in res} == {"norm", "corr_fwd", "corr_bwd", "match_fwd", "match_rowstats",
                                          "match_grad_fs", "match_grad_ft"}
    assert not any(r["flags"].get("RESIDENT") for r in res)
    bad = [r for r in res if r["shared"] > SMEM_LIMIT_SMALL]
    assert not bad, bad
    spills = sorted({(r["kernel"], r["dtype"], r["spill"]) for r in res if r["spill"]})
    print(f"sm_80 spills (bytes; not failed: the configs are tuned for sm_90): {spills}")


if __name__ == "__main__":
    _stub_package()
    # --sm80: what a GPU with less shared memory runs, for sm_80; with --h100-configs the H100's configs instead
    # (how the resident fused_match kernels' 129-194 KiB at sm_80 were found)
    sm80 = "--sm80" in sys.argv
    res = compile_all("fp64" if "--fp64-scalars" in sys.argv else "fp32",
                      small_smem=sm80 and "--h100-configs" not in sys.argv, arch=80 if sm80 else 90)
    if "--json" in sys.argv:
        print(json.dumps(res))
    else:
        for r in res:
            print(f"{r['kernel']:15s} {r['dtype']:5s} {'al' if r['aligned'] else 'un'} {str(r['flags']):40s} "
                  f"{r['blocks']} w{r['num_warps']} "
                  f"s{r['num_stages']}: regs {r['regs']}, spill {r['spill']} B, shared {r['shared']} B")
