"""The CUDA kernels of csrc/cuda, built for the CPU emulator (cuda_emu.h) as torch.ops.scc_cuda_emu.*.

Most sessions and every CI run have no GPU, so the CUDA kernels' arithmetic, indexing, barriers and warp
shuffles would go unchecked between GPU sessions. Here the .cu sources are compiled by the host compiler:
launches `kernel<<<grid, block, smem, stream>>>(args)` become `emu::launch(grid, block, smem, ...)`, each
CUDA thread runs as a fiber with real barrier and shuffle semantics (cuda_emu.h), and the host code is
the real one (the same allocation, grid sizes, vector-width choices). The ops take CPU tensors. Speed,
memory coalescing and the GPU's own numerics (fast-math, FMA contraction) are what this does not check;
tests/test_cuda_ops.py runs against torch.ops.scc on a real GPU when there is one.

    from cuda_emu import load; load()   # builds once per source hash (a few minutes), then cached
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent.parent / "csrc"
NAME = "scc_cuda_emu"
OPS = ("mutual_nn", "conv4d", "masked_vote", "calibrate", "soft_argmax")  # and each one's _backward


def _split_top(s: str) -> list[str]:
    """Split at commas outside parentheses and brackets."""
    parts, depth, start = [], 0, 0
    for k, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:k].strip())
            start = k + 1
    parts.append(s[start:].strip())
    return parts


def _kernel_start(src: str, k: int) -> int:
    """Start of the kernel expression `ns::name<targs>` that ends just before offset k."""
    q = k
    if src[q - 1] == ">":  # template arguments: back to the matching '<'
        depth = 0
        while True:
            q -= 1
            depth += {">": 1, "<": -1}.get(src[q], 0)
            if depth == 0:
                break
    while q > 0 and (src[q - 1].isalnum() or src[q - 1] in "_:"):
        q -= 1
    return q


def rewrite_launches(src: str) -> str:
    """`kernel<T><<<grid, block[, smem[, stream]]>>>(args);` -> `::emu::launch(dim3(grid), dim3(block), smem,
    [&] { kernel<T>(args); });`."""
    out, pos = [], 0
    while (k := src.find("<<<", pos)) >= 0:
        start = _kernel_start(src, k)
        cfg_end = src.index(">>>", k)
        cfg = _split_top(src[k + 3:cfg_end])
        p = cfg_end + 3
        if src[p] != "(":
            raise ValueError(f"cuda_emu: cannot parse the launch at offset {k}: {src[start:p + 20]!r}")
        depth, q = 0, p
        while True:
            depth += {"(": 1, ")": -1}.get(src[q], 0)
            if depth == 0:
                break
            q += 1
        grid, block = cfg[0], cfg[1]
        smem = cfg[2] if len(cfg) > 2 else "0"
        out.append(src[pos:start])
        out.append(f'::emu::launch(::emu::dims({grid}, "grid"), ::emu::dims({block}, "block"), {smem}, '
                   f"[&]() {{ {src[start:k]}({src[p + 1:q]}); }})")
        pos = q + 1
    out.append(src[pos:])
    return "".join(out)


# (an __align__(N) of up to 64 bytes holds: the emulator's dynamic shared memory is 64-byte aligned)
_EXTERN_SMEM = re.compile(r"extern\s+__shared__\s+(?:__align__\((?:16|32|64)\)\s+)?([\w:<> ]+?)\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SMEM = re.compile(r"(?m)^(\s*)__shared__\s+([\w:<>]+)\s+([^;]+);")  # a declaration statement
_ARRAY = re.compile(r"(\w+)\s*((?:\[[^\]]+\])+)")


def _static_shared(m: re.Match) -> str:
    """`__shared__ T a[N], b[M][K];` -> per-block arena references (emu::block_shared)."""
    indent, t, out = m.group(1), m.group(2), []
    for decl in _split_top(m.group(3)):
        name, dims = _ARRAY.fullmatch(decl.strip()).groups()
        out.append(f"static char {name}_emu_site; {t}(&{name}){dims} = ::emu::block_shared<{t}{dims}>(&{name}_emu_site);")
    return indent + " ".join(out)


def translate(src: str) -> str:
    src = _EXTERN_SMEM.sub(r"\1* \2 = reinterpret_cast<\1*>(::emu::dynamic_smem());", src)
    src = _STATIC_SMEM.sub(_static_shared, src)
    return rewrite_launches(src)


def registration() -> str:
    """TORCH_LIBRARY(scc_cuda_emu) with csrc/ops.cpp's schemas of OPS, implemented by scc::cuda::*."""
    text = (CSRC / "ops.cpp").read_text()
    lib = text[text.index("TORCH_LIBRARY(scc, m)"):]
    lib = lib[:lib.index("\n}")]
    names = {op for base in OPS for op in (base, base + "_backward")}
    defs = [d for d in re.findall(r"m\.def\((.*?)\);", lib, re.S) if re.match(r'"(\w+)\(', d).group(1) in names]
    lines = ["#include <torch/library.h>", '#include "ops.h"', "", f"TORCH_LIBRARY({NAME}, m) {{"]
    lines += [f"  m.def({d});" for d in defs]
    lines += ["}", "", f"TORCH_LIBRARY_IMPL({NAME}, CPU, m) {{"]
    lines += [f'  m.impl("{op}", &scc::cuda::{op});' for op in sorted(names)]
    lines += ["}", ""]
    return "\n".join(lines)


