"""Triton fused matching: windowed soft-argmax of softmax_j(correlation(fs, ft) / tau), never writing
the (Ns x Nt) volume.

Forward (FlashAttention-style): a program owns BLOCK_M source cells, streams over target tiles computing
the normalised, ReLU'd correlation with tl.dot, and keeps an online softmax (running max m, sum l and, for
window = -1, the running sums of p * col and p * row) plus a running argmax. For window >= 0 a second
pass visits only the (2 window + 1)^2 cells around each argmax (gathered dot products over C).
Logits are handled in base 2 (exp2) with scale log2(e) / tau; lse is returned in natural log units.

Backward by recomputation: a small kernel recomputes the per-row flow_i, S_i and conf_i from lse, then one
kernel over source blocks accumulates grad_fs and one over target blocks accumulates grad_ft, each
recomputing the logits and probabilities of every tile it visits. Their accumulators are (BLOCK, BLOCK_C)
fp32 tiles, and the channel dimension is split over the grid in BLOCK_C chunks so any C fits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .correlation import dot_tile

EPS = 1e-6  # the correlation eps of reference.fused_match
LOG2E = 1.4426950408889634

# H100 defaults per input dtype, checked free of register spills by tests/test_triton_aot.py. fp32 dots
# run on FMA units ("ieee", no TF32) with operands in registers, so they use thin K slabs (16: the
# smallest K tl.dot accepts on Triton 3.6) and smaller tiles.
FWD_CONFIGS = {
    torch.float32: dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=8, num_stages=2),
    torch.float16: dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3),
    torch.bfloat16: dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3),
}
# Shared by the row-statistics kernel (BLOCK_M, BLOCK_N, BLOCK_K) and the two gradient kernels.
BWD_CONFIGS = {
    torch.float32: dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, BLOCK_C=64, num_warps=8, num_stages=2),
    torch.float16: dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, BLOCK_C=64, num_warps=8, num_stages=2),
    torch.bfloat16: dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, BLOCK_C=64, num_warps=8, num_stages=2),
}


@triton.jit
def _logits2(d, ssa, ssb, scale, eps):
    """Base-2 logits relu(d / (|fs_i| |ft_j| + eps)) * log2(e) / tau, and the pre-ReLU ratio and denominator."""
    n = tl.sqrt(ssa)[:, None] * tl.sqrt(ssb)[None, :] + eps
    r = d / n
    return tl.maximum(r, 0.0) * scale, r, n


@triton.jit
def _window_sums(
    fs_b, ft_b, stride_sc, stride_tc, offs_m, jstar, m2, Ns, Nt, C, wt, scale, eps, radius,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Over the (2 radius + 1)^2 target cells around jstar_i (clipped to the grid): the sums of
    p = exp2(l2_ij - m2_i), p * col_j, p * row_j, and p at jstar_i. Gathered dot products (one target
    cell per source row), cheap next to the streaming pass."""
    mask_m = offs_m < Ns
    offs_k = tl.arange(0, BLOCK_K)
    ht = Nt // wt
    rs = jstar // wt
    cs = jstar % wt
    sp = tl.zeros((BLOCK_M,), dtype=tl.float32)
    spx = tl.zeros((BLOCK_M,), dtype=tl.float32)
    spy = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pstar = tl.zeros((BLOCK_M,), dtype=tl.float32)
    width = 2 * radius + 1
    for o in range(0, width * width):
        dy = o // width - radius
        dx = o % width - radius
        row = rs + dy
        col = cs + dx
        valid = mask_m & (row >= 0) & (row < ht) & (col >= 0) & (col < wt)
        j = row * wt + col
        d = tl.zeros((BLOCK_M,), dtype=tl.float32)
        ssa = tl.zeros((BLOCK_M,), dtype=tl.float32)
        ssb = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, C, BLOCK_K):
            k = k0 + offs_k
            a = tl.load(fs_b + k[:, None] * stride_sc + offs_m[None, :],
                        mask=(k[:, None] < C) & mask_m[None, :], other=0.0).to(tl.float32)
            b = tl.load(ft_b + k[:, None] * stride_tc + j[None, :],
                        mask=(k[:, None] < C) & valid[None, :], other=0.0).to(tl.float32)
            d += tl.sum(a * b, axis=0)
            ssa += tl.sum(a * a, axis=0)
            ssb += tl.sum(b * b, axis=0)
        l2 = tl.maximum(d / (tl.sqrt(ssa) * tl.sqrt(ssb) + eps), 0.0) * scale
        p = tl.where(valid, tl.exp2(l2 - m2), 0.0)
        sp += p
        spx += p * col.to(tl.float32)
        spy += p * row.to(tl.float32)
        pstar = tl.where((dy == 0) & (dx == 0), p, pstar)
    return sp, spx, spy, pstar


