"""Video decoding and writing: probe, stride and limits, display rotation, damaged files, the shared clips."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pose.errors import VideoReadError
from pose.video import VideoWriter, iter_frames, probe, read_frames_at


def _pattern(i: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A frame whose content says its number: a bright bar moving right, big enough to survive encoding."""
    image = np.full((h, w, 3), 40, np.uint8)
    x = 8 * i % (w - 16)
    image[:, x : x + 16] = (230, 200, 30)
    image[: h // 3, : w // 4] = (20, 20, 220)  # top-left marker: shows which way is up
    return image


def _write(path: Path, n: int = 20, fps: float = 25.0, rotation: int = 0) -> Path:
    """An H.264 MP4 of ``n`` pattern frames, with a display rotation if asked."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_probe_reads_size_rate_and_length(tmp_path: Path) -> None:
    info = probe(_write(tmp_path / "a.mp4", n=30, fps=25))
    assert (info.width, info.height, info.num_frames, info.rotation) == (128, 96, 30, 0)
    assert info.fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(1.2, abs=0.05)
    assert info.codec == "h264"


def test_frames_come_back_in_order_at_their_times(tmp_path: Path) -> None:
    frames = list(iter_frames(_write(tmp_path / "a.mp4", n=20)))
    assert [f.index for f in frames] == list(range(20))
    assert [f.time_s for f in frames] == pytest.approx([i / 25 for i in range(20)])
    for f in frames:
        assert np.abs(f.image.astype(int) - _pattern(f.index)).mean() < 6  # lossy, but the same picture


def test_stride_and_limits_pick_the_frames_asked_for(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.mp4", n=20)
    assert [f.index for f in iter_frames(path, stride=3)] == [0, 3, 6, 9, 12, 15, 18]
    assert [f.index for f in iter_frames(path, stride=2, max_frames=4)] == [0, 2, 4, 6]
    assert [f.index for f in iter_frames(path, max_duration_s=0.2)] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="stride"):
        next(iter_frames(path, stride=0))


def test_frames_at_indices_equal_the_sequential_decode(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.mp4", n=40)
    every = [f.image for f in iter_frames(path)]
    picked = list(read_frames_at(path, [3, 17, 18, 39, 45]))
    for got, index in zip(picked[:4], [3, 17, 18, 39], strict=True):
        assert isinstance(got, np.ndarray) and np.array_equal(got, every[index])
    assert picked[4] == "cannot decode frame 45"
    assert list(read_frames_at(tmp_path / "missing.mp4", [0, 1])) == ["cannot open the video"] * 2


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_display_rotation_is_applied_as_a_player_would(tmp_path: Path, rotation: int) -> None:
    path = _write(tmp_path / "r.mp4", n=3, rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((96, 128) if rotation in (90, 270) else (128, 96))
    first = next(iter_frames(path)).image
    assert first.shape[:2] == (info.height, info.width)
    expected = np.rot90(_pattern(0), rotation // 90)  # counter-clockwise, as the display matrix says
    assert np.abs(first.astype(int) - expected).mean() < 6
    capture = cv2.VideoCapture(str(path))  # OpenCV applies the rotation too: the two readers agree
    ok, bgr = capture.read()
    capture.release()
    assert ok and np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int) - first).mean() < 3


def test_a_file_that_is_not_a_video_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video at all" * 100)
    with pytest.raises(VideoReadError):
        probe(junk)
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError):
        list(iter_frames(empty))


def test_a_truncated_video_is_refused_or_yields_only_its_intact_frames(tmp_path: Path) -> None:
    data = _write(tmp_path / "a.mp4", n=30).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: nothing can be read
    with pytest.raises(VideoReadError):
        probe(cut)


def test_writer_makes_an_h264_mp4_that_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "o.mp4"
    with VideoWriter(out, fps=12.5) as writer:
        for i in range(10):
            writer.write(_pattern(i, 95, 127))  # odd sizes are cut to even ones
    assert writer.codec == "libx264"
    info = probe(out)
    assert (info.width, info.height, info.num_frames, info.codec) == (126, 94, 10, "h264")
    assert info.fps == pytest.approx(12.5)
    back = [f.image for f in iter_frames(out)]
    assert np.abs(back[5].astype(int) - _pattern(5, 95, 127)[:94, :126]).mean() < 6


SHARED_CLIPS = {  # name: (frames, seconds, width, height)
    "mmaction2/demo_skeleton.mp4": (72, 2.57, 1920, 1080),
    "mmaction2/test_video_structuralize.mp4": (300, 10.01, 426, 240),
}


@pytest.mark.parametrize("name", sorted(SHARED_CLIPS))
def test_real_clips_decode_whole_with_their_duration(data_dir: Path, name: str) -> None:
    path = data_dir / "video" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    frames, seconds, width, height = SHARED_CLIPS[name]
    info = probe(path)
    assert (info.num_frames, info.width, info.height, info.rotation) == (frames, width, height, 0)
    assert info.duration_s == pytest.approx(seconds, abs=0.01)
    decoded = list(iter_frames(path, stride=5))
    assert [f.index for f in decoded] == list(range(0, frames, 5))
    assert all(f.image.shape == (height, width, 3) for f in decoded)
    assert decoded[-1].time_s < seconds
