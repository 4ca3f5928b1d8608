"""Pure-PyTorch reference implementations of every scc op.

These read like the math in METHOD.md ("The kernels: op contracts") and are the ground truth of
the tests: they run in float64, differentiate with plain autograd, and favour clarity over speed
(several passes, full intermediate volumes). Shapes use einops-style axis names:
``fs: (B, C, hs, ws)``, ``corr: (B, hs, ws, ht, wt)``, flat views ``(B, Ns, Nt)``.

Grid coordinates are in cell units at the feature stride; x_i = (col, row) of cell i.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange


def _flat(corr: torch.Tensor) -> torch.Tensor:
    """(B, hs, ws, ht, wt) or (B, Ns, Nt) -> (B, Ns, Nt)."""
    if corr.dim() == 5:
        return rearrange(corr, "b hs ws ht wt -> b (hs ws) (ht wt)")
    return corr


def grid_coords(h: int, w: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """x_j = (col, row) of every cell of an h x w grid, row-major: (h*w, 2)."""
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=device), torch.arange(w, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)


def correlation(fs: torch.Tensor, ft: torch.Tensor, normalize: bool = True, relu: bool = True, eps: float = 1e-6):
    """C_ij = relu(<fs_i, ft_j> / (|fs_i| |ft_j| + eps)).

    fs: (B, C, hs, ws), ft: (B, C, ht, wt) -> corr: (B, hs, ws, ht, wt).
    """
    b, _, hs, ws = fs.shape
    ht, wt = ft.shape[-2:]
    dot = torch.einsum("bcn,bcm->bnm", fs.flatten(2), ft.flatten(2))
    if normalize:
        ns = fs.flatten(2).norm(dim=1)  # (B, Ns)
        nt = ft.flatten(2).norm(dim=1)  # (B, Nt)
        dot = dot / (ns[:, :, None] * nt[:, None, :] + eps)
    if relu:
        dot = dot.clamp(min=0)
    return dot.reshape(b, hs, ws, ht, wt)


def mutual_nn(corr: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """C'_ij = C_ij * (C_ij / (max_i' C_i'j + eps)) * (C_ij / (max_j' C_ij' + eps)).

    corr: (B, hs, ws, ht, wt) or (B, Ns, Nt) -> same shape.
    """
    c = _flat(corr)
    max_over_src = c.max(dim=1, keepdim=True).values  # (B, 1, Nt)
    max_over_trg = c.max(dim=2, keepdim=True).values  # (B, Ns, 1)
    out = c * (c / (max_over_src + eps)) * (c / (max_over_trg + eps))
    return out.reshape(corr.shape)


def conv4d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """4D convolution, zero padding k//2 on all four axes, stride 1.

    x: (B, Cin, hs, ws, ht, wt), weight: (Cout, Cin, k, k, k, k), bias: (Cout,) -> (B, Cout, hs, ws, ht, wt).
    out[b, o, p] = bias[o] + sum_{c, q in [0,k)^4} weight[o, c, q] * x[b, c, p + q - k//2].
    """
    k = weight.shape[-1]
    p = k // 2
    _, _, h1, w1, h2, w2 = x.shape
    xp = F.pad(x, (p, p) * 4)
    out = 0
    for q1 in range(k):
        for q2 in range(k):
            for q3 in range(k):
                for q4 in range(k):
                    patch = xp[:, :, q1 : q1 + h1, q2 : q2 + w1, q3 : q3 + h2, q4 : q4 + w2]
                    out = out + torch.einsum("bcijkl,oc->boijkl", patch, weight[:, :, q1, q2, q3, q4])
    if bias is not None:
        out = out + bias[None, :, None, None, None, None]
    return out


def gaussian_taps(sigma: float, dtype=torch.float64, device=None, max_rho: int | None = None) -> torch.Tensor:
    """K(e) = exp(-|e|^2 / (2 sigma^2)) on e in [-rho, rho]^2, rho = ceil(2 sigma) (at most max_rho):
    (2rho+1, 2rho+1)."""
    rho = math.ceil(2 * sigma) if max_rho is None else min(math.ceil(2 * sigma), max_rho)
    u = torch.arange(-rho, rho + 1, dtype=dtype, device=device) / sigma  # not / (2 sigma^2): it underflows to 0
    return torch.exp(-0.5 * (u[:, None] ** 2 + u[None, :] ** 2))


def _shift(v: torch.Tensor, dims: tuple[int, ...], offsets: tuple[int, ...]) -> torch.Tensor:
    """out[..., x, ...] = v[..., x + off, ...] along each dim, zero where x + off leaves the grid."""
    out = v
    for dim, off in zip(dims, offsets):
        n = out.shape[dim]
        if off == 0:
            continue
        if abs(off) >= n:
            return torch.zeros_like(v)
        pad = [0, 0] * (out.dim() - dim - 1) + ([0, off] if off > 0 else [-off, 0])
        out = F.pad(out, pad)
        out = out.narrow(dim, off if off > 0 else 0, n)
    return out


def masked_vote(
    corr: torch.Tensor,
    mask_s: torch.Tensor,
    mask_t: torch.Tensor,
    mode: str = "local",
    radius: int = 2,
    sigma: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Masked correspondence voting; g is divided by its maximum over each batch item's volume (+ eps).

    corr: (B, hs, ws, ht, wt), mask_s: (B, hs, ws), mask_t: (B, ht, wt) -> g: (B, hs, ws, ht, wt).
    w_ij = corr_ij * mask_s_i * mask_t_j; K(e) = exp(-|e|^2 / (2 sigma^2)) for e in [-rho, rho]^2.
      local:  g_ij = sum_{d in [-r,r]^2} sum_{e in [-rho,rho]^2} w_(i+d),(j+d+e) K(e)
      global: V(d) = sum_ij w_ij K(d - (x_j - x_i)),  g_ij = V(x_j - x_i)
    """
    b, hs, ws, ht, wt = corr.shape
    w = corr * mask_s[:, :, :, None, None] * mask_t[:, None, None, :, :]
    # Offsets d beyond the source grid and taps e farther than two cells of the grids can be apart only meet
    # zeros: clamped (the same result; a huge radius or sigma costs nothing), as in the kernels (csrc/common.h).
    radius = min(radius, max(hs, ws) - 1)
    kern = gaussian_taps(sigma, corr.dtype, corr.device, max_rho=max(hs, ws) + max(ht, wt) - 2)
    rho = (kern.shape[0] - 1) // 2
    if mode == "local":
        g = torch.zeros_like(w)
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                for ey in range(-rho, rho + 1):
                    for ex in range(-rho, rho + 1):
                        shifted = _shift(w, (1, 2, 3, 4), (dy, dx, dy + ey, dx + ex))
                        g = g + kern[ey + rho, ex + rho] * shifted
    elif mode == "global":
        # Offsets d = x_j - x_i: rows in [-(hs-1), ht-1], cols in [-(ws-1), wt-1].
        src = grid_coords(hs, ws, torch.long, corr.device)  # (Ns, 2) (col, row)
        trg = grid_coords(ht, wt, torch.long, corr.device)
        off = trg[None, :, :] - src[:, None, :]  # (Ns, Nt, 2)
        oy = off[..., 1] + (hs - 1)
        ox = off[..., 0] + (ws - 1)
        hh, hw = hs + ht - 1, ws + wt - 1
        index = (oy * hw + ox).reshape(-1)  # (Ns*Nt,)
        hist = torch.zeros(b, hh * hw, dtype=corr.dtype, device=corr.device)
        hist = hist.index_add(1, index, w.reshape(b, -1))
        hist = hist.reshape(b, 1, hh, hw)
        blurred = F.conv2d(hist, kern[None, None], padding=rho)  # zero outside the histogram
        g = blurred.reshape(b, -1)[:, index].reshape(corr.shape)
    else:
        raise ValueError(f"scc: `mode` must be 'local' or 'global', got {mode!r}")
    peak = g.reshape(b, -1).max(dim=1).values
    return g / (peak[:, None, None, None, None] + eps)


def calibrate(
    corr: torch.Tensor, g: torch.Tensor, lam: float, tau: float, bin_logit: torch.Tensor | float, eps: float = 1e-6
):
    """Calibrated match probabilities with an explicit "no match" bin.

    corr, g: (B, hs, ws, ht, wt) or (B, Ns, Nt) -> P: (B, Ns, Nt), P_unmatched: (B, Ns).
    l_ij = (log(corr_ij + eps) + lam * log(g_ij + eps)) / tau; softmax over j together with one
    extra logit ``bin_logit`` per row (it enters as is, on the same scale as l_ij).
    """
    c, gg = _flat(corr), _flat(g)
    logits = (torch.log(c + eps) + lam * torch.log(gg + eps)) / tau
    bin_col = torch.as_tensor(bin_logit, dtype=logits.dtype, device=logits.device).expand(*logits.shape[:2], 1)
    probs = torch.softmax(torch.cat([logits, bin_col], dim=2), dim=2)
    return probs[:, :, :-1], probs[:, :, -1]


def soft_argmax(P: torch.Tensor, ht: int, wt: int, window: int = -1, beta: float = 1.0):
    """Windowed soft-argmax of match probabilities.

    P: (B, Ns, Nt) -> flow: (B, Ns, 2), conf: (B, Ns); or P: (B, hs, ws, ht, wt) -> (B, hs, ws, 2), (B, hs, ws).
    j* = argmax_j P_ij; flow_i = sum_{j in W} P_ij^beta x_j / sum_{j in W} P_ij^beta over the
    (2 window + 1)^2 cells around j* (window = -1: all cells); conf_i = P_ij*. flow is (col, row).
    W is clipped at the grid's edges (no padding, no wrap-around): for j* within `window` cells of an edge it
    holds only the cells inside the grid, fewer than (2 window + 1)^2, so flow_i leans toward the interior.
    Where the window's mass is 0 (P underflowed), flow_i = x_j* (no gradient); a NaN mass stays NaN.
    """
    lead = P.shape[:-2] if P.dim() == 5 else P.shape[:-1]
    p = _flat(P)
    conf, arg = p.max(dim=2)
    x = grid_coords(ht, wt, p.dtype, p.device)  # (Nt, 2)
    if window < 0:
        weight = p**beta
    else:
        window = min(window, max(ht, wt))  # the same cells (it covers the grid); keeps the comparison in int64
        row, col = arg // wt, arg % wt
        within = ((x[None, None, :, 1] - row[..., None]).abs() <= window) & (
            (x[None, None, :, 0] - col[..., None]).abs() <= window
        )
        # cells outside the window take no part, not even through a NaN gradient (0 * NaN, or 0 * inf for
        # P = 0 with beta < 1): selected, never multiplied by 0
        weight = torch.where(within, torch.where(within, p, torch.ones_like(p)) ** beta, torch.zeros_like(p))
    mass = weight.sum(dim=2, keepdim=True)
    empty = mass == 0  # not `mass > 0`: a NaN mass (NaN in P) must stay NaN, not become the argmax cell
    flow = torch.einsum("bnm,mk->bnk", weight, x) / torch.where(empty, torch.ones_like(mass), mass)
    # A window whose mass is 0 (P underflowed everywhere) falls back to the argmax cell.
    flow = torch.where(empty, x[arg], flow)
    return flow.reshape(*lead, 2), conf.reshape(lead)


def fused_match(fs: torch.Tensor, ft: torch.Tensor, tau: float, window: int = -1):
    """soft_argmax(softmax_j(correlation(fs, ft) / tau)) with the volume materialised.

    fs: (B, C, hs, ws), ft: (B, C, ht, wt) -> flow: (B, hs, ws, 2), conf: (B, hs, ws), argmax: (B, hs, ws) int64.
    """
    corr = correlation(fs, ft)
    b, hs, ws, ht, wt = corr.shape
    P = torch.softmax(_flat(corr) / tau, dim=2)
    flow, conf = soft_argmax(P, ht, wt, window)
    arg = P.argmax(dim=2)
    return flow.reshape(b, hs, ws, 2), conf.reshape(b, hs, ws), arg.reshape(b, hs, ws)
