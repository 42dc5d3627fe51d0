"""PyTorch -> ONNX: the portable variant (standard ops only) and the plugin variant (one custom node per
adaptive convolution), both with dynamic batch and spatial dimensions.

Spatial sizes are multiples of 64 (the preprocessing rounds the long side up to 64, the short side is the
model's input size), which the exported graph declares.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import Tensor, nn

from pose.models.hrnet import PoseHRNet
from pose.ops.adaptive_conv import use_implementation

Variant = Literal["portable", "plugin"]
INPUT_NAME = "image"
OUTPUT_NAMES = ("heatmaps", "offsets")
FEATURES_NAME = "features"
DEFAULT_OPSET = 20  # GridSample with 4-D inputs and align_corners semantics as torch


class ExportWrapper(nn.Module):
    """Tuple outputs (heatmaps with the center last, offsets), as the ONNX graph exposes them."""

    def __init__(self, model: PoseHRNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(image)
        return out.heatmaps, out.offsets


class BackboneWrapper(nn.Module):
    """The backbone alone: image to the concatenated multi-resolution features."""

    def __init__(self, model: PoseHRNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model.backbone(image)


class HeadsWrapper(nn.Module):
    """Both heads alone: backbone features to heatmaps (center last) and offsets, as :class:`PoseHRNet` runs
    them after its backbone."""

    def __init__(self, model: PoseHRNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model.heads(features)
        return out.heatmaps, out.offsets


class DropPrefix(logging.Filter):
    """Drops the log records whose message starts with ``prefix`` (a library's advice repeated per call)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")  # their INFO lines: ~500 per export, none actionable


@contextmanager
def _known_exporter_noise() -> Iterator[None]:
    """Silence what torch's exporter says on every export of this network although the graph is right:
    the optimizer passes of onnxscript and onnx_ir log each rewrite at INFO (about 500 lines per export
    where logging is at INFO, as in the service), torchvision's ops cannot be registered (torchvision is
    no dependency, its ops unused), and a pytree deprecation inside torch itself. Warnings and anything
    else still show."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    torchvision = DropPrefix("torchvision is not installed")
    registration.addFilter(torchvision)
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
            )
            yield
    finally:
        registration.removeFilter(torchvision)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    model: PoseHRNet,
    path: str | Path,
    variant: Variant = "portable",
    example_size: tuple[int, int] = (512, 512),
    opset: int = DEFAULT_OPSET,
    max_side: int = 4096,
) -> onnx.ModelProto:
    """Export ``model`` (eval mode, CPU) to ``path`` and return the saved proto."""
    _check_exportable(model)
    kwargs: dict = {}
    implementation = "torch"
    if variant == "plugin":
        from export.custom_op import TRANSLATION_TABLE

        kwargs["custom_translation_table"] = TRANSLATION_TABLE
        implementation = "custom_op"
    example = torch.randn(2, 3, *example_size)
    with use_implementation(implementation):
        return _export(
            ExportWrapper(model.eval().cpu()), example, path, INPUT_NAME, OUTPUT_NAMES, 64, max_side, opset, kwargs
        )


def export_split_onnx(
    model: PoseHRNet,
    backbone_path: str | Path,
    heads_path: str | Path,
    example_size: tuple[int, int] = (512, 512),
    opset: int = DEFAULT_OPSET,
    max_side: int = 4096,
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Export ``model`` as two portable graphs: ``image -> features`` (the backbone) and ``features ->
    heatmaps, offsets`` (both heads), so that each can run in its own precision."""
    _check_exportable(model)
    model = model.eval().cpu()
    example = torch.randn(2, 3, *example_size)
    with torch.no_grad():
        features = model.backbone(example)
    with use_implementation("torch"):
        backbone = _export(
            BackboneWrapper(model), example, backbone_path, INPUT_NAME, (FEATURES_NAME,), 64, max_side, opset
        )
        heads = _export(
            HeadsWrapper(model), features, heads_path, FEATURES_NAME, OUTPUT_NAMES, 16, max_side // 4, opset
        )
    return backbone, heads


def _check_exportable(model: PoseHRNet) -> None:
    if model.arch.type != "hrnet":
        raise ValueError("export supports the 4x models (hrnet); higher_hrnet's 2x head is not exported yet")


def _export(
    module: nn.Module,
    example: Tensor,
    path: str | Path,
    input_name: str,
    output_names: tuple[str, ...],
    multiple: int,
    max_side: int,
    opset: int,
    kwargs: dict | None = None,
) -> onnx.ModelProto:
    """One dynamo export with dynamic batch and spatial size (multiples of ``multiple``), optimized and saved."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    rows = torch.export.Dim("rows", min=1, max=max_side // multiple)
    cols = torch.export.Dim("cols", min=1, max=max_side // multiple)
    with torch.no_grad(), _known_exporter_noise():
        program = torch.onnx.export(
            module.eval(),  # a wrapper is a new module, in training mode unless told
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_shapes={input_name: {0: batch, 2: multiple * rows, 3: multiple * cols}},
            verbose=False,
            **(kwargs or {}),
        )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.optimize()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(path))
    return onnx.load(str(path))
