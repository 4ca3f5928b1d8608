import os

# Kernels fill fresh outputs with NaN first (csrc/common.h), so an element a kernel forgets to
# write fails the comparisons instead of passing with stale memory. Read once, before any op runs.
os.environ.setdefault("SCC_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

# Tests import small fixture writers from each other (e.g. test_cli uses test_data_model's).
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
