"""TensorRT engines: optimization profiles from the model config, build, and the metadata that ties an
engine to one GPU architecture and TensorRT version (a plan is a build output per target, not a portable
file: loading it elsewhere is refused with a clear message).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from pose.config import ModelConfig

INPUT_NAME = "image"


class Profile(BaseModel):
    """Input shapes (B, 3, H, W) of one optimization profile."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


class EngineMetadata(BaseModel):
    model: str
    tensorrt_version: str
    compute_capability: str  # "9.0" for H100/H200
    gpu: str
    precision: str  # "fp16" or "fp32"
    profiles: list[Profile]
    onnx_sha256: str
    built_at: str


class EngineMismatchError(RuntimeError):
    """An engine built for another GPU architecture or TensorRT version."""


def profiles_for(config: ModelConfig, max_batch: int, max_aspect: float = 2.0) -> list[Profile]:
    """Landscape and portrait profiles: short side = the input size, long side up to ``max_aspect`` times it.

    The long side is a multiple of 64 (the preprocessing's rounding); opt is the 4:3 photo's shape.
    """
    s = config.input.size
    long_max = int(s * max_aspect) // 64 * 64
    long_opt = min(long_max, (s * 4 // 3 + 63) // 64 * 64)
    opt_batch = max(1, max_batch // 2)
    return [
        Profile(min=(1, 3, s, s), opt=(opt_batch, 3, s, long_opt), max=(max_batch, 3, s, long_max)),
        Profile(min=(1, 3, s, s), opt=(opt_batch, 3, long_opt, s), max=(max_batch, 3, long_max, s)),
    ]


def check_compatible(meta: EngineMetadata, tensorrt_version: str, compute_capability: str) -> None:
    """Refuse an engine built elsewhere, naming what differs and how to rebuild."""
    problems = []
    if meta.tensorrt_version != tensorrt_version:
        problems.append(f"TensorRT {meta.tensorrt_version} built it, this is TensorRT {tensorrt_version}")
    if meta.compute_capability != compute_capability:
        problems.append(
            f"it was built for compute capability {meta.compute_capability} ({meta.gpu}), "
            f"this GPU is {compute_capability}"
        )
    if problems:
        raise EngineMismatchError(
            f"engine for {meta.model} cannot run here: {'; '.join(problems)}. Rebuild it on this machine with "
            "`pose-export tensorrt`."
        )


def metadata_path(engine: Path) -> Path:
    return engine.with_suffix(".json")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stale_reason(
    engine: Path,
    onnx_path: Path,
    tensorrt_version: str,
    compute_capability: str,
    max_batch: int | None = None,
    fp16: bool | None = None,
) -> str | None:
    """Why ``engine`` must be (re)built for this GPU and graph, or None when it can be reused.

    This is the deployment's build policy: a container builds at start only what is missing or stale
    (another TensorRT, another GPU architecture, another ONNX graph), so a warm engine cache costs nothing.
    """
    meta_file = metadata_path(engine)
    if not engine.is_file() or not meta_file.is_file():
        return f"no engine at {engine}"
    try:
        meta = EngineMetadata.model_validate(json.loads(meta_file.read_text()))
    except ValueError as e:
        return f"unreadable metadata {meta_file}: {e}"
    try:
        check_compatible(meta, tensorrt_version, compute_capability)
    except EngineMismatchError as e:
        return str(e)
    if meta.onnx_sha256 != file_sha256(onnx_path):
        return f"{onnx_path} changed since the engine was built"
    if max_batch is not None and meta.profiles and meta.profiles[0].max[0] != max_batch:
        return f"the engine's largest batch is {meta.profiles[0].max[0]}, {max_batch} is asked for"
    if fp16 is not None and meta.precision != ("fp16" if fp16 else "fp32"):
        return f"the engine is {meta.precision}, {'fp16' if fp16 else 'fp32'} is asked for"
    return None


def build_engine(
    config: ModelConfig,
    onnx_path: Path,
    engine_path: Path,
    fp16: bool = True,
    max_batch: int = 32,
    timing_cache: Path | None = None,
    workspace_gib: float = 8.0,
) -> EngineMetadata:
    """Build an engine from the plugin ONNX (adaptive convolutions as ``pose::AdaptiveConv`` plugins)."""
    import tensorrt as trt
    import torch

    import export.trt_plugin  # noqa: F401 - registers the plugin before parsing

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    build = builder.create_builder_config()
    build.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16:
        build.set_flag(trt.BuilderFlag.FP16)
    cache = build.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b"")
    build.set_timing_cache(cache, ignore_mismatch=False)
    profiles = profiles_for(config, max_batch)
    for p in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, p.min, p.opt, p.max)
        build.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, build)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    # Metadata goes first and comes back last, and the plan is renamed into place: an interrupted build
    # never leaves a truncated plan beside metadata that calls it current.
    metadata_path(engine_path).unlink(missing_ok=True)
    partial = engine_path.with_suffix(".partial")
    partial.write_bytes(bytes(plan))
    partial.replace(engine_path)
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(build.get_timing_cache().serialize()))
    major, minor = torch.cuda.get_device_capability()
    meta = EngineMetadata(
        model=config.name,
        tensorrt_version=trt.__version__,
        compute_capability=f"{major}.{minor}",
        gpu=torch.cuda.get_device_name(),
        precision="fp16" if fp16 else "fp32",
        profiles=profiles,
        onnx_sha256=file_sha256(onnx_path),
        built_at=datetime.now(UTC).isoformat(),
    )
    metadata_path(engine_path).write_text(json.dumps(meta.model_dump(), indent=2))
    return meta
