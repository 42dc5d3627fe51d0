"""Record exported graphs in ``<model>/<version>/onnx.json``, beside the files, never in ``config.yaml``.

The tracked config stays as written; :func:`pose.config.load_model_config` reads the record back, so
``config.onnx`` lists the exported graphs either way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx

from pose.config import ONNX_RECORD, OnnxArtifact, recorded_onnx

__all__ = ["describe_onnx", "record_onnx"]

# Axes of the image input and of both outputs, (B, C, H, W): the exporter names them after the traced
# symbols ("64*rows" in, "16*s30" out), which say nothing to a reader.
_AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
_SYMBOLIC = re.compile(r"(?:(\d+)\*)?[A-Za-z_]\w*")


def _multiplier(dim: str) -> int | None:
    """The constant factor of an exporter dim (``"16*s30"`` -> 16, ``"batch"`` -> 1), None if not of that form."""
    match = _SYMBOLIC.fullmatch(dim)
    return None if match is None else int(match.group(1) or 1)


def _readable(axis: int, dim: int | str, input_dim: int | str) -> int | str:
    """A fixed dim as is; a dynamic one as ``batch``/``height``/``width``, divided by its input factor."""
    name = _AXIS_NAMES.get(axis)
    if name is None or not isinstance(dim, str) or not isinstance(input_dim, str):
        return dim
    ours, theirs = _multiplier(dim), _multiplier(input_dim)
    if ours is None or theirs is None or theirs % ours:
        return dim
    return name if ours == theirs else f"{name}/{theirs // ours}"


def _readable_shape(shape: list[int | str], image_shape: list[int | str]) -> list[int | str]:
    return [_readable(axis, d, image_shape[axis]) if axis < len(image_shape) else d for axis, d in enumerate(shape)]


def _shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def describe_onnx(proto: onnx.ModelProto, relative_path: str, variant: str) -> OnnxArtifact:
    """The graph's opset and interface, its dims named as the service reads them (``height/4``)."""
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    (image,) = proto.graph.input
    image_shape = _shape(image)
    return OnnxArtifact(
        path=relative_path,
        variant=variant,
        opset=opset,
        inputs={image.name: _readable_shape(image_shape, image_shape)},
        outputs={o.name: _readable_shape(_shape(o), image_shape) for o in proto.graph.output},
    )


def record_onnx(version_dir: Path, artifact: OnnxArtifact) -> Path:
    """Add or replace the artifact of the same variant in ``version_dir/onnx.json``; returns that file."""
    kept = [a for a in recorded_onnx(version_dir) if a.variant != artifact.variant]
    file = version_dir / ONNX_RECORD
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps([a.model_dump() for a in [*kept, artifact]], indent=2) + "\n")
    return file
