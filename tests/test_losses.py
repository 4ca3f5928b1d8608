"""The weak cascade's losses and the keypoint loss on hand-made cases."""

import pytest
import torch
import torch.nn.functional as F

from scc.losses import (LossConfig, _mean_by, _select, StrongSupervision, WeakSupervision, image_loss, matchability, negative_index,
                        bin_loss, pair_score, pixel_loss, pixel_weight, pseudo_labels, region_masks)
from scc.model import ModelConfig, SCCNet


def corr_from(fs, ft):
    import scc_kernels as K

    return K.correlation(F.normalize(fs, dim=1), F.normalize(ft, dim=1))


def test_pair_score_prefers_matching_pairs():
    f = torch.randn(1, 16, 4, 5)
    same = pair_score(corr_from(f, f), 0.05)
    other = pair_score(corr_from(f, torch.randn(1, 16, 4, 5)), 0.05)
    assert 0 < other.item() < same.item() <= 1


def test_negative_index_gives_every_item_a_negative_both_ways():
    src, trg = negative_index(torch.tensor([0, 0, 1, 2]))
    # next other-class item of each i, and previous other-class item of each j; (0 -> 1) is same-class
    assert list(zip(src.tolist(), trg.tolist())) == [(0, 2), (1, 2), (2, 3), (3, 0), (3, 1)]
    src, trg = negative_index(torch.tensor([0, 1, 0, 1]))  # one roll already pairs everyone: no extra pairs
    assert list(zip(src.tolist(), trg.tolist())) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert negative_index(torch.tensor([3, 3]))[0].numel() == 0
    assert negative_index(torch.tensor([5]))[0].numel() == 0
    g = torch.Generator().manual_seed(0)
    for b in (2, 3, 5, 8, 13):
        for _ in range(50):
            labels = torch.randint(0, 3, (b,), generator=g)
            src, trg = negative_index(labels)
            if labels.unique().numel() < 2:
                assert src.numel() == 0
                continue
            assert (labels[src] != labels[trg]).all()
            assert set(src.tolist()) == set(range(b)) and set(trg.tolist()) == set(range(b))
            pairs = list(zip(src.tolist(), trg.tolist()))
            assert pairs == sorted(set(pairs)) and len(pairs) <= 2 * b


def test_negative_rows_are_selected_and_averaged_exactly():
    # negatives repeat items: their selection and the m_neg means are products with fixed matrices, whose
    # backward adds the repeats in a fixed order (x[idx]'s scatter-add made training differ from run to run)
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([3, 0, 3, 1, 3])
    sel = _select(x, idx)
    assert torch.equal(sel, x[idx])
    up = torch.randn_like(sel)
    (gx,) = torch.autograd.grad(sel, x, up)
    torch.testing.assert_close(gx, torch.zeros_like(x).index_add(0, idx, up), rtol=1e-15, atol=1e-15)
    mean = _mean_by(idx, sel, 5)
    assert mean.shape == (5, 3, 5, 2) and not mean[2].any() and not mean[4].any()  # no rows: 0
    torch.testing.assert_close(mean[3], x[3].expand(3, -1, -1, -1).mean(0))
    torch.testing.assert_close(mean[:2], x[[0, 1]])


@pytest.mark.parametrize("kind", ["diff", "softplus"])
def test_image_loss_decreases_as_positives_score_higher(kind):
    cfg = LossConfig(image_loss=kind)
    s_neg = torch.tensor([0.3, 0.4])
    assert image_loss(torch.tensor([0.9]), s_neg, cfg) < image_loss(torch.tensor([0.5]), s_neg, cfg)
    with pytest.raises(ValueError, match="image_loss"):
        image_loss(s_neg, s_neg, LossConfig(image_loss="x"))


def test_region_masks_follow_matchability():
    cfg = LossConfig(region_temp=0.05)
    m_pos = torch.tensor([[[0.9, 0.2]]])
    m_neg = torch.tensor([[[0.3, 0.2]]])
    m = region_masks(m_pos, m_neg, cfg)
    assert m[0, 0, 0] > 0.99 and abs(m[0, 0, 1] - 0.5) < 1e-6
    c = torch.rand(2, 3, 4, 5, 6)
    ms, mt = matchability(c)
    assert ms.shape == (2, 3, 4) and mt.shape == (2, 5, 6)
    assert torch.equal(ms[1, 2, 3], c[1, 2, 3].max())


