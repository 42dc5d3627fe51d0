"""The torch backend as the service runs it: folded, checked fast paths, and what it reports running."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import pose.runtimes.torch_backend
from pose.api import PoseEstimator
from pose.config import load_model_config
from pose.models.hrnet import PoseOutput
from pose.runtimes import RuntimeOptions, automatic_backend
from pose.runtimes.onnxruntime_backend import OnnxRuntimeBackend
from pose.runtimes.torch_backend import TorchBackend, select_adaptive_conv
from service.app import create_app
from service.settings import Settings

from .conftest import ROOT

MODEL = ROOT / "model_repo" / "synthetic_w16_256"
CUDA = torch.device("cuda")


def failing_check(device: torch.device, dtype: torch.dtype) -> None:
    raise RuntimeError("constexpr cannot be reassigned")


def test_auto_falls_back_to_the_torch_op_when_the_kernel_fails_its_check() -> None:
    impl, reason = select_adaptive_conv("auto", CUDA, torch.float16, check=failing_check)
    assert impl == "torch"
    assert reason is not None and "constexpr cannot be reassigned" in reason


def test_an_explicit_triton_choice_refuses_to_start_without_the_kernel() -> None:
    with pytest.raises(RuntimeError, match="fused adaptive convolution is unusable"):
        select_adaptive_conv("triton", CUDA, torch.float16, check=failing_check)


def test_auto_uses_the_kernel_once_it_passes_and_never_checks_on_a_cpu() -> None:
    checked: list[torch.device] = []
    assert select_adaptive_conv("auto", CUDA, torch.float16, check=lambda d, t: checked.append(d)) == ("triton", None)
    assert select_adaptive_conv("auto", torch.device("cpu"), torch.float32, check=failing_check) == ("torch", None)
    assert select_adaptive_conv("torch", CUDA, torch.float16, check=failing_check) == ("torch", None)
    assert checked == [CUDA]


def test_kernel_self_check_passes_and_catches_a_wrong_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton", reason="triton is not installed")
    import export.triton_kernel as kernel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: the Triton interpreter
    assert kernel.self_check(device, torch.float32) < 1e-4
    monkeypatch.setattr(
        kernel, "adaptive_conv_triton", lambda x, a, w, d: torch.zeros_like(x[:, :1]).expand(-1, 40, -1, -1)
    )
    with pytest.raises(RuntimeError, match="differs from the torch op"):
        kernel.self_check(device, torch.float32)


def test_backend_gives_the_unfolded_network_outputs() -> None:
    est = PoseEstimator.from_config(MODEL)
    backend = TorchBackend(est.config, RuntimeOptions())
    assert backend.report.adaptive_conv == "torch" and not backend.report.cuda_graphs
    x = torch.rand(2, 3, 256, 320)
    with torch.inference_mode():
        want, got = est.model(x), backend(x)
    for a, b in zip(got, want, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=1e-4)


def test_cuda_graphs_are_refused_on_a_cpu() -> None:
    est = PoseEstimator.from_config(MODEL)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        TorchBackend(est.config, RuntimeOptions(cuda_graphs=True))


def test_models_and_metrics_report_the_implementation_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that failed at start-up is visible to the operator, and the service still serves."""
    monkeypatch.setattr(
        pose.runtimes.torch_backend, "select_adaptive_conv", lambda *a: ("torch", "CompilationError: at 34:8")
    )
    with TestClient(create_app(Settings(model=MODEL, backend="torch", warmup=False))) as client:
        runtime = client.get("/v1/models").json()["models"][0]["runtime"]
        metrics = client.get("/metrics").text
    assert runtime["adaptive_conv"] == "torch"
    assert runtime["adaptive_conv_fallback"] == "CompilationError: at 34:8"
    assert runtime["precision"] == "float32" and runtime["cuda_graphs"] is False
    line = next(m for m in metrics.splitlines() if m.startswith("pose_backend_info{"))
    assert 'adaptive_conv="torch"' in line and 'adaptive_conv_fallback="true"' in line and line.endswith(" 1.0")


def test_low_precision_body_returns_float32_outputs_from_float32_output_layers() -> None:
    """bfloat16 stands in for float16 on a CPU: the body runs in it, the 1x1 output convolutions do not."""
    from pose.config import load_model_config
    from pose.models.hrnet import create_model
    from pose.runtimes.precision import float32_output_layers

    from .conftest import FIXTURES

    torch.manual_seed(0)
    model = create_model(load_model_config(FIXTURES / "tiny_coco_w8_256.yaml")).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        want = model(x)
        model.to(torch.bfloat16)
        float32_output_layers(model)
        got = model(x.to(torch.bfloat16))
    assert got.heatmaps.dtype == got.offsets.dtype == torch.float32
    assert all(conv.module.weight.dtype == torch.float32 for conv in model.final_layers)
    for a, b in zip(got, want, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, atol=0.05 * float(b.abs().max()), rtol=0.05)


