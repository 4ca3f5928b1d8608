"""Shared pieces of the dataset readers: image loading, resizing with keypoints, the batch dict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MAX_KPS = 40  # keypoint arrays are padded to this length (SPair-71k convention); n_pts says how many are real


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scc: image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # grayscale (Imagenette has some) and palette images become RGB
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"scc: corrupt or unreadable image {path}: {exc}") from exc


def resize_longer(im: Image.Image, size: int | None) -> tuple[torch.Tensor, float]:
    """-> (3, H, W) float tensor in [0, 1] with max(H, W) = size (aspect kept), and the scale applied."""
    if size is not None and size < 0:
        raise ValueError(f"scc: img_size must be >= 0 pixels (0: the original size), got {size}")
    w, h = im.size
    scale = 1.0 if not size else size / max(w, h)
    if scale != 1.0:
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), scale


def to_square_tensor(im: Image.Image, size: int) -> torch.Tensor:
    """-> (3, size, size) float tensor in [0, 1] (aspect not kept: what batched training uses)."""
    if size < 1:
        raise ValueError(f"scc: img_size must be >= 1 pixel, got {size}")
    im = im.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def pad_kps(kps: torch.Tensor, n: int = MAX_KPS, fill: float = -1.0) -> torch.Tensor:
    """(N, 2) -> (max(n, N), 2) padded with `fill`; the padding never enters a threshold (n_pts says what
    is real). Sparse keypoint sets pad to 40 (SPair-71k convention); dense ones (TSS) keep all points."""
    out = torch.full((max(n, kps.shape[0]), 2), fill, dtype=torch.float32)
    out[: kps.shape[0]] = kps
    return out


def kp_box(kps: torch.Tensor) -> torch.Tensor:
    """Box (x1, y1, x2, y2) spanned by valid keypoints (N, 2)."""
    return torch.cat([kps.min(0).values, kps.max(0).values])


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header (no decoding)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scc: image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"scc: corrupt or unreadable image {path}: {exc}") from exc


def check_square(square: bool, img_size) -> None:
    if square and not img_size:
        raise ValueError("scc: square=True needs an img_size (the side of the square)")


def pair_item(src_im, trg_im, src_kps, trg_kps, category, src_name, trg_name, size,
              src_bbox=None, trg_bbox=None, pckthres_kind="bbox-kp", square: bool = False,
              with_images: bool = True) -> dict:
    """The field's batch dict for one pair; keypoints and boxes in the resized images' pixels.
    ``square``: resize both images to size x size (training batches) instead of keeping the aspect;
    the scales are then per axis (sx, sy). ``with_images=False`` (square only; e.g. under a feature cache):
    src_im / trg_im are the images' (w, h) sizes and the item holds no image tensors. Without src_bbox /
    trg_bbox the boxes are the keypoints' and ``bbox_annotated`` is False (the ``bbox`` threshold refuses them)."""
    if not with_images:
        if not square or pckthres_kind == "img":
            raise ValueError("scc: pair_item(with_images=False) needs square=True and a box threshold")
        src_wh, trg_wh = src_im, trg_im
    else:
        src_wh, trg_wh = src_im.size, trg_im.size
    src_img = trg_img = None
    if square:
        if with_images:
            src_img, trg_img = to_square_tensor(src_im, size), to_square_tensor(trg_im, size)
        s_scale = torch.tensor([size / src_wh[0], size / src_wh[1]])
        t_scale = torch.tensor([size / trg_wh[0], size / trg_wh[1]])
    else:
        src_img, s_scale = resize_longer(src_im, size)
        trg_img, t_scale = resize_longer(trg_im, size)
    src_kps = torch.as_tensor(src_kps, dtype=torch.float32) * s_scale
    trg_kps = torch.as_tensor(trg_kps, dtype=torch.float32) * t_scale
    if src_kps.shape != trg_kps.shape or src_kps.dim() != 2 or src_kps.shape[1] != 2:
        raise ValueError(f"scc: pair {src_name} -> {trg_name}: keypoint arrays must both be (N, 2), got "
                         f"{tuple(src_kps.shape)} and {tuple(trg_kps.shape)}")
    n = src_kps.shape[0]
    # without an annotated target box, trg_bbox below is the keypoint box: `bbox` would silently be bbox-kp
    bbox_annotated = trg_bbox is not None
    if pckthres_kind == "bbox" and not bbox_annotated:
        raise ValueError(f"scc: pair {src_name} -> {trg_name}: threshold bbox needs an annotated target box, and "
                         f"none was given; use bbox-kp (the box of the target's keypoints) or img")
    box_scale = lambda sc: torch.as_tensor(sc).repeat(2) if torch.is_tensor(sc) else sc  # noqa: E731  (x, y, x, y)
    src_bbox = kp_box(src_kps) if src_bbox is None else torch.as_tensor(src_bbox, dtype=torch.float32) * box_scale(s_scale)
    trg_bbox = kp_box(trg_kps) if trg_bbox is None else torch.as_tensor(trg_bbox, dtype=torch.float32) * box_scale(t_scale)
    if pckthres_kind == "img":
        pckthres = float(max(trg_img.shape[1:]))
    else:
        box = kp_box(trg_kps) if pckthres_kind == "bbox-kp" else trg_bbox
        pckthres = float((box[2:] - box[:2]).max())
    item = dict(
        src_kps=pad_kps(src_kps), trg_kps=pad_kps(trg_kps), n_pts=n,
        src_bbox=src_bbox, trg_bbox=trg_bbox, bbox_annotated=bbox_annotated, pckthres=pckthres, category=category,
        src_imname=src_name, trg_imname=trg_name, src_imsize=tuple(src_wh), trg_imsize=tuple(trg_wh),
        src_scale=s_scale, trg_scale=t_scale,
    )
    if with_images:
        item.update(src_img=src_img, trg_img=trg_img)
    return item


def collate_single(items: list[dict]) -> dict:
    """Pairs differ in size (aspect kept), so evaluation batches hold one pair: add the batch axis."""
    if len(items) != 1:
        raise ValueError("scc: keypoint datasets are evaluated one pair per batch (images keep their aspect)")
    out = {}
    for k, v in items[0].items():
        out[k] = v[None] if isinstance(v, torch.Tensor) else [v] if not isinstance(v, (int, float)) else torch.tensor([v])
    return out
