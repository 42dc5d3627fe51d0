"""What routes depend on, named as types (``SettingsDep``, ``ModelDep``, ``RuntimeDep``, ``BatcherDep``,
``ApiKey``)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from pose.config import ModelConfig
from service.admission import ImageIntake
from service.batcher import DynamicBatcher
from service.errors import NotReadyError, ShuttingDownError, UnauthorizedError
from service.memory import IdleTrimmer
from service.metrics import Metrics
from service.schemas import RuntimeInfo
from service.settings import Settings

if TYPE_CHECKING:
    from pose.pipeline import BatchPipeline
    from service.backends import Backend


@dataclass
class ServiceState:
    """One app's model, batcher and metrics; the lifespan fills it, dependencies hand out its parts."""

    settings: Settings
    metrics: Metrics
    config: ModelConfig | None = None
    backend: Backend | None = None
    pipeline: BatchPipeline | None = None
    batcher: DynamicBatcher | None = None
    intake: ImageIntake | None = None
    runtime: RuntimeInfo | None = None  # what the backend runs, refreshed after each batch on CUDA
    trimmer: IdleTrimmer | None = None
    streams: int = 0  # WebSocket streams open
    ready: bool = False
    preparing: str | None = None  # what start-up is doing now, while not ready
    failed: str | None = None  # why start-up failed (the server then exits with status 1)
    shutting_down: bool = False  # SIGTERM came: new work is refused as such, not as "not loaded yet"

    @property
    def not_ready_reason(self) -> str:
        if self.shutting_down:
            return "the service is shutting down"
        if self.failed is not None:
            return f"start-up failed: {self.failed}"
        return f"the model is not ready yet: {self.preparing or 'starting'}"

    def check_ready(self) -> None:
        """Raises the 503 a request gets when the service cannot take it now, naming why."""
        if self.shutting_down:
            raise ShuttingDownError("the service is shutting down; send the request again")
        if not self.ready:
            raise NotReadyError(self.not_ready_reason)


def get_service(request: Request) -> ServiceState:
    return request.app.state.service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


def get_settings(service: ServiceDep) -> Settings:
    return service.settings


def get_metrics(service: ServiceDep) -> Metrics:
    return service.metrics


def get_model(service: ServiceDep) -> ModelConfig:
    if service.config is None:
        raise NotReadyError(service.not_ready_reason)
    return service.config


def get_runtime(service: ServiceDep) -> RuntimeInfo:
    if service.runtime is None:
        raise NotReadyError(service.not_ready_reason)
    return service.runtime


def get_batcher(service: ServiceDep) -> DynamicBatcher:
    service.check_ready()
    if service.batcher is None:
        raise NotReadyError("the model is not loaded yet")
    return service.batcher


def get_intake(service: ServiceDep) -> ImageIntake:
    service.check_ready()
    if service.intake is None:
        raise NotReadyError("the model is not loaded yet")
    return service.intake


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ModelDep = Annotated[ModelConfig, Depends(get_model)]
RuntimeDep = Annotated[RuntimeInfo, Depends(get_runtime)]
BatcherDep = Annotated[DynamicBatcher, Depends(get_batcher)]
IntakeDep = Annotated[ImageIntake, Depends(get_intake)]

# Declared as security schemes so the OpenAPI schema tells clients how to authenticate; the check itself
# is ours, because the key is optional (no key configured: open service).
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")
_bearer = HTTPBearer(auto_error=False, description="the service's API key as a bearer token")


def require_api_key(
    settings: SettingsDep,
    api_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """When an API key is configured, accept it as ``X-API-Key`` or ``Authorization: Bearer``."""
    check_api_key(settings, api_key or (bearer.credentials if bearer is not None else None))


AUTH_CHALLENGE = 'Bearer realm="pose"'


def check_api_key(settings: Settings, given: str | None) -> None:
    """Raise :class:`UnauthorizedError` unless no key is configured or ``given`` is it (constant-time)."""
    expected = settings.api_key
    if expected is None:
        return
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        # RFC 9110 requires the challenge on a 401: the key goes as a bearer token (or X-API-Key).
        raise UnauthorizedError("missing or wrong API key", headers={"WWW-Authenticate": AUTH_CHALLENGE})


ApiKey = Annotated[None, Depends(require_api_key)]
