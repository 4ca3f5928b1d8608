"""Triton fused matching: windowed soft-argmax of softmax_j(correlation(fs, ft) / tau), never writing
the (Ns x Nt) volume.

The norms |fs_i|, |ft_j| are computed once (correlation.norms, one launch for both maps); every tile then only needs tl.dot plus an
elementwise epilogue. When the (padded) channel count fits one tile (RESIDENT, C <= RESIDENT_C), a
program's own block of features is loaded once and each streamed tile takes a single dot; otherwise the
dot loops over BLOCK_K channel slabs. fs and ft rows are padded as in correlation.pad_rows, so loads are
bounded by the row length (the channel stride) and stay vectorised for every map size.

Forward (FlashAttention-style): a program owns BLOCK_M source cells and streams over target tiles with an
online softmax (running max m, sum l and, for window = -1, the running sums of p * col and p * row) and a
running argmax. For window >= 0 a second tensor-core pass over the target tiles accumulates sum p,
sum p * col, sum p * row over the cells inside each row's window, visiting only the range of tiles that
the block's windows can touch. Logits are handled in base 2 (exp2) with scale log2(e) / tau; lse is
returned in natural log units.

Backward by recomputation: a row-statistics kernel (a sweep over the whole row, from lse) gives flow_i, S_i,
conf_i and the row's normaliser Z_i (lse's float32 rounding at 1 / tau, divided out); then one kernel over source blocks accumulates grad_fs += dS ft^T and one over target blocks
grad_ft += dS^T fs, each recomputing the logits of every tile pair it visits (no atomics: deterministic).
The dS tiles enter the second dot in the input dtype (half-precision tensor cores, fp32 accumulation),
scaled by the owning block's norm to keep them in fp16 range. Without RESIDENT the channel dimension is
split over the grid in BLOCK_C chunks (logits recomputed per chunk), so any C fits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .correlation import cdiv, check_triton_limits, gemm_tile, new_output, norms, pad_rows, small_smem

EPS = 1e-6  # the correlation eps of reference.fused_match
LOG2E = 1.4426950408889634

# H100 configs per input dtype, checked free of register spills by tests/test_triton_aot.py (for both the
# resident and the sliced-channel variant). fp32 dots run on FMA units ("ieee", no TF32) with operands in
# registers: never resident, thin K slabs (16: the smallest K tl.dot accepts on Triton 3.6), small tiles.
# FWD_CONFIGS also serve the row-statistics kernel of the backward (the same streaming pass).
FWD_CONFIGS = {
    torch.float32: dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, RESIDENT_C=0, num_warps=4, num_stages=2),
    torch.float16: dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, RESIDENT_C=256, num_warps=8, num_stages=3),
    torch.bfloat16: dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, RESIDENT_C=256, num_warps=8, num_stages=3),
}
# The gradient kernels own BLOCK_OWN cells (128 with 8 warps: 16 rows per warp, as the chained dots want)
# and stream cells of the other map: BLOCK_STREAM_T targets (grad_fs), BLOCK_STREAM_S sources (grad_ft,
# whose per-source coefficient vectors cost registers along the streamed axis). The fp32
# (BLOCK_OWN, BLOCK_C) accumulator takes half the registers.
BWD_CONFIGS = {
    torch.float32: dict(BLOCK_OWN=32, BLOCK_STREAM_T=32, BLOCK_STREAM_S=32, BLOCK_K=16, BLOCK_C=64, RESIDENT_C=0,
                        num_warps=8, num_stages=2),
    torch.float16: dict(BLOCK_OWN=128, BLOCK_STREAM_T=32, BLOCK_STREAM_S=16, BLOCK_K=64, BLOCK_C=128,
                        RESIDENT_C=256, num_warps=8, num_stages=2),
    torch.bfloat16: dict(BLOCK_OWN=128, BLOCK_STREAM_T=32, BLOCK_STREAM_S=16, BLOCK_K=64, BLOCK_C=128,
                         RESIDENT_C=256, num_warps=8, num_stages=2),
}

# On GPUs with less shared memory per block than the H100 (correlation.small_smem) the channel dimension is
# always sliced: the resident 16-bit forward needs 129-194 KiB at sm_80 (198656 bytes windowed; an A100 has
# 163 KiB, sm_86 / sm_89 99 KiB), the sliced one 32 KiB.
SMALL_SMEM = dict(RESIDENT_C=0)


def device_config(configs: dict, dtype: torch.dtype, device: torch.device) -> dict:
    """The entry for dtype of FWD_CONFIGS or BWD_CONFIGS, made to fit the device's shared memory."""
    return {**configs[dtype], **(SMALL_SMEM if small_smem(device) else {})}


