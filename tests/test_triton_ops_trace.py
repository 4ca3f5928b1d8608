"""The Triton ops are `torch.library.triton_op`s: torch.compile's AOT stage sees their Triton kernels
(not an opaque call). Checked without a GPU: fake CUDA tensors, AOT autograd capturing the forward and
backward graphs (the kernels are traced, never launched). Numerics: tests/test_triton_interpret.py (CPU
interpreter) and tests/test_gpu_matmul_ops.py (GPU)."""

import pytest
import torch

import scc_kernels  # noqa: F401  (registers the ops)

pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def _no_device_query(monkeypatch):
    import scc_kernels.triton.correlation as TC

    monkeypatch.setattr(TC, "_num_sms", lambda index: 132)  # an H100's SM count; no GPU to ask here
    monkeypatch.setattr(TC, "_smem_per_block", lambda index: 227 * 1024)  # and its shared memory per block


def _fake_cuda(*shapes, requires_grad=False):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    with mode:
        return mode, [torch.randn(*s, device="cuda", requires_grad=requires_grad) for s in shapes]


def _match_backward(a, b):
    """fused_match's forward, then its backward with the forward's outputs as the incoming gradients."""
    flow, conf, arg, lse = torch.ops.scc.fused_match_triton(a, b, 0.1, 1)
    return torch.ops.scc.fused_match_triton_backward(flow, conf, a, b, 0.1, 1, flow, arg, lse)


def _graph(fn, args, mode) -> str:
    """The forward graph AOT autograd hands to the compiler. (A backward graph cannot be traced without a
    GPU: the autograd engine wants a CUDA context; the backward ops are traced as forward calls instead, and
    their autograd wiring is run by the interpreter tests.)"""
    from torch._functorch.aot_autograd import aot_function

    graphs = []

    def keep(gm, _example):
        graphs.append(gm.code)
        return gm

    with mode:
        aot_function(fn, fw_compiler=keep)(*args)
    return graphs[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_shapes(dtype):
    mode, (fs, ft) = _fake_cuda((2, 16, 5, 7), (2, 16, 6, 4))
    with mode:
        fs, ft = fs.to(dtype), ft.to(dtype)
        c = torch.ops.scc.correlation_triton(fs, ft)
        gfs, gft = torch.ops.scc.correlation_triton_backward(torch.ones_like(c), fs, ft, True, True, 1e-6)
        flow, conf, arg, lse = torch.ops.scc.fused_match_triton(fs, ft, 0.1, 1)
        g2 = torch.ops.scc.fused_match_triton_backward(torch.ones_like(flow), torch.ones_like(conf), fs, ft, 0.1, 1,
                                                       flow, arg, lse)
    assert c.shape == (2, 5, 7, 6, 4) and c.dtype == dtype and c.device.type == "cuda"
    assert gfs.shape == fs.shape and gft.shape == ft.shape and gfs.dtype == dtype
    assert flow.shape == (2, 5, 7, 2) and flow.dtype == torch.float32 and arg.dtype == torch.int64
    assert lse.shape == (2, 35) and g2[0].shape == fs.shape and g2[1].shape == ft.shape


def test_compiler_sees_the_correlation_kernels():
    mode, (fs, ft, g) = _fake_cuda((2, 16, 5, 7), (2, 16, 6, 4), (2, 5, 7, 6, 4))
    fw = _graph(lambda a, b: scc_kernels.correlation(a, b) * 2, (fs, ft), mode)
    # a small problem: one launch, the GEMM with the norms in its K-loop, traced as a HOP
    assert fw.count("triton_kernel_wrapper_functional(") == 1
    assert "scc.correlation" not in fw  # no opaque op left
    bw = _graph(lambda gr, a, b: torch.ops.scc.correlation_triton_backward(gr, a, b, True, True, 1e-6), (g, fs, ft), mode)
    assert "triton_kernel_wrapper_functional(" in bw and "scc.correlation" not in bw


def test_compiler_sees_the_fused_match_kernels():
    mode, (fs, ft) = _fake_cuda((2, 16, 5, 7), (2, 16, 6, 4))
    fw = _graph(lambda a, b: scc_kernels.fused_match(a, b, 0.1, 1)[:2], (fs, ft), mode)
    assert "triton_kernel_wrapper_functional(" in fw and "scc.fused_match" not in fw

    bw = _graph(_match_backward, (fs, ft), mode)
    # forward: norms (one launch for both maps), the streaming pass; backward: norms, row statistics, grad_fs,
    # grad_ft
    assert bw.count("triton_kernel_wrapper_functional(") == 6 and "scc.fused_match" not in bw


@pytest.mark.parametrize("smem,resident", [(227 * 1024, True), (163 * 1024, False), (99 * 1024, False)])
def test_fused_match_fits_the_device_shared_memory(monkeypatch, smem, resident):
    # The resident 16-bit kernels need up to 194 KiB at sm_80: an A100 (163 KiB) or an RTX 4090 (99 KiB)
    # refused the launch. There every kernel slices the channels (tests/test_triton_aot.py: within 99 KiB).
    import scc_kernels.triton.correlation as TC

    monkeypatch.setattr(TC, "_smem_per_block", lambda index: smem)
    mode, (fs, ft) = _fake_cuda((2, 64, 5, 7), (2, 64, 6, 4))
    with mode:
        fs, ft = fs.bfloat16(), ft.bfloat16()

    bw = _graph(_match_backward, (fs, ft), mode)
    flags = [line for line in bw.splitlines() if "RESIDENT" in line]
    assert len(flags) == 4, bw  # forward, row statistics, grad_fs, grad_ft
    assert all(("'RESIDENT': True" in f or "RESIDENT = True" in f) == resident for f in flags), flags


@pytest.mark.parametrize("shape,launches", [((8, 256, 32, 32), 1), ((8, 1024, 32, 32), 1), ((8, 256, 64, 64), 2),
                                            ((8, 1024, 64, 64), 2)])
def test_correlation_launches(shape, launches):
    # Host time per launch dominates small problems (docs/performance.md): up to SMALL_PROBLEM volume cells
    # the forward launches once (norms in the K-loop); above it, the norm kernel (both maps) and the GEMM.
    mode, (fs, ft) = _fake_cuda(shape, shape)
    with mode:
        fs, ft = fs.bfloat16(), ft.bfloat16()
    fw = _graph(lambda a, b: scc_kernels.correlation(a, b), (fs, ft), mode)
    assert fw.count("triton_kernel_wrapper_functional(") == launches, fw
    assert ("NORMS_IN_LOOP = True" in fw or "'NORMS_IN_LOOP': True" in fw) == (launches == 1), fw


@pytest.fixture
def sm90_target(monkeypatch):
    """torch.compile reads which pointers a Triton kernel writes from its TTIR, which needs a compile target:
    without a GPU none is active (and it would assume every argument written), so give it the H100's."""
    import triton
    from triton.backends.compiler import GPUTarget

    class Driver:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    monkeypatch.setattr(triton.runtime.driver, "_active", Driver())


def _written(graph: str) -> list[list[str]]:
    import ast

    return [ast.literal_eval(line.split("tensors_to_clone = ")[1].split("]")[0] + "]")
            for line in graph.splitlines() if "tensors_to_clone = " in line]


@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (8, 1024, 32, 32)])
def test_compiler_sees_only_outputs_written(sm90_target, shape):
    # A kernel whose writes the analysis cannot read makes torch.compile clone every input (the feature maps)
    # on every call; each of these writes only its outputs.
    b, _, h, w = shape
    mode, (fs, ft, g) = _fake_cuda(shape, shape, (b, h, w, h, w))

    graphs = [_graph(lambda a, b: scc_kernels.correlation(a, b), (fs, ft), mode),
              _graph(lambda gr, a, b: torch.ops.scc.correlation_triton_backward(gr, a, b, True, True, 1e-6),
                     (g, fs, ft), mode),
              _graph(_match_backward, (fs, ft), mode)]
    written = [w for graph in graphs for w in _written(graph)]
    corr_fw = [["out_ptr"]] if b * (h * w) ** 2 <= 2**24 else [["norm_ptr"], ["out_ptr"]]
    assert written == corr_fw + [["norm_ptr"], ["A_ptr", "rowq_ptr", "colq_ptr"]] + [
        ["norm_ptr"], ["flow_ptr", "conf_ptr", "arg_ptr", "lse_ptr"],  # fused_match forward
        ["norm_ptr"], ["flow_ptr", "S_ptr", "conf_ptr", "Z_ptr"], ["gfs_ptr"], ["gft_ptr"]]  # its backward


