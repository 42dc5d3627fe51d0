"""Training run configuration as data: one YAML file, paths relative to it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pose.config import read_yaml_mapping, validate_file

__all__ = ["TrainConfig", "load_train_config"]

PATH_KEYS = ("model", "train_annotations", "train_images", "val_annotations", "val_images", "output", "init_weights")


class TrainConfig(BaseModel):
    """Defaults are the authors' COCO W32 recipe (SPEC §5.4); small runs override epochs and batch."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="model config.yaml (architecture, input, keypoints)")
    train_annotations: Path
    train_images: Path
    val_annotations: Path | None = None
    val_images: Path | None = None
    output: Path = Field(description="run folder: checkpoints, log.csv, metrics.json")

    epochs: int = Field(140, ge=1)
    lr: float = Field(1e-3, gt=0)
    milestones: list[int] = [90, 120]
    gamma: float = 0.1
    batch_size: int = Field(12, ge=1, description="images per process (per GPU)")
    workers: int = Field(4, ge=0)
    amp: bool = Field(True, description="float16 autocast + gradient scaling, CUDA only")
    seed: int = 0
    steps_per_epoch: int | None = Field(None, ge=1, description="cap (small runs); None: the whole dataset")
    log_every: int = Field(20, ge=1)
    validate_every: int = Field(0, ge=0, description="epochs between AP evaluations (0: only at the end)")
    keep_epoch_weights: bool = Field(
        False, description="also keep every epoch's weights as epochs/epoch_NNN.pth, for `pose average-weights`"
    )

    bg_weight: float = Field(0.1, ge=0, description="tradeoff loss: weight of non-keypoint pixels (1: plain MSE)")
    min_center_area: float | None = Field(
        None, ge=0, description="no center for people with a smaller area (image px^2); None: 32^2 COCO, 0 CrowdPose"
    )
    heatmap_factor: float = 1.0
    offset_factor: float = 0.01
    init_weights: Path | None = Field(
        None, description="weights to start from, matched by name and shape (a pretrained backbone, or a whole model)"
    )
    keep_empty_images: bool = Field(
        False, description="also train on images without annotations (negatives); the authors drop them"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if (self.val_annotations is None) != (self.val_images is None):
            raise ValueError("val_annotations and val_images go together")
        if sorted(self.milestones) != self.milestones:
            raise ValueError(f"milestones must increase, got {self.milestones}")
        return self


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML run config; ``overrides`` win. Relative paths in the file are relative to the file, those
    in ``overrides`` (command-line ``--set``) to the working directory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training config at {path}; pass a run YAML such as model_repo/*/train.yaml")
    raw = _resolve_paths(read_yaml_mapping(path), path.parent)
    return validate_file(TrainConfig, {**raw, **_resolve_paths(overrides or {}, Path.cwd())}, path)


def _resolve_paths(raw: dict, base: Path) -> dict:
    return {
        k: str((base / v).resolve()) if k in PATH_KEYS and v is not None and not Path(v).is_absolute() else v
        for k, v in raw.items()
    }
