"""Training data pipeline against hand-computed samples (SPEC §5.1-5.2).

Tiny COCO/CrowdPose JSONs and images are written to tmp_path; input 128, stride 4, so R = 32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pose.config import ModelConfig, load_model_config
from pose.data.dataset import KeypointDataset, person_joints
from pose.data.transforms import (
    AffineParams,
    AugmentRanges,
    affine_matrix,
    augment,
    eval_params,
    sample_params,
    warp_labels,
    with_center,
)
from pose.loss import PoseLoss
from pose.preprocess import plan_transform
from tests.conftest import FIXTURES

S, R = 128, 32
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def make_config(dataset: str = "coco", size: int = S) -> ModelConfig:
    cfg = load_model_config(FIXTURES / f"tiny_{dataset}_w8_256.yaml")
    return cfg.model_copy(update={"input": cfg.input.model_copy(update={"size": size})})


def noise_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def keypoints(k: int, labeled: dict[int, tuple[float, float, int]]) -> list[float]:
    out = [0.0] * (3 * k)
    for j, (x, y, v) in labeled.items():
        out[3 * j : 3 * j + 3] = [x, y, v]
    return out


def person(
    k: int, labeled: dict[int, tuple[float, float, int]], bbox: list[float], area: float | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "keypoints": keypoints(k, labeled),
        "num_keypoints": sum(v > 0 for _, _, v in labeled.values()),
        "iscrowd": 0,
        "bbox": bbox,
        "area": bbox[2] * bbox[3] if area is None else area,
        "category_id": 1,
        **extra,
    }


def write_dataset(root: Path, images: list[np.ndarray], anns: list[list[dict[str, Any]]]) -> tuple[Path, Path]:
    """One RGB image per entry (saved as PNG, BGR on disk) and its annotations."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    infos, flat = [], []
    for i, (image, image_anns) in enumerate(zip(images, anns, strict=True)):
        name = f"{i + 1:012d}.png"
        cv2.imwrite(str(folder / name), image[..., ::-1])
        infos.append({"id": i + 1, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        flat += [{**a, "image_id": i + 1, "id": 100 * (i + 1) + j} for j, a in enumerate(image_anns)]
    path = root / "keypoints.json"
    path.write_text(json.dumps({"images": infos, "annotations": flat, "categories": [{"id": 1, "name": "person"}]}))
    return path, folder


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO crowd segmentation: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"counts": counts, "size": list(mask.shape)}


# Person A of the hand-computed case, in a 128 x 128 image: three labeled joints, 14 unlabeled (0, 0, 0).
A_JOINTS = {0: (40.0, 48.0, 2), 5: (60.0, 32.0, 1), 6: (80.0, 72.0, 2)}
A_BBOX = [16.0, 20.0, 80.0, 96.0]


def scaled_person_a(factor: float) -> dict[str, Any]:
    joints = {j: (x * factor, y * factor, v) for j, (x, y, v) in A_JOINTS.items()}
    return person(17, joints, [c * factor for c in A_BBOX], area=5000.0 * factor**2)


@pytest.mark.parametrize("factor", [1, 2])
def test_eval_sample_matches_hand_computed_targets(tmp_path: Path, factor: int) -> None:
    # factor 1: the image is the input (identity warp), output = x / 4. factor 2: a 256 image, every
    # coordinate doubled, scale 1.28 -> output = x / 8, and final_scale = (128 / 256)^2 = 1 / 4, so the
    # same output targets and the same area in input px^2 come out.
    rgb = noise_image(S * factor, S * factor)
    ann_path, folder = write_dataset(tmp_path, [rgb], [[scaled_person_a(factor)]])
    sample = KeypointDataset(ann_path, folder, make_config(), train=False)[0]

    heat, hw = sample["heatmaps"].numpy(), sample["heatmap_weight"].numpy()
    off, ow = sample["offsets"].numpy(), sample["offset_weight"].numpy()
    assert heat.shape == (18, R, R) and hw.shape == (1, R, R) and off.shape == ow.shape == (34, R, R)

    # Joints at x / stride: (40, 48) -> (10, 12), (60, 32) -> (15, 8), (80, 72) -> (20, 18).
    for channel, (x, y) in [(0, (10, 12)), (5, (15, 8)), (6, (20, 18))]:
        assert heat[channel, y, x] == pytest.approx(1.0)
        assert np.unravel_index(heat[channel].argmax(), (R, R)) == (y, x)
    assert heat[1].max() == 0 and heat[16].max() == 0  # unlabeled joints are not drawn

    # Center = sum of all 17 (x, y), zeros of the unlabeled included, / 3 labeled joints:
    # ((40 + 60 + 80) / 3, (48 + 32 + 72) / 3) = (60, 50.667) image px -> (15, 12.667) out px.
    cx, cy = 60.0 / 4, (152.0 / 3) / 4
    assert heat[17, 13, 15] == pytest.approx(math.exp(-((13 - cy) ** 2) / 32), abs=1e-5)
    assert heat[17, 12, 15] == pytest.approx(math.exp(-((12 - cy) ** 2) / 32), abs=1e-5)
    assert np.unravel_index(heat[17].argmax(), (R, R)) == (13, int(cx))

    # Offsets on the 8 x 8 square at int(center) = (15, 12): x in [11, 19), y in [8, 16).
    xs, ys = np.meshgrid(np.arange(11, 19), np.arange(8, 16))
    np.testing.assert_allclose(off[0, 8:16, 11:19], xs - 10, atol=1e-5)
    np.testing.assert_allclose(off[1, 8:16, 11:19], ys - 12, atol=1e-5)
    np.testing.assert_allclose(off[10, 8:16, 11:19], xs - 15, atol=1e-5)
    np.testing.assert_allclose(off[13, 8:16, 11:19], ys - 18, atol=1e-5)
    # Weight 1 / sqrt(bbox w * h in input px^2) = 1 / sqrt(80 * 96).
    np.testing.assert_allclose(ow[0, 8:16, 11:19], 1 / math.sqrt(80 * 96), rtol=1e-5)
    assert ow[0].sum() == pytest.approx(64 / math.sqrt(80 * 96), rel=1e-5)  # nothing outside the square
    assert ow[2:4].max() == 0  # joint 1 unlabeled

    # Shared weight: 1 in the drawn windows, the background weight elsewhere (no mask here).
    assert hw[0, 12, 10] == 1.0 and hw[0, 31, 31] == pytest.approx(0.1) and hw[0, 0, 0] == pytest.approx(0.1)

    if factor == 1:  # identity warp: the input is the image itself, RGB, ImageNet-normalized
        expected = ((rgb / 255.0 - MEAN) / STD).transpose(2, 0, 1)
        np.testing.assert_allclose(sample["image"].numpy(), expected, atol=1e-5)


def test_forced_flip_swaps_left_right_channels_and_mirrors_x(tmp_path: Path) -> None:
    ann_path, folder = write_dataset(tmp_path, [noise_image(S, S)], [[scaled_person_a(1)]])
    ds = KeypointDataset(ann_path, folder, make_config(), train=True, seed=0)
    plain = ds.get(0, AffineParams((64.0, 64.0), 0.64, 0.0, flip=False))
    flipped = ds.get(0, AffineParams((64.0, 64.0), 0.64, 0.0, flip=True))

    assert torch.equal(flipped["image"], plain["image"].flip(-1))  # the image is mirrored exactly
    heat = flipped["heatmaps"].numpy()
    # x -> R - x - 1 with channels reordered: left shoulder (5) at x 15 becomes right shoulder (6) at 16,
    # right shoulder (6) at x 20 becomes left shoulder (5) at 11, the nose stays channel 0 at 21.
    assert np.unravel_index(heat[6].argmax(), (R, R)) == (8, 16)
    assert np.unravel_index(heat[5].argmax(), (R, R)) == (18, 11)
    assert np.unravel_index(heat[0].argmax(), (R, R)) == (12, 21)
    # Center (15, 12.667) -> (16, 12.667), still the last channel.
    assert np.unravel_index(heat[17].argmax(), (R, R)) == (13, 16)
    # Everything is the mirror image up to the asymmetric window edges (values < 0.006 there).
    order = with_center(make_config().keypoints.flip_index)
    np.testing.assert_allclose(heat[order], plain["heatmaps"].numpy()[..., ::-1], atol=6e-3)
    # Offsets now sit on the square at int(16, 12.667) = (16, 12): x in [12, 20), pixel - joint.
    off = flipped["offsets"].numpy()
    xs = np.arange(12, 20)
    np.testing.assert_allclose(off[2 * 6, 10, 12:20], xs - 16, atol=1e-5)
    np.testing.assert_allclose(off[2 * 5, 10, 12:20], xs - 11, atol=1e-5)
    assert flipped["offset_weight"][2 * 6, 10, 11] == 0 and flipped["offset_weight"][2 * 6, 10, 12] > 0


def test_flip_keeps_the_authors_three_input_pixel_target_shift() -> None:
    # A dot at image column u: the image goes to S - 1 - u, the joint to R - u / 4 - 1 = (S - u - 4) / 4.
    image = np.zeros((S, S, 3), np.uint8)
    image[40, 20] = 255
    joints = np.array([[[20.0, 40.0, 2.0], [20.0, 40.0, 1.0]]])
    img, _, out, _ = augment(
        image,
        np.ones((S, S), np.float32),
        joints,
        np.ones(1),
        AffineParams((64.0, 64.0), 0.64, flip=True),
        S,
        R,
        [0, 1],
    )
    assert np.argwhere(img[..., 0] == 255).tolist() == [[40, S - 1 - 20]]
    assert out[0, 0, 0] == pytest.approx(R - 20 / 4 - 1)
    assert (S - 1 - 20) - out[0, 0, 0] * 4 == pytest.approx(3.0)  # 0.75 out px = 3 input px


@pytest.mark.parametrize("flip", [False, True])
def test_2x_targets_follow_the_grid_convention_of_inference(flip: bool) -> None:
    # Inference puts pixel i of a stride-s grid on input pixel s * i and doubles 4x joints onto the 2x grid.
    # The targets agree: unflipped, a joint at input u is u / 4 on the 4x grid and u / 2 on the 2x grid.
    # Flipped, each grid mirrors as x -> size - 1 - x, which puts the 4x target 3 input px and the 2x target
    # 1 input px left of the mirrored image: the shifts of the test-time passes that feed the regression and
    # the 4x heatmaps (3 px) and the 2x heatmap (1 px).
    image = np.zeros((S, S, 3), np.uint8)
    image[40, 20] = 255
    joints = np.array([[[20.0, 40.0, 2.0], [20.0, 40.0, 1.0]]])
    mask = np.ones((S, S), np.float32)
    params = AffineParams((64.0, 64.0), 0.64, flip=flip)  # the identity map onto the 128 input
    img, _, out_4x, _ = augment(image, mask, joints, np.ones(1), params, S, R, [0, 1])
    _, out_2x = warp_labels(mask, joints, params, 2 * R, [0, 1])
    u = np.argwhere(img[..., 0] == 255)[0, 1]  # the joint's input column
    shift_4x, shift_2x = (make_config().test.flip_shift, 1) if flip else (0, 0)
    assert out_4x[0, 0, 0] * 4 == pytest.approx(u - shift_4x)
    assert out_2x[0, 0, 0] * 2 == pytest.approx(u - shift_2x)
    assert out_4x[0, 0, 1] * 4 == out_2x[0, 0, 1] * 2 == pytest.approx(40.0)


def test_rotated_scaled_warp_moves_joints_with_the_image() -> None:
    image = np.zeros((200, 300, 3), np.uint8)
    image[118:123, 178:183] = 255  # a 5 x 5 blob centred on (180, 120)
    joints = np.array([[[180.0, 120.0, 2.0], [0.0, 0.0, 0.0]]])
    params = AffineParams((140.0, 110.0), 1.3, rotation=25.0)
    img, _, out, area = augment(image, np.ones((200, 300), np.float32), joints, np.array([100.0]), params, S, R, [0, 1])
    ys, xs = np.nonzero(img[..., 0] > 128)
    # The output map is the input map scaled by R / S, so the joint at the input resolution is 4 * out.
    assert xs.mean() == pytest.approx(out[0, 0, 0] * S / R, abs=1.0)
    assert ys.mean() == pytest.approx(out[0, 0, 1] * S / R, abs=1.0)
    assert area[0] == pytest.approx(100.0 * (S / (200 * 1.3)) ** 2)
    # The authors' direction: +90 degrees takes a point right of the centre to above it (y down).
    m = affine_matrix((100.0, 100.0), 1.0, 200, rotation=90.0)
    np.testing.assert_allclose(m @ [150.0, 100.0, 1.0], [100.0, 50.0], atol=1e-9)


def test_training_map_without_rotation_equals_the_test_time_transform() -> None:
    plan = plan_transform(300, 300, S)  # centre (150, 150), scale 1.5, input S x S
    assert plan.input_size == (S, S)
    np.testing.assert_allclose(affine_matrix((150.0, 150.0), 1.5, S), plan.matrix, atol=1e-4)


def test_sampled_params_stay_in_the_authors_ranges() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_params(640, 480, rng) for _ in range(200)]
    base = 480 / 200
    assert all(0.75 * base <= p.scale < 1.5 * base for p in draws)
    assert all(-30 < p.rotation < 30 for p in draws)
    for p in draws:
        bound = int(40 * p.scale)
        dx, dy = p.center[0] - 320, p.center[1] - 240
        assert dx == int(dx) and -bound <= dx < bound and -bound <= dy < bound
    assert 0.35 < np.mean([p.flip for p in draws]) < 0.65
    still = sample_params(640, 480, rng, AugmentRanges(max_rotation=0, max_translate=0, flip_prob=0))
    assert still.center == (320.0, 240.0) and still.rotation == 0 and not still.flip
    assert eval_params(640, 480) == AffineParams((320.0, 240.0), 2.4, 0.0, False)


