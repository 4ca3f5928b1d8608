"""`scc train`: weakly supervised (class labels only) or keypoint-supervised training of SCCNet.

One process (CPU or one GPU), or several under torchrun (`torchrun --nproc_per_node=N -m scc.train ...`):
DistributedDataParallel, gloo on CPU and nccl on GPUs, each rank taking an equal share of every global
batch (`batch_size` is the global batch), rank 0 logging, validating and checkpointing. Gradients are
averaged over ranks, so keypoint (strong) training equals a single process with the same global batch;
weak training forms its different-class negatives within each rank's share, so it does not (a share of one
class has none: its step adds nothing, logged as `single_class_batch`). Deterministic:
the batch of every step is a pure function of (seed, step), so ``--resume`` continues from the last
checkpoint with the same optimizer, scheduler, RNG and data order, and an interrupted run ends with the
same weights as an uninterrupted one (on CUDA, cuDNN and cuBLAS run in deterministic mode; a PyTorch op
without a deterministic CUDA kernel, which PyTorch names in a warning, can still make the last bits differ).
Checkpoints are written atomically (temp file + rename) every ``ckpt_every`` steps and at the end,
with the config and git commit; a NaN/inf loss stops the run with a clear message and keeps the
last good checkpoint. A fresh run refuses an ``out`` that holds another run's checkpoint (``--resume`` it, or
set ``overwrite=true``); a resumed run drops the metrics the killed run logged after its checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import config as cfgmod
from .io import atomic_save, atomic_write_text
from .evaluate import parse_device
from .losses import LossConfig, StrongSupervision, WeakSupervision, check_pseudo_source
from .model import ModelConfig, SCCNet


def _train_model_config() -> ModelConfig:
    return ModelConfig(proj_dim=128)  # training learns the projection (METHOD.md stage 0)


@dataclasses.dataclass
class TrainConfig:
    mode: str = "weak"  # "weak" (class labels only) or "strong" (keypoints, e.g. pseudo-labels)
    # weak: "imagefolder" | "synthetic"; strong: "spair" (SPair-71k layout, e.g. `scc pseudo-label` output; its
    # trn split, resized to squares) | "synthetic" (see TRAIN_DATASETS)
    dataset: str = "imagefolder"
    data: str = "../shared/data/imagenette/train"
    img_size: int = 224
    num_pairs: int = 20000  # pairs drawn from a class-folder dataset (weak)
    max_per_class: int = 0  # use only the first N images of each class folder (0: all)
    batch_size: int = 8
    steps: int = 1000
    lr: float = 1e-3
    # the "no match" bin logit (model.unmatched_bin) lives on the scale of (log C + lam log g) / tau, tens of
    # units: it learns at its own rate, without weight decay
    bin_lr: float = 0.05
    weight_decay: float = 1e-4
    warmup_steps: int = 50  # linear learning-rate warm-up, then cosine decay to 0 at `steps`
    grad_clip: float = 1.0
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    unfreeze_backbone: bool = False
    # Frozen backbone: compute each training image's hyperpixels once (fp16, in memory; about 185 KB per
    # 224x224 image) before the first step, so a step costs only the projection and the matching (about 20x
    # faster on a CPU). Filled in a fixed order and chunking, so resumed runs see the same values.
    feature_cache: bool = True
    cache_dir: str | None = None  # also keep the feature cache on disk here, reused by runs with the same images
    # "pca": principal directions of the hyperpixels of proj_init_pairs pairs; "identity" (needs proj_dim =
    # the hyperpixel width): start exactly at the untrained pipeline; "random": PyTorch's default
    proj_init: str = "pca"
    # start from the weights of an SCCNet checkpoint instead (its model config replaces `model`); e.g. strong
    # training on pseudo-labels starting from the weakly trained matcher that made them
    init_checkpoint: str | None = None
    proj_init_pairs: int = 32
    use_region: bool = True  # weak: region-level loss and masks
    use_pixel: bool = True  # weak: pixel-level loss on online pseudo-labels
    seed: int = 0
    val_every: int = 0  # steps between validations (0: never); PCK on a keypoint set, logged with the losses
    val_dataset: str = "pf-willow"
    val_data: str = "../shared/data/pf-willow"
    val_pairs: int = 90  # evenly spaced pairs of the validation set (0: all)
    tensorboard: bool = True  # scalars under <out>/tb
    picture_every: int = 250  # weak: draw a pair's masks and pseudo-labels into TensorBoard every N steps (0: never)
    out: str = "runs/train"
    # a fresh run into an `out` that holds another run's last.pt: false refuses (continue it with --resume, or
    # pick another out); true discards that run's last.pt and metrics.jsonl and starts again from step 0
    overwrite: bool = False
    ckpt_every: int = 200
    log_every: int = 10
    device: str = "cpu"
    model: ModelConfig = dataclasses.field(default_factory=_train_model_config)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)


def git_commit(where: str | None = None) -> str:
    """HEAD of the checkout the code runs from, with "+dirty" when its code (scc, scc_kernels, csrc) differs
    from HEAD: a model trained from uncommitted code must not name a commit that did not train it."""
    where = where or os.path.dirname(os.path.abspath(__file__))

    def git(*args) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=where).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--", ":/scc", ":/scc_kernels", ":/csrc")  # new files too, not ignored ones
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if changed else "")


# The datasets each mode can train on: their items are resized to squares (a batch stacks them; the PCA init
# too) and come from a training split. Evaluation sets are refused: pf-willow and tss hold only test pairs (a
# split would be ignored: training on the evaluation pairs), pf-pascal's items keep the aspect ratio.
TRAIN_DATASETS = dict(weak=("imagefolder", "synthetic"), strong=("spair", "synthetic"))
_ABOUT = dict(imagefolder="imagefolder (ImageNet-style <root>/<class>/*.JPEG)",
              spair="spair (the SPair-71k layout, e.g. `scc pseudo-label` output: its trn split, resized to squares)")
_NOT_TRAINABLE = {"pf-willow": "has no training split (only the test pairs)",
                  "tss": "has no training split (only the test pairs)",
                  "pf-pascal": "keeps each image's aspect ratio, so its pairs cannot be stacked into a batch",
                  "imagefolder": "has class labels only, no keypoints"}


# counts and periods: a 0 batch or period divided by zero mid-run, steps=0 announced a checkpoint it never wrote
_AT_LEAST = dict(batch_size=1, steps=1, num_pairs=1, img_size=1, ckpt_every=1, log_every=1, proj_init_pairs=1,
                 max_per_class=0, warmup_steps=0, val_every=0, val_pairs=0, picture_every=0)


def check_train_config(cfg: TrainConfig) -> None:
    for name, lo in _AT_LEAST.items():
        if getattr(cfg, name) < lo:
            raise ValueError(f"scc: TrainConfig.{name} must be >= {lo}, got {getattr(cfg, name)}")
    if cfg.warmup_steps > cfg.steps:
        warnings.warn(f"scc: warmup_steps ({cfg.warmup_steps}) > steps ({cfg.steps}): the learning rate peaks at "
                      f"{cfg.lr * cfg.steps / cfg.warmup_steps:.3g}, not lr ({cfg.lr:g}), and never decays", stacklevel=2)


def check_train_dataset(cfg: TrainConfig) -> None:
    """Refuse up front (before a model, PCA or feature cache is computed) a dataset `cfg.mode` cannot train on."""
    usable = TRAIN_DATASETS.get(cfg.mode)
    if usable is None or cfg.dataset in usable:
        return  # an unknown mode is refused by the Trainer
    why = _NOT_TRAINABLE.get(cfg.dataset, f"is not a {cfg.mode} training dataset")
    raise ValueError(f"scc: cannot train on dataset {cfg.dataset!r}: it {why}; {cfg.mode} training reads "
                     + " or ".join(_ABOUT.get(d, d) for d in usable))


def make_train_dataset(cfg: TrainConfig):
    check_train_dataset(cfg)
    if cfg.dataset == "imagefolder":
        from .data.imagefolder import ImageFolderPairs

        ds = ImageFolderPairs(cfg.data, cfg.img_size, cfg.num_pairs, cfg.seed, cfg.max_per_class)
        if ds.num_classes < 2 and cfg.mode == "weak":
            raise ValueError(f"scc: weak training needs at least two classes; {cfg.data} has {ds.num_classes}")
        return ds
    if cfg.dataset == "synthetic":
        from .data.synthetic import SyntheticPairs

        return SyntheticPairs(num_classes=6, num_pairs=cfg.num_pairs, img_size=cfg.img_size, seed=cfg.seed)
    if cfg.mode == "strong" and cfg.dataset == "spair":  # e.g. pseudo-labels from `scc pseudo-label`
        from .data.spair import SPair

        return SPair(cfg.data, "trn", cfg.img_size, square=True)
    raise ValueError(f"scc: unknown training dataset {cfg.dataset!r}")


def check_fresh_out(cfg: TrainConfig) -> None:
    """A fresh run (not --resume) must not write over another run's checkpoint and metrics."""
    last = next((p for p in (Path(cfg.out) / "last.pt", Path(cfg.out) / "model.pt") if p.is_file()), None)
    if last is not None and not cfg.overwrite:
        raise ValueError(f"scc: {cfg.out} already holds a training run ({last}); continue it with --resume, "
                         "or pick another out (or set overwrite=true to discard it and start again)")


