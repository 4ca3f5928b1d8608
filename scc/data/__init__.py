"""Dataset readers, one module per dataset; each returns the field's batch dict."""

from __future__ import annotations

KEYPOINT_DATASETS = ("pf-willow", "pf-pascal", "spair", "tss", "synthetic")


def make_dataset(name: str, root: str | None, img_size: int | None = 320, split: str = "test", square: bool = False):
    """A keypoint-annotated pair dataset by name (what `scc eval` evaluates). ``square``: images resized to
    img_size x img_size instead of keeping the aspect (synthetic images are square already)."""
    if name == "pf-willow":
        from .pfwillow import PFWillow

        return PFWillow(root, img_size, square=square)
    if name == "pf-pascal":
        from .pfpascal import PFPascal

        return PFPascal(root, split, img_size, square=square)
    if name == "spair":
        from .spair import SPair

        return SPair(root, split, img_size, square=square)
    if name == "tss":
        from .tss import TSS

        return TSS(root, img_size, square=square)
    if name == "synthetic":
        from .synthetic import SyntheticPairs

        return SyntheticPairs(num_pairs=200, img_size=img_size or 128, seed=0)
    raise ValueError(f"scc: unknown dataset {name!r}; known: {', '.join(KEYPOINT_DATASETS)}")
