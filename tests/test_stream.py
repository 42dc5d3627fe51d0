"""``WS /v1/stream`` in-process with the embedded model: tracked answers in order, drops under overload,
bad frames answered with errors, and every connection-level refusal as a close code with a reason."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator

import cv2
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from pose.data.clip import panning_clip
from service.app import create_app
from service.frames import Frame, FrameQueue
from service.logs import request_id_var
from service.settings import Settings

from .scenes import needs_embedded_model


def jpegs(frames: int, seed: int = 3) -> list[bytes]:
    return [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in panning_clip(seed, frames)]


def app_client(**overrides: object) -> TestClient:
    return TestClient(create_app(Settings(warmup=False, **overrides)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with app_client() as c:
        yield c


def closed_with(client: TestClient, url: str, **kwargs: object) -> WebSocketDisconnect:
    """The close a connection to ``url`` gets before or instead of the ready message."""
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect(url, **kwargs) as ws:  # type: ignore[arg-type]
        ws.receive_json()
        ws.receive_json()
    return info.value


# --- the frame queue on its own ---


def test_full_queue_pushes_out_the_oldest_frame_and_counts_it() -> None:
    async def scenario() -> tuple[list[int], int, int, Frame | None]:
        queue = FrameQueue(2)
        pushed = [queue.put(Frame(seq, b"")) for seq in range(5)]
        assert [f.seq if f else None for f in pushed] == [None, None, 0, 1, 2]
        kept = [(await queue.get()).seq for _ in range(2)]  # type: ignore[union-attr]
        dropped, total = queue.take_dropped(), queue.dropped_total
        assert queue.take_dropped() == 0  # reported once
        queue.close()
        return kept, dropped, total, await queue.get()

    kept, dropped, total, after_close = asyncio.run(scenario())
    assert kept == [3, 4] and dropped == 3 and total == 3 and after_close is None


def test_a_waiting_reader_wakes_up_on_a_frame_and_on_close() -> None:
    async def scenario() -> tuple[int | None, None]:
        queue = FrameQueue(1)
        waiting = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)
        queue.put(Frame(7, b""))
        first = await asyncio.wait_for(waiting, 1)
        waiting = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)
        queue.close()
        return (first.seq if first else None), await asyncio.wait_for(waiting, 1)

    assert asyncio.run(scenario()) == (7, None)


# --- the endpoint ---


@needs_embedded_model
def test_every_frame_gets_its_poses_in_order_with_stable_track_ids(client: TestClient) -> None:
    with client.websocket_connect("/v1/stream?flip=false") as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["model"] == "synthetic_w16_256"
        assert len(ready["keypoints"]) == 17 and ready["skeleton"] and ready["flip"] is False
        assert ready["scales"] == [1.0]
        messages = []
        for i, frame in enumerate(jpegs(6)):
            ws.send_text(json.dumps({"time": 1000.0 + i}))
            ws.send_bytes(frame)
            messages.append(ws.receive_json())
    assert [m["seq"] for m in messages] == list(range(6))
    assert [m["time"] for m in messages] == [1000.0 + i for i in range(6)]
    assert all(m["type"] == "poses" and m["dropped"] == 0 and m["latency_ms"] > 0 for m in messages)
    assert all((m["width"], m["height"]) == (320, 240) for m in messages)
    best_ids = [m["people"][0]["track_id"] for m in messages]  # the clearest figure, panning 3 px a frame
    assert best_ids == [best_ids[0]] * 6, best_ids
    assert all(len(p["keypoints"]) == 17 for m in messages for p in m["people"])


@needs_embedded_model
def test_a_bad_frame_gets_an_error_message_and_the_stream_goes_on(client: TestClient) -> None:
    with client.websocket_connect("/v1/stream") as ws:
        ws.receive_json()
        ws.send_bytes(b"this is not a picture")
        ws.send_bytes(jpegs(1)[0][:5000])  # cut short: the header reads, the end marker is missing
        ws.send_bytes(jpegs(1)[0])
        answers = [ws.receive_json() for _ in range(3)]
    assert [a["type"] for a in answers] == ["error", "error", "poses"]
    assert answers[0]["code"] == "unsupported_media_type" and answers[0]["seq"] == 0
    assert answers[1]["code"] == "invalid_image" and "truncated" in answers[1]["message"]
    assert answers[2]["seq"] == 2 and answers[2]["people"]


@needs_embedded_model
def test_overload_drops_the_oldest_frames_and_reports_every_one() -> None:
    frames = jpegs(12)
    with app_client(stream_queue_frames=1) as c, c.websocket_connect("/v1/stream") as ws:
        ws.receive_json()
        for frame in frames:  # far faster than the model answers
            ws.send_bytes(frame)
        answers = []
        while not answers or answers[-1]["seq"] < len(frames) - 1:
            answers.append(ws.receive_json())
        metrics = c.get("/metrics").text
    seqs = [a["seq"] for a in answers]
    assert seqs == sorted(seqs) and seqs[-1] == 11  # the newest frame is never the one dropped
    dropped = sum(a["dropped"] for a in answers)
    assert dropped > 0 and len(answers) + dropped == len(frames)  # each frame answered or reported dropped
    assert f'pose_stream_frames_total{{outcome="dropped"}} {dropped:.1f}' in metrics
    assert 'pose_stream_frames_total{outcome="received"} 12.0' in metrics
    assert f'pose_stream_frames_total{{outcome="answered"}} {len(answers):.1f}' in metrics
    assert f"pose_stream_frame_latency_seconds_count {len(answers):.1f}" in metrics


@needs_embedded_model
def test_a_frame_over_the_byte_limit_gets_413_as_a_message() -> None:
    with app_client(stream_max_frame_bytes=1024) as c, c.websocket_connect("/v1/stream") as ws:
        ws.receive_json()
        ws.send_bytes(jpegs(1)[0])
        answer = ws.receive_json()
    assert answer["type"] == "error" and answer["code"] == "payload_too_large" and "limit is 1024" in answer["message"]


@needs_embedded_model
def test_the_api_key_is_required_as_a_header_or_a_token() -> None:
    with app_client(api_key="s3cret") as c:
        refused = closed_with(c, "/v1/stream")
        wrong = closed_with(c, "/v1/stream?token=nope")
        for url, headers in [
            ("/v1/stream?token=s3cret", {}),
            ("/v1/stream", {"x-api-key": "s3cret"}),
            ("/v1/stream", {"authorization": "Bearer s3cret"}),
        ]:
            with c.websocket_connect(url, headers=headers) as ws:
                assert ws.receive_json()["type"] == "ready"
    assert refused.code == wrong.code == 4401 and "API key" in refused.reason


@needs_embedded_model
def test_invalid_options_close_the_stream_with_4422_naming_the_option(client: TestClient) -> None:
    negative = closed_with(client, "/v1/stream?score_threshold=-1")
    unknown = closed_with(client, "/v1/stream?flipp=true")
    too_many = closed_with(client, "/v1/stream?max_people=100000")
    big_scale = closed_with(client, "/v1/stream?scales=1&scales=3")
    assert negative.code == unknown.code == too_many.code == big_scale.code == 4422
    assert "score_threshold" in negative.reason and "flipp" in unknown.reason and "max_people" in too_many.reason
    assert "scales" in big_scale.reason


@needs_embedded_model
def test_a_text_message_that_is_not_a_timestamp_closes_with_4400(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/v1/stream") as ws:
        ws.receive_json()
        ws.send_text("hello")
        ws.receive_json()
    assert info.value.code == 4400 and "time" in info.value.reason


@needs_embedded_model
def test_streams_beyond_the_limit_are_refused_with_4429_and_counted() -> None:
    with app_client(max_streams=1) as c, c.websocket_connect("/v1/stream") as first:
        assert first.receive_json()["type"] == "ready"
        assert "pose_streams_open 1.0" in c.get("/metrics").text
        second = closed_with(c, "/v1/stream")
        assert second.code == 4429 and "limit is 1" in second.reason


@needs_embedded_model
def test_a_draining_service_closes_open_streams_with_4503_and_refuses_new_ones() -> None:
    from service.app import start_drain

    async def drain() -> None:
        start_drain(c.app)  # type: ignore[arg-type]

    with app_client() as c:
        with pytest.raises(WebSocketDisconnect) as info, c.websocket_connect("/v1/stream") as ws:
            ws.receive_json()
            assert c.portal is not None
            c.portal.call(drain)
            ws.send_bytes(jpegs(1)[0])
            ws.receive_json()
        refused = closed_with(c, "/v1/stream")
    assert info.value.code == 4503 and "shutting down" in info.value.reason
    assert refused.code == 4503 and "shutting down" in refused.reason


@needs_embedded_model
def test_a_stream_that_sends_nothing_is_closed_with_4408() -> None:
    with app_client(stream_idle_timeout_s=0.5) as c:
        idle = closed_with(c, "/v1/stream")
        assert "pose_streams_open 0.0" in c.get("/metrics").text
    assert idle.code == 4408 and "0.5 s" in idle.reason


@needs_embedded_model
def test_a_streams_log_lines_carry_the_clients_request_id(client: TestClient) -> None:
    seen: list[tuple[str, str]] = []

    class Grab(logging.Filter):  # runs where the line is logged, in the stream's context
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append((record.getMessage(), request_id_var.get()))
            return True

    logger = logging.getLogger("pose.stream")
    grab, level = Grab(), logger.level
    logger.addFilter(grab)
    logger.setLevel(logging.INFO)
    try:
        with client.websocket_connect("/v1/stream", headers={"x-request-id": "camera-7"}) as ws:
            ws.receive_json()
        deadline = time.monotonic() + 5  # the server logs the close a moment after the client left
        while not any("stream closed" in m for m, _ in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        logger.removeFilter(grab)
        logger.setLevel(level)
    assert [rid for m, rid in seen if "stream closed" in m] == ["camera-7"]
