"""SCCNet: backbone -> hyperpixel features -> projection -> correlation -> mutual filtering ->
optional neighbourhood consensus -> masked voting -> calibration -> flow (METHOD.md, stages 0 and 3).

Every stage after the backbone is a switch of :class:`ModelConfig`, so the same network serves as the
nearest-neighbour baseline (all off), the untrained pipeline, and the trained matcher. Use from any
code base::

    from scc.model import SCCNet
    net = SCCNet().eval()                       # default config: ImageNet EfficientNet-Lite0 backbone
    out = net.match(src_img, trg_img)           # images (B, 3, H, W) in [0, 1]
    trg_kps = net.transfer_keypoints(src_kps, out)   # (B, N, 2) pixels
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

import scc_kernels as K

from . import config as cfgmod
from .backbone import Backbone
from .geometry import bilinear_weights, cell_to_pixel, pixel_to_cell, transfer_keypoints
from .io import atomic_save


@dataclasses.dataclass
class ModelConfig:
    """SCCNet switches and hyper-parameters (defaults: the untrained full pipeline of METHOD.md)."""

    backbone: str = "tf_efficientnet_lite0"  # any timm model with features_only
    backbone_weights: str | None = "imagenet"  # "imagenet" (bundled for the default), a local file, or None
    feature_stages: tuple = (2, 3, 4)  # timm feature indices: strides 8, 16, 32 for EfficientNet-Lite0
    stride: int = 16  # common stride the stages are resized to
    # Resample each stage at the common grid's cell centres (pixel 16 i + 7.5 for stride 16). Off: each stage is
    # stretched over the grid, which matches only when the image sides are multiples of the coarsest stride
    # (32): otherwise the stages drift apart towards the far edges (15.5 px at the last row of a 240 px side).
    # Off by default so that the results recorded in docs/results.md and their checkpoints reproduce.
    align_stages: bool = False
    proj_dim: int = 0  # learnable 1x1 projection to this many channels; 0 = off; -1 = the hyperpixel width
    mutual: bool = True  # NC-Net mutual filtering
    neigh_consensus: bool = False  # learnable symmetric 4D convolutions (1 -> nc_channels -> 1)
    nc_channels: int = 16
    nc_kernel: int = 3
    vote: bool = True  # masked correspondence voting (here, in training's pseudo-labels and in the consistency check)
    vote_mode: str = "local"  # "local" or "global"
    vote_radius: int = 2
    vote_sigma: float = 1.0
    calibrate: bool = True  # calibrated probabilities (else: hard argmax of corr * g^lam)
    lam: float = 1.0  # weight of the geometric support in the log-combination
    tau: float = 0.05  # temperature
    unmatched_bin: bool = False  # learnable "no match" bin (bin_logit); off: no bin
    bin_init: float = 0.0
    window: int = 2  # soft-argmax window half-size around the argmax (-1: all cells; 0: hard argmax)
    # Keypoint transfer: "probability" mixes the match distributions of the 4 source cells around the
    # keypoint (bilinear weights) and soft-argmaxes the mixture; "flow" bilinearly samples the dense flow
    # (METHOD.md's wording), which averages unrelated targets where neighbouring cells disagree.
    transfer: str = "probability"
    eps: float = 1e-5
    # Region masks at inference (METHOD.md stage 2): a bank of the feature maps of training images of many
    # classes (filled at the end of training, saved in the checkpoint; SCCNet.fill_bank). match() without
    # masks then takes M(i) = sigmoid((m_pos(i) - m_neg(i) - mask_bias) / mask_temp), m_neg(i) the mean over
    # the bank images (bank_topk > 0: the k most similar) of max_j C_ij against them. 0 = no bank: masks 1.
    # Off by default: on PF-WILLOW it does not help (docs/results.md).
    bank_size: int = 0
    bank_topk: int = 0
    mask_bias: float = 0.0  # = LossConfig.region_bias / region_temp of training (the Trainer refuses others)
    mask_temp: float = 0.05


def vote_support(corr: torch.Tensor, mask_s, mask_t, cfg: ModelConfig) -> tuple[torch.Tensor | None, float]:
    """The geometric support g (B, hs, ws, ht, wt) calibration reads, and its weight lam: the masked vote,
    or (None, 0.0) when the model does not vote. Training's pseudo-labels and the consistency check read
    what match() reads, so a model without voting is not trained on labels made with it."""
    if not cfg.vote:
        return None, 0.0
    return K.masked_vote(corr, mask_s, mask_t, cfg.vote_mode, cfg.vote_radius, cfg.vote_sigma), cfg.lam


class NeighConsensus(nn.Module):
    """Symmetric 4D convolutions (NC-Net): f(C) + f(C^T)^T with f = conv4d 1->c->1 + ReLU."""

    def __init__(self, channels: int = 16, kernel: int = 3):
        super().__init__()
        k = kernel
        self.w1 = nn.Parameter(torch.randn(channels, 1, k, k, k, k) / math.sqrt(k**4))
        self.b1 = nn.Parameter(torch.zeros(channels))
        self.w2 = nn.Parameter(torch.randn(1, channels, k, k, k, k) / math.sqrt(channels * k**4))
        self.b2 = nn.Parameter(torch.zeros(1))

    def _f(self, c):
        # under autocast the volume is bf16/fp16: the weights follow it, as autocast casts a conv's (the
        # gradient reaches the fp32 parameters)
        w1, b1, w2, b2 = (p.to(c.dtype) for p in (self.w1, self.b1, self.w2, self.b2))
        x = K.conv4d(c[:, None], w1, b1).relu()
        return K.conv4d(x, w2, b2).relu()[:, 0]

    def forward(self, corr):  # corr: (B, hs, ws, ht, wt)
        t = corr.permute(0, 3, 4, 1, 2)
        return self._f(corr) + self._f(t).permute(0, 3, 4, 1, 2)


_CHOICES = dict(vote_mode=("local", "global"), transfer=("probability", "flow"))
_AT_LEAST = dict(stride=1, proj_dim=-1, nc_channels=1, vote_radius=0, window=-1, bank_size=0, bank_topk=0)
_POSITIVE = ("vote_sigma", "tau", "mask_temp", "eps")


def check_model_config(cfg: ModelConfig) -> None:
    """Refuse values the network cannot use, naming the field (they failed deep inside a kernel, or never)."""
    for name, allowed in _CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"scc: ModelConfig.{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    for name, lo in _AT_LEAST.items():
        if getattr(cfg, name) < lo:
            raise ValueError(f"scc: ModelConfig.{name} must be >= {lo}, got {getattr(cfg, name)}")
    for name in _POSITIVE:
        if not getattr(cfg, name) > 0 or not math.isfinite(getattr(cfg, name)):
            raise ValueError(f"scc: ModelConfig.{name} must be positive and finite, got {getattr(cfg, name)}")
    if not math.isfinite(cfg.lam) or cfg.lam < 0:
        raise ValueError(f"scc: ModelConfig.lam must be >= 0 and finite, got {cfg.lam}")


class SCCNet(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = cfg = config or ModelConfig()
        check_model_config(cfg)
        self.backbone = Backbone(cfg.backbone, cfg.feature_stages, cfg.backbone_weights)
        # Frozen unless asked (`net.backbone.requires_grad_(True)`, or TrainConfig.unfreeze_backbone): see train()
        self.backbone.requires_grad_(False)
        in_dim = sum(self.backbone.channels)
        self.proj = nn.Conv2d(in_dim, in_dim if cfg.proj_dim == -1 else cfg.proj_dim, 1) if cfg.proj_dim else None
        if cfg.neigh_consensus and cfg.nc_kernel not in (3, 5, 7):
            # the CUDA conv4d kernel is built for these sizes (the CPU one takes any odd size): a model
            # must not train on one device and fail on the other
            raise ValueError(f"scc: ModelConfig.nc_kernel must be 3, 5 or 7, got {cfg.nc_kernel}")
        self.nc = NeighConsensus(cfg.nc_channels, cfg.nc_kernel) if cfg.neigh_consensus else None
        self.bin_logit = nn.Parameter(torch.tensor(float(cfg.bin_init))) if cfg.unmatched_bin else None
        self.register_buffer("bank", None)  # (N, D, h, w): see fill_bank()
        self._range_checked = False  # hyperpixels(): the input range check
        self._mask_checked = False  # match_features(): the masks' range check
        self.checkpoint: dict | None = None  # where the weights came from (from_checkpoint), for result files
        self.train_config: dict | None = None  # how `scc train` made them (from_checkpoint), when it did
        self.stride = cfg.stride

    def train(self, mode: bool = True) -> "SCCNet":
        """As nn.Module.train, except that a frozen backbone (no parameter requiring grad) stays in eval mode:
        its BatchNorm layers keep their ImageNet statistics, so `net.train()` in a user's training loop neither
        makes match() depend on the batch nor overwrites the running statistics."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self

    @property
    def feature_dim(self) -> int:
        return self.proj.out_channels if self.proj is not None else sum(self.backbone.channels)

    def hyperpixels(self, img: torch.Tensor) -> torch.Tensor:
        """img: (B, 3, H, W) in [0, 1] -> L2-normalised hyperpixels before the projection
        (B, sum(backbone.channels), ceil(H/s), ceil(W/s)). With a frozen backbone these are what a
        training feature cache stores."""
        if not isinstance(img, torch.Tensor):
            raise ValueError(f"scc: images must be a torch.Tensor (B, 3, H, W) in [0, 1], got {type(img).__name__}")
        if img.dim() != 4 or img.shape[1] != 3 or img.numel() == 0:
            raise ValueError(f"scc: images must have shape (B, 3, H, W) with B, H, W > 0, got {tuple(img.shape)}")
        if not img.is_floating_point():
            raise ValueError(f"scc: images must be floating point in [0, 1], got dtype {img.dtype} (divide uint8 by 255)")
        # the backbone normalises itself: already mean/std-normalised images (DHPF, CATs batches: about -2.1 to
        # 2.6) give wrong features without any error, so they are refused (the margin lets bicubic overshoot
        # and noise through). Data-dependent, so never inside a compiled graph, and on a GPU (a host sync) only
        # on a model's first call: the mistake is systematic.
        if not torch.compiler.is_compiling() and (img.device.type == "cpu" or not self._range_checked):
            lo, hi = (float(v) for v in torch.aminmax(img.detach()))  # NaN propagates into both
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"scc: images must be finite, got values in [{lo}, {hi}] (NaN or inf pixels)")
            if lo < -0.5 or hi > 1.5:
                raise ValueError(f"scc: images must be in [0, 1] (SCCNet applies the backbone's mean/std itself), "
                                 f"got values in [{lo:.2f}, {hi:.2f}]; pass un-normalised images")
            self._range_checked = True
        img = img.to(self.backbone.mean.dtype)  # float64 (numpy's / 255.0) or half images: the backbone's dtype
        h, w = math.ceil(img.shape[2] / self.stride), math.ceil(img.shape[3] / self.stride)
        feats = []
        for f, s in zip(self.backbone(img), self.backbone.strides):
            # align_stages: output cell (y, x) reads the stage at ((y + 0.5) stride / s - 0.5, ...), the scale
            # fixing the mapping whatever the stage's size; without a scale (F.interpolate(size=...)'s own call)
            # the stage is stretched over the grid
            scale = s / self.stride if self.config.align_stages else None
            f = torch.ops.aten.upsample_bilinear2d.default(f, [h, w], False, scale, scale)
            feats.append(F.normalize(f, dim=1))
        return F.normalize(torch.cat(feats, dim=1), dim=1)

    def project(self, hyper: torch.Tensor) -> torch.Tensor:
        """hyper: (B, Din, h, w) hyperpixels -> (B, D, h, w) L2-normalised matching features."""
        return F.normalize(self.proj(hyper), dim=1) if self.proj is not None else hyper

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """img: (B, 3, H, W) in [0, 1] -> L2-normalised features (B, D, ceil(H/s), ceil(W/s))."""
        return self.project(self.hyperpixels(img))

    @torch.no_grad()
    def init_projection_identity(self) -> None:
        """Start the projection as the identity (proj_dim = the hyperpixel width): training begins exactly
        at the untrained pipeline and can only move away from it where the losses ask for it."""
        if self.proj is None or self.proj.out_channels != self.proj.in_channels:
            raise ValueError(f"scc: an identity projection needs ModelConfig.proj_dim = -1 or "
                             f"{sum(self.backbone.channels)} (the hyperpixel width), got {self.config.proj_dim}")
        self.proj.weight.copy_(torch.eye(self.proj.in_channels)[:, :, None, None])
        self.proj.bias.zero_()

    @torch.no_grad()
    def init_projection_pca(self, images: torch.Tensor, chunk: int = 16) -> float:
        """Initialise the 1x1 projection with the principal directions of the hyperpixel features of
        ``images`` (B, 3, H, W), centred on their mean: training then starts from a projection that keeps
        most of the features' variance instead of a random one. Returns the variance fraction kept."""
        if self.proj is None:
            raise ValueError("scc: init_projection_pca needs ModelConfig.proj_dim > 0")
        proj = self.proj
        feats = torch.cat([self.hyperpixels(images[i:i + chunk]).flatten(2).transpose(1, 2).reshape(-1, proj.in_channels)
                           for i in range(0, len(images), chunk)])
        mean = feats.mean(0)
        centred = feats - mean
        _, svals, vh = torch.linalg.svd(centred, full_matrices=False)
        d = proj.out_channels
        if vh.shape[0] < d:
            raise ValueError(f"scc: PCA needs at least {d} feature vectors, got {vh.shape[0]} (use more images)")
        proj.weight.copy_(vh[:d, :, None, None])
        proj.bias.copy_(-(vh[:d] @ mean))
        var = svals**2
        return float(var[:d].sum() / var.sum())

    def forward(self, src_img, trg_img, src_hyper=None, trg_hyper=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(fs, ft): the features of a batch of pairs (the start of every training loss).
        ``src_hyper`` / ``trg_hyper``: precomputed hyperpixels (a feature cache) used instead of the images."""
        fs = self.project(src_hyper) if src_hyper is not None else self.features(src_img)
        ft = self.project(trg_hyper) if trg_hyper is not None else self.features(trg_img)
        return fs, ft

    def filtered_volume(self, fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        """Correlation + mutual filtering (+ neighbourhood consensus): (B, hs, ws, ht, wt)."""
        cfg = self.config
        corr = K.correlation(fs, ft)
        if cfg.mutual:
            corr = K.mutual_nn(corr, cfg.eps)
        if self.nc is not None:
            corr = self.nc(corr)
            if cfg.mutual:
                corr = K.mutual_nn(corr, cfg.eps)
        return corr

    @torch.no_grad()
    def fill_bank(self, feats: torch.Tensor) -> None:
        """Set the bank of inference-time region masks: feats (N, D, h, w), the features of N images of many
        classes (``self.features(images)``); saved with the model."""
        if feats.dim() != 4 or feats.shape[1] != self.feature_dim:
            raise ValueError(f"scc: a bank holds feature maps (N, {self.feature_dim}, h, w), got {tuple(feats.shape)}")
        self.bank = feats.detach().float().contiguous()

    def bank_masks(self, fs: torch.Tensor, ft: torch.Tensor, corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Region masks of a pair from the bank: mask_s (B, hs, ws), mask_t (B, ht, wt) (ModelConfig.bank_size)."""
        cfg = self.config
        ms, mt = corr.flatten(3).amax(3), corr.flatten(1, 2).amax(1)  # m_pos: matchability in the pair
        return tuple(torch.sigmoid((m.float() - self._bank_neg(f) - cfg.mask_bias) / cfg.mask_temp)
                     for m, f in ((ms, fs), (mt, ft)))

    def _bank_neg(self, f: torch.Tensor) -> torch.Tensor:
        """m_neg of each position of f (B, D, h, w) against the bank, as in training against the negatives of
        a batch (filtered volumes, max over the other image, mean over the images): (B, h, w)."""
        b, n = f.shape[0], self.bank.shape[0]
        pairs = f[:, None].expand(b, n, *f.shape[1:]).flatten(0, 1)
        bank = self.bank[None].expand(b, n, *self.bank.shape[1:]).flatten(0, 1).to(f.dtype)
        m = self.filtered_volume(pairs, bank).flatten(3).amax(3).view(b, n, *f.shape[2:]).float()
        return m.topk(min(self.config.bank_topk or n, n), dim=1).values.mean(1)

    def match(self, src_img, trg_img, mask_s=None, mask_t=None) -> dict:
        """Dense matching of a batch of image pairs. Returns a dict with
        ``corr`` (B, hs, ws, ht, wt), ``P`` (B, Ns, Nt) match probabilities (or scores when calibration is
        off), ``P_unmatched`` (B, Ns) (zeros without a "no match" bin, None when calibration is off),
        ``flow`` (B, hs, ws, 2) target cells (col, row), ``conf`` (B, hs, ws), and the feature maps ``fs``, ``ft``.
        ``mask_s`` (B, hs, ws), ``mask_t`` (B, ht, wt): region masks on the feature grids (cells of ``stride`` px),
        values in [0, 1], bool or float."""
        return self.match_features(self.features(src_img), self.features(trg_img), mask_s, mask_t)

    def match_features(self, fs, ft, mask_s=None, mask_t=None) -> dict:
        cfg = self.config
        # as the images' check: logits or 0-255 masks, NaN, refused (a resampled mask's overshoot is not);
        # on a GPU (host syncs) only on the first call with masks
        if not torch.compiler.is_compiling():
            for name, m in (("mask_s", mask_s), ("mask_t", mask_t)):
                if (m is not None and m.is_floating_point() and m.numel()
                        and (m.device.type == "cpu" or not self._mask_checked)):
                    lo, hi = (float(v) for v in torch.aminmax(m.detach()))  # NaN propagates into both
                    if not (lo >= -0.5 and hi <= 1.5):
                        raise ValueError(f"scc: `{name}` must hold values in [0, 1], got [{lo}, {hi}]")
                    self._mask_checked = True
        corr = self.filtered_volume(fs, ft)
        if mask_s is None and mask_t is None and self.bank is not None and cfg.vote:
            mask_s, mask_t = self.bank_masks(fs, ft, corr)
        if corr.dtype != torch.float32 and corr.dtype != torch.float64:
            # under autocast the correlation comes out in bf16/fp16: voting, probabilities and the flow are
            # computed in fp32 (bf16 is 2 px apart between 256 and 512 px, and moves argmaxes)
            corr = corr.float()
        b, hs, ws, ht, wt = corr.shape
        g, lam = vote_support(corr, mask_s, mask_t, cfg)
        unmatched = None
        if cfg.calibrate:
            P, unmatched = K.calibrate(corr, g if g is not None else torch.ones_like(corr), lam, cfg.tau, self.bin_logit)
            window = cfg.window
        else:
            score = corr * g.clamp(min=0) ** lam if g is not None else corr
            P, window = score.reshape(b, hs * ws, ht * wt), 0  # hard argmax of the raw scores
        flow, conf = K.soft_argmax(P.reshape(corr.shape), ht, wt, window)
        if not cfg.calibrate:
            conf = conf.clamp(max=1)
        return dict(corr=corr, P=P, P_unmatched=unmatched, flow=flow, conf=conf, fs=fs, ft=ft, g=g)

    def transfer_keypoints(self, src_kps: torch.Tensor, out: dict) -> torch.Tensor:
        """src_kps: (B, N, 2) source pixels (x, y) -> (B, N, 2) target pixels (see ModelConfig.transfer).
        Padded keypoints (the field pads to a fixed N with -1 or -2) come back as some target pixel: use
        ``n_pts`` to take the first n_pts of each row. NaN (or inf) keypoints come back as NaN."""
        b = out["flow"].shape[0]
        if src_kps.dim() != 3 or src_kps.shape[0] != b or src_kps.shape[2] != 2:
            hint = " (DHPF/CATs keep keypoints as (B, 2, N): pass src_kps.transpose(1, 2))" if (
                src_kps.dim() == 3 and src_kps.shape[1] == 2) else ""
            raise ValueError(f"scc: src_kps must have shape (B={b}, N, 2) in pixels (x, y), got "
                             f"{tuple(src_kps.shape)}{hint}")
        if src_kps.shape[1] == 0:  # no keypoints (an image without annotations): nothing to transfer
            return src_kps.new_zeros(b, 0, 2, dtype=torch.float32)
        # pixel coordinates stay fp32 under autocast (bf16 is 2 px apart between 256 and 512 px)
        with torch.autocast(out["flow"].device.type, enabled=False):
            kps = src_kps.float()
            bad = ~torch.isfinite(kps).all(-1, keepdim=True)  # NaN padding: NaN out, not an index error
            return self._transfer(kps.masked_fill(bad, 0.0), out).masked_fill(bad, float("nan"))

    def _transfer(self, src_kps: torch.Tensor, out: dict) -> torch.Tensor:
        if self.config.transfer == "flow":
            return transfer_keypoints(out["flow"], src_kps, self.stride)
        b, hs, ws, ht, wt = out["corr"].shape
        weights = bilinear_weights(pixel_to_cell(src_kps, self.stride), hs, ws).to(out["P"].dtype)  # (B, N, Ns)
        mix = torch.bmm(weights, out["P"])  # (B, N, Nt)
        window = self.config.window if self.config.calibrate else 0
        flow, _ = K.soft_argmax(mix, ht, wt, window)
        return cell_to_pixel(flow, self.stride)

    def identity(self) -> dict:
        """What a result file records about the model."""
        trainable = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("backbone."))
        out = dict(backbone=self.config.backbone, backbone_weights=self.config.backbone_weights,
                   trainable_parameters=trainable, config=cfgmod.to_dict(self.config))
        if self.checkpoint is not None:  # the config alone rebuilds an untrained model
            out["checkpoint"] = self.checkpoint
        return out

    # ---- checkpoints ------------------------------------------------------------------------------

    def save(self, path: str, extra: dict | None = None, include_backbone: bool = False) -> None:
        """Atomic write (temp file + rename): an interrupted save never leaves a half-written checkpoint.
        A frozen backbone is not stored (it is rebuilt from ``backbone_weights``) unless asked."""
        state = {k: v for k, v in self.state_dict().items() if include_backbone or not k.startswith("backbone.")}
        payload = dict(format="scc.SCCNet/1", config=cfgmod.to_dict(self.config), state_dict=state, **(extra or {}))
        atomic_save(payload, path)

    @classmethod
    def from_checkpoint(cls, path: str, map_location="cpu") -> "SCCNet":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"scc: checkpoint not found: {path}")
        with open(path, "rb") as f:
            data = f.read()  # read once: loaded and hashed (identity() names the weights)
        try:
            # weights_only: a checkpoint from someone else must not be able to run code on load
            payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as exc:
            # `scc train`'s last.pt (optimizer and RNG states) is refused by weights_only: say so, not torch's advice
            hint = (f"; {path} looks like a training state (last.pt, for --resume): the model alone is model.pt "
                    f"next to it") if "weights_only" in str(exc) else ""
            raise ValueError(f"scc: cannot read checkpoint {path}{hint or f': {exc}'}") from exc
        if not isinstance(payload, dict) or payload.get("format") != "scc.SCCNet/1":
            raise ValueError(f"scc: {path} is not an SCCNet checkpoint (format {payload.get('format') if isinstance(payload, dict) else None!r})")
        net = cls(cfgmod.from_dict(ModelConfig, payload["config"]))
        # a checkpoint that stores its backbone (fine-tuned) keeps it; the others rebuild it from the config
        net.backbone_from_checkpoint = any(k.startswith("backbone.") for k in payload["state_dict"])
        if "bank" in payload["state_dict"]:  # its size is the checkpoint's
            net.bank = torch.empty_like(payload["state_dict"]["bank"])
        missing, unexpected = net.load_state_dict(payload["state_dict"], strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"scc: checkpoint {path} does not fit its config: missing {missing}, unexpected {unexpected}")
        net.checkpoint = dict(path=os.path.abspath(path), sha256=hashlib.sha256(data).hexdigest(),
                              **{k: payload[k] for k in ("step", "git_commit") if k in payload})
        net.train_config = payload.get("train_config")
        if net.train_config is not None and payload.get("init_train_config") is not None:
            # the run it started from (init_checkpoint), nested in turn: scc.pseudolabel.resolve reads the masks there
            net.train_config = {**net.train_config, "init_train_config": payload["init_train_config"]}
        return net.eval()  # for inference; a training loop calls train() itself