@pytest.mark.parametrize("source", ["calibrated", "vote"])
def test_pseudo_labels_recover_a_clear_translation(source):
    f = torch.randn(1, 32, 6, 9)
    fs, ft = f[..., :7], f[..., 2:]  # target = source shifted 2 cells left
    corr = corr_from(fs, ft)
    ones_s, ones_t = torch.ones(1, 6, 7), torch.ones(1, 6, 7)
    target, valid = pseudo_labels(corr, ones_s, ones_t, ModelConfig(), LossConfig(p_min=0.1, pseudo_source=source))
    i = torch.arange(42)
    expect = i - 2  # same row, column - 2
    ok = valid[0] & (i % 7 >= 2)
    assert ok.sum() >= 20
    assert torch.equal(target[0][ok], expect[ok])
    _, none = pseudo_labels(corr, torch.zeros(1, 6, 7), ones_t, ModelConfig(), LossConfig(pseudo_source=source))
    assert not none.any()  # outside the source mask: no pseudo-label
    with pytest.raises(ValueError, match="pseudo_source"):
        pseudo_labels(corr, ones_s, ones_t, ModelConfig(), LossConfig(pseudo_source="nope"))
    if source == "vote":  # without the vote these would be every mutual nearest neighbour, unthresholded
        with pytest.raises(ValueError, match="model.vote=true"):
            pseudo_labels(corr, ones_s, ones_t, ModelConfig(vote=False), LossConfig(pseudo_source=source))


def test_pseudo_labels_follow_the_models_voting(monkeypatch):
    """A model that does not vote is trained on labels made without the vote: calibration of the appearance
    alone, as match() computes it, and masked_vote is never called."""
    import scc_kernels as K

    from scc.losses import _pseudo_labels

    torch.manual_seed(1)
    corr = corr_from(torch.randn(2, 16, 5, 6), torch.randn(2, 16, 4, 7))
    ms, mt = torch.rand(2, 5, 6) * 0.5 + 0.5, torch.rand(2, 4, 7) * 0.5 + 0.5
    cfg = LossConfig(p_min=0.05, mask_min=0.6)
    voting = _pseudo_labels(corr, ms, mt, ModelConfig(), cfg)
    monkeypatch.setattr(K, "masked_vote", lambda *a, **k: pytest.fail("masked_vote called for a model without voting"))
    mcfg = ModelConfig(vote=False)
    target, valid, g, candidate = _pseudo_labels(corr, ms, mt, mcfg, cfg)
    P = K.calibrate(corr, torch.ones_like(corr), 0.0, mcfg.tau)[0]
    back = corr.permute(0, 3, 4, 1, 2)
    Pb = K.calibrate(back, torch.ones_like(back), 0.0, mcfg.tau)[0]
    conf, j = P.max(2)
    mutual = Pb.argmax(2).gather(1, j) == torch.arange(30)
    inside = (ms.flatten(1) > 0.6) & (mt.flatten(1).gather(1, j) > 0.6)
    assert torch.equal(target, j) and torch.equal(valid, (conf > 0.05) & mutual & inside) and valid.any()
    assert torch.equal(candidate, mutual & inside) and torch.equal(g, torch.ones_like(corr))
    assert not torch.equal(voting[1], valid)  # the vote changes which labels are made here
    z = torch.tensor(0.5, requires_grad=True)
    assert torch.isfinite(bin_loss(corr, g, target, candidate, corr.flip(0), mcfg, z))  # no vote here either


def test_pixel_loss_and_ramp():
    corr = torch.rand(1, 2, 2, 2, 2, requires_grad=True)
    target = torch.tensor([[0, 1, 2, 3]])
    valid = torch.tensor([[True, False, True, False]])
    loss = pixel_loss(corr, target, valid, 0.1)
    (g,) = torch.autograd.grad(loss, corr)
    assert torch.isfinite(loss) and g.abs().sum() > 0
    assert pixel_loss(corr, target, torch.zeros_like(valid), 0.1).item() == 0
    cfg = LossConfig(pixel_warmup=10, pixel_ramp=20, lambda_pixel=2.0)
    assert [pixel_weight(s, cfg) for s in (0, 9, 10, 20, 30, 99)] == [0, 0, 0, 1.0, 2.0, 2.0]


