"""HRNet backbone with the paper's two heads: keypoint heatmaps, then heatmap-guided pixel-wise regression.

Module and parameter names are the authors' (``HRNet/HRNet-Bottom-up-Pose-Estimation``), so their released
state_dicts load with ``strict=True`` and no renaming. Where the paper and their code differ, the code wins
and a comment says so.

Letters: B batch, K keypoints, C channels, H/W size of the stride-4 output grid.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pose.config import ArchitectureConfig, ModelConfig, StageConfig
from pose.ops.adaptive_conv import REGULAR_GRID, AdaptiveConv2d

__all__ = ["AdaptiveBlock", "PoseHRNet", "PoseOutput", "create_model"]

BN_MOMENTUM = 0.1


class PoseOutput(NamedTuple):
    """Raw network outputs on the stride-4 grid (no activation anywhere)."""

    heatmaps: Tensor  # (B, K + 1, H, W): K keypoint heatmaps, then the center heatmap
    offsets: Tensor  # (B, 2K, H, W): (dx, dy) per joint; joint = pixel - offset, in output pixels
    heatmaps_2x: Tensor | None = None  # (B, K, 2H, 2W), higher_hrnet only
    # higher_hrnet in training mode only: the three 4x branches, each with the center, (B, 3 * (K + 1), H, W);
    # training supervises each branch (inference takes their max)
    heatmap_branches: Tensor | None = None


def _conv3x3(in_c: int, out_c: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_c, out_c, 3, stride, 1, bias=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_c: int, c: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_c, c, stride)
        self.bn1 = _bn(c)
        self.conv2 = _conv3x3(c, c)
        self.bn2 = _bn(c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_c: int, c: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_c, c, 1, bias=False)
        self.bn1 = _bn(c)
        self.conv2 = _conv3x3(c, c, stride)
        self.bn2 = _bn(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = _bn(c * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class AdaptiveBlock(nn.Module):
    """Adaptive representation transformation block (the authors' ``STNBLOCK``).

    Two adaptive convolutions with a residual. Each predicts its per-pixel 2x2 matrix with a 3x3 conv.
    Differences from the paper, following the code: the second matrix is predicted from the block *input*,
    not from the first convolution's output; ``T`` is unconstrained (not rotation + scale); with dilation
    ``d`` the taps sit at ``q + d g + (T - I) g``.
    """

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        # Kept for key compatibility with the authors' checkpoints; the op uses the same constant grid.
        self.register_buffer("regular_matrix", REGULAR_GRID.clone())
        self.transform_matrix_conv1 = nn.Conv2d(channels, 4, 3, 1, 1, bias=True)
        self.stn_conv1 = AdaptiveConv2d(channels, channels, dilation)
        self.bn1 = _bn(channels)
        self.transform_matrix_conv2 = nn.Conv2d(channels, 4, 3, 1, 1, bias=True)
        self.stn_conv2 = AdaptiveConv2d(channels, channels, dilation)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.stn_conv1(x, self.transform_matrix_conv1(x))))
        out = self.bn2(self.stn_conv2(out, self.transform_matrix_conv2(x)))  # matrix from x, as the code
        return self.relu(out + x)


class PlainBlock(nn.Module):
    """The ablation's stand-in for :class:`AdaptiveBlock`: the same residual pair of 3x3 convolutions with
    a fixed (dilated) sampling grid, i.e. the "without adaptive representation transformation" baseline.
    """

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, dilation, dilation, bias=False)
        self.bn1 = _bn(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, dilation, dilation, bias=False)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every branch fused into every other by sum."""

    def __init__(self, in_channels: list[int], stage: StageConfig) -> None:
        super().__init__()
        self.num_branches = len(stage.channels)
        self.branches = nn.ModuleList(
            _make_layer(BasicBlock, c_in, c, n)
            for c_in, c, n in zip(in_channels, stage.channels, stage.num_blocks, strict=True)
        )
        self.out_channels = list(stage.channels)
        # None entries (a branch onto itself) keep the authors' key indices; ModuleList accepts them.
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse(j, i) for j in range(self.num_branches))  # type: ignore[misc]
            for i in range(self.num_branches)
        )
        self.relu = nn.ReLU(inplace=True)

    def _fuse(self, j: int, i: int) -> nn.Module | None:
        """Map branch ``j`` onto branch ``i``'s resolution and width."""
        c = self.out_channels
        if j > i:
            return nn.Sequential(
                nn.Conv2d(c[j], c[i], 1, bias=False), _bn(c[i]), nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")
            )
        if j == i:
            return None
        steps: list[nn.Module] = []
        for k in range(i - j):
            if k == i - j - 1:
                steps.append(nn.Sequential(_conv3x3(c[j], c[i], 2), _bn(c[i])))
            else:
                steps.append(nn.Sequential(_conv3x3(c[j], c[j], 2), _bn(c[j]), nn.ReLU(inplace=True)))
        return nn.Sequential(*steps)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        out = []
        for i, fuse in enumerate(self.fuse_layers):
            assert isinstance(fuse, nn.ModuleList)
            y = xs[0] if i == 0 else fuse[0](xs[0])
            for j in range(1, self.num_branches):
                y = y + (xs[j] if i == j else fuse[j](xs[j]))
            out.append(self.relu(y))
        return out


