"""What both bulk engines do with a decoded batch: run it, isolating failures, and draw overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pose.bulk.inputs import Item
from pose.draw import draw_people, encode_image
from pose.pipeline import BatchPipeline, PoseResult
from pose.results import to_people

__all__ = ["overlay_name", "predict_images", "write_overlay"]


def overlay_name(item: Item) -> str:
    """``<item>_<stem>[_f<frame>].jpg``: unique within a job, sorted in item order."""
    stem = Path(item.path.split("://", 1)[-1]).stem
    return f"{item.index:07d}_{stem}" + ("" if item.frame is None else f"_f{item.frame:06d}") + ".jpg"


def write_overlay(
    folder: Path,
    item: Item,
    image: np.ndarray,
    result: PoseResult,
    skeleton: Sequence[tuple[int, int]],
) -> None:
    """The item's skeletons drawn on its image, written atomically: a job killed mid-write leaves no
    truncated JPEG behind."""
    people = to_people(result.keypoints, result.scores, result.boxes)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{overlay_name(item)}.tmp"
    tmp.write_bytes(encode_image(draw_people(image, people, skeleton)))
    tmp.replace(folder / overlay_name(item))


def predict_images(
    pipeline: BatchPipeline,
    images: list[np.ndarray],
    flip: bool | None,
    scales: list[float] | None,
    min_score: float,
) -> list[PoseResult | str]:
    """Poses scoring at least ``min_score`` of a batch; if the batch fails, each image alone, so one bad
    image fails only itself."""
    try:
        return [poses.above(min_score) for poses in pipeline.run(images, flip, scales)[0]]
    except (RuntimeError, ValueError) as err:
        if len(images) == 1:
            return [f"inference failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"]
    return [r for image in images for r in predict_images(pipeline, [image], flip, scales, min_score)]
