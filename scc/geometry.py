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
