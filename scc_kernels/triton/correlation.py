"""Triton correlation kernels: C_ij = relu(<fs_i, ft_j> / (|fs_i| |ft_j| + eps)).

fs (B, C, hs, ws) and ft (B, C, ht, wt) are read in their native (B, C, N) layout: a tile of fs is a
(BLOCK_K, BLOCK_M) slab, transposed in registers before tl.dot. Accumulation is fp32; fp32 inputs use
input_precision="ieee" (no TF32) so the result keeps fp32 accuracy. The row/column norms are accumulated
in the same K-loop from the tiles already loaded for the dot, so there is no separate norm pass.
Output dtype = input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# H100 defaults per input dtype, checked free of register spills by tests/test_triton_aot.py. fp32 dots
# run on FMA units ("ieee") with operands in registers, so they use thin K slabs.
FWD_CONFIGS = {
    torch.float32: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=16, num_warps=8, num_stages=3),
    torch.float16: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    torch.bfloat16: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
}
BWD_CONFIGS = {  # the bwd tile holds more live (BLOCK_M, BLOCK_N) values: half the rows, no spills
    torch.float32: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=16, num_warps=8, num_stages=3),
    torch.float16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    torch.bfloat16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
}


@triton.jit
def dot_tile(
    fs_ptr, ft_ptr, stride_sc, stride_tc, offs_m, offs_n, Ns, Nt, C,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Dot products <fs_i, ft_j> (BLOCK_M, BLOCK_N) and squared norms |fs_i|^2, |ft_j|^2, all fp32.

    fs_ptr / ft_ptr point at one batch item of a (C, N) layout with unit stride along N.
    """
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ssa = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ssb = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + offs_k
        a = tl.load(fs_ptr + k[:, None] * stride_sc + offs_m[None, :],
                    mask=(k[:, None] < C) & (offs_m[None, :] < Ns), other=0.0)
        b = tl.load(ft_ptr + k[:, None] * stride_tc + offs_n[None, :],
                    mask=(k[:, None] < C) & (offs_n[None, :] < Nt), other=0.0)
        acc = tl.dot(tl.trans(a), b, acc=acc, input_precision="ieee")
        af = a.to(tl.float32)
        bf = b.to(tl.float32)
        ssa += tl.sum(af * af, axis=0)
        ssb += tl.sum(bf * bf, axis=0)
    return acc, ssa, ssb


@triton.jit
def _corr_fwd_kernel(
    fs_ptr, ft_ptr, out_ptr, Ns, Nt, C,
    stride_sb, stride_sc, stride_tb, stride_tc, stride_ob, stride_om, eps,
    NORMALIZE: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(2).to(tl.int64)  # batch offsets can exceed 2^31 elements
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    d, ssa, ssb = dot_tile(fs_ptr + pid_b * stride_sb, ft_ptr + pid_b * stride_tb, stride_sc, stride_tc,
                           offs_m, offs_n, Ns, Nt, C, BLOCK_M, BLOCK_N, BLOCK_K)
    if NORMALIZE:
        d = d / (tl.sqrt(ssa)[:, None] * tl.sqrt(ssb)[None, :] + eps)
    if RELU:
        d = tl.maximum(d, 0.0)
    out = out_ptr + pid_b * stride_ob + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, d.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < Ns) & (offs_n[None, :] < Nt))