def translated_headers() -> dict[str, str]:
    """csrc/cuda/*.cuh translated, under the names the sources include ("cuda/utils.cuh"): the build
    writes them next to the sources, which the compiler searches before csrc."""
    return {f"cuda/{h.name}": translate(h.read_text()) for h in sorted(CSRC.glob("cuda/*.cuh"))}


def _emulator_files() -> list[Path]:
    return sorted([*CSRC.glob("cuda/*.cuh"), CSRC / "common.h", CSRC / "ops.h", HERE / "cuda_emu.h",
                   Path(__file__).resolve(), *HERE.glob("include/**/*.h")])


ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"]


def _compiler_file(name: str) -> str | None:
    """A library of the C++ compiler's (`c++ -print-file-name`), or None if it has none."""
    import shutil
    import subprocess

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return None
    path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def asan_runtime() -> str | None:
    """The compiler's AddressSanitizer runtime (to LD_PRELOAD into Python), or None if it has none."""
    return _compiler_file("libasan.so")


def asan_requested() -> bool:
    return os.environ.get("SCC_CUDA_EMU_ASAN") == "1"


def asan_env() -> dict[str, str]:
    """Environment of a Python process that loads an instrumented build: the sanitizer's runtime (and the
    C++ runtime, whose exceptions it intercepts) preloaded, leaks (the interpreter's) not reported."""
    preload = " ".join(p for p in (asan_runtime(), _compiler_file("libstdc++.so")) if p)
    return {**os.environ, "LD_PRELOAD": preload, "SCC_CUDA_EMU_ASAN": "1",
            "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0"}


def run_child(argv: list[str], asan: bool, env: dict[str, str] | None = None, timeout: int = 3600):
    """Runs `python *argv` from the repository root with the tests folder importable (`import cuda_emu`),
    under the sanitizer's runtime (asan_env) or without it; `env` adds variables."""
    import subprocess
    import sys

    full = asan_env() if asan else {**os.environ, "SCC_CUDA_EMU_ASAN": "0"}
    full.update(env or {})
    full["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), full.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *argv], env=full, cwd=HERE.parent.parent, capture_output=True,
                          text=True, timeout=timeout)


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_sharded(argv: list[str], asan: bool, env: dict[str, str] | None = None, timeout: int = 3600):
    """`python -m pytest *argv` as concurrent children (run_child), each with its `--shard I/N` of the
    collected tests (tests/conftest.py): the emulator and the sanitized kernels run on one thread, so one child
    per core (at least 2) shortens the memory checks. Build what they load first: concurrent children would
    each build it. Returns the children's CompletedProcess in shard order."""
    from concurrent.futures import ThreadPoolExecutor

    n = max(2, min(4, cores()))
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda i: run_child(["-m", "pytest", *argv, "--shard", f"{i}/{n}"], asan, env, timeout),
                             range(n)))


