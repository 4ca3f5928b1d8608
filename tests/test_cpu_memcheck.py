"""The CPU kernels (csrc/ops.cpp, csrc/cpu/*.cpp) stay inside their tensors: tests/test_ops.py and
tests/test_bad_inputs.py run in a child process against the kernels built with AddressSanitizer (the
extension's own sources, at -O1 with -fsanitize=address), loaded in place of scc_kernels._C (see
conftest.py). A read or write past either end of an allocation or into freed memory stops the run with a
report naming the kernel (an index far enough off to land in another live allocation goes unseen)."""

from __future__ import annotations

from pathlib import Path

import pytest

import cuda_emu  # the sanitizer's runtime, environment and child processes

CSRC = Path(__file__).resolve().parent.parent / "csrc"

pytestmark = pytest.mark.skipif(cuda_emu.asan_runtime() is None, reason="the C++ compiler has no AddressSanitizer runtime")


def build() -> str:
    """The instrumented library (rebuilt when a source changes): TORCH_LIBRARY(scc) with the CPU kernels."""
    from torch.utils import cpp_extension

    sources = [CSRC / "ops.cpp", *sorted(CSRC.glob("cpu/*.cpp"))]
    inputs = sorted([*sources, *CSRC.glob("*.h"), *CSRC.glob("cpu/*.inc"), *CSRC.glob("cpu/*.h")])
    build_dir = cuda_emu.cache_dir("scc_cpu_asan", [p.name.encode() + p.read_bytes() for p in inputs])
    cpp_extension.load(
        name="scc_cpu_asan", sources=[str(s) for s in sources], build_directory=str(build_dir),
        is_python_module=False, verbose=False, extra_include_paths=[str(CSRC)],
        extra_cflags=["-O1", "-fopenmp", "-fvisibility=hidden", *cuda_emu.ASAN_FLAGS],
        extra_ldflags=["-fopenmp", "-fsanitize=address"],
    )
    return str(build_dir / "scc_cpu_asan.so")


def test_cpu_kernels_stay_in_bounds():
    # built in a child too: loading the library registers torch.ops.scc, which this process has already
    lib = cuda_emu.run_child(["-c", "import test_cpu_memcheck as m; print(m.build())"], asan=True, timeout=1800)
    assert lib.returncode == 0, lib.stderr[-4000:]
    # --capture=sys: the sanitizer writes to file descriptor 2, which pytest's default capture would swallow
    for proc in cuda_emu.run_sharded(["-x", "-p", "no:cacheprovider", "--capture=sys",
                                      "tests/test_ops.py", "tests/test_bad_inputs.py"],
                                     asan=True, env={"SCC_KERNELS_LIB": lib.stdout.strip().splitlines()[-1]}):
        out = proc.stdout + proc.stderr
        assert "ERROR: AddressSanitizer" not in out, out[-6000:]
        assert proc.returncode == 0 and " passed" in proc.stdout, out[-6000:]
        assert "the kernels of SCC_KERNELS_LIB" in proc.stdout, out[-3000:]  # the instrumented build ran
