"""Record exported artifacts in the model's ``config.yaml`` (keeping its header comments)."""

from __future__ import annotations

from pathlib import Path

import onnx
import yaml

from pose.config import OnnxArtifact, load_model_config


def _shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def describe_onnx(proto: onnx.ModelProto, relative_path: str, variant: str) -> OnnxArtifact:
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return OnnxArtifact(
        path=relative_path,
        variant=variant,
        opset=opset,
        inputs={i.name: _shape(i) for i in proto.graph.input},
        outputs={o.name: _shape(o) for o in proto.graph.output},
    )


def record_onnx(model_dir: Path, artifact: OnnxArtifact) -> None:
    """Add or replace the artifact of the same variant in ``model_dir/config.yaml``."""
    file = model_dir / "config.yaml"
    text = file.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    data = yaml.safe_load(text)
    entries = [e for e in data.get("onnx", []) if e.get("variant") != artifact.variant]
    data["onnx"] = [*entries, artifact.model_dump()]
    file.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))
    load_model_config(model_dir)  # the result must still validate
