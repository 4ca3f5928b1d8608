"""SPair-71k layout (Min et al., 2019), which SC-ImageNet pseudo-labels are written in too:

    <root>/Layout/large/{trn,val,test}.txt         lines `<idx>-<src_stem>-<trg_stem>:<category>`
    <root>/JPEGImages/<category>/<stem>.jpg
    <root>/PairAnnotation/<split>/<entry>.json      src_kps, trg_kps ([x, y] lists, equal length <= 40),
                                                    src_bndbox, trg_bndbox ([x1, y1, x2, y2]), category, ...
The standard threshold is ``bbox`` (target box).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .common import MAX_KPS, check_square, image_size, load_image, pair_item, to_square_tensor


def parse_entry(entry: str) -> tuple[str, str, str]:
    """`<idx>-<src>-<trg>:<category>` -> (src stem, trg stem, category)."""
    try:
        left, category = entry.split(":")
        _, src, trg = left.split("-")
    except ValueError as exc:
        raise ValueError(f"scc: malformed SPair-71k layout entry {entry!r} (expected <idx>-<src>-<trg>:<category>)") from exc
    return src, trg, category


def _finite_numbers(v, n: int) -> bool:
    """v is a list of n finite numbers (JSON reads NaN and Infinity as floats; true / false are not numbers)."""
    return (isinstance(v, list) and len(v) == n
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))


class SPair(Dataset):
    """``square``: resize images to img_size x img_size (training batches; keypoints scaled per axis).
    A training feature cache sets ``with_images = False``: items then skip decoding the images."""

    with_images: bool = True
    pckthres_kind = "bbox"  # the annotated target box (the field's SPair-71k protocol)

    def __init__(self, root: str, split: str = "test", img_size: int | None = 320, square: bool = False):
        check_square(square, img_size)
        self.root, self.square = Path(root), square
        layout = self.root / "Layout" / "large" / f"{split}.txt"
        if not layout.is_file():
            raise FileNotFoundError(f"scc: SPair-71k layout file not found: {layout}")
        self.split, self.img_size = split, img_size
        self.entries = [ln.strip() for ln in layout.read_text().splitlines() if ln.strip()]
        if not self.entries:
            raise ValueError(f"scc: {layout} lists no pairs")
        for e in self.entries:
            parse_entry(e)

    def __len__(self) -> int:
        return len(self.entries)

    def annotation(self, idx: int) -> dict:
        entry = self.entries[idx]
        path = self.root / "PairAnnotation" / self.split / f"{entry}.json"
        if not path.is_file():
            raise FileNotFoundError(f"scc: SPair-71k annotation not found: {path}")
        try:
            ann = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"scc: corrupt JSON {path}: {exc}") from exc
        if not isinstance(ann, dict):
            raise ValueError(f"scc: {path}: expected a JSON object, got {type(ann).__name__}")
        for key in ("src_kps", "trg_kps", "src_bndbox", "trg_bndbox", "category"):
            if key not in ann:
                raise ValueError(f"scc: {path} lacks `{key}`")
        # values too: a NaN keypoint or an inverted box would otherwise surface later as an obscure
        # indexing error or a silent PCK of 0
        for key in ("src_kps", "trg_kps"):
            if not isinstance(ann[key], list):
                raise ValueError(f"scc: {path}: `{key}` must be a list of [x, y] pairs, got {ann[key]!r}")
            for i, kp in enumerate(ann[key]):
                if not _finite_numbers(kp, 2):
                    raise ValueError(f"scc: {path}: `{key}` entry {i} must be an [x, y] pair of finite numbers, "
                                     f"got {kp!r}")
        if len(ann["src_kps"]) != len(ann["trg_kps"]) or not 0 < len(ann["src_kps"]) <= MAX_KPS:
            raise ValueError(f"scc: {path}: src_kps and trg_kps must have equal length in 1..{MAX_KPS}, got "
                             f"{len(ann['src_kps'])} and {len(ann['trg_kps'])}")
        for key in ("src_bndbox", "trg_bndbox"):
            box = ann[key]
            if not _finite_numbers(box, 4):
                raise ValueError(f"scc: {path}: `{key}` must be 4 finite numbers [x1, y1, x2, y2], got {box!r}")
            if not (box[0] < box[2] and box[1] < box[3]):
                raise ValueError(f"scc: {path}: `{key}` must have x1 < x2 and y1 < y2, got {box!r}")
        return ann

    def image_keys(self) -> list[str]:
        """`<category>/<stem>.jpg` of every image the pairs use (sorted): what ``src_key`` holds. Only for
        square training items (a feature cache needs one size per image)."""
        if not self.square:
            raise ValueError("scc: image_keys() needs SPair(square=True)")
        keys = set()
        for e in self.entries:
            src, trg, category = parse_entry(e)
            keys.update((f"{category}/{src}.jpg", f"{category}/{trg}.jpg"))
        return sorted(keys)

    def image_tensor(self, key: str) -> torch.Tensor:
        return to_square_tensor(load_image(self.root / "JPEGImages" / key), self.img_size)

    def __getitem__(self, idx: int) -> dict:
        src, trg, category = parse_entry(self.entries[idx])
        ann = self.annotation(idx)
        img_dir = self.root / "JPEGImages" / category
        read = load_image if self.with_images else image_size
        item = pair_item(read(img_dir / f"{src}.jpg"), read(img_dir / f"{trg}.jpg"),
                         torch.tensor(ann["src_kps"], dtype=torch.float32), torch.tensor(ann["trg_kps"], dtype=torch.float32),
                         category, f"{src}.jpg", f"{trg}.jpg", self.img_size, ann["src_bndbox"], ann["trg_bndbox"],
                         pckthres_kind=self.pckthres_kind, square=self.square, with_images=self.with_images)
        item.update(src_key=f"{category}/{src}.jpg", trg_key=f"{category}/{trg}.jpg")
        return item
