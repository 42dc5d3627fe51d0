"""Smoke test of the benchmark suite: it runs in quick mode and writes a well-formed report (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_quick_benchmark_writes_a_complete_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--device", "cpu", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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
