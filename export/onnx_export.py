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
DEFAULT_OPSET = 20  # GridSample with 4-D inputs and align_corners semantics as torch


class ExportWrapper(nn.Module):
    """Tuple outputs (heatmaps with the center last, offsets), as the ONNX graph exposes them."""

    def __init__(self, model: PoseHRNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(image)
        return out.heatmaps, out.offsets


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextmanager
def _known_exporter_noise() -> Iterator[None]:
    """Silence what torch's exporter says on every export of this network although the graph is right:
    that torchvision's ops cannot be registered (torchvision is no dependency, its ops unused) and a
    pytree deprecation inside torch itself. Anything else it says still shows."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    torchvision = _DropPrefix("torchvision is not installed")
    registration.addFilter(torchvision)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
            )
            yield
    finally:
        registration.removeFilter(torchvision)


def export_onnx(
    model: PoseHRNet,
    path: str | Path,
    variant: Variant = "portable",
    example_size: tuple[int, int] = (512, 512),
    opset: int = DEFAULT_OPSET,
    max_side: int = 4096,
) -> onnx.ModelProto:
    """Export ``model`` (eval mode, CPU) to ``path`` and return the saved proto."""
    if model.arch.type != "hrnet":
        raise ValueError("export supports the 4x models (hrnet); higher_hrnet's 2x head is not exported yet")
    model = model.eval().cpu()
    example = torch.randn(2, 3, *example_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    rows = torch.export.Dim("rows", min=1, max=max_side // 64)
    cols = torch.export.Dim("cols", min=1, max=max_side // 64)
    kwargs: dict = {}
    implementation = "torch"
    if variant == "plugin":
        from export.custom_op import TRANSLATION_TABLE

        kwargs["custom_translation_table"] = TRANSLATION_TABLE
        implementation = "custom_op"
    with use_implementation(implementation), torch.no_grad(), _known_exporter_noise():
        program = torch.onnx.export(
            ExportWrapper(model).eval(),  # the wrapper is a new module, in training mode unless told
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"image": {0: batch, 2: 64 * rows, 3: 64 * cols}},
            verbose=False,
            **kwargs,
        )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.optimize()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(path))
    return onnx.load(str(path))