def read_state(path: Path, cfg: TrainConfig, compare_model: bool = True) -> dict:
    """The training state at `path` (last.pt), refused when unreadable or written with another config than
    cfg (compare_model=False: all but cfg.model, which an init_checkpoint replaces when the Trainer starts)."""
    state = _load_state(path)
    check_state(state, cfg, path, compare_model)
    return state


def _load_state(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"scc: --resume: no checkpoint at {path}")
    # on the CPU: RNG states must stay CPU ByteTensors; load_state_dict moves weights and optimizer
    # state to the parameters' device
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or not {"config", "model", "optimizer", "step"} <= state.keys():
            raise ValueError("not a training state (config, model, optimizer, step)")
    except Exception as exc:  # truncated or foreign: torch's own message names no file
        raise ValueError(f"scc: --resume: cannot read {path} ({type(exc).__name__}: {exc}); "
                         "scc writes it atomically, so it was cut short or replaced after") from exc
    return state


def check_state(state: dict, cfg: TrainConfig, path: Path, compare_model: bool = True) -> None:
    """Refuse a training state (read from `path`) written with another config than cfg, or one that cannot
    continue exactly."""
    old, new = _same_run(state["config"]), _same_run(cfgmod.to_dict(cfg))
    if not compare_model:
        old.pop("model", None), new.pop("model", None)
    diff = _config_diff(old, new)
    if diff:
        raise ValueError(f"scc: --resume: {path} was written with another config ({'; '.join(diff)}); "
                         f"resume with the same config (see {path.parent / 'config.yaml'})")
    if state["config"]["model"].get("unmatched_bin") and "bin_lr" not in state["config"]:
        # written when no loss trained the bin (one optimizer group, no bin term): it cannot continue exactly
        raise ValueError(f"scc: --resume: {path} was written before the unmatched bin was trained "
                         "(bin_lr, loss.lambda_bin); start a new run")


