"""Triton correlation kernels: C_ij = relu(<fs_i, ft_j> / (|fs_i| |ft_j| + eps)).

The norms |fs_i|, |ft_j| come first from a small bandwidth-bound kernel (fp32, read once), so the main
kernel is a pure tl.dot GEMM with the normalisation and ReLU fused into its epilogue: accumulating the
norms inside the K-loop would pull every operand tile out of the tensor-core operand layout and stall the
software pipeline. fs (B, C, hs, ws) and ft (B, C, ht, wt) are read in their native (B, C, N) layout: a
tile of fs is a (BLOCK_K, BLOCK_M) slab, contiguous along M, transposed in the dot. Rows (the N axis) are
zero-padded to a multiple of 16 elements when they are not one already (pad_rows: an O(B C N) copy) and
loads are bounded by the padded row length: the JIT then knows the rows are 16-byte aligned, so every
shape gets vectorised loads and a software-pipelined K-loop, not only multiples of 16. Accumulation is fp32;
fp32 inputs use input_precision="ieee" (no TF32) so the result keeps fp32 accuracy.
Output dtype = input dtype.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# H100 configs per input dtype, checked free of register spills by tests/test_triton_aot.py. The first
# fits large problems; the second is used when the first would leave SMs idle (fewer tiles than SMs).
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


@triton.jit
def _norm_kernel(x_ptr, norm_ptr, N, C, stride_b, stride_c, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out (B, N) fp32 = |x[b, :, n]| for x (B, C, N) with unit stride along N."""
    pid_b = tl.program_id(1).to(tl.int64)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_b = x_ptr + pid_b * stride_b
    ss = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + offs_k
        x = tl.load(x_b + k[:, None] * stride_c + offs_n[None, :],
                    mask=(k[:, None] < C) & (offs_n[None, :] < N), other=0.0).to(tl.float32)
        ss += x * x
    tl.store(norm_ptr + pid_b * N + offs_n, tl.sqrt(tl.sum(ss, axis=0)), mask=offs_n < N)


def norms(x3: torch.Tensor) -> torch.Tensor:
    """(B, C, N) with unit stride along N -> (B, N) fp32 Euclidean norms over C."""
    b, c, n = x3.shape
    out = torch.empty((b, n), dtype=torch.float32, device=x3.device)
    cfg = NORM_CONFIG
    wrap_triton(_norm_kernel)[(triton.cdiv(n, cfg["BLOCK_N"]), b)](x3, out, n, c, x3.stride(0), x3.stride(1), **cfg)
    return out


