"""PCK evaluation with the protocol written down (METHOD.md, "Evaluation protocol").

A transferred keypoint is correct when its distance to the annotation is within alpha * T, with T:
``img`` the max side of the target image, ``bbox`` the max side of the target's annotated box, or
``bbox-kp`` the max side of the box spanned by the target's *valid* keypoints (padding never enters).
Reported per image (mean over each pair's points, then over pairs) and per point (all points pooled),
overall and per category, at the evaluated image size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from . import config as cfgmod
from .data.common import kp_box
from .io import atomic_write_json

THRESHOLDS = ("img", "bbox", "bbox-kp")


@dataclasses.dataclass
class EvalConfig:
    dataset: str = "pf-willow"
    data: str = "../shared/data/pf-willow"
    img_size: int = 320  # longer side of the evaluated images (aspect kept), or the side of the square
    square: bool = False  # both images resized to img_size x img_size (the field's 240 / 256 px protocols)
    alphas: tuple = (0.05, 0.1, 0.15)
    # auto = the dataset's standard protocol (its reader's `pckthres_kind`): bbox-kp for PF-WILLOW, img for
    # PF-PASCAL and TSS, bbox for SPair-71k; or one of img | bbox | bbox-kp (bbox only where boxes are
    # annotated: PF-PASCAL, SPair-71k)
    threshold: str = "auto"
    max_pairs: int = 0  # evaluate at most this many pairs (0 = all)
    every: int = 1  # evaluate every k-th pair (evenly spaced subsets: every=5 is 180 of PF-WILLOW's 900)
    device: str = "cpu"
    seed: int = 0


def parse_device(name: str) -> torch.device:
    """``name`` as a torch.device, refused with a ValueError when this machine lacks it (torch's own
    RuntimeError comes only when the first tensor is moved there)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"scc: device must be cpu, cuda or cuda:N, got {name!r} ({exc})") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"scc: device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"scc: device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"scc: device {name!r}: MPS is not available on this machine")
    return device


def _reader(dataset):
    """The dataset reader under any torch Subsets (its attributes say the protocol)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset


def threshold_kind(cfg_threshold: str, dataset) -> str:
    """The threshold an evaluation uses: ``cfg_threshold``, or with "auto" the dataset's standard one."""
    if cfg_threshold == "auto":
        kind = getattr(_reader(dataset), "pckthres_kind", None)
        if kind is None:  # a dataset of the user's own: the box of the valid target keypoints, said out loud
            warnings.warn(f"scc: {type(dataset).__name__} names no standard PCK threshold (`pckthres_kind`): "
                          f"using bbox-kp; set EvalConfig.threshold to one of {THRESHOLDS} to choose")
            return "bbox-kp"
        return kind
    if cfg_threshold not in THRESHOLDS:
        raise ValueError(f"scc: EvalConfig.threshold must be 'auto' or one of {THRESHOLDS}, got {cfg_threshold!r}")
    return cfg_threshold


def threshold_size(batch: dict, kind: str, i: int = 0) -> float:
    """T for pair i of a batch, in the evaluated image's pixels (target image, target box)."""
    if kind == "img":
        return float(max(batch["trg_img"].shape[-2:]))
    if kind == "bbox":
        # readers without box annotations fill trg_bbox with the keypoint box (pair_item): refuse, not bbox-kp
        annotated = batch.get("bbox_annotated")
        if annotated is not None and not bool(annotated[i]):
            raise ValueError(f"scc: threshold bbox is the annotated target box, and this dataset has no box "
                             f"annotations (pair {batch['src_imname'][i]} -> {batch['trg_imname'][i]}); "
                             f"use bbox-kp (the box of the target's keypoints) or img")
        box = batch["trg_bbox"][i]
    elif kind == "bbox-kp":
        box = kp_box(batch["trg_kps"][i, : int(batch["n_pts"][i])])
    else:
        raise ValueError(f"scc: threshold must be one of {THRESHOLDS}, got {kind!r}")
    return float((box[2:] - box[:2]).max())


def pck_counts(pred: torch.Tensor, gt: torch.Tensor, n_pts: int, thr: float, alphas) -> dict:
    """Correct counts per alpha over the first n_pts points: {alpha: (correct, n)}."""
    if n_pts <= 0:
        raise ValueError("scc: a pair with no valid keypoints cannot be evaluated")
    d = (pred[:n_pts] - gt[:n_pts]).norm(dim=-1)
    return {a: (int((d <= a * thr).sum()), n_pts) for a in alphas}