def _same_run(config: dict) -> dict:
    """A run's config as resume compares it: fields added to the configs after the checkpoint was written
    count as their defaults, and `overwrite` (how the folder was claimed, not what trains) is left out."""
    def fill(d, default):
        return {k: fill(d.get(k, v), v) if isinstance(v, dict) and isinstance(d.get(k, v), dict) else d.get(k, v)
                for k, v in default.items()} | {k: v for k, v in d.items() if k not in default}

    return {k: v for k, v in fill(config, cfgmod.to_dict(TrainConfig())).items() if k != "overwrite"}


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for each (nested) key whose value differs."""
    out = []
    for k in sorted(old.keys() | new.keys()):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The dataset indices of `step`: epochs are seeded permutations, so any step can be recomputed."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size].tolist()


def collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if isinstance(vals[0], torch.Tensor):
            if any(v.shape != vals[0].shape for v in vals):
                raise ValueError(f"scc: training batches need equal `{key}` shapes; resize the images "
                                 "to a square (img_size)")
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], (int, float)):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _rng_state(device: torch.device) -> dict:
    s = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


def _distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; (0, 1, device) for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _deterministic_cuda() -> None:
    """Deterministic cuDNN / cuBLAS for bitwise-repeatable training steps (process-wide settings)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any GEMM
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


