"""The bulk job on Ray Data (a local Ray with two CPUs) writes exactly what the local job writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pose.bulk import BulkOptions, RayOptions, run_batch
from pose.bulk.ray_job import _local_ray_config
from pose.data.synthetic import SceneConfig, render_scene

from .bulk_data import ITEMS, OPTIONS, SHARD_SIZE, output_files
from .conftest import ROOT

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]')")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Workers import this checkout, not whichever copy of the package the interpreter has installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=3,  # two for the model replicas, one for the decoding tasks beside them
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
        **_local_ray_config(None),  # what `pose batch --ray` starts
    )
    yield
    ray.shutdown()


def test_a_local_rays_workers_keep_the_drivers_priority(local_ray: None) -> None:
    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)  # not 15 below it, starved by any other work on the node


def test_a_joined_cluster_or_an_explicit_niceness_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    assert _local_ray_config(None) == {"_system_config": {"worker_niceness": 0}}
    assert _local_ray_config("ray://head:10001") == {}
    monkeypatch.setenv("RAY_worker_niceness", "5")
    assert _local_ray_config(None) == {}


def test_ray_job_with_a_pool_of_actors_equals_the_local_job(
    local_ray: None, bulk_inputs: Path, bulk_local_run: Path, tmp_path: Path
) -> None:
    """Two single-threaded replicas: the same rows, in the same order, the same errors. Coordinates agree to
    float rounding only, since a single-threaded convolution sums in another order than the local job's two
    threads; with the local job's thread count the files are identical (next test)."""
    out = tmp_path / "ray"
    summary = run_batch(
        [str(bulk_inputs)],
        out,
        options=BulkOptions(**OPTIONS, progress=False),
        ray=RayOptions(actors=2, cpus_per_actor=1),
    )
    assert summary.engine == "ray" and summary.errors == 1 and summary.images == ITEMS - 1
    assert summary.extra["ray_files"] >= 1 and not (out / ".ray-output").exists()
    got, want = pq.read_table(out / "poses"), pq.read_table(bulk_local_run / "poses")
    assert got.schema == want.schema and got.num_rows == want.num_rows > 0
    exact = ["item", "image_id", "path", "frame", "width", "height", "person", "track_id"]
    assert got.select(exact) == want.select(exact)
    for column in ("keypoints", "bbox", "score"):
        np.testing.assert_allclose(_values(got, column), _values(want, column), rtol=1e-5, atol=1e-4)
    for name in ("errors.jsonl", "errors/part-00002.parquet"):
        assert (out / name).read_bytes() == (bulk_local_run / name).read_bytes()
    assert len(list((out / "overlays").iterdir())) == ITEMS - 1


@pytest.mark.long
def test_a_few_hundred_images_on_ray_equal_the_local_job(local_ray: None, tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(240):
        image = render_scene(np.random.default_rng([7, i]), SceneConfig(size=(128, 128), people=(1, 3)))[0]
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    options = BulkOptions(batch_size=16, shard_size=64, flip=False, progress=False)
    local = run_batch([str(folder)], tmp_path / "local", options=options)
    on_ray = run_batch([str(folder)], tmp_path / "ray", options=options, ray=RayOptions(actors=2, cpus_per_actor=1))
    assert local.images == on_ray.images == 240 and local.errors == on_ray.errors == 0
    got, want = pq.read_table(tmp_path / "ray" / "poses"), pq.read_table(tmp_path / "local" / "poses")
    assert got.num_rows == want.num_rows > 240
    exact = ["item", "image_id", "path", "frame", "width", "height", "person", "track_id"]
    assert got.select(exact) == want.select(exact)
    for column in ("keypoints", "bbox", "score"):
        np.testing.assert_allclose(_values(got, column), _values(want, column), rtol=1e-5, atol=1e-4)


def _values(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table.column(column).to_pylist(), dtype=np.float64)


def test_ray_finishes_a_job_the_local_path_started_file_for_file(
    local_ray: None, bulk_inputs: Path, bulk_local_run: Path, tmp_path: Path
) -> None:
    """Shards are the same unit on both paths: Ray runs only the shards missing from the folder, and one
    replica with the local job's two threads writes the very same bytes."""
    out = tmp_path / "mixed"
    for name in output_files(bulk_local_run):
        if name.startswith(("poses/", "errors/", "overlays/")) or name in ("job.json", "manifest.json"):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes((bulk_local_run / name).read_bytes())
    for shard in (1, 2):  # as if the local job had died before these two
        (out / "poses" / f"part-{shard:05d}.parquet").unlink()
    summary = run_batch(
        [str(bulk_inputs)], out, options=BulkOptions(**OPTIONS, progress=False), ray=RayOptions(cpus_per_actor=2)
    )
    assert summary.skipped_shards == summary.shards - 2 == -(-ITEMS // SHARD_SIZE) - 2
    assert output_files(out) == output_files(bulk_local_run)
