"""ONNX export: portable graph in ONNX Runtime and plugin graph in the ONNX reference evaluator vs torch."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from onnx.reference import ReferenceEvaluator

from export.artifacts import record_onnx
from export.custom_op import AdaptiveConvReference
from export.onnx_export import export_onnx
from pose.api import PoseEstimator
from pose.config import DEFAULT_MODEL, OnnxArtifact, load_model_config, recorded_onnx
from pose.models.hrnet import create_model
from pose.runtimes.onnxruntime_backend import OnnxRuntimeBackend

from .conftest import ROOT
from .scenes import embedded_weights_present, scene_jpeg

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


@dataclass(frozen=True)
class Exported:
    folder: Path
    config_before: bytes  # config.yaml as written before the export
    output: str  # everything the command printed, stdout and stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """``pose-export onnx`` run as a user runs it on a model_repo folder: a copy of the embedded model's."""
    if not embedded_weights_present():
        pytest.skip("the embedded model's weights are absent")
    folder = tmp_path_factory.mktemp("repo") / "synthetic"
    shutil.copytree(DEFAULT_MODEL, folder, ignore=shutil.ignore_patterns("*.onnx", "onnx.json", "*.plan"))
    before = (folder / "config.yaml").read_bytes()
    command = [sys.executable, "-m", "export.cli", "onnx", "--model", str(folder), "--size", "128x192"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return Exported(folder, before, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def exported_repo(exported: Exported) -> Path:
    """A model_repo folder for the embedded model, with its portable and plugin graphs exported."""
    return exported.folder


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A drawn scene the embedded model finds people in, as a JPEG file."""
    path = tmp_path_factory.mktemp("scene") / "scene.jpg"
    path.write_bytes(scene_jpeg())
    return path


@pytest.mark.long
def test_portable_w32_in_onnxruntime_equals_torch_at_two_sizes() -> None:
    torch.manual_seed(0)
    model = create_model(load_model_config(ROOT / "model_repo" / "hrnet_w32_coco_512")).eval()
    path = Path(tempfile.mkdtemp()) / "w32_portable.onnx"
    try:
        proto = export_onnx(model, path, "portable", (256, 256))
        assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}  # standard ops only
        assert any(n.op_type == "GridSample" for n in proto.graph.node)
        network = OnnxRuntimeBackend(path, 17)
        for size in ((256, 256), (256, 384)):
            x = torch.randn(2, 3, *size)
            with torch.no_grad():
                want = model(x)
            got = network(x)
            torch.testing.assert_close(got.heatmaps, want.heatmaps, atol=1e-4, rtol=0)
            torch.testing.assert_close(got.offsets, want.offsets, atol=1e-4, rtol=0)
    finally:
        path.unlink(missing_ok=True)


def test_export_records_both_variants_beside_them_and_leaves_config_yaml_untouched(exported: Exported) -> None:
    assert (exported.folder / "config.yaml").read_bytes() == exported.config_before
    written = sorted(p.name for p in (exported.folder / "1").iterdir())
    assert written == ["model.onnx", "model.pth", "model_plugin.onnx", "onnx.json", "rescore.pth"]
    cfg = load_model_config(exported.folder)
    assert [(a.variant, a.path) for a in cfg.onnx] == [("portable", "1/model.onnx"), ("plugin", "1/model_plugin.onnx")]
    for artifact in cfg.onnx:
        assert artifact.opset == 20
        assert artifact.inputs == {"image": ["batch", 3, "height", "width"]}
        assert artifact.outputs == {
            "heatmaps": ["batch", 18, "height/4", "width/4"],  # 17 keypoints and the center
            "offsets": ["batch", 34, "height/4", "width/4"],
        }


def test_export_prints_only_its_result_lines(exported: Exported) -> None:
    # No exporter chatter (training-mode warning, torchvision registration, deprecations): one line per graph.
    lines = exported.output.splitlines()
    assert len(lines) == 2, exported.output
    assert re.fullmatch(r"portable: .*/1/model\.onnx \(\d+\.\d MB\)", lines[0])
    assert re.fullmatch(r"plugin: .*/1/model_plugin\.onnx \(\d+\.\d MB\)", lines[1])


def test_a_second_export_replaces_its_variant_in_the_record(tmp_path: Path) -> None:
    portable = OnnxArtifact(path="1/model.onnx", variant="portable", opset=20, inputs={}, outputs={})
    plugin = portable.model_copy(update={"path": "1/model_plugin.onnx", "variant": "plugin"})
    record_onnx(tmp_path / "1", portable)
    record_onnx(tmp_path / "1", plugin)
    record_onnx(tmp_path / "1", portable.model_copy(update={"opset": 21}))
    assert [(a.variant, a.opset) for a in recorded_onnx(tmp_path / "1")] == [("plugin", 20), ("portable", 21)]


def test_portable_graph_matches_torch_on_a_scene(exported_repo: Path, scene_file: Path) -> None:
    est = PoseEstimator.from_config(exported_repo)
    cfg = est.config
    network = OnnxRuntimeBackend(cfg.resolve(cfg.onnx[0].path), 17)
    image = est.read_image(scene_file)
    from pose.preprocess import image_to_tensor, plan_transform, resize_image

    x = image_to_tensor(resize_image(image, plan_transform(image.shape[1], image.shape[0], 256)), cfg.input)
    with torch.no_grad():
        want = est.model(x)
    got = network(x)
    # Offsets reach +-30 here (parity README), so the bound is relative to that range.
    torch.testing.assert_close(got.heatmaps, want.heatmaps, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.offsets, want.offsets, atol=3e-4, rtol=0)


def test_plugin_graph_has_one_node_per_adaptive_conv_and_evaluates_like_torch(exported_repo: Path) -> None:
    cfg = load_model_config(exported_repo)
    plugin = next(a for a in cfg.onnx if a.variant == "plugin")
    proto = onnx.load(str(cfg.resolve(plugin.path)))
    nodes = [n for n in proto.graph.node if n.domain == "pose"]
    assert len(nodes) == 8 and {n.op_type for n in nodes} == {"AdaptiveConv"}  # 4 blocks x 2 convolutions
    dilations = sorted(next(a.i for a in n.attribute if a.name == "dilation") for n in nodes)
    assert dilations == [1, 1, 1, 1, 2, 2, 3, 3]
    assert not any(n.op_type == "GridSample" for n in proto.graph.node)
    est = PoseEstimator.from_config(exported_repo)
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    heat, off = ReferenceEvaluator(proto, new_ops=[AdaptiveConvReference]).run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = est.model(x)
    np.testing.assert_allclose(heat, want.heatmaps.numpy(), atol=1e-4)
    np.testing.assert_allclose(off, want.offsets.numpy(), atol=3e-4)


def test_service_runs_on_the_onnxruntime_backend(exported_repo: Path, scene_file: Path) -> None:
    from service.app import create_app
    from service.settings import Settings

    photo = scene_file
    with TestClient(create_app(Settings(model=exported_repo, backend="onnx", warmup=False))) as client:
        assert client.get("/v1/models").json()["models"][0]["backend"] == "onnx"
        r = client.post("/v1/pose", content=photo.read_bytes(), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        onnx_people = r.json()["results"][0]["people"]
    with TestClient(create_app(Settings(model=exported_repo, warmup=False))) as client:
        torch_people = client.post(
            "/v1/pose", content=photo.read_bytes(), headers={"content-type": "image/jpeg"}
        ).json()
    torch_people = torch_people["results"][0]["people"]
    assert len(onnx_people) == len(torch_people)
    assert abs(onnx_people[0]["score"] - torch_people[0]["score"]) < 1e-3


def test_verify_command_reports_differences_and_pose_agreement(
    exported_repo: Path, scene_file: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from export.cli import app

    out = tmp_path / "verify.json"
    photo = scene_file
    result = CliRunner().invoke(app, ["verify", "--model", str(exported_repo), str(photo), "--json", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = yaml.safe_load(out.read_text())
    assert row["name"] == "onnxruntime" and row["heatmaps_max"] < 1e-4 and row["offsets_max"] < 3e-4
    assert row["same_pose_count"] and row["mean_oks"] > 0.95
    shutil.rmtree(tmp_path, ignore_errors=True)