def crowd_scene(k: int, height: int = S, width: int = S) -> list[dict[str, Any]]:
    crowd = np.zeros((height, width), np.uint8)
    crowd[80:120, 80:120] = 1
    return [
        person(k, {0: (40.0, 48.0, 2), 5: (60.0, 32.0, 2)}, A_BBOX),
        {
            "iscrowd": 1,
            "num_keypoints": 0,
            "keypoints": [0] * (3 * k),
            "segmentation": uncompressed_rle(crowd),
            "bbox": [80, 80, 40, 40],
            "area": 1600,
        },
        person(k, {}, [8.0, 80.0, 32.0, 40.0], segmentation=[[8, 80, 40, 80, 40, 120, 8, 120]]),
    ]


def test_crowd_and_keypointless_people_zero_the_coco_weight_only(tmp_path: Path) -> None:
    coco_json, coco_dir = write_dataset(tmp_path / "coco", [noise_image(S, S)], [crowd_scene(17)])
    hw = KeypointDataset(coco_json, coco_dir, make_config(), train=False)[0]["heatmap_weight"][0].numpy()
    assert hw[20:30, 20:30].max() == 0  # crowd RLE at image [80, 120)^2 -> out [20, 30)^2
    assert hw[20:30, 2:10].max() == 0  # keypoint-less person's polygon, x [8, 40) -> [2, 10)
    assert hw[12, 10] == 1.0 and hw[0, 31] == pytest.approx(0.1)  # supervised elsewhere
    assert (hw == 0).sum() == 100 + 80

    crowd_json, crowd_dir = write_dataset(tmp_path / "crowdpose", [noise_image(S, S)], [crowd_scene(14)])
    hw = KeypointDataset(crowd_json, crowd_dir, make_config("crowdpose"), train=False)[0]["heatmap_weight"].numpy()
    assert hw.min() == pytest.approx(0.1)  # CrowdPose: no masking at all