def real_cuda_kernels() -> bool:
    """A GPU, and an extension built with its CUDA kernels (scc_kernels imported): the real kernels run."""
    return torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("scc::mutual_nn", "CUDA")


def cache_dir(name: str, blobs: list[bytes]) -> Path:
    """A build folder under the temporary directory, named by the hash of torch's version and `blobs`."""
    digest = hashlib.sha256(torch.__version__.encode())
    for blob in blobs:
        digest.update(blob)
    path = Path(tempfile.gettempdir()) / f"{name}_{digest.hexdigest()[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(name: str, sources: dict[str, str], asan: bool = False) -> None:
    """Compiles translated sources ({file name: C++ text}) with the emulator and loads the library
    (its TORCH_LIBRARY registrations); rebuilt only when a source or the emulator changed. With `asan`,
    instrumented by AddressSanitizer: the process must run with its runtime preloaded (asan_runtime())."""
    from torch.utils import cpp_extension

    if asan and "libasan" not in Path("/proc/self/maps").read_text():
        raise RuntimeError("cuda_emu: the AddressSanitizer build needs the sanitizer's runtime preloaded into "
                           "Python: run with the environment of cuda_emu.asan_env()")
    build_dir = cache_dir(name, [b"asan" if asan else b""]
                          + [p.name.encode() + p.read_bytes() for p in _emulator_files()]
                          + [file.encode() + text.encode() for file, text in sorted(sources.items())])
    src_dir = build_dir / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for file, text in sorted(sources.items()):
        path = src_dir / file
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:  # a rewrite would make ninja recompile it
            path.write_text(text)
        if path.suffix == ".cpp":
            paths.append(str(path))
    cpp_extension.load(
        name=name, sources=paths, build_directory=str(build_dir), is_python_module=False, verbose=False,
        extra_include_paths=[str(HERE / "include"), str(CSRC)],
        # -Dscc=...: the emulated kernels get their own namespace, apart from the real extension's symbols;
        # -U_FORTIFY_SOURCE: its longjmp check refuses the jumps between fiber stacks
        extra_cflags=["-O1", "-std=c++20", "-fno-strict-aliasing", "-fvisibility=hidden", "-U_FORTIFY_SOURCE",
                      "-Dscc=scc_emu", "-include", str(HERE / "cuda_emu.h")]
        + (ASAN_FLAGS if asan else []),
        extra_ldflags=["-fsanitize=address"] if asan else None,
    )


def load(asan: bool | None = None) -> None:
    """Build (if the sources changed) and load torch.ops.scc_cuda_emu: csrc/cuda/*.cu on the emulator;
    `asan` (default: SCC_CUDA_EMU_ASAN=1) instruments the kernels with AddressSanitizer."""
    if hasattr(getattr(torch.ops, NAME), "soft_argmax"):  # loaded already
        return
    sources = {f"{cu.stem}.cpp": f"// generated by tests/cuda_emu from {cu.name}\n" + translate(cu.read_text())
               for cu in sorted(CSRC.glob("cuda/*.cu"))}
    sources.update(translated_headers())
    sources["registration.cpp"] = registration()
    build(NAME, sources, asan_requested() if asan is None else asan)


def enabled() -> str | None:
    """None when the emulator may run here, else why not."""
    if os.environ.get("SCC_CUDA_EMU", "1") == "0":
        return "SCC_CUDA_EMU=0"
    return None