class PCKAccumulator:
    def __init__(self, alphas):
        self.alphas = tuple(alphas)
        self.per_image = defaultdict(list)  # (category, alpha) -> [pck of each pair]
        self.points = defaultdict(lambda: [0, 0])  # (category, alpha) -> [correct, total]

    def add(self, category: str, counts: dict) -> None:
        for a, (c, n) in counts.items():
            self.per_image[(category, a)].append(c / n)
            self.points[(category, a)][0] += c
            self.points[(category, a)][1] += n

    def summary(self) -> dict:
        cats = sorted({c for c, _ in self.per_image})
        out = {"per_category": {}, "overall": {}}
        for c in cats:
            out["per_category"][c] = {
                "pairs": len(self.per_image[(c, self.alphas[0])]),
                **{f"pck@{a}": {"per_image": sum(self.per_image[(c, a)]) / len(self.per_image[(c, a)]),
                                "per_point": self.points[(c, a)][0] / self.points[(c, a)][1]} for a in self.alphas},
            }
        for a in self.alphas:
            imgs = [v for c in cats for v in self.per_image[(c, a)]]
            corr = sum(self.points[(c, a)][0] for c in cats)
            tot = sum(self.points[(c, a)][1] for c in cats)
            out["overall"][f"pck@{a}"] = {"per_image": sum(imgs) / len(imgs), "per_point": corr / tot}
        out["overall"]["pairs"] = sum(out["per_category"][c]["pairs"] for c in cats)
        return out


@torch.no_grad()
def evaluate(model, dataset, cfg: EvalConfig, progress: bool = True) -> dict:
    """Run ``model`` over ``dataset`` (one pair per step) and return the PCK report (a JSON-able dict)."""
    from .data.common import collate_single

    if cfg.img_size < 0:
        raise ValueError(f"scc: EvalConfig.img_size (--img-size) must be >= 0 (0: the original size), got {cfg.img_size}")
    if cfg.every < 1:
        raise ValueError(f"scc: EvalConfig.every must be >= 1, got {cfg.every}")
    if cfg.max_pairs < 0:  # a negative slice end would silently drop pairs from the end
        raise ValueError(f"scc: EvalConfig.max_pairs (--max-pairs) must be >= 0 (0 = all pairs), got {cfg.max_pairs}")
    device = parse_device(cfg.device)
    model = model.to(device).eval()
    acc = PCKAccumulator(cfg.alphas)
    kind = threshold_kind(cfg.threshold, dataset)
    indices = list(range(0, len(dataset), cfg.every))[: cfg.max_pairs or None]
    n = len(indices)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=1,
                                         collate_fn=collate_single, num_workers=0)
    t0 = time.time()
    for batch in tqdm(loader, total=n, desc=f"eval {cfg.dataset}", disable=not progress, unit="pair"):
        thr = threshold_size(batch, kind)  # first: a threshold the data cannot give fails before the model runs
        out = model.match(batch["src_img"].to(device), batch["trg_img"].to(device))
        pred = model.transfer_keypoints(batch["src_kps"].to(device), out).cpu()
        acc.add(batch["category"][0], pck_counts(pred[0], batch["trg_kps"][0], int(batch["n_pts"][0]), thr, cfg.alphas))
    report = acc.summary()
    report["protocol"] = dict(
        threshold=kind, threshold_image="target", alphas=list(cfg.alphas),
        image_size=_image_size(dataset, cfg), averages=["per_image", "per_point"],
        test_time_tricks="none (no flips, no multi-scale)", pairs_evaluated=n, pairs_in_dataset=len(dataset),
    )
    report["seconds"] = round(time.time() - t0, 1)
    report["eval_config"] = cfgmod.to_dict(cfg)
    report["model"] = model.identity()
    return report


def _image_size(dataset, cfg: EvalConfig) -> str:
    """What the report says about the evaluated resolution: the dataset's own setting, not the config's."""
    dataset = _reader(dataset)
    size = getattr(dataset, "img_size", cfg.img_size)
    if not size:
        return "original size"
    return f"{size} x {size} px (square)" if getattr(dataset, "square", False) else f"longer side {size} px, aspect kept"


def format_table(report: dict) -> str:
    alphas = report["protocol"]["alphas"]
    # "per image / per point", not "img / pt": `img` is also a threshold's name
    head = "| category | pairs | " + " | ".join(f"PCK@{a} per image / per point" for a in alphas) + " |"
    lines = [head, "|" + "---|" * (2 + len(alphas))]
    rows = list(report["per_category"].items()) + [("all", report["overall"])]
    for name, r in rows:
        cells = [f"{r[f'pck@{a}']['per_image']:.3f} / {r[f'pck@{a}']['per_point']:.3f}" for a in alphas]
        lines.append(f"| {name} | {r['pairs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, path: str) -> None:
    atomic_write_json(path, report)
