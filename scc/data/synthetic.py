"""Synthetic correspondence data that needs no files: procedurally drawn object classes with known
keypoints, seen under random affine and thin-plate-spline warps on cluttered backgrounds.

Each class is a template (a coloured polygon body with a few coloured parts); its keypoints are the
polygon's vertices and the parts' centres. An instance draws the template under a random affine map
(rotation, anisotropic scale, shear, translation) followed by a smooth TPS displacement, with colour
jitter, on a random textured background. Two instances of one class form a pair whose keypoints
correspond exactly: the ground truth is known by construction. Everything is a pure function of
(seed, index), so runs are reproducible.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import Dataset

from .common import pair_item


def _class_template(rng: np.random.Generator) -> dict:
    n = int(rng.integers(5, 9))
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = rng.uniform(0.55, 1.0, n)
    body = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1) * 0.35  # unit square coords around 0
    parts = []
    for _ in range(int(rng.integers(2, 4))):
        c = body[int(rng.integers(n))] * rng.uniform(0.2, 0.7)
        parts.append(dict(center=c, radius=float(rng.uniform(0.04, 0.08)), color=rng.integers(0, 256, 3)))
    return dict(body=body, body_color=rng.integers(0, 256, 3), parts=parts,
                stripe=rng.integers(0, 256, 3), stripe_freq=float(rng.uniform(8, 20)))


def _tps_field(rng: np.random.Generator, strength: float):
    """A smooth random displacement d(p) (unit coords): a sum of Gaussian bumps (a TPS-like warp)."""
    centers = rng.uniform(-0.5, 0.5, (4, 2))
    vecs = rng.normal(0, strength, (4, 2))

    def d(p):
        w = np.exp(-((p[:, None, :] - centers[None]) ** 2).sum(-1) / (2 * 0.25**2))
        return (w[..., None] * vecs[None]).sum(1)

    return d


class SyntheticPairs(Dataset):
    """Pairs of instances of procedurally generated classes. Keypoint-dataset batch dicts with
    ``label`` (class index); bbox = keypoint box; threshold ``bbox-kp``."""

    pckthres_kind = "bbox-kp"

    def __init__(self, num_classes: int = 8, num_pairs: int = 200, img_size: int = 128, seed: int = 0,
                 warp: float = 0.03, max_rotation: float = 25.0):
        if num_classes < 1:
            raise ValueError("scc: num_classes must be >= 1")
        self.num_classes, self.num_pairs, self.img_size = num_classes, num_pairs, img_size
        self.seed, self.warp, self.max_rotation = seed, warp, max_rotation
        rng = np.random.default_rng(seed)
        self.templates = [_class_template(rng) for _ in range(num_classes)]
        self.classes = [f"shape{i:02d}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.num_pairs

    def keypoints_unit(self, c: int) -> np.ndarray:
        t = self.templates[c]
        return np.concatenate([t["body"], np.stack([p["center"] for p in t["parts"]])], 0)

    def render(self, c: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
        """One instance of class c: (image, keypoints (N, 2) in pixels)."""
        t, s = self.templates[c], self.img_size
        th = math.radians(rng.uniform(-self.max_rotation, self.max_rotation))
        sx, sy = rng.uniform(0.8, 1.25, 2)
        sh = rng.uniform(-0.2, 0.2)
        A = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) @ np.array([[sx, sh], [0, sy]])
        shift = rng.uniform(-0.12, 0.12, 2)
        field = _tps_field(rng, self.warp)

        def warp(p):
            q = p @ A.T + shift
            return (q + field(q) + 0.5) * s  # unit coords centred at 0 -> pixels

        jitter = rng.integers(-30, 31, 3)
        col = lambda c3: tuple(int(v) for v in np.clip(np.asarray(c3) + jitter, 0, 255))  # noqa: E731
        bg = rng.integers(0, 256, 3)
        noise = rng.normal(0, 1, (s // 8 + 1, s // 8 + 1, 3))
        base = np.clip(bg[None, None] + 40 * noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(base).resize((s, s), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 7))):  # clutter: random background shapes
            x0, y0 = rng.uniform(0, s, 2)
            r = rng.uniform(s * 0.03, s * 0.12)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        # body: densely sampled boundary so the TPS bends it too
        body = t["body"]
        edge = np.concatenate([np.linspace(body[i], body[(i + 1) % len(body)], 8, endpoint=False)
                               for i in range(len(body))])
        draw.polygon([tuple(p) for p in warp(edge)], fill=col(t["body_color"]))
        # texture stripes inside the body (drawn in template coords, warped)
        for k in np.linspace(-0.35, 0.35, int(t["stripe_freq"] // 2)):
            seg = warp(np.stack([np.full(6, k), np.linspace(-0.3, 0.3, 6)], 1) * np.array([1.0, 0.6]))
            draw.line([tuple(p) for p in seg], fill=col(t["stripe"]), width=max(1, s // 96))
        draw.polygon([tuple(p) for p in warp(edge)], outline=(0, 0, 0))
        for p in t["parts"]:
            ring = p["center"] + p["radius"] * np.stack([np.cos(np.linspace(0, 2 * math.pi, 16)),
                                                        np.sin(np.linspace(0, 2 * math.pi, 16))], 1)
            draw.polygon([tuple(q) for q in warp(ring)], fill=col(p["color"]), outline=(0, 0, 0))
        img = img.filter(ImageFilter.GaussianBlur(0.6))
        return img, warp(self.keypoints_unit(c))

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < self.num_pairs:
            raise IndexError(idx)
        rng = np.random.default_rng([self.seed, idx])
        c = int(rng.integers(self.num_classes))
        (a, ka), (b, kb) = self.render(c, rng), self.render(c, rng)
        item = pair_item(a, b, torch.tensor(ka, dtype=torch.float32), torch.tensor(kb, dtype=torch.float32),
                         self.classes[c], f"{self.classes[c]}/{idx}a", f"{self.classes[c]}/{idx}b", None,
                         pckthres_kind=self.pckthres_kind)
        item["label"] = c
        return item


def write_image_folder(root: str, num_classes: int = 6, per_class: int = 12, img_size: int = 128, seed: int = 0,
                       **kwargs) -> Path:
    """Write instances of the synthetic classes as an ImageNet-style class folder
    (`<root>/shapeNN/shapeNN_KKKK.jpg`), the input `scc train` (weak) and `scc pseudo-label` expect, plus
    `<root>/keypoints.json` ({`<class>/<file>`: [[x, y], ...]} in pixels): the ground truth that measures
    pseudo-label precision. A pure function of the arguments; existing files are rewritten."""
    gen = SyntheticPairs(num_classes=num_classes, num_pairs=1, img_size=img_size, seed=seed, **kwargs)
    root = Path(root)
    kps = {}
    for c, name in enumerate(gen.classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img, pts = gen.render(c, np.random.default_rng([seed, c, k, 7]))
            img.save(root / name / f"{name}_{k:04d}.jpg", quality=95)
            kps[f"{name}/{name}_{k:04d}.jpg"] = [[round(float(x), 2), round(float(y), 2)] for x, y in pts]
    (root / "keypoints.json").write_text(json.dumps(kps))
    return root
