"""The scripts a lent GPU machine runs once (benchmarks/gpu_check.sh and the Python it calls) at least parse and
import here: a typo found on the device costs a session's only GPU run."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], check=True)


@pytest.mark.parametrize("script", ["bench_gpu.py", "fused_match_precision.py", "gpu_args_bisect.py"])
def test_gpu_benchmark_scripts_import(script):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr[-3000:]
