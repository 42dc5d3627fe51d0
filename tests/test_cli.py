"""The ``pose`` command line: what a user sees when something they passed is wrong (one line, exit code 2,
no traceback), and what ``pose info`` says about a model's files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pose.cli import app
from pose.cli_errors import WEIGHTS_HINT
from pose.config import DEFAULT_MODEL, load_model_config
from pose.data.synthetic import SceneConfig, render_scene
from pose.models.hrnet import create_model

from .conftest import FIXTURES, ROOT, checkout_env
from .scenes import needs_embedded_model


def run(*args: str | Path) -> tuple[int, list[str]]:
    """Exit code and the printed lines (stdout and stderr) of ``pose ARGS``."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output.splitlines()


@pytest.fixture
def model_without_weights(tmp_path: Path) -> Path:
    """The embedded model's config in a folder of its own, its checkpoints not downloaded."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(DEFAULT_MODEL / "config.yaml", folder / "config.yaml")
    return folder


@pytest.fixture(scope="module")
def foreign_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A well-formed checkpoint of another architecture (the tiny W8 model)."""
    path = tmp_path_factory.mktemp("ckpt") / "w8.pth"
    torch.save(create_model(load_model_config(FIXTURES / "tiny_coco_w8_256.yaml")).state_dict(), path)
    return path


def test_missing_checkpoint_is_one_line_naming_the_file_and_the_fix(model_without_weights: Path) -> None:
    code, lines = run("predict", ROOT / "README.md", "--model", model_without_weights)
    assert code == 2
    assert lines == [
        f"Error: checkpoint {model_without_weights / '1' / 'model.pth'} does not exist; pass --weights FILE, "
        "or download the released checkpoints (README, 'For photos')"
    ]


@needs_embedded_model
def test_a_file_that_is_not_an_image_is_one_line(tmp_path: Path) -> None:
    code, lines = run("predict", ROOT / "README.md", "--out", tmp_path)
    assert code == 2
    assert lines == [
        f"Error: {ROOT / 'README.md'} is not an image that can be decoded (jpg, png, bmp, webp, tif); pass images"
    ]


def test_missing_input_and_empty_folder_are_one_line(tmp_path: Path) -> None:
    code, lines = run("predict", tmp_path / "nope.jpg")
    assert code == 2 and lines == [
        f"Error: {tmp_path / 'nope.jpg'} does not exist; pass image or video files, or folders of them"
    ]
    code, lines = run("predict", tmp_path)
    assert (
        code == 2
        and len(lines) == 1
        and lines[0].startswith("Error: no images or videos (.avi, .bmp, .jpeg")
        and str(tmp_path) in lines[0]
    )


def test_invalid_model_config_names_the_file_and_the_field(model_without_weights: Path) -> None:
    config = model_without_weights / "config.yaml"
    config.write_text(config.read_text().replace("size: 256", "size: 100"))
    code, lines = run("info", "--model", model_without_weights)
    assert code == 2
    assert lines == [f"Error: {config}: input.size: input size must be a multiple of 64, got 100; fix the file"]
    config.write_text("name: [unclosed\n")
    code, lines = run("info", "--model", config)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"Error: {config} is not valid YAML at line 2")


def test_missing_model_folder_is_one_line(tmp_path: Path) -> None:
    code, lines = run("info", "--model", tmp_path)
    assert code == 2
    hint = "a model is a model_repo/<name> folder with a config.yaml"
    assert lines == [f"Error: no model config at {tmp_path / 'config.yaml'}; {hint}"]


def test_missing_training_config_is_one_line(tmp_path: Path) -> None:
    code, lines = run("train", tmp_path / "run.yaml")
    assert code == 2 and lines == [
        f"Error: no training config at {tmp_path / 'run.yaml'}; pass a run YAML such as model_repo/*/train.yaml"
    ]


@needs_embedded_model
def test_info_defaults_to_the_embedded_model_and_checks_its_files() -> None:
    code, lines = run("info")
    assert code == 0, lines
    assert lines[0].startswith("synthetic_w16_256: ")
    assert lines[1] == "  input 256, 17 keypoints (coco), 1,551,748 parameters"
    assert lines[2] == f"  weights: {DEFAULT_MODEL / '1' / 'model.pth'} present, keys and shapes fit the model"
    assert lines[3] == f"  scoring net: {DEFAULT_MODEL / '1' / 'rescore.pth'} present, keys and shapes fit the model"


def test_info_says_which_files_are_missing_and_how_to_get_them(model_without_weights: Path) -> None:
    code, lines = run("info", "--model", model_without_weights)
    assert code == 0, lines
    weights, scoring = model_without_weights / "1" / "model.pth", model_without_weights / "1" / "rescore.pth"
    assert lines[2:] == [
        f"  weights: {weights} missing; {WEIGHTS_HINT}",
        f"  scoring net: {scoring} missing; poses keep the mean of their joint scores",
    ]
    assert WEIGHTS_HINT == "pass --weights FILE, or download the released checkpoints (README, 'For photos')"


def test_info_refuses_a_checkpoint_of_another_architecture(foreign_checkpoint: Path) -> None:
    code, lines = run("info", "--weights", foreign_checkpoint)
    assert code == 2
    assert lines[-1].startswith(f"Error: {foreign_checkpoint}: checkpoint does not fit the model: ")
    assert "conv1.weight (64, 3, 3, 3) != (32, 3, 3, 3)" in lines[-1]


