"""The bulk job on Ray Data: the item manifest as the source, an actor pool of models, Parquet as the sink.

Ray streams items through two ``map_batches`` stages: decoding in plain tasks on CPU slots (the same code
as the local DataLoader workers), then a pool of :class:`PoseActor` replicas (one per GPU with
``num_gpus=1``, or per group of CPU slots) that run the same :class:`~pose.pipeline.BatchPipeline`, whose
results do not depend on batching, so rows equal the local run's. Decoding apart from the models keeps a
GPU from waiting on JPEG decoding. Ray retries failed tasks, restarts dead actors, and writes the rows
with ``write_parquet``. When the write has finished, the driver commits the rows as the job's shards: the output
folder is then the same as a local run's, and a job can be resumed by either path. Until that commit a
Ray run is one unit: if the driver dies, the rerun skips only shards committed before it started.

Paths in the manifest and the output folder (for overlays) must be readable by every node: a shared file
system or a bucket.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pose.bulk.frames import read_items
from pose.bulk.inputs import InputError, Item
from pose.bulk.job import BulkOptions, ModelSpec, RayOptions
from pose.bulk.predict import predict_images, write_overlay
from pose.bulk.records import ERROR_SCHEMA, person_schema, person_table
from pose.bulk.store import ShardStore
from pose.pipeline import PoseResult

__all__ = ["PoseActor", "actor_schema", "run_ray"]
_ITEM_SCHEMA = pa.schema([("item", pa.int64()), ("path", pa.string()), ("frame", pa.int64()), ("image_id", pa.int64())])
# Decoded items between the two stages: HWC uint8 RGB pixels as bytes, or why the item could not be read.
_DECODED_SCHEMA = pa.schema(
    [
        *_ITEM_SCHEMA,
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("pixels", pa.large_binary()),
        pa.field("error", pa.string()),
    ]
)
log = logging.getLogger(__name__)


def _items(batch: pa.Table) -> list[Item]:
    return [Item(r["item"], r["path"], r["frame"], r["image_id"]) for r in batch.select(_ITEM_SCHEMA.names).to_pylist()]


def decode_rows(batch: pa.Table) -> pa.Table:
    """Stage one: manifest rows to pixels (a chunk of consecutive video frames is one seek)."""
    decoded = read_items(_items(batch))
    images = [d if isinstance(d, np.ndarray) else None for d in decoded]
    columns = {
        **{name: batch.column(name) for name in _ITEM_SCHEMA.names},
        "height": pa.array([im.shape[0] if im is not None else None for im in images], pa.int32()),
        "width": pa.array([im.shape[1] if im is not None else None for im in images], pa.int32()),
        "pixels": pa.array([im.tobytes() if im is not None else None for im in images], pa.large_binary()),
        "error": pa.array([d if isinstance(d, str) else None for d in decoded], pa.string()),
    }
    return pa.table(columns, schema=_DECODED_SCHEMA)


def actor_schema(num_keypoints: int) -> pa.Schema:
    """What the actors emit: person rows, and one row per failed item with ``error`` set and no person."""
    people = person_schema(num_keypoints)
    return pa.schema([f.with_nullable(True) for f in people] + [pa.field("error", pa.string())])


def _error_rows(failed: list[tuple[Item, str]], schema: pa.Schema) -> pa.Table:
    columns = {f.name: pa.nulls(len(failed), f.type) for f in schema}
    columns["item"] = pa.array([it.index for it, _ in failed], pa.int64())
    columns["path"] = pa.array([it.path for it, _ in failed], pa.string())
    columns["frame"] = pa.array([it.frame for it, _ in failed], pa.int64())
    columns["error"] = pa.array([message for _, message in failed], pa.string())
    return pa.table(columns, schema=schema)


class PoseActor:
    """Stage two, one model replica: decoded rows to person and error rows in :func:`actor_schema`."""

    def __init__(self, spec: ModelSpec, options: BulkOptions, out: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.est = spec.estimator()
        self.options = options
        self.overlays = Path(out) / "overlays"
        self.num_keypoints = self.est.config.keypoints.num_keypoints
        self.schema = actor_schema(self.num_keypoints)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok: list[tuple[Item, np.ndarray]] = []
        failed: list[tuple[Item, str]] = []
        rows = batch.select(["height", "width", "pixels", "error"]).to_pylist()
        for item, row in zip(_items(batch), rows, strict=True):
            if row["error"] is not None:
                failed.append((item, row["error"]))
            else:
                shape = (row["height"], row["width"], 3)
                ok.append((item, np.frombuffer(row["pixels"], np.uint8).reshape(shape)))
        scales = list(self.options.scales) if self.options.scales else None
        min_score = self.options.score_threshold(self.est.config)
        images = [im for _, im in ok]
        outcomes = predict_images(self.est.pipeline, images, self.options.flip, scales, min_score) if ok else []
        done: list[tuple[Item, tuple[int, int], PoseResult]] = []
        for (item, image), outcome in zip(ok, outcomes, strict=True):
            if isinstance(outcome, str):
                failed.append((item, outcome))
                continue
            done.append((item, (image.shape[1], image.shape[0]), outcome))
            if self.options.overlay:
                skeleton = self.est.config.keypoints.skeleton
                write_overlay(self.overlays, item, image, outcome, skeleton)
        people = person_table([d[0] for d in done], [d[1] for d in done], [d[2] for d in done], self.num_keypoints)
        people = people.append_column("error", pa.nulls(people.num_rows, pa.string())).cast(self.schema)
        return pa.concat_tables([people, _error_rows(failed, self.schema)])


def _manifest(pending: dict[int, list[Item]]) -> pa.Table:
    items = [it for shard in sorted(pending) for it in pending[shard]]
    return pa.table(
        {
            "item": [it.index for it in items],
            "path": [it.path for it in items],
            "frame": [it.frame for it in items],
            "image_id": [it.image_id for it in items],
        },
        schema=_ITEM_SCHEMA,
    )


def _connect(address: str | None) -> float:
    """Join the cluster (or start a local Ray); seconds it took."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray Data: pip install 'hrnet-pose-serving[cluster]'") from None

    start = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False, **_local_ray_config(address))
    return time.perf_counter() - start


