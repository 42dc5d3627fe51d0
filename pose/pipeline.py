"""Images to poses for a whole batch: preprocessing, flip/multi-scale forward, one batched decode.

Images of different sizes land on different network input shapes (the short side is fixed, the long side
rounded up to 64). Images sharing a shape go through the network together, so every image gets exactly
the outputs it would get alone; the grouping then runs once for the whole batch on outputs padded to a
common size, with each image's valid size carried along. The network is any callable returning
:class:`~pose.models.hrnet.PoseOutput`, so torch, ONNX Runtime and TensorRT backends share this code.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pose.config import ModelConfig, check_scales
from pose.inference import ScaleOutput, flip_test
from pose.models.hrnet import PoseOutput
from pose.postprocess import postprocess
from pose.preprocess import ImageTransform, image_to_tensor, plan_transform, resize_image, warp_batch
from pose.rescore import ScoringNet
from pose.results import best_first

__all__ = ["BatchPipeline", "BatchTimings", "PoseResult"]

Network = Callable[[Tensor], PoseOutput]


@dataclass
class PoseResult:
    """Poses of one image, best first (:func:`~pose.results.best_first`), the order every output keeps."""

    keypoints: Tensor  # (P, K, 3) x, y, score in image pixels
    keypoints_input: Tensor  # (P, K, 3) in scale-1 network-input pixels
    scores: Tensor  # (P,) final score
    grouping_scores: Tensor  # (P,) mean joint score
    center_scores: Tensor  # (P,)
    boxes: Tensor  # (P, 4) x, y, w, h
    # (P,) int64: each pose's place in the grouping's own order (the authors'), to compare with their outputs
    grouping_order: Tensor | None = None

    def __post_init__(self) -> None:
        if self.grouping_order is None:
            self.grouping_order = torch.arange(len(self.scores))

    def above(self, min_score: float) -> PoseResult:
        """The poses scoring at least ``min_score``, in the same order; a threshold of 0 keeps every pose."""
        if min_score <= 0:
            return self
        keep = self.scores >= min_score
        return PoseResult(*(getattr(self, f.name)[keep] for f in fields(self)))

    def in_grouping_order(self) -> PoseResult:
        """The same poses in the grouping's order, as the authors' code lists them."""
        assert self.grouping_order is not None
        order = torch.argsort(self.grouping_order)
        return PoseResult(*(getattr(self, f.name)[order] for f in fields(self)))


@dataclass
class BatchTimings:
    """Seconds spent per stage for one batch."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    shapes: list[tuple[int, int]] = field(default_factory=list)  # network input (W, H) of each forward group


def _pad_to(x: Tensor, h: int, w: int) -> Tensor:
    return x if x.shape[-2:] == (h, w) else F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def _stack_rows(rows: list[Tensor]) -> Tensor:
    """Concatenate along the batch, without a copy for a batch of one (full-resolution maps on a CPU)."""
    return rows[0] if len(rows) == 1 else torch.cat(rows)


