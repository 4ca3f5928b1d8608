"""Build of the scc_kernels._C extension (CPU kernels always, CUDA kernels when possible).

SCC_BUILD_CUDA=1 forces the CUDA sources (fails clearly without nvcc or a CUDA build of torch),
SCC_BUILD_CUDA=0 skips them; unset, they are built when torch has CUDA and nvcc is found.
SCC_PTXAS_VERBOSE=1 adds `-Xptxas -v` (registers, spills, shared memory per kernel in the build log).
Install with `pip install --no-build-isolation -e .` after torch (see README).
"""

import glob
import os
import shutil
import site
import sys

from setuptools import setup


def _find_cuda_home():
    # torch guesses CUDA_HOME from the nvcc on PATH; a wrapper script such as /usr/local/bin/nvcc then
    # yields /usr/local, which has no lib64/libcudart. Prefer a real toolkit folder.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    for home in ("/usr/local/cuda", os.path.dirname(os.path.dirname(os.path.realpath(shutil.which("nvcc") or "")))):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.isdir(os.path.join(home, "lib64")):
            os.environ["CUDA_HOME"] = home
            return


_find_cuda_home()
from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)

ROOT = os.path.dirname(os.path.abspath(__file__))


def _nvcc_available() -> bool:
    home = cpp_extension.CUDA_HOME
    return bool(home) and os.path.exists(os.path.join(home, "bin", "nvcc"))


def _want_cuda() -> bool:
    import torch

    flag = os.environ.get("SCC_BUILD_CUDA")
    if flag == "0":
        return False
    possible = torch.version.cuda is not None and _nvcc_available()
    if flag == "1" and not possible:
        sys.exit("SCC_BUILD_CUDA=1 but torch has no CUDA (torch.version.cuda is None) or nvcc was not found "
                 "(set CUDA_HOME).")
    return possible


def _cuda_include_dirs():
    # The pip CUDA wheels keep headers such as cusparse.h under site-packages/nvidia/cu*/include.
    dirs = []
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "cu*", "include")))
    return dirs


def extensions():
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = ["csrc/ops.cpp"] + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden"]
    if not _want_cuda():
        return [cpp_extension.CppExtension("scc_kernels._C", sources, include_dirs=[os.path.join(ROOT, "csrc")],
                                           extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]
    # SASS for sm_80 (also runs on sm_86 / sm_89) and sm_90, and sm_90's PTX, which the driver compiles for
    # newer GPUs (sm_100, sm_120): without it the ops fail there with "no kernel image is available"
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    if os.environ.get("SCC_PTXAS_VERBOSE") == "1":
        nvcc += ["-Xptxas", "-v"]
    sources += rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp")
    return [cpp_extension.CUDAExtension("scc_kernels._C", sources,
                                        include_dirs=[os.path.join(ROOT, "csrc")] + _cuda_include_dirs(),
                                        define_macros=[("SCC_WITH_CUDA", "1")],
                                        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
