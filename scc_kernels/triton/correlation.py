"""Triton correlation kernels: C_ij = relu(<fs_i, ft_j> / (|fs_i| |ft_j| + eps)).

The norms |fs_i|, |ft_j| come first from a small bandwidth-bound kernel (fp32, read once; one launch
for both maps), so the main kernel is a pure tl.dot GEMM with the normalisation and ReLU fused into its
epilogue: accumulating the norms inside the K-loop would pull every operand tile out of the tensor-core
operand layout and stall the software pipeline (GPU run 1: 78 TFLOP/s at B=8, C=1024, 64x64). Small
problems are the exception: there the GPU work takes a few microseconds, a call costs what the host spends
on its Triton launches, so they take the norms in the K-loop and launch once (NORMS_IN_LOOP; GPU runs 1
and 2 at B=8, C=256, 32x32: 0.07 ms with run 1's one-launch kernel, 128 x 128 tiles, and 0.21 ms with
three launches; run 3: 0.081 ms with the shipped small path, the second config below, 0.098 ms forced the other way).
fs (B, C, hs, ws) and ft (B, C, ht, wt) are read in their native (B, C, N) layout: a tile of fs is a
(BLOCK_K, BLOCK_M) slab, contiguous along M, transposed in the dot. Rows (the N axis) are
zero-padded to a multiple of 16 elements when they are not one already (pad_rows: an O(B C N) copy) and
loads are bounded by the padded row length: the JIT then knows the rows are 16-byte aligned, so every
shape gets vectorised loads and a software-pipelined K-loop, not only multiples of 16. Accumulation is fp32;
fp32 inputs use input_precision="ieee" (no TF32) so the result keeps fp32 accuracy.
Output dtype = input dtype.
correlation_fwd_tma is a candidate for the large 16-bit problems, not yet used by the op: the same GEMM as a
persistent kernel with TMA loads and stores, whose software pipeline runs on into the next tile during
the epilogue (GPU run 3's one-tile-per-program kernel, one program per SM: 1.45x a bare bmm at B=8, C=1024,
64x64, its epilogue overlapping nothing); benchmarks/bench_gpu.py's sweep times it against the shipped kernel.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# H100 configs per input dtype, checked free of register spills by tests/test_triton_aot.py. The first
# fits large problems; the second is used when the first would leave SMs idle (fewer tiles than SMs) and
# for small problems (SMALL_PROBLEM: norms in the K-loop).
# fp32 dots run on FMA units ("ieee") with operands in registers, so they use thin K slabs.
FWD_CONFIGS = {
    torch.float32: [dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=16, GROUP_M=8, num_warps=8, num_stages=3),
                    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2)],
    torch.float16: [dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
                    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)],
    torch.bfloat16: [dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
                     dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)],
}
BWD_CONFIGS = {  # the bwd tile holds more live (BLOCK_M, BLOCK_N) values: half the rows, no spills
    torch.float32: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=16, GROUP_M=8, num_warps=8, num_stages=3),
    torch.float16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    torch.bfloat16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
}
NORM_CONFIG = dict(BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
# Volumes of up to this many cells (B Ns Nt) take the norms in the K-loop and one launch: the call is host-bound
# there. GPU run 3 (H100, both paths forced at each size): at 2^23 cells one launch was faster (B=8, 32x32:
# 0.081 vs 0.098 ms at C=256, 0.189 vs 0.232 ms at C=1024), at 2^27 the norm kernel + GEMM (B=8, 64x64: 0.27 vs
# 0.82 ms at C=256, 0.54 vs 2.88 ms at C=1024). (The split was by multiply-adds, B Ns Nt C <= 2^32, until run 3
# showed that it sent B=8, C=1024, 32x32 the slower way.) 2^24 lies between; sizes in between were not timed.
SMALL_PROBLEM = 2**24


def cdiv(a: int, b: int) -> int:
    return -(-a // b)  # triton.cdiv is a constexpr function: about 1.5 us per host-side call


@functools.lru_cache(maxsize=None)
def _poison() -> bool:
    return os.environ.get("SCC_POISON", "").startswith("1")  # read once, as csrc/common.h does


def new_output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for the launchers' outputs and scratch. With SCC_POISON=1 (the test suite sets it) filled
    with NaN (-1 for integers) first, like the C++ kernels' alloc_output (csrc/common.h): an element a
    kernel forgets to write then fails the tests instead of passing with whatever memory held."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if _poison():
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t


@triton.jit
def _norm_rows(x_b, out_b, N, C, stride_c, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    ss = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + offs_k
        x = tl.load(x_b + k[:, None] * stride_c + offs_n[None, :],
                    mask=(k[:, None] < C) & (offs_n[None, :] < N), other=0.0).to(tl.float32)
        ss += x * x
    tl.store(out_b + offs_n, tl.sqrt(tl.sum(ss, axis=0)), mask=offs_n < N)


@triton.jit
def _norm_kernel(fs_ptr, ft_ptr, norm_ptr, ft_offset, Ns, Nt, C, stride_sb, stride_sc, stride_tb, stride_tc,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """norm fp32: |fs[b, :, i]| at b Ns + i, then |ft[b, :, j]| at ft_offset + b Nt + j, for fs (B, C, Ns)
    and ft (B, C, Nt) with unit stride along N. Grid axis 2 picks the map (one launch for both)."""
    pid_b = tl.program_id(1).to(tl.int64)
    if tl.program_id(2) == 0:
        if tl.program_id(0) * BLOCK_N < Ns:
            _norm_rows(fs_ptr + pid_b * stride_sb, norm_ptr + pid_b * Ns, Ns, C, stride_sc, BLOCK_N, BLOCK_K)
    else:
        if tl.program_id(0) * BLOCK_N < Nt:
            _norm_rows(ft_ptr + pid_b * stride_tb, norm_ptr + ft_offset + pid_b * Nt, Nt, C, stride_tc,
                       BLOCK_N, BLOCK_K)


def norms(fs3: torch.Tensor, ft3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fs3 (B, C, Ns), ft3 (B, C, Nt), unit stride along N -> (B, Ns), (B, Nt) fp32 Euclidean norms over C,
    in one launch."""
    b, c, ns = fs3.shape
    nt = ft3.shape[2]
    # ft's norms start 16-byte aligned (the kernels that read them are compiled for aligned pointers); the
    # offset is passed from the host, so it is 64-bit whenever it needs to be
    ft_offset = cdiv(b * ns, 4) * 4
    out = new_output(ft_offset + b * nt, torch.float32, fs3.device)
    cfg = NORM_CONFIG
    wrap_triton(_norm_kernel)[(cdiv(max(ns, nt), cfg["BLOCK_N"]), b, 2)](
        fs3, ft3, out, ft_offset, ns, nt, c, fs3.stride(0), fs3.stride(1), ft3.stride(0), ft3.stride(1), **cfg)
    return out[:b * ns].view(b, ns), out[ft_offset:].view(b, nt)


