"""A cache of TensorRT engines shared by pods: one entry per model and weights, rebuilt only when stale.

An engine is a build output per (TensorRT version, GPU architecture, graph, batch limit, precision). The
cache entry's folder is named by the model and its weights' digest, so a shared volume never serves one
model's engine to another; inside, ``model.plan`` is rebuilt when :func:`stale_reason` says so. A file
lock serializes pods that start together on the same volume (ReadWriteMany volumes must support flock).
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Callable
from pathlib import Path

from export.tensorrt_engine import stale_reason
from pose.config import ModelConfig

__all__ = ["cache_entry", "prepare_engine"]

ENGINE_FILE = "model.plan"
PLUGIN_ONNX_FILE = "model_plugin.onnx"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cache_entry(config: ModelConfig, cache_dir: Path, weights: Path | None = None) -> Path:
    """``<cache>/<model>-v<version>-<weights sha256[:16]>``: where this model's engine lives."""
    weights = weights or config.resolve(config.weights)
    if weights is None or not weights.is_file():
        raise FileNotFoundError(f"model {config.name}: weights {weights} not found; the engine cache keys on them")
    return cache_dir / f"{config.name}-v{config.version}-{_digest(weights)}"


def prepare_engine(
    config: ModelConfig,
    cache_dir: Path,
    max_batch: int,
    fp16: bool,
    runtime: tuple[str, str],
    export_plugin_onnx: Callable[[Path], None],
    build: Callable[[Path, Path], None],
    weights: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The current engine for this GPU, building it (and the plugin ONNX) only when missing or stale.

    Args:
        runtime: (TensorRT version, compute capability) of this machine.
        export_plugin_onnx: writes the plugin graph to the given path (used when the model repository
            records none, or its file is missing).
        build: builds ``(onnx_path, engine_path)`` with ``max_batch`` and ``fp16``.
    """
    entry = cache_entry(config, cache_dir, weights)
    entry.mkdir(parents=True, exist_ok=True)
    engine = entry / ENGINE_FILE
    with (entry / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        recorded = next((config.resolve(a.path) for a in config.onnx if a.variant == "plugin"), None)
        graph = recorded if recorded is not None and recorded.is_file() else entry / PLUGIN_ONNX_FILE
        if not graph.is_file():
            log(f"exporting the plugin ONNX graph to {graph}")
            export_plugin_onnx(graph)
        reason = stale_reason(engine, graph, *runtime, max_batch=max_batch, fp16=fp16)
        if reason is None:
            log(f"{engine} is current")
            return engine
        log(f"building {engine}: {reason}")
        build(graph, engine)
    return engine
