"""The `scc` command: `scc eval` (PCK with the protocol written down), `scc match` (a picture), `scc train`,
`scc pseudo-label` (SPair-71k-layout pseudo-labels), `scc show-pseudo-labels` (a picture of them) and `scc demo`
(the main job end to end)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from . import config as cfgmod
from .data import KEYPOINT_DATASETS, make_dataset
from .evaluate import THRESHOLDS, EvalConfig, evaluate, format_table, parse_device, write_report
from .model import ModelConfig, SCCNet


def _model(args) -> SCCNet:
    if getattr(args, "checkpoint", None):
        if args.model_config or args.set_model:
            raise SystemExit("scc: --checkpoint carries its own model config; drop --model-config/--set-model")
        return SCCNet.from_checkpoint(args.checkpoint)
    cfg = cfgmod.load(ModelConfig, args.model_config, args.set_model)
    learned = [name for name, on in (("proj_dim", cfg.proj_dim != 0), ("neigh_consensus", cfg.neigh_consensus),
                                     ("unmatched_bin", cfg.unmatched_bin)) if on]
    if learned:  # e.g. the .model.yaml written next to a report: it holds the config, not the weights
        print(f"warning: ModelConfig has learned parts ({', '.join(learned)}) and no --checkpoint was given: they "
              "start untrained (a random projection, convolutions or bin); pass the checkpoint to evaluate a "
              "trained model", file=sys.stderr)
    return SCCNet(cfg)


def _prepare_out(path: Path) -> None:
    """Create --out's folder and check it takes a file now, not after the work is done."""
    if path.is_dir():
        raise ValueError(f"scc: --out {path} is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise ValueError(f"scc: --out {path}: cannot write in its folder {path.parent} ({exc})") from exc


def cmd_eval(args) -> int:
    cfg = cfgmod.load(EvalConfig, args.config, args.set, dict(dataset=args.dataset, data=args.data, device=args.device,
                                                            max_pairs=args.max_pairs, img_size=args.img_size,
                                                            threshold=args.threshold))
    torch.manual_seed(cfg.seed)
    out = Path(args.out or f"results/eval-{cfg.dataset}.json")
    _prepare_out(out)
    parse_device(cfg.device)  # before the model and data are loaded (evaluate checks it too)
    model = _model(args)
    report = evaluate(model, make_dataset(cfg.dataset, cfg.data, cfg.img_size, square=cfg.square), cfg)
    report["command"] = shlex.join(["scc"] + sys.argv[1:])  # pastes back into a shell
    write_report(report, str(out))
    cfgmod.save_yaml(cfg, out.with_suffix(".eval.yaml"))
    cfgmod.save_yaml(model.config, out.with_suffix(".model.yaml"))
    print(format_table(report))
    p = report["protocol"]
    print(f"threshold {p['threshold']} of the {p['threshold_image']} image, {p['image_size']}, "
          f"{p['pairs_evaluated']} pairs; report: {out}")
    if args.plot:
        from .visualize import plot_pck_per_category

        plot_pck_per_category(report, str(out.with_suffix(".png")))
    return 0


def cmd_match(args) -> int:
    from .data.common import load_image, resize_longer
    from .visualize import draw_matches, draw_transfer

    device = parse_device(args.device or "cpu")
    _prepare_out(Path(args.out))
    model = _model(args).to(device).eval()
    if args.pair is not None:
        if not args.dataset or not args.data:
            raise SystemExit("scc: --pair needs --dataset and --data")
        from .evaluate import threshold_kind, threshold_size

        ds = make_dataset(args.dataset, args.data, args.img_size)
        if not 0 <= args.pair < len(ds):  # a negative index would silently count from the end
            raise ValueError(f"scc: --pair {args.pair} is outside the dataset: {args.dataset} at {args.data} has "
                             f"{len(ds)} pairs (0..{len(ds) - 1})")
        item = ds[args.pair]
        src, trg = item["src_img"], item["trg_img"]
        with torch.no_grad():
            out = model.match(src[None].to(device), trg[None].to(device))
            n = item["n_pts"]
            pred = model.transfer_keypoints(item["src_kps"][None].to(device), out)[0, :n].cpu()
        batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in item.items()}
        kind = threshold_kind("auto", ds)
        thr = 0.1 * threshold_size(batch, kind)
        draw_transfer(src, trg, item["src_kps"][:n], item["trg_kps"][:n], pred, thr, args.out,
                      title=f"{item['category']}: {item['src_imname']} -> {item['trg_imname']} "
                            f"(green: within 0.1 {kind})")
        print(f"wrote {args.out}")
        return 0
    if not args.images or len(args.images) != 2:
        raise SystemExit("scc: give two images (IMG_A IMG_B) or --pair N with --dataset/--data")
    src, _ = resize_longer(load_image(args.images[0]), args.img_size)
    trg, _ = resize_longer(load_image(args.images[1]), args.img_size)
    with torch.no_grad():
        out = model.match(src[None].to(device), trg[None].to(device))
    flow, conf = out["flow"][0].cpu(), out["conf"][0].cpu()
    hs, ws = flow.shape[:2]
    rows, cols = torch.meshgrid(torch.arange(hs), torch.arange(ws), indexing="ij")
    src_cells = torch.stack([cols, rows], -1).reshape(-1, 2).float()
    from .geometry import cell_to_pixel

    draw_matches(src, trg, cell_to_pixel(src_cells, model.stride), cell_to_pixel(flow.reshape(-1, 2), model.stride),
                 conf.reshape(-1), args.out, title=f"{Path(args.images[0]).name} -> {Path(args.images[1]).name}: "
                 f"{args.max_lines} most confident matches", max_lines=args.max_lines)
    print(f"wrote {args.out}")
    return 0