@triton.jit
def gemm_tile_norms(
    fs_ptr, ft_ptr, stride_sc, stride_tc, offs_m, offs_n, C,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORMS: tl.constexpr,
):
    """Dot products <fs_i, ft_j> as a (BLOCK_M, BLOCK_N) fp32 tile and, with NORMS, the squared norms
    |fs_i|^2 (BLOCK_M,) and |ft_j|^2 (BLOCK_N,) from the same operand tiles (else zeros).

    fs_ptr / ft_ptr point at one batch item of a row-padded (C, N) layout (pad_rows): unit stride along N
    and row length = the channel stride, which bounds the loads.
    """
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ssa = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ssb = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + offs_k
        a = tl.load(fs_ptr + k[:, None] * stride_sc + offs_m[None, :],
                    mask=(k[:, None] < C) & (offs_m[None, :] < stride_sc), other=0.0)
        b = tl.load(ft_ptr + k[:, None] * stride_tc + offs_n[None, :],
                    mask=(k[:, None] < C) & (offs_n[None, :] < stride_tc), other=0.0)
        acc = tl.dot(tl.trans(a), b, acc=acc, input_precision="ieee")
        if NORMS:
            af = a.to(tl.float32)
            bf = b.to(tl.float32)
            ssa += tl.sum(af * af, axis=0)
            ssb += tl.sum(bf * bf, axis=0)
    return acc, ssa, ssb


