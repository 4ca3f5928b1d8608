"""`scc pseudo-label`: the SPair-71k layout read back by an independent reader written here from the layout's
description, resumability, 2-rank sharding equal to one process, strong training on the output, precision."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from scc import pseudolabel as PL
from scc.data.synthetic import write_image_folder

SETS = ["img_size=96", "pairs_per_class=6", "negatives=3", "min_kps=2", "batch_size=4"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("syn") / "imgs"), num_classes=3, per_class=5, img_size=96)


def _cfg(folder, out, extra=()):
    return PL.cfgmod.load(PL.PseudoLabelConfig, None, SETS + [f"data={folder}", f"out={out}", *extra])


def _run(folder, out, extra=()):
    lab = PL.PseudoLabeler(_cfg(folder, out, extra))
    lab.run(progress=False)
    return lab.merge()


def _tree(out: Path) -> dict:
    """Every output file except the work folder and the summary's config echo: relative path -> bytes."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and not rel.startswith("work/") and rel not in ("summary.json", "config.yaml"):
            files[rel] = p.read_bytes()
    return files


def spair_reader(root: Path, split: str) -> list[dict]:
    """An SPair-71k reader written from the layout description alone (what DHPF's and CATs' loaders do):
    entries `<idx>-<src>-<trg>:<category>`, images JPEGImages/<category>/<stem>.jpg, annotations
    PairAnnotation/<split>/<entry>.json with [x, y] keypoint lists padded by the loader to 40."""
    out = []
    for line in (root / "Layout" / "large" / f"{split}.txt").read_text().splitlines():
        left, category = line.split(":")
        _, src, trg = left.split("-")
        ann = json.loads((root / "PairAnnotation" / split / f"{line}.json").read_text())
        src_img = Image.open(root / "JPEGImages" / category / f"{src}.jpg")
        trg_img = Image.open(root / "JPEGImages" / category / f"{trg}.jpg")
        src_kps = torch.tensor(ann["src_kps"], dtype=torch.float32).t()  # (2, N), as the loaders hold them
        trg_kps = torch.tensor(ann["trg_kps"], dtype=torch.float32).t()
        n = src_kps.shape[1]
        assert trg_kps.shape[1] == n and 0 < n <= 40
        pad = torch.full((2, 40 - n), -1.0)
        out.append(dict(category=category, src_size=src_img.size, trg_size=trg_img.size, n_pts=n,
                        src_kps=torch.cat([src_kps, pad], 1), trg_kps=torch.cat([trg_kps, pad], 1),
                        src_bbox=ann["src_bndbox"], trg_bbox=ann["trg_bndbox"], ann=ann, src=src, trg=trg))
    return out


def test_layout_read_back_by_an_independent_reader(folder, tmp_path):
    summary = _run(folder, tmp_path / "out")
    total = sum(summary["pairs"].values())
    assert total > 0 and summary["images_kept"] > 0
    pairs = [p for split in ("trn", "val", "test") for p in spair_reader(tmp_path / "out", split)]
    assert len(pairs) == total
    for p in pairs:
        ann = p["ann"]
        for key in ("category", "src_imname", "trg_imname", "src_imsize", "trg_imsize", "viewpoint_variation",
                    "scale_variation", "truncation", "occlusion"):
            assert key in ann, key
        assert ann["src_imname"] == f"{p['src']}.jpg" and ann["category"] == p["category"]
        assert tuple(ann["src_imsize"][:2]) == p["src_size"] and tuple(ann["trg_imsize"][:2]) == p["trg_size"]
        for side, size in (("src", p["src_size"]), ("trg", p["trg_size"])):
            kps = p[f"{side}_kps"][:, : p["n_pts"]]
            assert (kps[0] >= -0.5).all() and (kps[0] <= size[0]).all() and (kps[1] >= -0.5).all() and (kps[1] <= size[1]).all()
            x1, y1, x2, y2 = p[f"{side}_bbox"]
            assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]
        assert p["n_pts"] >= 2  # min_kps
    # the summary says what was kept and with which thresholds
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["thresholds"]["min_kps"] == 2 and set(s["classes"]) == {"shape00", "shape01", "shape02"}
    assert not list((tmp_path / "out").rglob(".tmp-*"))  # no half-written file left behind
    # the project's own SPair reader reads it too
    from scc.data.spair import SPair

    ds = SPair(str(tmp_path / "out"), "trn", 64, square=True)
    item = ds[0]
    assert item["src_img"].shape == (3, 64, 64) and item["n_pts"] >= 2