def _make_layer(block: type[BasicBlock] | type[Bottleneck], in_c: int, c: int, n: int) -> nn.Sequential:
    downsample = None
    if in_c != c * block.expansion:
        downsample = nn.Sequential(nn.Conv2d(in_c, c * block.expansion, 1, bias=False), _bn(c * block.expansion))
    layers = [block(in_c, c, 1, downsample)]
    layers += [block(c * block.expansion, c) for _ in range(1, n)]
    return nn.Sequential(*layers)


def _make_transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
    layers: list[nn.Module | None] = []
    for i, c in enumerate(cur):
        if i < len(prev):
            same = prev[i] == c
            layers.append(None if same else nn.Sequential(_conv3x3(prev[i], c), _bn(c), nn.ReLU(inplace=True)))
            continue
        steps = []
        for k in range(i + 1 - len(prev)):
            out_c = c if k == i - len(prev) else prev[-1]
            steps.append(nn.Sequential(_conv3x3(prev[-1], out_c, 2), _bn(out_c), nn.ReLU(inplace=True)))
        layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)  # type: ignore[arg-type]  # None = no transition (authors key layout)


def _make_stage(in_channels: list[int], stage: StageConfig) -> nn.Sequential:
    modules = []
    for _ in range(stage.num_modules):
        module = HighResolutionModule(in_channels, stage)
        in_channels = module.out_channels
        modules.append(module)
    return nn.Sequential(*modules)


def _conv1x1_bn_relu(in_c: int, out_c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_c, out_c, 1, bias=False), _bn(out_c), nn.ReLU(inplace=True))