def cmd_show_pseudo_labels(args) -> int:
    from .pseudolabel import draw_pair, layout_entries, read_annotation

    if args.side < 1:
        raise ValueError(f"scc: --side must be a positive number of pixels, got {args.side}")
    # filtered by the entry names (they end in :<category>): only the drawn pair's annotation is read
    entries = [e for e in layout_entries(args.folder, args.split) if args.category in (None, e.rsplit(":", 1)[1])]
    if not 0 <= args.index < len(entries):
        which = f"of category {args.category!r} " if args.category is not None else ""
        raise ValueError(f"scc: --index {args.index} is outside the {len(entries)} {args.split} pairs {which}in "
                         f"{args.folder}" + (f" (0..{len(entries) - 1})" if entries else ""))
    _prepare_out(Path(args.out))
    entry = entries[args.index]
    draw_pair(args.folder, entry, read_annotation(args.folder, args.split, entry), args.out, args.side)
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scc", description="Weakly supervised semantic correspondence (SCC).")
    sub = ap.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("--checkpoint", help="an SCCNet checkpoint (default: untrained SCCNet from the model config)")
        p.add_argument("--model-config", help="YAML file with ModelConfig fields")
        p.add_argument("--set-model", action="append", default=[], metavar="KEY=VALUE",
                       help="override a ModelConfig field, e.g. --set-model vote=false (repeatable)")
        # None: the config's device (eval: EvalConfig.device, default cpu), so --set/--config device= is kept
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu)")
        p.add_argument("--img-size", type=int, default=320, help="longer image side in pixels (aspect kept)")

    e = sub.add_parser("eval", help="PCK on a keypoint dataset; prints the table and writes a JSON report")
    e.add_argument("--dataset", help=" | ".join(KEYPOINT_DATASETS))
    e.add_argument("--threshold", choices=("auto",) + THRESHOLDS,
                   help="PCK threshold T (default auto: the dataset's standard; bbox-kp for pf-willow, img for "
                        "pf-pascal and tss, bbox for spair; bbox needs annotated boxes: pf-pascal, spair)")
    e.add_argument("--data", help="dataset folder")
    e.add_argument("--config", help="YAML file with EvalConfig fields")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an EvalConfig field")
    e.add_argument("--max-pairs", type=int, help="evaluate only the first N pairs (0 = all)")
    e.add_argument("--out", help="report path (default results/eval-<dataset>.json)")
    e.add_argument("--plot", action="store_true", help="also write a per-category PCK plot next to the report")
    model_args(e)
    e.set_defaults(func=cmd_eval, img_size=None)

    m = sub.add_parser("match", help="draw the confident matches between two images (or a dataset pair)")
    m.add_argument("images", nargs="*", metavar="IMG")
    m.add_argument("--out", default="matches.png")
    m.add_argument("--max-lines", type=int, default=60)
    m.add_argument("--pair", type=int, help="index of a dataset pair: draw its keypoint transfer instead")
    m.add_argument("--dataset")
    m.add_argument("--data")
    model_args(m)
    m.set_defaults(func=cmd_match)
    v = sub.add_parser("show-pseudo-labels", help="draw one pair of a `scc pseudo-label` output with its pseudo-labels")
    v.add_argument("folder", metavar="DIR", help="the output folder of `scc pseudo-label` (SPair-71k layout)")
    v.add_argument("--split", default="trn", choices=("trn", "val", "test"))
    v.add_argument("--category", help="only pairs of this category (a JPEGImages/ folder name)")
    v.add_argument("--index", type=int, default=0, help="which of those pairs, in the split's order (default 0)")
    v.add_argument("--side", type=int, default=256, help="longer image side drawn, in pixels")
    v.add_argument("--out", default="pseudo-labels.png")
    v.set_defaults(func=cmd_show_pseudo_labels)
    sub.add_parser("train", help="train SCCNet (weak: class labels only; strong: keypoints); see `scc train --help`")
    sub.add_parser("pseudo-label", help="consistency check + pseudo-labels in the SPair-71k layout; see "
                                        "`scc pseudo-label --help`")
    sub.add_parser("demo", help="the main job end to end (train, evaluate, pseudo-label, report); see `scc demo --help`")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("train", "pseudo-label", "demo"):  # own parsers: config fields via --config / --set
        from importlib import import_module

        module = {"train": "train", "pseudo-label": "pseudolabel", "demo": "demo"}[argv[0]]
        return import_module(f".{module}", __package__).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
