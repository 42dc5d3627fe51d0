"""One runtime choice for every front-end: the API, the CLI and bulk jobs make the service's ``auto`` choice,
and the int8 backbone is used only once its poses match float32's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pose.api import PoseEstimator
from pose.config import DEFAULT_MODEL, load_model_config
from pose.models.hrnet import PoseOutput
from pose.pipeline import PoseResult
from pose.runtimes import RuntimeOptions
from pose.runtimes.agreement import AGREEMENT_BAR, check_poses_agree, drawn_scenes
from pose.runtimes.onnxruntime_backend import OnnxRuntimeBackend

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    return drawn_scenes(3, (256, 320), seed=5)


@pytest.fixture
def onnx_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The input shapes ONNX Runtime was run on (the real session runs; the calls are only recorded)."""
    calls: list[tuple[int, ...]] = []
    real = OnnxRuntimeBackend.__call__

    def recorded(self: OnnxRuntimeBackend, x: torch.Tensor) -> PoseOutput:
        calls.append(tuple(x.shape))
        return real(self, x)

    monkeypatch.setattr(OnnxRuntimeBackend, "__call__", recorded)
    return calls


def assert_same_poses(got: list[PoseResult], want: list[PoseResult], px: float = 0.05) -> None:
    """Same poses in the same order, joints within ``px`` (ONNX Runtime rounds differently from torch)."""
    for a, b in zip(got, want, strict=True):
        assert a.scores.shape == b.scores.shape
        torch.testing.assert_close(a.keypoints[..., :2], b.keypoints[..., :2], atol=px, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-3, rtol=0)


