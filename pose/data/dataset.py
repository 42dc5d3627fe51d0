"""COCO- and CrowdPose-format keypoint datasets with the authors' training targets (SPEC §5.1-5.2).

A sample is: the image warped by a random similarity map (or the centred one in evaluation), the loss
mask and joints warped by the same map at the output resolution, an optional flip, then the heatmap and
offset targets of :mod:`pose.targets`. Augmentation draws come from a generator seeded by
``(seed, epoch, index)``, so DataLoader workers and DDP ranks reproduce a sample wherever it is loaded.

Letters: N people, K keypoints (K + 1 with the center), H/W image size, S input size, R output size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from faster_coco_eval.core import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset

from pose.config import ModelConfig
from pose.data.transforms import (
    AffineParams,
    AugmentRanges,
    augment,
    eval_params,
    sample_params,
    warp_labels,
    with_center,
)
from pose.preprocess import image_to_tensor
from pose.targets import heatmap_targets, offset_targets

__all__ = ["KeypointDataset", "RawSample", "keep_person", "loss_mask", "person_joints"]

SMALL_PERSON_AREA = 32.0**2  # authors' COCO rule: people with a smaller segmentation area get no center
MIN_AREA = 1.0  # input px^2; a degenerate (zero-area) bbox would otherwise give an infinite offset weight


@dataclass
class RawSample:
    """One image and its annotations before augmentation, in image pixels."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) float32, 1 = supervised, 0 = crowd / keypoint-less person
    joints: np.ndarray  # (N, K + 1, 3) float64 (x, y, v), the center last
    areas: np.ndarray  # (N,) float64 bbox w * h, image px^2


def keep_person(ann: dict[str, Any]) -> bool:
    """The authors' object filter: everyone who is not a crowd, and crowds that carry keypoints."""
    return ann.get("iscrowd", 0) == 0 or _num_keypoints(ann) > 0


def _num_keypoints(ann: dict[str, Any]) -> int:
    if "num_keypoints" in ann:
        return int(ann["num_keypoints"])
    return int((np.asarray(ann.get("keypoints", []), dtype=np.float64)[2::3] > 0).sum())


