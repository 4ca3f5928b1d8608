"""Losses of the weakly supervised cascade (METHOD.md stages 1-3) and of keypoint supervision, as
interchangeable supervision strategies (DHPF-style): ``strategy.loss(model, batch, step)`` returns the
total loss and a dict of its named terms.

Weak (class labels only):
  image level  -- MIL over pairs: a positive pair (same class) must score higher than the negatives of the
                  batch (negative_index: every item is the source of one and the target of one);
  region level -- soft masks M(i) = sigmoid((m_pos(i) - m_neg(i) - b) / t) from matchability m(i) = max_j C_ij,
                  and a hinge MIL loss: top-k% of m_pos inside the mask above top-k% of m_neg;
  pixel level  -- online pseudo-labels from masked voting + calibration (confident, mutual, inside both
                  masks; no gradient through them) supervise the appearance distribution softmax_j(C / tau),
                  with a weight ramped up after a warm-up; a model without voting (ModelConfig.vote false)
                  makes them from calibrated appearance alone, as its match() does;
  "no match" bin -- with ModelConfig.unmatched_bin, the bin logit z is learned with the pixel loss: the
                  calibrated probability of the best match at the candidate positions (mutual, inside both
                  masks) against the bin's share at every source position of the different-class pairs
                  (volumes detached: z alone).
Strong (keypoints; also pseudo-labels written in the SPair-71k layout): cross-entropy of softmax_j(C / tau)
at the source keypoints' cells against the target keypoints' cells.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

import scc_kernels as K

from .geometry import pixel_to_cell
from .model import vote_support


@dataclasses.dataclass
class LossConfig:
    """Every weight, threshold, temperature and schedule of the losses (defaults documented here)."""

    tau: float = 0.05  # temperature of the pair score and of the pixel / keypoint cross-entropies
    image_loss: str = "softplus"  # "diff": mean(s_neg - s_pos); "softplus": mean(softplus((s_neg - s_pos + margin) / T))
    image_margin: float = 0.1
    image_temp: float = 0.05
    region_bias: float = 0.0  # b in M = sigmoid((m_pos - m_neg - b) / t)
    region_temp: float = 0.05  # t
    region_topk: float = 0.2  # fraction of positions whose matchability enters the region loss
    region_margin: float = 0.05
    lambda_region: float = 0.5
    lambda_pixel: float = 1.0  # final weight of the pixel loss
    pixel_warmup: int = 200  # steps 0 .. pixel_warmup - 1 have no pixel loss (early pseudo-labels are noise)
    # the weight then rises linearly from 0 at step pixel_warmup (so the first pixel term counts at the step
    # after) to lambda_pixel at pixel_warmup + pixel_ramp; 0: lambda_pixel from step pixel_warmup on
    pixel_ramp: int = 400
    p_min: float = 0.3  # minimum calibrated probability of a pseudo-label
    mask_min: float = 0.5  # both masks must exceed this at a pseudo-label's source and target cells
    # where pseudo-labels come from: "calibrated" (the cascade: calibrated probabilities, p_min threshold) or
    # "vote" (the ablation without calibration: argmax of corr * g, mutual and inside the masks, no threshold;
    # needs ModelConfig.vote)
    pseudo_source: str = "calibrated"
    lambda_bin: float = 1.0  # weight of the "no match" bin's loss (only with ModelConfig.unmatched_bin)


def features(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(fs, ft) of a batch: from cached hyperpixels (`src_hyper`, `trg_hyper`) when the batch has them,
    else from the images."""
    return model(batch.get("src_img"), batch.get("trg_img"), batch.get("src_hyper"), batch.get("trg_hyper"))


def pair_score(corr: torch.Tensor, tau: float) -> torch.Tensor:
    """NC-Net pair score 1/2 [mean_i max_j softmax_j(C/tau) + mean_j max_i softmax_i(C/tau)]: (B,)."""
    c = corr.flatten(1, 2).flatten(2)  # (B, Ns, Nt)
    fwd = torch.softmax(c / tau, dim=2).amax(dim=2).mean(dim=1)
    bwd = torch.softmax(c / tau, dim=1).amax(dim=1).mean(dim=1)
    return 0.5 * (fwd + bwd)


