"""Training: exact resume after an interruption, NaN stop keeping the last good checkpoint, disk full,
bad datasets. On the synthetic generator with a small model, so CI stays fast."""

import errno
import re
from pathlib import Path

import pytest
import torch

from scc import train as T
from scc.model import ModelConfig, SCCNet

SETS = ["dataset=synthetic", "img_size=64", "batch_size=4", "steps=6", "num_pairs=40", "ckpt_every=3",
        "log_every=1", "model.proj_dim=16", "model.vote_radius=1", "loss.pixel_warmup=2", "loss.pixel_ramp=2",
        "loss.p_min=0.0", "warmup_steps=2"]


def cfg(tmp_path, *extra):
    return T.cfgmod.load(T.TrainConfig, None, SETS + [f"out={tmp_path}"] + list(extra))


def trainable(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    a = T.Trainer(cfg(tmp_path / "a"))
    a.run(progress=False)
    b = T.Trainer(cfg(tmp_path / "b"))
    b.run(progress=False, stop_after=5)  # "killed" after step 5; its last checkpoint is step 3
    c = T.Trainer(cfg(tmp_path / "b"))
    c.resume()
    assert c.step == 3
    c.run(progress=False)
    wa, wc = trainable(a.model), trainable(c.model)
    assert wa.keys() == wc.keys()
    for k in wa:
        torch.testing.assert_close(wc[k], wa[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(wa[k], trainable(T.Trainer(cfg(tmp_path / "z")).model)[k]) for k in wa)  # it learned
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and '"pixel"' in lines[-1]
    net = SCCNet.from_checkpoint(str(tmp_path / "a" / "model.pt"))
    assert net.config.proj_dim == 16
    assert not list((tmp_path / "a").glob(".tmp-*"))


def test_resume_refuses_another_config(tmp_path, monkeypatch, capsys):
    T.Trainer(cfg(tmp_path)).run(progress=False, stop_after=3)
    other = T.Trainer(cfg(tmp_path, "lr=0.5", "loss.tau=0.2"))
    with pytest.raises(ValueError, match=r"another config \(loss\.tau: 0\.05 -> 0\.2; lr: 0\.001 -> 0\.5\)"):
        other.resume()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        T.Trainer(cfg(tmp_path / "empty")).resume()
    # `scc train --resume` refuses before the Trainer starts (its PCA and feature cache can take long)
    monkeypatch.setattr(T, "Trainer", lambda *a, **k: pytest.fail("the Trainer was built before the refusal"))
    sets = [x for s in SETS + [f"out={tmp_path}", "lr=0.5"] for x in ("--set", s)]
    assert T.main(sets + ["--resume"]) == 2
    assert "another config (lr: 0.001 -> 0.5)" in capsys.readouterr().err
    monkeypatch.undo()
    last = tmp_path / "last.pt"
    with pytest.raises(ValueError, match="looks like a training state .*model.pt"):  # the easy mix-up in `scc eval`
        SCCNet.from_checkpoint(str(last))
    last.write_bytes(last.read_bytes()[:1000])  # cut short (a copy that stopped, a full disk outside scc)
    with pytest.raises(ValueError, match=f"cannot read {re.escape(str(last))} .*cut short"):
        T.Trainer(cfg(tmp_path)).resume()
    torch.save({"step": 3}, last)
    with pytest.raises(ValueError, match="not a training state"):
        T.Trainer(cfg(tmp_path)).resume()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    tr = T.Trainer(cfg(tmp_path))
    real = tr.strategy.loss

    def poisoned(model, batch, step):
        loss, terms = real(model, batch, step)
        return (loss * float("nan") if step == 4 else loss), terms

    monkeypatch.setattr(tr.strategy, "loss", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 4"):
        tr.run(progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_disk_full_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    tr = T.Trainer(cfg(tmp_path))
    tr.run(progress=False, stop_after=3)
    before = (tmp_path / "last.pt").read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(T.torch, "save", full)
    with pytest.raises(OSError, match="No space left"):
        tr.save()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not list(tmp_path.glob(".tmp-*"))


def test_weak_training_needs_two_classes(tmp_path):
    from PIL import Image

    for i in range(3):
        (tmp_path / "data" / "n001").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(tmp_path / "data" / "n001" / f"{i}.JPEG")
    with pytest.raises(ValueError, match="at least two classes"):
        T.Trainer(cfg(tmp_path, "dataset=imagefolder", f"data={tmp_path / 'data'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        T.Trainer(cfg(tmp_path, "dataset=imagefolder", f"data={tmp_path / 'empty'}"))


def test_a_warmup_longer_than_the_run_warns(tmp_path, recwarn):
    with pytest.warns(UserWarning, match=r"warmup_steps \(50\) > steps \(6\): the learning rate peaks at 0.00012"):
        T.check_train_config(cfg(tmp_path, "warmup_steps=50"))
    recwarn.clear()
    T.check_train_config(cfg(tmp_path))  # warmup 2 of 6 steps
    T.check_train_config(cfg(tmp_path, "warmup_steps=6"))  # lr reached at the last step
    assert not [w for w in recwarn if "warmup_steps" in str(w.message)]


def test_cli_train_entry(tmp_path, capsys):
    from scc.cli import main

    assert main(["train", *sum((["--set", s] for s in SETS + [f"out={tmp_path}", "steps=2"]), [])]) == 0
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "config.yaml").is_file()
    assert main(["train", "--set", "nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    # counts and periods below their range are refused up front (0 divided by zero mid-run; steps=0 announced a
    # model.pt it never wrote)
    for bad in ("batch_size=0", "steps=0", "ckpt_every=0", "log_every=0", "val_every=-1"):
        assert main(["train", *sum((["--set", s] for s in SETS + [f"out={tmp_path / 'x'}", bad]), [])]) == 2
        assert f"TrainConfig.{bad.split('=')[0]} must be >= " in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_validation_and_tensorboard_scalars(tmp_path):
    tr = T.Trainer(cfg(tmp_path, "steps=2", "val_every=2", "val_dataset=synthetic", "val_pairs=4"))
    tr.run(progress=False)
    import json

    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= last["val_pck@0.1"] <= 1
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_tensorboard_pictures_of_masks_and_pseudo_labels(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr = T.Trainer(cfg(tmp_path, "steps=2", "picture_every=1", "loss.pixel_warmup=0"))
    tr.run(progress=False)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    images = acc.Images("pair/masks_and_pseudo_labels")
    assert [e.step for e in images] == [1, 2] and images[0].width > images[0].height > 10


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    from scc.data.synthetic import write_image_folder

    return write_image_folder(str(tmp_path_factory.mktemp("folder") / "imgs"), num_classes=3, per_class=4, img_size=64)


def folder_cfg(tmp_path, folder, *extra):
    return cfg(tmp_path, "dataset=imagefolder", f"data={folder}", "num_pairs=24", "model.proj_dim=-1",
               "proj_init=identity", *extra)


def test_feature_cache_is_what_the_images_give(tmp_path, class_folder):
    tr = T.Trainer(folder_cfg(tmp_path, class_folder))
    assert tr.cache is not None and len(tr.cache) == len(tr.dataset.image_keys()) == 12
    b = tr.batch(0)
    assert "src_img" not in b and b["src_hyper"].shape == (4, tr.model.feature_dim, 4, 4)
    imgs = torch.stack([tr.dataset.image_tensor(k) for k in b["src_key"]])
    with torch.no_grad():
        direct = tr.model.eval().hyperpixels(imgs)
    torch.testing.assert_close(b["src_hyper"], direct, rtol=0, atol=2e-3)  # fp16 storage
    # identity projection: the trained model starts exactly at the untrained pipeline
    torch.testing.assert_close(tr.model.project(direct), direct, rtol=0, atol=1e-6)


def test_resume_with_the_feature_cache(tmp_path, class_folder):
    a = T.Trainer(folder_cfg(tmp_path / "a", class_folder))
    a.run(progress=False)
    b = T.Trainer(folder_cfg(tmp_path / "b", class_folder))
    b.run(progress=False, stop_after=4)
    c = T.Trainer(folder_cfg(tmp_path / "b", class_folder))
    c.resume()
    c.run(progress=False)
    wa, wc = trainable(a.model), trainable(c.model)
    for k in wa:
        torch.testing.assert_close(wc[k], wa[k], rtol=0, atol=0, msg=k)


def test_feature_cache_on_disk_is_reused(tmp_path, class_folder, monkeypatch):
    first = T.Trainer(folder_cfg(tmp_path / "a", class_folder, f"cache_dir={tmp_path / 'cache'}"))
    files = list((tmp_path / "cache").glob("features-*.pt"))
    assert len(files) == 1
    monkeypatch.setattr(T.SCCNet, "hyperpixels", lambda *a, **k: pytest.fail("recomputed a cached feature"))
    second = T.Trainer(folder_cfg(tmp_path / "b", class_folder, f"cache_dir={tmp_path / 'cache'}"))
    assert second.cache.keys() == first.cache.keys()
    assert all(torch.equal(second.cache[k], first.cache[k]) for k in first.cache)


def test_identity_projection_needs_the_hyperpixel_width(tmp_path, class_folder):
    with pytest.raises(ValueError, match="identity projection"):
        T.Trainer(folder_cfg(tmp_path, class_folder, "model.proj_dim=16"))


def test_vote_pseudo_labels_need_a_voting_model(tmp_path):
    with pytest.raises(ValueError, match="pseudo_source='vote' .*model.vote=true"):
        T.Trainer(cfg(tmp_path, "loss.pseudo_source=vote", "model.vote=false"))
    T.Trainer(cfg(tmp_path / "no-pixel", "loss.pseudo_source=vote", "model.vote=false", "use_pixel=false"))  # unused


def test_init_checkpoint_keeps_a_fine_tuned_backbone(tmp_path):
    T.Trainer(cfg(tmp_path / "ft", "steps=1", "unfreeze_backbone=true")).run(progress=False)
    tr = T.Trainer(cfg(tmp_path / "next", "steps=1", f"init_checkpoint={tmp_path / 'ft' / 'model.pt'}", "mode=strong"))
    assert tr.keep_backbone and tr.cfg.model == SCCNet.from_checkpoint(str(tmp_path / "ft" / "model.pt")).config
    tr.run(progress=False)
    saved = torch.load(tmp_path / "next" / "model.pt", weights_only=False)["state_dict"]
    assert any(k.startswith("backbone.") for k in saved)  # not silently replaced by the ImageNet backbone
    # the strong run's model names the weak run it started from (its masks: scc.pseudolabel.resolve)
    tc = SCCNet.from_checkpoint(str(tmp_path / "next" / "model.pt")).train_config
    assert tc["mode"] == "strong" and tc["init_train_config"]["mode"] == "weak"
    assert tc["init_train_config"]["unfreeze_backbone"] is True


def steps_logged(out):
    import json

    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_drops_the_metrics_of_the_killed_steps(tmp_path):
    T.Trainer(cfg(tmp_path)).run(progress=False, stop_after=5)  # logged steps 1..5; last checkpoint at step 3
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a record cut short by the kill
    c = T.Trainer(cfg(tmp_path))
    c.resume()
    c.run(progress=False)
    assert steps_logged(tmp_path) == [1, 2, 3, 4, 5, 6]  # not [1, 2, 3, 4, 5, 4, 5, 6]
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path, capsys):
    from scc.cli import main

    T.Trainer(cfg(tmp_path)).run(progress=False, stop_after=5)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path))}.*--resume"):
        T.Trainer(cfg(tmp_path)).run(progress=False)
    assert main(["train", *sum((["--set", s] for s in SETS + [f"out={tmp_path}"]), [])]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "last.pt").read_bytes() == before and steps_logged(tmp_path) == [1, 2, 3, 4, 5]
    # overwrite: a new run from step 0 with a new metrics.jsonl, which --resume (without overwrite) continues
    T.Trainer(cfg(tmp_path, "overwrite=true", "steps=4")).run(progress=False, stop_after=2)
    assert not (tmp_path / "last.pt").is_file() and steps_logged(tmp_path) == [1, 2]
    assert not (tmp_path / "model.pt").is_file()  # the discarded run's model is gone with it
    T.Trainer(cfg(tmp_path, "overwrite=true", "steps=4")).run(progress=False)
    c = T.Trainer(cfg(tmp_path, "steps=4"))
    c.resume()
    assert c.step == 4 and steps_logged(tmp_path) == [1, 2, 3, 4]


def test_model_pt_records_the_training_config_and_commit(tmp_path):
    tr = T.Trainer(cfg(tmp_path, "steps=2"))
    tr.run(progress=False)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)  # plain types only
    assert payload["train_config"] == T.cfgmod.to_dict(tr.cfg) and payload["step"] == 2
    assert isinstance(payload["git_commit"], str) and payload["git_commit"]
    assert SCCNet.from_checkpoint(str(tmp_path / "model.pt")).config == tr.cfg.model


def test_git_commit_says_when_the_code_is_not_the_commit(tmp_path):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("no git here")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "scc").mkdir()
    (tmp_path / "scc" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("a\n")
    (tmp_path / ".gitignore").write_text("*.so\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "c"]):
        subprocess.run(git + args, cwd=tmp_path, check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    where = str(tmp_path / "scc")  # asked from the package folder, as training does
    (tmp_path / "notes.md").write_text("b\n")  # not code
    (tmp_path / "scc" / "_C.so").write_text("")  # a build output, ignored
    assert T.git_commit(where) == head
    (tmp_path / "scc" / "a.py").write_text("x = 2\n")
    assert T.git_commit(where) == head + "+dirty"
    (tmp_path / "scc" / "a.py").write_text("x = 1\n")
    (tmp_path / "scc" / "b.py").write_text("")  # new code the commit does not have
    assert T.git_commit(where) == head + "+dirty"


@pytest.mark.parametrize("mode,dataset,why", [("strong", "pf-willow", "no training split"),
                                              ("strong", "tss", "no training split"),
                                              ("strong", "pf-pascal", "aspect ratio"),
                                              ("strong", "imagefolder", "no keypoints"),
                                              ("weak", "spair", "")])
def test_training_refuses_test_only_or_non_square_datasets(tmp_path, monkeypatch, mode, dataset, why):
    monkeypatch.setattr(T, "SCCNet", lambda *a, **k: pytest.fail("built a model before refusing the dataset"))
    with pytest.raises(ValueError, match=f"{why}.*{mode} training reads .*synthetic"):
        T.Trainer(cfg(tmp_path, f"mode={mode}", f"dataset={dataset}", f"data={tmp_path}"))


def test_the_bin_logit_learns_at_its_own_rate(tmp_path):
    tr = T.Trainer(cfg(tmp_path, "model.unmatched_bin=true", "bin_lr=0.25"))
    z = tr.model.bin_logit
    (group,) = [g for g in tr.opt.param_groups if any(p is z for p in g["params"])]
    assert group["initial_lr"] == 0.25 and group["weight_decay"] == 0.0 and len(group["params"]) == 1
    tr.run(progress=False)
    assert tr.model.bin_logit.item() != 0.0  # bin_init: the weak loss moved it
    assert tr.resume() is None and tr.step == 6  # an optimizer with two groups resumes


def test_resume_counts_config_fields_added_later_as_their_defaults(tmp_path):
    new = T.cfgmod.to_dict(cfg(tmp_path))
    old = {k: v for k, v in new.items() if k != "bin_lr"}  # a checkpoint written before bin_lr existed
    old["loss"] = {k: v for k, v in new["loss"].items() if k != "lambda_bin"}
    assert T._same_run(old) == T._same_run(new)
    assert T._same_run(dict(old, lr=0.5)) != T._same_run(new)
    assert T._same_run(dict(new, bin_lr=1.0)) != T._same_run(new)


def test_training_fills_the_bank_of_inference_masks(tmp_path, class_folder):
    tr = T.Trainer(folder_cfg(tmp_path / "b", class_folder, "model.bank_size=5"))
    tr.run(progress=False)
    net = SCCNet.from_checkpoint(str(tmp_path / "b" / "model.pt"))
    assert net.bank.shape[0] == 5 and net.bank.shape[1] == net.feature_dim
    torch.testing.assert_close(net.bank, tr.model.bank)
    # each class in turn: the first images of the bank come from different classes
    with torch.no_grad():
        first = tr.model.project(torch.stack([tr.cache[k] for k in sorted(tr.dataset.image_keys())[:1]]).float())
    assert sum(torch.allclose(first[0], b) for b in net.bank) == 1
    with pytest.raises(ValueError, match="bank_size needs a dataset of named images"):
        T.Trainer(cfg(tmp_path / "s", "model.bank_size=5"))
    with pytest.raises(ValueError, match=r"model.mask_bias / mask_temp \(0.0, 0.05\).*region_temp \(0.1, 0.05\)"):
        T.Trainer(folder_cfg(tmp_path / "m", class_folder, "model.bank_size=5", "loss.region_bias=0.1"))
    T.Trainer(folder_cfg(tmp_path / "m", class_folder, "model.bank_size=5", "loss.region_bias=0.1", "model.mask_bias=0.1"))


def test_a_finished_bank_run_resumes_and_a_checkpoints_bank_is_not_carried_stale(tmp_path, class_folder):
    c = folder_cfg(tmp_path / "b", class_folder, "model.bank_size=3")
    T.Trainer(c).run(progress=False)
    again = T.Trainer(c)
    again.resume()  # last.pt holds the bank the final step filled
    assert again.step == 6 and again.model.bank.shape[0] == 3
    tuned = T.Trainer(folder_cfg(tmp_path / "t", class_folder, f"init_checkpoint={tmp_path / 'b' / 'model.pt'}"))
    assert tuned.model.bank is None  # refilled at the end, from the features this run trains


def test_files_follow_the_umask(tmp_path):
    import os

    from scc.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_resume_refuses_a_state_from_before_the_bin_was_trained(tmp_path, monkeypatch, capsys):
    T.Trainer(cfg(tmp_path, "model.unmatched_bin=true")).run(progress=False, stop_after=3)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    del state["config"]["bin_lr"]  # as written before the bin had its own optimizer group and loss
    torch.save(state, tmp_path / "last.pt")
    monkeypatch.setattr(T, "Trainer", lambda *a, **k: pytest.fail("the Trainer was built before the refusal"))
    sets = [x for s in SETS + [f"out={tmp_path}", "model.unmatched_bin=true"] for x in ("--set", s)]
    assert T.main(sets + ["--resume"]) == 2
    assert "was written before the unmatched bin was trained" in capsys.readouterr().err
