"""Synthetic multi-person COCO keypoint scenes: drawn articulated figures with exact, consistent labels.

A small pose network can be trained and evaluated end to end on CPU with these instead of COCO. Each
person is a kinematic skeleton (torso, head, two-segment arms and legs, hands, feet) with random joint
angles and proportions, drawn facing the camera with cv2. Facing the camera means the person's left
joints lie on the image right of the body in its upright frame: left and right differ only by geometry,
never by colour, so horizontal-flip augmentation that swaps the labels stays consistent.

Visibility follows COCO and is exact: every drawn shape writes its own id into a stamp map, so a keypoint
whose pixel finally shows one of its own body parts (the wrist on the forearm or the hand) is visible
(v=2); one covered by a later person, an occluder or another part of the same body (an arm behind the
torso) is labeled but occluded (v=1); one outside the image is (0, 0, 0).

People with fewer than ``min_keypoints`` labeled keypoints, a visible area under ``min_area`` pixels or
less than ``min_visible_fraction`` of their in-image silhouette left uncovered show too little to be
labeled fairly. They are kept as ``iscrowd=1`` regions with zero keypoints, COCO's ignore convention:
OKS evaluation counts a detection of them neither as a false positive nor as a miss, and a COCO-style
loader masks them out of the loss instead of teaching that a half-hidden figure is background. People
who end up entirely hidden are dropped.

Negatives (:func:`render_empty`) are images with nobody in them: uniform colours from pure black to pure
white, gradients, noise, clutter-only backgrounds and images of a few pixels. A model trained on scenes
alone has never seen a large dark or featureless region and may draw figures into it; negatives teach
that such an image holds no one. They are COCO ``images`` entries without annotations.

Letters: K keypoints (17), N people, H/W image size.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pose.preprocess import plan_transform, resize_image

try:
    from faster_coco_eval.core import mask as mask_utils
except ImportError:  # pragma: no cover - either library has the same RLE codec
    from pycocotools import mask as mask_utils

__all__ = [
    "KEYPOINT_NAMES",
    "PERSON_CATEGORY",
    "SKELETON",
    "SceneConfig",
    "render_empty",
    "render_scene",
    "write_dataset",
]

KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
# 1-based, exactly as in COCO's person_keypoints_*.json
SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
PERSON_CATEGORY = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(KEYPOINT_NAMES),
    "skeleton": [list(edge) for edge in SKELETON],
}

# Body parts on which each keypoint counts as visible: a joint shows on either limb it connects.
_OWNERS = (
    ("head",), ("head",), ("head",), ("head",), ("head",),
    ("torso", "uarm_l"), ("torso", "uarm_r"), ("uarm_l", "farm_l"), ("uarm_r", "farm_r"),
    ("farm_l", "hand_l"), ("farm_r", "hand_r"), ("torso", "thigh_l"), ("torso", "thigh_r"),
    ("thigh_l", "shin_l"), ("thigh_r", "shin_r"), ("shin_l", "foot_l"), ("shin_r", "foot_r"),
)  # fmt: skip
# (side name, body-frame x sign, shoulder, elbow, wrist, hip, knee, ankle); +x is the person's left
_SIDES = (("l", 1.0, 5, 7, 9, 11, 13, 15), ("r", -1.0, 6, 8, 10, 12, 14, 16))
_SKIN_RGB = (
    (255, 224, 189), (241, 194, 125), (234, 192, 134), (224, 172, 105),
    (198, 134, 66), (160, 105, 60), (141, 85, 36), (92, 51, 23),
)  # fmt: skip

Color = tuple[float, float, float]
Part = tuple[str, np.ndarray, Color, Color | None]  # body part, (M, 2) polygon, fill, outline


@dataclass(frozen=True)
class SceneConfig:
    """What a scene may contain; the defaults suit 256x256 training images."""

    size: tuple[int, int] = (256, 256)  # (H, W)
    people: tuple[int, int] = (1, 6)  # inclusive range per image
    height: tuple[float, float] = (0.25, 0.9)  # standing height / image height, sampled log-uniformly
    rotation: float = 30.0  # degrees: most people lean by at most this...
    wide_rotation: float = 60.0  # ...and a few by up to this
    wide_rotation_prob: float = 0.1
    outside_prob: float = 0.2  # chance that a person is placed partly outside the image
    max_overlap: float = 0.5  # box IoU a new person tries to stay under (exceeded when no place is found)
    occluder_prob: float = 0.35  # chance of 1..max_occluders shapes drawn over the people
    max_occluders: int = 3
    clutter: tuple[int, int] = (0, 14)  # background shapes, so a person is not just "whatever is not plain"
    noise_prob: float = 0.3  # sensor noise and blur after drawing
    min_keypoints: int = 3  # fewer labeled keypoints: an ignore (iscrowd) region
    min_area: float = 64.0  # fewer visible pixels: an ignore region
    min_visible_fraction: float = 0.2  # less of the in-image silhouette uncovered: an ignore region

    def __post_init__(self) -> None:
        if min(self.size) < 32:
            raise ValueError(f"image size must be at least 32x32, got {self.size}")
        if not 1 <= self.people[0] <= self.people[1]:
            raise ValueError(f"people range must satisfy 1 <= min <= max, got {self.people}")
        if not 0 < self.height[0] <= self.height[1]:
            raise ValueError(f"height range must satisfy 0 < min <= max, got {self.height}")
        if not 0 <= self.clutter[0] <= self.clutter[1]:
            raise ValueError(f"clutter range must satisfy 0 <= min <= max, got {self.clutter}")
        if self.rotation < 0 or self.wide_rotation < 0 or self.max_occluders < 0:
            raise ValueError("rotation, wide_rotation and max_occluders must not be negative")


def _rot(degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s], [s, c]])


def _dir(side: float, degrees: float) -> np.ndarray:
    """Unit vector ``degrees`` away from straight down, towards the ``side`` (+1 the person's left)."""
    t = math.radians(degrees)
    return np.array([side * math.sin(t), math.cos(t)])


def _capsule(p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, n: int = 7) -> np.ndarray:
    """Tapered limb: half discs of radius r0 at p0 and r1 at p1 joined by straight sides."""
    d = p1 - p0
    a = math.atan2(d[1], d[0])
    t0 = a + np.linspace(0.5 * math.pi, 1.5 * math.pi, n)
    t1 = a + np.linspace(-0.5 * math.pi, 0.5 * math.pi, n)
    return np.concatenate(
        [p0 + r0 * np.stack([np.cos(t0), np.sin(t0)], 1), p1 + r1 * np.stack([np.cos(t1), np.sin(t1)], 1)]
    )


def _ellipse(
    center: np.ndarray, ax: float, ay: float, rot: np.ndarray, start: float = 0.0, stop: float = 2 * math.pi
) -> np.ndarray:
    t = np.linspace(start, stop, 16, endpoint=stop - start < 2 * math.pi)
    return center + np.stack([ax * np.cos(t), ay * np.sin(t)], 1) @ rot.T


def _color(rng: np.random.Generator, sat: tuple[float, float] = (0, 1), val: tuple[float, float] = (0.1, 1)) -> Color:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return (255 * b, 255 * g, 255 * r)


def _skin(rng: np.random.Generator) -> Color:
    """Mostly human skin tones, sometimes any colour (so skin colour alone never finds a person)."""
    if rng.random() < 0.2:
        return _color(rng, (0.2, 0.7), (0.3, 1.0))
    r, g, b = np.clip(np.array(_SKIN_RGB[rng.integers(len(_SKIN_RGB))]) + rng.normal(0, 12, 3), 0, 255)
    return (float(b), float(g), float(r))


def _shade(color: Color, factor: float) -> Color:
    return (min(color[0] * factor, 255.0), min(color[1] * factor, 255.0), min(color[2] * factor, 255.0))


def _arm_angles(rng: np.random.Generator) -> tuple[float, float]:
    """Upper arm angle from hanging (positive = raised outwards) and the elbow's extra turn, in degrees."""
    lo, hi = ((5, 35), (35, 110), (110, 170), (-35, 5))[rng.choice(4, p=[0.45, 0.25, 0.15, 0.15])]
    bend = rng.uniform(-60, 60) if rng.random() < 0.7 else rng.uniform(-150, 150)
    return rng.uniform(lo, hi), bend


def _leg_angles(rng: np.random.Generator, mode: int) -> tuple[float, float, float]:
    """Thigh angle from vertical (positive = outwards), knee turn, thigh foreshortening, for a leg mode."""
    if mode == 0:  # standing
        return rng.uniform(-6, 14), rng.uniform(-12, 12), 1.0
    if mode == 1:  # wide stance, shins back towards vertical
        t = rng.uniform(14, 38)
        return t, -t * rng.uniform(0.2, 1.1), 1.0
    if mode == 2:  # raised leg (kick, step up)
        return rng.uniform(40, 95), rng.uniform(-110, -30), rng.uniform(0.7, 1.0)
    return rng.uniform(15, 50), rng.uniform(-60, -15), rng.uniform(0.35, 0.7)  # crouch: thighs towards camera


def _figure(rng: np.random.Generator) -> tuple[np.ndarray, list[Part]]:
    """One person in its upright body frame: unit standing height, pelvis at the origin, y down, +x its left.

    Returns the (K, 2) keypoints and the shapes in drawing order (back to front).
    """
    build = rng.uniform(0.8, 1.3)
    sh, hp, tl = rng.uniform(0.095, 0.13), rng.uniform(0.06, 0.09), rng.uniform(0.26, 0.32)
    upper_arm, forearm = rng.uniform(0.15, 0.19), rng.uniform(0.13, 0.16)
    thigh, shin = rng.uniform(0.22, 0.26), rng.uniform(0.21, 0.25)
    neck = rng.uniform(0.025, 0.05)
    hw = rng.uniform(0.045, 0.058)  # head half width
    hh = hw * rng.uniform(1.15, 1.4)  # head half height
    ru, rf, rt, rs = 0.033 * build, 0.026 * build, 0.05 * build, 0.037 * build
    lean = float(np.clip(rng.normal(0, 5), -12, 12))  # upper body about the pelvis
    upper = _rot(lean)

    skin = _skin(rng)
    shirt, pants, shoes = _color(rng), _color(rng), _color(rng, val=(0.05, 0.7))
    hair = _color(rng, (0.2, 0.9), (0.03, 0.5)) if rng.random() < 0.8 else _color(rng)
    sleeve = shirt if rng.random() < 0.5 else skin
    shin_color = pants if rng.random() < 0.7 else skin
    outline_factor = 0.5 if rng.random() < 0.3 else None

    def part(name: str, poly: np.ndarray, color: Color) -> Part:
        jitter = _shade(color, rng.uniform(0.9, 1.1))
        return name, poly, jitter, None if outline_factor is None else _shade(jitter, outline_factor)

    kp = np.zeros((17, 2))
    arms: dict[str, list[Part]] = {}
    legs: dict[str, list[Part]] = {}
    leg_mode = int(rng.choice(4, p=[0.55, 0.2, 0.1, 0.15]))
    raised = rng.integers(2) if leg_mode == 2 else -1
    for i, (name, s, i_sh, i_el, i_wr, i_hip, i_kn, i_an) in enumerate(_SIDES):
        a, bend = _arm_angles(rng)
        f1, f2 = (1.0, 1.0) if rng.random() < 0.75 else (rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
        kp[i_sh] = upper @ (s * sh, -tl)
        kp[i_el] = kp[i_sh] + upper_arm * f1 * (upper @ _dir(s, a))
        d2 = upper @ _dir(s, a + bend)
        kp[i_wr] = kp[i_el] + forearm * f2 * d2
        hand = kp[i_wr] + 0.045 * max(f2, 0.6) * d2
        arms[name] = [
            part(f"uarm_{name}", _capsule(kp[i_sh], kp[i_el], ru, 0.85 * ru), shirt),
            part(f"farm_{name}", _capsule(kp[i_el], kp[i_wr], rf, 0.8 * rf), sleeve),
            part(f"hand_{name}", _capsule(kp[i_wr], hand, 0.75 * rf, 0.9 * rf), skin),
        ]
        t, knee, ft = _leg_angles(rng, 0 if leg_mode == 2 and i != raised else leg_mode)
        kp[i_hip] = (s * hp, 0.0)
        kp[i_kn] = kp[i_hip] + thigh * ft * _dir(s, t)
        kp[i_an] = kp[i_kn] + shin * _dir(s, t + knee)
        toe = kp[i_an] + 0.05 * _dir(s, t + knee + rng.uniform(40, 80))
        legs[name] = [
            part(f"thigh_{name}", _capsule(kp[i_hip], kp[i_kn], rt, 0.8 * rt), pants),
            part(f"shin_{name}", _capsule(kp[i_kn], kp[i_an], rs, 0.75 * rs), shin_color),
            part(f"foot_{name}", _capsule(kp[i_an], toe, 0.6 * rs, 0.7 * rs), shoes),
        ]

    # Torso: pelvis (pants) under a shirt whose hem height varies; both halves mirror each other.
    waist = max(hp + 0.4 * rt, 0.8 * sh) * rng.uniform(0.85, 1.0)
    hem = -tl * rng.uniform(0.02, 0.3)
    pelvis_half = [(waist, hem - 0.03), (hp + 0.7 * rt, -0.01), (hp + 0.3 * rt, 0.05), (0.0, 0.06)]
    shirt_half = [(0.35 * sh, -tl - 0.02), (sh, -tl - 0.012), (sh + 0.5 * ru, -tl + 0.03), (0.95 * sh, -tl + 0.1)]
    shirt_half += [(waist * 1.04, hem)]
    mirror = np.array([-1.0, 1.0])
    pelvis = np.array(pelvis_half + [tuple(p) for p in (np.array(pelvis_half[:-1]) * mirror)[::-1]])
    torso = np.array(shirt_half + [tuple(p) for p in (np.array(shirt_half) * mirror)[::-1]]) @ upper.T
    torso_parts = [
        part("torso", pelvis, pants),
        part("torso", torso, shirt),
        part("torso", _capsule(kp[6], kp[5], 1.05 * ru, 1.05 * ru), shirt),
    ]
    if rng.random() < 0.15:  # skirt or coat over the thighs
        length = thigh * rng.uniform(0.4, 0.9)
        flare = rng.uniform(1.1, 1.6)
        hem_x, bottom_x = waist, flare * (hp + rt)
        skirt = np.array([(hem_x, hem - 0.02), (bottom_x, length), (-bottom_x, length), (-hem_x, hem - 0.02)])
        torso_parts.append(part("torso", skirt, _color(rng)))

    # Head: tilted on the neck, turned a little (yaw shifts the face, never which side an ear is on).
    tilt = lean + float(np.clip(rng.normal(0, 8), -25, 25))
    head_rot = _rot(tilt)
    neck_base = upper @ (0.0, -tl)
    neck_top = neck_base + head_rot @ (0.0, -neck)
    center = neck_top + head_rot @ (0.0, -0.85 * hh)
    yaw = rng.uniform(-0.3, 0.3)
    face = np.array(
        [
            (0.55 * yaw * hw, 0.3 * hh),  # nose
            ((0.4 * yaw + 0.36) * hw, -0.02 * hh),  # left eye
            ((0.4 * yaw - 0.36) * hw, -0.02 * hh),  # right eye
            (0.93 * hw, 0.08 * hh),  # left ear
            (-0.93 * hw, 0.08 * hh),  # right ear
        ]
    )
    kp[:5] = center + face @ head_rot.T
    eye = _color(rng, val=(0.0, 0.25))
    head: list[Part] = []
    if rng.random() < 0.3:  # long hair behind the head
        head.append(part("head", _ellipse(center + head_rot @ (0.0, 0.25 * hh), 1.2 * hw, 1.25 * hh, head_rot), hair))
    head += [
        part("head", _ellipse(kp[3], 0.22 * hw, 0.3 * hh, head_rot), skin),
        part("head", _ellipse(kp[4], 0.22 * hw, 0.3 * hh, head_rot), skin),
        part("head", _ellipse(center, hw, hh, head_rot), skin),
    ]
    if rng.random() < 0.9:  # hair cap over the top of the head
        edge = math.asin(rng.uniform(0.25, 0.5))  # the cap ends this far above the head's middle
        cap = _ellipse(center, 1.06 * hw, 1.08 * hh, head_rot, math.pi + edge, 2 * math.pi - edge)
        head.append(part("head", cap, hair))
    feature = 0.12 * hw
    mouth = center + head_rot @ (0.5 * yaw * hw, 0.62 * hh)
    head += [
        part("head", _ellipse(kp[1], feature, 0.8 * feature, head_rot), eye),
        part("head", _ellipse(kp[2], feature, 0.8 * feature, head_rot), eye),
        part("head", _ellipse(kp[0], 0.8 * feature, feature, head_rot), _shade(skin, 0.7)),
        part("head", _ellipse(mouth, 0.3 * hw, 0.06 * hh, head_rot), _shade(skin, 0.55)),
    ]
    neck_part = part("neck", _capsule(neck_base, center, 0.45 * hw, 0.45 * hw), skin)

    # Back to front: arms behind the body, legs, neck, torso, head, arms in front.
    behind = [name for name in arms if rng.random() < 0.12]
    parts = [p for name in behind for p in arms[name]]
    for name in rng.permutation(["l", "r"]):
        parts += legs[str(name)]
    parts += [neck_part, *torso_parts, *head]
    for name in rng.permutation(["l", "r"]):
        if name not in behind:
            parts += arms[str(name)]
    return kp, parts


class _Canvas:
    """The image plus a stamp map recording which shape (numbered in drawing order) each pixel shows."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image  # (H, W, 3) uint8 BGR
        self.stamps = np.zeros(image.shape[:2], np.uint16)  # (H, W), 0 = background
        self.owners = [-2]  # stamp -> person index; -1 occluder, -2 background

    def fill(self, poly: np.ndarray, color: Color, owner: int, outline: Color | None = None) -> int:
        pts = np.round(poly * 16).astype(np.int32)  # 4 fractional bits: sub-pixel, anti-aliased edges
        stamp = len(self.owners)
        self.owners.append(owner)
        cv2.fillPoly(self.image, [pts], color, cv2.LINE_AA, 4)
        cv2.fillPoly(self.stamps, [pts], stamp, cv2.LINE_8, 4)
        if outline is not None:
            cv2.polylines(self.image, [pts], True, outline, 1, cv2.LINE_AA, 4)
        return stamp


def _background(rng: np.random.Generator, h: int, w: int, clutter: tuple[int, int]) -> np.ndarray:
    """Flat, gradient, blurred-noise or stripe backgrounds under random non-human clutter shapes."""
    kind = rng.integers(4)
    c0, c1 = np.array(_color(rng), np.float32), np.array(_color(rng), np.float32)
    if kind == 0:
        image: np.ndarray = np.full((h, w, 3), c0, np.float32)  # (H, W, 3)
    elif kind == 1 or kind == 3:
        t = math.radians(rng.uniform(0, 360))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (x * math.cos(t) + y * math.sin(t)) / max(h, w)
        if kind == 3:
            ramp = 0.5 + 0.5 * np.sin(ramp * rng.uniform(6, 60))
            if rng.random() < 0.5:
                ramp = (ramp > 0.5).astype(np.float32)
        else:
            ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min() + 1e-6)
        image = (c0 + ramp[..., None] * (c1 - c0)).astype(np.float32)
    else:
        cells = int(rng.integers(2, 24))
        coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        image = c0 + (image - 128) * rng.uniform(0.2, 1.0)
    if rng.random() < 0.4:
        image = image + rng.normal(0, rng.uniform(3, 20), (h, w, 1)).astype(np.float32)
    out = np.clip(image, 0, 255).astype(np.uint8)
    side = max(h, w)
    for _ in range(int(rng.integers(clutter[0], clutter[1] + 1))):
        color = _color(rng)
        shape = rng.integers(5)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = side * rng.uniform(0.02, 0.25)
        if shape == 0:
            t = rng.uniform(0, math.pi)
            p0 = (round(cx - r * math.cos(t)), round(cy - r * math.sin(t)))
            p1 = (round(cx + r * math.cos(t)), round(cy + r * math.sin(t)))
            cv2.line(out, p0, p1, color, int(rng.integers(1, 6)), cv2.LINE_AA)
        elif shape == 1:
            cv2.circle(out, (round(cx), round(cy)), round(r), color, -1 if rng.random() < 0.6 else 2, cv2.LINE_AA)
        elif shape == 2:
            size = (round(r), round(r * rng.uniform(0.3, 1.0)))
            cv2.ellipse(out, (round(cx), round(cy)), size, rng.uniform(0, 180), 0, 360, color, -1, cv2.LINE_AA)
        elif shape == 3:
            cv2.rectangle(out, (round(cx - r), round(cy - r / 2)), (round(cx + r), round(cy + r / 2)), color, -1)
        else:
            pts = np.array([cx, cy]) + rng.uniform(-r, r, (int(rng.integers(3, 7)), 2))
            cv2.fillPoly(out, [np.round(pts).astype(np.int32)], color, cv2.LINE_AA)
    return out


def _occluder(rng: np.random.Generator, center: np.ndarray, side: int) -> np.ndarray:
    """A non-human shape (box, disc, bar or blob) to hide part of a person."""
    r = side * rng.uniform(0.05, 0.2)
    shape = rng.integers(4)
    if shape == 0:
        ax, ay = r, r * rng.uniform(0.4, 1.0)
        box = np.array([(-ax, -ay), (ax, -ay), (ax, ay), (-ax, ay)])
        return center + box @ _rot(rng.uniform(0, 90)).T
    if shape == 1:
        return _ellipse(center, r, r * rng.uniform(0.5, 1.0), _rot(rng.uniform(0, 180)))
    if shape == 2:
        length, width = 2.5 * r, r * rng.uniform(0.15, 0.35)
        bar = np.array([(-length, -width), (length, -width), (length, width), (-length, width)])
        return center + bar @ _rot(rng.uniform(0, 180)).T
    blob = center + rng.uniform(-r, r, (8, 2))
    return cv2.convexHull(blob.astype(np.float32))[:, 0].astype(np.float64)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_scene(rng: np.random.Generator, config: SceneConfig) -> tuple[np.ndarray, list[dict]]:
    """Draw one scene; returns the (H, W, 3) BGR uint8 image and one dict per annotated person.

    Each dict holds ``keypoints`` (K, 3) float32 ``[x, y, v]`` in pixels (pixel centers at integers, as
    COCO), ``num_keypoints``, ``bbox`` ``[x, y, w, h]`` and ``area`` of the visible mask, ``rle`` (COCO
    compressed RLE of that mask, ``counts`` as str) and ``iscrowd`` (1 for ignore regions, see the module
    docstring). Later people are nearer and bigger on average and occlude earlier ones.
    """
    h, w = config.size
    canvas = _Canvas(_background(rng, h, w, config.clutter))
    n = int(rng.integers(config.people[0], config.people[1] + 1))
    lo, hi = math.log(config.height[0]), math.log(config.height[1])
    heights = np.sort(h * np.exp(rng.uniform(lo, hi, n)))  # far (small) people first
    boxes: list[np.ndarray] = []
    keypoints: list[np.ndarray] = []  # (K, 2) pixels per person
    owners: list[list[set[int]]] = []  # per person and keypoint: stamps of the parts it may show on
    full_area: list[int] = []
    for index, height in enumerate(heights):
        kp, parts = _figure(rng)
        if rng.random() < config.wide_rotation_prob:
            angle = rng.uniform(-config.wide_rotation, config.wide_rotation)
        else:
            angle = float(np.clip(rng.normal(0, config.rotation / 2), -config.rotation, config.rotation))
        m = _rot(angle).T * height  # row vectors: p @ m rotates and scales
        polys = [poly @ m for _, poly, _, _ in parts]
        points = np.concatenate(polys)
        low, high = points.min(0), points.max(0)
        extent = high - low
        for _ in range(10):
            if rng.random() < config.outside_prob:
                center = rng.uniform((0, 0), (w, h))
            else:
                a, b = extent / 2, (w, h) - extent / 2  # box inside the image, or covering it when larger
                center = rng.uniform(np.minimum(a, b), np.maximum(a, b))
            shift = center - 0.5 - (low + high) / 2
            box = np.concatenate([low + shift, high + shift])
            if all(_box_iou(box, other) < config.max_overlap for other in boxes):
                break
        boxes.append(box)
        first = len(canvas.owners)
        stamps: dict[str, set[int]] = defaultdict(set)
        for (name, _, color, outline), poly in zip(parts, polys, strict=True):
            stamps[name].add(canvas.fill(poly + shift, color, index, outline))
        full_area.append(int(np.count_nonzero(canvas.stamps >= first)))  # everything drawn so far is its own
        keypoints.append(np.round(kp @ m + shift, 2))
        owners.append([set().union(*(stamps[name] for name in names)) for names in _OWNERS])

    if n and rng.random() < config.occluder_prob:
        for _ in range(int(rng.integers(1, config.max_occluders + 1))):
            target = keypoints[rng.integers(n)][rng.integers(17)] if rng.random() < 0.8 else rng.uniform((0, 0), (w, h))
            canvas.fill(_occluder(rng, target, max(h, w)), _color(rng), -1)

    image = canvas.image
    if rng.random() < config.noise_prob:
        if rng.random() < 0.5:
            image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.4, 1.0))
        noise = rng.normal(0, rng.uniform(2, 8), image.shape).astype(np.float32)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    person_map = np.asarray(canvas.owners, np.int16)[canvas.stamps]  # (H, W) person index, <0 none
    people: list[dict] = []
    for index in range(n):
        mask = person_map == index
        area = int(np.count_nonzero(mask))
        if area == 0:
            continue
        kp = np.zeros((17, 3), np.float32)
        for j, (x, y) in enumerate(keypoints[index]):
            if 0 <= x <= w - 1 and 0 <= y <= h - 1:
                stamp = int(canvas.stamps[math.floor(y + 0.5), math.floor(x + 0.5)])
                kp[j] = (x, y, 2 if stamp == 0 or stamp in owners[index][j] else 1)
        num = int(np.count_nonzero(kp[:, 2]))
        crowd = num < config.min_keypoints or area < config.min_area
        crowd = crowd or area < config.min_visible_fraction * full_area[index]
        if crowd:
            kp[:] = 0
            num = 0
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x0, y0, bw, bh = cv2.boundingRect(mask.astype(np.uint8))
        people.append(
            {
                "keypoints": kp,
                "num_keypoints": num,
                "bbox": [float(x0), float(y0), float(bw), float(bh)],
                "area": float(area),
                "rle": rle,
                "iscrowd": int(crowd),
            }
        )
    return image, people


def _uniform_color(rng: np.random.Generator) -> np.ndarray:
    """A flat colour over the full range: pure black or white, a grey level, or any colour; dark ones often."""
    kind = rng.choice(4, p=[0.3, 0.2, 0.2, 0.3])
    if kind == 0:
        return np.full(3, 255.0 * rng.integers(2))  # pure black or white
    if kind == 1:
        return np.full(3, rng.uniform(0, 32))  # near black, where a scene-only model sees figures
    if kind == 2:
        return np.full(3, rng.uniform(0, 255))
    return rng.uniform(0, 255, 3)


def render_empty(rng: np.random.Generator, config: SceneConfig) -> np.ndarray:
    """An (H, W, 3) BGR uint8 image with nobody in it (a negative).

    A tiny image (1-4 px a side) comes already warped onto the network input as inference warps it
    (:func:`pose.preprocess.resize_image`): a few blocks of colour on the canvas's black border. Stored
    tiny, training's own warp would leave that border outside the loss mask, unsupervised.
    """
    h, w = config.size
    kind = rng.choice(5, p=[0.35, 0.15, 0.15, 0.2, 0.15])
    if kind == 0:  # uniform
        image = np.broadcast_to(_uniform_color(rng), (h, w, 3)).astype(np.float32)
    elif kind == 1:  # gradient between two colours, either may be black or white
        t = math.radians(rng.uniform(0, 360))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = x * math.cos(t) + y * math.sin(t)
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min() + 1e-6)
        c0, c1 = _uniform_color(rng), _uniform_color(rng)
        image = (c0 + ramp[..., None] * (c1 - c0)).astype(np.float32)
    elif kind == 2:  # noise: per pixel, around a colour or over the whole range
        if rng.random() < 0.5:
            image = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        else:
            image = _uniform_color(rng) + rng.normal(0, rng.uniform(5, 60), (h, w, 3)).astype(np.float32)
    elif kind == 3:  # the scenes' backgrounds and clutter, without the people
        return _background(rng, h, w, (max(config.clutter[0], 1), config.clutter[1]))
    else:  # tiny: uniform or random pixels
        th, tw = (int(v) for v in rng.integers(1, 5, 2))
        if rng.random() < 0.6:
            tiny = np.broadcast_to(_uniform_color(rng), (th, tw, 3))
        else:
            tiny = rng.uniform(0, 255, (th, tw, 3))
        tiny = np.round(tiny).astype(np.uint8)
        return resize_image(tiny, plan_transform(tw, th, min(h, w)))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(
    out_dir: Path,
    num_images: int,
    seed: int,
    config: SceneConfig | None = None,
    progress: bool = False,
    negatives: int = 0,
) -> Path:
    """Render ``out_dir/images/000000.jpg``... and ``out_dir/annotations.json`` (COCO keypoints); returns the latter.

    Image ``i`` is drawn from its own generator seeded with ``(seed, i)``, so the same seed gives the same
    bytes and a longer run extends a shorter one. Image ids are the file numbers, as ``pose predict`` reads them.
    ``negatives`` images with nobody in them (:func:`render_empty`) follow the ``num_images`` scenes, each
    seeded with ``(seed, i, 1)``: adding them leaves the scenes as they were. They are written as PNG, so
    a flat colour stays flat.
    """
    if num_images < 0 or negatives < 0:
        raise ValueError(f"image counts must not be negative, got {num_images} scenes and {negatives} negatives")
    config = config or SceneConfig()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    total = num_images + negatives
    for index in tqdm(range(total), desc="synth", unit="img", disable=not progress):
        people: list[dict] = []
        if index < num_images:
            image, people = render_scene(np.random.default_rng([seed, index]), config)
            name = f"{index:06d}.jpg"
            params = [cv2.IMWRITE_JPEG_QUALITY, 95]
        else:
            image = render_empty(np.random.default_rng([seed, index, 1]), config)
            name, params = f"{index:06d}.png", []
        if not cv2.imwrite(str(out_dir / "images" / name), image, params):
            raise OSError(f"cannot write {out_dir / 'images' / name}")
        images.append({"id": index, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for person in people:
            flat = [round(float(v), 2) if i % 3 < 2 else int(v) for i, v in enumerate(person["keypoints"].ravel())]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": 1,
                    "iscrowd": person["iscrowd"],
                    "keypoints": flat,
                    "num_keypoints": person["num_keypoints"],
                    "bbox": person["bbox"],
                    "area": person["area"],
                    "segmentation": person["rle"],
                }
            )
    data = {
        "info": {"description": "pose.data.synthetic", "seed": seed, "negatives": negatives, "config": asdict(config)},
        "images": images,
        "annotations": annotations,
        "categories": [PERSON_CATEGORY],
    }
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(data))
    return path