@triton.jit
def _relu(x):
    """NaN-propagating, like the reference's clamp: a NaN feature must not turn into a confident match."""
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _cosine(d, na, nb, eps):
    """r = d / (na nb + eps), written once for every pass (forward, row statistics, gradients): the backward's
    P_ij must round as its statistics pass's do, or 1 / tau amplifies the difference (the softmax backward
    cancels). (d * (1 / n) would round differently, and spills in the fp32 forward.)"""
    return d / (na * nb + eps)


@triton.jit
def _load_block_t(x_b, stride_c, offs, C, BLOCK_K: tl.constexpr):
    """The whole channel dimension of cells offs of a row-padded (C, N) layout, as a (len(offs), BLOCK_K)
    tile."""
    k = tl.arange(0, BLOCK_K)
    x = tl.load(x_b + k[:, None] * stride_c + offs[None, :], mask=(k[:, None] < C) & (offs[None, :] < stride_c),
                other=0.0)
    return tl.trans(x)


@triton.jit
def _scores(
    q, fs_b, ft_b, stride_sc, stride_tc, offs_m, offs_n, C,
    RESIDENT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """<fs_i, ft_j> (BLOCK_M, BLOCK_N) fp32; q is the resident (BLOCK_M, BLOCK_K) source block if RESIDENT."""
    if RESIDENT:
        k = tl.arange(0, BLOCK_K)
        kt = tl.load(ft_b + k[:, None] * stride_tc + offs_n[None, :],
                     mask=(k[:, None] < C) & (offs_n[None, :] < stride_tc), other=0.0)
        d = tl.dot(q, kt, input_precision="ieee")
    else:
        d = gemm_tile(fs_b, ft_b, stride_sc, stride_tc, offs_m, offs_n, C, BLOCK_M, BLOCK_N, BLOCK_K)
    return d


@triton.jit
def _window_range(jstar, mask_m, wt, Nt, radius, BLOCK_N: tl.constexpr):
    """[lo, hi) of the target tiles (multiples of BLOCK_N) that any valid row's window can touch."""
    ht = Nt // wt
    rs = jstar // wt
    cs = jstar % wt
    lo = tl.maximum(rs - radius, 0) * wt + tl.maximum(cs - radius, 0)
    hi = tl.minimum(rs + radius, ht - 1) * wt + tl.minimum(cs + radius, wt - 1)
    lo = tl.min(tl.where(mask_m, lo, Nt), axis=0)
    hi = tl.max(tl.where(mask_m, hi, -1), axis=0)
    return (lo // BLOCK_N) * BLOCK_N, hi + 1


@triton.jit
def _window_sums(
    q, fs_b, ft_b, nb_b, na, stride_sc, stride_tc, offs_m, jstar, m2, n_lo, n_hi, Ns, Nt, C, wt,
    scale, eps, radius,
    WINDOWED: tl.constexpr, ROW_SUM: tl.constexpr, RESIDENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Over target tiles [n_lo, n_hi) and, if WINDOWED, only the cells within radius of jstar_i (rows and
    columns): the sums of p = exp2(l2_ij - m2_i), p * (col_j - col_j*), p * (row_j - row_j*), p at jstar_i and,
    with ROW_SUM, of p over every cell of the tiles (the window ignored; else the window sum again). Offsets from
    the argmax cell: the backward needs sum_j p_ij (x_j - flow_i) = 0 to the rounding of numbers of the
    window's size, not of the grid's (flow_i rounded at the magnitude of its coordinates made the windowed
    float32 gradients 3x the CPU kernel's error)."""
    rs = jstar // wt
    cs = jstar % wt
    sp = tl.zeros((BLOCK_M,), dtype=tl.float32)
    spx = tl.zeros((BLOCK_M,), dtype=tl.float32)
    spy = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pstar = tl.zeros((BLOCK_M,), dtype=tl.float32)
    sz = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < Nt
        d = _scores(q, fs_b, ft_b, stride_sc, stride_tc, offs_m, offs_n, C, RESIDENT, BLOCK_M, BLOCK_N, BLOCK_K)
        nb = tl.load(nb_b + offs_n, mask=mask_n, other=0.0)
        l2 = _relu(_cosine(d, na[:, None], nb[None, :], eps)) * scale
        dc = (offs_n % wt)[None, :] - cs[:, None]
        dr = (offs_n // wt)[None, :] - rs[:, None]
        inside = mask_n[None, :]
        if WINDOWED:
            inside = inside & (tl.abs(dr) <= radius) & (tl.abs(dc) <= radius)
        e = tl.exp2(l2 - m2[:, None])
        p = tl.where(inside, e, 0.0)
        sp += tl.sum(p, axis=1)
        spx += tl.sum(p * dc.to(tl.float32), axis=1)
        spy += tl.sum(p * dr.to(tl.float32), axis=1)
        pstar += tl.sum(tl.where(offs_n[None, :] == jstar[:, None], p, 0.0), axis=1)
        if ROW_SUM and WINDOWED:
            sz += tl.sum(tl.where(mask_n[None, :], e, 0.0), axis=1)
    if not (ROW_SUM and WINDOWED):
        sz = sp
    return sp, spx, spy, pstar, sz


@triton.jit
def _fused_match_fwd_kernel(
    fs_ptr, ft_ptr, na_ptr, nb_ptr, flow_ptr, conf_ptr, arg_ptr, lse_ptr, Ns, Nt, C, wt,
    stride_sb, stride_sc, stride_tb, stride_tc, scale, eps, window,
    WINDOWED: tl.constexpr, RESIDENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    scale = tl.cast(scale, tl.float32)  # torch.compile (2.11's inductor) passes Python floats as fp64
    eps = tl.cast(eps, tl.float32)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < Ns
    fs_b = fs_ptr + pid_b * stride_sb
    ft_b = ft_ptr + pid_b * stride_tb
    nb_b = nb_ptr + pid_b * Nt
    na = tl.load(na_ptr + pid_b * Ns + offs_m, mask=mask_m, other=0.0)
    q = 0
    if RESIDENT:
        q = _load_block_t(fs_b, stride_sc, offs_m, C, BLOCK_K)
    m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max (base-2 logits)
    l = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp2(l2 - m)
    sx = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sums of p * col, p * row (window = -1)
    sy = tl.zeros((BLOCK_M,), dtype=tl.float32)
    arg = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for n0 in range(0, Nt, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < Nt
        d = _scores(q, fs_b, ft_b, stride_sc, stride_tc, offs_m, offs_n, C, RESIDENT, BLOCK_M, BLOCK_N, BLOCK_K)
        nb = tl.load(nb_b + offs_n, mask=mask_n, other=0.0)
        l2 = _relu(_cosine(d, na[:, None], nb[None, :], eps)) * scale
        l2 = tl.where(mask_n[None, :], l2, float("-inf"))
        # The running max and argmax skip NaN logits (a NaN feature): they still reach the sums below and make
        # the row's outputs NaN (argmax 0, as the reference's: below), while m stays a number (and the
        # interpreter's argmax refuses all-NaN rows).
        l2max = tl.where(l2 == l2, l2, float("-inf"))
        tmax = tl.max(l2max, axis=1)
        # Strict '>' across tiles and tie_break_left within one keep the first index of the maximum.
        arg = tl.where(tmax > m, tl.argmax(l2max, axis=1).to(tl.int32) + n0, arg)
        m_new = tl.maximum(m, tmax)
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(l2 - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        if not WINDOWED:
            col = (offs_n % wt).to(tl.float32)
            row = (offs_n // wt).to(tl.float32)
            sx = sx * alpha + tl.sum(p * col[None, :], axis=1)
            sy = sy * alpha + tl.sum(p * row[None, :], axis=1)
        m = m_new
    if WINDOWED:
        n_lo, n_hi = _window_range(arg, mask_m, wt, Nt, window, BLOCK_N)
        sp, sx, sy, _, _ = _window_sums(q, fs_b, ft_b, nb_b, na, stride_sc, stride_tc, offs_m, arg, m, n_lo, n_hi,
                                        Ns, Nt, C, wt, scale, eps, window, True, False, RESIDENT,
                                        BLOCK_M, BLOCK_N, BLOCK_K)
        fx = (arg % wt).to(tl.float32) + sx / sp  # the sums are offsets from the argmax cell
        fy = (arg // wt).to(tl.float32) + sy / sp
    else:
        fx = sx / l
        fy = sy / l
    # A NaN logit made l NaN: the reference's softmax row is then all NaN, its argmax the first cell and its
    # flow NaN, also where the window around the running argmax (NaN skipped) holds no NaN.
    nan_row = l != l
    arg = tl.where(nan_row, 0, arg)
    fx = tl.where(nan_row, float("nan"), fx)
    fy = tl.where(nan_row, float("nan"), fy)
    row_off = pid_b * Ns + offs_m
    tl.store(flow_ptr + 2 * row_off, fx, mask=mask_m)
    tl.store(flow_ptr + 2 * row_off + 1, fy, mask=mask_m)
    tl.store(conf_ptr + row_off, 1.0 / l, mask=mask_m)  # P at the argmax = exp2(m - m) / l
    tl.store(arg_ptr + row_off, arg.to(tl.int64), mask=mask_m)
    tl.store(lse_ptr + row_off, (m + tl.log2(l)) / 1.4426950408889634, mask=mask_m)


@triton.jit
def _row_stats_kernel(
    fs_ptr, ft_ptr, na_ptr, nb_ptr, arg_ptr, lse_ptr, flow_ptr, S_ptr, conf_ptr, Z_ptr, Ns, Nt, C, wt,
    stride_sb, stride_sc, stride_tb, stride_tc, scale, eps, window,
    WINDOWED: tl.constexpr, RESIDENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Per source row, with P_ij = exp(l_ij - lse_i) recomputed: flow_i - x_j*_i, S_i = sum_{j in W_i} P_ij,
    conf_i = P_ij* and the row's normaliser Z_i = sum_j P_ij (fp32). Z_i is 1 up to the rounding of lse_i to
    float32 at the magnitude of 1 / tau, which the backward must divide out (see fused_match_bwd). In
    windowed mode that takes a sweep over the whole row (the window sums ride along)."""
    scale = tl.cast(scale, tl.float32)  # torch.compile (2.11's inductor) passes Python floats as fp64
    eps = tl.cast(eps, tl.float32)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < Ns
    row_off = pid_b * Ns + offs_m
    fs_b = fs_ptr + pid_b * stride_sb
    na = tl.load(na_ptr + row_off, mask=mask_m, other=0.0)
    lse2 = tl.load(lse_ptr + row_off, mask=mask_m, other=0.0) * 1.4426950408889634
    jstar = tl.load(arg_ptr + row_off, mask=mask_m, other=0).to(tl.int32)
    q = 0
    if RESIDENT:
        q = _load_block_t(fs_b, stride_sc, offs_m, C, BLOCK_K)
    sp, sx, sy, pstar, sz = _window_sums(q, fs_b, ft_ptr + pid_b * stride_tb, nb_ptr + pid_b * Nt, na, stride_sc,
                                         stride_tc, offs_m, jstar, lse2, 0, Nt, Ns, Nt, C, wt, scale, eps,
                                         window, WINDOWED, True, RESIDENT, BLOCK_M, BLOCK_N, BLOCK_K)
    tl.store(flow_ptr + 2 * row_off, sx / sp, mask=mask_m)
    tl.store(flow_ptr + 2 * row_off + 1, sy / sp, mask=mask_m)
    tl.store(S_ptr + row_off, sp, mask=mask_m)
    tl.store(conf_ptr + row_off, pstar, mask=mask_m)
    tl.store(Z_ptr + row_off, sz, mask=mask_m)


@triton.jit
def _source_coefs(coef_b, arg_b, offs_m, mask_m, Ns):
    """Per source row: na, lse2, ux, uy, v, gconf, c (coef (7, Ns) fp32 of one batch item) and j*."""
    na = tl.load(coef_b + offs_m, mask=mask_m, other=0.0)
    lse2 = tl.load(coef_b + Ns + offs_m, mask=mask_m, other=0.0)
    ux = tl.load(coef_b + 2 * Ns + offs_m, mask=mask_m, other=0.0)
    uy = tl.load(coef_b + 3 * Ns + offs_m, mask=mask_m, other=0.0)
    v = tl.load(coef_b + 4 * Ns + offs_m, mask=mask_m, other=0.0)
    gconf = tl.load(coef_b + 5 * Ns + offs_m, mask=mask_m, other=0.0)
    c = tl.load(coef_b + 6 * Ns + offs_m, mask=mask_m, other=0.0)
    jstar = tl.load(arg_b + offs_m, mask=mask_m, other=0).to(tl.int32)
    return na, lse2, ux, uy, v, gconf, c, jstar


@triton.jit
def _grad_tile(
    d, valid, na, nb, lse2, ux, uy, v, gconf, c, jstar, j, wt, own_norm, scale, inv_tau, eps, window,
    WINDOWED: tl.constexpr,
):
    """Elementwise dS for a tile of dot products d; every other argument is broadcast against d (source
    quantities na..jstar, target ones nb and j). Returns A * own_norm and Q * own_norm, with
    A = grad_C [r > 0] / n and Q = A r, where
    grad_l_ij = P_ij ([j in W_i] u_i . (x_j - flow_i) + gconf_i [j = j*_i] - c_i), grad_C = grad_l / tau,
    u_i = grad_flow_i / S_i, v_i = u_i . (flow_i - x_j*_i), c_i = gconf_i conf_i. The factor own_norm (the norm of
    the program's own cell) is divided out after the contraction; it keeps A in fp16 range."""
    r = _cosine(d, na, nb, eps)
    inv_n = 1.0 / (na * nb + eps)
    P = tl.where(valid, tl.exp2(_relu(r) * scale - lse2), 0.0)
    # offsets from the argmax cell: u . (x_j - flow_i) as u . (x_j - x_j*) - v_i, v_i = u . (flow_i - x_j*), whose
    # terms are about the window's size (u . x_j - u . flow_i cancelled to 1 / (grid size) of its terms)
    dc = j % wt - jstar % wt
    dr = j // wt - jstar // wt
    gp = ux * dc.to(tl.float32) + uy * dr.to(tl.float32) - v
    if WINDOWED:
        inside = (tl.abs(dr) <= window) & (tl.abs(dc) <= window)
        gp = tl.where(inside, gp, 0.0)
    gp += tl.where(j == jstar, gconf, 0.0)
    A = tl.where(r > 0, P * (gp - c) * inv_tau, 0.0) * (inv_n * own_norm)
    return A, A * r


@triton.jit
def _grad_fs_kernel(
    fs_ptr, ft_ptr, nb_ptr, coef_ptr, arg_ptr, gfs_ptr, Ns, Nt, C, wt,
    stride_sb, stride_sc, stride_tb, stride_tc, scale, inv_tau, eps, window,
    WINDOWED: tl.constexpr, RESIDENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_fs_i = sum_j A_ij ft_j - fs_i / a_i sum_j Q_ij b_j for BLOCK_M rows and BLOCK_C channels
    (all of them, BLOCK_C = BLOCK_K, if RESIDENT); grad_fs has the layout of fs."""
    scale = tl.cast(scale, tl.float32)  # torch.compile (2.11's inductor) passes Python floats as fp64
    inv_tau = tl.cast(inv_tau, tl.float32)
    eps = tl.cast(eps, tl.float32)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < Ns
    mask_c = offs_c < C
    fs_b = fs_ptr + pid_b * stride_sb
    ft_b = ft_ptr + pid_b * stride_tb
    nb_b = nb_ptr + pid_b * Nt
    na, lse2, ux, uy, v, gconf, c, jstar = _source_coefs(coef_ptr + pid_b * 7 * Ns, arg_ptr + pid_b * Ns,
                                                          offs_m, mask_m, Ns)
    if RESIDENT:
        q = _load_block_t(fs_b, stride_sc, offs_m, C, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    rowq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, Nt, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < Nt
        ftc = tl.load(ft_b + offs_c[:, None] * stride_tc + offs_n[None, :],
                      mask=mask_c[:, None] & (offs_n[None, :] < stride_tc), other=0.0)  # (BLOCK_C, BLOCK_N)
        if RESIDENT:
            d = tl.dot(q, ftc, input_precision="ieee")
        else:
            d = gemm_tile(fs_b, ft_b, stride_sc, stride_tc, offs_m, offs_n, C, BLOCK_M, BLOCK_N, BLOCK_K)
        nb = tl.load(nb_b + offs_n, mask=mask_n, other=0.0)
        A, Q = _grad_tile(d, mask_m[:, None] & mask_n[None, :], na[:, None], nb[None, :], lse2[:, None],
                          ux[:, None], uy[:, None], v[:, None], gconf[:, None], c[:, None], jstar[:, None],
                          offs_n[None, :], wt, na[:, None], scale, inv_tau, eps, window, WINDOWED)
        acc = tl.dot(A.to(ftc.dtype), tl.trans(ftc), acc=acc, input_precision="ieee")
        rowq += tl.sum(Q * nb[None, :], axis=1)
    # grad_fs is row-padded like fs: its padding receives zeros.
    io_mask = mask_c[None, :] & (offs_m[:, None] < stride_sc)
    fsc = tl.load(fs_b + offs_c[None, :] * stride_sc + offs_m[:, None], mask=io_mask,
                  other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_C)
    # a_i = 0 gives d = r = A = Q = 0: the row's gradient is 0.
    inv_a = 1.0 / tl.where(na > 0, na, float("inf"))
    grad = acc * inv_a[:, None] - fsc * (rowq * inv_a * inv_a)[:, None]
    tl.store(gfs_ptr + pid_b * stride_sb + offs_c[None, :] * stride_sc + offs_m[:, None],
             grad.to(gfs_ptr.dtype.element_ty), mask=io_mask)


@triton.jit
def _grad_ft_kernel(
    fs_ptr, ft_ptr, nb_ptr, coef_ptr, arg_ptr, gft_ptr, Ns, Nt, C, wt,
    stride_sb, stride_sc, stride_tb, stride_tc, scale, inv_tau, eps, window,
    WINDOWED: tl.constexpr, RESIDENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_ft_j = sum_i A_ij fs_i - ft_j / b_j sum_i Q_ij a_i for BLOCK_N target cells and BLOCK_C
    channels; grad_ft has the layout of ft. Tiles are (target, source): the transposed scores come
    straight from the dot, so dS^T needs no register transpose."""
    scale = tl.cast(scale, tl.float32)  # torch.compile (2.11's inductor) passes Python floats as fp64
    inv_tau = tl.cast(inv_tau, tl.float32)
    eps = tl.cast(eps, tl.float32)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_n = offs_n < Nt
    mask_c = offs_c < C
    fs_b = fs_ptr + pid_b * stride_sb
    ft_b = ft_ptr + pid_b * stride_tb
    coef_b = coef_ptr + pid_b * 7 * Ns
    arg_b = arg_ptr + pid_b * Ns
    nb = tl.load(nb_ptr + pid_b * Nt + offs_n, mask=mask_n, other=0.0)
    if RESIDENT:
        kq = _load_block_t(ft_b, stride_tc, offs_n, C, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    colq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, Ns, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < Ns
        fsc = tl.load(fs_b + offs_c[:, None] * stride_sc + offs_m[None, :],
                      mask=mask_c[:, None] & (offs_m[None, :] < stride_sc), other=0.0)  # (BLOCK_C, BLOCK_M)
        if RESIDENT:
            d = tl.dot(kq, fsc, input_precision="ieee")
        else:
            d = gemm_tile(ft_b, fs_b, stride_tc, stride_sc, offs_n, offs_m, C, BLOCK_N, BLOCK_M, BLOCK_K)
        na, lse2, ux, uy, v, gconf, c, jstar = _source_coefs(coef_b, arg_b, offs_m, mask_m, Ns)
        A, Q = _grad_tile(d, mask_n[:, None] & mask_m[None, :], na[None, :], nb[:, None], lse2[None, :],
                          ux[None, :], uy[None, :], v[None, :], gconf[None, :], c[None, :], jstar[None, :],
                          offs_n[:, None], wt, nb[:, None], scale, inv_tau, eps, window, WINDOWED)
        acc = tl.dot(A.to(fsc.dtype), tl.trans(fsc), acc=acc, input_precision="ieee")
        colq += tl.sum(Q * na[None, :], axis=1)
    io_mask = mask_c[None, :] & (offs_n[:, None] < stride_tc)
    ftc = tl.load(ft_b + offs_c[None, :] * stride_tc + offs_n[:, None], mask=io_mask,
                  other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_C)
    inv_b = 1.0 / tl.where(nb > 0, nb, float("inf"))  # b_j = 0: the column's gradient is 0
    grad = acc * inv_b[:, None] - ftc * (colq * inv_b * inv_b)[:, None]
    tl.store(gft_ptr + pid_b * stride_tb + offs_c[None, :] * stride_tc + offs_n[:, None],
             grad.to(gft_ptr.dtype.element_ty), mask=io_mask)


def _flat(fs: torch.Tensor, ft: torch.Tensor):
    check_triton_limits(fs, ft)
    return fs.contiguous().flatten(2), ft.contiguous().flatten(2)


def _launch_cfg(cfg: dict, c: int, keys: tuple[str, ...]) -> dict:
    """Kernel keyword arguments: with the padded C within RESIDENT_C, one channel tile holds all of C."""
    kc = max(16, 1 << (c - 1).bit_length())  # the next power of two; tl.dot needs K >= 16
    resident = kc <= cfg["RESIDENT_C"]
    out = {k: cfg[k] for k in keys + ("num_warps", "num_stages")}
    out["RESIDENT"] = resident
    if resident:
        out["BLOCK_K"] = kc
        if "BLOCK_C" in out:
            out["BLOCK_C"] = kc
    return out


def _grad_cfgs(cfg: dict, c: int) -> tuple[dict, dict]:
    """Keyword arguments of _grad_fs_kernel and _grad_ft_kernel: each owns BLOCK_OWN cells (sources,
    targets) and streams cells of the other map."""
    base = _launch_cfg(cfg, c, ("BLOCK_K", "BLOCK_C"))
    return ({**base, "BLOCK_M": cfg["BLOCK_OWN"], "BLOCK_N": cfg["BLOCK_STREAM_T"]},
            {**base, "BLOCK_M": cfg["BLOCK_STREAM_S"], "BLOCK_N": cfg["BLOCK_OWN"]})


def fused_match_fwd(fs: torch.Tensor, ft: torch.Tensor, tau: float, window: int = -1, **config):
    """fs (B, C, hs, ws), ft (B, C, ht, wt) -> flow (B, hs, ws, 2) fp32, conf (B, hs, ws) fp32,
    argmax (B, hs, ws) int64, lse (B, Ns) fp32. ``config`` overrides entries of device_config's."""
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    fs3, ft3 = _flat(fs, ft)
    ns, nt = hs * ws, ht * wt
    cfg = _launch_cfg({**device_config(FWD_CONFIGS, fs.dtype, fs.device), **config}, c, ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    dev = fs.device
    flow = new_output((b, hs, ws, 2), torch.float32, dev)
    conf = new_output((b, hs, ws), torch.float32, dev)
    arg = new_output((b, hs, ws), torch.int64, dev)
    lse = new_output((b, ns), torch.float32, dev)
    na, nb = norms(fs3, ft3)
    fs3, ft3 = pad_rows(fs3), pad_rows(ft3)
    radius = min(max(window, 0), max(ht, wt))  # the same cells: the window covers the grid from any argmax
    wrap_triton(_fused_match_fwd_kernel)[(cdiv(ns, cfg["BLOCK_M"]), b)](
        fs3, ft3, na, nb, flow, conf, arg, lse, ns, nt, c, wt,
        fs3.stride(0), fs3.stride(1), ft3.stride(0), ft3.stride(1), LOG2E / tau, EPS, radius,
        WINDOWED=window >= 0, **cfg,
    )
    return flow, conf, arg, lse


def fused_match_bwd(grad_flow, grad_conf, fs, ft, tau: float, window: int, argmax, lse, **config):
    """Gradients of fused_match_fwd's flow and conf w.r.t. fs and ft (input dtype), by recomputation.
    grad_flow / grad_conf may be None (no gradient). ``config`` overrides entries of the device_config of
    BWD_CONFIGS and of FWD_CONFIGS (used by the row-statistics kernel)."""
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    fs3, ft3 = _flat(fs, ft)
    ns, nt = hs * ws, ht * wt
    dev = fs.device
    windowed = window >= 0
    arg = argmax.contiguous()
    # argmax places the window passes: outside [0, Nt) they would load out of bounds. Checked on the device,
    # asynchronously (no host sync in the backward); on CPU tensors it raises at once.
    torch._assert_async(((arg >= 0) & (arg < nt)).all(),
                        f"scc: fused_match_backward: `argmax` must hold target indices in [0, Nt) = [0, {nt})")
    lse = lse.contiguous()
    na, nb = norms(fs3, ft3)
    fs3, ft3 = pad_rows(fs3), pad_rows(ft3)
    common = (ns, nt, c, wt, fs3.stride(0), fs3.stride(1), ft3.stride(0), ft3.stride(1), LOG2E / tau)
    radius = min(max(window, 0), max(ht, wt))  # the same cells: the window covers the grid from any argmax

    dflow = new_output((b, ns, 2), torch.float32, dev)  # flow_i - x_j*_i: offsets from the argmax cell
    S = new_output((b, ns), torch.float32, dev)
    conf = new_output((b, ns), torch.float32, dev)
    Z = new_output((b, ns), torch.float32, dev)
    scfg = _launch_cfg({**device_config(FWD_CONFIGS, fs.dtype, dev), **config}, c, ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    wrap_triton(_row_stats_kernel)[(cdiv(ns, scfg["BLOCK_M"]), b)](
        fs3, ft3, na, nb, arg, lse, dflow, S, conf, Z, *common, EPS, radius, WINDOWED=windowed, **scfg,
    )
    gflow = torch.zeros_like(dflow) if grad_flow is None else grad_flow.reshape(b, ns, 2).float()
    gconf = torch.zeros_like(S) if grad_conf is None else grad_conf.reshape(b, ns).float()
    # The kernels' P_ij = exp(l_ij - lse_i) sum to Z_i, not 1. The flow term only sees P_ij / S_i, in which Z_i
    # cancels; the conf term gconf_i P_ij ([j = j*_i] - conf_i) needs P / Z: with conf_i near 1 (small tau),
    # 1 - conf_i cancels, and an unnormalised conf_i (Z_i off by lse's float32 rounding at 1 / tau) made the
    # float32 gradients up to 11x PyTorch's float32 error at tau = 0.01 (3x at 0.05). So gconf / Z and
    # c_i = gconf_i / Z_i * conf_i / Z_i; c_i = sum_j gP_ij P_ij reduces to that as the flow term sums
    # P_ij (x_j - flow_i) over W_i to 0.
    u = gflow / S[..., None]
    gconf = gconf / Z
    # v_i = u_i . (flow_i - x_j*_i)
    coef = torch.stack([na, lse * LOG2E, u[..., 0], u[..., 1], (u * dflow).sum(-1), gconf, gconf * (conf / Z)],
                       dim=1).contiguous()

    grad_fs = new_output(fs3.shape, fs3.dtype, dev)  # row-padded like fs3 / ft3
    grad_ft = new_output(ft3.shape, ft3.dtype, dev)
    args = (*common, 1.0 / tau, EPS, radius)
    fs_cfg, ft_cfg = _grad_cfgs({**device_config(BWD_CONFIGS, fs.dtype, dev), **config}, c)
    wrap_triton(_grad_fs_kernel)[(cdiv(ns, fs_cfg["BLOCK_M"]), cdiv(c, fs_cfg["BLOCK_C"]), b)](
        fs3, ft3, nb, coef, arg, grad_fs, *args, WINDOWED=windowed, **fs_cfg)
    wrap_triton(_grad_ft_kernel)[(cdiv(nt, ft_cfg["BLOCK_N"]), cdiv(c, ft_cfg["BLOCK_C"]), b)](
        fs3, ft3, nb, coef, arg, grad_ft, *args, WINDOWED=windowed, **ft_cfg)
    # contiguous, as the fake kernel of the C++ schema (scc::fused_match_backward) promises: a slice of the
    # row padding would be a strided view
    return grad_fs[..., :ns].contiguous().view(fs.shape), grad_ft[..., :nt].contiguous().view(ft.shape)
