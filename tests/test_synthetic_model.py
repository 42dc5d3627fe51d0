"""The embedded default model (trained on synthetic figures) finds the people of held-out synthetic scenes,
through the library, the CLI and the HTTP service: end-to-end checks on real detections, not random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pose.api import PoseEstimator
from pose.cli import app as cli
from pose.config import DEFAULT_MODEL
from pose.data.synthetic import SceneConfig, render_scene, write_dataset
from pose.train.rescore import keypoint_oks
from service.app import create_app
from service.settings import Settings

from .scenes import needs_embedded_model

pytestmark = needs_embedded_model
SCENE = SceneConfig(people=(1, 4), height=(0.3, 0.9), occluder_prob=0.25)  # what the model was trained on
SIGMAS = np.array(
    [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087]
    + [0.089, 0.089]
)


def found(people: list[dict], predicted: np.ndarray, min_oks: float = 0.5) -> float:
    """Share of the labeled people that some prediction matches with OKS >= min_oks."""
    gts = [p for p in people if not p["iscrowd"] and p["num_keypoints"] >= 8]
    if not gts or len(predicted) == 0:
        return float(not gts)
    gt = np.stack([p["keypoints"] for p in gts]).astype(np.float64)
    areas = np.array([p["area"] for p in gts], dtype=np.float64)
    oks = keypoint_oks(predicted[..., :2].astype(np.float64), gt, areas, SIGMAS)
    return float((oks.max(0) >= min_oks).mean())


def test_library_finds_the_people_of_unseen_scenes() -> None:
    est = PoseEstimator.from_config(DEFAULT_MODEL)
    assert est.scoring_net is not None  # the rescoring net ships with it
    rng = np.random.default_rng(2026)  # scenes no training or validation set contains
    rates = []
    for _ in range(8):
        image, people = render_scene(rng, SCENE)
        poses = est.predict(image[..., ::-1].copy())  # render_scene draws BGR; the API takes RGB
        rates.append(found(people, poses.keypoints[poses.scores > 0.1].numpy()))
    assert np.mean(rates) >= 0.75, rates


def test_cli_predict_and_evaluate_on_a_synthetic_set(tmp_path: Path) -> None:
    annotations = write_dataset(tmp_path / "set", 12, seed=4242, config=SCENE)
    runner = CliRunner()
    result = runner.invoke(cli, ["predict", str(tmp_path / "set" / "images"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} == set(range(12))
    result = runner.invoke(cli, ["evaluate", str(annotations), str(tmp_path / "set" / "images")])
    assert result.exit_code == 0, result.output
    ap = float(result.output.split("AP ")[1].split()[0])
    assert ap >= 0.3, result.output  # held-out AP of this model: 0.707 (model card)


def test_service_returns_the_people_of_a_posted_scene() -> None:
    image, people = render_scene(np.random.default_rng(7), SCENE)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    with TestClient(create_app(Settings(warmup=False))) as client:
        response = client.post("/v1/pose", content=jpeg.tobytes(), headers={"content-type": "image/jpeg"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "synthetic_w16_256"
    people_out = [p for p in body["results"][0]["people"] if p["score"] > 0.1]
    detected = np.array([[[k["x"], k["y"], k["score"]] for k in p["keypoints"]] for p in people_out])
    assert found(people, detected.reshape(-1, 17, 3)) >= 0.75


def _images_with_nobody() -> dict[str, np.ndarray]:
    """Blank, uniform, noisy and tiny images, in sizes and colours the threshold was not chosen on too."""
    rng = np.random.default_rng(11)
    images = {
        f"{name} {h}x{w}": np.full((h, w, 3), value, np.uint8)
        for name, value in (("black", 0), ("near-black", 3), ("white", 255), ("grey", 128))
        for h, w in ((256, 256), (480, 640), (720, 1280), (1, 1), (2, 2), (1, 2), (3, 5))
    }
    images["noise 256x256"] = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    images["noise 2x2"] = rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)
    for color in rng.integers(0, 256, (8, 3)):
        images[f"uniform {tuple(color.tolist())}"] = np.broadcast_to(color.astype(np.uint8), (300, 500, 3)).copy()
    return images


def test_blank_uniform_and_tiny_images_return_no_people_while_a_scene_keeps_its_figures() -> None:
    est = PoseEstimator.from_config(DEFAULT_MODEL)
    reported = {name: len(est.predict(image).scores) for name, image in _images_with_nobody().items()}
    assert not any(reported.values()), {name: n for name, n in reported.items() if n}
    image, people = render_scene(np.random.default_rng(7), SCENE)
    poses = est.predict(image[..., ::-1].copy())  # the same default threshold
    assert found(people, poses.keypoints.numpy()) >= 0.75


def test_the_models_score_threshold_leaves_plain_images_empty_through_the_api_and_the_service() -> None:
    est = PoseEstimator.from_config(DEFAULT_MODEL)
    assert est.config.test.score_threshold == 0.1  # chosen on the dev split (model card)
    plain = np.full((256, 256, 3), 128, np.uint8)
    assert len(est.predict(plain, min_score=0.0).scores) > 0  # the decoder always proposes candidates...
    assert len(est.predict(plain).scores) == 0  # ...and the default threshold drops them
    ok, png_bytes = cv2.imencode(".png", plain)
    assert ok
    blank = [plain, np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8), np.zeros((480, 640, 3), np.uint8)]
    with TestClient(create_app(Settings(warmup=False))) as client:
        for image in blank:
            body = cv2.imencode(".png", image)[1].tobytes()
            r = client.post("/v1/pose", content=body, headers={"content-type": "image/png"})
            assert r.status_code == 200 and r.json()["results"][0]["people"] == [], image.shape
        assert client.get("/v1/models").json()["models"][0]["score_threshold"] == 0.1
        r = client.post(
            "/v1/pose",
            content=png_bytes.tobytes(),
            params={"score_threshold": 0},
            headers={"content-type": "image/png"},
        )
        assert r.json()["results"][0]["people"]  # a request may still ask for everything
