"""The CUDA kernels (csrc/cuda/*.cu) stay inside their tensors and shared memory: tests/test_cuda_ops.py run
on the emulator built with AddressSanitizer, in a child process (the sanitizer's runtime must be preloaded
into Python). A read or write past either end of an allocation (a tensor, a block's dynamic or static
shared memory, a thread's stack) or into freed memory stops the run with a report naming the launch, as
compute-sanitizer's memcheck would on a GPU; tests/test_cuda_emu.py::test_asan_finds_an_overrun shows
that it does. What it cannot see: an index so far off that it lands inside another live allocation, or a
wrong index inside the right one (the value tests see those)."""

from __future__ import annotations

import pytest

import cuda_emu
import scc_kernels  # noqa: F401  (the extension: does it have CUDA kernels)

pytestmark = [
    pytest.mark.skipif(cuda_emu.enabled() is not None, reason=f"the CUDA emulator is off ({cuda_emu.enabled()})"),
    pytest.mark.skipif(cuda_emu.real_cuda_kernels(),
                       reason="a GPU runs tests/test_cuda_ops.py on the real kernels (use compute-sanitizer)"),
    pytest.mark.skipif(cuda_emu.asan_runtime() is None, reason="the C++ compiler has no AddressSanitizer runtime"),
]


def test_cuda_kernels_stay_in_bounds():
    # bf16 left out: the kernels treat it as f16 (same element size, same vector widths and staging), and
    # the instrumented run costs minutes. --capture=sys: the sanitizer writes its report to file
    # descriptor 2, which pytest's default capture would swallow with the process.
    build = cuda_emu.run_child(["-c", "import cuda_emu; cuda_emu.load(asan=True)"], asan=True)
    assert build.returncode == 0, build.stderr[-4000:]
    for proc in cuda_emu.run_sharded(["-x", "-p", "no:cacheprovider", "--capture=sys", "-k", "not bf16",
                                      "tests/test_cuda_ops.py"], asan=True):
        out = proc.stdout + proc.stderr
        assert "ERROR: AddressSanitizer" not in out, out[-6000:]
        assert proc.returncode == 0 and " passed" in proc.stdout, out[-6000:]
        assert "cuda_emu: AddressSanitizer build" in proc.stdout, out[-3000:]  # the instrumented build ran
