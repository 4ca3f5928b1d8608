"""The compiled extension must use the process's libstdc++ (the one torch loads), not carry a copy of its own.

GPU run 3 (H100 machine, its /opt/gcc toolchain, 2026-11-27): every CUDA argument check whose message formats an
integer crashed the process (SIGSEGV) instead of raising ValueError. cuda-gdb placed the crash in
std::ostream::_M_insert<long> *defined inside scc_kernels/_C.so*: that toolchain linked a static copy of
libstdc++'s stream code into the extension, whose locale state is not the process's (benchmarks/gpu_args_bisect.py;
docs/performance.md, "Known misses (GPU)"). A normal build imports those functions from libstdc++.so.
"""

import shutil
import subprocess

import pytest

import scc_kernels


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils) to read the extension's symbols")
def test_extension_imports_libstdcxx_streams():
    so = scc_kernels._C.__file__
    out = subprocess.run(["nm", "--defined-only", "-C", so], capture_output=True, text=True, check=True).stdout
    own = [line for line in out.splitlines() if "std::ostream::_M_insert<" in line or "basic_ostream<char" in line
           and "_M_insert<" in line]
    assert not own, (f"{so} defines libstdc++'s stream insertion itself (a static libstdc++ in the link: build with "
                     f"a compiler that links libstdc++.so, e.g. CXX=/usr/bin/g++): {own[:3]}")
