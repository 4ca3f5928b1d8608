"""The CUDA sources compile for sm_80/sm_90 with no register spills, and the built extension carries them.

CPU machines cannot run CUDA kernels, but they can compile them: with SCC_CHECK_CUDA_BUILD=1 (set by
CI) each csrc/cuda/*.cu is compiled to a cubin with `ptxas -v`, whose report must show no spill
stores or loads, and the installed extension must have registered its CUDA kernels.
"""

import glob
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_HOME = cpp_extension.CUDA_HOME or "/usr/local/cuda"
NVCC = os.path.join(CUDA_HOME, "bin", "nvcc") if os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) else shutil.which("nvcc")

pytestmark = [
    pytest.mark.skipif(os.environ.get("SCC_CHECK_CUDA_BUILD") != "1", reason="set SCC_CHECK_CUDA_BUILD=1 to compile the CUDA sources (CI does)"),
    pytest.mark.skipif(NVCC is None or torch.version.cuda is None, reason="needs nvcc and a CUDA build of torch"),
]

SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


def _flags(arch):
    inc = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{os.path.join(ROOT, 'csrc')}"]
    for sp in __import__("site").getsitepackages():
        inc += [f"-I{p}" for p in glob.glob(os.path.join(sp, "nvidia", "cu*", "include"))]
    abi = int(torch.compiled_with_cxx11_abi())
    return ["-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++20", "--expt-relaxed-constexpr", "-Xptxas", "-v",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "-DSCC_WITH_CUDA=1", *inc]


def _compile(src, arch, out_dir):
    out = os.path.join(out_dir, os.path.basename(src) + f".sm{arch}.cubin")
    proc = subprocess.run([NVCC, *_flags(arch), src, "-o", out], capture_output=True, text=True)
    return src, arch, proc.returncode, proc.stdout + proc.stderr


def test_cuda_sources_compile_without_spills(tmp_path):
    assert SOURCES, "no CUDA sources found"
    jobs = [(s, a) for s in SOURCES for a in (80, 90)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda j: _compile(*j, str(tmp_path)), jobs))
    report = os.path.join(ROOT, "build", "ptxas_report.txt")
    os.makedirs(os.path.dirname(report), exist_ok=True)
    with open(report, "w") as f:
        for src, arch, rc, log in results:
            f.write(f"=== {os.path.basename(src)} sm_{arch} (rc={rc})\n{log}\n")
    failures = [f"{os.path.basename(s)} sm_{a}:\n{log[-2000:]}" for s, a, rc, log in results if rc != 0]
    assert not failures, "nvcc failed:\n" + "\n".join(failures)
    spills = [(os.path.basename(s), a, m.group(0)) for s, a, _, log in results
              for m in re.finditer(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
              if m.group(1) != "0" or m.group(2) != "0"]
    assert not spills, f"register spills (full report in {report}): {spills}"


def test_extension_has_cuda_kernels():
    import scc_kernels  # noqa: F401

    for op in ("mutual_nn", "conv4d", "masked_vote", "calibrate", "soft_argmax", "correlation", "fused_match"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"scc::{op}", "CUDA"), f"scc::{op} has no CUDA kernel"


def test_extension_embeds_sass_and_ptx():
    # SASS for sm_80 (A100; also runs on sm_86 / sm_89) and sm_90, and sm_90's PTX for the GPUs after them,
    # which a build without it refused ("no kernel image is available")
    import scc_kernels
    triton = pytest.importorskip("triton")

    cuobjdump = triton.knobs.nvidia.cuobjdump.path  # the CUDA toolkit here has none
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        pytest.skip(f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} overrides the default archs")
    so = scc_kernels._C.__file__
    elf = subprocess.run([cuobjdump, "--list-elf", so], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([cuobjdump, "--list-ptx", so], capture_output=True, text=True, check=True).stdout
    assert {int(a) for a in re.findall(r"\.sm_(\d+)\.cubin", elf)} == {80, 90}, elf
    assert {int(a) for a in re.findall(r"\.sm_(\d+)\.ptx", ptx)} == {90}, ptx
