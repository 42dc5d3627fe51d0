"""Which runtime runs a model: the explicit choice, or ``auto``'s fastest one that is verified.

``auto`` is torch on CUDA (the lean path of :class:`TorchBackend`). On a CPU it is ONNX Runtime on the
portable graph once its outputs have matched the torch network's: its graph optimizations and GridSample
make it faster there (docs/performance.md). ``precision="int8"`` then asks for the quantized backbone,
used only once its poses on drawn scenes have matched float32's (:func:`check_poses_agree`). Any failure of
a faster path (a model without an exportable graph, onnxruntime missing, a mismatch) keeps the slower one,
says why in the log and in the backend's :class:`RuntimeReport`, and never stops the caller.
"""

from __future__ import annotations

import logging

from pose.config import ModelConfig
from pose.runtimes.agreement import CHECK_SCENES, CHECK_SIZE, check_outputs_agree, check_poses_agree, drawn_scenes
from pose.runtimes.graphs import ModelSource, cached_int8_graphs, cached_portable_onnx, recorded_portable_onnx
from pose.runtimes.onnxruntime_backend import OnnxRuntimeBackend, SplitOnnxBackend
from pose.runtimes.options import RuntimeOptions
from pose.runtimes.report import Backend
from pose.runtimes.torch_backend import TorchBackend

__all__ = ["automatic_backend", "create_backend", "int8_backend"]

log = logging.getLogger("pose.runtimes")


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err)[:300]}"


def create_backend(config: ModelConfig, options: RuntimeOptions | None = None) -> Backend:
    """The runtime the options ask for, its files resolved from the options, then the model config."""
    options = options or RuntimeOptions()
    if options.backend == "auto":
        return automatic_backend(config, options)
    if options.backend == "torch":
        return TorchBackend(config, options)
    if options.backend == "onnx":
        return _onnx(config, options)
    return _tensorrt(config, options)


def _onnx(config: ModelConfig, options: RuntimeOptions) -> Backend:
    """The portable graph the options or the model repository name; with int8, its quantized backbone once
    checked against it (against torch when the repository records no graph)."""
    k = config.keypoints.num_keypoints
    path = options.onnx_path or recorded_portable_onnx(config)
    if options.precision == "int8":
        float32: Backend = OnnxRuntimeBackend(path, k) if path is not None else TorchBackend(config, options)
        return int8_backend(config, options, float32, lambda: TorchBackend(config, options).model)
    if path is None:
        raise FileNotFoundError(f"model {config.name} has no portable ONNX; run pose-export onnx or set POSE_ONNX_PATH")
    return OnnxRuntimeBackend(path, k, options.device, config.input.stride)


def _tensorrt(config: ModelConfig, options: RuntimeOptions) -> Backend:
    from pose.runtimes.tensorrt_backend import TensorRTBackend

    engine = options.engine_path
    if engine is None and options.engine_cache is not None:
        from export.engine_cache import ENGINE_FILE, cache_entry

        engine = cache_entry(config, options.engine_cache, options.weights) / ENGINE_FILE
    engine = engine or config.resolve(f"{config.version}/model.plan")
    if engine is None:
        raise FileNotFoundError(
            "no TensorRT engine; build one with pose-export tensorrt, or set POSE_ENGINE_PATH or POSE_ENGINE_CACHE"
        )
    return TensorRTBackend(engine, config.keypoints.num_keypoints, options.device)


def automatic_backend(config: ModelConfig, options: RuntimeOptions) -> Backend:
    """Torch on CUDA; on a CPU, ONNX Runtime once it matches torch, then the int8 backbone when asked and
    verified (see the module's docstring)."""
    reference = TorchBackend(config, options)
    if reference.device.type != "cpu":
        return reference
    chosen: Backend = reference
    try:
        path = options.onnx_path or recorded_portable_onnx(config)
        path = path or cached_portable_onnx(config, options, lambda: reference.model)
        candidate = OnnxRuntimeBackend(path, config.keypoints.num_keypoints, "cpu", config.input.stride)
        check_outputs_agree(candidate, reference)
        chosen = candidate
    except Exception as err:
        reason = _reason(err)
        if isinstance(err, ImportError):
            reason += "; pip install 'hrnet-pose-serving[onnx]' for the faster CPU path"
        log.warning("ONNX Runtime is not used on this CPU, the torch network is: %s", reason)
        reference.report.backend_fallback = reason
    if options.precision == "int8":
        return int8_backend(config, options, chosen, lambda: reference.model)
    return chosen


def int8_backend(config: ModelConfig, options: RuntimeOptions, float32: Backend, model: ModelSource) -> Backend:
    """The int8 backbone with float32 heads once its poses on drawn scenes match ``float32``'s; else
    ``float32``, its report saying why."""
    try:
        backbone, heads = cached_int8_graphs(config, options, model)
        candidate = SplitOnnxBackend(backbone, heads, precision="int8 backbone (float32 heads)")
        every, reported = check_int8_poses(config, candidate, float32)
    except Exception as err:
        reason = _reason(err)
        log.warning("the int8 backbone is not used, float32 is: %s", reason)
        float32.report.precision_fallback = reason  # type: ignore[attr-defined]
        return float32
    log.info(
        "int8 backbone in use: %.1f%% of %d poses within 0.5 px of float32, all %d reported",
        100 * every.within_half_pixel,
        every.poses,
        reported.poses,
    )
    return candidate


def check_int8_poses(config: ModelConfig, candidate: Backend, float32: Backend):  # noqa: ANN201
    """Both backends' poses on the seeded drawn scenes of the agreement check, through the full pipeline with
    the model's scoring net, held to :func:`check_poses_agree`."""
    from pose.pipeline import BatchPipeline
    from pose.rescore import load_scoring_net

    rescore = config.resolve(config.rescore_weights)
    scoring = None
    if rescore is not None and rescore.is_file():
        scoring = load_scoring_net(rescore, config.keypoints.score_feature_dim)
    scenes = drawn_scenes(CHECK_SCENES, CHECK_SIZE)
    want = BatchPipeline(config, float32, scoring, float32.device).run(scenes)[0]
    got = BatchPipeline(config, candidate, scoring, candidate.device).run(scenes)[0]
    return check_poses_agree(got, want, config.test.score_threshold)