class _Loss(torch.nn.Module):
    """The model and its supervision strategy: forward(batch, step) -> (loss, terms)."""

    def __init__(self, model: SCCNet, strategy):
        super().__init__()
        self.model, self.strategy = model, strategy

    def forward(self, batch: dict, step: int):
        return self.strategy.loss(self.model, batch, step)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        check_train_config(cfg)
        check_train_dataset(cfg)
        self.cfg = cfg
        # the code this process runs, asked once: files (or HEAD) that change during a run did not train it
        self.commit = git_commit()
        self.rank, self.world, self.device = _distributed(parse_device(cfg.device))
        if self.device.type == "cuda":
            _deterministic_cuda()
        if cfg.batch_size % self.world:
            raise ValueError(f"scc: batch_size {cfg.batch_size} (the global batch) must divide among {self.world} ranks")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        if cfg.init_checkpoint:
            self.model = SCCNet.from_checkpoint(cfg.init_checkpoint).to(self.device)
            # its model config replaces cfg.model, and is saved with the run, so config.yaml says what trained
            self.cfg = cfg = dataclasses.replace(cfg, model=self.model.config)
            self.model.bank = None  # its features go stale as this run trains; refilled at the end (bank_size)
        else:
            self.model = SCCNet(cfg.model).to(self.device)
        # a backbone that is trained here or came fine-tuned with init_checkpoint is saved with the model
        self.keep_backbone = cfg.unfreeze_backbone or getattr(self.model, "backbone_from_checkpoint", False)
        for p in self.model.backbone.parameters():
            p.requires_grad_(cfg.unfreeze_backbone)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("scc: nothing to train: set model.proj_dim > 0, neigh_consensus, unmatched_bin, or "
                             "unfreeze_backbone")
        z = self.model.bin_logit
        groups = [dict(params=[p for p in params if p is not z])]
        if z is not None and z.requires_grad:
            groups.append(dict(params=[z], lr=cfg.bin_lr, weight_decay=0.0))
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        if cfg.mode == "weak":
            if cfg.use_pixel:
                check_pseudo_source(cfg.loss, cfg.model)  # now, not at the first pixel step
            m, lc = cfg.model, cfg.loss
            if m.bank_size and (m.mask_bias, m.mask_temp) != (lc.region_bias, lc.region_temp):
                # the bank's masks stand in for the training masks at inference: other b, t select other cells
                how = (f"set loss.region_bias / region_temp to the values of {cfg.init_checkpoint}'s model (its config "
                       "replaces model.*)") if cfg.init_checkpoint else "set them equal"
                raise ValueError(f"scc: model.mask_bias / mask_temp ({m.mask_bias}, {m.mask_temp}), the bank's "
                                 f"inference masks, must equal the training masks' loss.region_bias / region_temp "
                                 f"({lc.region_bias}, {lc.region_temp}); {how}")
            self.strategy = WeakSupervision(cfg.loss, cfg.use_region, cfg.use_pixel)
        elif cfg.mode == "strong":
            self.strategy = StrongSupervision(cfg.loss)
        else:
            raise ValueError(f"scc: TrainConfig.mode must be 'weak' or 'strong', got {cfg.mode!r}")
        self.loss_fn = _Loss(self.model, self.strategy)
        if self.world > 1:
            # DDP wraps the whole loss: parameters that act after the features (neighbourhood consensus)
            # must act inside its forward. find_unused_parameters: some parameters only act under no_grad
            # (pseudo-labels) in some steps.
            self.loss_fn = torch.nn.parallel.DistributedDataParallel(
                self.loss_fn, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.dataset = make_train_dataset(cfg)
        if len(self.dataset) < cfg.batch_size:
            raise ValueError(f"scc: the training set has {len(self.dataset)} pairs, fewer than one batch "
                             f"({cfg.batch_size})")
        self.step = 0
        self.out = Path(cfg.out)
        self.owns_out = False  # set by resume() or the first run(): `out` then holds this run
        if cfg.proj_init not in ("pca", "random", "identity"):
            raise ValueError(f"scc: TrainConfig.proj_init must be 'pca', 'identity' or 'random', got {cfg.proj_init!r}")
        if self.model.proj is not None and not cfg.init_checkpoint:  # a checkpoint brings its projection
            if cfg.proj_init == "pca":
                n = min(cfg.proj_init_pairs, len(self.dataset))
                imgs = torch.cat([torch.stack([self.dataset[i]["src_img"], self.dataset[i]["trg_img"]]) for i in range(n)])
                self.model.eval()
                self.pca_variance = self.model.init_projection_pca(imgs.to(self.device))
            elif cfg.proj_init == "identity":
                self.model.init_projection_identity()
        if cfg.model.bank_size and not hasattr(self.dataset, "image_keys"):
            if not cfg.init_checkpoint:
                raise ValueError(f"scc: model.bank_size needs a dataset of named images (imagefolder or spair), "
                                 f"not {cfg.dataset!r}")
            warnings.warn(f"scc: the model of {cfg.init_checkpoint} has a bank (bank_size {cfg.model.bank_size}); "
                          f"{cfg.dataset!r} has no named images to refill it, so the trained model has none")
        self.cache = None
        # datasets with image_keys (and with_images) can run on cached features
        if cfg.feature_cache and not cfg.unfreeze_backbone and hasattr(self.dataset, "image_keys"):
            self.cache = self.fill_cache()

    def _cache_path(self, keys: list[str]) -> Path | None:
        """Where the on-disk cache of these images lives (cache_dir), keyed by everything the features depend on."""
        if not self.cfg.cache_dir:
            return None
        import hashlib

        mc = self.model.config
        ident = json.dumps(dict(data=str(Path(self.cfg.data).resolve()), keys=keys, img_size=self.cfg.img_size,
                                backbone=mc.backbone, weights=mc.backbone_weights, stages=list(mc.feature_stages),
                                stride=self.model.stride,
                                fine_tuned_backbone=hashlib.sha1(Path(self.cfg.init_checkpoint).read_bytes()).hexdigest()
                                if self.keep_backbone else None))
        return Path(self.cfg.cache_dir) / f"features-{hashlib.sha1(ident.encode()).hexdigest()[:16]}.pt"

    @torch.no_grad()
    def fill_cache(self, chunk: int = 32) -> dict:
        """{image key: hyperpixels (Din, h, w) fp16} for every training image (frozen backbone only), read
        from cache_dir when an earlier run stored them there."""
        keys = self.dataset.image_keys()
        path = self._cache_path(keys)
        if path is not None and path.is_file():
            cache = torch.load(path, weights_only=True)
        else:
            cache = {}
            self.model.eval()
            for i in tqdm(range(0, len(keys), chunk), desc="feature cache", unit="chunk", disable=self.rank != 0):
                part = keys[i:i + chunk]
                imgs = torch.stack([self.dataset.image_tensor(k) for k in part]).to(self.device)
                cache.update(zip(part, self.model.hyperpixels(imgs).half().cpu()))
            if path is not None and self.rank == 0:
                atomic_save(cache, str(path))
        self.dataset.with_images = False  # items now need only their names and annotations
        return cache

    # ---- checkpoints ---------------------------------------------------------------------------------

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    def save(self) -> None:
        if self.rank != 0:
            return
        config, commit = cfgmod.to_dict(self.cfg), self.commit
        # plain types only: model.pt says how it was trained and still loads with weights_only=True
        extra = dict(train_config=config, step=self.step, git_commit=commit)
        if self.model.train_config is not None:  # the init_checkpoint's run: a strong run's masks are its weak run's
            extra["init_train_config"] = self.model.train_config
        self.model.save(str(self.out / "model.pt"), include_backbone=self.keep_backbone, extra=extra)
        state = dict(step=self.step, model=self.model.state_dict(), optimizer=self.opt.state_dict(),
                     scheduler=self.sched.state_dict(), rng=_rng_state(self.device), config=config,
                     git_commit=commit)
        atomic_save(state, str(self.last_path))

    def resume(self, state: dict | None = None) -> None:
        """Continue from last.pt (`state`: last.pt as read_state read it before the Trainer was built)."""
        state = state if state is not None else _load_state(self.last_path)
        check_state(state, self.cfg, self.last_path)  # in full: an init_checkpoint's model config is known now
        if "bank" in state["model"]:  # a finished run's bank (the model starts without one)
            self.model.bank = torch.empty_like(state["model"]["bank"], device=self.device)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], self.device)
        self.step = state["step"]
        self.owns_out = True

    @torch.no_grad()
    def fill_bank(self) -> None:
        """The model's bank for inference-time region masks (ModelConfig.bank_size): the final features of
        training images taken in turn from each class (each class's images in sorted order), so the bank
        holds many classes; the same on every rank."""
        by_class: dict[str, list[str]] = {}
        for key in self.dataset.image_keys():
            by_class.setdefault(key.split("/")[0], []).append(key)
        rounds = max(len(v) for v in by_class.values())
        keys = [v[i] for i in range(rounds) for v in by_class.values() if i < len(v)][: self.cfg.model.bank_size]
        was_training = self.model.training
        self.model.eval()
        feats = []
        for i in range(0, len(keys), 16):
            part = keys[i:i + 16]
            if self.cache is not None:
                feats.append(self.model.project(torch.stack([self.cache[k] for k in part]).float().to(self.device)))
            else:
                feats.append(self.model.features(torch.stack([self.dataset.image_tensor(k) for k in part]).to(self.device)))
        self.model.fill_bank(torch.cat(feats))
        self.model.train(was_training)

    def _trim_metrics(self) -> None:
        """Keep only the records of steps <= self.step in metrics.jsonl: a resumed run logs again the steps
        the killed run made after its checkpoint, and a fresh run (step 0) starts an empty file."""
        path = self.out / "metrics.jsonl"
        kept = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                pass  # a record cut short by the kill
        atomic_write_text(path, "".join(kept))

    # ---- loop ------------------------------------------------------------------------------------------

    def validate(self) -> dict:
        from .data import make_dataset
        from .evaluate import EvalConfig, evaluate

        cfg = self.cfg
        if not hasattr(self, "_val_set"):
            self._val_set = make_dataset(cfg.val_dataset, cfg.val_data, 320)
        every = max(1, len(self._val_set) // cfg.val_pairs) if cfg.val_pairs else 1
        ecfg = EvalConfig(dataset=cfg.val_dataset, device=cfg.device, every=every, max_pairs=cfg.val_pairs)
        rep = evaluate(self.model, self._val_set, ecfg, progress=False)
        self.model.train()
        self.model.backbone.train(cfg.unfreeze_backbone)
        return {f"val_{k}": v["per_image"] for k, v in rep["overall"].items() if k.startswith("pck")}

    @torch.no_grad()
    def picture(self, batch: dict, writer) -> None:
        """The first pair of `batch`: masks over the images and its pseudo-labels, into TensorBoard."""
        from .geometry import cell_to_pixel
        from .visualize import masks_and_labels_picture

        data = self.strategy.picture_data(self.model) if hasattr(self.strategy, "picture_data") else None
        if data is None:
            return
        if "src_img" in batch:
            src, trg = batch["src_img"][0], batch["trg_img"][0]
        else:  # feature cache: the batch holds no images
            src, trg = (self.dataset.image_tensor(batch[f"{side}_key"][0]) for side in ("src", "trg"))
        s = self.model.stride
        img = masks_and_labels_picture(src, trg, data["mask_s"], data["mask_t"], cell_to_pixel(data["src_cells"], s),
                                       cell_to_pixel(data["trg_cells"], s))
        writer.add_image("pair/masks_and_pseudo_labels", img, self.step, dataformats="HWC")

    def batch(self, step: int) -> dict:
        idx = batch_indices(len(self.dataset), self.cfg.batch_size, self.cfg.seed, step)[self.rank::self.world]
        b = collate([self.dataset[i] for i in idx])
        if self.cache is not None:
            for side in ("src", "trg"):
                b[f"{side}_hyper"] = torch.stack([self.cache[k] for k in b[f"{side}_key"]]).float()
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}

    def run(self, progress: bool = True, stop_after: int | None = None) -> dict:
        """Train until cfg.steps (or only `stop_after` more steps: what a killed run does, leaving its last
        periodic checkpoint behind)."""
        cfg = self.cfg
        lead = self.rank == 0
        if not self.owns_out:  # a fresh run: refused over another run, or that run discarded (overwrite)
            check_fresh_out(cfg)
            if lead:
                self.last_path.unlink(missing_ok=True)  # so that --resume cannot pick up the discarded run
                (self.out / "model.pt").unlink(missing_ok=True)  # nor be read as this run's model
        self.owns_out = True
        if lead:
            self.out.mkdir(parents=True, exist_ok=True)
            cfgmod.save_yaml(cfg, self.out / "config.yaml")
            self._trim_metrics()
        log = open(self.out / "metrics.jsonl", "a") if lead else None
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.mode}", disable=not (progress and lead),
                   unit="step")
        self.model.train()
        self.model.backbone.train(cfg.unfreeze_backbone)  # a frozen backbone keeps its BN statistics
        use_amp = cfg.amp and self.device.type == "cuda"
        writer = None
        if cfg.tensorboard and lead:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step)
        terms = {}
        t0 = time.time()
        while self.step < end:
            batch = self.batch(self.step)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, terms = self.loss_fn(batch, self.step)
            finite = torch.isfinite(loss.detach()).float()
            if self.world > 1:  # every rank stops together (a lone rank would hang in the gradient all-reduce)
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not finite.item():
                if log is not None:
                    log.close()
                if writer is not None:
                    writer.close()
                raise FloatingPointError(f"scc: non-finite loss {loss.item()} at step {self.step} ({terms}); "
                                         f"stopped; the last good checkpoint is {self.last_path}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            self.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items() if k in ("image", "region", "pixel", "keypoint")})
            val = self.validate() if lead and cfg.val_every and self.step % cfg.val_every == 0 else {}
            if lead and (self.step % cfg.log_every == 0 or self.step == end or val):
                rec = dict(step=self.step, lr=self.sched.get_last_lr()[0], loss=float(loss.detach()), **terms, **val,
                           pairs_per_s=round(cfg.batch_size * cfg.log_every / max(time.time() - t0, 1e-9), 2))
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if writer is not None:
                    for k, v in rec.items():
                        if k != "step":
                            writer.add_scalar(k, v, self.step)
                t0 = time.time()
            if writer is not None and cfg.picture_every and self.step % cfg.picture_every == 0:
                self.picture(batch, writer)
            if self.step == cfg.steps and cfg.model.bank_size and hasattr(self.dataset, "image_keys"):
                self.fill_bank()
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save()
        bar.close()
        if log is not None:
            log.close()
        if writer is not None:
            writer.close()
        return terms


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scc train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="YAML file with TrainConfig fields (model.* and loss.* nested)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field, e.g. --set steps=500 --set model.vote=false (repeatable)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    args = ap.parse_args(argv)
    try:
        cfg = cfgmod.load(TrainConfig, args.config, args.set)
        # before the model, the PCA and the feature cache are computed
        state = None
        if args.resume:
            state = read_state(Path(cfg.out) / "last.pt", cfg, compare_model=not cfg.init_checkpoint)
        else:
            check_fresh_out(cfg)
        trainer = Trainer(cfg)
        if args.resume:
            trainer.resume(state)
        trainer.run()
    except (FileNotFoundError, ValueError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done: {trainer.step} steps; checkpoint {trainer.out / 'model.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
