"""Scalar argument checks of the Python-side paths: the Triton launchers (scc_kernels._triton_ops) and the
reference backend of the API (scc_kernels.api). Worded like the C++ checks of csrc/common.h, which the CPU and
CUDA kernels use, so an argument is refused the same way, with the same message, on every backend."""

from __future__ import annotations

import math

import torch


def _positive(name: str, v: float) -> None:
    # tau, sigma, beta, and every eps (each sits in a division or a log)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"scc: `{name}` must be a positive finite number, got {v}")


def check_scalars(*, eps: float | None = None, lam: float | None = None, tau: float | None = None,
                  sigma: float | None = None, beta: float | None = None, radius: int | None = None,
                  window: int | None = None, bin_logit: torch.Tensor | float | None = None) -> None:
    """Checks the scalar arguments given (None: not an argument of the op)."""
    for name, v in (("tau", tau), ("sigma", sigma), ("beta", beta), ("eps", eps)):
        if v is not None:
            _positive(name, v)
    if lam is not None and not math.isfinite(lam):
        raise ValueError(f"scc: `lam` must be a finite number, got {lam}")
    if radius is not None and radius < 0:
        raise ValueError(f"scc: `radius` must be >= 0, got {radius}")
    if window is not None and window < -1:
        raise ValueError(f"scc: `window` must be -1 (all cells) or >= 0, got {window}")
    if bin_logit is not None:
        if isinstance(bin_logit, torch.Tensor):
            if bin_logit.numel() != 1:
                raise ValueError(f"scc: `bin_logit` must be a scalar tensor (one element), got shape "
                                 f"{tuple(bin_logit.shape)}")
            if bin_logit.device.type != "cpu" or torch.compiler.is_compiling():
                return  # reading a device value would sync (the CUDA kernel reads it on the device)
            bin_logit = bin_logit.item()
        if not (math.isfinite(bin_logit) or bin_logit < 0):
            raise ValueError(f"scc: `bin_logit` must be a finite number or -inf (no bin), got {bin_logit}")
