"""The bulk output schema: one row per person, as an Arrow table, and its COCO and JSON Lines views.

Arrow is the one in-memory form: the local job and the Ray actors both build these tables, Parquet stores
them, and the COCO results and JSONL files are derived from the stored Parquet, so every output of a job
agrees with every other to the bit. Columns are documented in docs/bulk.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from functools import cache

import pyarrow as pa
import torch

from pose.bulk.inputs import Item
from pose.pipeline import PoseResult

__all__ = ["ERROR_SCHEMA", "coco_entries", "error_table", "jsonl_lines", "person_schema", "person_table"]


@cache
def person_schema(num_keypoints: int = 17) -> pa.Schema:
    """Columns of the person rows of a model with ``num_keypoints`` keypoints (17 for COCO, 14 CrowdPose)."""
    return pa.schema(
        [
            pa.field("item", pa.int64(), nullable=False),
            pa.field("image_id", pa.int64(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("frame", pa.int64()),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("person", pa.int32(), nullable=False),
            pa.field("track_id", pa.int64()),
            pa.field("score", pa.float32(), nullable=False),
            # flat [x, y, score] * K as in COCO results; a nested fixed-size list would read back as (K, 3),
            # but pyarrow (26) returns garbage when it filters or sorts a slice of one
            pa.field("keypoints", pa.list_(pa.float32(), 3 * num_keypoints), nullable=False),
            pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),
        ]
    )


ERROR_SCHEMA = pa.schema(
    [
        pa.field("item", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("frame", pa.int64()),
        pa.field("error", pa.string(), nullable=False),
    ]
)


def person_table(
    items: Sequence[Item], sizes: Sequence[tuple[int, int]], results: Sequence[PoseResult], num_keypoints: int
) -> pa.Table:
    """Rows for the people of each item, in the pipeline's order per image; ``sizes`` are (width, height)."""
    k = num_keypoints
    counts = [len(r.scores) for r in results]
    rows = sum(counts)
    keypoints = torch.cat([r.keypoints.float() for r in results]) if rows else torch.zeros(0, k, 3)  # (N, K, 3)
    boxes = torch.cat([r.boxes.float() for r in results]) if rows else torch.zeros(0, 4)  # (N, 4)
    scores = torch.cat([r.scores.float() for r in results]) if rows else torch.zeros(0)  # (N,)
    if keypoints.shape[1:] != (k, 3):
        raise ValueError(f"expected keypoints (N, {k}, 3), got {tuple(keypoints.shape)}")

    def repeat(values: Sequence[object]) -> list[object]:
        return [v for v, n in zip(values, counts, strict=True) for _ in range(n)]

    flat = pa.array(keypoints.reshape(-1).numpy(), pa.float32())
    columns = {
        "item": repeat([it.index for it in items]),
        "image_id": repeat([it.image_id for it in items]),
        "path": repeat([it.path for it in items]),
        "frame": repeat([it.frame for it in items]),
        "width": repeat([w for w, _ in sizes]),
        "height": repeat([h for _, h in sizes]),
        "person": [p for n in counts for p in range(n)],
        "track_id": [None] * rows,
        "score": scores.numpy(),
        "keypoints": pa.FixedSizeListArray.from_arrays(flat, 3 * k),
        "bbox": pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1).numpy(), pa.float32()), 4),
    }
    return pa.Table.from_pydict(columns, schema=person_schema(k))


def error_table(items: Sequence[Item], errors: Sequence[str]) -> pa.Table:
    """One row per item that could not be read or run."""
    return pa.Table.from_pydict(
        {
            "item": [it.index for it in items],
            "path": [it.path for it in items],
            "frame": [it.frame for it in items],
            "error": list(errors),
        },
        schema=ERROR_SCHEMA,
    )


def coco_entries(table: pa.Table) -> Iterator[dict]:
    """COCO keypoint results (``[x, y, score] * K`` flat, as ``pose predict`` writes them)."""
    for image_id, keypoints, score in zip(
        table.column("image_id").to_pylist(),
        table.column("keypoints").to_pylist(),
        table.column("score").to_pylist(),
        strict=True,
    ):
        yield {"image_id": image_id, "category_id": 1, "keypoints": keypoints, "score": score}


def jsonl_lines(table: pa.Table) -> Iterator[str]:
    """One JSON object per row, every column, in the table's order."""
    for row in table.to_pylist():
        yield json.dumps(row, separators=(",", ":"))