def _local_ray_config(address: str | None) -> dict[str, Any]:
    """Ray runs its workers 15 nice levels below the driver; on a machine that also runs other work (a shared
    node, a laptop) the model replicas then get a few per cent of a core and the job crawls, 20x slower on
    2 cores shared 2:1. A local Ray started for this job is the user's foreground work: its workers keep the
    driver's priority. A cluster joined by address, or an explicit ``RAY_worker_niceness``, keeps its own."""
    if address is not None or "RAY_ADDRESS" in os.environ or "RAY_worker_niceness" in os.environ:
        return {}
    return {"_system_config": {"worker_niceness": 0}}


def _commit(store: ShardStore, pending: dict[int, list[Item]], rows: pa.Table, shard_size: int) -> None:
    """Split Ray's rows into the job's shards and commit each, as the local writer would."""
    rows = rows.sort_by("item")
    index = rows.column("item").to_numpy()
    failed = pc.is_valid(rows.column("error"))
    for shard in sorted(pending):
        lo, hi = np.searchsorted(index, [shard * shard_size, (shard + 1) * shard_size])
        part, bad = rows.slice(lo, hi - lo), failed.slice(lo, hi - lo)
        errors = part.filter(bad).select(ERROR_SCHEMA.names).cast(ERROR_SCHEMA)
        people = part.filter(pc.invert(bad)).select(store.schema.names).cast(store.schema)
        store.commit(shard, people, errors, images=len(pending[shard]) - errors.num_rows)


def _check_slots(cluster: RayOptions) -> None:
    """Actors hold their CPU slots for the whole run; decoding needs one more, or the job never starts."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    needed = cluster.actors * cluster.cpus_per_actor + cluster.decode_cpus
    if cpus < needed:
        log.warning(
            "the Ray cluster has %s CPU slots; %d actors x %s CPU plus %s for decoding need %s: the job waits for "
            "an autoscaler or hangs (lower --actors or --cpus-per-actor)",
            cpus,
            cluster.actors,
            cluster.cpus_per_actor,
            cluster.decode_cpus,
            needed,
        )


def run_ray(
    store: ShardStore, pending: dict[int, list[Item]], spec: ModelSpec, options: BulkOptions, cluster: RayOptions
) -> dict[str, Any]:
    """Run the pending shards on Ray Data and commit them; returns Ray's timings."""
    import ray

    connect_s = _connect(cluster.address)
    manifest = _manifest(pending)
    size = options.batch_size
    blocks = [manifest.slice(i, size) for i in range(0, manifest.num_rows, size)]
    threads = max(1, int(cluster.cpus_per_actor))  # torch threads follow the reserved slots, GPU or not
    _check_slots(cluster)
    decoded = ray.data.from_arrow(blocks).map_batches(
        decode_rows, batch_size=options.chunk_size, batch_format="pyarrow", num_cpus=cluster.decode_cpus
    )
    dataset = decoded.map_batches(
        PoseActor,
        fn_constructor_args=(spec, options, str(store.out), threads),
        batch_size=size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cluster.actors),
        num_gpus=cluster.gpus_per_actor or None,
        num_cpus=cluster.cpus_per_actor,
    )
    staging = store.out / ".ray-output"
    shutil.rmtree(staging, ignore_errors=True)
    start = time.perf_counter()
    dataset.write_parquet(str(staging))
    run_s = time.perf_counter() - start
    files = sorted(staging.glob("*.parquet")) if staging.is_dir() else []
    schema = actor_schema(store.num_keypoints)
    rows = pa.concat_tables([pq.read_table(f).cast(schema) for f in files]) if files else schema.empty_table()
    _commit(store, pending, rows, options.shard_size)
    shutil.rmtree(staging, ignore_errors=True)
    return {"ray_connect_s": connect_s, "ray_run_s": run_s, "ray_files": len(files)}
