"""Bulk jobs in one process: the output schema, shards, agreement with pose predict, resumption after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pose.bulk import BulkOptions, Item, JobMismatchError, run_batch
from pose.bulk.frames import Chunk
from pose.bulk.local import shape_batches
from pose.bulk.records import error_table, person_schema
from pose.bulk.store import ShardStore

from .bulk_data import CLIP_FRAMES, IMAGES, ITEMS, OPTIONS, SHARD_SIZE, STRIDE, output_files
from .conftest import ROOT


def test_cli_reports_a_bad_input_path_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pose", "batch", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"Error: {tmp_path / 'nowhere'} does not exist"]
    assert not (tmp_path / "out").exists()


# ---- shards and the manifest -------------------------------------------------------------------------------


def _job(fingerprint: str = "a") -> dict:
    return {"fingerprint": fingerprint, "items": 2}


def test_batches_hold_one_input_shape_and_never_span_shards() -> None:
    def chunk(shard: int, first: int, shapes: list[tuple[int, int] | None]) -> Chunk:
        items = [Item(first + i, f"{first + i}.jpg", None, first + i) for i in range(len(shapes))]
        images = [torch.zeros(h, w, 3, dtype=torch.uint8) if (h, w) != (0, 0) else None for h, w in shapes]
        return Chunk(shard, items, images, [None if im is not None else "unreadable" for im in images])

    square, wide = (64, 64), (64, 160)
    chunks = [chunk(0, 0, [square, wide, square]), chunk(0, 3, [square, (0, 0)]), chunk(1, 5, [wide, wide, square])]
    failures: list[tuple[int, int, str]] = []
    batches = list(shape_batches(chunks, 2, 256, lambda s, it, err: failures.append((s, it.index, err))))
    shards_and_items = [[(s, it.index) for s, it, _ in b] for b in batches]
    assert shards_and_items == [[(0, 0), (0, 2)], [(0, 1)], [(0, 3)], [(1, 5), (1, 6)], [(1, 7)]]
    assert all(len({image.shape for _, _, image in b}) == 1 for b in batches)
    assert failures == [(0, 4, "unreadable")]


def test_a_committed_shard_survives_reopening_and_a_tampered_one_is_redone(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, _job(), num_shards=2)
    assert store.open() == set()
    people = person_schema(17).empty_table()
    store.commit(0, people, error_table([], []), images=1)
    store.commit(1, people, error_table([], []), images=1)
    assert ShardStore(tmp_path, _job(), num_shards=2).open() == {0, 1}
    with (tmp_path / "poses" / "part-00001.parquet").open("ab") as f:
        f.write(b"torn")
    assert ShardStore(tmp_path, _job(), num_shards=2).open() == {0}
    with pytest.raises(JobMismatchError, match="holds another job"):
        ShardStore(tmp_path, _job("b"), num_shards=2).open()


# ---- a whole job -------------------------------------------------------------------------------------------


def test_bulk_rows_equal_the_predict_loop_image_by_image(bulk_local_run: Path, bulk_inputs: Path) -> None:
    from pose.api import PoseEstimator

    table = pq.read_table(bulk_local_run / "poses")
    assert table.schema == person_schema(17)
    est = PoseEstimator.from_repo(ROOT / "model_repo" / "synthetic_w16_256")
    for i in range(0, IMAGES, 3):
        image = est.read_image(bulk_inputs / f"{i:06d}.jpg")
        expected = est.predict(image)
        rows = table.filter(pa.compute.equal(table["item"], i)).to_pylist()
        assert len(rows) == len(expected.scores) > 0
        assert [r["person"] for r in rows] == list(range(len(rows)))
        got = torch.tensor([r["keypoints"] for r in rows]).view(-1, 17, 3)
        assert torch.equal(got, expected.keypoints.float())
        assert torch.equal(torch.tensor([r["score"] for r in rows]), expected.scores.float())
        assert torch.equal(torch.tensor([r["bbox"] for r in rows]), expected.boxes.float())
        assert {(r["width"], r["height"], r["frame"], r["track_id"]) for r in rows} == {(160, 160, None, None)}


def test_coco_results_are_the_bytes_pose_predict_writes(bulk_inputs: Path, tmp_path: Path) -> None:
    from pose.cli import predict

    folder = tmp_path / "images"
    folder.mkdir()
    for i in (3, 5):
        (folder / f"{i:06d}.jpg").write_bytes((bulk_inputs / f"{i:06d}.jpg").read_bytes())
    run_batch([str(folder)], tmp_path / "bulk", options=BulkOptions(batch_size=2, workers=0, progress=False))
    predict([folder], out=tmp_path / "predict")
    written = (tmp_path / "bulk" / "predictions.json").read_bytes()
    assert written == (tmp_path / "predict" / "predictions.json").read_bytes()
    assert {entry["image_id"] for entry in json.loads(written)} == {3, 5}


def test_bulk_outputs_agree_and_cover_every_item_once(bulk_local_run: Path, bulk_inputs: Path) -> None:
    table = pq.read_table(bulk_local_run / "poses")
    keys = list(zip(table["item"].to_pylist(), table["person"].to_pylist(), strict=True))
    assert keys == sorted(set(keys))  # ordered, no duplicates
    errors = [json.loads(line) for line in (bulk_local_run / "errors.jsonl").read_text().splitlines()]
    assert errors == [
        {"item": IMAGES, "path": str(bulk_inputs / "broken.jpg"), "frame": None, "error": "cannot decode the image"}
    ]
    frames = table.filter(pa.compute.is_valid(table["frame"]))
    assert set(frames["frame"].to_pylist()) <= set(range(0, CLIP_FRAMES, STRIDE))
    assert all(t is not None and t >= 1 for t in frames["track_id"].to_pylist())  # video rows are tracked
    images = table.filter(pa.compute.is_null(table["frame"]))
    assert images["track_id"].null_count == images.num_rows
    lines = (bulk_local_run / "poses.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == table.to_pylist()
    coco = json.loads((bulk_local_run / "predictions.json").read_text())
    assert [(c["image_id"], c["keypoints"], c["score"]) for c in coco] == [
        (r["image_id"], r["keypoints"], r["score"]) for r in table.to_pylist()
    ]
    assert all(c["category_id"] == 1 for c in coco)
    manifest = json.loads((bulk_local_run / "manifest.json").read_text())["shards"]
    assert len(manifest) == -(-ITEMS // SHARD_SIZE)
    assert sum(s["images"] + s["errors"] for s in manifest.values()) == ITEMS
    assert sum(s["people"] for s in manifest.values()) == table.num_rows
    overlays = sorted(p.name for p in (bulk_local_run / "overlays").iterdir())
    assert len(overlays) == ITEMS - 1 and overlays[-1] == f"{ITEMS - 1:07d}_clip_f{CLIP_FRAMES - 2:06d}.jpg"


def test_a_finished_job_rerun_skips_every_shard_and_changes_nothing(bulk_local_run: Path, bulk_inputs: Path) -> None:
    before = output_files(bulk_local_run)
    summary = run_batch([str(bulk_inputs)], bulk_local_run, options=BulkOptions(**OPTIONS, progress=False))
    assert summary.skipped_shards == summary.shards and summary.images == ITEMS - 1 and summary.errors == 1
    assert output_files(bulk_local_run) == before
    with pytest.raises(JobMismatchError, match="stride"):
        run_batch([str(bulk_inputs)], bulk_local_run, options=BulkOptions(stride=1, progress=False))


def test_a_job_killed_mid_run_resumes_to_the_uninterrupted_output(
    bulk_local_run: Path, bulk_inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pose", "batch", str(bulk_inputs), "--out", str(out), "--overlay"]
    command += ["--batch-size", "2", "--workers", "1", "--shard-size", str(SHARD_SIZE), "--stride", str(STRIDE)]
    command += ["--no-progress"]
    shards = -(-ITEMS // SHARD_SIZE)
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 300
    while not manifest.is_file() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    done = json.loads(manifest.read_text())["shards"]
    assert 1 <= len(done) < shards, "the job must be killed between its first and its last shard"
    assert not (out / "predictions.json").exists()

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"({len(done)} already done)" in rerun.stdout
    assert output_files(out) == output_files(bulk_local_run)


def test_video_rows_carry_the_track_ids_of_est_track_video(tmp_path: Path) -> None:
    # Ten frames of figures walking, in shards of three: the ids are assigned across shard borders, after
    # every shard is done, and equal those of tracking the video in one pass.
    from pose.api import PoseEstimator
    from pose.data.synthetic_video import VideoSceneConfig, render_video

    video = render_video(1, VideoSceneConfig(num_frames=10)).save(tmp_path / "walk.mp4")
    out = tmp_path / "out"
    run_batch([str(video)], out, options=BulkOptions(batch_size=4, shard_size=3, progress=False))
    table = pq.read_table(out / "poses")
    est = PoseEstimator.from_repo(ROOT / "model_repo" / "synthetic_w16_256")
    expected = {frame.index: tracked.track_ids.tolist() for frame, tracked in est.track_video(video)}
    got = {f: table.filter(pa.compute.equal(table["frame"], f))["track_id"].to_pylist() for f in expected}
    assert got == expected
    assert len({t for ids in expected.values() for t in ids}) >= 2
    before = output_files(out)  # a finished job: the pass rewrites nothing
    run_batch([str(video)], out, options=BulkOptions(batch_size=4, shard_size=3, progress=False))
    assert output_files(out) == before