def test_launcher_outputs_are_poisoned():
    # Like the C++ kernels' alloc_output: under SCC_POISON=1 (conftest) every Triton launcher allocation starts
    # as NaN (-1 for integers), so an element a kernel forgets to write fails the numeric tests.
    import inspect
    import os

    import scc_kernels.triton.correlation as TC
    import scc_kernels.triton.fused_match as TF

    assert os.environ.get("SCC_POISON") == "1"
    assert torch.isnan(TC.new_output((2, 3), torch.float32, "cpu")).all()
    assert torch.isnan(TC.new_output((2,), torch.bfloat16, "cpu")).all()
    assert (TC.new_output((4,), torch.int64, "cpu") == -1).all()
    # ... and the launchers allocate through it (pad_rows' zero padding is read, not an output)
    for mod in (TC, TF):
        src = inspect.getsource(mod).replace(inspect.getsource(TC.new_output), "")
        for alloc in ("torch.empty(", "torch.empty_like(", ".new_empty("):
            assert alloc not in src, f"{mod.__name__}: {alloc} outside new_output"


@pytest.mark.parametrize("op", ["correlation", "correlation_backward", "fused_match", "fused_match_backward"])
def test_a_batch_over_grid_axis_1_is_refused(op):
    """The batch rides on grid axis 1 (or 2): B > 65535 is a ValueError before any launch, in every op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    b = 65536
    with FakeTensorMode():
        fs, ft = torch.randn(b, 4, 1, 2, device="cuda"), torch.randn(b, 4, 2, 1, device="cuda")
        call = {
            "correlation": lambda: torch.ops.scc.correlation_triton(fs, ft, True, True, 1e-6),
            "correlation_backward": lambda: torch.ops.scc.correlation_triton_backward(
                torch.randn(b, 1, 2, 2, 1, device="cuda"), fs, ft, True, True, 1e-6),
            "fused_match": lambda: torch.ops.scc.fused_match_triton(fs, ft, 0.1, 1),
            "fused_match_backward": lambda: torch.ops.scc.fused_match_triton_backward(
                torch.randn(b, 1, 2, 2, device="cuda"), torch.randn(b, 1, 2, device="cuda"), fs, ft, 0.1, 1,
                torch.randn(b, 1, 2, 2, device="cuda"), torch.zeros(b, 1, 2, dtype=torch.int64, device="cuda"),
                torch.randn(b, 2, device="cuda")),
        }[op]
        with pytest.raises(ValueError, match="at most 65535 batch items .*got B = 65536"):
            call()