@needs_embedded_model
def test_pose_export_reports_a_missing_graph_in_one_line(tmp_path: Path) -> None:
    from export.cli import app as export_app

    folder = tmp_path / "model"
    folder.mkdir()
    config = yaml.safe_load((DEFAULT_MODEL / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "weights": str(DEFAULT_MODEL / "1" / "model.pth")}))
    result = CliRunner().invoke(export_app, ["verify", "--model", str(folder), str(ROOT / "README.md")])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"Error: {folder} has no portable ONNX graph recorded; run pose-export onnx --model {folder} or pass --onnx"
    ]


def test_the_installed_entry_point_prints_no_traceback(tmp_path: Path, model_without_weights: Path) -> None:
    # The console script as a user runs it: stderr holds the one line, and nothing reaches stdout.
    command = [sys.executable, "-m", "pose", "predict", "photo.jpg", "--model", str(model_without_weights)]
    (tmp_path / "photo.jpg").write_bytes(b"")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=checkout_env())
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error: checkpoint ") and result.stderr.count("\n") == 1


@needs_embedded_model
def test_predict_with_the_embedded_model_notes_that_it_finds_drawn_figures(tmp_path: Path) -> None:
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), render_scene(np.random.default_rng(3), SceneConfig(people=(1, 1)))[0])
    code, lines = run("predict", image, "--out", tmp_path / "out")
    assert code == 0, lines
    assert lines == [
        "note: synthetic_w16_256 finds drawn figures like those of pose synth, not people in photos; for photos use "
        "the authors' released checkpoints (README, 'For photos')",
        lines[1],
    ]
    assert lines[1].endswith(f"-> {tmp_path / 'out' / 'predictions.json'}")
    other = tmp_path / "model"
    other.mkdir()
    config = yaml.safe_load((DEFAULT_MODEL / "config.yaml").read_text())
    weights = {"weights": str(DEFAULT_MODEL / "1" / "model.pth"), "rescore_weights": None}
    (other / "config.yaml").write_text(yaml.safe_dump({**config, **weights, "name": "figures"}))
    # torch: the note is the subject here, and a graph of the renamed copy would be one more export
    code, lines = run("predict", image, "--out", tmp_path / "out", "--model", other, "--backend", "torch")
    assert code == 0 and len(lines) == 1 and lines[0].endswith("predictions.json"), lines


@pytest.mark.parametrize("command", [None, "predict", "raw", "evaluate", "info", "train", "synth", "train-rescore"])
def test_help_is_plain_text(command: str | None) -> None:
    code, lines = run(*([command] if command else []), "--help")
    text = "\n".join(lines)
    assert code == 0 and text.startswith("Usage: ")
    for markup in ("``", "::", "<bool>", "╭", "/work/", str(ROOT)):
        assert markup not in text, (markup, text)


def test_pose_export_help_is_plain_text() -> None:
    from export.cli import app as export_app

    for command in ([], ["onnx"], ["verify"], ["tensorrt"], ["prepare-engine"]):
        text = CliRunner().invoke(export_app, [*command, "--help"]).output
        assert text.startswith("Usage: ") and not any(m in text for m in ("``", "::", "<bool>", "╭")), text


def test_counts_in_messages_agree_with_their_nouns(tmp_path: Path) -> None:
    code, lines = run("synth", tmp_path / "one", "--images", "1", "--size", "64")
    assert code == 0 and lines[-1].startswith(f"1 image -> {tmp_path / 'one' / 'images'}"), lines


@needs_embedded_model
def test_predict_reports_the_people_the_api_reports_at_the_models_threshold(tmp_path: Path) -> None:
    """One default threshold, the model's: a plain grey image has nobody, a drawn scene the API's poses."""
    from pose.api import PoseEstimator

    blank, scene = tmp_path / "blank.png", tmp_path / "scene.png"
    cv2.imwrite(str(blank), np.full((64, 64, 3), 128, np.uint8))
    cv2.imwrite(str(scene), render_scene(np.random.default_rng(3), SceneConfig(size=(256, 256), people=(2, 3)))[0])
    code, lines = run("predict", blank, scene, "--out", tmp_path / "out")
    assert code == 0, lines
    entries = json.loads((tmp_path / "out" / "predictions.json").read_text())
    est = PoseEstimator.from_config(ROOT / "model_repo" / "synthetic_w16_256")
    want = est.predict(est.read_image(scene))
    assert len(want.scores) > 0 and all(s >= est.config.test.score_threshold for s in want.scores.tolist())
    assert [e["image_id"] for e in entries] == [1] * len(want.scores)  # nothing from the blank image
    assert [round(e["score"], 5) for e in entries] == [round(s, 5) for s in want.scores.tolist()]


@needs_embedded_model
def test_a_failed_predict_leaves_no_empty_output_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    code, lines = run("predict", tmp_path / "notes.jpg", "--out", out, "--backend", "torch")
    assert code == 2 and lines[-1].startswith("Error:") and "notes.jpg" in lines[-1]
    assert not out.exists()
    kept = tmp_path / "kept"  # a folder the user made is left as it was, empty or not
    kept.mkdir()
    assert run("predict", tmp_path / "notes.jpg", "--out", kept, "--backend", "torch")[0] == 2
    assert kept.is_dir()


@needs_embedded_model
def test_a_batch_rerun_with_every_shard_done_reports_no_rate(tmp_path: Path) -> None:
    image, _ = render_scene(np.random.default_rng(0), SceneConfig(size=(128, 128), people=(1, 1)))
    cv2.imwrite(str(tmp_path / "scene.jpg"), image)
    args = ("batch", tmp_path / "scene.jpg", "--out", tmp_path / "bulk", "--no-progress", "--backend", "torch")
    code, first = run(*args)
    assert code == 0 and "(0 already done)" in first[-1] and "images/s" in first[-1], first
    code, again = run(*args)
    assert code == 0 and "(1 already done), nothing left to run ->" in again[-1], again
    assert "images/s" not in again[-1]