@triton.jit
def _fused_match_fwd_kernel(
    fs_ptr, ft_ptr, flow_ptr, conf_ptr, arg_ptr, lse_ptr, Ns, Nt, C, wt,
    stride_sb, stride_sc, stride_tb, stride_tc, scale, eps, window,
    WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < Ns
    fs_b = fs_ptr + pid_b * stride_sb
    ft_b = ft_ptr + pid_b * stride_tb
    m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max (base-2 logits)
    l = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp2(l2 - m)
    sx = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sums of p * col, p * row (window = -1)
    sy = tl.zeros((BLOCK_M,), dtype=tl.float32)
    arg = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for n0 in range(0, Nt, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        d, ssa, ssb = dot_tile(fs_b, ft_b, stride_sc, stride_tc, offs_m, offs_n, Ns, Nt, C,
                               BLOCK_M, BLOCK_N, BLOCK_K)
        l2, _, _ = _logits2(d, ssa, ssb, scale, eps)
        l2 = tl.where(offs_n[None, :] < Nt, l2, float("-inf"))
        tmax = tl.max(l2, axis=1)
        # Strict '>' across tiles and tie_break_left within one keep the first index of the maximum.
        arg = tl.where(tmax > m, tl.argmax(l2, axis=1).to(tl.int32) + n0, arg)
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
        sp, sx, sy, _ = _window_sums(fs_b, ft_b, stride_sc, stride_tc, offs_m, arg, m, Ns, Nt, C, wt,
                                     scale, eps, window, BLOCK_M, BLOCK_K)
    else:
        sp = l
    row_off = pid_b * Ns + offs_m
    tl.store(flow_ptr + 2 * row_off, sx / sp, mask=mask_m)
    tl.store(flow_ptr + 2 * row_off + 1, sy / sp, mask=mask_m)
    tl.store(conf_ptr + row_off, 1.0 / l, mask=mask_m)  # P at the argmax = exp2(m - m) / l
    tl.store(arg_ptr + row_off, arg.to(tl.int64), mask=mask_m)
    tl.store(lse_ptr + row_off, (m + tl.log2(l)) / 1.4426950408889634, mask=mask_m)


@triton.jit
def _row_stats_kernel(
    fs_ptr, ft_ptr, arg_ptr, lse_ptr, flow_ptr, S_ptr, conf_ptr, Ns, Nt, C, wt,
    stride_sb, stride_sc, stride_tb, stride_tc, scale, eps, radius,
    WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Per source row, from lse: flow_i, S_i = sum_{j in W_i} P_ij and conf_i = P_ij* (fp32)."""
    pid_b = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < Ns
    row_off = pid_b * Ns + offs_m
    fs_b = fs_ptr + pid_b * stride_sb
    ft_b = ft_ptr + pid_b * stride_tb
    lse2 = tl.load(lse_ptr + row_off, mask=mask_m, other=0.0) * 1.4426950408889634
    jstar = tl.load(arg_ptr + row_off, mask=mask_m, other=0).to(tl.int32)
    # radius 0 when window = -1: just P at the argmax.
    sp, sx, sy, pstar = _window_sums(fs_b, ft_b, stride_sc, stride_tc, offs_m, jstar, lse2, Ns, Nt, C, wt,
                                     scale, eps, radius, BLOCK_M, BLOCK_K)
    if not WINDOWED:
        sp = tl.zeros((BLOCK_M,), dtype=tl.float32)
        sx = tl.zeros((BLOCK_M,), dtype=tl.float32)
        sy = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for n0 in range(0, Nt, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            d, ssa, ssb = dot_tile(fs_b, ft_b, stride_sc, stride_tc, offs_m, offs_n, Ns, Nt, C,
                                   BLOCK_M, BLOCK_N, BLOCK_K)
            l2, _, _ = _logits2(d, ssa, ssb, scale, eps)
            p = tl.where(offs_n[None, :] < Nt, tl.exp2(l2 - lse2[:, None]), 0.0)
            sp += tl.sum(p, axis=1)
            sx += tl.sum(p * (offs_n % wt).to(tl.float32)[None, :], axis=1)
            sy += tl.sum(p * (offs_n // wt).to(tl.float32)[None, :], axis=1)
    tl.store(flow_ptr + 2 * row_off, sx / sp, mask=mask_m)
    tl.store(flow_ptr + 2 * row_off + 1, sy / sp, mask=mask_m)
    tl.store(S_ptr + row_off, sp, mask=mask_m)
    tl.store(conf_ptr + row_off, pstar, mask=mask_m)


@triton.jit
def _grad_tile(
    fs_b, ft_b, coef_b, lse_b, arg_b, offs_m, offs_n, Ns, Nt, C, wt, stride_sc, stride_tc,
    scale, inv_tau, eps, window,
    WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Recomputes one (BLOCK_M, BLOCK_N) tile and returns A = grad_C * [r > 0] / n, Q = A r, |fs_i|, |ft_j|.

    grad_l_ij = P_ij ([j in W_i] (u_i . x_j - v_i) + gconf_i [j = j*_i] - c_i), grad_C = grad_l / tau,
    with u_i = grad_flow_i / S_i, v_i = u_i . flow_i, c_i = gconf_i conf_i read from coef (5, Ns)."""
    mask_m = offs_m < Ns
    mask_n = offs_n < Nt
    d, ssa, ssb = dot_tile(fs_b, ft_b, stride_sc, stride_tc, offs_m, offs_n, Ns, Nt, C,
                           BLOCK_M, BLOCK_N, BLOCK_K)
    l2, r, n = _logits2(d, ssa, ssb, scale, eps)
    lse2 = tl.load(lse_b + offs_m, mask=mask_m, other=0.0) * 1.4426950408889634
    P = tl.where(mask_m[:, None] & mask_n[None, :], tl.exp2(l2 - lse2[:, None]), 0.0)
    ux = tl.load(coef_b + offs_m, mask=mask_m, other=0.0)
    uy = tl.load(coef_b + Ns + offs_m, mask=mask_m, other=0.0)
    v = tl.load(coef_b + 2 * Ns + offs_m, mask=mask_m, other=0.0)
    gconf = tl.load(coef_b + 3 * Ns + offs_m, mask=mask_m, other=0.0)
    c = tl.load(coef_b + 4 * Ns + offs_m, mask=mask_m, other=0.0)
    jstar = tl.load(arg_b + offs_m, mask=mask_m, other=0).to(tl.int32)
    col = offs_n % wt
    row = offs_n // wt
    gp = ux[:, None] * col.to(tl.float32)[None, :] + uy[:, None] * row.to(tl.float32)[None, :] - v[:, None]
    if WINDOWED:
        inside = (tl.abs(row[None, :] - (jstar // wt)[:, None]) <= window) & \
                 (tl.abs(col[None, :] - (jstar % wt)[:, None]) <= window)
        gp = tl.where(inside, gp, 0.0)
    gp += tl.where(offs_n[None, :] == jstar[:, None], gconf[:, None], 0.0)
    A = tl.where(r > 0, P * (gp - c[:, None]) * inv_tau, 0.0) / n
    return A, A * r, tl.sqrt(ssa), tl.sqrt(ssb)


@triton.jit
def _grad_fs_kernel(
    fs_ptr, ft_ptr, coef_ptr, lse_ptr, arg_ptr, gfs_ptr, Ns, Nt, C, wt,
    stride_sb, stride_sc, stride_tb, stride_tc, scale, inv_tau, eps, window,
    WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad_fs_i = sum_j A_ij ft_j - fs_i / a_i sum_j Q_ij b_j for BLOCK_M rows and BLOCK_C channels;
    grad_fs has the layout of fs."""
    pid_b = tl.program_id(2).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < Ns
    mask_c = offs_c < C
    fs_b = fs_ptr + pid_b * stride_sb
    ft_b = ft_ptr + pid_b * stride_tb
    coef_b = coef_ptr + pid_b * 5 * Ns
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    rowq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    na = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, Nt, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        A, Q, na, nb = _grad_tile(fs_b, ft_b, coef_b, lse_ptr + pid_b * Ns, arg_ptr + pid_b * Ns, offs_m, offs_n,
                                  Ns, Nt, C, wt, stride_sc, stride_tc, scale, inv_tau, eps, window,
                                  WINDOWED, BLOCK_M, BLOCK_N, BLOCK_K)
        ftc = tl.load(ft_b + offs_c[:, None] * stride_tc + offs_n[None, :],
                      mask=mask_c[:, None] & (offs_n[None, :] < Nt), other=0.0)  # (BLOCK_C, BLOCK_N)
        acc = tl.dot(A.to(ftc.dtype), tl.trans(ftc), acc=acc, input_precision="ieee")
        rowq += tl.sum(Q * nb[None, :], axis=1)
    fsc = tl.load(fs_b + offs_c[None, :] * stride_sc + offs_m[:, None],
                  mask=mask_c[None, :] & mask_m[:, None], other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_C)
    acc -= fsc * (rowq / tl.where(na > 0, na, 1.0))[:, None]  # a_i = 0 gives d = r = Q = 0: the term drops
    tl.store(gfs_ptr + pid_b * stride_sb + offs_c[None, :] * stride_sc + offs_m[:, None],
             acc.to(gfs_ptr.dtype.element_ty), mask=mask_c[None, :] & mask_m[:, None])


@triton.jit
def _grad_ft_kernel(
    fs_ptr, ft_ptr, coef_ptr, lse_ptr, arg_ptr, gft_ptr, Ns, Nt, C, wt,
    stride_sb, stride_sc, stride_tb, stride_tc, scale, inv_tau, eps, window,
    WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad_ft_j = sum_i A_ij fs_i - ft_j / b_j sum_i Q_ij a_i for BLOCK_N target cells and BLOCK_C
    channels; grad_ft has the layout of ft."""
    pid_b = tl.program_id(2).to(tl.int64)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_n = offs_n < Nt
    mask_c = offs_c < C
    fs_b = fs_ptr + pid_b * stride_sb
    ft_b = ft_ptr + pid_b * stride_tb
    coef_b = coef_ptr + pid_b * 5 * Ns
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    colq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    nb = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, Ns, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        A, Q, na, nb = _grad_tile(fs_b, ft_b, coef_b, lse_ptr + pid_b * Ns, arg_ptr + pid_b * Ns, offs_m, offs_n,
                                  Ns, Nt, C, wt, stride_sc, stride_tc, scale, inv_tau, eps, window,
                                  WINDOWED, BLOCK_M, BLOCK_N, BLOCK_K)
        fsc = tl.load(fs_b + offs_c[:, None] * stride_sc + offs_m[None, :],
                      mask=mask_c[:, None] & (offs_m[None, :] < Ns), other=0.0)  # (BLOCK_C, BLOCK_M)
        acc = tl.dot(tl.trans(A).to(fsc.dtype), tl.trans(fsc), acc=acc, input_precision="ieee")
        colq += tl.sum(Q * na[:, None], axis=0)
    ftc = tl.load(ft_b + offs_c[None, :] * stride_tc + offs_n[:, None],
                  mask=mask_c[None, :] & mask_n[:, None], other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_C)
    acc -= ftc * (colq / tl.where(nb > 0, nb, 1.0))[:, None]  # b_j = 0 gives d = r = Q = 0: the term drops
    tl.store(gft_ptr + pid_b * stride_tb + offs_c[None, :] * stride_tc + offs_n[:, None],
             acc.to(gft_ptr.dtype.element_ty), mask=mask_c[None, :] & mask_n[:, None])


def _flat(fs: torch.Tensor, ft: torch.Tensor):
    return fs.contiguous().flatten(2), ft.contiguous().flatten(2)


def _kernel_cfg(cfg: dict, keys: tuple[str, ...]) -> dict:
    return {k: cfg[k] for k in keys + ("num_warps", "num_stages")}


def fused_match_fwd(fs: torch.Tensor, ft: torch.Tensor, tau: float, window: int = -1, **config):
    """fs (B, C, hs, ws), ft (B, C, ht, wt) -> flow (B, hs, ws, 2) fp32, conf (B, hs, ws) fp32,
    argmax (B, hs, ws) int64, lse (B, Ns) fp32. ``config`` overrides entries of FWD_CONFIGS."""
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    fs3, ft3 = _flat(fs, ft)
    ns, nt = hs * ws, ht * wt
    cfg = {**FWD_CONFIGS[fs.dtype], **config}
    dev = fs.device
    flow = torch.empty((b, hs, ws, 2), dtype=torch.float32, device=dev)
    conf = torch.empty((b, hs, ws), dtype=torch.float32, device=dev)
    arg = torch.empty((b, hs, ws), dtype=torch.int64, device=dev)
    lse = torch.empty((b, ns), dtype=torch.float32, device=dev)
    _fused_match_fwd_kernel[(triton.cdiv(ns, cfg["BLOCK_M"]), b)](
        fs3, ft3, flow, conf, arg, lse, ns, nt, c, wt, fs3.stride(0), fs3.stride(1), ft3.stride(0), ft3.stride(1),
        LOG2E / tau, EPS, max(window, 0), WINDOWED=window >= 0, **cfg,
    )
    return flow, conf, arg, lse


def fused_match_bwd(grad_flow, grad_conf, fs, ft, tau: float, window: int, argmax, lse, **config):
    """Gradients of fused_match_fwd's flow and conf w.r.t. fs and ft (input dtype), by recomputation.
    grad_flow / grad_conf may be None (no gradient). ``config`` overrides entries of BWD_CONFIGS."""
    b, c, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    fs3, ft3 = _flat(fs, ft)
    ns, nt = hs * ws, ht * wt
    cfg = {**BWD_CONFIGS[fs.dtype], **config}
    dev = fs.device
    windowed = window >= 0
    arg = argmax.contiguous()
    lse = lse.contiguous()
    common = (ns, nt, c, wt, fs3.stride(0), fs3.stride(1), ft3.stride(0), ft3.stride(1), LOG2E / tau)

    flow = torch.empty((b, ns, 2), dtype=torch.float32, device=dev)
    S = torch.empty((b, ns), dtype=torch.float32, device=dev)
    conf = torch.empty((b, ns), dtype=torch.float32, device=dev)
    _row_stats_kernel[(triton.cdiv(ns, cfg["BLOCK_M"]), b)](
        fs3, ft3, arg, lse, flow, S, conf, *common, EPS, max(window, 0), WINDOWED=windowed,
        **_kernel_cfg(cfg, ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
    )
    gflow = torch.zeros_like(flow) if grad_flow is None else grad_flow.reshape(b, ns, 2).float()
    gconf = torch.zeros_like(S) if grad_conf is None else grad_conf.reshape(b, ns).float()
    u = gflow / S[..., None]
    # c_i = sum_j gP_ij P_ij reduces to gconf_i conf_i: the flow term sums P_ij (x_j - flow_i) over W_i = 0.
    coef = torch.stack([u[..., 0], u[..., 1], (u * flow).sum(-1), gconf, gconf * conf], dim=1).contiguous()

    grad_fs = torch.empty_like(fs3)
    grad_ft = torch.empty_like(ft3)
    args = (*common, 1.0 / tau, EPS, max(window, 0))
    kcfg = _kernel_cfg(cfg, ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_C"))
    c_tiles = triton.cdiv(c, cfg["BLOCK_C"])
    _grad_fs_kernel[(triton.cdiv(ns, cfg["BLOCK_M"]), c_tiles, b)](
        fs3, ft3, coef, lse, arg, grad_fs, *args, WINDOWED=windowed, **kcfg)
    _grad_ft_kernel[(triton.cdiv(nt, cfg["BLOCK_N"]), c_tiles, b)](
        fs3, ft3, coef, lse, arg, grad_ft, *args, WINDOWED=windowed, **kcfg)
    return grad_fs.reshape(fs.shape), grad_ft.reshape(ft.shape)
