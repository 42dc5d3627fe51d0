"""Bulk inference over folders, manifests, buckets and videos: batched, resumable, local or on Ray Data.

>>> from pose.bulk import run_batch
>>> run_batch(["photos/"], "out/")                              # doctest: +SKIP
"""

from pose.bulk.inputs import InputError, Item, collect_items
from pose.bulk.job import BulkOptions, BulkSummary, ModelSpec, RayOptions, run_batch
from pose.bulk.store import JobMismatchError

__all__ = [
    "BulkOptions",
    "BulkSummary",
    "InputError",
    "Item",
    "JobMismatchError",
    "ModelSpec",
    "RayOptions",
    "collect_items",
    "run_batch",
]