def test_the_api_runs_onnx_runtime_on_a_cpu_and_finds_torchs_poses(
    onnx_cache: Path, scenes: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.onnx_export

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again although POSE_ONNX_CACHE holds the graph")

    monkeypatch.setattr(export.onnx_export, "export_onnx", no_export)
    est = PoseEstimator.from_config(DEFAULT_MODEL)
    assert est.runtime.backend == "onnx" and est.runtime.backend_fallback is None  # read from POSE_ONNX_CACHE
    reference = PoseEstimator.from_config(DEFAULT_MODEL, backend="torch")
    assert reference.runtime.backend == "torch"
    got, want = est.predict_batch(scenes), reference.predict_batch(scenes)
    assert sum(len(p.scores) for p in want) > 0
    assert_same_poses(got, want)
    raw, raw_torch = est.raw(scenes[0]), reference.raw(scenes[0])  # raw outputs run on the same backend
    torch.testing.assert_close(raw.keypoints, raw_torch.keypoints, atol=5e-3, rtol=0)


def test_the_api_keeps_torch_and_says_why_without_onnxruntime(
    onnx_cache: Path, scenes: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    est = PoseEstimator.from_config(DEFAULT_MODEL)
    assert est.runtime.backend == "torch"
    reason = est.runtime.backend_fallback
    assert reason is not None and reason.startswith("ModuleNotFoundError") and "onnxruntime" in reason
    assert len(est.predict(scenes[0]).scores) > 0


def test_cli_predict_runs_the_auto_choice_and_backend_torch_opts_out(
    onnx_cache: Path, scenes: list, tmp_path: Path, onnx_calls: list
) -> None:
    from typer.testing import CliRunner

    from pose.cli import app

    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, scene in enumerate(scenes):
        cv2.imwrite(str(folder / f"{i}.png"), scene[..., ::-1])
    outputs = {}
    for backend in ("torch", None):
        out = tmp_path / f"out_{backend}"
        args = ["predict", str(folder), "--out", str(out)] + (["--backend", backend] if backend else [])
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs[backend] = json.loads((out / "predictions.json").read_text())
        assert bool(onnx_calls) == (backend is None)  # the default runs ONNX Runtime, --backend torch does not
    assert len(outputs[None]) == len(outputs["torch"]) > 0
    for a, b in zip(outputs[None], outputs["torch"], strict=True):
        assert a["image_id"] == b["image_id"]
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=0.05)


def test_cli_refuses_an_unknown_backend_or_precision() -> None:
    from typer.testing import CliRunner

    from pose.cli import app

    for option in (["--backend", "tflite"], ["--precision", "int4"]):
        result = CliRunner().invoke(app, ["predict", "nowhere.jpg", *option])
        assert result.exit_code == 2 and "Invalid value" in result.output


def test_cli_refuses_runtime_options_that_do_not_go_together(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pose.cli import app

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    result = CliRunner().invoke(app, ["predict", str(image), "--device", "cuda", "--precision", "int8"])
    assert result.exit_code == 2
    assert (
        result.output.strip().splitlines()[-1] == "Error: precision int8 runs on a CPU (ONNX Runtime); use half on CUDA"
    )


def test_bulk_jobs_run_the_auto_choice(onnx_cache: Path, scenes: list, tmp_path: Path, onnx_calls: list) -> None:
    import pyarrow.parquet as pq

    from pose.bulk import BulkOptions, ModelSpec, run_batch

    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, scene in enumerate(scenes):
        cv2.imwrite(str(folder / f"{i}.png"), scene[..., ::-1])
    options = BulkOptions(batch_size=2, workers=0, progress=False)
    rows = {}
    for backend in ("torch", "auto"):
        summary = run_batch([str(folder)], tmp_path / backend, ModelSpec(backend=backend), options)  # type: ignore[arg-type]
        assert summary.errors == 0
        assert bool(onnx_calls) == (backend == "auto")
        table = pq.read_table(tmp_path / backend / "poses").to_pylist()
        rows[backend] = sorted(table, key=lambda r: (r["path"], -r["score"]))
    assert len(rows["auto"]) == len(rows["torch"]) > 0
    for a, b in zip(rows["auto"], rows["torch"], strict=True):
        np.testing.assert_allclose(np.array(a["keypoints"]), np.array(b["keypoints"]), atol=0.05)


def test_settings_map_onto_the_runtime_options_and_share_their_checks(tmp_path: Path) -> None:
    from service.settings import Settings

    settings = Settings(backend="onnx", precision="int8", onnx_cache=tmp_path, calibration_images=tmp_path)
    options = settings.runtime_options()
    assert (options.backend, options.precision, options.onnx_cache) == ("onnx", "int8", tmp_path)
    assert options.calibration_images == tmp_path and options.device == "cpu"
    for bad, message in (
        ({"precision": "int8", "backend": "torch"}, "runs in ONNX Runtime"),
        ({"precision": "int8", "device": "cuda"}, "runs on a CPU"),
        ({"calibration_images": tmp_path / "missing"}, "is not a folder"),
    ):
        with pytest.raises(ValueError, match=message):
            RuntimeOptions(**bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=message):
            Settings(**bad)  # type: ignore[arg-type]


def _poses(points: list[list[float]], scores: list[float]) -> PoseResult:
    """Poses whose 17 joints all sit at one point each."""
    kpts = torch.zeros(len(points), 17, 3)
    kpts[..., :2] = torch.tensor(points, dtype=torch.float32)[:, None, :]
    s = torch.tensor(scores)
    return PoseResult(kpts, kpts.clone(), s, s.clone(), s.clone(), torch.zeros(len(points), 4))


def test_the_pose_check_holds_the_agreement_bar() -> None:
    """98% of every decoded pose within 0.5 px and every reported pose (score >= the threshold)."""
    points = [[10.0 * i, 5.0] for i in range(50)]
    scores = [0.9, 0.8] + [0.01] * 48  # two reported poses, 48 near-zero candidates
    reference = [_poses(points, scores)]

    def moved(indices: list[int], by: float) -> list[PoseResult]:
        shifted = [[x + by, y] if i in indices else [x, y] for i, (x, y) in enumerate(points)]
        return [_poses(shifted, scores)]

    every, reported = check_poses_agree(moved([], 0), reference, 0.1)
    assert every.within_half_pixel == reported.within_half_pixel == 1.0 and reported.poses == 2
    every, _ = check_poses_agree(moved([10], 0.6), reference, 0.1)  # one candidate of 50 moved: 98% agree
    assert every.within_half_pixel == pytest.approx(AGREEMENT_BAR)
    check_poses_agree(moved([10, 20], 0.4), reference, 0.1)  # within half a pixel
    with pytest.raises(RuntimeError, match="96.0% of 50 within 0.5 px"):
        check_poses_agree(moved([10, 20], 0.6), reference, 0.1)
    with pytest.raises(RuntimeError, match="50.0% of the 2 reported"):
        check_poses_agree(moved([0], 0.6), reference, 0.1)  # a reported pose moved


@pytest.fixture(scope="module")
def int8_graphs(onnx_cache: Path) -> tuple[Path, Path]:
    """The embedded model's quantized backbone and float32 heads, made once into the module's cache."""
    from pose.runtimes.graphs import cached_int8_graphs
    from pose.runtimes.torch_backend import TorchBackend

    config = load_model_config(DEFAULT_MODEL)
    options = RuntimeOptions(precision="int8", onnx_cache=onnx_cache)
    return cached_int8_graphs(config, options, lambda: TorchBackend(config, options).model)


def test_the_backbone_is_quantized_per_channel_and_the_heads_stay_float32(int8_graphs: tuple[Path, Path]) -> None:
    import onnx
    from onnx import numpy_helper

    int8_path, heads_path = int8_graphs
    float_path = next(int8_path.parent.glob("backbone-torch*.onnx"))
    quantized = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(int8_path)).graph.initializer}
    float_graph = onnx.load(str(float_path))
    convs = [n.input[1] for n in float_graph.graph.node if n.op_type == "Conv"]
    float_weights = {t.name: numpy_helper.to_array(t) for t in float_graph.graph.initializer}
    assert len(convs) > 10
    for name in convs:
        w = float_weights[name]  # (O, I, kh, kw)
        q, scale = quantized[f"{name}_quantized"], quantized[f"{name}_scale"]
        assert q.dtype == np.int8 and scale.shape == (w.shape[0],)  # one scale per output channel
        step = scale.reshape(-1, 1, 1, 1)
        assert np.all(np.abs(w - q.astype(np.float32) * step) <= step / 2 + 1e-6)  # rounded to the nearest step
        assert np.all(np.abs(q).reshape(len(q), -1).max(axis=1) >= 126)  # each channel uses the int8 range
    activations = [n for n in onnx.load(str(int8_path)).graph.node if n.op_type == "QuantizeLinear"]
    assert len(activations) >= len(convs)  # every convolution's input is quantized
    heads = onnx.load(str(heads_path))
    assert not [n for n in heads.graph.node if "Quantize" in n.op_type]
    weights = [t for t in heads.graph.initializer if len(t.dims) == 4]  # convolution kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT for t in weights)
    small = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert not [t.name for t in heads.graph.initializer if t.data_type in small]