def test_keypointless_person_keeps_a_bbox_center_and_crowds_are_dropped(tmp_path: Path) -> None:
    ann_path, folder = write_dataset(tmp_path, [noise_image(S, S)], [crowd_scene(17)])
    raw = KeypointDataset(ann_path, folder, make_config(), train=False).load(0)
    assert raw.joints.shape == (2, 18, 3)  # the keypoint-less crowd is filtered, the keypoint-less person kept
    np.testing.assert_allclose(raw.joints[1, 17], [8 + 16, 80 + 20, 1])
    np.testing.assert_allclose(raw.areas, [80 * 96, 32 * 40])


def test_center_divides_the_full_sum_by_the_labeled_count() -> None:
    # Authors: np.sum(joints[:-1, :2]) / num_labeled, so stored coordinates of v = 0 joints count too.
    ann = person(4, {0: (10.0, 20.0, 2), 1: (30.0, 40.0, 1)}, [0.0, 0.0, 50.0, 50.0])
    ann["keypoints"][6:9] = [6.0, 3.0, 0]  # joint 2: coordinates stored but unlabeled
    joints, areas = person_joints([ann], 4, min_center_area=32.0**2)
    np.testing.assert_allclose(joints[0, 4], [(10 + 30 + 6) / 2, (20 + 40 + 3) / 2, 1])
    assert areas[0] == 2500