def test_weak_supervision_runs_and_backpropagates_to_the_projection():
    torch.manual_seed(0)
    net = SCCNet(ModelConfig(backbone_weights=None, proj_dim=8))
    batch = dict(src_img=torch.rand(3, 3, 48, 48), trg_img=torch.rand(3, 3, 48, 48), label=torch.tensor([0, 1, 1]))
    loss, terms = WeakSupervision(LossConfig(pixel_warmup=0, pixel_ramp=0, p_min=0.0, mask_min=0.0)).loss(net, batch, 5)
    assert {"image", "region", "pixel", "s_pos", "s_neg"} <= set(terms)
    loss.backward()
    assert net.proj.weight.grad is not None and net.proj.weight.grad.abs().sum() > 0
    # a batch of one class has no negatives: it contributes nothing, says so, and still reaches the parameters
    net.zero_grad()
    loss, terms = WeakSupervision().loss(net, dict(batch, label=torch.tensor([1, 1, 1])), 0)
    assert terms == {"single_class_batch": 1.0} and loss.item() == 0
    loss.backward()
    assert net.proj.weight.grad is not None and not net.proj.weight.grad.any()


def test_strong_supervision_keypoint_loss():
    net = SCCNet(ModelConfig(backbone_weights=None, proj_dim=8))
    kps = torch.tensor([[[8.0, 8.0], [24.0, 40.0], [-1.0, -1.0]]])
    batch = dict(src_img=torch.rand(1, 3, 48, 48), trg_img=torch.rand(1, 3, 48, 48), src_kps=kps, trg_kps=kps,
                 n_pts=torch.tensor([2]))
    loss, terms = StrongSupervision().loss(net, batch, 0)
    assert terms["keypoints"] == 2 and torch.isfinite(loss)
    loss.backward()
    assert net.proj.weight.grad.abs().sum() > 0


def test_bin_loss_trains_the_unmatched_logit_towards_the_split():
    """z is pushed up when the different-class pairs' positions are matched too confidently, down when the
    pseudo-labels lose probability to the bin; only z gets a gradient."""
    torch.manual_seed(0)
    cfg = ModelConfig(vote_radius=1, lam=1.0, tau=0.1)
    corr_pos = torch.rand(2, 3, 4, 3, 5) * 0.2
    target = torch.randint(0, 15, (2, 12))
    corr_pos.view(2, 12, 15).scatter_(2, target[..., None], 0.9)  # clear matches
    valid = torch.rand(2, 12) > 0.3
    corr_neg = torch.rand(2, 3, 4, 3, 5) * 0.2  # nothing stands out
    g_pos = torch.ones_like(corr_pos)

    def grad_at(z):
        z = torch.tensor(float(z), requires_grad=True)
        bin_loss(corr_pos.requires_grad_(), g_pos, target, valid, corr_neg, cfg, z).backward()
        assert corr_pos.grad is None  # the volumes are detached: the bin loss trains z alone
        return z.grad.item()

    assert grad_at(-20.0) < 0 < grad_at(20.0)  # gradient descent moves z up from -20, down from 20


def test_weak_supervision_learns_the_bin():
    torch.manual_seed(0)
    net = SCCNet(ModelConfig(backbone_weights=None, proj_dim=8, unmatched_bin=True, vote_radius=1))
    batch = dict(src_img=torch.rand(3, 3, 48, 48), trg_img=torch.rand(3, 3, 48, 48), label=torch.tensor([0, 1, 1]))
    weak = WeakSupervision(LossConfig(pixel_warmup=0, pixel_ramp=0, p_min=0.0, mask_min=0.0))
    loss, terms = weak.loss(net, batch, 5)
    assert "bin" in terms
    loss.backward()
    assert net.bin_logit.grad is not None and net.bin_logit.grad.abs() > 0
    _, terms = WeakSupervision(LossConfig(pixel_warmup=0, pixel_ramp=0, p_min=0.0, mask_min=0.0, lambda_bin=0.0)).loss(
        net, batch, 5)
    assert "bin" not in terms