def test_resume_neither_duplicates_nor_loses(folder, tmp_path, monkeypatch):
    ref = _run(folder, tmp_path / "ref")
    # a crashed run: class 0 finished, plus a stray temp file from the crash
    lab = PL.PseudoLabeler(_cfg(folder, tmp_path / "crash"))
    PL.atomic_write_json(lab.work / "shape00.json", {**lab.run_class(0), "fingerprint": lab.fingerprint})
    (lab.work / ".tmp-crash").write_text("{half")
    with pytest.raises(FileNotFoundError, match="shape01"):
        lab.merge()  # merging before every class is done is refused
    resumed = PL.PseudoLabeler(_cfg(folder, tmp_path / "crash"))
    real = resumed.run_class
    monkeypatch.setattr(resumed, "run_class", lambda c: pytest.fail("redid class 0") if c == 0 else real(c))
    resumed.run(progress=False)
    s = resumed.merge()
    assert s["pairs"] == ref["pairs"] and s["classes"] == ref["classes"]
    assert _tree(tmp_path / "crash") == _tree(tmp_path / "ref")


def test_a_changed_config_recomputes_and_replaces(folder, tmp_path):
    loose = _run(folder, tmp_path / "out", ["min_kps=2"])
    strict = _run(folder, tmp_path / "out", ["min_kps=6"])  # same folder: stale class files must not be reused
    assert sum(strict["pairs"].values()) < sum(loose["pairs"].values())
    assert strict == _run(folder, tmp_path / "fresh", ["min_kps=6"]) | {"config": strict["config"]}
    assert _tree(tmp_path / "out") == _tree(tmp_path / "fresh")  # no stale annotation or image left behind


def test_per_image_rule_reaches_a_fixpoint(folder, tmp_path):
    s = _run(folder, tmp_path / "out", ["min_pairs_per_image=2", "pairs_per_class=10"])
    pairs = [p for split in ("trn", "val", "test") for p in spair_reader(tmp_path / "out", split)]
    counts = {}
    for p in pairs:
        for x in (p["src"], p["trg"]):
            counts[x] = counts.get(x, 0) + 1
    assert all(n >= 2 for n in counts.values())  # every kept image is in at least m kept pairs
    kept = {p.stem for p in (tmp_path / "out" / "JPEGImages").rglob("*.jpg")}
    assert kept == set(counts) and s["images_kept"] == len(kept)


def test_symlinked_images(folder, tmp_path):
    _run(folder, tmp_path / "out", ["copy_images=false"])
    imgs = list((tmp_path / "out" / "JPEGImages").rglob("*.jpg"))
    assert imgs and all(p.is_symlink() for p in imgs)
    assert Image.open(imgs[0]).size == (96, 96)


