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
    graph.write_bytes(b"graph v1")
    profile = Profile(min=(1, 3, 512, 512), opt=(4, 3, 512, 704), max=(8, 3, 512, 1024))
    metadata_path(engine).write_text(
        json.dumps(meta(onnx_sha256=file_sha256(graph), profiles=[profile.model_dump()]).model_dump())
    )
    assert stale_reason(engine, graph, "10.13.0", "9.0", max_batch=8, fp16=True) is None
    assert "largest batch is 8, 16 is asked for" in stale_reason(engine, graph, "10.13.0", "9.0", max_batch=16)
    assert "the engine is fp16, fp32 is asked for" in stale_reason(engine, graph, "10.13.0", "9.0", fp16=False)
    metadata_path(engine).write_text("{not json")
    assert "unreadable metadata" in stale_reason(engine, graph, "10.13.0", "9.0")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs tensorrt and a CUDA GPU (neither exists in CI)")
def test_engine_from_the_plugin_onnx_matches_torch(tmp_path: Path) -> None:
    from export.onnx_export import export_onnx
    from export.tensorrt_engine import build_engine
    from pose.models.hrnet import create_model
    from pose.runtimes.tensorrt_backend import TensorRTBackend

    cfg = load_model_config(ROOT / "model_repo" / "hrnet_w32_coco_512")
    model = create_model(cfg).eval()
    export_onnx(model, tmp_path / "plugin.onnx", "plugin", (512, 512))
    build_engine(cfg, tmp_path / "plugin.onnx", tmp_path / "model.plan", fp16=False, max_batch=2)
    network = TensorRTBackend(tmp_path / "model.plan", 17)
    x = torch.randn(2, 3, 512, 640)
    with torch.no_grad():
        want = model.cuda()(x.cuda())
    got = network(x.cuda())
    torch.testing.assert_close(got.heatmaps, want.heatmaps, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got.offsets, want.offsets, atol=1e-3, rtol=1e-3)


def test_engine_cache_builds_once_per_model_weights_and_gpu(tmp_path: Path) -> None:
    from export.engine_cache import cache_entry, prepare_engine

    weights = tmp_path / "model.pth"
    weights.write_bytes(b"weights v1")
    cfg = load_model_config(ROOT / "model_repo" / "hrnet_w32_coco_512")
    calls: list[str] = []

    def export_plugin(path: Path) -> None:
        calls.append("export")
        path.write_bytes(b"graph")

    def build(graph: Path, engine: Path, max_batch: int = 8) -> None:
        calls.append("build")
        engine.write_bytes(b"plan")
        profile = Profile(min=(1, 3, 512, 512), opt=(4, 3, 512, 704), max=(max_batch, 3, 512, 1024))
        meta_ = meta(onnx_sha256=file_sha256(graph), profiles=[profile.model_dump()])
        metadata_path(engine).write_text(json.dumps(meta_.model_dump()))

    def prepare(max_batch: int = 8, runtime: tuple[str, str] = ("10.13.0", "9.0")) -> Path:
        return prepare_engine(
            cfg,
            tmp_path / "cache",
            max_batch,
            True,
            runtime,
            export_plugin,
            lambda g, e: build(g, e, max_batch),
            weights,
            log=lambda _: None,
        )

    engine = prepare()
    assert calls == ["export", "build"] and engine.parent == cache_entry(cfg, tmp_path / "cache", weights)
    assert engine.parent.name.startswith("hrnet_w32_coco_512-v1-")
    assert prepare() == engine and calls == ["export", "build"]  # warm cache: nothing to do
    prepare(runtime=("10.13.0", "8.0"))  # another GPU type
    prepare(max_batch=16)  # a larger batch than the engine's profiles
    assert calls == ["export", "build", "build", "build"]
    weights.write_bytes(b"weights v2")  # new weights: a new entry, never the old model's engine
    assert prepare() != engine and calls[-2:] == ["export", "build"]
    with pytest.raises(FileNotFoundError, match="the engine cache keys on them"):
        cache_entry(cfg, tmp_path / "cache", tmp_path / "missing.pth")
