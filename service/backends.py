"""The service's side of the runtimes (:mod:`pose.runtimes`): its settings mapped onto the options every
front-end shares, and what runs reported in the service's schema.

The runtimes themselves (torch, ONNX Runtime, TensorRT, the ``auto`` choice and its checks) live in
``pose/``, below the API, the CLI, bulk jobs and the service, so all of them run a model the same way.
"""

from __future__ import annotations

from dataclasses import asdict

from pose.config import ModelConfig
from pose.runtimes import Backend
from pose.runtimes import create_backend as _create_backend
from pose.runtimes import describe_runtime as _describe_runtime
from service.schemas import RuntimeInfo
from service.settings import Settings

__all__ = ["Backend", "create_backend", "describe_runtime"]


def create_backend(config: ModelConfig, settings: Settings) -> Backend:
    """The runtime ``POSE_BACKEND`` and ``POSE_PRECISION`` ask for (``auto``: the fastest verified one)."""
    return _create_backend(config, settings.runtime_options())


def describe_runtime(backend: Backend) -> RuntimeInfo:
    """What the backend runs now (its CUDA graphs included), for ``/v1/models`` and the metrics."""
    return RuntimeInfo(**asdict(_describe_runtime(backend)))
