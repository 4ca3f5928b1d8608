"""Pixel <-> feature-cell coordinates and keypoint transfer through a flow field.

A feature map at stride s has cell i covering pixels [s i, s (i + 1)), centred at s (i + 0.5) - 0.5
(pixel centres at integers): cell(x) = (x + 0.5) / s - 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_to_cell(xy: torch.Tensor, stride: float) -> torch.Tensor:
    return (xy + 0.5) / stride - 0.5


def cell_to_pixel(uv: torch.Tensor, stride: float) -> torch.Tensor:
    return (uv + 0.5) * stride - 0.5


def sample_flow(flow: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of a flow field at source cell coordinates.

    flow: (B, hs, ws, 2) target cells (col, row) per source cell; uv: (B, N, 2) source cells (col, row)
    -> (B, N, 2) target cells. Coordinates outside the grid are clamped to the border cells.
    """
    _, hs, ws, _ = flow.shape
    gx = uv[..., 0] / max(ws - 1, 1) * 2 - 1 if ws > 1 else torch.zeros_like(uv[..., 0])
    gy = uv[..., 1] / max(hs - 1, 1) * 2 - 1 if hs > 1 else torch.zeros_like(uv[..., 1])
    grid = torch.stack([gx, gy], dim=-1)[:, :, None, :].to(flow.dtype)  # (B, N, 1, 2)
    out = F.grid_sample(flow.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, :, :, 0].permute(0, 2, 1)


def transfer_keypoints(flow: torch.Tensor, src_kps: torch.Tensor, stride: float) -> torch.Tensor:
    """src_kps: (B, N, 2) source pixels (x, y) -> (B, N, 2) predicted target pixels."""
    return cell_to_pixel(sample_flow(flow, pixel_to_cell(src_kps, stride)), stride)


def bilinear_weights(uv: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear interpolation weights of points over a grid: uv (B, N, 2) cells (col, row), clamped to
    the grid -> (B, N, h*w), each row summing to 1 over the (up to) 4 surrounding cells."""
    u = uv[..., 0].clamp(0, w - 1)
    v = uv[..., 1].clamp(0, h - 1)
    u0, v0 = u.floor().clamp(max=max(w - 2, 0)), v.floor().clamp(max=max(h - 2, 0))
    fu, fv = u - u0, v - v0
    out = uv.new_zeros(*uv.shape[:-1], h * w)
    for du, dv, wgt in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        cu, cv = (u0 + du).clamp(max=w - 1), (v0 + dv).clamp(max=h - 1)
        out.scatter_add_(-1, (cv * w + cu).long()[..., None], wgt[..., None])
    return out