class PoseHRNet(nn.Module):
    """HRNet-W32/W48 (or HigherHRNet-W48) with the heatmap head and the heatmap-guided regression head.

    Heatmap head: a 1x1 transition, three adaptive blocks of dilation 1, 2, 3 sharing their conv weights,
    one shared 1x1 classifier, averaged. Regression head: features concatenated with the averaged heatmaps
    (features first), a 1x1 transition, one adaptive block, a 1x1 conv to ``2K + 1`` channels whose last
    channel is the center heatmap (the code's choice; the paper lists it in the regression head too).
    """

    def __init__(self, arch: ArchitectureConfig, num_keypoints: int) -> None:
        super().__init__()
        self.arch = arch
        self.num_keypoints = k = num_keypoints
        stem = arch.stem_channels
        self.conv1 = _conv3x3(3, stem, 2)
        self.bn1 = _bn(stem)
        self.conv2 = _conv3x3(stem, stem, 2)
        self.bn2 = _bn(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_layer(Bottleneck, stem, stem, arch.stem_blocks)

        self.transition1 = _make_transition([stem * Bottleneck.expansion], arch.stage2.channels)
        self.stage2 = _make_stage(arch.stage2.channels, arch.stage2)
        self.transition2 = _make_transition(arch.stage2.channels, arch.stage3.channels)
        self.stage3 = _make_stage(arch.stage3.channels, arch.stage3)
        self.transition3 = _make_transition(arch.stage3.channels, arch.stage4.channels)
        self.stage4 = _make_stage(arch.stage4.channels, arch.stage4)

        features = sum(arch.stage4.channels)  # 480 for W32, 720 for W48
        ch, cr = arch.heatmap_head_channels, arch.regression_head_channels
        self.transition_cls = _conv1x1_bn_relu(features, ch)
        guidance = k if arch.heatmap_guidance else 0
        self.transition_reg = _conv1x1_bn_relu(features + guidance, cr)  # input: features, then mean heatmaps
        head_block = AdaptiveBlock if arch.adaptive_blocks else PlainBlock
        self.multi_level_layers_4x_heatmap = nn.ModuleList(
            nn.Sequential(head_block(ch, d)) for d in arch.heatmap_dilations
        )
        self._share_heatmap_branch_weights()
        self.multi_level_layers_4x_regression = nn.ModuleList([nn.Sequential(head_block(cr, 1))])
        final = [nn.Conv2d(ch, k, 1), nn.Conv2d(cr, 2 * k + 1, 1)]
        if arch.type == "higher_hrnet":
            cd = arch.deconv_channels
            assert cd is not None
            self.deconv_layers = nn.ModuleList(
                [
                    nn.Sequential(
                        nn.Sequential(
                            nn.ConvTranspose2d(ch + k, cd, 4, 2, 1, output_padding=0, bias=False),
                            _bn(cd),
                            nn.ReLU(inplace=True),
                        ),
                        nn.Sequential(BasicBlock(cd, cd)),
                    )
                ]
            )
            final.append(nn.Conv2d(cd, k, 1))
        self.final_layers = nn.ModuleList(final)

    def _share_heatmap_branch_weights(self) -> None:
        """Branches 1.. reuse branch 0's conv *weights*; biases and batch norms stay per branch."""
        first = self.multi_level_layers_4x_heatmap[0]
        for branch in list(self.multi_level_layers_4x_heatmap)[1:]:
            for (name, mod0), (_, mod) in zip(first.named_modules(), branch.named_modules(), strict=True):
                if "conv" in name and hasattr(mod, "weight"):
                    mod.weight = mod0.weight

    def backbone(self, x: Tensor) -> Tensor:
        """Image (B, 3, 4H, 4W) to the concatenated multi-resolution features (B, sum(C), H, W)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        xs = [t(x) if t is not None else x for t in self.transition1]
        for transition, stage in (
            (None, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            if transition is not None:
                xs = [t(xs[-1]) if t is not None else xs[i] for i, t in enumerate(transition)]
            xs = stage(xs)
        size = xs[0].shape[-2:]
        ups = [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in xs[1:]]
        return torch.cat([xs[0], *ups], dim=1)

    def forward(self, x: Tensor) -> PoseOutput:
        return self.heads(self.backbone(x))

    def heads(self, features: Tensor) -> PoseOutput:
        """Backbone features (B, 480 | 720, H, W) to the outputs; a separate step so that a runtime can run
        the backbone in another precision than the heads."""
        cls = self.transition_cls(features)
        final_heat = self.final_layers[0]
        branches = torch.stack(
            [final_heat(layer(cls)) for layer in self.multi_level_layers_4x_heatmap]
        )  # (3, B, K, H, W)
        heat_mean = branches.mean(dim=0)  # (B, K, H, W): the regression head's guidance in both variants
        # The guidance joins the features in the regression head's precision: float16 around a float16
        # body, float32 when the heads run in float32 around it (the heatmaps are not rounded then).
        head_dtype = next(self.transition_reg.parameters()).dtype
        if torch.is_autocast_enabled(features.device.type):
            head_dtype = features.dtype  # mixed-precision training: autocast picks the convolutions' type
        guidance = heat_mean.to(head_dtype)
        features = features.to(head_dtype)
        guided = torch.cat([features, guidance], dim=1) if self.arch.heatmap_guidance else features
        reg = self.transition_reg(guided)
        reg = self.final_layers[1](self.multi_level_layers_4x_regression[0](reg))  # (B, 2K + 1, H, W)
        center = reg[:, -1:]
        if self.arch.type == "hrnet":
            return PoseOutput(torch.cat([heat_mean, center], dim=1), reg[:, :-1])
        # HigherHRNet: inference combines the 4x branches by element-wise max (get_one_stage_outputs).
        heat_2x = self.final_layers[2](self.deconv_layers[0](torch.cat([cls, guidance], dim=1)))
        per_branch = torch.cat([torch.cat([b, center], dim=1) for b in branches], dim=1) if self.training else None
        return PoseOutput(torch.cat([branches.amax(dim=0), center], dim=1), reg[:, :-1], heat_2x, per_branch)


def create_model(config: ModelConfig) -> PoseHRNet:
    """Build the network a model config describes (weights uninitialized beyond PyTorch defaults)."""
    return PoseHRNet(config.architecture, config.keypoints.num_keypoints)