def test_bad_inputs(folder, tmp_path):
    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "a" / "x.jpg")
    with pytest.raises(ValueError, match="at least two classes"):
        PL.PseudoLabeler(_cfg(one, tmp_path / "o1"))
    with pytest.raises(FileNotFoundError):
        PL.PseudoLabeler(_cfg(tmp_path / "missing", tmp_path / "o2"))
    bad = tmp_path / "bad"
    for c in ("a", "b"):
        (bad / c).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (40, 40), (k * 90, 30, 60)).save(bad / c / f"img-{k}.jpg")
    with pytest.raises(ValueError, match="'-' or ':'"):
        PL.PseudoLabeler(_cfg(bad, tmp_path / "o3"))  # refused before any work, not at the merge
    dup = tmp_path / "dup"
    for c in ("a", "b"):
        (dup / c).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(dup / c / "x.jpg")
        Image.new("RGB", (40, 40)).save(dup / c / "x.png")
    with pytest.raises(ValueError, match="share a stem"):
        PL.PseudoLabeler(_cfg(dup, tmp_path / "o6"))
    (tmp_path / "dash" / "a-b").mkdir(parents=True)
    (tmp_path / "dash" / "c").mkdir(parents=True)
    for c in ("a-b", "c"):
        Image.new("RGB", (40, 40)).save(tmp_path / "dash" / c / "x.jpg")
    with pytest.raises(ValueError, match="class folder 'a-b'"):
        PL.PseudoLabeler(_cfg(tmp_path / "dash", tmp_path / "o7"))
    with pytest.raises(ValueError, match="multiple of the model's stride"):
        PL.PseudoLabeler(_cfg(folder, tmp_path / "o8", ["img_size=100"]))
    # batch_size 0 failed in range(), the others wrote 0 pairs or dropped each class's last image, silently
    for bad_set, field in (("min_kps=0", "min_kps"), ("max_kps=41", "max_kps"), ("negatives=0", "negatives"),
                           ("val_frac=0.6", "val_frac"), ("batch_size=0", "batch_size must be in"),
                           ("max_per_class=-1", "max_per_class must be in"), ("p_min=2", r"p_min must be in \[0, 1\)"),
                           ("cycle_eps=-1", "cycle_eps must be in"), ("nms_cells=nan", "nms_cells must be in"),
                           ("img_size=0", "img_size >= 1"), ("img_size=-16", "img_size >= 1"),
                           ("mask_min=1.0", r"mask_min in \[0, 1\)")):
        with pytest.raises(ValueError, match=field):
            PL.PseudoLabeler(_cfg(folder, tmp_path / "o5", [bad_set, "test_frac=0.5"] if field == "val_frac" else [bad_set]))
    assert PL.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o4")]) == 2


def _worker(rank, world, port, argv):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert PL.main(argv) == 0
    assert not dist.is_initialized()


