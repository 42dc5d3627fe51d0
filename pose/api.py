"""Three-line Python API: load a model from ``model_repo/<name>``, run it on an image, get poses.

>>> est = PoseEstimator.from_repo("model_repo/hrnet_w32_coco_512")   # doctest: +SKIP
>>> est.runtime.backend  # 'onnx' on a CPU once it matched torch (backend="torch" forces torch)  # doctest: +SKIP
>>> poses = est.predict(est.read_image("people.jpg"))                  # doctest: +SKIP
>>> poses.keypoints.shape  # (P, K, 3): x, y, score in image pixels    # doctest: +SKIP
>>> for frame, people in est.track_video("clip.mp4"):                   # doctest: +SKIP
...     print(frame.time_s, people.track_ids.tolist())                     # ids that persist across frames
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from pose.checkpoint import load_weights
from pose.config import DEFAULT_MODEL, ModelConfig, check_scales, load_model_config
from pose.errors import ImageReadError, MissingCheckpointError
from pose.inference import ScaleOutput, flip_test
from pose.models.hrnet import PoseHRNet, create_model
from pose.pipeline import BatchPipeline, PoseResult
from pose.preprocess import ImageTransform, image_to_tensor, plan_transform, resize_image
from pose.rescore import ScoringNet, load_scoring_net
from pose.runtimes import (
    Backend,
    BackendName,
    Precision,
    RuntimeOptions,
    RuntimeReport,
    create_backend,
    describe_runtime,
)
from pose.tracking import PoseTracker, TrackedPoses, TrackerConfig
from pose.video import VideoFrame, iter_frames

__all__ = ["PoseEstimator", "PoseResult", "RawOutput", "TrackedPoses", "TrackerConfig"]


@dataclass
class RawOutput:
    """Network outputs for one image at one scale, flip-aggregated, on the output grid."""

    heatmaps: Tensor  # (K, h, w)
    center: Tensor  # (h, w)
    keypoints: Tensor  # (K, 2, h, w) absolute (x, y) regressed at each pixel, in output pixels
    # where the image sits in the network input; the heatmap grid is input / 4, or input / 2 with a 2x head
    transform: ImageTransform


class PoseEstimator:
    """A loaded model with its scoring net, configuration, device and network runtime.

    ``model`` is the torch network as loaded (exports and training read it); ``backend`` is what runs it
    for :meth:`predict` and :meth:`raw`. Built with :meth:`from_config`, the backend is the same ``auto``
    choice as the CLI, bulk jobs and the service make: ONNX Runtime on a CPU once it has matched torch.
    Built directly without one, the module itself runs (a model being trained is evaluated that way).
    """

    def __init__(
        self,
        config: ModelConfig,
        model: PoseHRNet,
        scoring_net: ScoringNet | None,
        device: str | torch.device,
        backend: Backend | None = None,
    ):
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.scoring_net = scoring_net.to(self.device) if scoring_net is not None else None
        self.backend: Backend | PoseHRNet = backend if backend is not None else self.model
        self.pipeline = BatchPipeline(config, self.backend, self.scoring_net, self.device)

    @classmethod
    def from_config(
        cls,
        config: str | Path | ModelConfig,
        weights: str | Path | None = None,
        rescore_weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        backend: BackendName = "auto",
        precision: Precision = "float32",
        **runtime: Any,
    ) -> PoseEstimator:
        """Build from a config (file, folder or object); weights default to the config's artifacts.

        ``backend`` and ``precision`` choose the runtime as ``pose predict --backend/--precision`` and the
        service's ``POSE_BACKEND``/``POSE_PRECISION`` do; ``runtime`` takes the other fields of
        :class:`~pose.runtimes.RuntimeOptions` (``onnx_cache=``, ``half=``, ``calibration_images=``, ...).
        """
        cfg = config if isinstance(config, ModelConfig) else load_model_config(config)
        model = create_model(cfg)
        weights_path = Path(weights) if weights else cfg.resolve(cfg.weights)
        if weights_path is None:
            raise MissingCheckpointError(f"model {cfg.name} names no weights in its config")
        load_weights(model, weights_path)
        rescore_path = Path(rescore_weights) if rescore_weights else cfg.resolve(cfg.rescore_weights)
        scoring_net = None
        if rescore_path is not None and rescore_path.is_file():
            scoring_net = load_scoring_net(rescore_path, cfg.keypoints.score_feature_dim)
        options = RuntimeOptions(
            backend=backend,
            precision=precision,
            device=str(device),
            weights=Path(weights) if weights else None,
            **runtime,
        )
        return cls(cfg, model, scoring_net, device, create_backend(cfg, options))

    @property
    def runtime(self) -> RuntimeReport:
        """What runs the network: the backend, its precision, and why a faster path is not in use when so."""
        return describe_runtime(self.backend)

    from_repo = from_config

    @classmethod
    def default(cls, device: str | torch.device = "cpu", **options: Any) -> PoseEstimator:
        """The embedded model (``model_repo/synthetic_w16_256``): it ships with the code, so it runs with no
        download; it finds drawn figures like those of ``pose synth``, not people in photos. ``options`` go
        to :meth:`from_config`."""
        return cls.from_config(DEFAULT_MODEL, device=device, **options)

    @staticmethod
    def read_image(path: str | Path) -> np.ndarray:
        """Read a file as HWC uint8 RGB, ignoring EXIF orientation as the authors' evaluation does."""
        image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"image {path} does not exist")
            raise ImageReadError(f"{path} is not an image that can be decoded (jpg, png, bmp, webp, tif); pass images")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    @torch.inference_mode()
    def forward(
        self, image: np.ndarray, scales: list[float] | None = None, flip: bool | None = None
    ) -> tuple[list[ScaleOutput], ImageTransform]:
        """Flip-aggregated outputs at each scale (descending), and the scale-1 transform."""
        scales = sorted(check_scales(scales or self.config.test.scales, grouped=False), reverse=True)
        flip = self.config.test.flip if flip is None else flip
        flip_index = self.config.keypoints.flip_index if flip else None
        h, w = image.shape[:2]
        outputs = []
        for scale in scales:
            transform = plan_transform(w, h, self.config.input.size, scale)
            x = image_to_tensor(resize_image(image, transform), self.config.input).to(self.device)
            outputs.append(flip_test(self.backend, x, flip_index, self.config.test.flip_shift))
        return outputs, plan_transform(w, h, self.config.input.size, 1.0)

    def raw(self, image: np.ndarray, flip: bool | None = None) -> RawOutput:
        """Heatmaps, center heatmap and regressed joints at scale 1."""
        (out,), transform = self.forward(image, [1.0], flip)
        k = self.config.keypoints.num_keypoints
        kpts = out.keypoints[0]
        return RawOutput(out.heatmaps[0, :k], out.heatmaps[0, k], kpts.view(k, 2, *kpts.shape[-2:]), transform)

    def predict(
        self,
        image: np.ndarray,
        scales: list[float] | None = None,
        flip: bool | None = None,
        min_score: float | None = None,
        **decode: Any,
    ) -> PoseResult:
        """Poses of one image scoring at least ``min_score`` (default: the model's ``test.score_threshold``;
        0 keeps all, as COCO evaluation needs); ``decode`` overrides :class:`~pose.config.DecodeConfig`."""
        return self.predict_batch([image], scales, flip, min_score, **decode)[0]

    def predict_batch(
        self,
        images: list[np.ndarray],
        scales: list[float] | None = None,
        flip: bool | None = None,
        min_score: float | None = None,
        **decode: Any,
    ) -> list[PoseResult]:
        """Poses of several images of any sizes, decoded as one batch."""
        threshold = self.config.test.score_threshold if min_score is None else min_score
        return [poses.above(threshold) for poses in self.pipeline.run(images, flip, scales, **decode)[0]]

    def tracker(self, config: TrackerConfig | None = None) -> PoseTracker:
        """A tracker for one video, matching by OKS with this model's keypoint sigmas."""
        return PoseTracker(config, self.config.keypoints.sigmas)

    def _tracked(
        self,
        frames: Iterable[VideoFrame],
        tracker: PoseTracker,
        batch_size: int,
        scales: list[float] | None,
        flip: bool | None,
        min_score: float | None,
    ) -> Iterator[tuple[VideoFrame, TrackedPoses]]:
        """Frames in batches through :meth:`predict_batch`, then through the tracker in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        it = iter(frames)
        while batch := list(islice(it, batch_size)):
            poses = self.predict_batch([f.image for f in batch], scales, flip, min_score)
            tracked = tracker.update_batch(poses, [f.time_s for f in batch])
            yield from zip(batch, tracked, strict=True)

    def track(
        self,
        frames: Sequence[np.ndarray],
        times: Sequence[float] | None = None,
        fps: float = 25.0,
        config: TrackerConfig | None = None,
        batch_size: int = 8,
        scales: list[float] | None = None,
        flip: bool | None = None,
        min_score: float | None = None,
    ) -> list[TrackedPoses]:
        """Poses with track ids for consecutive RGB frames; ``times`` in seconds default to ``i / fps``.

        The same people as :meth:`predict` finds in each frame, in the same order, each with the id of the
        person it continues (ids start at 1).
        """
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if times is not None and len(times) != len(frames):
            raise ValueError(f"got {len(frames)} frames but {len(times)} times")
        items = (
            VideoFrame(i, float(times[i]) if times is not None else i / fps, image) for i, image in enumerate(frames)
        )
        return [t for _, t in self._tracked(items, self.tracker(config), batch_size, scales, flip, min_score)]

    def track_video(
        self,
        path: str | Path,
        stride: int = 1,
        max_frames: int | None = None,
        max_duration_s: float | None = None,
        config: TrackerConfig | None = None,
        batch_size: int = 8,
        scales: list[float] | None = None,
        flip: bool | None = None,
        min_score: float | None = None,
    ) -> Iterator[tuple[VideoFrame, TrackedPoses]]:
        """Decode a video file and yield each kept frame with its tracked poses, a batch at a time."""
        frames = iter_frames(path, stride, max_frames, max_duration_s)
        yield from self._tracked(frames, self.tracker(config), batch_size, scales, flip, min_score)