def test_calibration_is_reproducible_and_keyed_by_the_users_images(tmp_path: Path) -> None:
    from export.quantize import CALIBRATION_SCENES, calibration_images, calibration_key

    first, again = calibration_images(), calibration_images()
    assert len(first) == CALIBRATION_SCENES and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(
        np.array_equal(a, b) for a, b in zip(first, drawn_scenes(CALIBRATION_SCENES, (480, 640)), strict=True)
    )
    assert calibration_key(None) == calibration_key(None)
    cv2.imwrite(str(tmp_path / "mine.png"), np.full((64, 48, 3), 127, np.uint8))
    assert calibration_key(tmp_path) != calibration_key(None)
    mine = calibration_images(tmp_path)
    assert len(mine) == CALIBRATION_SCENES + 1 and mine[-1].shape == (64, 48, 3)


def test_the_int8_check_passes_a_backend_that_gives_float32s_poses(int8_graphs: tuple[Path, Path]) -> None:
    """The float32 backbone through the same split sessions gives float32's poses: the check lets it through."""
    from pose.runtimes.choice import check_int8_poses
    from pose.runtimes.onnxruntime_backend import SplitOnnxBackend
    from pose.runtimes.torch_backend import TorchBackend

    config = load_model_config(DEFAULT_MODEL)
    int8_path, heads_path = int8_graphs
    split = SplitOnnxBackend(next(int8_path.parent.glob("backbone-torch*.onnx")), heads_path)
    every, reported = check_int8_poses(config, split, TorchBackend(config, RuntimeOptions()))
    assert every.within_half_pixel == 1.0 and every.poses > 100 and reported.poses > 10
    assert split.seconds["backbone"] > 0 and split.seconds["heads"] > 0


def test_int8_runs_only_once_its_poses_match_float32_and_says_why_not(
    int8_graphs: tuple[Path, Path], scenes: list
) -> None:
    """The embedded model's int8 backbone misses the bar (docs/performance.md): float32 runs, saying why."""
    est = PoseEstimator.from_config(DEFAULT_MODEL, precision="int8")
    runtime = est.runtime
    assert runtime.backend == "onnx"
    if runtime.precision_fallback is None:  # a quantization that passes would run, and say so
        assert runtime.precision == "int8 backbone (float32 heads)"
    else:
        assert runtime.precision == "float32"
        assert "differ from float32's" in runtime.precision_fallback and "within 0.5 px" in runtime.precision_fallback
        assert_same_poses(est.predict_batch(scenes), PoseEstimator.from_config(DEFAULT_MODEL).predict_batch(scenes))


def test_the_service_reports_the_precision_it_runs(int8_graphs: tuple[Path, Path], onnx_cache: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(model=DEFAULT_MODEL, precision="int8", onnx_cache=onnx_cache, warmup=False)
    with TestClient(create_app(settings)) as client:
        runtime = client.get("/v1/models").json()["models"][0]["runtime"]
        metrics = client.get("/metrics").text
    line = next(m for m in metrics.splitlines() if m.startswith("pose_backend_info{"))
    assert runtime["backend"] == "onnx" and f'precision="{runtime["precision"]}"' in line
    fell_back = runtime["precision_fallback"] is not None
    assert f'precision_fallback="{str(fell_back).lower()}"' in line
    assert runtime["precision"] == ("float32" if fell_back else "int8 backbone (float32 heads)")