@triton.jit
def _corr_bwd_kernel(
    fs_ptr, ft_ptr, grad_ptr, A_ptr, rowq_ptr, colq_ptr, Ns, Nt, C,
    stride_sb, stride_sc, stride_tb, stride_tc, stride_gb, stride_gm, eps,
    NORMALIZE: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Elementwise part of the backward: A_ij = gr_ij / n_ij (fp32, (B, Ns, Nt) contiguous) and the
    per-tile partial sums sum_j Q_ij b_j -> rowq (B, n_tiles_n, Ns), sum_i Q_ij a_i -> colq (B, n_tiles_m, Nt).
    Partial sums per tile (instead of atomics) keep the result deterministic."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < Ns
    mask_n = offs_n < Nt
    d, ssa, ssb = dot_tile(fs_ptr + pid_b * stride_sb, ft_ptr + pid_b * stride_tb, stride_sc, stride_tc,
                           offs_m, offs_n, Ns, Nt, C, BLOCK_M, BLOCK_N, BLOCK_K)
    g = tl.load(grad_ptr + pid_b * stride_gb + offs_m[:, None] * stride_gm + offs_n[None, :],
                mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    if NORMALIZE:
        a = tl.sqrt(ssa)
        b = tl.sqrt(ssb)
        n = a[:, None] * b[None, :] + eps
        r = d / n
    else:
        r = d
    if RELU:
        g = tl.where(r > 0, g, 0.0)
    if NORMALIZE:
        A = g / n
        Q = A * r
        n_tiles_m = tl.num_programs(0)
        n_tiles_n = tl.num_programs(1)
        tl.store(rowq_ptr + (pid_b * n_tiles_n + pid_n) * Ns + offs_m, tl.sum(Q * b[None, :], axis=1), mask=mask_m)
        tl.store(colq_ptr + (pid_b * n_tiles_m + pid_m) * Nt + offs_n, tl.sum(Q * a[:, None], axis=0), mask=mask_n)
    else:
        A = g
    tl.store(A_ptr + pid_b * Ns * Nt + offs_m[:, None] * Nt + offs_n[None, :], A,
             mask=mask_m[:, None] & mask_n[None, :])


def _flat(fs: torch.Tensor, ft: torch.Tensor):
    fs = fs.contiguous()
    ft = ft.contiguous()
    return fs.flatten(2), ft.flatten(2)


def correlation_fwd(fs: torch.Tensor, ft: torch.Tensor, normalize: bool = True, relu: bool = True,
                    eps: float = 1e-6, **config) -> torch.Tensor:
    """(B, C, hs, ws), (B, C, ht, wt) -> (B, hs, ws, ht, wt) in the input dtype.

    ``config`` overrides entries of FWD_CONFIGS (block sizes, num_warps, num_stages)."""
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    fs3, ft3 = _flat(fs, ft)
    ns, nt = hs * ws, ht * wt
    cfg = {**FWD_CONFIGS[fs.dtype], **config}
    out = torch.empty((b, hs, ws, ht, wt), dtype=fs.dtype, device=fs.device)
    grid = (triton.cdiv(ns, cfg["BLOCK_M"]), triton.cdiv(nt, cfg["BLOCK_N"]), b)
    _corr_fwd_kernel[grid](
        fs3, ft3, out, ns, nt, c, fs3.stride(0), fs3.stride(1), ft3.stride(0), ft3.stride(1),
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
    A = torch.empty((b, ns, nt), dtype=torch.float32, device=fs.device)
    rowq = torch.empty((b, tiles_n, ns), dtype=torch.float32, device=fs.device)
    colq = torch.empty((b, tiles_m, nt), dtype=torch.float32, device=fs.device)
    _corr_bwd_kernel[(tiles_m, tiles_n, b)](
        fs3, ft3, g3, A, rowq, colq, ns, nt, c, fs3.stride(0), fs3.stride(1), ft3.stride(0), ft3.stride(1),
        g3.stride(0), g3.stride(1), eps, NORMALIZE=normalize, RELU=relu, **cfg,
    )
    fs32, ft32 = fs3.float(), ft3.float()
    grad_fs = torch.bmm(ft32, A.transpose(1, 2))  # (B, C, Ns)
    grad_ft = torch.bmm(fs32, A)  # (B, C, Nt)
    if normalize:
        na = torch.linalg.vector_norm(fs32, dim=1)
        nb = torch.linalg.vector_norm(ft32, dim=1)
        # fs_i / a_i: terms with a_i = 0 have fs_i = 0 and drop out.
        ka = torch.where(na > 0, rowq.sum(1) / na, torch.zeros_like(na))
        kb = torch.where(nb > 0, colq.sum(1) / nb, torch.zeros_like(nb))
        grad_fs -= fs32 * ka[:, None, :]
        grad_ft -= ft32 * kb[:, None, :]
    return grad_fs.to(fs.dtype).reshape(fs.shape), grad_ft.to(ft.dtype).reshape(ft.shape)
