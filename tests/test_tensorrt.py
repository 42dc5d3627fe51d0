"""TensorRT: profiles and the engine compatibility rule run anywhere; building and running need TensorRT."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from export.tensorrt_engine import (
    EngineMetadata,
    EngineMismatchError,
    Profile,
    check_compatible,
    file_sha256,
    metadata_path,
    profiles_for,
    stale_reason,
)
from pose.config import load_model_config

from .conftest import ROOT

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def meta(**overrides) -> EngineMetadata:
    base = dict(
        model="hrnet_w32_coco_512",
        tensorrt_version="10.13.0",
        compute_capability="9.0",
        gpu="NVIDIA H100",
        precision="fp16",
        profiles=[],
        onnx_sha256="0" * 64,
        built_at="2026-11-25T00:00:00+00:00",
    )
    return EngineMetadata(**{**base, **overrides})


def test_profiles_cover_landscape_and_portrait_photos_in_64_steps() -> None:
    cfg = load_model_config(ROOT / "model_repo" / "hrnet_w32_coco_512")
    landscape, portrait = profiles_for(cfg, max_batch=32)
    assert landscape == Profile(min=(1, 3, 512, 512), opt=(16, 3, 512, 704), max=(32, 3, 512, 1024))
    assert portrait.max == (32, 3, 1024, 512) and portrait.opt == (16, 3, 704, 512)


def test_engine_from_another_gpu_or_tensorrt_is_refused_with_both_reasons() -> None:
    check_compatible(meta(), "10.13.0", "9.0")  # same: fine
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10.13.0 built it, this is TensorRT 10.14.1"):
        check_compatible(meta(), "10.14.1", "9.0")
    with pytest.raises(EngineMismatchError, match=r"compute capability 9.0 \(NVIDIA H100\), this GPU is 8.0.*Rebuild"):
        check_compatible(meta(), "10.13.0", "8.0")


def test_build_policy_rebuilds_only_missing_or_stale_engines(tmp_path: Path) -> None:
    graph = tmp_path / "plugin.onnx"
    graph.write_bytes(b"graph v1")
    engine = tmp_path / "model.plan"
    assert "no engine" in stale_reason(engine, graph, "10.13.0", "9.0")
    engine.write_bytes(b"plan")
    metadata_path(engine).write_text(json.dumps(meta(onnx_sha256=file_sha256(graph)).model_dump()))
    assert stale_reason(engine, graph, "10.13.0", "9.0") is None
    assert "this is TensorRT 10.14.1" in stale_reason(engine, graph, "10.14.1", "9.0")
    assert "this GPU is 8.0" in stale_reason(engine, graph, "10.13.0", "8.0")
    graph.write_bytes(b"graph v2")
    assert "changed since the engine was built" in stale_reason(engine, graph, "10.13.0", "9.0")
    metadata_path(engine).write_text("{not json")
    assert "unreadable metadata" in stale_reason(engine, graph, "10.13.0", "9.0")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs tensorrt and a CUDA GPU (neither exists in CI)")
def test_engine_from_the_plugin_onnx_matches_torch(tmp_path: Path) -> None:
    from export.onnx_export import export_onnx
    from export.tensorrt_engine import build_engine
    from export.tensorrt_runtime import TensorRTNetwork
    from pose.models.hrnet import create_model

    cfg = load_model_config(ROOT / "model_repo" / "hrnet_w32_coco_512")
    model = create_model(cfg).eval()
    export_onnx(model, tmp_path / "plugin.onnx", "plugin", (512, 512))
    build_engine(cfg, tmp_path / "plugin.onnx", tmp_path / "model.plan", fp16=False, max_batch=2)
    network = TensorRTNetwork(tmp_path / "model.plan", 17)
    x = torch.randn(2, 3, 512, 640)
    with torch.no_grad():
        want = model.cuda()(x.cuda())
    got = network(x.cuda())
    torch.testing.assert_close(got.heatmaps, want.heatmaps, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got.offsets, want.offsets, atol=1e-3, rtol=1e-3)
