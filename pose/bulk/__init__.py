"""Bulk inference over folders, manifests, buckets and videos."""

from pose.bulk.inputs import InputError, Item, collect_items

__all__ = ["InputError", "Item", "collect_items"]
