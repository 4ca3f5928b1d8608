"""TSS (Taniai et al., CVPR 2016): image pairs with dense flow ground truth and foreground masks.

Layout: ``<root>/<subset>/<pair>/{image1.png, image2.png, flow1.flo, flow2.flo, mask1.png, mask2.png}``
(subsets FG3DCar, JODS, PASCAL); flow1 maps image1 pixels into image2 (x2 = x1 + flow), flow2 the
reverse. Both directions are evaluated. PCK uses foreground pixels of the source on a regular grid
(``grid`` px apart) as keypoints and the ``img`` threshold (alpha = 0.05 in the field).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .common import check_square, load_image, pair_item

FLO_MAGIC = 202021.25


def read_flo(path: Path) -> np.ndarray:
    """Middlebury .flo -> (H, W, 2) float32."""
    if not path.is_file():
        raise FileNotFoundError(f"scc: flow file not found: {path}")
    data = path.read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], np.float32)[0] != FLO_MAGIC:
        raise ValueError(f"scc: {path} is not a .flo file (bad magic number)")
    w, h = np.frombuffer(data[4:12], np.int32)
    if w <= 0 or h <= 0 or len(data) != 12 + 8 * int(w) * int(h):
        raise ValueError(f"scc: {path}: size {w}x{h} does not match its {len(data)} bytes")
    return np.frombuffer(data[12:], np.float32).reshape(int(h), int(w), 2).copy()


class TSS(Dataset):
    """``square``: resize both images to img_size x img_size instead of keeping the aspect."""

    pckthres_kind = "img"

    def __init__(self, root: str, img_size: int | None = 320, grid: int = 8, square: bool = False):
        check_square(square, img_size)
        self.square = square
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"scc: TSS folder not found: {self.root}")
        self.img_size, self.grid = img_size, grid
        dirs = sorted(p.parent for p in self.root.glob("*/*/image1.png"))
        if not dirs:
            raise ValueError(f"scc: {self.root} holds no TSS pairs (<subset>/<pair>/image1.png)")
        self.items = [(d, 1) for d in dirs] + [(d, 2) for d in dirs]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        d, k = self.items[idx]
        o = 2 if k == 1 else 1
        src, trg = load_image(d / f"image{k}.png"), load_image(d / f"image{o}.png")
        flow = read_flo(d / f"flow{k}.flo")
        mpath = d / f"mask{k}.png"
        if not mpath.is_file():
            raise FileNotFoundError(f"scc: mask not found: {mpath}")
        mask = np.asarray(Image.open(mpath).convert("L")) > 127
        if flow.shape[:2] != mask.shape or mask.shape != (src.size[1], src.size[0]):
            raise ValueError(f"scc: {d}: image{k}, flow{k} and mask{k} sizes differ")
        ys, xs = np.mgrid[self.grid // 2: mask.shape[0]: self.grid, self.grid // 2: mask.shape[1]: self.grid]
        keep = mask[ys, xs] & np.isfinite(flow[ys, xs]).all(-1) & (np.abs(flow[ys, xs]) < 1e9).all(-1)
        xs, ys = xs[keep], ys[keep]
        if len(xs) == 0:
            raise ValueError(f"scc: {d}: no foreground pixel with valid flow on the {self.grid}-px grid")
        src_kps = torch.tensor(np.stack([xs, ys], 1), dtype=torch.float32)
        trg_kps = src_kps + torch.from_numpy(flow[ys, xs])
        return pair_item(src, trg, src_kps, trg_kps, d.parent.name, f"{d.name}/image{k}.png", f"{d.name}/image{o}.png",
                         self.img_size, pckthres_kind=self.pckthres_kind, square=self.square)
