"""The PCK evaluator on hand-computed cases, including the padded-keypoint trap."""

import pytest
import torch

from scc.evaluate import PCKAccumulator, pck_counts, threshold_size


def batch_with(trg_kps, n_pts, img_hw=(100, 200), bbox=(0.0, 0.0, 50.0, 20.0)):
    return dict(trg_kps=trg_kps[None], n_pts=torch.tensor([n_pts]), trg_img=torch.zeros(1, 3, *img_hw),
                trg_bbox=torch.tensor([bbox]))


def test_thresholds_by_hand():
    kps = torch.tensor([[10.0, 10.0], [40.0, 30.0], [-1.0, -1.0], [-1.0, -1.0]])  # 2 valid + padding
    b = batch_with(kps, 2)
    assert threshold_size(b, "img") == 200.0
    assert threshold_size(b, "bbox") == 50.0
    # bbox-kp: box of the valid keypoints only: width 30, height 20 -> 30
    assert threshold_size(b, "bbox-kp") == 30.0


def test_padded_keypoints_never_enter_the_threshold():
    """The DHPF/CHM PF-WILLOW bug: padding at (-1, -1) stretches the keypoint box and inflates PCK."""
    kps = torch.tensor([[100.0, 100.0], [120.0, 110.0]] + [[-1.0, -1.0]] * 38)
    b = batch_with(kps, 2)
    assert threshold_size(b, "bbox-kp") == 20.0  # not 121 (the box reaching the padding)


def test_pck_counts_by_hand():
    gt = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [5.0, 5.0], [-1.0, -1.0]])
    pred = torch.tensor([[0.0, 1.0], [10.0, 2.5], [0.0, 14.0], [5.0, 5.0], [1000.0, 1000.0]])
    # distances of the 4 valid points: 1, 2.5, 4, 0 ; T = 20
    c = pck_counts(pred, gt, 4, 20.0, (0.05, 0.1, 0.15))
    assert c[0.05] == (2, 4)  # <= 1.0 : d=1 and d=0
    assert c[0.1] == (2, 4)  # <= 2.0 : d=1 and d=0 (2.5 is out)
    assert c[0.15] == (3, 4)  # <= 3.0 : 1, 2.5, 0


