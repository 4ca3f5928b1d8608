"""`--shard I/N` (tests/conftest.py), which the memory checks use to split their child runs
(cuda_emu.run_sharded): the shards are disjoint, together they are the whole selection, -k applies first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# One child (a fresh pytest session per collection, torch imported once): the collected test ids of each.
_CHILD = """import json, sys, pytest
class Ids:
    def pytest_collection_finish(self, session):
        self.ids = [item.nodeid for item in session.items]
out = []
for args in json.loads(sys.argv[1]):
    ids = Ids()
    rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_losses.py", *args], plugins=[ids])
    out.append(ids.ids if rc == 0 else rc)
print(json.dumps(out))
"""


def test_shards_partition_the_selection():
    runs = [[], ["-k", "not pseudo_labels"]] + [["-k", "not pseudo_labels", "--shard", f"{i}/{n}"]
                                                 for n in (2, 3) for i in range(n)] + [["--shard", "2/2"]]
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(runs)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    full, whole, *shards, bad = json.loads(proc.stdout.strip().splitlines()[-1])
    assert bad == pytest.ExitCode.USAGE_ERROR  # shard 2 of 2 does not exist
    assert 3 < len(whole) < len(full) and not any("pseudo_labels" in t for t in whole)
    for n, parts in ((2, shards[:2]), (3, shards[2:])):
        assert sorted(sum(parts, [])) == sorted(whole), n
        # round robin over what -k kept (sharding before -k gives other shards at n = 3)
        assert parts == [whole[i::n] for i in range(n)], n

