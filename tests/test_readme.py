"""README's shell blocks, run as written where that is cheap: the quick start must keep working.

Every command of every ```bash block is classified below; a command that matches no rule fails the test,
so a new README command gets a decision (run it here, or say why not).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from pose.data.synthetic_video import VideoSceneConfig, render_video

from .conftest import ROOT, checkout_env
from .scenes import needs_embedded_model

JSON = {"content-type": "application/json"}

# The virtual environment and installs: the test environment is already set up that way.
SET_UP = ("python3 -m venv .venv", ". .venv/bin/activate", "python --version", "pip install")

# Cheap: run here, as written, in an empty folder holding only people.jpg (a JPEG over 96 KB).
RUN = (
    "pose synth out/",
    "pose predict out/",
    "pose batch out/",
    "pose predict clip.mp4",
    "python -c 'import base64, json",
)

# Run against a live service (the README's port swapped for a free one), in the same folder.
SERVED = ("curl ",)

# Not run here, and why.
SKIPPED = {
    "python -m pytest": "the test suite itself",
    "ruff ": "lint of the checkout, run by CI before the tests",
    "mypy ": "type check of the checkout (a minute), run by CI before the tests",
    "python -m service": "starts a server that runs until stopped",
    "POSE_MODEL=": "starts a server that runs until stopped",
    "pose-export onnx --model model_repo/hrnet_w32_coco_512": "needs the authors' W32 checkpoint (and minutes)",
    "pose-export verify": "needs the authors' W32 checkpoint and a photo",
    "pose-export tensorrt": "needs TensorRT and a GPU",
    "pose synth data/": "draws thousands of training images",
    "pose train": "a training run (hours)",
    "torchrun ": "a training run on 8 GPUs",
    "pose average-weights": "needs a training run's checkpoints",
    "pose train-rescore": "needs the authors' checkpoint and a training set",
    "pose evaluate": "needs an annotated validation set",
    "docker ": "no container engine here",
    "helm ": "no cluster here",
    "kubectl ": "no cluster here",
    "python -m bench.": "benchmarks (minutes each)",
}


def shell_commands(markdown: str) -> list[str]:
    """The commands of the ```bash blocks: continuation lines joined, comments dropped, ``&&`` chains split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            commands += [c.strip() for c in line.split(" && ") if c.strip()]
    return commands


def classify(command: str) -> str:
    """``set-up``, ``run``, ``served`` or the reason it is skipped."""
    if command.startswith(SET_UP):
        return "set-up"
    if command.startswith(RUN):
        return "run"
    if command.startswith(SERVED):
        return "served"
    reason = next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)
    assert reason is not None, f"README command not classified in tests/test_readme.py: {command!r}"
    return reason


COMMANDS = shell_commands((ROOT / "README.md").read_text())


def _readme_folder(tmp_path: Path) -> Path:
    """An empty folder but for people.jpg, a JPEG too big to pass base64-encoded as one shell argument, and
    clip.mp4, a short clip of drawn figures walking."""
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "people.jpg"), noise, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert (tmp_path / "people.jpg").stat().st_size > 96_000
    render_video(0, VideoSceneConfig(num_frames=8)).save(tmp_path / "clip.mp4")
    return tmp_path


def _run(command: str, cwd: Path) -> str:
    """Runs ``command`` in a shell as a user would; returns its stdout."""
    result = subprocess.run(
        command, shell=True, cwd=cwd, env=checkout_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def python_blocks(markdown: str, section: str) -> list[str]:
    """The ```python blocks of one ``## section``."""
    body = markdown.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_two_set_up_commands_make_a_venv_install_the_pinned_versions_and_run() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    main_job, tests = blocks[0].strip(), blocks[1].strip()  # each one line, pasted as it is
    for command in (main_job, tests):
        steps = command.split(" && ")
        assert "\n" not in command and steps[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"], command
        installs = [c for c in steps if c.startswith("pip install")]
        assert installs and all(c.startswith("pip install -c constraints.txt ") for c in installs), installs
    assert main_job.split(" && ")[-1].startswith("pose predict") and tests.endswith(
        "python -m pytest -q --durations=25"
    )
    assert (ROOT / "constraints.txt").is_file()


def test_the_readme_test_commands_are_the_ones_ci_runs() -> None:
    long_run = re.findall(r"`(python -m pytest [^`]*-m long[^`]*)`", (ROOT / "README.md").read_text())
    readme = {c.removeprefix("python ") for c in COMMANDS + long_run if c.startswith("python -m pytest")}
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    runs = {line.removeprefix("python3 ") for line in ci if line.startswith("python3 -m pytest")}
    assert runs == readme
    assert all("--durations=" in c for c in readme)  # CI's log shows the slowest tests: drift in time is visible
    assert any("-m long" in c for c in readme)  # the tests the default run leaves out still run


@needs_embedded_model
def test_the_python_api_example_runs_as_written_on_the_quick_start_scenes(tmp_path: Path) -> None:
    embedded, photos = python_blocks((ROOT / "README.md").read_text(), "Python API")
    (synth,) = (c for c in COMMANDS if c.startswith("pose synth out/"))
    _run(synth, tmp_path)  # the scenes the example reads, drawn as Quick start draws them
    out = _run(f"python -c {shlex.quote(embedded)}", tmp_path)
    printed = re.fullmatch(r"torch\.Size\(\[(\d+), 17, 3\]\) tensor\(\[(.*)\]\)\s*", out, flags=re.S)
    assert printed, out
    scores = [float(v) for v in printed[2].split(",")]
    assert len(scores) == int(printed[1]) > 0 and scores == sorted(scores, reverse=True), out  # best first
    # The photo example needs the authors' checkpoint; without it, it stops naming the missing file.
    if (ROOT / "model_repo" / "hrnet_w32_coco_512" / "1" / "model.pth").is_file():
        pytest.skip("the authors' W32 checkpoint is present: the photo example needs a photo, not run here")
    code = "from pose.api import PoseEstimator\n" + photos.split("\nposes = ")[0]
    result = subprocess.run(
        ["python", "-c", code], cwd=ROOT, env=checkout_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode != 0 and "MissingCheckpointError" in result.stderr and "model.pth" in result.stderr


def test_every_readme_command_is_classified_and_the_quick_start_runs_here() -> None:
    runs = [c for c in COMMANDS if classify(c) == "run"]
    stale = [p for p in (*RUN, *SERVED, *SKIPPED) if not any(c.startswith(p) for c in COMMANDS)]
    assert not stale, f"rules for commands the README no longer has: {stale}"
    assert "pose synth out/scenes --images 8 --seed 7" in runs
    assert "pose predict out/scenes/images --out out --overlay" in runs
    assert "pose batch out/scenes/images --out out/bulk" in runs


@needs_embedded_model
def test_the_json_request_body_built_as_the_readme_says_is_accepted(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    folder = _readme_folder(tmp_path)
    (command,) = (c for c in COMMANDS if c.startswith("python -c 'import base64"))
    _run(command, folder)
    body = json.loads((folder / "body.json").read_text())
    assert base64.b64decode(body["images"][0]["data"]) == (folder / "people.jpg").read_bytes()
    with TestClient(create_app(Settings(warmup=False))) as client:
        response = client.post("/v1/pose", content=(folder / "body.json").read_bytes(), headers=JSON)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 1


@pytest.mark.slow
@needs_embedded_model
def test_cheap_readme_commands_run_as_written(tmp_path: Path) -> None:
    folder = _readme_folder(tmp_path)
    for command in (c for c in COMMANDS if classify(c) == "run"):
        _run(command, folder)
    assert len(list((folder / "out").glob("*_pose.jpg"))) == 8
    assert len((folder / "out" / "clip.ndjson").read_text().splitlines()) >= 8
    assert (folder / "out" / "clip_pose.mp4").stat().st_size > 0
    assert json.loads((folder / "out" / "predictions.json").read_text())
    bulk = json.loads((folder / "out" / "bulk" / "predictions.json").read_text())
    assert sorted(map(json.dumps, bulk)) == sorted(
        map(json.dumps, json.loads((folder / "out" / "predictions.json").read_text()))
    )


@pytest.mark.slow
@needs_embedded_model
def test_readme_service_commands_run_as_written_against_the_service(tmp_path: Path) -> None:
    from bench.common import start_service

    folder = _readme_folder(tmp_path)
    for command in (c for c in COMMANDS if classify(c) == "run" and c.startswith("python -c")):
        _run(command, folder)  # body.json, for the JSON request
    url, proc = start_service({"POSE_WARMUP": "false"})
    try:
        for command in (c for c in COMMANDS if classify(c) == "served"):
            assert "localhost:8000" in command, command
            out = _run(command.replace("localhost:8000", url.removeprefix("http://")), folder)
            if "/v1/pose/video" in command:  # NDJSON: a line per kept frame (stride 2), then the summary
                *frames, summary = map(json.loads, out.splitlines())
                assert [f["frame"] for f in frames] == [0, 2, 4, 6], (command, out[:300])
                assert all("people" in f for f in frames), out[:300]
                overlay = httpx.get(url + summary["summary"]["overlay"]["url"], timeout=60)
                assert overlay.status_code == 200 and overlay.content[4:8] == b"ftyp", summary  # an MP4
            else:
                body = json.loads(out)
                assert len(body["results"]) == 1 and "people" in body["results"][0], (command, out[:300])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
