"""Bulk job inputs: planning folders, globs, manifests, URIs and videos into items, and decoding them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pose.bulk import InputError, Item, collect_items
from pose.bulk.frames import read_items

from .bulk_data import CLIP_FRAMES, STRIDE

# ---- planning: which items a job has ----------------------------------------------------------------------


def _touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / name), np.zeros((8, 8, 3), np.uint8))


def test_folders_globs_and_manifests_expand_in_a_stable_order_without_repeats(tmp_path: Path) -> None:
    _touch_images(tmp_path / "a", ["2.jpg", "1.png"])
    _touch_images(tmp_path / "a" / "sub", ["3.jpg"])
    (tmp_path / "a" / "notes.md").write_text("not media")
    (tmp_path / "list.txt").write_text("# a comment\na/2.jpg\n\nmissing.jpg\n")
    (tmp_path / "list.csv").write_text("id,path\n7,a/1.png\n")
    pq.write_table(pa.table({"path": [str(tmp_path / "a" / "sub" / "3.jpg")]}), tmp_path / "list.parquet")

    folder = collect_items([tmp_path / "a"])
    assert [Path(it.path).relative_to(tmp_path).as_posix() for it in folder] == ["a/1.png", "a/2.jpg", "a/sub/3.jpg"]
    assert [it.image_id for it in folder] == [1, 2, 3]  # digits of the names, as COCO file names carry them

    globbed = collect_items([str(tmp_path / "a" / "*.jpg"), str(tmp_path / "a")])
    assert [Path(it.path).name for it in globbed] == ["2.jpg", "1.png", "3.jpg"]  # 2.jpg once
    assert [it.index for it in globbed] == [0, 1, 2]

    listed = collect_items([tmp_path / "list.txt", tmp_path / "list.csv", tmp_path / "list.parquet"])
    assert [Path(it.path).name for it in listed] == ["2.jpg", "missing.jpg", "1.png", "3.jpg"]
    # a missing file named by a manifest is a failed item later, not a planning error
    assert [it.image_id for it in listed] == [0, 1, 2, 3]  # 'missing' has no digits: every id is the index


def test_video_frames_are_items_at_the_stride(bulk_inputs: Path) -> None:
    items = collect_items([bulk_inputs / "clip.avi"], stride=STRIDE)
    assert [it.frame for it in items] == list(range(0, CLIP_FRAMES, STRIDE))
    assert [it.image_id for it in items] == [0, 1, 2]


def test_file_uris_are_read_through_pyarrow_file_systems(bulk_inputs: Path) -> None:
    by_uri = collect_items([f"file://{bulk_inputs}"], stride=STRIDE)
    by_path = collect_items([bulk_inputs], stride=STRIDE)
    assert [it.path for it in by_uri] == [f"file://{it.path}" for it in by_path]
    first = read_items(by_uri[:1])[0]
    assert isinstance(first, np.ndarray) and np.array_equal(first, read_items(by_path[:1])[0])


@pytest.mark.parametrize(
    ("argument", "message"),
    [("nowhere/", "does not exist"), ("nowhere/*.jpg", "matches no files"), ("empty", "no images or videos")],
)
def test_inputs_that_name_nothing_stop_the_job_with_their_name(tmp_path: Path, argument: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=message):
        collect_items([str(tmp_path / argument)])


# ---- decoding ----------------------------------------------------------------------------------------------


def test_video_frames_read_in_chunks_equal_a_sequential_read(bulk_inputs: Path) -> None:
    capture = cv2.VideoCapture(str(bulk_inputs / "clip.avi"))
    sequential = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(CLIP_FRAMES)]
    items = collect_items([bulk_inputs / "clip.avi"], stride=1)
    for chunk in ([items[3], items[4]], [items[5]], [items[0], items[2]], [items[4], items[1]]):
        for item, frame in zip(chunk, read_items(chunk), strict=True):
            assert isinstance(frame, np.ndarray) and np.array_equal(frame, sequential[item.frame]), item


def test_unreadable_items_become_messages_not_exceptions(bulk_inputs: Path, tmp_path: Path) -> None:
    good, broken = collect_items([bulk_inputs / "000000.jpg", bulk_inputs / "broken.jpg"])
    gone = Item(2, str(tmp_path / "gone.jpg"), None, 2)
    past_end = Item(3, str(bulk_inputs / "clip.avi"), CLIP_FRAMES + 5, 3)
    decoded = read_items([good, broken, gone, past_end])
    assert isinstance(decoded[0], np.ndarray) and decoded[0].shape == (160, 160, 3)
    assert decoded[1:] == ["cannot decode the image", "no such file", f"cannot decode frame {CLIP_FRAMES + 5}"]