@triton.jit
def gemm_tile(
    fs_ptr, ft_ptr, stride_sc, stride_tc, offs_m, offs_n, C,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Dot products <fs_i, ft_j> as a (BLOCK_M, BLOCK_N) fp32 tile.

    fs_ptr / ft_ptr point at one batch item of a row-padded (C, N) layout (pad_rows): unit stride along N
    and row length = the channel stride, which bounds the loads.
    """
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + offs_k
        a = tl.load(fs_ptr + k[:, None] * stride_sc + offs_m[None, :],
                    mask=(k[:, None] < C) & (offs_m[None, :] < stride_sc), other=0.0)
        b = tl.load(ft_ptr + k[:, None] * stride_tc + offs_n[None, :],
                    mask=(k[:, None] < C) & (offs_n[None, :] < stride_tc), other=0.0)
        acc = tl.dot(tl.trans(a), b, acc=acc, input_precision="ieee")
    return acc


@triton.jit
def _tile_ids(Ns, Nt, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped program order: GROUP_M row tiles sweep the column tiles together, so the fs and ft tiles
    they share stay in L2."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(Ns, BLOCK_M)
    tiles_n = tl.cdiv(Nt, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m, pid_n


@triton.jit
def _corr_fwd_kernel(
    fs_ptr, ft_ptr, na_ptr, nb_ptr, out_ptr, Ns, Nt, C,
    stride_sb, stride_sc, stride_tb, stride_tc, stride_ob, stride_om, eps,
    NORMALIZE: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_b = tl.program_id(1).to(tl.int64)  # batch offsets can exceed 2^31 elements
    pid_m, pid_n = _tile_ids(Ns, Nt, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < Ns
    mask_n = offs_n < Nt
    d = gemm_tile(fs_ptr + pid_b * stride_sb, ft_ptr + pid_b * stride_tb, stride_sc, stride_tc,
                  offs_m, offs_n, C, BLOCK_M, BLOCK_N, BLOCK_K)
    if NORMALIZE:
        a = tl.load(na_ptr + pid_b * Ns + offs_m, mask=mask_m, other=0.0)
        b = tl.load(nb_ptr + pid_b * Nt + offs_n, mask=mask_n, other=0.0)
        d = d / (a[:, None] * b[None, :] + eps)
    if RELU:
        d = tl.maximum(d, 0.0)
    out = out_ptr + pid_b * stride_ob + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, d.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


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
    pid_b = tl.program_id(1).to(tl.int64)
    pid_m, pid_n = _tile_ids(Ns, Nt, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < Ns
    mask_n = offs_n < Nt
    d = gemm_tile(fs_ptr + pid_b * stride_sb, ft_ptr + pid_b * stride_tb, stride_sc, stride_tc,
                  offs_m, offs_n, C, BLOCK_M, BLOCK_N, BLOCK_K)
    g = tl.load(grad_ptr + pid_b * stride_gb + offs_m[:, None] * stride_gm + offs_n[None, :],
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
    tl.store(A_ptr + pid_b * Ns * Nt + offs_m[:, None] * Nt + offs_n[None, :], A,
             mask=mask_m[:, None] & mask_n[None, :])


def _flat(fs: torch.Tensor, ft: torch.Tensor):
    fs = fs.contiguous()
    ft = ft.contiguous()
    return fs.flatten(2), ft.flatten(2)


def pad_rows(x3: torch.Tensor) -> torch.Tensor:
    """(B, C, N) contiguous -> the same, zero-padded along N to a multiple of 16 (the JIT's alignment
    specialisation); padded cells are zero vectors that the kernels mask out."""
    n = x3.shape[-1]
    if n % 16 == 0:
        return x3
    out = x3.new_zeros(x3.shape[:-1] + (triton.cdiv(n, 16) * 16,))
    out[..., :n] = x3
    return out


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _pick_fwd_config(dtype, device, b, ns, nt, config):
    configs = FWD_CONFIGS[dtype]
    if device.type == "cuda":
        sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
        cfg = next((c for c in configs
                    if b * triton.cdiv(ns, c["BLOCK_M"]) * triton.cdiv(nt, c["BLOCK_N"]) >= sms), configs[-1])
    else:
        cfg = configs[0]
    return {**cfg, **config}


def correlation_fwd(fs: torch.Tensor, ft: torch.Tensor, normalize: bool = True, relu: bool = True,
                    eps: float = 1e-6, **config) -> torch.Tensor:
    """(B, C, hs, ws), (B, C, ht, wt) -> (B, hs, ws, ht, wt) in the input dtype.

    ``config`` overrides entries of the FWD_CONFIGS entry picked (block sizes, num_warps, num_stages)."""
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    fs3, ft3 = _flat(fs, ft)
    ns, nt = hs * ws, ht * wt
    cfg = _pick_fwd_config(fs.dtype, fs.device, b, ns, nt, config)
    na, nb = (norms(fs3), norms(ft3)) if normalize else (fs3, ft3)  # unread without normalize
    fs3, ft3 = pad_rows(fs3), pad_rows(ft3)
    out = torch.empty((b, hs, ws, ht, wt), dtype=fs.dtype, device=fs.device)
    grid = (triton.cdiv(ns, cfg["BLOCK_M"]) * triton.cdiv(nt, cfg["BLOCK_N"]), b)
    wrap_triton(_corr_fwd_kernel)[grid](
        fs3, ft3, na, nb, out, ns, nt, c, fs3.stride(0), fs3.stride(1), ft3.stride(0), ft3.stride(1),
        ns * nt, nt, eps, NORMALIZE=normalize, RELU=relu, **cfg,
    )
    return out


def correlation_bwd(grad: torch.Tensor, fs: torch.Tensor, ft: torch.Tensor, normalize: bool = True,
                    relu: bool = True, eps: float = 1e-6, **config):
    """Gradients of correlation_fwd w.r.t. fs and ft, in the input dtype.

    Composed: a Triton kernel recomputes the dot products and forms A = gr / n and the row/column sums of
    Q = A r (the elementwise part); the two contractions over j and i are fp32 torch.bmm calls:
      grad_fs_i = sum_j A_ij ft_j - fs_i / a_i * sum_j Q_ij b_j
      grad_ft_j = sum_i A_ij fs_i - ft_j / b_j * sum_i Q_ij a_i
    """
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    fs3, ft3 = _flat(fs, ft)
    ns, nt = hs * ws, ht * wt
    cfg = {**BWD_CONFIGS[fs.dtype], **config}
    g3 = grad.contiguous().reshape(b, ns, nt)
    tiles_m, tiles_n = triton.cdiv(ns, cfg["BLOCK_M"]), triton.cdiv(nt, cfg["BLOCK_N"])
    na, nb = (norms(fs3), norms(ft3)) if normalize else (fs3, ft3)
    fs3p, ft3p = pad_rows(fs3), pad_rows(ft3)
    A = torch.empty((b, ns, nt), dtype=torch.float32, device=fs.device)
    rowq = torch.empty((b, tiles_n, ns), dtype=torch.float32, device=fs.device)
    colq = torch.empty((b, tiles_m, nt), dtype=torch.float32, device=fs.device)
    wrap_triton(_corr_bwd_kernel)[(tiles_m * tiles_n, b)](
        fs3p, ft3p, na, nb, g3, A, rowq, colq, ns, nt, c, fs3p.stride(0), fs3p.stride(1), ft3p.stride(0),
        ft3p.stride(1), g3.stride(0), g3.stride(1), eps, NORMALIZE=normalize, RELU=relu, **cfg,
    )
    fs32, ft32 = fs3.float(), ft3.float()
    grad_fs = torch.bmm(ft32, A.transpose(1, 2))  # (B, C, Ns)
    grad_ft = torch.bmm(fs32, A)  # (B, C, Nt)
    if normalize:
        # fs_i / a_i: terms with a_i = 0 have fs_i = 0 and drop out.
        ka = torch.where(na > 0, rowq.sum(1) / na, torch.zeros_like(na))
        kb = torch.where(nb > 0, colq.sum(1) / nb, torch.zeros_like(nb))
        grad_fs -= fs32 * ka[:, None, :]
        grad_ft -= ft32 * kb[:, None, :]
    return grad_fs.to(fs.dtype).reshape(fs.shape), grad_ft.to(ft.dtype).reshape(ft.shape)
