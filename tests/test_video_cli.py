"""``pose predict`` on videos: one NDJSON line per frame with track ids, an H.264 overlay, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pose.api import PoseEstimator
from pose.cli import app as cli
from pose.config import DEFAULT_MODEL
from pose.data.synthetic_video import VideoSceneConfig, render_video
from pose.video import probe

from .scenes import needs_embedded_model

pytestmark = needs_embedded_model


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_video(0, VideoSceneConfig(num_frames=6)).save(tmp_path_factory.mktemp("cli") / "walk.mp4")


def test_predict_writes_frame_lines_with_the_ids_the_api_gives(clip: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["predict", str(clip), "--out", str(tmp_path), "--no-flip", "--overlay"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "walk.ndjson").read_text().splitlines()]
    api = list(PoseEstimator.from_config(DEFAULT_MODEL).track_video(clip, flip=False))
    assert [line["frame"] for line in lines] == [frame.index for frame, _ in api] == list(range(6))
    for line, (_, people) in zip(lines, api, strict=True):
        assert sorted(p["track_id"] for p in line["people"]) == sorted(people.track_ids.tolist())
        assert [p["score"] for p in line["people"]] == pytest.approx(sorted(people.scores.tolist(), reverse=True))
    assert {p["track_id"] for line in lines for p in line["people"]} == {1, 2}
    assert not (tmp_path / "predictions.json").exists()  # no images were given
    info = probe(tmp_path / "walk_pose.mp4")
    assert (info.codec, info.num_frames, info.width, info.height) == ("h264", 6, 384, 256)


def test_a_broken_video_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    result = CliRunner().invoke(cli, ["predict", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error:") and "video" in result.output
    assert len(result.output.strip().splitlines()) == 1
