"""``POST /v1/pose/video`` on the embedded model and generated clips: NDJSON lines, track ids, the overlay,
and every way a bad upload is refused (with a 4xx JSON error, before decoding where it can be)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from pose.api import PoseEstimator
from pose.config import DEFAULT_MODEL
from pose.data.synthetic_video import VideoSceneConfig, render_video
from pose.video import VideoWriter, iter_frames, probe
from service.app import create_app
from service.settings import Settings

from .scenes import needs_embedded_model, scene_jpeg
from .test_service import asgi_scope, png

pytestmark = needs_embedded_model
FAST = {"flip": "false"}  # half the network time on CPU; the options path is the same


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight frames of a default scene (two people walking towards each other), as H.264 MP4."""
    return render_video(0, VideoSceneConfig(num_frames=8)).save(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(warmup=False, video_max_duration_s=5.0, video_max_bytes=2_000_000, video_batch_frames=4)
    with TestClient(create_app(settings)) as c:
        yield c


def lines(response) -> list[dict]:  # noqa: ANN001
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


def upload(client: TestClient, path: Path, **params: str):  # noqa: ANN201
    with path.open("rb") as f:
        return client.post("/v1/pose/video", files={"file": (path.name, f, "video/mp4")}, params={**FAST, **params})


def test_each_frame_is_a_line_with_the_people_the_api_tracks(client: TestClient, clip: Path) -> None:
    out = lines(upload(client, clip))
    frames, summary = out[:-1], out[-1]["summary"]
    assert [f["frame"] for f in frames] == list(range(8))
    assert [f["time_s"] for f in frames] == pytest.approx([i / 25 for i in range(8)])
    # the Python API on the same decoded frames: same people, same ids (best first in the service)
    est = PoseEstimator.from_config(DEFAULT_MODEL)
    decoded = [f.image for f in iter_frames(clip)]
    for line, tracked in zip(frames, est.track(decoded, fps=25.0, flip=False), strict=True):
        order = torch.argsort(tracked.scores, descending=True, stable=True)
        assert [p["track_id"] for p in line["people"]] == tracked.track_ids[order].tolist()
        assert [p["score"] for p in line["people"]] == pytest.approx(tracked.scores[order].tolist(), abs=1e-5)
    ids = {p["track_id"] for f in frames for p in f["people"]}
    assert ids == {1, 2}  # the two walkers, each keeping one id
    assert summary["frames"] == 8 and summary["tracks"] == 2
    assert (summary["width"], summary["height"], summary["rotation"]) == (384, 256, 0)
    assert summary["overlay"] is None


def test_stride_limits_and_tracking_off(client: TestClient, clip: Path) -> None:
    out = lines(upload(client, clip, stride="3", track="false"))
    assert [f["frame"] for f in out[:-1]] == [0, 3, 6]
    assert all(p["track_id"] is None for f in out[:-1] for p in f["people"])
    assert out[-1]["summary"]["tracks"] == 0
    limited = lines(upload(client, clip, max_frames="2", max_people="1"))
    assert [f["frame"] for f in limited[:-1]] == [0, 1]
    assert all(len(f["people"]) <= 1 for f in limited[:-1])


def test_a_raw_body_works_like_a_multipart_upload(client: TestClient, clip: Path) -> None:
    raw = client.post(
        "/v1/pose/video",
        content=clip.read_bytes(),
        headers={"content-type": "video/mp4"},
        params={**FAST, "stride": "4"},
    )
    assert [f.get("frame") for f in lines(raw)[:-1]] == [0, 4]


def test_overlay_is_an_h264_video_of_the_frames_run(client: TestClient, clip: Path, tmp_path: Path) -> None:
    summary = lines(upload(client, clip, overlay="true", stride="2"))[-1]["summary"]
    assert summary["overlay"]["codec"] == "libx264"
    video = client.get(summary["overlay"]["url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    (tmp_path / "o.mp4").write_bytes(video.content)
    info = probe(tmp_path / "o.mp4")
    assert (info.codec, info.width, info.height, info.num_frames) == ("h264", 384, 256, 4)
    assert info.fps == pytest.approx(12.5)


def test_unknown_overlay_is_404(client: TestClient) -> None:
    for video_id in ("0" * 32, "..%2F..%2Fetc"):
        r = client.get(f"/v1/pose/video/{video_id}/overlay.mp4")
        assert r.status_code == 404 and r.json()["error"]["code"] in ("not_found", "http_404")


def test_a_file_that_is_not_a_video_is_400(client: TestClient) -> None:
    r = client.post("/v1/pose/video", content=b"\x00\x01not a video" * 64, headers={"content-type": "video/mp4"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_video"


def test_a_still_image_labelled_as_a_video_is_415(client: TestClient) -> None:
    for body in (scene_jpeg(), png(np.zeros((32, 48, 3), np.uint8))):
        r = client.post("/v1/pose/video", content=body, headers={"content-type": "video/mp4"})
        assert r.status_code == 415 and "not a video" in r.json()["error"]["message"], r.text
    r = client.post("/v1/pose/video", files={"file": ("clip.mp4", scene_jpeg(), "video/mp4")})
    assert r.status_code == 415


def test_a_client_that_stops_reading_the_lines_is_logged_as_499_and_its_frames_as_wasted(
    clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = clip.read_bytes()
    first_lines = asyncio.Event()
    sent_bodies: list[dict] = []
    app = create_app(Settings(warmup=False, video_batch_frames=2))
    headers = [(b"content-type", b"video/mp4"), (b"content-length", str(len(data)).encode())]
    scope = {**asgi_scope("/v1/pose/video", headers), "query_string": b"flip=false"}
    calls = {"n": 0}

    async def scripted() -> dict:  # the whole upload, then nothing until the client leaves
        calls["n"] += 1
        if calls["n"] == 1:
            return {"type": "http.request", "body": data, "more_body": False}
        await first_lines.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent_bodies.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_lines.set()  # the client read one group of lines, then went away

    async def scenario() -> str:
        async with app.router.lifespan_context(app):
            await app(scope, scripted, send)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                return (await c.get("/metrics")).text

    with caplog.at_level("INFO"):
        metrics = asyncio.run(scenario())
    access = [r.getMessage() for r in caplog.records if r.name == "pose.access" and "/video" in r.getMessage()]
    assert len(access) == 1 and access[0].startswith("POST /v1/pose/video 499"), access
    assert not any(m.get("more_body") is False and m["type"] == "http.response.body" for m in sent_bodies)
    delivered = float(re.search(r'pose_delivered_images_total\{deadline="met"\} (\S+)', metrics)[1])
    assert delivered < 8  # the clip has 8 frames; the client read fewer


def test_a_truncated_container_is_400(client: TestClient, clip: Path, tmp_path: Path) -> None:
    data = clip.read_bytes()
    r = client.post("/v1/pose/video", content=data[: len(data) // 2], headers={"content-type": "video/mp4"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_video"
    # index first (as streaming encoders write it): it opens, but its frames stop early
    with av.open(str(tmp_path / "fast.mp4"), "w", options={"movflags": "faststart"}) as out, av.open(str(clip)) as src:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    data = (tmp_path / "fast.mp4").read_bytes()
    r = client.post("/v1/pose/video", content=data[: len(data) * 2 // 3], headers={"content-type": "video/mp4"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_video"


def test_a_video_over_the_duration_limit_is_413_before_decoding(client: TestClient, tmp_path: Path) -> None:
    long = tmp_path / "long.mp4"
    with VideoWriter(long, fps=2.0) as writer:  # 6 s of tiny frames: cheap to write, over the 5 s limit
        for _ in range(12):
            writer.write(render_video(1, VideoSceneConfig(size=(64, 96), num_frames=1)).frames[0])
    r = upload(client, long)
    assert r.status_code == 413 and "6.0 s" in r.json()["error"]["message"]


def test_an_upload_over_the_byte_limit_is_413(client: TestClient) -> None:
    r = client.post("/v1/pose/video", content=b"\x00" * 2_100_000, headers={"content-type": "video/mp4"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_bad_content_type_options_and_forms_are_4xx(client: TestClient, clip: Path) -> None:
    r = client.post("/v1/pose/video", content=b"abc", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = upload(client, clip, smoothing="true", track="false")
    assert r.status_code == 422 and "smoothing" in r.json()["error"]["message"]
    r = upload(client, clip, stride="0")
    assert r.status_code == 422
    r = client.post("/v1/pose/video", files={"other": ("x.mp4", b"abc", "video/mp4")})
    assert r.status_code == 400 and "'file'" in r.json()["error"]["message"]


SHARED_CLIPS = ["mmaction2/demo_skeleton.mp4", "mmaction2/test_video_structuralize.mp4"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARED_CLIPS)
def test_real_clips_stream_to_the_end(data_dir: Path, name: str) -> None:
    """Whatever the synthetic model finds in real footage, the video decodes and streams without an error."""
    path = data_dir / "video" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    info = probe(path)
    settings = Settings(warmup=False, video_max_bytes=50_000_000)
    with TestClient(create_app(settings)) as client:
        out = lines(upload(client, path, stride="12"))
    assert "error" not in out[-1], out[-1]
    assert [f["frame"] for f in out[:-1]] == list(range(0, info.num_frames, 12))
    assert out[-1]["summary"]["duration_s"] == pytest.approx(info.duration_s)


def test_every_video_gives_back_its_slot_and_file(client: TestClient, clip: Path) -> None:
    """After streams, refusals and a client that stops reading, no decode slot or upload is held."""
    with client.stream("POST", "/v1/pose/video", content=clip.read_bytes(), headers={"content-type": "video/mp4"}) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first frame, then the client goes away
    client.post("/v1/pose/video", content=b"junk" * 100, headers={"content-type": "video/mp4"})
    lines(upload(client, clip, max_frames="1"))
    state = client.app.state.video
    assert state.active == 0
    assert not any((state.root / "uploads").iterdir())


def test_openapi_declares_the_upload_the_options_and_the_ndjson_lines(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/pose/video"]["post"]
    assert {"video/mp4", "video/webm", "video/quicktime", "multipart/form-data"} <= set(
        operation["requestBody"]["content"]
    )
    options = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    assert {"stride", "max_frames", "max_duration_s", "track", "smoothing", "overlay", "score_threshold"} <= options
    lines = operation["responses"]["200"]["content"]["application/x-ndjson"]["schema"]["oneOf"]
    assert {"frame", "time_s", "people"} <= set(lines[0]["properties"]) and "summary" in lines[1]["properties"]
    assert {"413", "400", "415"} <= set(operation["responses"])


def test_a_failing_batch_ends_the_stream_with_an_error_line(
    client: TestClient, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once lines flow the status cannot change: the failure is the last line, and the slot is freed."""

    def broken(images, run):  # noqa: ANN001, ANN202
        raise RuntimeError("the device went away")

    monkeypatch.setattr(client.app.state.service.batcher, "run_batch", broken)
    out = lines(upload(client, clip))
    assert len(out) == 1 and out[0]["error"]["code"] == "internal_error"  # the first group failed: no frames
    assert "log" in out[0]["error"]["message"] and client.app.state.video.active == 0


def test_smoothing_filters_keypoints_of_the_same_people(client: TestClient, clip: Path) -> None:
    raw = lines(upload(client, clip, max_frames="4"))[:-1]
    smooth = lines(upload(client, clip, max_frames="4", smoothing="true"))[:-1]
    for a, b in zip(raw, smooth, strict=True):
        assert [p["track_id"] for p in a["people"]] == [p["track_id"] for p in b["people"]]
        assert [p["score"] for p in a["people"]] == [p["score"] for p in b["people"]]

    def xy(line: dict) -> list[float]:
        return [v for p in line["people"] for k in p["keypoints"] for v in (k["x"], k["y"])]

    assert xy(raw[0]) == xy(smooth[0])  # a track's first frame is its own estimate
    assert all(xy(a) != xy(b) for a, b in zip(raw[1:], smooth[1:], strict=True))  # later ones are filtered