def test_small_coco_person_has_no_center_and_no_offsets(tmp_path: Path) -> None:
    small = person(17, {0: (40.0, 48.0, 2), 5: (50.0, 40.0, 2)}, [36.0, 36.0, 20.0, 25.0], area=500.0)
    ann_path, folder = write_dataset(tmp_path / "coco", [noise_image(S, S)], [[small]])
    sample = KeypointDataset(ann_path, folder, make_config(), train=False)[0]
    assert sample["heatmaps"][0, 12, 10] == 1.0  # its joints are still drawn
    assert sample["heatmaps"][17].max() == 0  # area 500 < 32^2: center visibility 0
    assert sample["offset_weight"].max() == 0 and sample["offsets"].abs().max() == 0

    small14 = {**small, "keypoints": keypoints(14, {0: (40.0, 48.0, 2), 5: (50.0, 40.0, 2)})}
    ann_path, folder = write_dataset(tmp_path / "crowdpose", [noise_image(S, S)], [[small14]])
    sample = KeypointDataset(ann_path, folder, make_config("crowdpose"), train=False)[0]
    assert sample["heatmaps"][14].max() > 0.9 and sample["offset_weight"].max() > 0  # no area test

    ann_path, folder = write_dataset(tmp_path / "coco_all", [noise_image(S, S)], [[small]])
    sample = KeypointDataset(ann_path, folder, make_config(), train=False, min_center_area=0)[0]
    assert sample["heatmaps"][17].max() > 0.9 and sample["offset_weight"].max() > 0  # the rule switched off


