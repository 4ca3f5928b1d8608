"""Pictures: matches drawn between two images, keypoint transfer, PCK per category."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _side_by_side(src: torch.Tensor, trg: torch.Tensor):
    a, b = src.permute(1, 2, 0).cpu().numpy(), trg.permute(1, 2, 0).cpu().numpy()
    h = max(a.shape[0], b.shape[0])
    canvas = np.ones((h, a.shape[1] + b.shape[1], 3), dtype=np.float32)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1]:] = b
    return canvas, a.shape[1]


def draw_matches(src_img, trg_img, src_pts, trg_pts, conf, path, title="", max_lines=60, min_conf=0.0):
    """Lines between matched points (pixels, (N, 2) each), coloured by confidence (N,)."""
    canvas, off = _side_by_side(src_img, trg_img)
    conf = torch.as_tensor(conf).float().cpu()
    keep = torch.nonzero(conf >= min_conf).flatten()
    keep = keep[conf[keep].argsort(descending=True)][:max_lines]
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 80, canvas.shape[0] / 80 + 0.4), dpi=100)
    ax.imshow(canvas)
    cmap = plt.get_cmap("viridis")
    lo, hi = (float(conf[keep].min()), float(conf[keep].max())) if len(keep) else (0.0, 1.0)
    lo = min(lo, hi - 0.05)  # near-equal confidences: a readable colour bar instead of a 1e-5 range
    for i in keep.tolist():
        c = cmap((float(conf[i]) - lo) / (hi - lo + 1e-9))
        (x0, y0), (x1, y1) = src_pts[i].tolist(), trg_pts[i].tolist()
        ax.plot([x0, x1 + off], [y0, y1], "-", color=c, lw=1.2, alpha=0.9)
        ax.plot([x0, x1 + off], [y0, y1], "o", color=c, ms=3)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, fraction=0.025, pad=0.01, label="match confidence")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def draw_transfer(src_img, trg_img, src_kps, trg_kps, pred_kps, thr, path, title=""):
    """Source keypoints, their annotated targets (circles) and predictions (crosses; green within thr)."""
    canvas, off = _side_by_side(src_img, trg_img)
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 80, canvas.shape[0] / 80 + 0.4), dpi=100)
    ax.imshow(canvas)
    for s, t, p in zip(src_kps.tolist(), trg_kps.tolist(), pred_kps.tolist()):
        ok = ((p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2) ** 0.5 <= thr
        col = "lime" if ok else "red"
        ax.plot([s[0], p[0] + off], [s[1], p[1]], "-", color=col, lw=1, alpha=0.8)
        ax.plot(s[0], s[1], "o", color="yellow", ms=4)
        ax.plot(t[0] + off, t[1], "o", mfc="none", mec="yellow", ms=7)
        ax.plot(p[0] + off, p[1], "x", color=col, ms=6)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def masks_and_labels_picture(src_img, trg_img, mask_s, mask_t, src_pts, trg_pts, max_lines: int = 40) -> np.ndarray:
    """A side-by-side picture (H, W, 3) uint8: region masks over the images (bright: inside) and lines
    between pseudo-labelled points (pixels); what training shows in TensorBoard now and then."""
    import torch.nn.functional as F

    def shade(img, mask):
        m = F.interpolate(mask[None, None].float().cpu(), size=img.shape[1:], mode="bilinear", align_corners=False)[0]
        return img.cpu() * (0.25 + 0.75 * m)

    canvas, off = _side_by_side(shade(src_img, mask_s), shade(trg_img, mask_t))
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 80, canvas.shape[0] / 80), dpi=100)
    ax.imshow(canvas)
    cmap = plt.get_cmap("hsv")
    n = min(len(src_pts), max_lines)
    for k in range(n):
        (x0, y0), (x1, y1) = src_pts[k].tolist(), trg_pts[k].tolist()
        ax.plot([x0, x1 + off], [y0, y1], "-o", color=cmap(k / max(n, 1)), lw=1, ms=2)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    fig.canvas.draw()
    out = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return out


def plot_pck_per_category(report: dict, path: str, alpha: float | None = None) -> None:
    """Bar chart of a report's per-category PCK at ``alpha``: one of its thresholds; by default 0.1 when it was
    evaluated, else the first."""
    evaluated = [float(k[len("pck@"):]) for k in report["overall"] if k.startswith("pck@")]
    if alpha is None:
        alpha = 0.1 if 0.1 in evaluated else evaluated[0]
    elif alpha not in evaluated:
        raise ValueError(f"plot_pck_per_category: alpha {alpha} was not evaluated; the report has {evaluated}")
    cats = list(report["per_category"])
    vals = [report["per_category"][c][f"pck@{alpha}"]["per_image"] for c in cats]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(cats) + 1), 3), dpi=100)
    ax.bar(range(len(cats)), vals, color="tab:blue")
    ax.axhline(report["overall"][f"pck@{alpha}"]["per_image"], color="k", ls="--", lw=1, label="all")
    ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"PCK@{alpha} ({report['protocol']['threshold']}, per image)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_pck_comparison(reports: dict, path: str, alpha: float = 0.1) -> None:
    """Grouped bars: PCK@alpha per category (and overall) for several models ({name: report})."""
    names = list(reports)
    cats = list(next(iter(reports.values()))["per_category"]) + ["all"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(cats) * len(names) ** 0.5 + 2), 3.2), dpi=100)
    for k, name in enumerate(names):
        rep = reports[name]
        vals = [(rep["per_category"][c] if c != "all" else rep["overall"])[f"pck@{alpha}"]["per_image"] for c in cats]
        ax.bar(np.arange(len(cats)) + (k - (len(names) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"PCK@{alpha} ({next(iter(reports.values()))['protocol']['threshold']}, per image)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
