"""The HTTP service in-process (the real app through Starlette's test client) with the embedded model on drawn
scenes: it needs nothing outside the checkout."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pose.config import DEFAULT_MODEL
from service.app import create_app
from service.settings import Settings

from .scenes import SCENE_SIZE, needs_embedded_model, scene_jpeg

MODEL = DEFAULT_MODEL
pytestmark = needs_embedded_model


def settings(**overrides) -> Settings:
    base = {
        "model": MODEL,
        "max_batch_size": 4,
        "max_queue_delay_ms": 50,
        "max_body_bytes": 2_000_000,
        "max_image_pixels": 5_000_000,
    }
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(settings())) as c:
        yield c


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def png(array: np.ndarray) -> bytes:
    return encoded(array, "PNG")


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a size, with a tiny (wrong) body: must be refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"IDAT" + zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(data) - 4)
        + data
        + struct.pack(">I", zlib.crc32(data))
    )


def test_a_scene_gives_people_with_named_keypoints(client: TestClient) -> None:
    r = client.post("/v1/pose", content=scene_jpeg(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "synthetic_w16_256" and body["version"] == 1
    (result,) = body["results"]
    assert (result["width"], result["height"]) == (640, 425)
    people = result["people"]
    assert 0 < len(people) <= 30
    assert [k["name"] for k in people[0]["keypoints"]][:3] == ["nose", "left_eye", "right_eye"]
    assert len(people[0]["keypoints"]) == 17 and len(people[0]["bbox"]) == 4
    scores = [p["score"] for p in people]
    assert scores == sorted(scores, reverse=True)
    assert body["timings"]["total_ms"] >= body["timings"]["inference_ms"] > 0


def test_multipart_json_and_options(client: TestClient) -> None:
    data = scene_jpeg()
    r = client.post(
        "/v1/pose",
        files={"image": ("p.jpg", data, "image/jpeg")},
        params={"max_people": 2, "format": "coco", "overlay": True},
    )
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert len(result["people"]) == 2 and len(result["coco"]) == 2
    assert len(result["coco"][0]["keypoints"]) == 51 and result["coco"][0]["category_id"] == 1
    overlay = base64.b64decode(result["overlay_jpeg_base64"])
    assert Image.open(io.BytesIO(overlay)).size == (640, 425)
    encoded = base64.b64encode(data).decode()
    r = client.post(
        "/v1/pose",
        json={
            "images": [{"data": encoded}, {"data": base64.b64encode(png(np.zeros((30, 50, 3), np.uint8))).decode()}],
            "score_threshold": 1e9,
        },
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["width"], x["height"]) for x in results] == [(640, 425), (50, 30)]
    assert all(x["people"] == [] for x in results)  # nothing scores above 1e9


def test_every_body_type_gives_the_same_fields_and_people(client: TestClient) -> None:
    data = scene_jpeg()
    query = {"overlay": True, "format": "coco", "max_people": 3}
    bodies = {
        "raw": {"content": data, "headers": {"content-type": "image/jpeg"}, "params": query},
        "multipart": {"files": {"image": ("scene.jpg", data, "image/jpeg")}, "params": query},
        "json": {"json": {"images": [{"data": base64.b64encode(data).decode()}], **query}},
    }
    results = {name: client.post("/v1/pose", **kwargs).json()["results"][0] for name, kwargs in bodies.items()}
    assert all(set(r) == {"width", "height", "people", "coco", "overlay_jpeg_base64"} for r in results.values())
    assert results["raw"]["people"] == results["multipart"]["people"] == results["json"]["people"]
    assert len(results["raw"]["people"]) == 3
    for result in results.values():
        overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay_jpeg_base64"])))
        assert (overlay.format, overlay.size) == ("JPEG", SCENE_SIZE)


def test_concurrent_requests_are_batched(client: TestClient) -> None:
    data = scene_jpeg()
    with ThreadPoolExecutor(6) as pool:
        responses = list(
            pool.map(lambda _: client.post("/v1/pose", content=data, headers={"content-type": "image/jpeg"}), range(6))
        )
    assert all(r.status_code == 200 for r in responses)
    assert max(r.json()["timings"]["batch_size"] for r in responses) > 1

    def keypoints(r: httpx.Response) -> np.ndarray:
        return np.array(
            [[[k["x"], k["y"], k["score"]] for k in p["keypoints"]] for p in r.json()["results"][0]["people"]]
        )

    first = keypoints(responses[0])
    for r in responses[1:]:  # batching changes nothing beyond float summation order
        np.testing.assert_allclose(keypoints(r), first, atol=1e-3)
    metrics = client.get("/metrics").text
    count = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("pose_batch_size_count")))
    total = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("pose_batch_size_sum")))
    assert total / count > 1


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (60, 20), (200, 10, 10)).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def jpeg_with_trailer() -> bytes:
    """A JPEG followed by data after its end marker, as phones and editors write them (a trailer, or a motion
    photo's video): here 4 kB that even holds an FF D9 pair of its own."""
    rng = np.random.default_rng(0)
    return scene_jpeg() + b"MotionPhoto_Data" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() + b"\xff\xd9x"


GOOD_VARIANTS = {
    "grayscale png": (png(np.full((20, 30), 128, np.uint8)), (30, 20)),
    "rgba png": (png(np.full((20, 30, 4), 200, np.uint8)), (30, 20)),
    "16-bit png": (png(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100), (30, 20)),
    "1x1 png": (png(np.zeros((1, 1, 3), np.uint8)), (1, 1)),
    "bmp": (encoded(np.full((20, 30, 3), 90, np.uint8), "BMP"), (30, 20)),
    "exif-rotated jpeg": (exif_rotated_jpeg(), (20, 60)),
    "jpeg with data after its end": (jpeg_with_trailer(), SCENE_SIZE),
}


@pytest.mark.parametrize("name", list(GOOD_VARIANTS))
def test_unusual_but_valid_images_give_results(client: TestClient, name: str) -> None:
    data, size = GOOD_VARIANTS[name]
    r = client.post("/v1/pose", content=data, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert (r.json()["results"][0]["width"], r.json()["results"][0]["height"]) == size


BAD_INPUTS = {
    "empty body": (b"", "image/jpeg", 400, "invalid_image"),
    "not an image": (b"hello world, not a picture", "image/jpeg", 415, "unsupported_media_type"),
    "truncated jpeg": (scene_jpeg()[:5000], "image/jpeg", 400, "invalid_image"),
    "truncated jpeg ending in zeros": (scene_jpeg()[:-2000] + bytes(100), "image/jpeg", 400, "invalid_image"),
    "truncated png": (png(np.zeros((64, 64, 3), np.uint8))[:60], "image/png", 400, "invalid_image"),
    "unsupported type": (b"GIF89a....", "image/gif", 415, "unsupported_media_type"),
    "zero-size png": (png_header(0, 0), "image/png", 400, "invalid_image"),
    "decompression bomb": (png_header(100_000, 100_000), "image/png", 413, "image_too_large"),
    "extreme aspect ratio": (png(np.zeros((2, 400, 3), np.uint8)), "image/png", 400, "invalid_image"),
    "body over the limit": (b"\xff\xd8\xff" + b"0" * 2_100_000, "image/jpeg", 413, "payload_too_large"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_4xx_and_the_service_keeps_serving(client: TestClient, name: str) -> None:
    data, media, status, code = BAD_INPUTS[name]
    r = client.post("/v1/pose", content=data, headers={"content-type": media})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert client.get("/health/ready").status_code == 200


def test_bad_json_and_parameters(client: TestClient) -> None:
    r = client.post("/v1/pose", json={"images": [{"data": "not base64!!"}]})
    assert r.status_code == 400 and "base64" in r.json()["error"]["message"]
    r = client.post("/v1/pose", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/pose", json={"images": []})
    assert r.status_code == 422 and "body.images" in r.json()["error"]["message"]
    r = client.post("/v1/pose", files={"other": (None, "text")})
    assert r.status_code == 400 and "unexpected multipart field 'other'" in r.json()["error"]["message"]
    r = client.post("/v1/pose", files={"picture": ("p.png", png(np.zeros((8, 8, 3), np.uint8)), "image/png")})
    assert r.status_code == 400 and "'picture'" in r.json()["error"]["message"]
    r = client.post("/v1/pose", files={"image": (None, "text")})
    assert r.status_code == 400 and "must be a file" in r.json()["error"]["message"]


BAD_OPTIONS = {
    "max_people below 1": ({"max_people": 0}, "max_people"),
    "max_people above the model's": ({"max_people": 31}, "max_people: at most 30"),
    "negative threshold": ({"score_threshold": -1}, "score_threshold"),
    "scales without 1.0": ({"scales": [2.0]}, "include 1.0"),
    "unknown option": ({"maxpeople": 3}, "maxpeople"),
}


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_a_bad_option_gets_the_same_422_in_a_query_and_in_json(client: TestClient, name: str) -> None:
    option, named = BAD_OPTIONS[name]
    image = png(np.zeros((8, 8, 3), np.uint8))
    by_query = client.post("/v1/pose", content=image, params=option, headers={"content-type": "image/png"})
    by_json = client.post("/v1/pose", json={"images": [{"data": base64.b64encode(image).decode()}], **option})
    for r in (by_query, by_json):
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_request" and named in r.json()["error"]["message"]


def test_json_options_override_query_options(client: TestClient) -> None:
    image = base64.b64encode(scene_jpeg()).decode()
    r = client.post(
        "/v1/pose", params={"max_people": 3, "format": "coco"}, json={"images": [{"data": image}], "max_people": 1}
    )
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert len(result["people"]) == 1 and len(result["coco"]) == 1


def test_metrics_expose_the_documented_series(client: TestClient) -> None:
    client.post("/v1/pose", content=scene_jpeg(), headers={"content-type": "image/jpeg"})
    text = client.get("/metrics").text
    for series in (
        "pose_requests_total",
        "pose_request_duration_seconds_bucket",
        "pose_queue_seconds_bucket",
        "pose_inference_seconds_bucket",
        "pose_postprocess_seconds_bucket",
        "pose_batch_size_bucket",
        "pose_queue_depth",
        "pose_inflight_requests",
        "pose_persons_per_image_bucket",
        "pose_gpu_memory_bytes",
    ):
        assert series in text, series
    assert 'pose_requests_total{status="200"}' in text


def test_models_and_health_paths(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert models[0]["name"] == "synthetic_w16_256" and len(models[0]["keypoints"]) == 17
    for path in ("/health/live", "/v2/health/live", "/health/ready", "/v2/health/ready"):
        assert client.get(path).status_code == 200, path


def test_readiness_flips_only_after_warm_up() -> None:
    async def run() -> tuple[int, int, int]:
        app = create_app(settings())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            before = (await c.get("/health/ready")).status_code
            pose_before = (await c.post("/v1/pose", content=b"x", headers={"content-type": "image/jpeg"})).status_code
            async with app.router.lifespan_context(app):
                after = (await c.get("/health/ready")).status_code
        return before, pose_before, after

    assert asyncio.run(run()) == (503, 503, 200)


def test_after_sigterm_new_requests_get_a_503_that_says_the_service_is_shutting_down() -> None:
    from service.app import start_drain

    async def drain() -> None:
        start_drain(c.app)  # type: ignore[arg-type]

    with TestClient(create_app(settings(warmup=False))) as c:
        assert c.portal is not None
        c.portal.call(drain)
        r = c.post("/v1/pose", content=scene_jpeg(), headers={"content-type": "image/jpeg"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", r.text
        assert c.get("/health/ready").status_code == 503 and c.get("/health/live").status_code == 200


def test_full_queue_returns_429_with_retry_after() -> None:
    data = scene_jpeg()
    with TestClient(create_app(settings(queue_limit=1, max_batch_size=1, max_queue_delay_ms=0, warmup=False))) as c:
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(lambda _: c.post("/v1/pose", content=data, headers={"content-type": "image/jpeg"}), range(8))
            )
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 429 in codes, codes
        rejected = next(r for r in responses if r.status_code == 429)
        assert int(rejected.headers["retry-after"]) >= 1 and rejected.json()["error"]["code"] == "queue_full"


def test_a_request_past_its_deadline_before_it_is_queued_is_refused_uncomputed_and_the_service_recovers() -> None:
    data = scene_jpeg()
    with TestClient(create_app(settings(request_timeout_s=0.01, warmup=False))) as c:
        r = c.post("/v1/pose", content=data, headers={"content-type": "image/jpeg"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded", r.text
        assert int(r.headers["retry-after"]) >= 1
        metrics = c.get("/metrics").text
        assert "pose_batch_size_count 0.0" in metrics  # nothing was computed for it
        shed = {r: f'pose_shed_requests_total{{reason="{r}"}} 1.0' in metrics for r in ("deadline", "expired")}
        assert sum(shed.values()) == 1, metrics  # refused on arrival, or shed from the queue: once either way
        assert c.get("/health/ready").status_code == 200
        c.app.state.service.settings.request_timeout_s = 60.0
        assert c.post("/v1/pose", content=data, headers={"content-type": "image/jpeg"}).status_code == 200


def test_a_client_deadline_shorter_than_the_service_limit_is_honoured_and_a_bad_one_is_a_422() -> None:
    data = scene_jpeg()
    with TestClient(create_app(settings(warmup=False))) as c:
        jpeg = {"content-type": "image/jpeg"}
        r = c.post("/v1/pose", content=data, headers={**jpeg, "x-request-timeout": "0.001"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded", r.text
        assert c.post("/v1/pose", content=data, headers={**jpeg, "x-request-timeout": "20"}).status_code == 200
        for bad in ("0", "-1", "soon"):
            r = c.post("/v1/pose", content=data, headers={**jpeg, "x-request-timeout": bad})
            assert r.status_code == 422 and "X-Request-Timeout" in r.json()["error"]["message"], (bad, r.text)


def test_a_device_that_stops_answering_gives_a_504_after_the_deadline_and_a_timeout_more() -> None:
    data = scene_jpeg()
    with TestClient(create_app(settings(request_timeout_s=0.5, warmup=False))) as c:
        batcher = c.app.state.service.batcher
        wedged = threading.Event()

        def stuck(images, run):  # noqa: ANN001, ANN202
            wedged.wait(5)
            raise RuntimeError("released")

        batcher.run_batch = stuck
        r = c.post("/v1/pose", content=data, headers={"content-type": "image/jpeg"})
        wedged.set()
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text


def test_api_key_is_required_when_configured() -> None:
    with TestClient(create_app(settings(api_key="s3cret", warmup=False))) as c:
        refused = c.get("/v1/models")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer ")
        r = c.post("/v1/pose", content=scene_jpeg(), headers={"content-type": "image/jpeg"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == refused.headers["www-authenticate"]
        assert c.get("/v1/models", headers={"x-api-key": "wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"x-api-key": "s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health/live").status_code == 200  # probes need no key


def test_api_key_can_come_from_a_mounted_secret_file(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("from-file\n")
    with TestClient(create_app(settings(api_key_file=key_file, warmup=False))) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"x-api-key": "from-file"}).status_code == 200
    with pytest.raises(ValueError, match="cannot read api_key_file"):
        settings(api_key_file=tmp_path / "missing")
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ValueError, match="is empty"):
        settings(api_key_file=tmp_path / "empty")


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    return [r for v in node for r in _refs(v)] if isinstance(node, list) else []


def test_openapi_documents_every_body_type_options_and_security(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/pose"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/bmp",
        "multipart/form-data",
        "application/json",
    }
    body = content["application/json"]["schema"]
    assert body["properties"]["images"]["items"]["properties"]["data"]["contentEncoding"] == "base64"
    options = {"score_threshold", "max_people", "flip", "scales", "overlay", "format"}
    assert options <= set(body["properties"])  # the same options, declared once
    assert options == {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    # The scales rule is in the schema clients generate requests from: 1.0 must be among them.
    query_scales = next(p["schema"] for p in operation["parameters"] if p["name"] == "scales")
    for schema in (query_scales, body["properties"]["scales"]):
        assert jsonschema.Draft202012Validator(schema).is_valid([2.0, 1.0, 0.5])
        assert not jsonschema.Draft202012Validator(schema).is_valid([0.5, 2.0])
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"X-Request-Timeout"}
    for ref in _refs(spec):  # every reference points at a declared schema
        assert ref.removeprefix("#/components/schemas/") in spec["components"]["schemas"], ref
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}
    assert {name for req in operation["security"] for name in req} == set(schemes)


def test_openapi_lists_every_endpoint_the_readme_names(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/metrics", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"} <= set(paths)
    assert "text/plain" in next(iter(paths["/metrics"]["get"]["responses"]["200"]["content"]))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_every_asset_from_the_service_itself(client: TestClient, page: str) -> None:
    # An offline cluster reaches no CDN: every script, style sheet and icon of the page is served here.
    html = client.get(page).text
    assets = re.findall(r"""(?:src|href)\s*[=:]\s*['"]([^'"]+)['"]""", html)
    assert len(assets) >= 2, html
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from outside the service"
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset
    assert "/openapi.json" in html


def test_settings_refuse_scales_the_decoder_cannot_group() -> None:
    with pytest.raises(ValueError, match="include 1.0"):
        settings(scales=[2.0])
    with pytest.raises(ValueError, match="positive"):
        settings(scales=[1.0, 0.0])
    assert settings(scales=[2.0, 1.0]).scales == [2.0, 1.0]


def test_request_id_is_returned_on_every_response_and_in_error_bodies(client: TestClient) -> None:
    r = client.get("/health/live", headers={"x-request-id": "trace-42.a:b"})
    assert r.headers["x-request-id"] == "trace-42.a:b"
    generated = client.get("/nowhere").headers["x-request-id"]
    assert len(generated) == 32 and generated != client.get("/nowhere").headers["x-request-id"]
    forged = client.get("/health/live", headers={"x-request-id": "a\tb" + "x" * 200}).headers["x-request-id"]
    assert forged != "a\tb" + "x" * 200 and len(forged) == 32  # not echoed into logs and headers
    r = client.post("/v1/pose", content=b"", headers={"content-type": "image/png", "x-request-id": "req-1"})
    assert r.status_code == 400 and r.headers["x-request-id"] == "req-1"
    assert r.json()["error"]["request_id"] == "req-1"
    r = client.post("/v1/pose", params={"max_people": 0}, content=b"", headers={"content-type": "image/png"})
    assert r.status_code == 422 and r.json()["error"]["request_id"] == r.headers["x-request-id"]


def asgi_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    """An HTTP POST's ASGI scope, for driving the app with a client scripted message by message."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def drive(app, scope: dict, receive) -> tuple[list[dict], str]:  # noqa: ANN001
    """Run one request through the app (lifespan included) with a scripted ``receive``; the messages the app
    sent, and the metrics after it."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            metrics = (await c.get("/metrics")).text
    return sent, metrics


def test_a_client_that_left_takes_no_batch_slot_and_is_counted_apart() -> None:
    image = png(np.zeros((16, 16, 3), np.uint8))
    messages = [{"type": "http.request", "body": image, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}  # then the client is gone

    headers = [(b"content-type", b"image/png"), (b"content-length", str(len(image)).encode())]
    sent, metrics = asyncio.run(drive(create_app(settings(warmup=False)), asgi_scope("/v1/pose", headers), receive))
    assert sent[0]["status"] == 499
    assert 'pose_requests_total{status="499"} 1.0' in metrics
    assert "pose_batch_size_count 0.0" in metrics  # no batch ran for it


def test_a_client_that_leaves_during_the_upload_is_one_info_line_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    image = png(np.zeros((16, 16, 3), np.uint8))
    messages = [{"type": "http.request", "body": image[:10], "more_body": True}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}  # gone mid-body

    headers = [(b"content-type", b"image/png"), (b"content-length", str(len(image)).encode())]
    with caplog.at_level("INFO"):
        sent, metrics = asyncio.run(drive(create_app(settings(warmup=False)), asgi_scope("/v1/pose", headers), receive))
    assert sent[0]["status"] == 499 and 'pose_requests_total{status="499"} 1.0' in metrics
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "pose.access" and "/v1/pose" in r.getMessage()]
    assert len(access) == 1 and access[0].startswith("POST /v1/pose 499")


def test_log_lines_carry_the_request_id_as_text_or_json() -> None:
    import json
    import logging

    from service.logs import JsonFormatter, configure_logging, request_id_var

    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        configure_logging("json")
        (handler,) = logging.getLogger().handlers
        assert isinstance(handler.formatter, JsonFormatter)
        token = request_id_var.set("rid-7")
        record = logging.LogRecord("pose.access", logging.INFO, __file__, 1, "POST %s", ("/v1/pose",), None)
        handler.filter(record)
        request_id_var.reset(token)
        line = json.loads(handler.format(record))
        assert line["request_id"] == "rid-7" and line["message"] == "POST /v1/pose" and line["level"] == "INFO"
        configure_logging("text")
        (handler,) = logging.getLogger().handlers
        handler.filter(record)
        assert "[rid-7]" in handler.format(record)
    finally:
        logging.getLogger().handlers[:], level = saved
        logging.getLogger().setLevel(level)


def test_error_messages_are_capped_and_never_echo_the_input(client: TestClient) -> None:
    junk = b'{"images": [' + b"9" * 1_000_000  # 1 MB of broken JSON
    r = client.post("/v1/pose", content=junk, headers={"content-type": "application/json"})
    # The body's message, not the whole text: the random request id may hold "9999" itself.
    assert r.status_code == 400 and len(r.content) < 1000 and "9999" not in r.json()["error"]["message"]
    huge_option = {"images": [{"data": "AAAA"}], "format": "x" * 100_000}
    r = client.post("/v1/pose", json=huge_option)
    assert r.status_code == 422 and len(r.content) < 1000 and "xxxx" not in r.text
    r = client.post("/v1/pose", content=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, headers={"content-type": "image/png"})
    assert r.status_code == 400 and "object at 0x" not in r.text and "PNG header" in r.json()["error"]["message"]
    r = client.post("/v1/pose", content=b"BM" + b"\0" * 64, headers={"content-type": "image/bmp"})
    assert r.status_code == 400 and "BMP header" in r.json()["error"]["message"]


def test_pillow_keeps_its_own_decompression_bomb_limit() -> None:
    import service.imaging  # noqa: F401 - importing the service must not lift the process-wide limit

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > 0


def test_an_unexpected_failure_is_a_500_without_internals() -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("secret internal state at 0xdeadbeef")

    # raise_server_exceptions=False: answer as a server would, instead of re-raising into the test
    with TestClient(create_app(settings(warmup=False)), raise_server_exceptions=False) as c:
        c.app.state.service.pipeline.run = broken
        r = c.post("/v1/pose", content=png(np.zeros((8, 8, 3), np.uint8)), headers={"content-type": "image/png"})
    assert r.status_code == 500 and "secret" not in r.text and "RuntimeError" not in r.text
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