def test_same_seed_epoch_index_reproduce_and_a_new_epoch_changes_the_draw(tmp_path: Path) -> None:
    ann_path, folder = write_dataset(tmp_path, [noise_image(160, 128)], [[scaled_person_a(1)]])
    ds = KeypointDataset(ann_path, folder, make_config(), train=True, seed=7)
    twin = KeypointDataset(ann_path, folder, make_config(), train=True, seed=7)
    first, again, other = ds[0], ds[0], twin[0]
    for key in first:
        assert torch.equal(first[key], again[key]) and torch.equal(first[key], other[key]), key
    ds.set_epoch(1)
    assert ds.params(0, 160, 128) != twin.params(0, 160, 128)
    assert not torch.equal(ds[0]["image"], first["image"])
    assert KeypointDataset(ann_path, folder, make_config(), train=True, seed=8).params(0, 160, 128) != twin.params(
        0, 160, 128
    )


def test_set_epoch_reaches_persistent_workers(tmp_path: Path) -> None:
    ann_path, folder = write_dataset(tmp_path, [noise_image(S, S)], [[scaled_person_a(1)]])
    ds = KeypointDataset(ann_path, folder, make_config(), train=True, seed=3)
    loader = DataLoader(ds, batch_size=1, num_workers=1, persistent_workers=True)
    images = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        (batch,) = list(loader)
        assert torch.equal(batch["image"][0], ds[0]["image"])
        images.append(batch["image"])
    assert not torch.equal(images[0], images[1])


def test_dataloader_batches_have_the_loss_shapes(tmp_path: Path) -> None:
    ann_path, folder = write_dataset(
        tmp_path, [noise_image(S, S), noise_image(200, 150, seed=1)], [[scaled_person_a(1)], crowd_scene(17, 150, 200)]
    )
    ds = KeypointDataset(ann_path, folder, make_config(), train=True, seed=0)
    assert len(ds) == 2 and ds.image_ids == [1, 2]
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert shapes == {
        "image": (2, 3, S, S),
        "heatmaps": (2, 18, R, R),
        "heatmap_weight": (2, 1, R, R),
        "offsets": (2, 34, R, R),
        "offset_weight": (2, 34, R, R),
        "image_id": (2,),
    }
    assert all(batch[k].dtype == torch.float32 for k in shapes if k != "image_id")
    assert batch["image_id"].tolist() == [1, 2]
    total, _, _ = PoseLoss()(
        torch.zeros(2, 18, R, R),
        torch.zeros(2, 34, R, R),
        batch["heatmaps"],
        batch["heatmap_weight"],
        batch["offsets"],
        batch["offset_weight"],
    )
    assert torch.isfinite(total) and total > 0


