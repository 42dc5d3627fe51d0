"""The evaluator reproduces the known AP numbers of ../shared/data/eval_pairs exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from pose.config import load_model_config
from pose.evaluation import evaluate_keypoints

from .conftest import FIXTURES, ROOT


def test_coco_pair_gives_the_documented_stats(data_dir: Path) -> None:
    pair = data_dir / "eval_pairs" / "xtcocoapi_coco"
    sigmas = load_model_config(ROOT / "model_repo" / "hrnet_w32_coco_512").keypoints.sigmas
    stats = evaluate_keypoints(pair / "example_coco_val.json", pair / "example_coco_preds.json", "coco", sigmas)
    expected = [
        0.8608896054440609,
        0.993145468392993,
        0.9108910891089109,
        0.7755775577557756,
        0.9372524752475248,
        0.875,
        1.0,
        0.9166666666666666,
        0.78,
        0.9428571428571428,
    ]
    assert list(stats.values()) == pytest.approx(expected, abs=1e-12)


def test_crowdpose_pair_gives_the_documented_stats(data_dir: Path) -> None:
    pair = data_dir / "eval_pairs" / "crowdpose_example"
    sigmas = load_model_config(ROOT / "model_repo" / "hrnet_w32_crowdpose_512").keypoints.sigmas
    stats = evaluate_keypoints(
        pair / "example_crowdpose_val.json", pair / "example_crowdpose_preds.json", "crowdpose", sigmas
    )
    assert stats["AP"] == pytest.approx(0.7877215935879303, abs=1e-12)
    assert stats["AP50"] == pytest.approx(0.9881188118811886, abs=1e-12)
    assert stats["AP75"] == pytest.approx(0.7314356435643564, abs=1e-12)
    assert stats["AR"] == pytest.approx(0.8222222222222223, abs=1e-12)
    assert (stats["AP_easy"], stats["AP_medium"], stats["AP_hard"]) == pytest.approx((1.0, 0.9802, 0.4116), abs=1e-4)


def test_evaluate_command_runs_the_pipeline_on_annotated_photos(
    data_dir: Path, parity_dir: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from pose.cli import app

    folder = data_dir / "coco_sample" / "mmpose"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(folder / "test_coco.json"),
            str(folder),
            "--model",
            str(FIXTURES / "tiny_coco_w8_256.yaml"),
            "--out",
            str(tmp_path / "results.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "AP " in result.output and (tmp_path / "results.json").stat().st_size > 0
