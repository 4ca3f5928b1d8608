"""The `scc` command end to end on small fixtures: eval writes the report and configs, match a picture."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from scc.cli import main
from test_data_model import write_willow


def test_scc_eval_writes_report_and_configs(tmp_path, capsys):
    root = write_willow(tmp_path / "willow", size=(96, 64))
    out = tmp_path / "r" / "eval.json"
    rc = main(["eval", "--dataset", "pf-willow", "--data", str(root), "--img-size", "64", "--out", str(out),
               "--set-model", "vote_radius=1", "--plot"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["protocol"]["threshold"] == "bbox-kp" and rep["protocol"]["pairs_evaluated"] == 1
    assert set(rep["overall"]) >= {"pck@0.05", "pck@0.1", "pck@0.15", "pairs"}
    assert rep["model"]["config"]["vote_radius"] == 1
    assert out.with_suffix(".eval.yaml").is_file() and out.with_suffix(".model.yaml").is_file()
    assert out.with_suffix(".png").is_file()
    printed = capsys.readouterr().out
    assert "| duck(S) | 1 |" in printed and "PCK@0.1 per image / per point" in printed


def test_scc_eval_plot_without_alpha_0_1(tmp_path):
    # --plot drew PCK@0.1 whatever was evaluated: a KeyError after the report was written
    root = write_willow(tmp_path / "willow", size=(96, 64))
    out = tmp_path / "eval.json"
    assert main(["eval", "--dataset", "pf-willow", "--data", str(root), "--img-size", "64", "--out", str(out),
                 "--set-model", "vote_radius=1", "--set", "alphas=[0.05,0.2]", "--plot"]) == 0
    assert out.with_suffix(".png").is_file()
    from scc.visualize import plot_pck_per_category

    with pytest.raises(ValueError, match=r"alpha 0.1 was not evaluated; the report has \[0.05, 0.2\]"):
        plot_pck_per_category(json.loads(out.read_text()), str(tmp_path / "p.png"), alpha=0.1)


def test_scc_eval_flags_and_config_fields(tmp_path):
    from scc import config as cfgmod
    from scc.cli import build_parser
    from scc.evaluate import EvalConfig

    # a flag that is not given must not override --set / --config (device was always forced to cpu)
    args = build_parser().parse_args(["eval", "--set", "device=cuda:1"])
    assert args.device is None and args.threshold is None
    root = write_willow(tmp_path / "willow", size=(96, 64))
    out = tmp_path / "eval.json"
    assert main(["eval", "--dataset", "pf-willow", "--data", str(root), "--img-size", "64", "--out", str(out),
                 "--set-model", "vote_radius=1", "--threshold", "img"]) == 0
    assert json.loads(out.read_text())["protocol"]["threshold"] == "img"
    assert cfgmod.load(EvalConfig, out.with_suffix(".eval.yaml")).threshold == "img"


def test_scc_eval_square_images(tmp_path):
    # DHPF/CHM evaluate at 240 x 240, CATs at 256 x 256: both images squashed to a square, keypoints per axis
    from scc.data import make_dataset

    root = write_willow(tmp_path / "willow", size=(96, 64))
    it = make_dataset("pf-willow", str(root), 48, square=True)[0]
    plain = make_dataset("pf-willow", str(root), 48)[0]
    assert it["src_img"].shape[1:] == (48, 48) and plain["src_img"].shape[1:] == (32, 48)
    torch.testing.assert_close(it["src_kps"][: it["n_pts"], 1], plain["src_kps"][: it["n_pts"], 1] * 1.5)
    out = tmp_path / "sq.json"
    assert main(["eval", "--dataset", "pf-willow", "--data", str(root), "--img-size", "48", "--out", str(out),
                 "--set-model", "vote_radius=1", "--set", "square=true"]) == 0
    assert json.loads(out.read_text())["protocol"]["image_size"] == "48 x 48 px (square)"
    with pytest.raises(ValueError, match="square=True needs an img_size"):
        make_dataset("pf-willow", str(root), None, square=True)


def test_scc_eval_bad_input(tmp_path, capsys):
    assert main(["eval", "--dataset", "pf-willow", "--data", str(tmp_path / "missing")]) == 2
    assert "PF-WILLOW folder not found" in capsys.readouterr().err
    assert main(["eval", "--dataset", "pf-willow", "--data", str(tmp_path), "--set-model", "nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_scc_match_draws_a_picture(tmp_path):
    root = write_willow(tmp_path / "willow", size=(96, 64))
    a = root / "PF-dataset-WILLOW" / "duck(S)" / "a.png"
    b = root / "PF-dataset-WILLOW" / "duck(S)" / "b.png"
    out = tmp_path / "m.png"
    assert main(["match", str(a), str(b), "--out", str(out), "--img-size", "96"]) == 0
    assert Image.open(out).size[0] > 100
    out2 = tmp_path / "t.png"
    assert main(["match", "--pair", "0", "--dataset", "pf-willow", "--data", str(root), "--out", str(out2)]) == 0
    assert out2.is_file()


def test_scc_eval_refusals_come_before_the_work(tmp_path, capsys, monkeypatch):
    root = write_willow(tmp_path / "willow", size=(96, 64))
    base = ["eval", "--dataset", "pf-willow", "--data", str(root), "--img-size", "64", "--set-model", "vote_radius=1"]
    # PF-WILLOW has no boxes: `bbox` used to be the keypoint box under the name bbox
    assert main(base + ["--threshold", "bbox", "--out", str(tmp_path / "b.json")]) == 2
    assert "has no box annotations" in capsys.readouterr().err and not (tmp_path / "b.json").exists()
    assert main(base + ["--max-pairs", "-1", "--out", str(tmp_path / "n.json")]) == 2
    assert "must be >= 0 (0 = all pairs), got -1" in capsys.readouterr().err
    assert main(base + ["--img-size", "-5", "--out", str(tmp_path / "s.json")]) == 2  # was PCK 0 at "-5 px"
    assert "img_size (--img-size) must be >= 0 (0: the original size), got -5" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
    # a config with learned parts and no checkpoint (the .model.yaml beside a report) evaluates, with a warning
    assert main(base + ["--set-model", "proj_dim=8", "--out", str(tmp_path / "w.json")]) == 0
    assert "learned parts (proj_dim) and no --checkpoint was given" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(base + ["--device", "cuda", "--out", str(tmp_path / "c.json")]) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(base + ["--out", str(tmp_path / "file" / "r.json")]) == 2  # its folder cannot be created
    assert "cannot write in its folder" in capsys.readouterr().err


def test_scc_match_bad_pair_device_and_out(tmp_path, capsys, monkeypatch):
    root = write_willow(tmp_path / "willow", size=(96, 64))
    pair = ["match", "--dataset", "pf-willow", "--data", str(root), "--img-size", "64"]
    for bad in ("5000", "-1"):  # -1 used to draw the last pair
        assert main(pair + ["--pair", bad, "--out", str(tmp_path / "p.png")]) == 2
        assert f"--pair {bad} is outside the dataset: pf-willow at {root} has 1 pairs (0..0)" in capsys.readouterr().err
    assert main(pair + ["--pair", "0", "--img-size", "-5", "--out", str(tmp_path / "p.png")]) == 2
    assert "img_size must be >= 0 pixels (0: the original size), got -5" in capsys.readouterr().err
    out = tmp_path / "sub" / "dir" / "m.png"  # missing folders are created, as eval does
    assert main(pair + ["--pair", "0", "--out", str(out)]) == 0 and out.is_file()
    (tmp_path / "file").write_text("")
    assert main(pair + ["--pair", "0", "--out", str(tmp_path / "file" / "m.png")]) == 2
    assert "cannot write in its folder" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(pair + ["--pair", "0", "--device", "cuda", "--out", str(out)]) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err