def negative_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative pairs of a batch, so that every item is the source of one and the target of one: (i, the next
    item of another class after i, cyclically) and (the previous item of another class before j, j), without
    repeats, ordered by (source, target). -> (source indices, target indices); empty when every item has the
    same class. (A single roll of the batch would leave the items whose partner shares their class without a
    negative: no m_neg, a mask of ones, no region loss.)"""
    b = labels.shape[0]
    idx = torch.arange(b, device=labels.device)
    k = torch.arange(1, b, device=labels.device)
    nxt = (idx[:, None] + k) % b  # (B, B-1): the items after i, nearest first
    prv = (idx[:, None] - k) % b
    differs_n, differs_p = labels[nxt] != labels[:, None], labels[prv] != labels[:, None]
    if not differs_n.any():  # one class (or fewer than two items)
        return idx[:0], idx[:0]
    first_n, first_p = differs_n.int().argmax(dim=1), differs_p.int().argmax(dim=1)  # first True
    src = torch.cat([idx, prv[idx, first_p]])
    trg = torch.cat([nxt[idx, first_n], idx])
    pair = torch.unique(src * b + trg)  # sorted: source-major
    return pair // b, pair % b


def _select(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[idx] along the batch axis, as a product with a one-hot matrix: the same values, and a backward that sums
    an item's repeats in a fixed order (x[idx]'s backward is an atomic scatter-add, on CPU threads as on CUDA, so
    repeated indices made training differ from run to run)."""
    onehot = F.one_hot(idx, x.shape[0]).to(x.dtype)  # (P, B)
    with torch.autocast(x.device.type, enabled=False):  # autocast would round x to 16 bits
        return (onehot @ x.flatten(1)).view(len(idx), *x.shape[1:])


def _mean_by(idx: torch.Tensor, x: torch.Tensor, b: int) -> torch.Tensor:
    """The mean of x's rows (P, ...) over the rows of each item that idx (P,) names: (b, ...); 0 where none, as a
    product with a fixed matrix (an index_add would sum repeats atomically on CUDA)."""
    onehot = F.one_hot(idx, b).to(x.dtype).T  # (b, P)
    with torch.autocast(x.device.type, enabled=False):
        mean = onehot / onehot.sum(1, keepdim=True).clamp(min=1)
        return (mean @ x.flatten(1)).view(b, *x.shape[1:])


def image_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    if cfg.image_loss == "diff":
        return s_neg.mean() - s_pos.mean()
    if cfg.image_loss == "softplus":
        # every negative against the mean positive score
        return F.softplus((s_neg - s_pos.mean() + cfg.image_margin) / cfg.image_temp).mean() * cfg.image_temp
    raise ValueError(f"scc: LossConfig.image_loss must be 'diff' or 'softplus', got {cfg.image_loss!r}")


