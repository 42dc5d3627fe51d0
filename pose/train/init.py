"""Weight initialization of the authors' training (SPEC §5.4), and loading a pretrained backbone."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from pose.checkpoint import load_state_dict_file
from pose.ops.adaptive_conv import AdaptiveConv2d

log = logging.getLogger(__name__)


def init_weights(model: nn.Module) -> None:
    """Convs N(0, 0.001) with zero bias, BN (1, 0); the adaptive blocks' matrix convs start at 0 (identity
    sampling grid); the adaptive convolutions keep their own uniform init."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            if "transform_matrix_conv" in name:
                nn.init.zeros_(m.weight)
            else:
                nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, AdaptiveConv2d):
            m.reset_parameters()


def load_pretrained(model: nn.Module, path: str | Path) -> int:
    """Copy every tensor whose name and shape match (an ImageNet HRNet); returns how many were copied."""
    own = model.state_dict()
    state = load_state_dict_file(path)
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    log.info("initialized %d of %d tensors from %s", len(matched), len(own), path)
    return len(matched)
