"""Poses to the HTTP response models: filtering by the resolved options, COCO entries, overlays.

This is CPU work per request (overlays especially); routes run it in a thread, off the event loop.
"""

from __future__ import annotations

import base64
import time

import numpy as np

from pose.config import ModelConfig
from pose.draw import draw_people, encode_image
from pose.pipeline import PoseResult
from pose.results import to_people
from service.batcher import BatchInfo
from service.options import ResolvedOptions
from service.schemas import CocoResult, ImageResult, Keypoint, Person, PoseResponse, Timings

__all__ = ["build_response"]


def _finite(values: np.ndarray) -> np.ndarray:
    """JSON has no NaN or infinity; an ill-conditioned fit must not turn into an unserializable answer."""
    return np.nan_to_num(values, nan=0.0, posinf=3.0e38, neginf=-3.0e38)


def _image_result(
    index: int, image: np.ndarray, poses: PoseResult, config: ModelConfig, options: ResolvedOptions
) -> ImageResult:
    people = to_people(
        poses.keypoints, poses.scores, poses.boxes, min_score=options.score_threshold, max_people=options.max_people
    )
    names, skeleton = config.keypoints.names, config.keypoints.skeleton
    return ImageResult(
        width=image.shape[1],
        height=image.shape[0],
        people=[
            Person(
                keypoints=[
                    Keypoint(name=n, x=x, y=y, score=s)
                    for n, (x, y, s) in zip(names, _finite(np.array(p.keypoints)), strict=True)
                ],
                score=float(_finite(np.array(p.score))),
                bbox=tuple(_finite(np.array(p.box)).tolist()),
            )
            for p in people
        ],
        coco=[
            CocoResult(
                image_id=index,
                keypoints=_finite(np.array(p.keypoints)).ravel().tolist(),
                score=float(_finite(np.array(p.score))),
            )
            for p in people
        ]
        if options.coco
        else None,
        overlay_jpeg_base64=base64.b64encode(encode_image(draw_people(image, people, skeleton))).decode()
        if options.overlay
        else None,
    )


def build_response(
    config: ModelConfig,
    images: list[np.ndarray],
    results: list[PoseResult],
    info: BatchInfo,
    options: ResolvedOptions,
    start: float,
) -> PoseResponse:
    """The answer to one request; ``start`` is when it arrived (``time.perf_counter``)."""
    return PoseResponse(
        model=config.name,
        version=config.version,
        results=[
            _image_result(i, image, poses, config, options)
            for i, (image, poses) in enumerate(zip(images, results, strict=True))
        ],
        timings=Timings(
            queue_ms=1000 * info.queue_s,
            inference_ms=1000 * info.inference_s,
            postprocess_ms=1000 * info.postprocess_s,
            total_ms=1000 * (time.perf_counter() - start),
            batch_size=info.batch_size,
        ),
    )
