"""Admission before decoding: pixel budgets from image headers, parsing and decoding off the event loop."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

import service.admission
import service.bodies
from pose.config import DEFAULT_MODEL
from service.app import create_app
from service.settings import Settings

from .scenes import needs_embedded_model
from .test_service import png

pytestmark = needs_embedded_model


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(
        model=DEFAULT_MODEL,
        warmup=False,
        max_request_pixels=2_000,
        max_inflight_pixels=4_000,
        max_images_per_request=4,
        # no deadline refusal: the first batches run on torch while a fresh cache's graph is exported beside
        # them, and their times would make the deadline refuse requests before the budgets under test see them
        request_timeout_s=600,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def as_json(*images: bytes) -> dict:
    return {"images": [{"data": base64.b64encode(im).decode()} for im in images]}


@pytest.fixture()
def decode_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads that decoded pixels, recorded while the real decoder runs."""
    names: list[str] = []
    real = service.admission.decode_pixels

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(service.admission, "decode_pixels", recording)
    return names


def test_a_request_over_its_pixel_budget_gets_413_before_decoding(client: TestClient, decode_threads: list) -> None:
    two = as_json(png(np.zeros((30, 30, 3), np.uint8)), png(np.zeros((30, 30, 3), np.uint8)))  # 1800 pixels
    assert client.post("/v1/pose", json=two).status_code == 200
    three = as_json(*[png(np.zeros((30, 30, 3), np.uint8))] * 3)  # 2700 pixels
    r = client.post("/v1/pose", json=three)
    assert r.status_code == 413 and "limit per request is 2000" in r.json()["error"]["message"]
    assert len(decode_threads) == 2  # only the admitted request's images were decoded


def test_a_full_in_flight_budget_gets_429_before_decoding(client: TestClient, decode_threads: list) -> None:
    intake = client.app.state.service.intake
    intake.inflight_pixels = 3_500  # other requests hold most of the budget
    try:
        r = client.post("/v1/pose", content=png(np.zeros((30, 30, 3), np.uint8)), headers={"content-type": "image/png"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "busy"
        assert int(r.headers["retry-after"]) >= 1
        assert decode_threads == []
        small = png(np.zeros((20, 20, 3), np.uint8))  # 400 pixels still fit
        assert client.post("/v1/pose", content=small, headers={"content-type": "image/png"}).status_code == 200
    finally:
        intake.inflight_pixels = 0
    assert (
        client.post(
            "/v1/pose", content=png(np.zeros((30, 30, 3), np.uint8)), headers={"content-type": "image/png"}
        ).status_code
        == 200
    )
    assert intake.inflight_pixels == 0  # every request gave its pixels back


def test_json_is_parsed_and_images_decoded_off_the_event_loop(
    client: TestClient, decode_threads: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsers: list[str] = []
    real = service.bodies.PoseRequest.model_validate_json

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        parsers.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(service.bodies.PoseRequest, "model_validate_json", recording)
    assert client.post("/v1/pose", json=as_json(png(np.zeros((8, 8, 3), np.uint8)))).status_code == 200
    assert parsers and all(name.startswith("pose-decode") for name in parsers + decode_threads)


def test_images_are_counted_before_any_base64_is_decoded(client: TestClient) -> None:
    r = client.post("/v1/pose", json={"images": [{"data": "!!not base64!!"}] * 5})
    assert r.status_code == 400 and "5 images in one request; the limit is 4" in r.json()["error"]["message"]


def test_settings_refuse_a_request_budget_that_could_never_be_admitted() -> None:
    with pytest.raises(ValueError, match="max_request_pixels"):
        Settings(max_request_pixels=10, max_inflight_pixels=5)


def test_a_json_body_with_more_values_than_any_request_is_refused_before_it_is_parsed(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(service.bodies.PoseRequest, "model_validate_json", never)
    body = b'{"images": [' + b",".join([b'{"data": ""}'] * 150_000) + b"]}"  # 1.8 MB of empty images
    r = client.post("/v1/pose", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert "at most 4 images" in r.json()["error"]["message"]
    flat = b'{"images": [{"data": ""}], "scales": [' + b",".join([b"1"] * 100_000) + b"]}"
    r = client.post("/v1/pose", content=flat, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "values" in r.json()["error"]["message"]


def test_the_largest_valid_json_request_passes_the_pre_parse_count() -> None:
    limit = 16
    body = {
        **as_json(*[b"\xff\xd8\xff"] * limit),
        "score_threshold": 0.2,
        "max_people": 5,
        "flip": True,
        "scales": [2.0, 1.5, 1.0, 0.5],
        "overlay": True,
        "format": "coco",
    }
    encoded = json.dumps(body).encode()
    service.bodies._check_json_size(encoded, limit)  # no exception: every valid body is parsed
    images, options = service.bodies._json(encoded, service.bodies.PoseOptions(), limit)
    assert len(images) == limit and options.scales == [2.0, 1.5, 1.0, 0.5]
