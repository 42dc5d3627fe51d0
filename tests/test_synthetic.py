"""Synthetic scenes: deterministic, labels consistent with the pixels, left/right by geometry, COCO-loadable."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from faster_coco_eval.core import mask as mask_utils

from pose.config import load_model_config
from pose.data.synthetic import KEYPOINT_NAMES, SKELETON, SceneConfig, render_empty, render_scene, write_dataset

from .conftest import ROOT

SMALL = SceneConfig(size=(128, 160))
K = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


def _scenes(config: SceneConfig, seeds: range) -> list[tuple[np.ndarray, list[dict]]]:
    return [render_scene(np.random.default_rng(seed), config) for seed in seeds]


def _near(mask: np.ndarray, x: float, y: float) -> bool:
    """Whether the pixel holding (x, y) or one of its 8 neighbours is in the mask."""
    px, py = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    return bool(np.pad(mask, 1)[py : py + 3, px : px + 3].any())


def _scored(keypoints: list[float]) -> list[float]:
    """Ground-truth ``[x, y, v] * K`` as a prediction: every joint scored 1."""
    return [1.0 if i % 3 == 2 else v for i, v in enumerate(keypoints)]


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", 3, seed=7, config=SMALL)
    b = write_dataset(tmp_path / "b", 3, seed=7, config=SMALL)
    c = write_dataset(tmp_path / "c", 3, seed=8, config=SMALL)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for name in ("000000.jpg", "000002.jpg"):
        assert (a.parent / "images" / name).read_bytes() == (b.parent / "images" / name).read_bytes()
        assert (a.parent / "images" / name).read_bytes() != (c.parent / "images" / name).read_bytes()


def test_labeled_keypoints_lie_inside_the_image_and_unlabeled_are_zero() -> None:
    h, w = SMALL.size
    seen = 0
    for image, people in _scenes(SMALL, range(40)):
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        for person in people:
            kp = person["keypoints"]
            assert kp.shape == (17, 3) and kp.dtype == np.float32
            labeled = kp[:, 2] > 0
            assert set(np.unique(kp[:, 2])) <= {0, 1, 2}
            assert person["num_keypoints"] == labeled.sum()
            assert np.all(kp[~labeled] == 0)
            assert np.all((kp[labeled, 0] >= 0) & (kp[labeled, 0] <= w - 1))
            assert np.all((kp[labeled, 1] >= 0) & (kp[labeled, 1] <= h - 1))
            if person["iscrowd"]:
                assert person["num_keypoints"] == 0
            else:
                assert person["num_keypoints"] >= SMALL.min_keypoints
            seen += int(labeled.sum())
    assert seen > 500


def test_visibility_flags_agree_with_the_visible_masks() -> None:
    config = SceneConfig(size=(128, 128), people=(3, 6), occluder_prob=1.0)
    visible = occluded = covered = 0
    for _, people in _scenes(config, range(25)):
        masks = [mask_utils.decode(p["rle"]).astype(bool) for p in people]
        for person, mask in zip(people, masks, strict=True):
            assert person["area"] == mask.sum() > 0
            x, y, bw, bh = person["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, bw, bh) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            for kx, ky, v in person["keypoints"]:
                if v == 2:  # a visible joint shows on its own person
                    visible += 1
                    assert _near(mask, kx, ky)
                elif v == 1:
                    occluded += 1
                if v > 0 and not _near(mask, kx, ky):  # covered by someone or something else
                    covered += 1
                    assert v == 1
    # v=1 can also be self-occlusion (an arm behind the torso), which shows on the person's own mask
    assert visible > 500 and occluded > 100 and covered > 0.5 * occluded


def test_left_joints_are_on_the_image_right_of_an_upright_frontal_figure() -> None:
    config = SceneConfig(people=(1, 1), rotation=0.0, wide_rotation_prob=0.0, outside_prob=0.0, occluder_prob=0.0)
    for _, people in _scenes(config, range(20)):
        (person,) = people
        kp = person["keypoints"]
        assert person["iscrowd"] == 0
        for part in ("eye", "ear", "shoulder", "hip"):
            left, right = kp[K[f"left_{part}"]], kp[K[f"right_{part}"]]
            assert left[2] > 0 and right[2] > 0
            assert left[0] > right[0], part
        assert kp[K["nose"], 1] < min(kp[K["left_shoulder"], 1], kp[K["right_shoulder"], 1])
        assert max(kp[K["left_eye"], 1], kp[K["right_eye"], 1]) < kp[K["nose"], 1]


def test_ground_truth_as_predictions_scores_ap_one(tmp_path: Path) -> None:
    from faster_coco_eval import COCO

    from pose.evaluation import evaluate_keypoints

    path = write_dataset(tmp_path, 12, seed=3, config=SMALL)
    data = json.loads(path.read_text())
    (category,) = data["categories"]
    assert category["keypoints"] == list(KEYPOINT_NAMES) and category["skeleton"] == [list(e) for e in SKELETON]
    assert len(COCO(str(path)).getAnnIds()) == len(data["annotations"])
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": _scored(a["keypoints"]), "score": 1.0}
        for a in data["annotations"]
        if not a["iscrowd"]
    ]
    assert len(results) > 20
    sigmas = load_model_config(ROOT / "model_repo" / "hrnet_w32_coco_512").keypoints.sigmas
    stats = evaluate_keypoints(path, results, "coco", sigmas)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AR"] == pytest.approx(1.0)


def test_synth_command_writes_images_and_annotations(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pose.cli import app

    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["synth", str(out), "--images", "2", "--seed", "1", "--size", "96"])
    assert result.exit_code == 0, result.output
    assert str(out / "annotations.json") in result.output
    data = json.loads((out / "annotations.json").read_text())
    assert [im["file_name"] for im in data["images"]] == ["000000.jpg", "000001.jpg"]
    assert all((im["height"], im["width"]) == (96, 96) for im in data["images"])
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.jpg", "000001.jpg"]


def test_negatives_follow_the_scenes_without_annotations_and_leave_the_scenes_unchanged(tmp_path: Path) -> None:
    plain = write_dataset(tmp_path / "plain", 3, seed=7, config=SMALL)
    mixed = write_dataset(tmp_path / "mixed", 3, seed=7, config=SMALL, negatives=4)
    before, after = json.loads(plain.read_text()), json.loads(mixed.read_text())
    assert after["annotations"] == before["annotations"]
    assert after["images"][:3] == before["images"]
    assert [im["file_name"] for im in after["images"][3:]] == [f"{i:06d}.png" for i in range(3, 7)]
    for name in ("000000.jpg", "000002.jpg"):
        assert (mixed.parent / "images" / name).read_bytes() == (plain.parent / "images" / name).read_bytes()
    for entry in after["images"][3:]:
        image = cv2.imread(str(mixed.parent / "images" / entry["file_name"]))
        assert image.shape[:2] == (entry["height"], entry["width"])


def test_negatives_cover_black_white_flat_textured_and_tiny_images() -> None:
    h, w = SMALL.size
    images = [render_empty(np.random.default_rng([5, i, 1]), SMALL) for i in range(300)]
    flat = [im for im in images if im.shape[:2] == (h, w) and (im == im[0, 0]).all()]
    assert any(im.max() == 0 for im in flat) and any(im.min() == 255 for im in flat)
    assert len({int(im[0, 0, 0]) for im in flat}) > 20  # grey levels and colours across the range
    assert sum(im.std() > 40 for im in images) > 20  # noise, clutter, gradients
    # A 1-4 px image as inference warps it: blocks of colour that end in the canvas's black border.
    tiny = [im for im in images if im.shape[:2] != (h, w) or ((im[:, -1] == 0).all() and im[0, 0].any())]
    assert len(tiny) > 10
    assert all(min(im.shape[:2]) == min(h, w) for im in images)


def test_synth_command_adds_negatives(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pose.cli import app

    out = tmp_path / "synth"
    args = ["synth", str(out), "--images", "2", "--negatives", "2", "--seed", "1", "--size", "96"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 images and 2 images with nobody" in result.output
    data = json.loads((out / "annotations.json").read_text())
    assert [im["file_name"] for im in data["images"]] == ["000000.jpg", "000001.jpg", "000002.png", "000003.png"]
    assert {a["image_id"] for a in data["annotations"]} <= {0, 1}