@triton.jit
def gemm_tile(
    fs_ptr, ft_ptr, stride_sc, stride_tc, offs_m, offs_n, C,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Dot products <fs_i, ft_j> as a (BLOCK_M, BLOCK_N) fp32 tile (gemm_tile_norms without the norms)."""
    acc, _, _ = gemm_tile_norms(fs_ptr, ft_ptr, stride_sc, stride_tc, offs_m, offs_n, C,
                                BLOCK_M, BLOCK_N, BLOCK_K, False)
    return acc


@triton.jit
def _grouped(t, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """(row tile, column tile) of tile t of one batch item in grouped order: GROUP_M row tiles sweep the
    column tiles together, so the fs and ft tiles they share stay in L2."""
    per_group = GROUP_M * tiles_n
    first_m = (t // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (t % per_group) % group_m, (t % per_group) // group_m


@triton.jit
def _tile_ids(Ns, Nt, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's (row tile, column tile) in grouped order (grid axis 1 is the batch item)."""
    return _grouped(tl.program_id(0), tl.cdiv(Ns, BLOCK_M), tl.cdiv(Nt, BLOCK_N), GROUP_M)


@triton.jit
def _corr_fwd_kernel(
    fs_ptr, ft_ptr, na_ptr, nb_ptr, out_ptr, Ns, Nt, C,
    stride_sb, stride_sc, stride_tb, stride_tc, stride_ob, stride_om, eps,
    NORMALIZE: tl.constexpr, RELU: tl.constexpr, NORMS_IN_LOOP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """NORMS_IN_LOOP: the norms come from the K-loop's tiles (na_ptr / nb_ptr unread), else from na / nb."""
    eps = tl.cast(eps, tl.float32)  # torch.compile (2.11's inductor) passes Python floats as fp64
    pid_b = tl.program_id(1).to(tl.int64)  # batch offsets can exceed 2^31 elements
    pid_m, pid_n = _tile_ids(Ns, Nt, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < Ns
    mask_n = offs_n < Nt
    d, ssa, ssb = gemm_tile_norms(fs_ptr + pid_b * stride_sb, ft_ptr + pid_b * stride_tb, stride_sc, stride_tc,
                                  offs_m, offs_n, C, BLOCK_M, BLOCK_N, BLOCK_K, NORMALIZE and NORMS_IN_LOOP)
    if NORMALIZE:
        if NORMS_IN_LOOP:
            a = tl.sqrt(ssa)
            b = tl.sqrt(ssb)
        else:
            a = tl.load(na_ptr + pid_b * Ns + offs_m, mask=mask_m, other=0.0)
            b = tl.load(nb_ptr + pid_b * Nt + offs_n, mask=mask_n, other=0.0)
        d = d / (a[:, None] * b[None, :] + eps)
    if RELU:  # NaN-propagating, like the reference's clamp (a NaN feature must not become 0)
        d = tl.maximum(d, 0.0, propagate_nan=tl.PropagateNan.ALL)
    # row offsets in int64: Ns * Nt can reach 2^31 within one batch item (e.g. two 216 x 216 maps)
    out = out_ptr + pid_b * stride_ob + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, d.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _item_tile_ids(tile, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """(batch item, row tile, column tile) of a flat tile index over all items, grouped within an item."""
    b = tile // (tiles_m * tiles_n)
    pid_m, pid_n = _grouped(tile - b * tiles_m * tiles_n, tiles_m, tiles_n, GROUP_M)
    return b, pid_m, pid_n


@triton.jit
def _tma_epilogue(d, o_desc, na, nb_ptr, b, m0, n0, Nt, eps, NORMALIZE: tl.constexpr, RELU: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    if NORMALIZE:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nb = tl.load(nb_ptr + b * Nt + offs_n, mask=offs_n < Nt, other=0.0)
        d = d / (na[:, None] * nb[None, :] + eps)
    if RELU:
        d = tl.maximum(d, 0.0, propagate_nan=tl.PropagateNan.ALL)
    o_desc.store([b, m0, n0], d.to(o_desc.dtype).reshape(1, BLOCK_M, BLOCK_N))  # clipped to (B, Ns, Nt)


@triton.jit
def _corr_fwd_tma_kernel(
    a_desc, b_desc, o_desc, na_ptr, nb_ptr, B, Ns, Nt, C, eps,
    NORMALIZE: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_SMS: tl.constexpr, SPLIT: tl.constexpr, FLATTEN: tl.constexpr,
):
    """_corr_fwd_kernel (norms from na / nb) as a persistent kernel: NUM_SMS programs stride over the tiles of
    all batch items. Operands come through TMA descriptors, a_desc over fs (B, C, Ns) and b_desc over
    ft (B, C, Nt), rows zero-padded to a multiple of 16 (pad_rows), blocks (1, BLOCK_K, BLOCK_M / BLOCK_N),
    zero-filled past C; the output leaves through o_desc over (B, Ns, Nt), blocks (1, BLOCK_M, BLOCK_N) or
    two halves of it (SPLIT: less shared memory to stage the store), clipped at the edges. FLATTEN lets the
    software pipeline run into the next tile's loads during the epilogue, which run 3's one-tile-per-program
    kernel (one program per SM by shared memory) overlaps with nothing."""
    eps = tl.cast(eps, tl.float32)
    tiles_m = tl.cdiv(Ns, BLOCK_M)
    tiles_n = tl.cdiv(Nt, BLOCK_N)
    k_tiles = tl.cdiv(C, BLOCK_K)
    tile_c = tl.program_id(0) - NUM_SMS  # the epilogue's own counter: the pipeliner may run ahead of it
    for tile in tl.range(tl.program_id(0), B * tiles_m * tiles_n, NUM_SMS, flatten=FLATTEN):
        b, pid_m, pid_n = _item_tile_ids(tile, tiles_m, tiles_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([b, ki * BLOCK_K, pid_m * BLOCK_M]).reshape(BLOCK_K, BLOCK_M)
            bt = b_desc.load([b, ki * BLOCK_K, pid_n * BLOCK_N]).reshape(BLOCK_K, BLOCK_N)
            acc = tl.dot(tl.trans(a), bt, acc=acc)
        tile_c += NUM_SMS
        b, pid_m, pid_n = _item_tile_ids(tile_c, tiles_m, tiles_n, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        if NORMALIZE:
            na = tl.load(na_ptr + b * Ns + offs_m, mask=offs_m < Ns, other=0.0)
        else:
            na = offs_m  # unread
        if SPLIT:
            d0, d1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            _tma_epilogue(d0, o_desc, na, nb_ptr, b, pid_m * BLOCK_M, pid_n * BLOCK_N, Nt, eps, NORMALIZE, RELU,
                          BLOCK_M, BLOCK_N // 2)
            _tma_epilogue(d1, o_desc, na, nb_ptr, b, pid_m * BLOCK_M, pid_n * BLOCK_N + BLOCK_N // 2, Nt, eps,
                          NORMALIZE, RELU, BLOCK_M, BLOCK_N // 2)
        else:
            _tma_epilogue(acc, o_desc, na, nb_ptr, b, pid_m * BLOCK_M, pid_n * BLOCK_N, Nt, eps, NORMALIZE, RELU,
                          BLOCK_M, BLOCK_N)


@triton.jit
def _corr_bwd_kernel(
    fs_ptr, ft_ptr, na_ptr, nb_ptr, grad_ptr, A_ptr, rowq_ptr, colq_ptr, Ns, Nt, C,
    stride_sb, stride_sc, stride_tb, stride_tc, stride_gb, stride_gm, eps,
    NORMALIZE: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Elementwise part of the backward: A_ij = gr_ij / n_ij (fp32, (B, Ns, Nt) contiguous) and the
    per-tile partial sums sum_j Q_ij b_j -> rowq (B, n_tiles_n, Ns), sum_i Q_ij a_i -> colq (B, n_tiles_m, Nt).
    Partial sums per tile (instead of atomics) keep the result deterministic."""
    eps = tl.cast(eps, tl.float32)  # torch.compile (2.11's inductor) passes Python floats as fp64
    pid_b = tl.program_id(1).to(tl.int64)
    pid_m, pid_n = _tile_ids(Ns, Nt, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < Ns
    mask_n = offs_n < Nt
    d = gemm_tile(fs_ptr + pid_b * stride_sb, ft_ptr + pid_b * stride_tb, stride_sc, stride_tc,
                  offs_m, offs_n, C, BLOCK_M, BLOCK_N, BLOCK_K)
    rows = offs_m.to(tl.int64)[:, None]  # int64 row offsets: Ns * Nt can reach 2^31 within one batch item
    g = tl.load(grad_ptr + pid_b * stride_gb + rows * stride_gm + offs_n[None, :],
                mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    if NORMALIZE:
        a = tl.load(na_ptr + pid_b * Ns + offs_m, mask=mask_m, other=0.0)
        b = tl.load(nb_ptr + pid_b * Nt + offs_n, mask=mask_n, other=0.0)
        n = a[:, None] * b[None, :] + eps
        r = d / n
    else:
        r = d
    if RELU:
        g = tl.where(r > 0, g, 0.0)
    if NORMALIZE:
        A = g / n
        Q = A * r
        tiles_m = tl.cdiv(Ns, BLOCK_M)
        tiles_n = tl.cdiv(Nt, BLOCK_N)
        tl.store(rowq_ptr + (pid_b * tiles_n + pid_n) * Ns + offs_m, tl.sum(Q * b[None, :], axis=1), mask=mask_m)
        tl.store(colq_ptr + (pid_b * tiles_m + pid_m) * Nt + offs_n, tl.sum(Q * a[:, None], axis=0), mask=mask_n)
    else:
        A = g
    tl.store(A_ptr + pid_b * Ns * Nt + rows * Nt + offs_n[None, :], A,
             mask=mask_m[:, None] & mask_n[None, :])


MAX_GRID_YZ = 65535  # CUDA's limit on grid axes 1 and 2, which carry the batch (and fused_match's backward
# its channel blocks, C / BLOCK_C: within the limit below C = 4M)


def check_triton_limits(fs: torch.Tensor, ft: torch.Tensor) -> None:
    """Within one batch item the kernels index features in int32 (channel * row length: 64-bit products in
    every K-loop would cost registers), so each row-padded (C, h w) map must stay below 2^31 elements; the
    batch rides on grid axis 1 or 2, so B is at most 65535 (a ValueError here, not a refused launch)."""
    if fs.shape[0] > MAX_GRID_YZ:
        raise ValueError(f"scc: the Triton kernels take at most {MAX_GRID_YZ} batch items (B, grid axis 1 or 2), "
                         f"got B = {fs.shape[0]}; split the batch")
    for name, x in (("fs", fs), ("ft", ft)):
        c, n = x.shape[1], x.shape[2] * x.shape[3]
        if c * (cdiv(n, 16) * 16) >= 2**31:
            raise ValueError(f"scc: `{name}` is too large for the Triton kernels: C * (h * w rounded up to 16) "
                             f"must be below 2^31 per batch item, got shape {tuple(x.shape)}")


def _flat(fs: torch.Tensor, ft: torch.Tensor):
    check_triton_limits(fs, ft)
    fs = fs.contiguous()
    ft = ft.contiguous()
    return fs.flatten(2), ft.flatten(2)


def pad_rows(x3: torch.Tensor) -> torch.Tensor:
    """(B, C, N) contiguous -> the same, zero-padded along N to a multiple of 16 (the JIT's alignment
    specialisation); padded cells are zero vectors that the kernels mask out."""
    n = x3.shape[-1]
    if n % 16 == 0:
        return x3
    out = x3.new_zeros(x3.shape[:-1] + (cdiv(n, 16) * 16,))
    out[..., :n] = x3
    return out


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# Shared memory per block (with the opt-in) of the GPU the configs were tuned for: sm_90 (H100, H200).
SMEM_TUNED = 227 * 1024


@functools.lru_cache(maxsize=None)
def _smem_per_block(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    optin = getattr(props, "shared_memory_per_block_optin", None)
    if optin is not None:
        return optin
    # a torch without the field: by architecture
    if props.major in (9, 10):
        return SMEM_TUNED
    return 163 * 1024 if (props.major, props.minor) == (8, 0) else 99 * 1024


def small_smem(device: torch.device) -> bool:
    """A CUDA device with less shared memory per block than the H100 the configs were tuned on: A100 (sm_80,
    163 KiB) and sm_86 / sm_89 / sm_120 (RTX 30, 40 and 50 series, A10, L4, L40: 99 KiB). Kernels whose
    shipped config needs more take a compact one there (fused_match: not RESIDENT; Triton had refused the
    launch, OutOfResources); tests/test_triton_aot.py compiles what such a device runs for sm_80 and holds it
    to 99 KiB. The correlation configs fit as they are (80 KiB at sm_80)."""
    if device.type != "cuda":
        return False
    return _smem_per_block(device.index if device.index is not None else torch.cuda.current_device()) < SMEM_TUNED


def _pick_fwd_config(dtype, device, b, ns, nt, c, normalize, config):
    configs = FWD_CONFIGS[dtype]
    small = b * ns * nt <= SMALL_PROBLEM
    if small:  # the small tile: the K-loop's norms need registers for the operand tiles
        cfg = configs[-1]
    elif device.type == "cuda":
        sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
        cfg = next((c for c in configs if b * cdiv(ns, c["BLOCK_M"]) * cdiv(nt, c["BLOCK_N"]) >= sms), configs[-1])
    else:
        cfg = configs[0]
    return {"NORMS_IN_LOOP": small and normalize, **cfg, **config}


def correlation_fwd(fs: torch.Tensor, ft: torch.Tensor, normalize: bool = True, relu: bool = True,
                    eps: float = 1e-6, **config) -> torch.Tensor:
    """(B, C, hs, ws), (B, C, ht, wt) -> (B, hs, ws, ht, wt) in the input dtype.

    ``config`` overrides entries of the FWD_CONFIGS entry picked (block sizes, num_warps, num_stages) and
    NORMS_IN_LOOP (default: volumes of at most SMALL_PROBLEM cells)."""
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    fs3, ft3 = _flat(fs, ft)
    ns, nt = hs * ws, ht * wt
    cfg = _pick_fwd_config(fs.dtype, fs.device, b, ns, nt, c, normalize, config)
    # na / nb are unread without normalize or with the norms in the loop
    na, nb = norms(fs3, ft3) if normalize and not cfg["NORMS_IN_LOOP"] else (fs3, ft3)
    fs3, ft3 = pad_rows(fs3), pad_rows(ft3)
    out = new_output((b, hs, ws, ht, wt), fs.dtype, fs.device)
    grid = (cdiv(ns, cfg["BLOCK_M"]) * cdiv(nt, cfg["BLOCK_N"]), b)
    wrap_triton(_corr_fwd_kernel)[grid](
        fs3, ft3, na, nb, out, ns, nt, c, fs3.stride(0), fs3.stride(1), ft3.stride(0), ft3.stride(1),
        ns * nt, nt, eps, NORMALIZE=normalize, RELU=relu, **cfg,
    )
    return out


# The persistent TMA kernel's config (sm_90: 238-251 registers, 176 KiB of shared memory with Triton 3.8 and
# 3.6, no spills; tests/test_triton_aot.py). Not yet the default: no GPU has timed it (bench_gpu.py's sweep does).
TMA_CONFIG = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3, SPLIT=True,
                  FLATTEN=True)


def tma_block_shapes(cfg: dict) -> dict:
    """The block shapes of _corr_fwd_tma_kernel's descriptors for a config."""
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    return {"a_desc": [1, bk, bm], "b_desc": [1, bk, bn], "o_desc": [1, bm, bn // 2 if cfg["SPLIT"] else bn]}


def _descriptor(t: torch.Tensor, block_shape: list[int]):
    """A TMA descriptor of a contiguous tensor: row-major strides from its shape (a size-1 dimension may carry
    any stride, which TMA would reject) and a 16-byte aligned base (a view's may not be: then a copy)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    if t.data_ptr() % 16 != 0:
        t = t.clone()
    strides = [1] * t.dim()
    for d in range(t.dim() - 2, -1, -1):
        strides[d] = strides[d + 1] * t.shape[d + 1]
    return TensorDescriptor(t, list(t.shape), strides, block_shape)


def correlation_fwd_tma(fs: torch.Tensor, ft: torch.Tensor, normalize: bool = True, relu: bool = True,
                        eps: float = 1e-6, **config) -> torch.Tensor:
    """correlation_fwd through _corr_fwd_tma_kernel (norm kernel + persistent TMA GEMM): fs (B, C, hs, ws)
    and ft (B, C, ht, wt), float16 or bfloat16, with ht * wt a multiple of 8 (the output's rows must be a
    multiple of 16 bytes long, as a TMA descriptor's strides). ``config`` overrides TMA_CONFIG's entries and
    NUM_SMS (default: the device's SM count)."""
    if fs.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"scc: the TMA correlation kernel takes float16 or bfloat16 maps, got {fs.dtype}")
    if (fs.dim() != 4 or ft.dim() != 4 or ft.shape[:2] != fs.shape[:2] or ft.dtype != fs.dtype
            or ft.device != fs.device or fs.numel() == 0 or ft.numel() == 0):
        raise ValueError("scc: the TMA correlation kernel takes non-empty fs (B, C, hs, ws) and ft (B, C, ht, wt) "
                         f"of one dtype and device, got {tuple(fs.shape)} {fs.dtype} {fs.device} and "
                         f"{tuple(ft.shape)} {ft.dtype} {ft.device}")
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    ns, nt = hs * ws, ht * wt
    if (nt * fs.element_size()) % 16 != 0:
        raise ValueError(f"scc: the TMA correlation kernel needs ht * wt to be a multiple of 8, got {nt}")
    fs3, ft3 = _flat(fs, ft)
    cfg = {**TMA_CONFIG, **config}
    if "NUM_SMS" not in cfg:
        cfg["NUM_SMS"] = _num_sms(fs.device.index if fs.device.index is not None else torch.cuda.current_device())
    na, nb = norms(fs3, ft3) if normalize else (fs3, ft3)
    fs3, ft3 = pad_rows(fs3), pad_rows(ft3)  # 16-byte strides for the descriptors
    out = new_output((b, hs, ws, ht, wt), fs.dtype, fs.device)
    blocks = tma_block_shapes(cfg)
    descs = [_descriptor(t, blocks[name])
             for t, name in ((fs3, "a_desc"), (ft3, "b_desc"), (out.view(b, ns, nt), "o_desc"))]
    tiles = b * cdiv(ns, cfg["BLOCK_M"]) * cdiv(nt, cfg["BLOCK_N"])
    _corr_fwd_tma_kernel[(min(cfg["NUM_SMS"], tiles),)](
        *descs, na, nb, b, ns, nt, c, eps, NORMALIZE=normalize, RELU=relu, **cfg)
    return out


def correlation_bwd(grad: torch.Tensor, fs: torch.Tensor, ft: torch.Tensor, normalize: bool = True,
                    relu: bool = True, eps: float = 1e-6, **config):
    """Gradients of correlation_fwd w.r.t. fs and ft, in the input dtype.

    Composed: a Triton kernel recomputes the dot products and forms A = gr / n and the row/column sums of
    Q = A r (the elementwise part); the two contractions over j and i are fp32 torch.bmm calls (which follow
    torch's TF32 setting, torch.backends.cuda.matmul.allow_tf32, off by default, as PyTorch's own backward
    would; the forward's fp32 dot is IEEE always):
      grad_fs_i = sum_j A_ij ft_j - fs_i / a_i * sum_j Q_ij b_j
      grad_ft_j = sum_i A_ij fs_i - ft_j / b_j * sum_i Q_ij a_i
    """
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    fs3, ft3 = _flat(fs, ft)
    ns, nt = hs * ws, ht * wt
    cfg = {**BWD_CONFIGS[fs.dtype], **config}
    g3 = grad.contiguous().reshape(b, ns, nt)
    tiles_m, tiles_n = cdiv(ns, cfg["BLOCK_M"]), cdiv(nt, cfg["BLOCK_N"])
    na, nb = norms(fs3, ft3) if normalize else (fs3, ft3)
    fs3p, ft3p = pad_rows(fs3), pad_rows(ft3)
    A = new_output((b, ns, nt), torch.float32, fs.device)
    rowq = new_output((b, tiles_n, ns), torch.float32, fs.device)
    colq = new_output((b, tiles_m, nt), torch.float32, fs.device)
    wrap_triton(_corr_bwd_kernel)[(tiles_m * tiles_n, b)](
        fs3p, ft3p, na, nb, g3, A, rowq, colq, ns, nt, c, fs3p.stride(0), fs3p.stride(1), ft3p.stride(0),
        ft3p.stride(1), g3.stride(0), g3.stride(1), eps, NORMALIZE=normalize, RELU=relu, **cfg,
    )
    fs32, ft32 = fs3.float(), ft3.float()
    # fp32 whatever autocast region the backward runs in (a bf16 autocast training step would make these bf16)
    with torch.autocast(fs.device.type, enabled=False):
        grad_fs = torch.bmm(ft32, A.transpose(1, 2))  # (B, C, Ns)
        grad_ft = torch.bmm(fs32, A)  # (B, C, Nt)
    if normalize:
        # fs_i / a_i: terms with a_i = 0 have fs_i = 0 and drop out.
        ka = torch.where(na > 0, rowq.sum(1) / na, torch.zeros_like(na))
        kb = torch.where(nb > 0, colq.sum(1) / nb, torch.zeros_like(nb))
        grad_fs -= fs32 * ka[:, None, :]
        grad_ft -= ft32 * kb[:, None, :]
    return grad_fs.to(fs.dtype).reshape(fs.shape), grad_ft.to(ft.dtype).reshape(ft.shape)
