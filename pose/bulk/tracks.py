"""Track ids for the frames of videos in a bulk job, assigned once every shard is done.

Tracking needs a video's frames in order, but shards finish in any order and a resumed job has lost the
trackers of the run that died. So the ids are not computed while frames run: once all shards are
committed, each video's person rows are read back in frame order and fed to one
:class:`~pose.tracking.PoseTracker`, and the shards holding video rows are rewritten with their
``track_id`` (and their manifest checksums) atomically. The ids depend only on the committed rows, so a
job killed anywhere, even halfway through this pass, ends with the same ids when rerun.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pose.bulk.inputs import Item
from pose.bulk.store import ShardStore
from pose.tracking import PoseTracker, TrackedPoses, TrackerConfig

__all__ = ["assign_track_ids"]


def _frame_poses(rows: pa.Table, k: int) -> TrackedPoses:
    """One frame's committed people as tracker input, in their row (pipeline) order."""
    n = rows.num_rows
    keypoints = np.array(rows.column("keypoints").combine_chunks().flatten(), np.float32).reshape(n, k, 3)
    boxes = np.array(rows.column("bbox").combine_chunks().flatten(), np.float32).reshape(n, 4)
    scores = rows.column("score").to_numpy().astype(np.float32)  # a writable copy, as torch wants
    return TrackedPoses(
        torch.from_numpy(keypoints),
        torch.from_numpy(scores),
        torch.from_numpy(boxes),
        torch.zeros(n, dtype=torch.int64),
    )


def _video_track_ids(
    people: pa.Table, frames: Sequence[Item], config: TrackerConfig | None, sigmas: Sequence[float] | None, k: int
) -> dict[tuple[int, int], int]:
    """``(item, person) -> track id`` for one video's kept frames (``frames`` in frame order).

    Frame times are frame numbers, not seconds: matching, motion prediction and patience give the same
    ids in any time unit (only One-Euro smoothing depends on it, and bulk output is raw), and the frame
    rate would cost another pass over the file.
    """
    tracker = PoseTracker(config, sigmas)
    by_item = people.filter(pc.is_in(people["item"], pa.array([f.index for f in frames], pa.int64())))
    by_item = by_item.sort_by([("item", "ascending"), ("person", "ascending")])
    items = by_item.column("item").to_numpy()
    ids: dict[tuple[int, int], int] = {}
    for frame in frames:  # frames with nobody (or unreadable) still count towards a track's patience
        start, stop = np.searchsorted(items, frame.index, "left"), np.searchsorted(items, frame.index, "right")
        rows = by_item.slice(start, stop - start)
        tracked = tracker.update(_frame_poses(rows, k), float(frame.frame or 0))
        persons = rows.column("person").to_pylist()
        ids.update({(frame.index, p): int(t) for p, t in zip(persons, tracked.track_ids.tolist(), strict=True)})
    return ids


def assign_track_ids(
    store: ShardStore,
    items: Sequence[Item],
    shard_size: int,
    config: TrackerConfig | None = None,
    sigmas: Sequence[float] | None = None,
) -> int:
    """Fill ``track_id`` in the person rows of every video's frames; returns the number of shards rewritten.

    Image rows keep a null ``track_id``. A shard whose ids are already right is left untouched, so the
    pass is a no-op on a finished job.
    """
    videos: dict[str, list[Item]] = {}
    for item in items:
        if item.frame is not None:
            videos.setdefault(item.path, []).append(item)
    if not videos:
        return 0
    shards = sorted({item.index // shard_size for frames in videos.values() for item in frames})
    tables = {shard: store.read_people(shard) for shard in shards}
    people = pa.concat_tables(tables.values())
    ids: dict[tuple[int, int], int] = {}
    for frames in videos.values():
        ids.update(
            _video_track_ids(people, sorted(frames, key=lambda f: f.frame or 0), config, sigmas, store.num_keypoints)
        )
    rewritten = 0
    for shard, table in tables.items():
        keys = zip(table.column("item").to_pylist(), table.column("person").to_pylist(), strict=True)
        track_ids = pa.array([ids.get(key) for key in keys], pa.int64())
        if table.column("track_id").combine_chunks().equals(track_ids):
            continue
        column = table.schema.get_field_index("track_id")
        store.replace_people(shard, table.set_column(column, table.schema.field(column), track_ids))
        rewritten += 1
    return rewritten
