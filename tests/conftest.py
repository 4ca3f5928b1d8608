import os

# Kernels fill fresh outputs with NaN first (csrc/common.h), so an element a kernel forgets to
# write fails the comparisons instead of passing with stale memory. Read once, before any op runs.
os.environ.setdefault("SCC_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# tests/test_cpu_memcheck.py: the CPU kernels built with AddressSanitizer stand in for scc_kernels._C (the
# library registers the same torch.ops.scc; the package's `from . import _C` then finds it loaded).
if os.environ.get("SCC_KERNELS_LIB"):
    import sys as _sys
    import types as _types

    torch.ops.load_library(os.environ["SCC_KERNELS_LIB"])
    _sys.modules["scc_kernels._C"] = _types.ModuleType("scc_kernels._C")


def pytest_report_header(config):
    lines = []
    if os.environ.get("SCC_KERNELS_LIB"):
        lines.append(f"the kernels of SCC_KERNELS_LIB: {os.environ['SCC_KERNELS_LIB']}")
    if os.environ.get("SCC_CUDA_EMU_ASAN") == "1":  # tests/cuda_emu refuses this without the runtime loaded
        lines.append("cuda_emu: AddressSanitizer build")
    return lines


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

# Tests import small fixture writers from each other (e.g. test_cli uses test_data_model's).
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
