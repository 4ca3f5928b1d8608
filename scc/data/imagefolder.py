"""An ImageNet-style class-folder reader (`<root>/<wnid>/*.JPEG`) yielding same-class image pairs with
their class label only: the input of weakly supervised training (Imagenette here, ILSVRC train at
full scale). Pairs are drawn deterministically from ``seed``; images are resized to a square so pairs
batch together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .common import load_image, to_square_tensor

IMG_EXTS = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def scan_classes(root: Path) -> tuple[list[str], list[list[Path]]]:
    if not root.is_dir():
        raise FileNotFoundError(f"scc: image folder not found: {root}")
    classes, files = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMG_EXTS)
        if imgs:
            classes.append(d.name)
            files.append(imgs)
    if not classes:
        raise ValueError(f"scc: {root} holds no class folders with images (<root>/<class>/*.JPEG)")
    return classes, files


class ImageFolderPairs(Dataset):
    """Item: dict(src_img, trg_img (3, S, S), label (int), category (wnid), src_imname, trg_imname).

    A training feature cache reads every image once through :meth:`image_keys` / :meth:`image_tensor`
    and then sets ``with_images = False``: items keep their names and labels but skip decoding."""

    with_images: bool = True

    def __init__(self, root: str, img_size: int = 224, num_pairs: int = 1000, seed: int = 0,
                 max_per_class: int = 0):
        self.root = Path(root)
        self.classes, files = scan_classes(self.root)
        if max_per_class:
            files = [f[:max_per_class] for f in files]
        usable = [i for i, f in enumerate(files) if len(f) >= 2]
        if not usable:
            raise ValueError(f"scc: no class in {root} has two images to pair")
        self.files, self.img_size = files, img_size
        rng = np.random.default_rng(seed)
        self.pairs = []
        for _ in range(num_pairs):
            c = int(rng.choice(usable))
            a, b = rng.choice(len(files[c]), size=2, replace=False)
            self.pairs.append((c, int(a), int(b)))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def image_keys(self) -> list[str]:
        """The `<class>/<file>` names of the images the pairs use (sorted): what ``src_key`` holds."""
        return sorted({f"{self.classes[c]}/{self.files[c][i].name}" for c, a, b in self.pairs for i in (a, b)})

    def image_tensor(self, key: str) -> torch.Tensor:
        return to_square_tensor(load_image(self.root / key), self.img_size)

    def __getitem__(self, idx: int) -> dict:
        c, a, b = self.pairs[idx]
        fa, fb = self.files[c][a], self.files[c][b]
        src_name, trg_name = f"{self.classes[c]}/{fa.name}", f"{self.classes[c]}/{fb.name}"
        item = dict(label=c, category=self.classes[c], src_imname=src_name, trg_imname=trg_name,
                    src_key=src_name, trg_key=trg_name)
        if self.with_images:
            item.update(src_img=to_square_tensor(load_image(fa), self.img_size),
                        trg_img=to_square_tensor(load_image(fb), self.img_size))
        return item