def test_two_ranks_equal_one_process(folder, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["--data", str(folder), "--out", str(tmp_path / "ddp")] + sum((["--set", x] for x in SETS), [])
    mp.spawn(_worker, args=(2, port, argv), nprocs=2, join=True)
    torch.set_num_threads(1)
    _run(folder, tmp_path / "single")
    assert _tree(tmp_path / "ddp") == _tree(tmp_path / "single")
    assert sorted(p.name for p in (tmp_path / "ddp" / "work").iterdir()) == ["shape00.json", "shape01.json", "shape02.json"]


def test_strong_training_reads_the_output(folder, tmp_path):
    from scc import train as T

    _run(folder, tmp_path / "pl")
    cfg = T.cfgmod.load(T.TrainConfig, None, [
        "mode=strong", "dataset=spair", f"data={tmp_path / 'pl'}", "img_size=64", "batch_size=2", "steps=3",
        "model.proj_dim=16", "model.vote_radius=1", "warmup_steps=1", "tensorboard=false", f"out={tmp_path / 'run'}"])
    tr = T.Trainer(cfg)
    assert tr.cache is not None and len(tr.cache) > 0  # features cached for the pseudo-labelled images
    b = tr.batch(0)
    assert "src_img" not in b and b["src_hyper"].shape[0] == 2  # images are not decoded any more
    terms = tr.run(progress=False)
    assert np.isfinite(terms["keypoint"]) and (tmp_path / "run" / "model.pt").is_file()


def test_precision_measure():
    """Hand-made: a pair related by a pure translation (+10, +5); one pseudo point right, one 8 px off, one
    outside the object's keypoint box."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        gs = [[10, 10], [50, 10], [10, 50], [50, 50]]
        gt = [[x + 10, y + 5] for x, y in gs]
        entry = "000000001-a_1-a_2:a"
        (out / "Layout" / "large").mkdir(parents=True)
        (out / "Layout" / "large" / "trn.txt").write_text(entry + "\n")
        (out / "PairAnnotation" / "trn").mkdir(parents=True)
        ann = dict(category="a", src_imname="a_1.jpg", trg_imname="a_2.jpg",
                   src_kps=[[20, 20], [30, 30], [90, 90]], trg_kps=[[30, 25], [48, 35], [0, 0]])
        (out / "PairAnnotation" / "trn" / f"{entry}.json").write_text(json.dumps(ann))
        r = PL.precision(out, {"a/a_1.jpg": gs, "a/a_2.jpg": gt}, alphas=(0.1, 0.25))
    assert r["points"] == 2 and r["points_outside_object_box"] == 1
    assert r["affine_residual_px"] == pytest.approx(0, abs=1e-9)
    assert r["precision@0.1"] == 0.5 and r["precision@0.25"] == 1.0  # 40 px box: 4 px / 10 px; errors 0 and 8 px


def test_border_cells_are_ignored(folder, tmp_path):
    # 96 px at stride 16: a 6 x 6 grid; a 3-cell border leaves no inner cell, so no keypoint and no pair
    s = _run(folder, tmp_path / "out", ["border_cells=3", "min_kps=1"])
    assert s["pairs"] == {"trn": 0, "val": 0, "test": 0}
    s = _run(folder, tmp_path / "out1", ["border_cells=1", "min_kps=1"])
    for split in ("trn", "val", "test"):
        for p in spair_reader(tmp_path / "out1", split):
            kps = p["src_kps"][:, : p["n_pts"]]
            assert (kps >= 16 - 1).all() and (kps <= 96 - 16).all()  # cells 1..4 only: pixels 16..80


def test_the_check_masks_as_the_checkpoint_was_trained(folder, tmp_path):
    """Unset mask and size fields come from the checkpoint's training config; what is set wins; a model
    without one (the untrained pipeline) gets TrainConfig's and LossConfig's defaults."""
    from scc.model import ModelConfig, SCCNet
    from scc.train import TrainConfig

    tc = TrainConfig(img_size=112)
    tc.loss.region_bias, tc.loss.region_temp, tc.loss.mask_min = 0.2, 0.1, 0.4
    ck = tmp_path / "model.pt"
    net = SCCNet(ModelConfig(backbone_weights=None, proj_dim=8))
    net.save(str(ck), extra=dict(train_config=PL.cfgmod.to_dict(tc)))
    base = [f"data={folder}", f"out={tmp_path / 'o'}"]

    def used(sets, model=None):
        c = PL.PseudoLabeler(PL.cfgmod.load(PL.PseudoLabelConfig, None, base + sets), model).cfg
        return c.img_size, c.region_bias, c.region_temp, c.mask_min

    assert used([f"checkpoint={ck}"]) == (112, 0.2, 0.1, 0.4)
    assert used([f"checkpoint={ck}", "region_bias=0.0", "img_size=96"]) == (96, 0.0, 0.1, 0.4)
    assert used([], SCCNet(ModelConfig(backbone_weights=None, proj_dim=8))) == (224, 0.0, 0.05, 0.5)
    summary_cfg = PL.PseudoLabeler(PL.cfgmod.load(PL.PseudoLabelConfig, None, base + [f"checkpoint={ck}"])).cfg
    assert PL.cfgmod.to_dict(summary_cfg)["mask_min"] == 0.4  # config.yaml and summary.json hold the values used


def test_check_pairs_reads_the_training_mask_threshold():
    from scc.model import ModelConfig, SCCNet

    torch.manual_seed(0)
    model = SCCNet(ModelConfig(backbone_weights=None, proj_dim=8)).eval()
    fs, ft = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 4, 7)
    cfg = PL.PseudoLabelConfig(region_bias=-1.0, p_min=0.0, border_cells=0)

    def kept():
        return sum(len(o["src"]) for o in PL.check_pairs(model, fs, ft, torch.zeros(2, 5, 6), torch.zeros(2, 4, 7), cfg))

    model.train_config = {"mode": "weak", "loss": {"mask_min": 0.0}}
    assert kept() > 0
    model.train_config = {"mode": "weak", "loss": {"mask_min": 1.0}}  # a sigmoid never exceeds 1: no cell is inside
    assert kept() == 0
    # a strong run's masks are those of the weak run it started from (init_checkpoint), not its own loss config
    model.train_config = {"mode": "strong", "loss": {"mask_min": 0.0},
                          "init_train_config": {"mode": "weak", "loss": {"mask_min": 1.0}}}
    assert kept() == 0
    model.train_config = {"mode": "strong", "loss": {"mask_min": 1.0}}  # no weak run: the defaults (0.5)
    assert kept() > 0


@pytest.mark.parametrize("vote", [True, False])
def test_the_check_votes_as_the_model_does(vote, monkeypatch):
    """The consistency check reads what match() reads: the masked vote only when the model votes."""
    from scc.model import ModelConfig, SCCNet

    calls, real = [], PL.K.masked_vote
    monkeypatch.setattr(PL.K, "masked_vote", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = SCCNet(ModelConfig(backbone_weights=None, proj_dim=8, vote=vote)).eval()
    fs, ft = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 4, 7)
    cfg = PL.PseudoLabelConfig(region_bias=-1.0, p_min=0.0, mask_min=0.0, border_cells=0)
    out = PL.check_pairs(model, fs, ft, torch.zeros(2, 5, 6), torch.zeros(2, 4, 7), cfg)
    assert len(calls) == int(vote) and len(out) == 2 and sum(len(o["src"]) for o in out) > 0


def test_show_pseudo_labels_draws_a_pair(folder, tmp_path, capsys, monkeypatch):
    from scc.cli import main

    out = tmp_path / "out"
    s = _run(folder, out, ["min_kps=1"])
    assert s["pairs"]["trn"] > 0
    cat = PL.read_layout(out, "trn")[-1][1]["category"]
    png = tmp_path / "pics" / "pair.png"
    assert main(["show-pseudo-labels", str(out), "--category", cat, "--out", str(png)]) == 0
    with Image.open(png) as im:
        assert im.size[0] > 300 and np.asarray(im.convert("L")).std() > 10  # two images and lines, not a blank
    drawn = []
    monkeypatch.setattr(PL, "draw_pair", lambda folder, entry, ann, path, side: drawn.append((entry, side)))
    assert main(["show-pseudo-labels", str(out), "--category", cat, "--index", "1", "--side", "99", "--out", str(png)]) == 0
    assert drawn == [([e for e, a in PL.read_layout(out, "trn") if a["category"] == cat][1], 99)]
    assert main(["show-pseudo-labels", str(out), "--side", "0", "--out", str(png)]) == 2
    assert "--side must be a positive" in capsys.readouterr().err
    assert main(["show-pseudo-labels", str(out), "--category", "no-such-class", "--out", str(png)]) == 2
    assert "outside the 0 trn pairs of category 'no-such-class'" in capsys.readouterr().err
    assert main(["show-pseudo-labels", str(out), "--index", "-1", "--out", str(png)]) == 2
    assert "--index -1 is outside" in capsys.readouterr().err
    assert main(["show-pseudo-labels", str(tmp_path), "--out", str(png)]) == 2
    assert f"is {tmp_path} the output of `scc pseudo-label`" in capsys.readouterr().err
