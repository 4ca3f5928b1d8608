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


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="I/N",
                     help="run every N-th collected test from the I-th (0-based): the memory checks split their "
                          "single-threaded child runs this way (cuda_emu.run_sharded)")


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected theirs
def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if not shard:
        return
    i, n = (int(v) for v in shard.split("/"))
    if not 0 <= i < n:
        raise pytest.UsageError(f"--shard: expected I/N with 0 <= I < N, got {shard}")
    config.hook.pytest_deselected(items=[t for k, t in enumerate(items) if k % n != i])
    items[:] = items[i::n]  # round robin: each shard gets its share of every parametrised test


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
