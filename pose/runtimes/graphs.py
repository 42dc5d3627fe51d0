"""The ONNX graphs the runtimes load, found in the model repository or made once into a cache.

``export/`` produces graphs; the runtimes ask it for one only when neither the model repository nor the
cache holds it, so a model runs in ONNX Runtime without a manual export step. Cache entries are keyed by
model, weights digest and the versions that made them, and written under a temporary name then renamed,
so processes sharing a cache never read half a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from pose.config import ModelConfig
from pose.models.hrnet import PoseHRNet
from pose.runtimes.options import RuntimeOptions

__all__ = ["cached_int8_graphs", "cached_portable_onnx", "portable_onnx_ready", "recorded_portable_onnx"]

log = logging.getLogger("pose.runtimes")

ModelSource = Callable[[], PoseHRNet]  # the loaded (folded) torch network, built only when an export needs it


def recorded_portable_onnx(config: ModelConfig) -> Path | None:
    """The portable graph ``pose-export onnx`` recorded in the model repository, when its file is there."""
    path = next((config.resolve(a.path) for a in config.onnx if a.variant == "portable"), None)
    return path if path is not None and path.is_file() else None


def _entry(config: ModelConfig, options: RuntimeOptions) -> Path:
    from export.engine_cache import cache_entry

    return cache_entry(config, options.onnx_cache, options.weights)


def _make(path: Path, write: Callable[[Path], object]) -> Path:
    """``path``, written by ``write`` to a temporary name and renamed when it is not there yet."""
    if not path.is_file():
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        partial.replace(path)
    return path


def portable_onnx_ready(config: ModelConfig, options: RuntimeOptions) -> bool:
    """A portable graph of this model and weights exists (set, recorded or cached): ``auto`` will not export."""
    if options.onnx_path is not None or recorded_portable_onnx(config) is not None:
        return True
    return _portable_cache_path(config, options).is_file()


def _portable_cache_path(config: ModelConfig, options: RuntimeOptions) -> Path:
    return _entry(config, options) / f"model-torch{torch.__version__}.onnx"


def cached_portable_onnx(config: ModelConfig, options: RuntimeOptions, model: ModelSource) -> Path:
    """The portable graph of this model and weights in the cache, exported there when missing (the exporter's
    version is part of the name: a graph written by another torch is exported again)."""
    path = _portable_cache_path(config, options)
    if not path.is_file():
        from export.onnx_export import export_onnx

        log.info("exporting the portable ONNX graph of %s to %s (once per model and weights)", config.name, path)
        size = (config.input.size, config.input.size)
        _make(path, lambda p: export_onnx(model(), p, "portable", size))
    return path


def cached_int8_graphs(config: ModelConfig, options: RuntimeOptions, model: ModelSource) -> tuple[Path, Path]:
    """The int8 backbone graph and the float32 heads graph of this model, weights and calibration set,
    quantized into the cache when missing (deterministic: the same inputs give the same file)."""
    import onnxruntime

    from export.quantize import calibration_images, calibration_key, quantize_backbone

    entry = _entry(config, options)
    backbone = entry / f"backbone-torch{torch.__version__}.onnx"
    heads = entry / f"heads-torch{torch.__version__}.onnx"
    calibration = calibration_key(options.calibration_images)
    int8 = entry / f"backbone-int8-{calibration}-ort{onnxruntime.__version__}-torch{torch.__version__}.onnx"
    if not (backbone.is_file() and heads.is_file()):
        from export.onnx_export import export_split_onnx

        log.info("exporting the backbone and heads graphs of %s to %s (once per model and weights)", config.name, entry)
        parts = [path.with_name(f"{path.name}.{os.getpid()}.partial") for path in (backbone, heads)]
        entry.mkdir(parents=True, exist_ok=True)
        export_split_onnx(model(), parts[0], parts[1], (config.input.size, config.input.size))
        for part, path in zip(parts, (backbone, heads), strict=True):
            part.replace(path)
    if not int8.is_file():
        log.info("quantizing the backbone of %s to int8 (once per model, weights and calibration set)", config.name)
        images = calibration_images(options.calibration_images)
        _make(int8, lambda p: quantize_backbone(backbone, p, config, images))
    return int8, heads
