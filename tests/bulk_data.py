"""A small bulk job's inputs, shared by the local and Ray bulk tests: drawn scenes, a broken file, a clip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pose.data.synthetic import SceneConfig, render_scene

SCENE = SceneConfig(size=(160, 160), people=(1, 4))
IMAGES = 8
CLIP_FRAMES = 6  # read at stride 2: frames 0, 2, 4
STRIDE = 2
ITEMS = IMAGES + 1 + CLIP_FRAMES // STRIDE  # images, the broken file, the clip's frames
SHARD_SIZE = 4
# Run options every bulk test shares. The flip test stays on (the model's default): the network then always
# sees at least two rows, and its CPU kernels at batch 1 differ from those at larger batches by ~1e-6.
OPTIONS = {"batch_size": 2, "shard_size": SHARD_SIZE, "stride": STRIDE, "overlay": True}


def scene(seed: int, index: int) -> np.ndarray:
    """A BGR scene, as cv2 writes it."""
    return render_scene(np.random.default_rng([seed, index]), SCENE)[0]


def write_inputs(folder: Path) -> Path:
    """``folder``/000000.jpg..., ``broken.jpg`` (not an image) and ``clip.avi`` (Motion JPEG, exact seeks)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(IMAGES):
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), scene(0, i), [cv2.IMWRITE_JPEG_QUALITY, 95])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    h, w = SCENE.size
    writer = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for i in range(CLIP_FRAMES):
        writer.write(scene(1, i))
    writer.release()
    return folder


def output_files(out: Path) -> dict[str, bytes]:
    """Every file a finished job leaves, by relative path (temporary and Ray staging files excluded)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }
