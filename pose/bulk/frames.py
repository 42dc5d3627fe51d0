"""Decode items to RGB pixels: image files, bucket objects and video frames, failures kept per item.

Consecutive frames of one video are read in one pass (one seek, then decoding forward over the frames a
stride skips, see :func:`pose.video.read_frames_at`), which is why decoding works on runs of items rather
than on one item at a time. The same code decodes in the local job's DataLoader workers and in the Ray
actors, so both paths see the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import groupby
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pose.bulk.inputs import Item, is_uri, local_path
from pose.video import VIDEO_SUFFIXES, read_frames_at

__all__ = ["Chunk", "ChunkDataset", "read_items"]

_IMREAD = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # as PoseEstimator.read_image


def _read_image(path: str) -> np.ndarray:
    if is_uri(path):
        from pyarrow import fs

        filesystem, key = fs.FileSystem.from_uri(path)
        with filesystem.open_input_file(key) as f:
            data = np.frombuffer(f.read(), np.uint8)
        image = cv2.imdecode(data, _IMREAD) if data.size else None
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError("no such file")
        image = cv2.imread(path, _IMREAD)
    if image is None:
        raise ValueError("cannot decode the image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _suffix_is_video(path: str) -> bool:
    return any(path.lower().endswith(s) for s in VIDEO_SUFFIXES)


def read_items(items: Sequence[Item]) -> list[np.ndarray | str]:
    """HWC uint8 RGB pixels of each item, or the reason it could not be read (a one-line message)."""
    out: list[np.ndarray | str] = []
    for (path, is_frame), run in groupby(items, key=lambda it: (it.path, it.frame is not None)):
        if is_frame:
            local = local_path(path)
            wanted = [it.frame for it in run if it.frame is not None]
            out += read_frames_at(local, wanted) if local is not None else ["cannot open the video"] * len(wanted)
            continue
        for _ in run:
            if _suffix_is_video(path):
                out.append("cannot open the video")
                continue
            try:
                out.append(_read_image(path))
            except (OSError, ValueError, cv2.error) as err:
                out.append(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    return out


class Chunk(NamedTuple):
    """A run of consecutive items of one shard, decoded; pixels are uint8 tensors so they can be pinned."""

    shard: int
    items: list[Item]
    images: list[torch.Tensor | None]  # (H, W, 3) uint8 RGB; None where the item failed
    errors: list[str | None]


class ChunkDataset(Dataset[Chunk]):
    """Chunks of a job for a ``torch.utils.data.DataLoader`` (``batch_size=None``): each worker decodes
    whole chunks, so a video is sought once per chunk instead of once per frame."""

    def __init__(self, chunks: Sequence[tuple[int, list[Item]]]) -> None:
        self.chunks = list(chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> Chunk:
        shard, items = self.chunks[index]
        decoded = read_items(items)
        images = [torch.from_numpy(d) if isinstance(d, np.ndarray) else None for d in decoded]
        return Chunk(shard, items, images, [d if isinstance(d, str) else None for d in decoded])
