"""Smoke test of the benchmark suite: it runs in quick mode and writes a well-formed report (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import ROOT


def run_module(module: str, *args: str) -> None:
    """``python -m module args`` from the repository root; fails the test with the tail of its output."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.long
def test_quick_benchmark_writes_a_complete_report(tmp_path: Path) -> None:
    run_module("bench.run", "--quick", "--device", "cpu", "--out", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mode"] == "quick" and report["env"]["device"] == "cpu"
    sections = report["sections"]
    assert {r["backend"] for r in sections["network"]} >= {"torch eager fp32"}
    assert all(r["ms"] > 0 for r in sections["network"])
    assert {(r["people"], r["batch"]) for r in sections["postprocess"]} >= {(30, 1), (30, 8)}
    for name in ("pipeline_vs_baseline", "service"):
        assert isinstance(sections[name], list) or "skipped" in sections[name]
    if isinstance(sections["service"], list):
        assert all(r["lost"] == r["duplicated"] == r["failed"] == r["wrong"] == 0 for r in sections["service"])
    assert (tmp_path / "report.md").read_text().startswith("# Benchmark report")


@pytest.mark.long
def test_ablation_smoke_run_writes_report_and_table(tmp_path: Path) -> None:
    """Two variants for two steps each: the script trains, evaluates each and writes the report and the table."""
    table = tmp_path / "training.md"
    table.write_text("# Training\n\nprose kept above the table\n")
    run_module(
        "bench.ablation",
        *("--work", str(tmp_path / "work"), "--device", "cpu", "--train-images", "6", "--val-images", "3"),
        *("--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--variants", "full", "no_adaptive"),
        *("--rescore-images", "2", "--seed", "3"),
        *("--out", str(tmp_path / "ablation.json"), "--markdown", str(table)),
    )
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert set(report["variants"]) == {"full", "no_adaptive"}
    for row in report["variants"].values():
        assert 0.0 <= row["AP"] <= 1.0 and 0.0 <= row["AR"] <= 1.0 and row["seconds"] > 0
    # Two steps from random weights find nobody, so there is nothing to train the scoring net on: said, not a crash.
    assert "found no poses" in report["rescoring"]["skipped"]
    assert report["setup"]["steps_per_epoch"] == 2 and report["setup"]["rescore_images"] == 2
    assert report["environment"]["device"] == "cpu" and report["setup"]["seed"] == 3
    assert json.loads((tmp_path / "work" / "runs" / "full" / "train_config.json").read_text())["seed"] == 3
    text = table.read_text()
    assert text.startswith("# Training\n\nprose kept above the table\n")
    assert "| full |" in text and "| no_adaptive |" in text and "scoring net" not in text


def test_gpu_check_refuses_without_a_gpu_and_renders_its_report() -> None:
    """The check itself needs a GPU; its report rendering and pose matching run anywhere."""
    import torch

    from bench import gpu
    from bench.common import match_poses
    from pose.pipeline import PoseResult

    if not torch.cuda.is_available():
        result = subprocess.run([sys.executable, "-m", "bench.gpu"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and "needs one GPU" in result.stdout
    report = {
        "environment": {"gpu": "H200", "torch": "2.x"},
        "plan": {"model": "hrnet_w32_coco_512", "size": 512, "device": "cuda", "smoke": False},
        "kernel_tests": {"summary": "30 passed"},
        "network": [{"variant": "fp16", "batch": 1, "median_ms": 7.0, "images_per_s": 142.9}],
        "pipeline": [
            {
                "batch": 32,
                "ms_per_image": 2.0,
                "images_per_s": 500,
                "preprocess_ms": 1,
                "network_ms": 2,
                "grouping_ms": 3,
            }
        ],
        "service": {"error": "RuntimeError: the service exited with 3"},
        "agreement": {
            "cuda_fp16": {
                "poses": 10,
                "within_half_pixel": 0.9,
                "scenes_with_equal_counts": 7,
                "scenes": 8,
                "reported": {
                    "poses": 4,
                    "within_half_pixel": 1.0,
                    "scenes_with_equal_counts": 8,
                    "scenes": 8,
                    "score_threshold": 0.1,
                },
            }
        },
    }
    text = gpu.markdown(report)
    assert "| fp16 | 1 | 7.00 | 143 |" in text
    assert "90.0% of 10 poses within 0.5 px, equal counts on 7 of 8 scenes" in text
    assert "; reported poses (score >= 0.1): 100.0% of 4, equal counts on 8 of 8 scenes" in text
    assert "- service: RuntimeError: the service exited with 3" in text

    def poses(points: list[list[float]]) -> PoseResult:
        k = torch.tensor(points).view(-1, 1, 2).expand(-1, 17, 2)
        kpts = torch.cat([k, torch.ones(k.shape[0], 17, 1)], dim=-1)
        n = kpts.shape[0]
        return PoseResult(kpts, kpts, torch.ones(n), torch.ones(n), torch.ones(n), torch.zeros(n, 4))

    # Order does not matter; 0.4 px is within, 0.6 px is not.
    assert match_poses(poses([[10, 10], [50, 50]]), poses([[50.4, 50], [10, 10]])) == (2, 2)
    assert match_poses(poses([[10, 10], [50, 50]]), poses([[10.6, 10]])) == (0, 2)


def test_gpu_check_keeps_finished_sections_when_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import gpu

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # what a run stopped at its time limit sees

    monkeypatch.setattr(gpu, "service", killed)
    with pytest.raises(KeyboardInterrupt):
        gpu.main(out=tmp_path, skip=["pipeline"], smoke=True)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["network"] and "service" not in report and "agreement" not in report
    assert "network" in (tmp_path / "report.md").read_text()


@pytest.mark.long
def test_gpu_check_smoke_run_fills_every_section(tmp_path: Path) -> None:
    """The same script, small, on the CPU: a GPU session's few minutes are not spent on its bugs."""
    run_module("bench.gpu", "--smoke", "--out", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    failed = {k: v["error"] for k, v in report.items() if isinstance(v, dict) and "error" in v}
    assert failed == {}
    assert [r["batch"] for r in report["network"]] == [1, 2]
    assert all(r["median_ms"] > 0 for r in report["network"]) and all(r["ms_per_image"] > 0 for r in report["pipeline"])
    levels = report["service"]["levels"]
    assert [lv["clients"] for lv in levels] == [1, 4] and all(set(lv["codes"]) == {"200"} for lv in levels)
    assert report["service"]["exit_code"] in (0, -15)  # a clean exit, or ended by the SIGTERM it was sent
    fp32 = report["agreement"]["cpu_fp32"]
    assert fp32["within_half_pixel"] == 1.0 and fp32["reported"]["within_half_pixel"] == 1.0  # same device, same poses
    assert 0 < fp32["reported"]["poses"] < fp32["poses"]
    assert (tmp_path / "report.md").read_text().startswith("# GPU check")


def test_bulk_benchmark_smoke_run_writes_report_and_table(tmp_path: Path) -> None:
    """One image, the loop and one bulk configuration, no Ray: the script runs and rewrites only its table."""
    doc = tmp_path / "performance.md"
    from bench.bulk import TABLE_END, TABLE_START

    doc.write_text(f"before\n{TABLE_START}\nold\n{TABLE_END}\nafter\n")
    run_module(
        "bench.bulk",
        *("--images", "1", "--rounds", "1", "--workers", "0", "--no-ray"),
        *("--out", str(tmp_path / "bulk.json"), "--markdown", str(doc)),
    )
    report = json.loads((tmp_path / "bulk.json").read_text())
    assert [r["config"] for r in report["summary"]] == ["pose predict loop", "pose batch, workers 0"]
    assert all(r["images_per_s"] > 0 for r in report["rows"]) and report["ray_init_s"] is None
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert "| pose batch, workers 0 |" in text


def test_tracking_benchmark_smoke_run_scores_every_tracker(tmp_path: Path) -> None:
    run_module("bench.tracking", "--clips", "1", "--frames", "6", "--no-flip", "--out", str(tmp_path / "t.json"))
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["frames"] == 6 and report["flip"] is False and report["scene"]["num_frames"] == 6
    for row in report["summary"].values():
        assert 0.0 <= row["min_idf1"] <= row["mean_idf1"] <= 1.0


@pytest.mark.long
def test_cpu_pipeline_benchmark_times_each_backend_and_checks_their_poses_agree(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    backends = ("torch", "auto", "api")  # the split and int8 rows quantize first: tests/test_runtimes.py covers them
    options = [arg for b in backends for arg in ("--backends", b)]
    run_module("bench.cpu_pipeline", "--model", "synthetic_w16_256", "--rounds", "1", *options, "--out", str(out))
    report = json.loads(out.read_text())
    rows = {(row["backend"], row["flip"]): row for row in report["rows"]}
    assert set(rows) == {(b, f) for b in backends for f in (False, True)}
    assert rows["torch", False]["runtime"] == "torch" and rows["auto", False]["runtime"] == "onnx"
    assert rows["api", False]["runtime"] == "onnx"  # the library API makes the same choice
    assert (
        rows["api", True]["vs_float32_auto_same_run"]
        == rows["auto", True]["median_s_per_image"] / rows["api", True]["median_s_per_image"]
    )
    for row in rows.values():
        assert row["median_s_per_image"] > 0
        assert row["vs_authors"] == report["authors_s_per_image"][str(row["flip"]).lower()] / row["median_s_per_image"]
    agreement = report["agreement_with_first_backend"]["auto"]
    assert agreement["poses"] > 0 and agreement["within_half_pixel"] == 1.0
    assert agreement["scenes_with_equal_counts"] == agreement["scenes"]
    floor = report["arithmetic_floor"]
    assert floor["network_gflop_per_image"] > 0 and floor["float32_peak_gflops"] > 0
    no_flip, flip = floor["network_floor_s_per_image"]["false"], floor["network_floor_s_per_image"]["true"]
    assert flip == 2 * no_flip
    # No measured run can beat the floor (it counts the forward alone at the best rate seen here).
    assert rows["auto", False]["median_s_per_image"] > no_flip and rows["auto", True]["median_s_per_image"] > flip


def test_network_work_is_counted_from_the_layers() -> None:
    """The floor's GFLOP figure against a hand count: one 3x3 convolution is 2 * 9 * C_in * C_out * H * W."""
    from bench.cpu_pipeline import network_gflop

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    image = np.zeros((64, 96, 3), np.uint8)  # short side 64 -> input 64x128 at input size 64 (long side to 64s)
    assert network_gflop(conv, [image], 64) == pytest.approx(2 * 9 * 3 * 8 * 64 * 128 / 1e9)