def test_images_without_annotations_are_skipped(tmp_path: Path) -> None:
    ann_path, folder = write_dataset(tmp_path, [noise_image(S, S), noise_image(S, S)], [[], [scaled_person_a(1)]])
    ds = KeypointDataset(ann_path, folder, make_config(), train=False)
    assert len(ds) == 1 and ds.image_ids == [2]


def test_kept_images_without_people_train_as_background_with_a_finite_loss(tmp_path: Path) -> None:
    ann_path, folder = write_dataset(tmp_path, [np.zeros((S, S, 3), np.uint8)] * 2, [[], []])
    ds = KeypointDataset(ann_path, folder, make_config(), train=False, bg_weight=0.1, keep_empty=True)
    assert len(ds) == 2 and ds.image_ids == [1, 2]
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    assert not batch["heatmaps"].any() and not batch["offset_weight"].any()
    assert torch.allclose(batch["heatmap_weight"], torch.full((2, 1, R, R), 0.1))
    loss = PoseLoss()
    heatmaps, offsets = torch.full((2, 18, R, R), 0.5), torch.ones(2, 34, R, R)
    total, heat, off = loss(
        heatmaps, offsets, batch["heatmaps"], batch["heatmap_weight"], batch["offsets"], batch["offset_weight"]
    )
    assert off.item() == 0.0  # no person, no offset supervision (and no division by zero)
    assert heat.item() == pytest.approx(0.1 * 0.25) and total.item() == pytest.approx(heat.item())


def test_missing_image_error_names_the_file(tmp_path: Path) -> None:
    ann_path, folder = write_dataset(tmp_path, [noise_image(S, S)], [[scaled_person_a(1)]])
    (folder / "000000000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="000000000001.png"):
        KeypointDataset(ann_path, folder, make_config(), train=False)[0]
    (folder / "000000000001.png").write_bytes(b"not an image")
    with pytest.raises(FileNotFoundError, match="unreadable"):
        KeypointDataset(ann_path, folder, make_config(), train=False)[0]


def test_real_coco_sample_masks_keypointless_people(data_dir: Path) -> None:
    root = data_dir / "coco_sample" / "mmpose"
    ann_path = root / "test_coco.json"
    if not ann_path.is_file():
        pytest.skip(f"{ann_path} not found")
    anns = json.loads(ann_path.read_text())["annotations"]
    keypointless = {a["image_id"] for a in anns if a["num_keypoints"] == 0}
    ds = KeypointDataset(ann_path, root, make_config(), train=True, seed=0)
    assert len(ds) == 4
    for i, image_id in enumerate(ds.image_ids):
        raw = ds.load(i)
        assert (raw.mask.min() == 0) == (image_id in keypointless)
        sample = ds[i]
        assert sample["image"].shape == (3, S, S) and sample["heatmaps"].shape == (18, R, R)
        assert all(torch.isfinite(v).all() for v in sample.values())


def test_higher_hrnet_samples_carry_2x_targets_on_the_same_warp(tmp_path: Path) -> None:
    cfg = make_config()
    cfg = cfg.model_copy(
        update={"architecture": cfg.architecture.model_copy(update={"type": "higher_hrnet", "deconv_channels": 8})}
    )
    ann_path, folder = write_dataset(tmp_path, [noise_image(S, S)], [[person(17, A_JOINTS, A_BBOX)]])
    ds = KeypointDataset(ann_path, folder, cfg, train=False)
    sample = ds[0]
    assert sample["heatmaps_2x"].shape == (17, 2 * R, 2 * R) and sample["heatmap_weight_2x"].shape == (1, 2 * R, 2 * R)
    # nose at image (40, 48): (10, 12) on the 32 grid, (20, 24) on the 64 grid
    assert sample["heatmaps"][0, 12, 10] == 1.0 and sample["heatmaps_2x"][0, 24, 20] == 1.0
    assert sample["heatmap_weight_2x"].min() == pytest.approx(0.025) and sample["heatmap_weight"].min() == 0.1
    flipped = ds.get(0, AffineParams((64.0, 64.0), 128 / 200, 0.0, True))
    assert flipped["heatmaps_2x"][0, 24, 2 * R - 20 - 1] == 1.0  # x -> 63 - x on the 2x grid
    assert "heatmaps_2x" not in KeypointDataset(ann_path, folder, make_config(), train=False)[0]
