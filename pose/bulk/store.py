"""The output folder of a bulk job: shards committed atomically, a manifest of what is done, final files.

Layout of ``OUT``::

    job.json                 what the job is (inputs, model, options, fingerprint); a rerun must match it
    manifest.json            finished shards with their row counts and checksums
    poses/part-00000.parquet one Parquet file per shard, one row per person (a Parquet dataset)
    errors/part-00000.parquet items of that shard that could not be read or run
    predictions.json         COCO keypoint results of the whole job      } written once every shard
    poses.jsonl              the Parquet rows as JSON Lines               } is done, from the shards
    errors.jsonl             unreadable items, one per line               }

Each file is written to a hidden temporary name and renamed into place, and a shard counts as done only
once the manifest (itself replaced atomically) lists it with the checksum of its files. A job killed at
any instant therefore leaves whole shards or nothing; the rerun skips the listed shards and recomputes
the rest, and since results do not depend on batching, the final files equal an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pose.bulk.records import ERROR_SCHEMA, coco_entries, jsonl_lines, person_schema

__all__ = ["JobMismatchError", "ShardStore", "ShardSummary"]

MANIFEST_VERSION = 1


class JobMismatchError(ValueError):
    """The output folder holds a different job: resuming into it would mix two jobs' results."""


@dataclass(frozen=True)
class ShardSummary:
    images: int
    people: int
    errors: int
    sha256: str


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _replace(path: Path, write: Any) -> None:
    """Write through ``write(tmp_path)`` to a hidden temporary, flush it to disk, rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _replace(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


class ShardStore:
    """Reads and commits the shards of one job in ``out``; not thread-safe (one writer commits)."""

    def __init__(self, out: str | Path, job: dict[str, Any], num_shards: int, num_keypoints: int = 17) -> None:
        self.out = Path(out)
        self.job = job
        self.num_shards = num_shards
        self.num_keypoints = num_keypoints
        self.schema = person_schema(num_keypoints)
        self.poses_dir = self.out / "poses"
        self.errors_dir = self.out / "errors"
        self._done: dict[int, ShardSummary] = {}

    def open(self) -> set[int]:
        """Create the folder or check it holds this job; returns the shards already done."""
        self.poses_dir.mkdir(parents=True, exist_ok=True)
        self.errors_dir.mkdir(parents=True, exist_ok=True)
        job_file = self.out / "job.json"
        if job_file.is_file():
            old = json.loads(job_file.read_text())
            if old.get("fingerprint") != self.job["fingerprint"]:
                changed = sorted(k for k in self.job if k != "fingerprint" and old.get(k) != self.job[k])
                raise JobMismatchError(
                    f"{self.out} holds another job (differs in: {', '.join(changed) or 'inputs'}); "
                    "use a new --out folder or delete this one"
                )
        else:
            _write_json(job_file, self.job)
        for folder in (self.out, self.poses_dir, self.errors_dir, self.out / "overlays"):
            for stale in folder.glob(".*.tmp"):  # left by a killed run
                stale.unlink()
        manifest = self.out / "manifest.json"
        entries = json.loads(manifest.read_text())["shards"] if manifest.is_file() else {}
        for key, entry in entries.items():
            shard = int(key)
            files = self._files(shard)
            if all(f.is_file() for f in files) and _sha256(*files) == entry["sha256"]:
                self._done[shard] = ShardSummary(**entry)
        return set(self._done)

    def _files(self, shard: int) -> tuple[Path, Path]:
        name = f"part-{shard:05d}.parquet"
        return self.poses_dir / name, self.errors_dir / name

    def commit(self, shard: int, people: pa.Table, errors: pa.Table, images: int) -> None:
        """Write one shard's files, then list it in the manifest: the commit point."""
        poses_file, errors_file = self._files(shard)
        people = people.sort_by([("item", "ascending"), ("person", "ascending")]).cast(self.schema)
        errors = errors.sort_by([("item", "ascending")]).cast(ERROR_SCHEMA)
        _replace(poses_file, lambda tmp: pq.write_table(people, tmp, compression="zstd"))
        _replace(errors_file, lambda tmp: pq.write_table(errors, tmp, compression="zstd"))
        self._done[shard] = ShardSummary(images, people.num_rows, errors.num_rows, _sha256(poses_file, errors_file))
        self._write_manifest()

    def read_people(self, shard: int) -> pa.Table:
        """A committed shard's person rows."""
        return pq.read_table(self._files(shard)[0]).cast(self.schema)

    def replace_people(self, shard: int, people: pa.Table) -> None:
        """Rewrite a committed shard's person rows (same rows, new values) and its manifest checksum.

        Killed between the two steps, the shard no longer matches the manifest and is run again on resume.
        """
        summary = self._done[shard]
        if people.num_rows != summary.people:
            raise ValueError(f"shard {shard} has {summary.people} person rows, not {people.num_rows}")
        poses_file, errors_file = self._files(shard)
        _replace(poses_file, lambda tmp: pq.write_table(people.cast(self.schema), tmp, compression="zstd"))
        self._done[shard] = ShardSummary(
            summary.images, summary.people, summary.errors, _sha256(poses_file, errors_file)
        )
        self._write_manifest()

    def _write_manifest(self) -> None:
        shards = {str(k): vars(v) for k, v in sorted(self._done.items())}
        _write_json(self.out / "manifest.json", {"version": MANIFEST_VERSION, "shards": shards})

    @property
    def done(self) -> dict[int, ShardSummary]:
        return dict(self._done)

    def _tables(self, directory: Path) -> Iterator[pa.Table]:
        for shard in range(self.num_shards):
            yield pq.read_table(directory / f"part-{shard:05d}.parquet")

    def finalize(self) -> None:
        """Write the job-wide files from the shards, in item order; needs every shard done."""
        missing = [s for s in range(self.num_shards) if s not in self._done]
        if missing:
            raise RuntimeError(f"{len(missing)} shards are not done yet (first: {missing[0]})")

        def write_coco(tmp: Path) -> None:
            with tmp.open("w") as f:  # streamed, byte for byte what json.dumps(list) writes
                f.write("[")
                first = True
                for table in self._tables(self.poses_dir):
                    for entry in coco_entries(table):
                        f.write(("" if first else ", ") + json.dumps(entry))
                        first = False
                f.write("]")

        def write_lines(directory: Path) -> Any:
            def write(tmp: Path) -> None:
                with tmp.open("w") as f:
                    for table in self._tables(directory):
                        f.writelines(line + "\n" for line in jsonl_lines(table))

            return write

        _replace(self.out / "predictions.json", write_coco)
        _replace(self.out / "poses.jsonl", write_lines(self.poses_dir))
        _replace(self.out / "errors.jsonl", write_lines(self.errors_dir))