def test_per_image_vs_per_point():
    acc = PCKAccumulator((0.1,))
    acc.add("a", {0.1: (1, 1)})  # pair 1: 1/1
    acc.add("a", {0.1: (0, 3)})  # pair 2: 0/3
    acc.add("b", {0.1: (2, 4)})  # pair 3: 2/4
    s = acc.summary()
    assert s["overall"]["pck@0.1"]["per_image"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert s["overall"]["pck@0.1"]["per_point"] == pytest.approx(3 / 8)
    assert s["per_category"]["a"]["pck@0.1"]["per_image"] == pytest.approx(0.5)
    assert s["per_category"]["a"]["pck@0.1"]["per_point"] == pytest.approx(0.25)
    assert s["overall"]["pairs"] == 3


def test_no_valid_keypoints_is_an_error():
    with pytest.raises(ValueError, match="no valid keypoints"):
        pck_counts(torch.zeros(3, 2), torch.zeros(3, 2), 0, 10.0, (0.1,))


def test_every_and_max_pairs_pick_evenly_spaced_pairs():
    from scc.data.synthetic import SyntheticPairs
    from scc.evaluate import EvalConfig, evaluate
    from scc.model import ModelConfig, SCCNet

    seen = []

    class Recording(SyntheticPairs):  # records which pairs the evaluation reads
        def __getitem__(self, i):
            seen.append(i)
            return super().__getitem__(i)

    wrapper = Recording(num_classes=2, num_pairs=7, img_size=64, seed=3)
    net = SCCNet(ModelConfig(backbone_weights=None, vote_radius=1))
    rep = evaluate(net, wrapper, EvalConfig(dataset="synthetic", every=3), progress=False)
    assert seen == [0, 3, 6] and rep["protocol"]["pairs_evaluated"] == 3
    seen.clear()
    evaluate(net, wrapper, EvalConfig(dataset="synthetic", every=3, max_pairs=2), progress=False)
    assert seen == [0, 3]
    with pytest.raises(ValueError, match="every"):
        evaluate(net, wrapper, EvalConfig(dataset="synthetic", every=0), progress=False)


def test_threshold_auto_is_each_datasets_protocol():
    from scc.data.pfpascal import PFPascal
    from scc.data.pfwillow import PFWillow
    from scc.data.spair import SPair
    from scc.data.synthetic import SyntheticPairs
    from scc.data.tss import TSS
    from scc.evaluate import threshold_kind

    # the field's protocols (DHPF's "auto"; PF-WILLOW over valid keypoints only, see the data README)
    assert {c.__name__: threshold_kind("auto", c) for c in (PFWillow, PFPascal, SPair, TSS, SyntheticPairs)} == {
        "PFWillow": "bbox-kp", "PFPascal": "img", "SPair": "bbox", "TSS": "img", "SyntheticPairs": "bbox-kp"}
    ds = SyntheticPairs(num_classes=2, num_pairs=4, img_size=32)
    assert threshold_kind("auto", torch.utils.data.Subset(torch.utils.data.Subset(ds, [0, 1]), [0])) == "bbox-kp"
    assert threshold_kind("img", ds) == "img"
    with pytest.raises(ValueError, match="threshold must be 'auto' or one of"):
        threshold_kind("box", ds)
    with pytest.warns(UserWarning, match="names no standard PCK threshold"):
        assert threshold_kind("auto", []) == "bbox-kp"


def test_report_records_the_threshold_and_size_actually_used():
    from scc.data.synthetic import SyntheticPairs
    from scc.evaluate import EvalConfig, evaluate
    from scc.model import ModelConfig, SCCNet

    ds = SyntheticPairs(num_classes=2, num_pairs=2, img_size=48, seed=1)
    net = SCCNet(ModelConfig(backbone_weights=None, vote=False))
    rep = evaluate(net, ds, EvalConfig(dataset="synthetic", img_size=320), progress=False)
    assert rep["protocol"]["threshold"] == "bbox-kp" and rep["protocol"]["image_size"].startswith("longer side 48 px")
    rep = evaluate(net, ds, EvalConfig(dataset="synthetic", threshold="img"), progress=False)
    assert rep["protocol"]["threshold"] == "img"


def test_bbox_threshold_needs_annotated_boxes():
    """Readers without boxes fill trg_bbox with the keypoint box: `bbox` must not silently mean bbox-kp."""
    from scc.data.common import collate_single, pair_item
    from scc.data.synthetic import SyntheticPairs
    from scc.evaluate import EvalConfig, evaluate
    from scc.model import ModelConfig, SCCNet
    from PIL import Image

    ds = SyntheticPairs(num_classes=2, num_pairs=2, img_size=48, seed=1)
    net = SCCNet(ModelConfig(backbone_weights=None, vote=False))
    with pytest.raises(ValueError, match="threshold bbox is the annotated target box, and this dataset has no box "
                                         "annotations .*use bbox-kp .* or img"):
        evaluate(net, ds, EvalConfig(dataset="synthetic", threshold="bbox"), progress=False)
    im, kps = Image.new("RGB", (40, 30)), torch.tensor([[1.0, 2.0], [20.0, 10.0]])
    with pytest.raises(ValueError, match="threshold bbox needs an annotated target box"):
        pair_item(im, im, kps, kps, "c", "a", "b", None, pckthres_kind="bbox")
    # a reader that gives boxes (PF-PASCAL, SPair-71k) keeps `bbox`: the annotated box, not the keypoints'
    batch = collate_single([pair_item(im, im, kps, kps, "c", "a", "b", None, [0, 0, 10, 10], [0, 0, 30, 25])])
    assert threshold_size(batch, "bbox") == 30.0 and threshold_size(batch, "bbox-kp") == 19.0


def test_negative_max_pairs_and_missing_device_are_refused(monkeypatch):
    from scc.data.synthetic import SyntheticPairs
    from scc.evaluate import EvalConfig, evaluate, parse_device
    from scc.model import ModelConfig, SCCNet

    ds = SyntheticPairs(num_classes=2, num_pairs=4, img_size=32, seed=1)
    net = SCCNet(ModelConfig(backbone_weights=None, vote=False))
    # -1 used to evaluate 3 of 4 pairs (a slice end)
    with pytest.raises(ValueError, match=r"max_pairs \(--max-pairs\) must be >= 0 \(0 = all pairs\), got -1"):
        evaluate(net, ds, EvalConfig(dataset="synthetic", max_pairs=-1), progress=False)
    assert parse_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N, got 'gpu'"):
        parse_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine"):
        evaluate(net, ds, EvalConfig(dataset="synthetic", device="cuda"), progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device 'cuda:2': this machine has 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        parse_device("cuda:2")


def test_table_header_does_not_say_img():
    """`img` is a threshold's name: the averaging columns say per image / per point."""
    from scc.evaluate import format_table

    acc = PCKAccumulator((0.1,))
    acc.add("a", {0.1: (1, 2)})
    rep = acc.summary()
    rep["protocol"] = dict(alphas=[0.1])
    table = format_table(rep)
    assert table.splitlines()[0] == "| category | pairs | PCK@0.1 per image / per point |"
    assert "| all | 1 | 0.500 / 0.500 |" in table
