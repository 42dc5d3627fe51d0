"""The bulk job in one process: DataLoader workers decode, the main thread runs the network, a thread writes.

Three stages overlap. Worker processes of a ``torch.utils.data.DataLoader`` decode chunks of items ahead
of the network (pinned memory on CUDA). The main thread buckets decoded images by network input shape, so
every forward is a full batch of one shape, and runs :class:`~pose.pipeline.BatchPipeline`. A writer thread
turns results into rows, draws overlays and commits each shard once its last item is in. Buckets are
flushed at every shard boundary: a shard's batches are then the same whether the job ran through or was
resumed, and a shard never waits on the images of the next one.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pose.bulk.frames import Chunk, ChunkDataset
from pose.bulk.inputs import Item
from pose.bulk.job import BulkOptions, ModelSpec
from pose.bulk.predict import predict_images, write_overlay
from pose.bulk.records import error_table, person_table
from pose.bulk.store import ShardStore
from pose.pipeline import PoseResult
from pose.preprocess import plan_transform

__all__ = ["ShardWriter", "default_workers", "run_local", "shape_batches"]


@dataclass
class _Shard:
    items: list[Item] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    results: list[PoseResult] = field(default_factory=list)
    failed: list[Item] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ShardWriter:
    """A thread that collects each item's outcome and commits a shard once all its items are in."""

    def __init__(
        self,
        store: ShardStore,
        expected: dict[int, int],
        overlay: Callable[[Item, np.ndarray, PoseResult], None] | None = None,
        progress: tqdm | None = None,
    ) -> None:
        self.store = store
        self.expected = expected
        self.overlay = overlay
        self.progress = progress
        self.queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=256)
        self.error: BaseException | None = None
        self._shards: dict[int, _Shard] = defaultdict(_Shard)
        self._thread = threading.Thread(target=self._run, name="pose-bulk-writer", daemon=True)

    def __enter__(self) -> ShardWriter:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.queue.put(None)
        self._thread.join()
        if self.error is not None and kind is None:
            raise RuntimeError(f"writing results failed: {self.error}") from self.error

    def _put(self, message: tuple[Any, ...]) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing results failed: {self.error}") from self.error
        self.queue.put(message)

    def result(self, shard: int, item: Item, image: np.ndarray, result: PoseResult) -> None:
        size = (int(image.shape[1]), int(image.shape[0]))
        self._put((shard, item, size, image if self.overlay else None, result))

    def failure(self, shard: int, item: Item, error: str) -> None:
        self._put((shard, item, (0, 0), None, error))

    def _run(self) -> None:
        while (message := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so the producer never blocks on a dead writer
            try:
                self._handle(*message)
            except BaseException as err:  # reported to the producer on its next put or at exit
                self.error = err

    def _handle(
        self, shard: int, item: Item, size: tuple[int, int], image: np.ndarray | None, outcome: PoseResult | str
    ) -> None:
        acc = self._shards[shard]
        if isinstance(outcome, str):
            acc.failed.append(item)
            acc.errors.append(outcome)
        else:
            if self.overlay is not None and image is not None:
                self.overlay(item, image, outcome)
            acc.items.append(item)
            acc.sizes.append(size)
            acc.results.append(outcome)
        if self.progress is not None:
            self.progress.update(1)
        if len(acc.items) + len(acc.failed) == self.expected[shard]:
            people = person_table(acc.items, acc.sizes, acc.results, self.store.num_keypoints)
            self.store.commit(shard, people, error_table(acc.failed, acc.errors), images=len(acc.items))
            del self._shards[shard]


def _identity(chunk: Any) -> Any:
    return chunk


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)  # the processes share the cores with the network; no nested thread pools


def default_workers(device: str) -> int:
    """Decoding processes when not given: on a GPU enough to feed it; on a CPU the network needs the cores,
    and a spawned worker costs seconds to start, so few (none below 8 cores)."""
    cores = os.cpu_count() or 1
    return min(8, cores) if torch.device(device).type == "cuda" else min(4, cores // 8)


def chunks_of(pending: dict[int, list[Item]], size: int) -> list[tuple[int, list[Item]]]:
    return [(s, items[i : i + size]) for s, items in sorted(pending.items()) for i in range(0, len(items), size)]


Entry = tuple[int, Item, np.ndarray]  # shard, item, HWC uint8 RGB image


def shape_batches(
    chunks: Iterable[Chunk], batch_size: int, short_side: int, failed: Callable[[int, Item, str], None]
) -> Iterator[list[Entry]]:
    """Batches of one network input shape, full except at the end of a shard, where every bucket is
    flushed; unreadable items go to ``failed``."""
    buckets: dict[tuple[int, int], list[Entry]] = defaultdict(list)
    current = None
    for chunk in chunks:
        if chunk.shard != current:
            yield from buckets.values()
            buckets.clear()
            current = chunk.shard
        for item, pixels, error in zip(chunk.items, chunk.images, chunk.errors, strict=True):
            if pixels is None:
                failed(chunk.shard, item, error or "unreadable")
                continue
            image = pixels.numpy()
            key = plan_transform(image.shape[1], image.shape[0], short_side).input_size
            buckets[key].append((chunk.shard, item, image))
            if len(buckets[key]) == batch_size:
                yield buckets.pop(key)
    yield from buckets.values()


def _loader(pending: dict[int, list[Item]], options: BulkOptions, device: str) -> DataLoader:
    workers = default_workers(device) if options.workers is None else options.workers
    return DataLoader(
        ChunkDataset(chunks_of(pending, options.chunk_size)),
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        pin_memory=torch.device(device).type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        # spawned, not forked: OpenCV's and OpenMP's thread pools do not survive a fork (workers hang)
        multiprocessing_context="spawn" if workers else None,
        prefetch_factor=max(2, -(-options.batch_size // options.chunk_size) * 2) if workers else None,
    )


def run_local(store: ShardStore, pending: dict[int, list[Item]], spec: ModelSpec, options: BulkOptions) -> None:
    """Run the pending shards of a job here and commit them to ``store``."""
    est = spec.estimator()
    scales = list(options.scales) if options.scales else None
    min_score = options.score_threshold(est.config)
    overlays = store.out / "overlays"

    def draw(item: Item, image: np.ndarray, result: PoseResult) -> None:
        write_overlay(overlays, item, image, result, est.config.keypoints.skeleton)

    expected = {s: len(items) for s, items in pending.items()}
    bar = tqdm(total=sum(expected.values()), unit="img", desc="pose batch", disable=not options.progress)
    with bar, ShardWriter(store, expected, draw if options.overlay else None, bar) as writer:
        loader = _loader(pending, options, spec.device)
        for batch in shape_batches(loader, options.batch_size, est.config.input.size, writer.failure):
            images = [image for _, _, image in batch]
            outcomes = predict_images(est.pipeline, images, options.flip, scales, min_score)
            for (shard, item, image), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, str):
                    writer.failure(shard, item, outcome)
                else:
                    writer.result(shard, item, image, outcome)
