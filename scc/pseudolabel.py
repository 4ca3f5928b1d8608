"""`scc pseudo-label`: the correspondence consistency check of METHOD.md stage 4 (the SC-ImageNet builder).

For every class of an ImageNet-style folder (`<root>/<wnid>/*.JPEG`, class labels only) it samples
same-class pairs and, with a (weakly trained) SCCNet:

1. region masks, as in training: M(i) = sigmoid((m_pos(i) - m_neg(i) - b) / t), m_pos the matchability
   against the partner image, m_neg its mean against a fixed pool of images of other classes;
2. calibrated match probabilities both ways (masked voting + calibration, s->t and t->s);
3. a source cell i is *consistent* when its forward match j* = argmax_j P_ij leads back, through the
   backward argmax at j*, to within ``cycle_eps`` cells of i;
4. discriminative keypoints: consistent cells with P_ij* > ``p_min``, inside both masks, spread by greedy
   non-maximum suppression (``nms_cells`` apart in both images), at most 40, the most confident first;
   the target point is the windowed soft-argmax (sub-cell);
5. a pair is kept with at least ``min_kps`` (K) keypoints; an image is kept when it takes part in at
   least ``min_pairs_per_image`` (m) kept pairs, and a pair only when both its images are kept.

The output is the SPair-71k layout (METHOD.md: Layout/large/{trn,val,test}.txt, JPEGImages/<wnid>/<stem>.jpg,
PairAnnotation/<split>/<entry>.json in original pixel coordinates) plus ``summary.json``, so DHPF's and
CATs' SPair-71k loaders, and ``scc.data.spair``, read it unchanged.

Resumable and crash-safe: each class's result goes to ``<out>/work/<wnid>.json`` (temp file + rename) when
the class is done and a re-run skips finished classes; the layout files, annotations and summary are
written (atomically, each) only by the final merge, from the class files, so an interrupted run never
leaves a half-written JSON and never duplicates or loses pairs. Under torchrun each rank takes a disjoint
set of classes (class k goes to rank k mod world), then rank 0 merges: the result equals one process's.
Everything is a pure function of (config, checkpoint): pairs and negative pools are drawn from
``seed`` and the class index.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import scc_kernels as K

from . import config as cfgmod
from .data.common import load_image
from .data.imagefolder import scan_classes, to_square_tensor
from .evaluate import parse_device
from .io import atomic_write_json, atomic_write_text
from .losses import matchability
from .model import ModelConfig, SCCNet, vote_support


@dataclasses.dataclass
class PseudoLabelConfig:
    data: str = "../shared/data/imagenette/train"  # ImageNet-style class folders
    checkpoint: str | None = None  # SCCNet checkpoint (None: the untrained pipeline)
    out: str = "runs/sc-imagenet"
    # None: as the checkpoint was trained (its TrainConfig.img_size and LossConfig's region_bias, region_temp,
    # mask_min), else TrainConfig's and LossConfig's defaults; a mask made otherwise than in training would
    # select other cells than the ones the model learnt to label
    img_size: int | None = None  # images are resized to a square of this side
    max_per_class: int = 0  # use the first N images of each class (0: all)
    pairs_per_class: int = 100  # same-class pairs sampled per class (distinct, unordered)
    negatives: int = 8  # images of other classes whose mean matchability is m_neg (region masks)
    region_bias: float | None = None  # b and t of the region masks
    region_temp: float | None = None
    mask_min: float | None = None  # keypoints lie where both masks exceed this; boxes span the cells above it
    cycle_eps: float = 1.0  # forward-backward cycle tolerance, in feature cells
    p_min: float = 0.3  # minimum calibrated probability of the forward match
    nms_cells: float = 2.0  # minimum distance between two keypoints of a pair, in cells, in both images
    border_cells: int = 0  # ignore source and target cells this close to the image border (padding effects)
    max_kps: int = 40  # the SPair-71k loaders pad to 40
    min_kps: int = 5  # K: keep a pair with at least this many keypoints
    min_pairs_per_image: int = 1  # m: keep an image that appears in at least this many kept pairs
    val_frac: float = 0.05  # share of kept pairs listed in val.txt / test.txt (by a hash of the entry)
    test_frac: float = 0.05
    copy_images: bool = True  # copy the images into JPEGImages (False: symbolic links)
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"


# ---- files -------------------------------------------------------------------------------------------


def stem_of(path: Path) -> str:
    """ImageNet's `n01440764_10026.JPEG` -> `n01440764_10026`; '-' and ':' would break the layout entries."""
    stem = path.stem
    if "-" in stem or ":" in stem:
        raise ValueError(f"scc: image name {path.name} contains '-' or ':', which the SPair-71k layout entries "
                         "cannot hold; rename it")
    return stem


