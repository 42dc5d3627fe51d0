"""Video files to upright RGB frames and back: probe, decode at a stride, write H.264.

PyAV (FFmpeg) reads the container, so one code path serves the CLI, the Python API, bulk jobs and the
service. Phones record upright video as landscape pixels plus a display rotation in the container; the
frames are turned here, as a player would, so a person stands upright for the network. A probe reads the
headers only, which lets callers refuse a video that is too long before decoding a single frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import av
import numpy as np

from pose.errors import VideoReadError

__all__ = ["VIDEO_SUFFIXES", "VideoFrame", "VideoInfo", "VideoWriter", "iter_frames", "probe", "read_frames_at"]

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
Source = str | Path | BinaryIO


@dataclass(frozen=True)
class VideoInfo:
    """What a video's headers say."""

    width: int  # as displayed, after the rotation
    height: int
    fps: float  # average frame rate
    duration_s: float
    num_frames: int  # the container's count, else duration x fps
    rotation: int  # degrees counter-clockwise the stored pixels are turned for display (0, 90, 180, 270)
    codec: str
    container: str


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame."""

    index: int  # position in the stream, counting every frame (also the ones a stride skips)
    time_s: float  # presentation time from the start of the stream
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright


def _open(source: Source) -> av.container.InputContainer:
    try:
        return av.open(source if not isinstance(source, Path) else str(source), mode="r")
    except FileNotFoundError:
        raise
    except (av.FFmpegError, ValueError, OSError) as err:
        raise VideoReadError(f"not a video container that can be read ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.strip().splitlines()[0][:120] if text.strip() else type(err).__name__


def _stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoReadError("the container holds no video stream")
    return container.streams.video[0]


def _rotation(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> int:
    """The display rotation from the first frame's display matrix (the stream's side data)."""
    for frame in container.decode(stream):
        return int(round(frame.rotation / 90.0)) * 90 % 360
    return 0


def probe(source: Source) -> VideoInfo:
    """Size, rate, duration and rotation from the headers (and the first frame's display matrix)."""
    with _open(source) as container:
        stream = _stream(container)
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        frames = int(stream.frames) or int(math.floor(duration * fps + 0.5))
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise VideoReadError("the video stream declares no frame size")
        codec, fmt = stream.codec_context.name, container.format.name
        try:
            rotation = _rotation(stream, container)
        except av.FFmpegError as err:
            raise VideoReadError(f"the first frame cannot be decoded ({_reason(err)})") from None
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(width, height, fps, duration, frames, rotation, codec, fmt)


def _upright(frame: av.VideoFrame) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")  # (H, W, 3)
    turns = int(round(frame.rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def iter_frames(
    source: Source,
    stride: int = 1,
    max_frames: int | None = None,
    max_duration_s: float | None = None,
) -> Iterator[VideoFrame]:
    """Every ``stride``-th frame, upright RGB, until ``max_frames`` were yielded or ``max_duration_s`` passed.

    A container that breaks off mid-stream raises :class:`~pose.errors.VideoReadError` when the damage is
    reached, after the frames before it were yielded.
    """
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    with _open(source) as container:
        stream = _stream(container)
        stream.thread_type = "AUTO"
        start = stream.start_time or 0
        yielded = 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                if max_frames is not None and yielded >= max_frames:
                    return
                pts = frame.pts if frame.pts is not None else start
                time_s = float((pts - start) * stream.time_base) if stream.time_base else index / 25.0
                if max_duration_s is not None and time_s > max_duration_s:
                    return
                if index % stride:
                    continue
                yield VideoFrame(index, time_s, _upright(frame))
                yielded += 1
        except av.FFmpegError as err:
            raise VideoReadError(f"the video is damaged after {yielded} frames ({_reason(err)})") from None


def read_frames_at(path: str | Path, indices: Sequence[int]) -> list[np.ndarray | str]:
    """The frames at ``indices`` (any order) of one video, or a one-line reason for each that failed.

    The packets' timestamps (read without decoding) number the frames exactly, also at a variable frame
    rate; decoding then starts at the keyframe before the first wanted frame, so a chunk late in a long
    video does not decode everything before it.
    """
    wanted = sorted(set(indices))
    wanted_set = set(wanted)
    found: dict[int, np.ndarray] = {}
    try:
        container = _open(path)
    except (VideoReadError, FileNotFoundError):
        return ["cannot open the video"] * len(indices)
    with container:
        try:
            stream = _stream(container)
            stamps = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
            index_of = {pts: i for i, pts in enumerate(stamps)}
            if wanted and wanted[0] < len(stamps):
                container.seek(stamps[wanted[0]], stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    index = index_of.get(frame.pts, -1) if frame.pts is not None else -1
                    if index in wanted_set:
                        found[index] = _upright(frame)
                    if index >= wanted[-1]:
                        break
        except (av.FFmpegError, VideoReadError):
            pass  # the frames not found by then are reported below
    return [found[i] if i in found else f"cannot decode frame {i}" for i in indices]


_CODECS = ("libx264", "h264", "libopenh264", "mpeg4")  # H.264 where FFmpeg has an encoder for it


def _encoder() -> str:
    for name in _CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.FFmpegError, ValueError):
            continue
    raise VideoReadError("this FFmpeg build has no H.264 or MPEG-4 encoder")


class VideoWriter:
    """RGB frames to an MP4 file, H.264 (``libx264``) when the FFmpeg build has it, else MPEG-4 Part 2.

    The size is taken from the first frame and rounded down to even numbers, as 4:2:0 chroma needs.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = _encoder()
        self._container = av.open(str(self.path), mode="w", format="mp4")
        self._stream: av.video.stream.VideoStream | None = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        if self._stream is None:
            stream = self._container.add_stream(self.codec, rate=self.fps)
            assert isinstance(stream, av.video.stream.VideoStream)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            if self.codec == "libx264":
                stream.options = {"crf": "23", "preset": "veryfast"}
            self._stream = stream
        elif (h, w) != (self._stream.height, self._stream.width):
            raise ValueError(f"frame is {w}x{h}, the video is {self._stream.width}x{self._stream.height}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="rgb24")
        frame.pts = self.frames
        stream = self._stream
        for packet in stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