def _segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) count of segmentation pieces covering each pixel: polygons, RLE or compressed RLE."""
    if isinstance(segmentation, dict):
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE of size {segmentation['size']} on an image of size {[height, width]} (h, w)")
        counts = segmentation["counts"]
        rle = segmentation if isinstance(counts, str | bytes) else mask_utils.frPyObjects(segmentation, height, width)
        return np.asarray(mask_utils.decode(rle), dtype=np.float64).reshape(height, width)
    polygons = [p for p in segmentation or [] if len(p) >= 6]  # 4 numbers would be read as a bbox
    if not polygons:
        return np.zeros((height, width), np.float64)
    decoded = mask_utils.decode(mask_utils.frPyObjects(polygons, height, width))  # (H, W, P)
    return np.asarray(decoded, dtype=np.float64).reshape(height, width, -1).sum(axis=2)


def loss_mask(anns: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """COCO loss mask from *all* annotations of an image: 0 under crowds and keypoint-less people.

    Returns:
        (H, W) float32, 1 where the union of those regions is < 0.5.
    """
    covered = np.zeros((height, width), np.float64)
    for ann in anns:
        if ann.get("iscrowd", 0) or _num_keypoints(ann) == 0:
            if ann.get("segmentation"):
                covered += _segmentation_mask(ann["segmentation"], height, width)
    return (covered < 0.5).astype(np.float32)


def person_joints(
    anns: list[dict[str, Any]], num_keypoints: int, min_center_area: float
) -> tuple[np.ndarray, np.ndarray]:
    """Joints with the center appended, and bbox areas, for the kept people.

    The center is ``sum of all K stored (x, y) / number of labeled joints (v > 0)``: unlabeled joints
    enter the sum with their stored coordinates (zeros in COCO and CrowdPose), exactly as the authors'
    ``np.sum(joints[i, :-1, :2], axis=0) / num_vis_joints``. With no labeled joint it is the bbox
    center. Its visibility is 1, or 0 for people whose segmentation ``area`` (image px^2) is below
    ``min_center_area``: the authors use 32^2 for COCO, whose tiny people are unreliably labelled, and
    skip the test (0) for CrowdPose.

    Returns:
        joints (N, K + 1, 3) float64 and areas (N,) float64 = bbox w * h in image px^2.
    """
    joints = np.zeros((len(anns), num_keypoints + 1, 3), np.float64)
    areas = np.zeros(len(anns), np.float64)
    for i, ann in enumerate(anns):
        kpts = np.asarray(ann.get("keypoints", []), dtype=np.float64)
        if kpts.size != 3 * num_keypoints:
            raise ValueError(
                f"annotation {ann.get('id')} has {kpts.size // 3} keypoints, the config expects {num_keypoints}"
            )
        joints[i, :num_keypoints] = kpts.reshape(num_keypoints, 3)
        x, y, w, h = (float(v) for v in ann["bbox"])
        areas[i] = w * h
        if ann.get("area", w * h) < min_center_area:
            continue  # center stays (0, 0, 0)
        labeled = int((joints[i, :num_keypoints, 2] > 0).sum())
        if labeled > 0:
            joints[i, -1, :2] = joints[i, :num_keypoints, :2].sum(axis=0) / labeled
        else:
            joints[i, -1, :2] = (x + w / 2, y + h / 2)
        joints[i, -1, 2] = 1
    return joints, areas


class KeypointDataset(Dataset[dict[str, Tensor]]):
    """Keypoint JSON (COCO or CrowdPose layout) plus an image folder, yielding network inputs and targets.

    Images with at least one annotation are used, in the JSON's order (the authors' rule); with
    ``keep_empty`` images without annotations too. The dataset flavour (loss masking, small-person
    center rule) follows ``config.keypoints.dataset``.

    Args:
        annotations: the keypoint JSON (``images``, ``annotations``).
        images: folder holding each image's ``file_name``.
        config: the model's config; input size S, stride, keypoints and flip order come from it.
        train: random affine + flip; False: the centred scale-1 warp, no flip.
        seed: augmentation seed; samples are then a function of (seed, epoch, index). None: fresh entropy.
        sigma, center_sigma, bg_weight, radius: target settings (SPEC §5.2).
        ranges: augmentation ranges, the authors' by default.
        min_center_area: people with a smaller segmentation area (image px^2) get no center; None: the
            authors' rule for the flavour (32^2 for COCO, none for CrowdPose). Exactly labelled data with
            small people (synthetic scenes) should use 0, or its small people are never detected.
        bg_weight_2x: background weight of the HigherHRNet 2x head's target (authors: 0.025).
        keep_empty: also train on images nobody is annotated in (negatives): their heatmap targets are
            zero everywhere at the background weight and they supervise no offsets, which teaches a
            model that plain, dark or cluttered images hold no one.

    Each item is a dict of tensors:
        ``image`` Tensor[3, S, S] float32, RGB normalized with the config's mean/std;
        ``heatmaps`` Tensor[K + 1, R, R] float32, the center last;
        ``heatmap_weight`` Tensor[1, R, R] float32, shared by every channel (window/background weight
        times the loss mask);
        ``offsets`` Tensor[2K, R, R] float32, pixel - joint in output px, (x, y) per joint;
        ``offset_weight`` Tensor[2K, R, R] float32, 1/sqrt(area in input px^2) where supervised;
        ``image_id`` Tensor[] int64;
        HigherHRNet models also ``heatmaps_2x`` Tensor[K, 2R, 2R] and ``heatmap_weight_2x`` Tensor[1, 2R, 2R].

    Examples::

        >>> ds = KeypointDataset(ann_json, image_dir, load_model_config("model_repo/hrnet_w32_coco_512"))
        >>> ds[0]["heatmaps"].shape
        torch.Size([18, 128, 128])
    """

    def __init__(
        self,
        annotations: Path | str,
        images: Path | str,
        config: ModelConfig,
        train: bool = True,
        seed: int | None = None,
        *,
        sigma: float = 2.0,
        center_sigma: float = 4.0,
        bg_weight: float = 0.1,
        radius: int = 4,
        ranges: AugmentRanges | None = None,
        min_center_area: float | None = None,
        bg_weight_2x: float = 0.025,
        keep_empty: bool = False,
    ) -> None:
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if config.input.size % config.input.stride:
            raise ValueError(f"input size {config.input.size} is not a multiple of stride {config.input.stride}")
        self.annotations = Path(annotations)
        self.images = Path(images)
        self.config = config
        self.train = train
        self.seed = seed
        self.sigma, self.center_sigma, self.bg_weight, self.radius = sigma, center_sigma, bg_weight, radius
        self.bg_weight_2x = bg_weight_2x
        self.has_2x_head = config.architecture.type == "higher_hrnet"
        self.ranges = ranges or AugmentRanges()
        self.num_keypoints = config.keypoints.num_keypoints
        self.input_size = config.input.size
        self.output_size = config.input.size // config.input.stride
        self.is_coco = config.keypoints.dataset == "coco"
        default_area = SMALL_PERSON_AREA if self.is_coco else 0.0
        self.min_center_area = default_area if min_center_area is None else min_center_area
        self.flip_index = with_center(config.keypoints.flip_index)
        # Shared memory, so set_epoch reaches persistent DataLoader workers too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

        data = json.loads(self.annotations.read_text())
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data.get("annotations", []):
            by_image.setdefault(ann["image_id"], []).append(ann)
        self._infos = [info for info in data.get("images", []) if keep_empty or by_image.get(info["id"])]
        self._anns = [by_image.get(info["id"], []) for info in self._infos]
        self.image_ids: list[int] = [int(info["id"]) for info in self._infos]

    def __len__(self) -> int:
        return len(self._infos)

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return (
            f"{type(self).__name__}({self.annotations.name!r}, {len(self)} images, {mode}, "
            f"dataset={self.config.keypoints.dataset!r}, input={self.input_size}, output={self.output_size})"
        )

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation draws (call before iterating, like ``DistributedSampler``)."""
        self._epoch.fill_(epoch)

    def rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.epoch, index])

    def image_path(self, index: int) -> Path:
        return self.images / self._infos[index]["file_name"]

    def load(self, index: int) -> RawSample:
        """Decode the image and build the mask, joints and areas in image pixels (no augmentation)."""
        info, anns = self._infos[index], self._anns[index]
        path = self.image_path(index)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            reason = "missing" if not path.is_file() else "unreadable"
            raise FileNotFoundError(f"image {path} ({reason}) of image id {info['id']} in {self.annotations}")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        json_h, json_w = int(info.get("height", h)), int(info.get("width", w))
        if (h, w) != (json_h, json_w):
            raise ValueError(f"image {path} is {w}x{h} but {self.annotations} says {json_w}x{json_h}")
        mask = loss_mask(anns, h, w) if self.is_coco else np.ones((h, w), np.float32)
        people = [ann for ann in anns if keep_person(ann)]
        joints, areas = person_joints(people, self.num_keypoints, self.min_center_area)
        return RawSample(image, mask, joints, areas)

    def params(self, index: int, width: int, height: int) -> AffineParams:
        """This sample's augmentation: random in training (seeded), the centred warp in evaluation."""
        if not self.train:
            return eval_params(width, height)
        return sample_params(width, height, self.rng(index), self.ranges)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.get(index)

    def get(self, index: int, params: AffineParams | None = None) -> dict[str, Tensor]:
        """Item ``index``; ``params`` overrides the augmentation draw (tests, visualisation)."""
        raw = self.load(index)
        if params is None:
            params = self.params(index, raw.image.shape[1], raw.image.shape[0])
        r = self.output_size
        image, mask, joints, areas = augment(
            raw.image, raw.mask, raw.joints, raw.areas, params, self.input_size, r, self.flip_index
        )
        heatmaps, window_weight = heatmap_targets(joints, r, self.sigma, self.center_sigma, self.bg_weight)
        offsets, offset_weight = offset_targets(joints, np.maximum(areas, MIN_AREA), r, self.radius)
        item = {
            "image": image_to_tensor(image, self.config.input)[0],  # (3, S, S)
            "heatmaps": torch.from_numpy(heatmaps),  # (K + 1, R, R)
            "heatmap_weight": torch.from_numpy(window_weight * mask)[None],  # (1, R, R)
            "offsets": torch.from_numpy(offsets),  # (2K, R, R)
            "offset_weight": torch.from_numpy(offset_weight),  # (2K, R, R)
            "image_id": torch.tensor(self.image_ids[index], dtype=torch.int64),
        }
        if self.has_2x_head:
            # The same generator on the 2x grid (the center drawn too, so its window is in the mask); the
            # 2x head predicts the K keypoint channels.
            mask_2x, joints_2x = warp_labels(raw.mask, raw.joints, params, 2 * r, self.flip_index)
            heat_2x, weight_2x = heatmap_targets(joints_2x, 2 * r, self.sigma, self.center_sigma, self.bg_weight_2x)
            item["heatmaps_2x"] = torch.from_numpy(heat_2x[: self.num_keypoints])  # (K, 2R, 2R)
            item["heatmap_weight_2x"] = torch.from_numpy(weight_2x * mask_2x)[None]  # (1, 2R, 2R)
        return item