@pytest.mark.parametrize("config", ["tiny_coco_w8_256.yaml", "tiny_coco_2x_w8_256.yaml"])
def test_float32_heads_keep_the_heads_in_float32_and_come_closer_to_float32(config: str) -> None:
    """bfloat16 stands in for float16 on a CPU: with float32 heads only the backbone rounds."""
    from pose.config import load_model_config
    from pose.models.hrnet import create_model
    from pose.runtimes.precision import float32_heads, float32_output_layers, low_precision

    from .conftest import FIXTURES

    torch.manual_seed(0)
    reference = create_model(load_model_config(FIXTURES / config)).eval()
    x = torch.rand(1, 3, 128, 128)
    errors = {}
    with torch.inference_mode():
        # The same backbone features everywhere (rounded to bfloat16 once), so only the heads differ.
        features = reference.backbone(x).to(torch.bfloat16)
        reference.backbone = lambda _: features.float()  # type: ignore[method-assign,assignment]
        want = reference(x)
        for heads_in_float32 in (False, True):
            model = copy.deepcopy(reference)
            model.backbone = lambda _: features  # type: ignore[method-assign,assignment]
            float32_output_layers(model)
            if heads_in_float32:
                float32_heads(model)
            low_precision(model, torch.bfloat16)
            got = model(x.to(torch.bfloat16))
            assert got.heatmaps.dtype == got.offsets.dtype == torch.float32
            errors[heads_in_float32] = sum(
                float((a - b).abs().mean()) for a, b in zip(got, want, strict=True) if b is not None
            )
    assert model.conv1.weight.dtype == torch.bfloat16  # the backbone is low precision
    # The heads' float32 weights are the reference's own, never rounded to bfloat16 and back.
    assert torch.equal(model.transition_reg.module[0].weight, reference.transition_reg[0].weight)
    heads = [model.transition_cls, model.transition_reg, *model.multi_level_layers_4x_heatmap]
    heads += list(model.multi_level_layers_4x_regression)
    assert all(p.dtype == torch.float32 for head in heads for p in head.parameters())
    assert errors[True] < errors[False] / 2


def test_float32_heads_need_a_float16_network() -> None:
    with pytest.raises(ValueError, match="float32_heads"):
        Settings(model=MODEL, float32_heads=True)
    with pytest.raises(ValueError, match="float32_heads"):
        Settings(model=MODEL, device="cuda", half=True, float32_heads=True, backend="tensorrt")
    assert Settings(model=MODEL, device="cuda", half=True, float32_heads=True).float32_heads


def test_auto_on_a_cpu_serves_onnx_runtime_from_the_cache_once_it_matches_torch(
    onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.onnx_export

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again although the cache holds the graph")

    monkeypatch.setattr(export.onnx_export, "export_onnx", no_export)
    config = load_model_config(MODEL)
    (graph,) = onnx_cache.glob(f"{config.name}-*/model-torch*.onnx")
    assert not list(onnx_cache.glob("*/*.partial"))
    backend = automatic_backend(config, RuntimeOptions(onnx_cache=onnx_cache))
    assert backend.name == "onnx" and backend.report.backend == "onnx"  # type: ignore[attr-defined]
    x = torch.rand(2, 3, 256, 320)
    with torch.inference_mode():
        want = TorchBackend(config, RuntimeOptions())(x)
        got = backend(x)
    torch.testing.assert_close(got.heatmaps, want.heatmaps, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got.offsets, want.offsets, atol=1e-3, rtol=1e-3)


def test_auto_keeps_torch_and_says_why_when_onnx_runtime_disagrees(
    onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = OnnxRuntimeBackend.__call__

    def shifted(self: OnnxRuntimeBackend, x: torch.Tensor) -> PoseOutput:
        out = wrong(self, x)
        return PoseOutput(out.heatmaps + 0.1, out.offsets)

    monkeypatch.setattr(OnnxRuntimeBackend, "__call__", shifted)
    backend = automatic_backend(load_model_config(MODEL), RuntimeOptions(onnx_cache=onnx_cache))
    assert backend.name == "torch"
    reason = backend.report.backend_fallback  # type: ignore[attr-defined]
    assert reason is not None and "heatmaps differ from the torch network" in reason


def test_auto_keeps_torch_when_the_graph_cannot_be_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import export.onnx_export

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("export supports the 4x models")

    monkeypatch.setattr(export.onnx_export, "export_onnx", refuse)
    backend = automatic_backend(load_model_config(MODEL), RuntimeOptions(onnx_cache=tmp_path))
    assert backend.name == "torch"
    assert backend.report.backend_fallback == "ValueError: export supports the 4x models"  # type: ignore[attr-defined]