# ---- the check ---------------------------------------------------------------------------------------

def _weak_run(train_config: dict | None) -> dict | None:
    """The training config that made the region masks: the run itself if weak, else (a strong run started
    from init_checkpoint) the run it started from, in turn."""
    while train_config is not None and train_config.get("mode") != "weak":
        train_config = train_config.get("init_train_config")
    return train_config


def resolve(cfg: PseudoLabelConfig, model: SCCNet) -> PseudoLabelConfig:
    """cfg with its unset (None) fields taken from the model's training config (a checkpoint of `scc train`):
    img_size from the checkpoint's own run, the mask fields from the weak run that trained the masks (the
    run itself, or the one a strong run started from); TrainConfig's and LossConfig's defaults where there
    is none."""
    unset = [f for f in ("img_size", "region_bias", "region_temp", "mask_min") if getattr(cfg, f) is None]
    if not unset:
        return cfg
    from .losses import LossConfig
    from .train import TrainConfig  # not at import time: train imports the data and loss modules

    own = model.train_config or {}
    loss = {**cfgmod.to_dict(LossConfig()), **(_weak_run(model.train_config) or {}).get("loss", {})}
    trained = dict(img_size=own.get("img_size", TrainConfig.img_size), **loss)
    return dataclasses.replace(cfg, **{f: trained[f] for f in unset})


