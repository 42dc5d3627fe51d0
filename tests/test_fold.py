"""Batch norms folded into convolutions: same outputs as the unfolded network, no norm left."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pose.config import load_model_config
from pose.models.fold import fold_batch_norms
from pose.models.hrnet import create_model

from .conftest import FIXTURES, ROOT


def _randomize_norms(model: nn.Module, seed: int) -> None:
    """Statistics far from the identity, so a wrong pairing or formula shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("config", [FIXTURES / "tiny_coco_w8_256.yaml", ROOT / "model_repo/higher_hrnet_w48_coco_640"])
def test_folded_network_gives_the_same_outputs(config: object) -> None:
    torch.manual_seed(0)
    model = create_model(load_model_config(config)).eval()  # type: ignore[arg-type]
    _randomize_norms(model, seed=1)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 128, 192)
    with torch.inference_mode():
        want = model(x)
        assert fold_batch_norms(model) == norms
        got = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(got, want, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, atol=2e-5 * float(b.abs().max()), rtol=1e-4)


def test_shared_heatmap_kernels_get_one_folded_copy_per_branch() -> None:
    """The branches share kernels but not norms: folding must not write one branch's norm into another."""
    model = create_model(load_model_config(FIXTURES / "tiny_coco_w8_256.yaml")).eval()
    _randomize_norms(model, seed=2)
    shared = model.multi_level_layers_4x_heatmap[0][0].stn_conv1.weight.detach().clone()
    fold_batch_norms(model)
    folded = [branch[0].stn_conv1.weight for branch in model.multi_level_layers_4x_heatmap]
    assert folded[0] is not folded[1] and not torch.equal(folded[0], folded[1])
    for branch, weight in zip(model.multi_level_layers_4x_heatmap, folded, strict=True):
        norm_scale = weight.flatten(1)[:, 0] / shared.flatten(1)[:, 0]  # per output channel
        assert torch.all(norm_scale > 0)
        assert branch[0].stn_conv1.bias is not None


def test_conv_and_norm_by_hand() -> None:
    """y = gamma (w x + b - mean) / sqrt(var + eps) + beta, written out for one channel."""
    conv, norm = nn.Conv2d(1, 1, 1, bias=True), nn.BatchNorm2d(1, eps=0.0)
    conv.weight.data.fill_(2.0)
    conv.bias.data.fill_(1.0)
    norm.running_mean.fill_(3.0)  # type: ignore[union-attr]
    norm.running_var.fill_(4.0)  # type: ignore[union-attr]
    norm.weight.data.fill_(0.5)
    norm.bias.data.fill_(-1.0)
    model = nn.Sequential(conv, norm).eval()
    fold_batch_norms(model)
    assert isinstance(model[1], nn.Identity)
    assert float(conv.weight) == 0.5 * 2.0 / 2.0
    assert float(conv.bias) == 0.5 * (1.0 - 3.0) / 2.0 - 1.0


def test_refuses_a_model_in_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
