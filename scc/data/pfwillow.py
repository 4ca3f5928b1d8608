"""PF-WILLOW (Ham et al., CVPR 2016): 900 ordered test pairs in 10 sub-classes, 10 keypoints each.

Layout (as in ../shared/data/pf-willow): ``test_pairs.csv`` with columns imageA, imageB, XA1..XA10,
YA1..YA10, XB1..XB10, YB1..YB10 (paths relative to the root), images ``PF-dataset-WILLOW/<sub>/<name>.png``.
There is no box annotation: PCK uses ``bbox-kp``, the box spanned by the target's keypoints.
The category of a pair is its sub-class folder (car(G), ..., winebottle(woC)).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .common import check_square, load_image, pair_item

N_KPS = 10


class PFWillow(Dataset):
    """``square``: resize both images to img_size x img_size (the field's 240 / 256 px protocols) instead of
    keeping the aspect; keypoints are scaled per axis."""

    pckthres_kind = "bbox-kp"  # no object boxes: the box of the valid target keypoints (data README)

    def __init__(self, root: str, img_size: int | None = 320, pairs_file: str = "test_pairs.csv",
                 square: bool = False):
        check_square(square, img_size)
        self.square = square
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"scc: PF-WILLOW folder not found: {self.root}")
        csv_path = self.root / pairs_file
        if not csv_path.is_file():
            raise FileNotFoundError(f"scc: PF-WILLOW pair list not found: {csv_path}")
        self.img_size = img_size
        self.pairs = self._read(csv_path)

    @staticmethod
    def _read(path: Path) -> list[tuple]:
        expected = ["imageA", "imageB"] + [f"{c}{s}{i}" for s in "AB" for c in "XY" for i in range(1, N_KPS + 1)]
        pairs = []
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel starts its CSVs with a BOM
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != expected:
                raise ValueError(f"scc: {path}: header must be the 42-column PF-WILLOW layout "
                                 f"(imageA,imageB,XA1..YB10), got {header}")
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(expected):
                    raise ValueError(f"scc: {path}:{line}: expected {len(expected)} columns, got {len(row)}")
                try:
                    v = torch.tensor([float(x) for x in row[2:]]).view(4, N_KPS)
                except ValueError as exc:
                    raise ValueError(f"scc: {path}:{line}: non-numeric keypoint coordinate ({exc})") from exc
                if not torch.isfinite(v).all():
                    raise ValueError(f"scc: {path}:{line}: keypoint coordinates must be finite")
                src_kps = torch.stack([v[0], v[1]], dim=1)
                trg_kps = torch.stack([v[2], v[3]], dim=1)
                pairs.append((row[0], row[1], src_kps, trg_kps))
        if not pairs:
            raise ValueError(f"scc: {path} lists no pairs")
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int) -> dict:
        a, b, src_kps, trg_kps = self.pairs[idx]
        category = Path(a).parent.name
        return pair_item(load_image(self.root / a), load_image(self.root / b), src_kps, trg_kps, category,
                         a, b, self.img_size, pckthres_kind=self.pckthres_kind, square=self.square)
