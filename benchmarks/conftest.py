"""Benchmark plumbing: print, after pytest-benchmark's tables, each group's ratios to its kernel."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        if not bench.stats:
            continue
        groups.setdefault(bench.group or bench.name, {})[bench.extra_info.get("impl", bench.name)] = bench.stats.median
    tr = terminalreporter
    tr.write_sep("=", "scc kernels: median time, and speed-up of the scc kernel over each alternative")
    for group, impls in sorted(groups.items()):
        ours = impls.get("scc")
        parts = [f"{name} {t * 1e3:.2f} ms" for name, t in sorted(impls.items(), key=lambda kv: kv[1])]
        tr.write_line(f"{group}: " + ", ".join(parts))
        if ours:
            for name, t in sorted(impls.items()):
                if name != "scc":
                    tr.write_line(f"    scc is {t / ours:.2f}x faster than {name}")
    memory = getattr(config, "_scc_memory", None)
    if memory:
        tr.write_sep("=", "scc kernels: peak memory")
        for line in memory:
            tr.write_line(line)
