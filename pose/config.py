"""Model configuration as data: one ``config.yaml`` per folder of ``model_repo/``.

The folder layout follows Triton's model repository: ``<name>/config.yaml`` next to numbered version
folders (``<name>/1/model.pth``, ``1/rescore.pth``, later ``1/model.onnx``). Code reads everything that
differs between models (widths, input size, keypoints, flip order, sticks, decoding thresholds) from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pose.errors import ConfigError

__all__ = [
    "DEFAULT_MODEL",
    "ArchitectureConfig",
    "ConfigError",
    "DecodeConfig",
    "InputConfig",
    "ONNX_RECORD",
    "OnnxArtifact",
    "KeypointConfig",
    "ModelConfig",
    "StageConfig",
    "TestConfig",
    "check_scales",
    "load_model_config",
    "read_yaml_mapping",
    "recorded_onnx",
    "validate_file",
]


# The embedded default: a small model trained on synthetic figures (model_repo/synthetic_w16_256/README).
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "model_repo" / "synthetic_w16_256"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageConfig(_Strict):
    """One HRNet stage: ``num_modules`` high-resolution modules over ``len(channels)`` branches."""

    num_modules: int = Field(ge=1)
    num_blocks: list[int]
    channels: list[int]

    @model_validator(mode="after")
    def _branches_agree(self) -> StageConfig:
        if len(self.num_blocks) != len(self.channels):
            raise ValueError(f"num_blocks has {len(self.num_blocks)} branches but channels has {len(self.channels)}")
        return self


class ArchitectureConfig(_Strict):
    """Backbone widths and the two heads (authors' cfg ``MODEL.EXTRA``)."""

    type: Literal["hrnet", "higher_hrnet"] = "hrnet"
    stage2: StageConfig
    stage3: StageConfig
    stage4: StageConfig
    heatmap_head_channels: int = Field(ge=1)
    heatmap_dilations: list[int] = [1, 2, 3]
    regression_head_channels: int = Field(ge=1)
    deconv_channels: int | None = None  # higher_hrnet only: the 2x heatmap head
    # The stem is fixed by the authors (64 channels, 4 bottlenecks); small CPU models shrink it.
    stem_channels: int = Field(64, ge=1)
    stem_blocks: int = Field(4, ge=1)
    # Ablation switches (paper Table 4); the released models use both.
    heatmap_guidance: bool = True  # regression head sees the heatmaps concatenated with the features
    adaptive_blocks: bool = True  # heads use adaptive convolutions; False: plain 3x3 convolutions

    @model_validator(mode="after")
    def _check(self) -> ArchitectureConfig:
        for prev, stage in ((self.stage2, self.stage3), (self.stage3, self.stage4)):
            if stage.channels[: len(prev.channels)] != prev.channels:
                raise ValueError(
                    f"stage channels must extend the previous stage's: {prev.channels} -> {stage.channels}"
                )
        if self.type == "higher_hrnet" and self.deconv_channels is None:
            raise ValueError("higher_hrnet needs deconv_channels")
        return self


class InputConfig(_Strict):
    """Network input: short side in pixels and the RGB normalization."""

    size: int = Field(ge=64)
    stride: int = 4
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("size")
    @classmethod
    def _multiple_of_64(cls, v: int) -> int:
        if v % 64:
            raise ValueError(f"input size must be a multiple of 64, got {v}")
        return v


class KeypointConfig(_Strict):
    """The dataset's skeleton: names, horizontal flip permutation, drawing and scoring sticks."""

    dataset: Literal["coco", "crowdpose"]
    names: list[str]
    flip_index: list[int]
    skeleton: list[tuple[int, int]]  # edges drawn on overlays
    score_sticks: list[tuple[int, int]]  # (a, b) vectors of the rescoring feature, in the authors' order
    sigmas: list[float]  # OKS falloff per keypoint

    @model_validator(mode="after")
    def _consistent(self) -> KeypointConfig:
        k = len(self.names)
        if sorted(self.flip_index) != list(range(k)):
            raise ValueError(f"flip_index must be a permutation of 0..{k - 1}, got {self.flip_index}")
        if any(self.flip_index[self.flip_index[i]] != i for i in range(k)):
            raise ValueError("flip_index must be its own inverse")
        if len(self.sigmas) != k:
            raise ValueError(f"sigmas has {len(self.sigmas)} entries for {k} keypoints")
        for a, b in [*self.skeleton, *self.score_sticks]:
            if not (0 <= a < k and 0 <= b < k):
                raise ValueError(f"stick ({a}, {b}) refers to a keypoint outside 0..{k - 1}")
        if len(self.score_sticks) < 12:
            raise ValueError("score_sticks needs at least 12 sticks: sticks 9 and 11 normalize the feature")
        return self

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def score_feature_dim(self) -> int:
        """Rescoring feature length: stick vectors (2 each), stick lengths, joint scores."""
        return 3 * len(self.score_sticks) + self.num_keypoints


class DecodeConfig(_Strict):
    """Grouping thresholds (authors' ``TEST`` defaults); every one can be overridden per call."""

    max_people: int = Field(30, ge=1)
    keypoint_threshold: float = 0.01
    max_absorb_distance: float = 75.0
    pose_nms_distance: float = 10.0  # DIST_THRESHOLD, base-input pixels
    pose_nms_overlap: int = 10  # OVERLAP_THRESHOLD: more joints than this within the distance = duplicate
    pool_thresholds: tuple[float, float] = (300.0, 200.0)  # center map size above which NMS pools 7x7 / 5x5
    scale_decrease: float = 0.001  # weight of centers found at scales other than 1
    adjust_threshold: float = 0.05  # joints scoring above are refined by a Gaussian fit
    absorb: bool = True  # heatmap-guided absorption (False = the pure regression path)
    refine: bool = True  # Gaussian-fit refinement of absorbed joints
    # None keeps every converged fit, as the authors do. A number keeps only fits whose peak lies in the
    # window and whose amplitude is at most this many times the window's highest value: on near-flat maps
    # (blank images) a fit can run off to a huge far-away Gaussian (see pose.decode.plausible_fits).
    refine_max_gain: float | None = Field(None, gt=0)
    rescore: bool = True  # multiply the pose score by the scoring net's predicted OKS


def check_scales(scales: list[float], grouped: bool = True) -> list[float]:
    """Test scales as the decoder needs them: positive, with 1.0 among them when poses are grouped (in its
    frame); raw network outputs (``grouped=False``) take any positive scales."""
    if not scales or any(not s > 0 for s in scales) or (grouped and 1.0 not in scales):
        need = "positive and include 1.0" if grouped else "positive"
        raise ValueError(f"test scales must be {need}, got {list(scales)}")
    return scales


class TestConfig(_Strict):
    """Test-time defaults: augmentation, and which poses are worth reporting."""

    flip: bool = True
    scales: list[float] = [1.0]
    flip_shift: int = 3  # flipped input is shifted left by this many input pixels (authors' choice)
    # Poses scoring below this are not reported by the service, the CLI and the Python API; chosen per
    # model on held-out data so an empty image yields no people. COCO evaluation keeps every pose (AP
    # rewards a long ranked list), as the authors do.
    score_threshold: float = Field(0.0, ge=0)

    @field_validator("scales")
    @classmethod
    def _check_scales(cls, v: list[float]) -> list[float]:
        return check_scales(v)


# Exported graphs are recorded in a file of their own in the version folder, so that an export never
# rewrites the tracked config.yaml: ``<model>/<version>/onnx.json``, a list of OnnxArtifact.
ONNX_RECORD = "onnx.json"


class OnnxArtifact(_Strict):
    """An exported ONNX file and its interface, written by ``pose-export onnx``."""

    path: str  # relative to the model folder, e.g. "1/model.onnx"
    variant: Literal["portable", "plugin"]
    opset: int
    inputs: dict[str, list[int | str]]  # name -> shape; dims named "batch", "height", "width/4" or fixed ints
    outputs: dict[str, list[int | str]]


class ModelConfig(_Strict):
    """Everything needed to build, load and run one servable model."""

    name: str
    version: int = 1
    description: str = ""
    architecture: ArchitectureConfig
    input: InputConfig
    keypoints: KeypointConfig
    decode: DecodeConfig = DecodeConfig()
    test: TestConfig = TestConfig()
    weights: str | None = None  # relative to the config's folder, e.g. "1/model.pth"
    rescore_weights: str | None = None
    onnx: list[OnnxArtifact] = []  # exported graphs: the config's own, then those recorded in ONNX_RECORD
    root: Path | None = Field(default=None, exclude=True)  # folder the config was read from

    def resolve(self, relative: str | None) -> Path | None:
        """An artifact path from the config, anchored at the model's folder."""
        if relative is None:
            return None
        path = Path(relative)
        return path if path.is_absolute() or self.root is None else self.root / path


def read_yaml_mapping(file: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a file that is not one is a :class:`ConfigError` naming it."""
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file} is not valid YAML{where}: {getattr(err, 'problem', err)}; fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} does not hold a mapping of settings; fix the file")
    return data


_Config = TypeVar("_Config", bound=BaseModel)


def validate_file(schema: type[_Config], data: dict[str, Any], file: Path) -> _Config:
    """``schema.model_validate(data)``; what fails is one :class:`ConfigError` line naming file and fields."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'top level'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise ConfigError(f"{file}: {problems}; fix the file") from None


def load_model_config(path: str | Path) -> ModelConfig:
    """Read ``<folder>/config.yaml`` (or a yaml file directly) into a validated :class:`ModelConfig`."""
    path = Path(path)
    file = path / "config.yaml" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no model config at {file}; a model is a model_repo/<name> folder with a config.yaml")
    config = validate_file(ModelConfig, {**read_yaml_mapping(file), "root": file.parent}, file)
    recorded = recorded_onnx(file.parent / str(config.version))
    if not recorded:
        return config
    kept = [a for a in config.onnx if a.variant not in {r.variant for r in recorded}]
    return config.model_copy(update={"onnx": [*kept, *recorded]})


def recorded_onnx(version_dir: Path) -> list[OnnxArtifact]:
    """The graphs ``pose-export onnx`` recorded in a version folder (none when it has not run)."""
    file = version_dir / ONNX_RECORD
    if not file.is_file():
        return []
    try:
        entries = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file} is not valid JSON ({err}); delete it and run pose-export onnx again") from None
    return [validate_file(OnnxArtifact, e, file) for e in entries]