def sample_pairs(n: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to `count` distinct unordered pairs of n images, in a seeded order."""
    total = n * (n - 1) // 2
    if total <= count:
        return [(a, b) for a in range(n) for b in range(a + 1, n)]
    seen, out = set(), []
    while len(out) < count:
        a, b = (int(v) for v in rng.choice(n, size=2, replace=False))
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def nms(src: torch.Tensor, trg: torch.Tensor, score: torch.Tensor, min_dist: float, max_kps: int) -> list[int]:
    """Greedy NMS: indices of the points, most confident first, at least min_dist apart in both images."""
    keep: list[int] = []
    for k in torch.argsort(score, descending=True, stable=True).tolist():
        if all(float((src[k] - src[q]).norm()) >= min_dist and float((trg[k] - trg[q]).norm()) >= min_dist
               for q in keep):
            keep.append(k)
            if len(keep) == max_kps:
                break
    return keep


def mask_box(mask: torch.Tensor, thr: float, stride: int) -> list[float] | None:
    """Box [x1, y1, x2, y2] (resized pixels) of the cells of mask (h, w) above thr, or None."""
    rows, cols = torch.nonzero(mask > thr, as_tuple=True)
    if rows.numel() == 0:
        return None
    return [float(cols.min()) * stride, float(rows.min()) * stride,
            float(cols.max() + 1) * stride - 1, float(rows.max() + 1) * stride - 1]


@torch.no_grad()
def check_pairs(model: SCCNet, fs: torch.Tensor, ft: torch.Tensor, neg_s: torch.Tensor, neg_t: torch.Tensor,
                cfg: PseudoLabelConfig) -> list[dict]:
    """The consistency check on a batch of pairs. fs, ft: (B, D, h, w) features; neg_s, neg_t: (B, h, w)
    m_neg of the source and target images. -> per pair dict(src (N, 2), trg (N, 2) in resized pixels,
    conf (N,), src_box, trg_box, consistent (count of consistent cells))."""
    cfg = resolve(cfg, model)
    mc = model.config
    corr = model.filtered_volume(fs, ft)
    b, hs, ws, ht, wt = corr.shape
    ms_pos, mt_pos = matchability(corr)
    mask_s = torch.sigmoid((ms_pos - neg_s - cfg.region_bias) / cfg.region_temp)
    mask_t = torch.sigmoid((mt_pos - neg_t - cfg.region_bias) / cfg.region_temp)
    g, lam = vote_support(corr, mask_s, mask_t, mc)
    g = g if g is not None else torch.ones_like(corr)
    P, _ = K.calibrate(corr, g, lam, mc.tau, model.bin_logit)
    Pb, _ = K.calibrate(corr.permute(0, 3, 4, 1, 2), g.permute(0, 3, 4, 1, 2), lam, mc.tau, model.bin_logit)
    flow, conf = K.soft_argmax(P.reshape(corr.shape), ht, wt, mc.window)  # (B, hs, ws, 2), (B, hs, ws)
    j = P.argmax(dim=2)  # (B, Ns)
    back = Pb.argmax(dim=2).gather(1, j)  # (B, Ns): source cell the cycle returns to
    i = torch.arange(hs * ws, device=corr.device)
    src_cells = torch.stack([i % ws, i // ws], -1).float()  # (Ns, 2) (col, row)
    cycle = (src_cells[back] - src_cells[None]).norm(dim=-1)  # (B, Ns)
    consistent = cycle <= cfg.cycle_eps
    ok = consistent & (conf.flatten(1) > cfg.p_min) & (mask_s.flatten(1) > cfg.mask_min)
    ok &= mask_t.flatten(1).gather(1, j) > cfg.mask_min
    if cfg.border_cells > 0:
        e = cfg.border_cells
        inner_s = ((src_cells[:, 0] >= e) & (src_cells[:, 0] < ws - e) & (src_cells[:, 1] >= e) & (src_cells[:, 1] < hs - e))
        tc = flow.flatten(1, 2)  # (B, Ns, 2) target cells (sub-cell)
        inner_t = (tc[..., 0] >= e - 0.5) & (tc[..., 0] <= wt - 1 - e + 0.5) & (tc[..., 1] >= e - 0.5) & (tc[..., 1] <= ht - 1 - e + 0.5)
        ok &= inner_s[None] & inner_t
    s = model.stride
    out = []
    for k in range(b):
        idx = torch.nonzero(ok[k]).flatten()
        src = src_cells[idx]
        trg = flow[k].flatten(0, 1)[idx]
        keep = idx.new_tensor(nms(src.cpu(), trg.cpu(), conf[k].flatten()[idx].cpu(), cfg.nms_cells, cfg.max_kps))
        src, trg, c = src[keep], trg[keep], conf[k].flatten()[idx][keep]
        out.append(dict(src=(src + 0.5) * s - 0.5, trg=(trg + 0.5) * s - 0.5, conf=c,
                        src_box=mask_box(mask_s[k], cfg.mask_min, s), trg_box=mask_box(mask_t[k], cfg.mask_min, s),
                        consistent=int(consistent[k].sum())))
    return out


def _to_original(pts: torch.Tensor, size: tuple[int, int], img_size: int) -> list[list[float]]:
    """Resized-square pixels -> original pixels (x, y), rounded to 0.01 px (plain scaling, as the readers do)."""
    scale = torch.tensor([size[0] / img_size, size[1] / img_size])
    return [[round(float(v), 2) for v in p] for p in pts * scale]


def _box_to_original(box, size, img_size) -> list[float]:
    sx, sy = size[0] / img_size, size[1] / img_size
    x1, y1, x2, y2 = box
    return [round(x1 * sx, 2), round(y1 * sy, 2), round(x2 * sx, 2), round(y2 * sy, 2)]


class PseudoLabeler:
    def __init__(self, cfg: PseudoLabelConfig, model: SCCNet | None = None):
        for name, lo, hi in (("min_kps", 1, 40), ("max_kps", 1, 40), ("pairs_per_class", 1, None),
                             ("negatives", 1, None), ("min_pairs_per_image", 1, None), ("batch_size", 1, None),
                             ("max_per_class", 0, None), ("border_cells", 0, None), ("cycle_eps", 0, None),
                             ("nms_cells", 0, None)):
            v = getattr(cfg, name)
            if not (v >= lo and (hi is None or v <= hi)):  # NaN fails too
                raise ValueError(f"scc: PseudoLabelConfig.{name} must be in [{lo}, {hi or 'inf'}], got {v}")
        if not 0 <= cfg.p_min < 1:  # a probability above 1 keeps nothing, silently
            raise ValueError(f"scc: PseudoLabelConfig.p_min must be in [0, 1), got {cfg.p_min}")
        if not 0 <= cfg.val_frac + cfg.test_frac < 1 or min(cfg.val_frac, cfg.test_frac) < 0:
            raise ValueError(f"scc: PseudoLabelConfig.val_frac + test_frac must be in [0, 1), got "
                             f"{cfg.val_frac} + {cfg.test_frac}")
        self.device = parse_device(cfg.device)
        if model is None:
            model = SCCNet.from_checkpoint(cfg.checkpoint) if cfg.checkpoint else SCCNet(ModelConfig())
        self.model = model.to(self.device).eval()
        self.cfg = cfg = resolve(cfg, self.model)  # the values used, in the fingerprint, summary and config.yaml
        if cfg.img_size < 1 or not cfg.region_temp > 0 or not 0 <= cfg.mask_min < 1:
            raise ValueError(f"scc: PseudoLabelConfig needs img_size >= 1, region_temp > 0 and mask_min in [0, 1), "
                             f"got {cfg.img_size}, {cfg.region_temp}, {cfg.mask_min}")
        if cfg.img_size % self.model.stride:
            raise ValueError(f"scc: PseudoLabelConfig.img_size must be a multiple of the model's stride "
                             f"({self.model.stride}) so cells map to pixels exactly, got {cfg.img_size} (unless "
                             f"set, the checkpoint's training img_size)")
        self.root = Path(cfg.data)
        self.classes, files = scan_classes(self.root)
        self.files = [f[: cfg.max_per_class] if cfg.max_per_class else f for f in files]
        # names the layout cannot hold are refused before any work
        for wnid, f in zip(self.classes, self.files):
            if "-" in wnid or ":" in wnid:
                raise ValueError(f"scc: class folder {wnid!r} contains '-' or ':', which the SPair-71k layout "
                                 "entries cannot hold; rename it")
            stems = [stem_of(path) for path in f]
            if len(set(stems)) != len(stems):
                dup = sorted({x for x in stems if stems.count(x) > 1})[:3]
                raise ValueError(f"scc: class {wnid} has images that share a stem ({dup}); the layout names "
                                 "them all <stem>.jpg")
        self.fingerprint = self._fingerprint()
        if len(self.classes) < 2:
            raise ValueError(f"scc: the consistency check needs at least two classes (negatives for the region "
                             f"masks); {self.root} has {len(self.classes)}")
        self.out = Path(cfg.out)
        self.work = self.out / "work"

    def _features(self, paths: list[Path]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        feats, sizes = [], []
        for i in range(0, len(paths), self.cfg.batch_size):
            ims = [load_image(p) for p in paths[i:i + self.cfg.batch_size]]
            sizes += [im.size for im in ims]
            x = torch.stack([to_square_tensor(im, self.cfg.img_size) for im in ims]).to(self.device)
            feats.append(self.model.features(x))
        return torch.cat(feats), sizes

    def _negative_pool(self, c: int) -> list[Path]:
        rng = np.random.default_rng([self.cfg.seed, c, 1])
        others = [k for k in range(len(self.classes)) if k != c and self.files[k]]
        pool = []
        for _ in range(self.cfg.negatives):
            k = others[int(rng.integers(len(others)))]
            pool.append(self.files[k][int(rng.integers(len(self.files[k])))])
        return pool

    @torch.no_grad()
    def run_class(self, c: int) -> dict:
        """The kept pairs of class c (before the per-image rule), as a JSON-ready dict."""
        cfg, files = self.cfg, self.files[c]
        wnid = self.classes[c]
        pairs = sample_pairs(len(files), cfg.pairs_per_class, np.random.default_rng([cfg.seed, c]))
        used = sorted({i for p in pairs for i in p})
        feats, sizes = self._features([files[i] for i in used]) if used else (None, [])
        row = {i: k for k, i in enumerate(used)}
        # m_neg of every used image: mean over the pool of its matchability against each pool image
        neg_feats, _ = self._features(self._negative_pool(c))
        m_neg = []
        for k in range(0, len(used), cfg.batch_size):
            f = feats[k:k + cfg.batch_size]
            acc = 0
            for n in neg_feats:
                corr = self.model.filtered_volume(f, n[None].expand(len(f), -1, -1, -1).contiguous())
                acc = acc + matchability(corr)[0]
            m_neg.append(acc / len(neg_feats))
        m_neg = torch.cat(m_neg) if m_neg else None
        kept, consistent = [], 0
        for k in range(0, len(pairs), cfg.batch_size):
            chunk = pairs[k:k + cfg.batch_size]
            a = torch.tensor([row[p[0]] for p in chunk], device=self.device)
            b = torch.tensor([row[p[1]] for p in chunk], device=self.device)
            for q, ((pa, pb), res) in enumerate(zip(chunk, check_pairs(self.model, feats[a], feats[b], m_neg[a], m_neg[b], cfg))):
                consistent += res["consistent"]
                if len(res["conf"]) < cfg.min_kps or res["src_box"] is None or res["trg_box"] is None:
                    continue
                sa, sb = sizes[row[pa]], sizes[row[pb]]
                kept.append(dict(
                    pair=k + q, src=str(files[pa].relative_to(self.root)),
                    trg=str(files[pb].relative_to(self.root)),
                    src_kps=_to_original(res["src"].cpu(), sa, cfg.img_size),
                    trg_kps=_to_original(res["trg"].cpu(), sb, cfg.img_size),
                    conf=[round(float(v), 4) for v in res["conf"]],
                    src_bndbox=_box_to_original(res["src_box"], sa, cfg.img_size),
                    trg_bndbox=_box_to_original(res["trg_box"], sb, cfg.img_size),
                    src_imsize=[sa[0], sa[1], 3], trg_imsize=[sb[0], sb[1], 3]))
        return dict(category=wnid, class_index=c, images=len(files), pairs_checked=len(pairs),
                    consistent_cells=consistent, kept=kept)

    def _fingerprint(self) -> str:
        """What a class result depends on: the check's config (not the merge-only fields) and the
        checkpoint's bytes. A resumed run reuses only class files with the same fingerprint."""
        import hashlib

        fields = {k: v for k, v in cfgmod.to_dict(self.cfg).items()
                  if k not in ("out", "device", "batch_size", "min_pairs_per_image", "val_frac", "test_frac",
                               "copy_images", "checkpoint")}
        h = hashlib.sha1(json.dumps(fields, sort_keys=True).encode())
        if self.cfg.checkpoint:
            h.update(Path(self.cfg.checkpoint).read_bytes())
        else:
            h.update(json.dumps(cfgmod.to_dict(self.model.config), sort_keys=True).encode())
        return h.hexdigest()

    def _done(self, c: int) -> bool:
        path = self.work / f"{self.classes[c]}.json"
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text()).get("fingerprint") == self.fingerprint
        except json.JSONDecodeError:
            return False  # cannot happen with atomic writes; recompute rather than trust it

    def run(self, progress: bool = True, rank: int = 0, world: int = 1) -> None:
        """Check this rank's classes (class k on rank k mod world), skipping those already done with the
        same config and checkpoint (a class file from another config or model is recomputed)."""
        todo = [c for c in range(len(self.classes)) if c % world == rank and not self._done(c)]
        for c in tqdm(todo, desc=f"consistency check (rank {rank})", unit="class", disable=not progress):
            if len(self.files[c]) < 2:
                res = dict(category=self.classes[c], class_index=c, images=len(self.files[c]), pairs_checked=0,
                           consistent_cells=0, kept=[])
            else:
                res = self.run_class(c)
            atomic_write_json(self.work / f"{self.classes[c]}.json", {**res, "fingerprint": self.fingerprint})

    # ---- merge: the SPair-71k layout --------------------------------------------------------------------

    def merge(self, progress: bool = True) -> dict:
        cfg = self.cfg
        per_class = []
        for c, wnid in enumerate(self.classes):
            path = self.work / f"{wnid}.json"
            if not self._done(c):
                raise FileNotFoundError(f"scc: merge: class {wnid} has no result for this config and checkpoint "
                                        f"({path}); run the check first")
            per_class.append(json.loads(path.read_text()))
        entries = {"trn": [], "val": [], "test": []}
        summary_classes = {}
        kps_per_pair = []
        # ImageNet scale: about a hundred thousand annotation files and image copies or links
        for res in tqdm(per_class, desc="write SPair-71k layout", unit="class", disable=not progress):
            pairs = res["kept"]
            while True:  # drop images in fewer than m kept pairs, and their pairs, until nothing changes
                counts: dict[str, int] = {}
                for p in pairs:
                    for side in ("src", "trg"):
                        counts[p[side]] = counts.get(p[side], 0) + 1
                images = {k for k, n in counts.items() if n >= cfg.min_pairs_per_image}
                kept = [p for p in pairs if p["src"] in images and p["trg"] in images]
                if len(kept) == len(pairs):
                    break
                pairs = kept
            wnid = res["category"]
            for p in pairs:
                src_stem, trg_stem = stem_of(Path(p["src"])), stem_of(Path(p["trg"]))
                idx = res["class_index"] * 1_000_000 + p["pair"]  # unique, whatever ran where
                entry = f"{idx:09d}-{src_stem}-{trg_stem}:{wnid}"
                h = zlib.crc32(entry.encode()) % 10_000 / 10_000
                split = "val" if h < cfg.val_frac else "test" if h < cfg.val_frac + cfg.test_frac else "trn"
                ann = dict(src_kps=p["src_kps"], trg_kps=p["trg_kps"], src_bndbox=p["src_bndbox"],
                           trg_bndbox=p["trg_bndbox"], category=wnid, src_imname=f"{src_stem}.jpg",
                           trg_imname=f"{trg_stem}.jpg", src_imsize=p["src_imsize"], trg_imsize=p["trg_imsize"],
                           viewpoint_variation=0, scale_variation=0, truncation=0, occlusion=0,
                           confidence=p["conf"], pair_id=idx)
                atomic_write_json(self.out / "PairAnnotation" / split / f"{entry}.json", ann)
                entries[split].append(entry)
                kps_per_pair.append(len(p["src_kps"]))
            names = {f"{stem_of(Path(rel))}.jpg" for rel in images}
            for rel in sorted(images):
                self._place_image(self.root / rel, self.out / "JPEGImages" / wnid / f"{stem_of(Path(rel))}.jpg")
            for old in (self.out / "JPEGImages" / wnid).glob("*.jpg"):  # images an earlier run kept
                if old.name not in names:
                    old.unlink()
            summary_classes[wnid] = dict(images=res["images"], images_kept=len(images), pairs_checked=res["pairs_checked"],
                                         pairs_kept=len(pairs))
        for split, lines in entries.items():
            atomic_write_text(self.out / "Layout" / "large" / f"{split}.txt", "".join(f"{e}\n" for e in sorted(lines)))
            listed = set(lines)
            for old in (self.out / "PairAnnotation" / split).glob("*.json"):  # left by a run with other results
                if old.stem not in listed:
                    old.unlink()
        summary = dict(
            format="SPair-71k layout (scc pseudo-labels)", classes=summary_classes,
            images_kept=sum(v["images_kept"] for v in summary_classes.values()),
            pairs={k: len(v) for k, v in entries.items()},
            keypoints_per_pair=dict(mean=float(np.mean(kps_per_pair)) if kps_per_pair else 0.0,
                                    min=int(min(kps_per_pair, default=0)), max=int(max(kps_per_pair, default=0))),
            thresholds=dict(min_kps=cfg.min_kps, min_pairs_per_image=cfg.min_pairs_per_image, p_min=cfg.p_min,
                            cycle_eps=cfg.cycle_eps, mask_min=cfg.mask_min, nms_cells=cfg.nms_cells,
                            max_kps=cfg.max_kps),
            config=cfgmod.to_dict(cfg), model=self.model.identity())
        atomic_write_json(self.out / "summary.json", summary)
        cfgmod.save_yaml(cfg, self.out / "config.yaml")
        return summary

    def _place_image(self, src: Path, dst: Path) -> None:
        """Copy (or link) src to dst, replacing what is there (an earlier run may have had other images)."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".tmp-{dst.name}")
        if not self.cfg.copy_images:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(src.resolve(), tmp)
        elif src.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(src, tmp)
        else:  # the layout names every image .jpg: re-encode the others
            load_image(src).save(tmp, format="JPEG", quality=95)
        os.replace(tmp, dst)


def layout_entries(out: str | Path, split: str = "trn") -> list[str]:
    """Entry names `<idx>-<src>-<trg>:<category>` of a split of the output, in order."""
    listing = Path(out) / "Layout" / "large" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"scc: {listing} not found: is {out} the output of `scc pseudo-label` (split {split!r})?")
    return listing.read_text().split()


def read_annotation(out: str | Path, split: str, entry: str) -> dict:
    return json.loads((Path(out) / "PairAnnotation" / split / f"{entry}.json").read_text())


def read_layout(out: str | Path, split: str = "trn") -> list[tuple[str, dict]]:
    """(entry, annotation) of every pair of a split of the output."""
    return [(e, read_annotation(out, split, e)) for e in layout_entries(out, split)]


def draw_pair(out: str | Path, entry: str, ann: dict, path: str | Path, side: int = 256) -> None:
    """Picture of one exported pair: its pseudo-labels on the two images (longer side ``side`` pixels),
    coloured by their match confidence."""
    from .data.common import resize_longer
    from .visualize import draw_matches

    img_dir = Path(out) / "JPEGImages" / ann["category"]
    (src, s), (trg, t) = (resize_longer(load_image(img_dir / ann[f"{x}_imname"]), side) for x in ("src", "trg"))
    draw_matches(src, trg, torch.tensor(ann["src_kps"]) * s, torch.tensor(ann["trg_kps"]) * t,
                 torch.tensor(ann["confidence"]), str(path), title=f"pseudo-labels {entry}")


def precision(out: str | Path, keypoints: dict, alphas=(0.05, 0.1, 0.15), splits=("trn", "val", "test")) -> dict:
    """Precision of pseudo-labels where the truth is known (synthetic classes, `keypoints.json` from
    ``scc.data.synthetic.write_image_folder``): the true target of a pseudo source point is estimated by
    the least-squares affine map between the pair's annotated keypoints (the generator's warp is affine
    plus a small smooth displacement, whose size ``affine_residual`` reports), and a pseudo target is
    correct within alpha * max side of the target keypoints' box. Only pseudo points inside the source
    keypoints' box count (background has no truth)."""
    hits = {a: 0 for a in alphas}
    n = outside = 0
    residuals = []
    for split in splits:
        if not (Path(out) / "Layout" / "large" / f"{split}.txt").is_file():
            continue
        for _, ann in read_layout(out, split):
            cat = ann["category"]
            gs = np.asarray(keypoints[f"{cat}/{ann['src_imname']}"], dtype=np.float64)
            gt = np.asarray(keypoints[f"{cat}/{ann['trg_imname']}"], dtype=np.float64)
            A, *_ = np.linalg.lstsq(np.c_[gs, np.ones(len(gs))], gt, rcond=None)
            residuals.append(float(np.linalg.norm(np.c_[gs, np.ones(len(gs))] @ A - gt, axis=1).mean()))
            ps, pt = np.asarray(ann["src_kps"]), np.asarray(ann["trg_kps"])
            inside = np.all((ps >= gs.min(0)) & (ps <= gs.max(0)), axis=1)
            outside += int((~inside).sum())
            err = np.linalg.norm(np.c_[ps, np.ones(len(ps))] @ A - pt, axis=1)[inside]
            thr = float((gt.max(0) - gt.min(0)).max())
            for a in alphas:
                hits[a] += int((err <= a * thr).sum())
            n += int(inside.sum())
    return dict(points=n, points_outside_object_box=outside, affine_residual_px=float(np.mean(residuals)) if residuals else None,
                **{f"precision@{a}": hits[a] / n if n else None for a in alphas})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scc pseudo-label", description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="ImageNet-style class folders (default: PseudoLabelConfig.data)")
    ap.add_argument("--checkpoint", help="SCCNet checkpoint (default: the untrained pipeline)")
    ap.add_argument("--out", help="output folder (SPair-71k layout)")
    ap.add_argument("--config", help="YAML file with PseudoLabelConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field, e.g. --set min_kps=8 (repeatable)")
    args = ap.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg = cfgmod.load(PseudoLabelConfig, args.config, args.set,
                          dict(data=args.data, checkpoint=args.checkpoint, out=args.out))
        rank = 0
        if world > 1:
            import datetime

            # only a barrier is needed (gloo works with CPU and GPU ranks); ranks may finish hours apart
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=48))
            rank = dist.get_rank()
            if cfg.device.startswith("cuda"):
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)  # Triton launches on the current device
                cfg = cfgmod.apply_overrides(cfg, dict(device=f"cuda:{local}"))
        labeler = PseudoLabeler(cfg)
        labeler.run(rank=rank, world=world)
        if world > 1:
            dist.barrier()
        if rank == 0:
            s = labeler.merge()
            print(f"done: {s['pairs']} pairs ({s['keypoints_per_pair']['mean']:.1f} keypoints each), "
                  f"{s['images_kept']} images kept; {cfg.out}")
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