class BatchPipeline:
    """The full inference path of one model on one device."""

    def __init__(
        self,
        config: ModelConfig,
        network: Network,
        scoring_net: ScoringNet | None,
        device: str | torch.device = "cpu",
        warp_on_device: bool | None = None,
    ) -> None:
        self.config = config
        self.network = network
        self.scoring_net = scoring_net
        self.device = torch.device(device)
        # cv2's fixed-point warp on the CPU reproduces the authors' inputs bit for bit; on a GPU the warp
        # runs there (bilinear in float, within one grey level of cv2) to keep the host out of the loop.
        self.warp_on_device = self.device.type == "cuda" if warp_on_device is None else warp_on_device

    def _inputs(self, images: Sequence[np.ndarray], transforms: list[ImageTransform]) -> Tensor:
        """Warped, normalized inputs of images that share one input size, (G, 3, H, W) on the device."""
        cfg = self.config.input
        if not self.warp_on_device:
            return torch.cat(
                [image_to_tensor(resize_image(im, t), cfg) for im, t in zip(images, transforms, strict=True)]
            ).to(self.device)
        h_max = max(im.shape[0] for im in images)
        w_max = max(im.shape[1] for im in images)
        raw = torch.zeros(len(images), 3, h_max, w_max, dtype=torch.uint8)
        for i, im in enumerate(images):
            raw[i, :, : im.shape[0], : im.shape[1]] = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)
        matrices = torch.from_numpy(np.stack([t.matrix for t in transforms]))
        return warp_batch(
            raw.to(self.device, non_blocking=True), matrices.to(self.device), transforms[0].input_size, cfg
        )

    @torch.inference_mode()
    def run(
        self,
        images: Sequence[np.ndarray],
        flip: bool | None = None,
        scales: Sequence[float] | None = None,
        **decode: Any,
    ) -> tuple[list[PoseResult], BatchTimings]:
        """Poses for each HWC uint8 RGB image; ``decode`` overrides :class:`~pose.config.DecodeConfig`."""
        cfg = self.config
        scales = sorted(check_scales(list(scales or cfg.test.scales)), reverse=True)
        flip = cfg.test.flip if flip is None else flip
        flip_index = cfg.keypoints.flip_index if flip else None
        timings = BatchTimings()
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        base = [plan_transform(im.shape[1], im.shape[0], cfg.input.size) for im in images]
        for i, t in enumerate(base):
            groups[t.input_size].append(i)
        outputs: list[list[ScaleOutput | None]] = [[None] * len(images) for _ in scales]
        for shape, members in groups.items():
            timings.shapes.append(shape)
            for s_idx, scale in enumerate(scales):
                transforms = [
                    plan_transform(images[i].shape[1], images[i].shape[0], cfg.input.size, scale) for i in members
                ]
                t0 = time.perf_counter()
                x = self._inputs([images[i] for i in members], transforms)
                t1 = time.perf_counter()
                out = flip_test(self.network, x, flip_index, cfg.test.flip_shift)
                timings.preprocess += t1 - t0
                timings.inference += time.perf_counter() - t1
                for g, i in enumerate(members):
                    outputs[s_idx][i] = ScaleOutput(out.heatmaps[g : g + 1], out.keypoints[g : g + 1])
        t_post = time.perf_counter()
        results = self._decode(outputs, scales, base, cfg.decode.model_copy(update=decode))
        timings.postprocess = time.perf_counter() - t_post
        return results, timings

    def _decode(
        self, outputs: list[list[ScaleOutput | None]], scales: list[float], base: list[ImageTransform], cfg: Any
    ) -> list[PoseResult]:
        """One grouping pass over the batch, padding every scale's maps to the largest."""
        batch_outputs, map_sizes = [], []
        padded = False
        for per_image in outputs:
            maps = [o for o in per_image if o is not None]
            sizes = [tuple(o.heatmaps.shape[-2:]) for o in maps]
            h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
            padded |= any(s != (h, w) for s in sizes)
            heat = _stack_rows([_pad_to(o.heatmaps, h, w) for o in maps])
            kpts = _stack_rows([_pad_to(o.keypoints, h, w) for o in maps])
            batch_outputs.append(ScaleOutput(heat, kpts))
            map_sizes.append(torch.tensor(sizes, device=heat.device))
        one = scales.index(1.0)
        h1, w1 = batch_outputs[one].heatmaps.shape[-2:]
        stride = round(base[0].input_size[1] / int(map_sizes[one][0, 0]))  # 4, or 2 for a 2x heatmap head
        input_size = (h1 * stride, w1 * stride)
        base_sizes = map_sizes[one] * stride if padded else None
        inverse = torch.from_numpy(np.stack([t.inverse() for t in base]))
        batch = postprocess(
            batch_outputs,
            scales,
            input_size,
            inverse,
            cfg,
            self.scoring_net,
            self.config.keypoints.score_sticks,
            base_sizes=base_sizes,
            map_sizes=map_sizes,
        )
        # One device-to-host copy per tensor for the whole batch, then per-image views on the host: no
        # per-image syncs. Each image's poses are sorted best first here, once, for every caller.
        counts = batch.valid.sum(dim=1).tolist()
        fields = (batch.keypoints, batch.keypoints_input, batch.scores, batch.grouping_scores)
        host = [t.cpu() for t in (*fields, batch.center_scores, batch.boxes)]
        results = []
        for i, n in enumerate(counts):
            order = best_first(host[2][i, :n])
            kpts, kpts_input, scores, grouping, centers, boxes = (t[i, :n][order] for t in host)
            results.append(PoseResult(kpts, kpts_input, scores, grouping, centers, boxes, order))
        return results
