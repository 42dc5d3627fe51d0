"""A bulk job end to end: plan the items, open (or resume) the output folder, run, write the final files.

>>> summary = run_batch(["photos/", "clips/*.mp4"], "out/")       # doctest: +SKIP
>>> summary.images, summary.people, summary.errors                 # doctest: +SKIP

The same job runs in this process (a DataLoader decoding ahead of the network, see
:mod:`pose.bulk.local`) or on a Ray cluster (:mod:`pose.bulk.ray_job`); both commit the same shards, so a
job may even be started on one and finished on the other.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pose.bulk.inputs import InputError, Item, collect_items
from pose.bulk.store import ShardStore
from pose.bulk.tracks import assign_track_ids
from pose.config import DEFAULT_MODEL, ModelConfig, check_scales, load_model_config
from pose.runtimes.options import BackendName, Precision
from pose.tracking import TrackerConfig

if TYPE_CHECKING:
    from pose.api import PoseEstimator

__all__ = ["BulkOptions", "BulkSummary", "ModelSpec", "RayOptions", "run_batch"]


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load, kept as paths so that Ray actors can load it where they run."""

    model: str = str(DEFAULT_MODEL)
    weights: str | None = None
    device: str = "cpu"
    backend: BackendName = "auto"  # the runtime, chosen as pose predict and the service choose it
    precision: Precision = "float32"

    def estimator(self) -> PoseEstimator:
        """The model loaded on its runtime (in this process, or in a Ray actor)."""
        from pose.api import PoseEstimator

        return PoseEstimator.from_config(
            self.model, weights=self.weights, device=self.device, backend=self.backend, precision=self.precision
        )

    def config(self) -> ModelConfig:
        try:
            return load_model_config(self.model)
        except FileNotFoundError as err:
            raise InputError(str(err)) from None

    def weights_path(self, config: ModelConfig) -> Path | None:
        return Path(self.weights) if self.weights else config.resolve(config.weights)


@dataclass(frozen=True)
class BulkOptions:
    """How to run; only ``stride``, ``shard_size``, ``flip``, ``scales``, ``min_score`` and ``overlay`` change
    the output, and a rerun into the same folder must keep them."""

    batch_size: int = 8  # images per network forward (one input shape per forward)
    workers: int | None = None  # DataLoader decoding processes; 0 decodes in the main process; None: auto
    shard_size: int = 256  # items per committed shard: the unit of resumption
    chunk_size: int = 8  # consecutive items a worker decodes at once (one video seek per chunk)
    stride: int = 1  # every stride-th video frame
    flip: bool | None = None  # flip test; None = the model's setting
    scales: tuple[float, ...] | None = None  # test scales; None = the model's
    overlay: bool = False  # also write skeleton overlays to OUT/overlays
    min_score: float | None = None  # keep poses scoring at least this; None = the model's score_threshold
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_size", "chunk_size", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must not be negative, got {self.workers}")
        if self.scales is not None:
            check_scales(list(self.scales))
        if self.min_score is not None and self.min_score < 0:
            raise ValueError(f"min_score must not be negative, got {self.min_score}")

    def score_threshold(self, config: ModelConfig) -> float:
        """The kept poses' lowest score: as ``pose predict`` and the service keep them."""
        return config.test.score_threshold if self.min_score is None else self.min_score


@dataclass(frozen=True)
class RayOptions:
    """Ray Data settings: ``actors`` model replicas, each holding ``gpus_per_actor`` GPUs (then one model
    per GPU) or ``cpus_per_actor`` CPU slots; decoding runs in tasks of ``decode_cpus`` slots beside them."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local Ray started for the job
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    decode_cpus: float = 1.0


@dataclass
class BulkSummary:
    out: Path
    items: int
    images: int  # items run (items minus errors)
    people: int
    errors: int
    shards: int
    skipped_shards: int  # already done before this run
    seconds: float
    images_per_s: float  # of the items this run processed
    engine: str = "local"
    extra: dict[str, Any] = field(default_factory=dict)


def _sha256_file(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _job_record(
    inputs: Sequence[str], items: list[Item], spec: ModelSpec, config: ModelConfig, options: BulkOptions
) -> dict[str, Any]:
    """What determines the output; its fingerprint must match for a rerun to resume."""
    listing = hashlib.sha256("\n".join(f"{it.path}\t{it.frame}\t{it.image_id}" for it in items).encode()).hexdigest()
    record: dict[str, Any] = {
        "inputs": list(inputs),
        "items": len(items),
        "items_sha256": listing,
        "model": config.name,
        "model_version": config.version,
        "keypoints": config.keypoints.num_keypoints,
        "weights_sha256": _sha256_file(spec.weights_path(config)),
        "rescore_sha256": _sha256_file(config.resolve(config.rescore_weights)),
        "flip": config.test.flip if options.flip is None else options.flip,
        "scales": sorted(options.scales or config.test.scales, reverse=True),
        "stride": options.stride,
        "shard_size": options.shard_size,
        "overlay": options.overlay,
        "min_score": options.score_threshold(config),
        "tracking": asdict(TrackerConfig()),  # video rows' track ids
    }
    if spec.precision != "float32":  # recorded only when asked, so jobs started before the option still resume
        record["precision"] = spec.precision
    record["fingerprint"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def shards_of(items: list[Item], shard_size: int) -> list[list[Item]]:
    return [items[i : i + shard_size] for i in range(0, len(items), shard_size)]


def run_batch(
    inputs: Sequence[str | Path],
    out: str | Path,
    model: ModelSpec | None = None,
    options: BulkOptions | None = None,
    ray: RayOptions | None = None,
) -> BulkSummary:
    """Run (or resume) a bulk job into ``out``; ``ray`` runs it on Ray Data instead of in this process.

    Raises :class:`~pose.bulk.inputs.InputError` for inputs that name nothing and
    :class:`~pose.bulk.store.JobMismatchError` when ``out`` holds a different job.
    """
    spec = model or ModelSpec()
    options = options or BulkOptions()
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"the output {out} is a file, not a folder")
    config = spec.config()
    names = [str(i) for i in inputs]
    items = collect_items(names, options.stride)
    shards = shards_of(items, options.shard_size)
    k = config.keypoints.num_keypoints
    store = ShardStore(out, _job_record(names, items, spec, config, options), len(shards), k)
    done = store.open()
    pending = {s: shard for s, shard in enumerate(shards) if s not in done}
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if pending and ray is not None:
        from pose.bulk.ray_job import run_ray

        extra = run_ray(store, pending, spec, options, ray)
    elif pending:
        from pose.bulk.local import run_local

        run_local(store, pending, spec, options)
    assign_track_ids(store, items, options.shard_size, sigmas=config.keypoints.sigmas)
    seconds = time.perf_counter() - start
    store.finalize()
    summaries = store.done.values()
    processed = sum(len(shard) for shard in pending.values())
    return BulkSummary(
        out=Path(out),
        items=len(items),
        images=sum(s.images for s in summaries),
        people=sum(s.people for s in summaries),
        errors=sum(s.errors for s in summaries),
        shards=len(shards),
        skipped_shards=len(done),
        seconds=seconds,
        images_per_s=processed / seconds if processed and seconds > 0 else 0.0,
        engine="ray" if ray is not None else "local",
        extra=extra,
    )
