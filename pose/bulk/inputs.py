"""A bulk job's inputs as one ordered list of items: images, and video frames at a stride.

Inputs are folders (searched recursively for images and videos), glob patterns, text/CSV/Parquet manifests
of paths, single images and videos. Paths with a scheme (``s3://bucket/prefix``, ``gs://``, ``file://``)
name objects in a bucket, read through pyarrow's file systems. The list is planned once, before any pixel
is decoded, so that the same inputs always give the same items in the same order: shards, resumption and
the Ray path all rely on that. A missing or unreadable *image* does not stop planning (it is reported per
item when decoded); a missing *input argument* does, since it is almost always a typo.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pose.errors import VideoReadError
from pose.video import VIDEO_SUFFIXES, probe

__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST_SUFFIXES",
    "VIDEO_SUFFIXES",
    "InputError",
    "Item",
    "collect_items",
    "is_uri",
    "local_path",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".csv", ".parquet"})
_GLOB_CHARS = frozenset("*?[")


class InputError(ValueError):
    """An input argument that names nothing usable: the job does not start."""


@dataclass(frozen=True)
class Item:
    """One image to run: a file, or one frame of a video."""

    index: int  # position in the job, 0..n-1; output rows are ordered by it
    path: str
    frame: int | None  # video frame index; None for an image file
    image_id: int  # COCO ``image_id`` of its results


def is_uri(path: str) -> bool:
    return "://" in path


def local_path(path: str) -> str | None:
    """The file system path of a local path or ``file://`` URI; None for an object in a remote bucket."""
    if not is_uri(path):
        return path
    return path.removeprefix("file://") if path.startswith("file://") else None


def _suffix(path: str) -> str:
    return PurePosixPath(path.split("?", 1)[0]).suffix.lower()


def _uri_files(uri: str) -> list[str]:
    """Images and videos under a bucket prefix, or the object itself, as URIs."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.NotFound:
        raise InputError(f"{uri} does not exist")
    if info.type == fs.FileType.File:
        return [uri]
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    media = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    return sorted(f"{scheme}://{f.path}" for f in found if f.type == fs.FileType.File and _suffix(f.path) in media)


def _manifest_paths(path: Path) -> list[str]:
    """Paths listed in a manifest; relative ones are taken from the manifest's folder."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "path" not in table.column_names:
            raise InputError(f"{path}: a Parquet manifest needs a 'path' column, found {table.column_names}")
        entries = [str(p) for p in table.column("path").to_pylist() if p]
    elif suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise InputError(f"{path}: empty manifest")
        column = rows[0].index("path") if "path" in rows[0] else 0
        body = rows[1:] if "path" in rows[0] else rows
        entries = [row[column].strip() for row in body if len(row) > column and row[column].strip()]
    else:
        lines = (line.strip() for line in path.read_text().splitlines())
        entries = [line for line in lines if line and not line.startswith("#")]
    return [e if is_uri(e) or Path(e).is_absolute() else str(path.parent / e) for e in entries]


def _expand(arg: str) -> list[str]:
    """One command-line input to the media files it names, in a stable order."""
    if is_uri(arg):
        return _uri_files(arg)
    path = Path(arg)
    if path.is_dir():
        media = IMAGE_SUFFIXES | VIDEO_SUFFIXES
        return [str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in media and p.is_file()]
    if path.is_file():
        return _manifest_paths(path) if path.suffix.lower() in MANIFEST_SUFFIXES else [str(path)]
    if _GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise InputError(f"{arg} matches no files")
        return [f for m in matches for f in (_expand(m) if Path(m).is_dir() else [m])]
    raise InputError(f"{arg} does not exist")


def _frame_count(path: str) -> int | None:
    """Frames in a video, from its header; None when it cannot be opened (then it is one failed item)."""
    local = local_path(path)
    if local is None:
        raise InputError(f"{path}: videos are read from local or mounted paths only")
    try:
        return probe(local).num_frames
    except (VideoReadError, FileNotFoundError):
        return None


def _media(files: Iterable[str], stride: int) -> list[tuple[str, int | None]]:
    """(path, frame) pairs: one per image, one per ``stride``-th video frame; repeats dropped."""
    seen: set[tuple[str, int | None]] = set()
    out: list[tuple[str, int | None]] = []
    for path in files:
        count = _frame_count(path) if _suffix(path) in VIDEO_SUFFIXES else None
        frames: Iterable[int | None] = [None] if count is None else range(0, count, stride)
        for frame in frames:
            key = (path, frame)
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


def _image_ids(media: Sequence[tuple[str, int | None]]) -> list[int]:
    """COCO ids from the digits of image file names (000000000785.jpg -> 785) when every item is an image
    named so and no two share an id; otherwise each item's index, so ids are always unique."""
    stems = [PurePosixPath(p).stem for p, frame in media]
    if all(frame is None for _, frame in media) and all(s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(len(media)))


def collect_items(inputs: Sequence[str | Path], stride: int = 1) -> list[Item]:
    """Expand the inputs into the job's items; raises :class:`InputError` naming the first bad input."""
    if stride < 1:
        raise InputError(f"the frame stride must be at least 1, got {stride}")
    if not inputs:
        raise InputError("no inputs given")
    files = [f for arg in inputs for f in _expand(str(arg))]
    media = _media(files, stride)
    if not media:
        raise InputError("no images or videos found in " + ", ".join(str(i) for i in inputs))
    ids = _image_ids(media)
    return [Item(i, path, frame, ids[i]) for i, (path, frame) in enumerate(media)]
