"""The library's errors that a user can fix, in one light module so the CLI can map them without torch."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ImageReadError",
    "MissingCheckpointError",
    "RuntimeOptionsError",
    "VideoReadError",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint where the config or the caller says: the released files are downloaded separately."""


class ConfigError(ValueError):
    """A config file that does not parse or validate; the message names the file and each bad field."""


class ImageReadError(ValueError):
    """A file that is not an image OpenCV can decode."""


class VideoReadError(ValueError):
    """A file that is not a video FFmpeg can decode, or one damaged or truncated."""


class RuntimeOptionsError(ValueError):
    """Runtime options that do not go together (int8 on CUDA, float32 heads without float16, ...)."""
