"""`scc demo`: the main job in one command, writing a report folder.

1. evaluate the nearest-neighbour baseline and the untrained full pipeline;
2. train SCCNet weakly (class labels only) on a class-folder dataset;
3. run the consistency check with it and export pseudo-labels in the SPair-71k layout;
4. train SCCNet with keypoint supervision on those pseudo-labels, starting from the weak model;
5. evaluate each model, and write ``report.md`` with the PCK table, a per-category plot, pictures of
   keypoint transfer and of pseudo-labels, the pseudo-labels' precision where the truth is known, and
   every config used.

With no arguments it runs on an embedded default: synthetic object classes drawn on the fly (training
folder and keypoint-annotated evaluation pairs) and the backbone shipped in a wheel; a few minutes on
a CPU. With ``--data ../shared/data`` (or ``SCC_DATA``) it trains on Imagenette and evaluates on PF-WILLOW.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from . import config as cfgmod
from .io import atomic_write_json, atomic_write_text


@dataclasses.dataclass
class DemoConfig:
    data: str | None = None  # a folder with imagenette/ and pf-willow/ (None: synthetic, generated)
    out: str = "runs/demo"
    device: str = "cpu"
    seed: int = 0
    img_size: int = 0  # training and pseudo-labelling image side (0: 128 synthetic, 224 real data)
    weak_steps: int = 0  # 0: 300 synthetic, 1500 real data (the recipe of docs/results.md)
    weak_lr: float = 1e-4
    strong_steps: int = 0  # 0: 200 synthetic, 1000 real data
    train_per_class: int = 0  # images per class used (0: 24 synthetic, 300 real data)
    pairs_per_class: int = 0  # pseudo-label candidate pairs per class (0: 40 synthetic, 150 real data)
    eval_pairs: int = 0  # evaluated pairs, evenly spaced (0: 80 synthetic, all 900 of PF-WILLOW)
    pictures: int = 3  # keypoint-transfer and pseudo-label pictures drawn


def _resolve(cfg: DemoConfig) -> DemoConfig:
    real = cfg.data is not None
    defaults = dict(img_size=(128, 224), weak_steps=(300, 1500), strong_steps=(200, 1000),
                    train_per_class=(24, 300), pairs_per_class=(40, 150), eval_pairs=(80, 0))
    return dataclasses.replace(cfg, **{k: v[real] for k, v in defaults.items() if getattr(cfg, k) == 0})


def _stage(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _eval_set(cfg: DemoConfig, root: Path | None):
    from .data import make_dataset
    from .data.synthetic import SyntheticPairs

    if root is None:
        ds = SyntheticPairs(num_classes=6, num_pairs=cfg.eval_pairs, img_size=cfg.img_size, seed=cfg.seed + 1)
        return ds, "synthetic"
    return make_dataset("pf-willow", str(root / "pf-willow"), 320), "pf-willow"


def run(cfg: DemoConfig) -> Path:
    from .data.synthetic import write_image_folder
    from .evaluate import EvalConfig, evaluate, write_report
    from .model import ModelConfig, SCCNet
    from .pseudolabel import PseudoLabelConfig, PseudoLabeler, precision
    from .train import TrainConfig, Trainer
    from .visualize import plot_pck_comparison

    cfg = _resolve(cfg)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    (out / "pictures").mkdir(parents=True, exist_ok=True)
    cfgmod.save_yaml(cfg, out / "demo.yaml")
    t_start = time.time()
    root = Path(cfg.data) if cfg.data is not None else None
    if root is None:
        _stage("synthetic data: 6 object classes, a training folder and keypoint-annotated evaluation pairs")
        train_dir = write_image_folder(str(out / "data" / "train"), num_classes=6, per_class=cfg.train_per_class,
                                       img_size=cfg.img_size, seed=cfg.seed)
        truth = json.loads((train_dir / "keypoints.json").read_text())
    else:
        train_dir, truth = root / "imagenette" / "train", None
        for need in (train_dir, root / "pf-willow"):
            if not need.is_dir():
                raise FileNotFoundError(f"scc demo: {need} not found (--data must hold imagenette/ and pf-willow/)")
    eval_set, eval_name = _eval_set(cfg, root)
    every = max(1, len(eval_set) // cfg.eval_pairs) if cfg.eval_pairs else 1  # evenly spaced pairs
    ecfg = EvalConfig(dataset=eval_name, img_size=cfg.img_size if root is None else 320, device=cfg.device,
                      every=every, max_pairs=cfg.eval_pairs)
    reports, models = {}, {}

    def measure(name: str, model) -> None:
        _stage(f"evaluate: {name}")
        rep = evaluate(model, eval_set, ecfg)
        write_report(rep, str(out / f"eval-{name}.json"))
        reports[name], models[name] = rep, model
        print(f"PCK@0.1 {rep['overall']['pck@0.1']['per_image']:.3f}", flush=True)

    measure("nearest-neighbour", SCCNet(ModelConfig(mutual=False, vote=False, calibrate=False)))
    measure("untrained-pipeline", SCCNet(ModelConfig()))

    _stage(f"weak training ({cfg.weak_steps} steps, class labels only)")
    weak_cfg = TrainConfig(mode="weak", dataset="imagefolder", data=str(train_dir), img_size=cfg.img_size,
                           max_per_class=cfg.train_per_class, steps=cfg.weak_steps, lr=cfg.weak_lr, seed=cfg.seed,
                           device=cfg.device, out=str(out / "weak"), proj_init="identity", tensorboard=False,
                           warmup_steps=min(50, cfg.weak_steps // 10), ckpt_every=max(cfg.weak_steps, 1),
                           model=ModelConfig(proj_dim=-1), overwrite=True)  # a rerun of the demo starts afresh
    if root is None:  # the pixel loss warms up within the short synthetic run
        weak_cfg.loss.pixel_warmup, weak_cfg.loss.pixel_ramp = cfg.weak_steps // 4, cfg.weak_steps // 4
    weak = Trainer(weak_cfg)
    weak.run()
    measure("weak", weak.model)

    _stage("consistency check and pseudo-label export (SPair-71k layout)")
    pl_cfg = PseudoLabelConfig(data=str(train_dir), checkpoint=str(out / "weak" / "model.pt"),
                               out=str(out / "pseudo-labels"), img_size=cfg.img_size,
                               max_per_class=cfg.train_per_class, pairs_per_class=cfg.pairs_per_class,
                               seed=cfg.seed, device=cfg.device)
    labeler = PseudoLabeler(pl_cfg)
    labeler.run()
    summary = labeler.merge()
    quality = precision(pl_cfg.out, truth) if truth is not None else None
    print(f"pseudo-labels: {summary['pairs']} pairs, {summary['keypoints_per_pair']['mean']:.1f} keypoints per pair"
          + (f"; precision@0.1 {quality['precision@0.1']:.3f}" if quality and quality["points"] else ""), flush=True)

    n_trn = summary["pairs"]["trn"]
    if n_trn:
        _stage(f"strong training on the pseudo-labels ({cfg.strong_steps} steps, from the weak model)")
        strong = Trainer(TrainConfig(mode="strong", dataset="spair", data=pl_cfg.out, img_size=cfg.img_size,
                                     steps=cfg.strong_steps, batch_size=min(8, n_trn), seed=cfg.seed,
                                     device=cfg.device, out=str(out / "strong"),
                                     init_checkpoint=str(out / "weak" / "model.pt"), tensorboard=False,
                                     warmup_steps=min(50, cfg.strong_steps // 10),
                                     ckpt_every=max(cfg.strong_steps, 1), lr=1e-4, overwrite=True))
        strong.run()
        measure("strong-on-pseudo-labels", strong.model)
    else:
        print("no pair passed the consistency check: strong training skipped (see the report)", flush=True)

    _stage("pictures and report")
    plot_pck_comparison(reports, str(out / "pck_per_category.png"))
    final = list(models)[-1]
    pics = _pictures(cfg, out, eval_set, models[final], final, ecfg, labeler)
    _write_report(cfg, out, reports, summary, quality, pics, time.time() - t_start)
    print(f"\nreport: {out / 'report.md'}")
    return out / "report.md"


def _pictures(cfg, out, eval_set, model, name, ecfg, labeler) -> list[str]:
    from .data.common import collate_single
    from .evaluate import threshold_kind, threshold_size
    from .pseudolabel import draw_pair, read_layout
    from .visualize import draw_transfer

    pics = []
    model = model.eval()
    n = len(eval_set)
    for k in range(min(cfg.pictures, n)):
        b = collate_single([eval_set[k * n // cfg.pictures]])  # k < pictures: no division by zero
        with torch.no_grad():
            res = model.match(b["src_img"].to(ecfg.device), b["trg_img"].to(ecfg.device))
            pred = model.transfer_keypoints(b["src_kps"].to(ecfg.device), res).cpu()
        m = int(b["n_pts"][0])
        path = out / "pictures" / f"transfer-{k}.png"
        up = max(1, 320 // max(b["src_img"].shape[-2:]))  # small images drawn larger (pixels scaled alike)
        big = [torch.nn.functional.interpolate(b[f"{x}_img"], scale_factor=up, mode="bilinear")[0] for x in ("src", "trg")]
        draw_transfer(*big, b["src_kps"][0, :m] * up, b["trg_kps"][0, :m] * up, pred[0, :m] * up,
                      0.1 * threshold_size(b, threshold_kind(ecfg.threshold, eval_set)) * up, str(path),
                      title=f"{b['category'][0]}: {name} (green: within PCK@0.1)")
        pics.append(path.name)
    entries = read_layout(labeler.out, "trn") if cfg.pictures else []
    for k, (entry, ann) in enumerate(entries[:: max(1, len(entries) // max(cfg.pictures, 1))][: cfg.pictures]):
        path = out / "pictures" / f"pseudo-labels-{k}.png"
        draw_pair(labeler.out, entry, ann, path)
        pics.append(path.name)
    return pics


def _write_report(cfg, out, reports, summary, quality, pics, seconds) -> None:
    proto = next(iter(reports.values()))["protocol"]
    lines = ["# scc demo report", "",
             f"Data: {'synthetic classes (generated)' if cfg.data is None else cfg.data}. "
             f"Device: {cfg.device}. Total time: {seconds / 60:.1f} min. Config: `demo.yaml`; each stage's config "
             "is saved next to its output (`weak/config.yaml`, `pseudo-labels/config.yaml`, `strong/config.yaml`).", "",
             f"## PCK ({proto['threshold']} threshold of the target, per image; {proto['pairs_evaluated']} pairs, "
             f"{proto['image_size']})", "",
             "| model | PCK@0.05 | PCK@0.1 | PCK@0.15 |", "|---|---|---|---|"]
    for name, rep in reports.items():
        o = rep["overall"]
        lines.append(f"| {name} | " + " | ".join(f"{o[f'pck@{a}']['per_image']:.3f}" for a in (0.05, 0.1, 0.15)) + " |")
    lines += ["", "![PCK per category](pck_per_category.png)", "", "## Pseudo-labels", "",
              f"Pairs kept (trn/val/test): {summary['pairs']}; images kept: {summary['images_kept']}; keypoints per "
              f"pair: mean {summary['keypoints_per_pair']['mean']:.1f} (min {summary['keypoints_per_pair']['min']}, "
              f"max {summary['keypoints_per_pair']['max']}). Thresholds: `{json.dumps(summary['thresholds'])}`.", ""]
    if not summary["pairs"]["trn"]:
        lines += ["No pair passed the consistency check, so there was no strong training: train the weak model "
                  "longer (`--set weak_steps=...`) or loosen the thresholds.", ""]
    if quality is not None and quality["points"]:
        lines += [f"Precision against the generator's truth ({quality['points']} pseudo keypoints inside the object, "
                  f"{quality['points_outside_object_box']} outside it and not scored; affine-fit residual "
                  f"{quality['affine_residual_px']:.1f} px): " + ", ".join(
                      f"@{a} {quality[f'precision@{a}']:.3f}" for a in (0.05, 0.1, 0.15)), ""]
    lines += ["## Pictures", ""] + [f"![{p}](pictures/{p})" for p in pics] + [""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    if quality is not None:
        atomic_write_json(out / "pseudo-label-precision.json", quality)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scc demo", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("SCC_DATA"),
                    help="folder with imagenette/ and pf-willow/ (default: $SCC_DATA, else synthetic data)")
    ap.add_argument("--out", help="report folder (default runs/demo)")
    ap.add_argument("--device", help="cpu or cuda")
    ap.add_argument("--config", help="YAML file with DemoConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a DemoConfig field")
    args = ap.parse_args(argv)
    try:
        cfg = cfgmod.load(DemoConfig, args.config, args.set, dict(data=args.data, out=args.out, device=args.device))
        run(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