def matchability(corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m_s(i) = max_j C_ij: (B, hs, ws); m_t(j) = max_i C_ij: (B, ht, wt)."""
    return corr.flatten(3).amax(dim=3), corr.flatten(1, 2).amax(dim=1)


def region_masks(m_pos: torch.Tensor, m_neg: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    return torch.sigmoid((m_pos - m_neg - cfg.region_bias) / cfg.region_temp)


def _topk_mean(x: torch.Tensor, frac: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    v = x.flatten(1) if weight is None else (x * weight).flatten(1)
    k = max(1, int(math.ceil(frac * v.shape[1])))
    return v.topk(k, dim=1).values.mean(dim=1)


def region_loss(m_pos, m_neg, mask, cfg: LossConfig) -> torch.Tensor:
    """Hinge MIL: the top-k% matchability inside the mask must exceed the top-k% against negatives.
    "Inside" is soft, m_pos * mask, and k counts every position (region_topk of the image, not of the mask):
    a mask smaller than that share brings cells near 0 into the positive mean, a prior that the object
    covers at least region_topk of the image."""
    top_pos = _topk_mean(m_pos, cfg.region_topk, mask)
    top_neg = _topk_mean(m_neg, cfg.region_topk)
    return F.relu(top_neg - top_pos + cfg.region_margin).mean()


def pseudo_labels(corr, mask_s, mask_t, model_cfg, cfg: LossConfig, bin_logit=None):
    """Online pixel pseudo-labels: j* = argmax_j P_ij where P_ij* > p_min, the match is mutual (i is the
    argmax of the backward distribution at j*) and lies inside both masks. -> (target (B, Ns), valid (B, Ns))."""
    return _pseudo_labels(corr, mask_s, mask_t, model_cfg, cfg, bin_logit)[:2]


def check_pseudo_source(cfg: LossConfig, model_cfg) -> None:
    if cfg.pseudo_source not in ("calibrated", "vote"):
        raise ValueError(f"scc: LossConfig.pseudo_source must be 'calibrated' or 'vote', got {cfg.pseudo_source!r}")
    if cfg.pseudo_source == "vote" and not model_cfg.vote:
        # without the vote, "vote" labels would be every mutual nearest neighbour inside the masks, unthresholded
        raise ValueError("scc: LossConfig.pseudo_source='vote' takes pseudo-labels from the vote: it needs model.vote=true")


@torch.no_grad()
def _pseudo_labels(corr, mask_s, mask_t, model_cfg, cfg: LossConfig, bin_logit=None):
    """pseudo_labels, the vote g (B, hs, ws, ht, wt) they came from, and the candidates (B, Ns): mutual and
    inside both masks, before the probability threshold."""
    check_pseudo_source(cfg, model_cfg)
    b, hs, ws, ht, wt = corr.shape
    g, lam = vote_support(corr, mask_s, mask_t, model_cfg)
    g = g if g is not None else torch.ones_like(corr)  # a model without voting: appearance alone (lam = 0)
    if cfg.pseudo_source == "calibrated":
        P, _ = K.calibrate(corr, g, lam, model_cfg.tau, bin_logit)
        Pb, _ = K.calibrate(corr.permute(0, 3, 4, 1, 2), g.permute(0, 3, 4, 1, 2), lam, model_cfg.tau, bin_logit)
        p_min = cfg.p_min
    else:  # "vote"
        P = (corr * g).reshape(b, hs * ws, ht * wt)
        Pb, p_min = P.transpose(1, 2), -1.0
    conf, j = P.max(dim=2)  # (B, Ns)
    back = Pb.argmax(dim=2)  # (B, Nt): best source of each target
    i = torch.arange(hs * ws, device=corr.device).expand(b, -1)
    mutual = back.gather(1, j) == i
    inside = (mask_s.flatten(1) > cfg.mask_min) & (mask_t.flatten(1).gather(1, j) > cfg.mask_min)
    return j, (conf > p_min) & mutual & inside, g, mutual & inside


def bin_loss(corr_pos, g_pos, target, valid, corr_neg, model_cfg, bin_logit) -> torch.Tensor:
    """Loss of the "no match" logit z (volumes detached, so z alone learns): at the pseudo-labelled source
    positions of same-class pairs -log P_ij*, at every source position of the different-class pairs
    -log P_unmatched; the two halves weigh the same, so z settles where the bin separates them."""
    tau = model_cfg.tau
    corr_neg = corr_neg.detach()
    g_neg, lam = vote_support(corr_neg, None, None, model_cfg)
    P, _ = K.calibrate(corr_pos.detach(), g_pos, lam, tau, bin_logit)
    pos = -torch.log(P.gather(2, target[..., None])[..., 0][valid].clamp_min(1e-30)).mean()
    _, unmatched = K.calibrate(corr_neg, g_neg if g_neg is not None else torch.ones_like(corr_neg), lam, tau, bin_logit)
    neg = -torch.log(unmatched.clamp_min(1e-30)).mean()
    return 0.5 * (pos + neg)


def pixel_loss(corr: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, tau: float) -> torch.Tensor:
    """Cross-entropy of softmax_j(C_ij / tau) against targets at the valid source positions (0 if none)."""
    logits = corr.flatten(1, 2).flatten(2) / tau  # (B, Ns, Nt)
    if not valid.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid], target[valid])


def pixel_weight(step: int, cfg: LossConfig) -> float:
    if step < cfg.pixel_warmup:
        return 0.0
    if cfg.pixel_ramp <= 0:
        return cfg.lambda_pixel
    return cfg.lambda_pixel * min(1.0, (step - cfg.pixel_warmup) / cfg.pixel_ramp)


class WeakSupervision:
    """Image-, region- and pixel-level matching from class labels only (batch: src_img, trg_img, label)."""

    def __init__(self, cfg: LossConfig | None = None, use_region: bool = True, use_pixel: bool = True):
        self.cfg = cfg or LossConfig()
        self.use_region, self.use_pixel = use_region, use_pixel

    def loss(self, model, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        fs, ft = features(model, batch)
        labels = torch.as_tensor(batch["label"], device=fs.device)
        src_i, trg_j = negative_index(labels)
        corr_pos = model.filtered_volume(fs, ft)
        if src_i.numel() == 0:
            # A batch (or a DDP rank's shard) of one class has no negatives, so no weak term exists. Rather
            # than stop a run on a draw of the sampler, the step contributes nothing (a zero loss that still
            # reaches the parameters, so DDP's all-reduce runs on every rank) and says so in the metrics.
            self.last = None
            return corr_pos.sum() * 0.0, {"single_class_batch": 1.0}
        corr_neg = model.filtered_volume(_select(fs, src_i), _select(ft, trg_j))
        s_pos, s_neg = pair_score(corr_pos, cfg.tau), pair_score(corr_neg, cfg.tau)
        terms = {"image": image_loss(s_pos, s_neg, cfg)}
        total = terms["image"]
        ms_pos, mt_pos = matchability(corr_pos)
        if self.use_region:
            ms_neg, mt_neg = matchability(corr_neg)
            # m_neg of item i: the mean over the negatives it takes part in (as source, resp. as target)
            ms_n, mt_n = _mean_by(src_i, ms_neg, len(labels)), _mean_by(trg_j, mt_neg, len(labels))
            mask_s, mask_t = region_masks(ms_pos, ms_n, cfg), region_masks(mt_pos, mt_n, cfg)
            terms["region"] = 0.5 * (region_loss(ms_pos, ms_n, mask_s, cfg) + region_loss(mt_pos, mt_n, mask_t, cfg))
            total = total + cfg.lambda_region * terms["region"]
        else:
            mask_s, mask_t = torch.ones_like(ms_pos), torch.ones_like(mt_pos)
        w = pixel_weight(step, cfg) if self.use_pixel else 0.0
        if w > 0:
            target, valid, g, candidate = _pseudo_labels(corr_pos.detach(), mask_s.detach(), mask_t.detach(), model.config, cfg,
                                              model.bin_logit)
            terms["pixel"] = pixel_loss(corr_pos, target, valid, cfg.tau)
            terms["pseudo_labels_per_pair"] = valid.float().sum(1).mean().detach()
            total = total + w * terms["pixel"]
            # the bin learns from the candidates, not from the pseudo-labels its own share thresholds (a bin
            # that starts too high would leave none and never learn)
            if model.bin_logit is not None and cfg.lambda_bin > 0 and candidate.any():
                terms["bin"] = bin_loss(corr_pos, g, target, candidate, corr_neg, model.config, model.bin_logit)
                total = total + cfg.lambda_bin * terms["bin"]
        terms["s_pos"], terms["s_neg"] = s_pos.mean().detach(), s_neg.mean().detach()
        # what the first pair looked like (training draws it now and then): masks and the volume
        self.last = dict(corr=corr_pos[:1].detach(), mask_s=mask_s[:1].detach(), mask_t=mask_t[:1].detach())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def picture_data(self, model) -> dict | None:
        """Masks (hs, ws), (ht, wt) and pseudo-labels (source cells, target cells as (col, row)) of the
        first pair of the last batch, or None before the first step."""
        last = getattr(self, "last", None)
        if last is None:
            return None
        target, valid = pseudo_labels(last["corr"], last["mask_s"], last["mask_t"], model.config, self.cfg, model.bin_logit)
        _, hs, ws, ht, wt = last["corr"].shape
        i = torch.nonzero(valid[0]).flatten()
        j = target[0, i]
        return dict(mask_s=last["mask_s"][0], mask_t=last["mask_t"][0],
                    src_cells=torch.stack([i % ws, i // ws], -1).float(), trg_cells=torch.stack([j % wt, j // wt], -1).float())


class StrongSupervision:
    """Keypoint cross-entropy (batch: src_img, trg_img, src_kps, trg_kps, n_pts), DHPF-style."""

    def __init__(self, cfg: LossConfig | None = None):
        self.cfg = cfg or LossConfig()

    def loss(self, model, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
        fs, ft = features(model, batch)
        corr = model.filtered_volume(fs, ft)
        b, hs, ws, ht, wt = corr.shape
        logits = corr.flatten(1, 2).flatten(2) / self.cfg.tau  # (B, Ns, Nt)
        src = pixel_to_cell(batch["src_kps"], model.stride).round().long()
        trg = pixel_to_cell(batch["trg_kps"], model.stride).round().long()
        n = torch.as_tensor(batch["n_pts"], device=corr.device).view(-1)
        valid = torch.arange(src.shape[1], device=corr.device)[None] < n[:, None]
        valid &= (src[..., 0] >= 0) & (src[..., 0] < ws) & (src[..., 1] >= 0) & (src[..., 1] < hs)
        valid &= (trg[..., 0] >= 0) & (trg[..., 0] < wt) & (trg[..., 1] >= 0) & (trg[..., 1] < ht)
        if not valid.any():
            raise ValueError("scc: strong supervision got a batch with no keypoint inside both images")
        i = (src[..., 1] * ws + src[..., 0]).clamp(0, hs * ws - 1)
        j = (trg[..., 1] * wt + trg[..., 0]).clamp(0, ht * wt - 1)
        rows = logits.gather(1, i[..., None].expand(-1, -1, ht * wt))  # (B, N, Nt)
        ce = F.cross_entropy(rows.flatten(0, 1), j.flatten(), reduction="none").view(b, -1) * valid
        # mean over each pair's keypoints, then over pairs (pairs weigh the same whatever their keypoint count,
        # so means over equal shares of a batch on several ranks average to the mean over the whole batch)
        per_pair = ce.sum(1) / valid.sum(1).clamp(min=1)
        has = valid.any(1)
        loss = per_pair[has].mean()
        return loss, {"keypoint": float(loss.detach()), "keypoints": float(valid.sum())}
