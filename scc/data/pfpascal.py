"""PF-PASCAL (Ham et al., TPAMI 2018) in its standard layout (the one DHPF/NC-Net read):

    <root>/{trn,val,test}_pairs.csv   source_image,target_image,class[,flip]   (class: 1-based VOC index)
    <root>/JPEGImages/<name>.jpg
    <root>/Annotations/<class name>/<name>.mat   with `kps` (N, 2; NaN rows = invisible) and `bbox` (1, 4)

Keypoints invisible in either image are dropped (as the field does). The field's threshold is ``img``:
alpha * the longer side of the target image as evaluated. By default the images keep their aspect (longer
side img_size), as NC-Net and WeakAlign evaluate; DHPF, CHM and CATs squash both images to 240 x 240
(``square=True, img_size=240``), where the same alpha * 240 is alpha * W across and alpha * H down in the
original image, stricter along the shorter side: compare with their numbers only under that setting. The
evaluator also takes ``bbox`` (target box).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import check_square, load_image, pair_item

CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def read_mat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    if not path.is_file():
        raise FileNotFoundError(f"scc: annotation not found: {path}")
    try:
        data = loadmat(str(path))
    except Exception as exc:
        raise ValueError(f"scc: corrupt annotation {path}: {exc}") from exc
    if key not in data:
        raise ValueError(f"scc: annotation {path} has no `{key}` field (fields: {sorted(k for k in data if not k.startswith('__'))})")
    return np.asarray(data[key], dtype=np.float64)


class PFPascal(Dataset):
    """``square``: resize both images to img_size x img_size (DHPF/CHM evaluate PF-PASCAL at 240 x 240)."""

    pckthres_kind = "img"  # the field's PF-PASCAL protocol: alpha * max side of the image as evaluated

    def __init__(self, root: str, split: str = "test", img_size: int | None = 320, square: bool = False):
        check_square(square, img_size)
        self.square = square
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"scc: PF-PASCAL folder not found: {self.root}")
        path = self.root / f"{split}_pairs.csv"
        if not path.is_file():
            raise FileNotFoundError(f"scc: PF-PASCAL pair list not found: {path}")
        self.img_size = img_size
        self.pairs = []
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel starts its CSVs with a BOM
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or len(header) < 3:
                raise ValueError(f"scc: {path}: expected a header source_image,target_image,class[,flip]")
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    cls = int(float(row[2])) - 1
                except (ValueError, IndexError) as exc:
                    raise ValueError(f"scc: {path}:{line}: malformed row {row}") from exc
                if not 0 <= cls < len(CLASSES):
                    raise ValueError(f"scc: {path}:{line}: class {cls + 1} outside 1..{len(CLASSES)}")
                self.pairs.append((Path(row[0]).name, Path(row[1]).name, CLASSES[cls]))
        if not self.pairs:
            raise ValueError(f"scc: {path} lists no pairs")

    def __len__(self) -> int:
        return len(self.pairs)

    def _ann(self, name: str, cls: str):
        ann = self.root / "Annotations" / cls / (Path(name).stem + ".mat")
        kps = read_mat(ann, "kps")
        box = read_mat(ann, "bbox").reshape(-1)
        if kps.ndim != 2 or kps.shape[1] != 2 or box.shape[0] != 4:
            raise ValueError(f"scc: annotation {ann}: `kps` must be (N, 2) and `bbox` 4 numbers, got "
                             f"{kps.shape} and {box.shape}")
        return torch.from_numpy(kps).float(), torch.from_numpy(box).float()

    def __getitem__(self, idx: int) -> dict:
        src, trg, cls = self.pairs[idx]
        (skp, sbox), (tkp, tbox) = self._ann(src, cls), self._ann(trg, cls)
        if skp.shape != tkp.shape:
            raise ValueError(f"scc: PF-PASCAL pair {src} -> {trg}: keypoint counts differ ({len(skp)} vs {len(tkp)})")
        keep = ~(torch.isnan(skp).any(1) | torch.isnan(tkp).any(1))
        if not keep.any():
            raise ValueError(f"scc: PF-PASCAL pair {src} -> {trg} has no keypoint visible in both images")
        return pair_item(load_image(self.root / "JPEGImages" / src), load_image(self.root / "JPEGImages" / trg),
                         skp[keep], tkp[keep], cls, src, trg, self.img_size, sbox, tbox, pckthres_kind=self.pckthres_kind,
                         square=self.square)
