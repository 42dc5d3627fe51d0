"""Load the authors' ``.pth`` files (and our own) into :class:`~pose.models.hrnet.PoseHRNet`.

The authors save a bare ``state_dict`` with their key names; ours wraps the same keys with metadata.
A DDP ``module.`` prefix is stripped. Anything that does not fit fails with one :class:`CheckpointError`
that lists the missing, unexpected and mis-shaped keys, so a W48 file given to a W32 config says so.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pose.errors import CheckpointError, MissingCheckpointError
from pose.ops.adaptive_conv import REGULAR_GRID

__all__ = [
    "CheckpointError",
    "MissingCheckpointError",
    "check_state_dict",
    "load_state_dict_file",
    "load_weights",
    "save_atomic",
    "save_checkpoint",
]

FORMAT = "hrnet-pose/1"
_LIST_LIMIT = 8


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict (authors' or ours)."""
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a torch file ({err})") from err
    state = _unwrap(obj)
    if state is None:
        raise CheckpointError(f"checkpoint {path} holds no state_dict (got {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _unwrap(obj: Any) -> Mapping[str, Tensor] | None:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return obj
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key])
    return None


def _describe(names: list[str], what: str) -> str:
    shown = ", ".join(names[:_LIST_LIMIT]) + (
        f", ... ({len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
    )
    return f"{len(names)} {what}: {shown}"


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        _describe(names, what)
        for names, what in (
            (missing, "missing keys"),
            (unexpected, "unexpected keys"),
            (misshaped, "keys of another shape (checkpoint != model)"),
        )
        if names
    ]
    if problems:
        hint = (
            " Is it a checkpoint of another architecture or dataset?" if misshaped or (missing and unexpected) else ""
        )
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems) + "." + hint)
    for k, v in state.items():
        if k.endswith("regular_matrix") and not torch.equal(v.float(), REGULAR_GRID):
            raise CheckpointError(f"{k} is not the regular 3x3 grid the adaptive convolution assumes")
    _check_shared_weights(model, state)


def _check_shared_weights(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Tensors the model shares (heatmap-branch conv weights) must be equal in the file too."""
    by_storage: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first = by_storage.setdefault(id(param), name)
        if first != name and not torch.equal(state[first], state[name]):
            raise CheckpointError(f"{name} must equal {first}: the heatmap branches share their conv weights")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint file into ``model`` strictly, after checking every key and shape."""
    state = load_state_dict_file(path)
    try:
        check_state_dict(model, state)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    model.load_state_dict(state, strict=True)
    return model


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` beside the target, flushed to disk, then renamed: a kill mid-save leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def save_checkpoint(model: nn.Module, path: str | Path, model_name: str, **extra: Any) -> None:
    """Save our checkpoint format: the same keys as the authors', plus what produced them."""
    save_atomic({"format": FORMAT, "model_name": model_name, "state_dict": model.state_dict(), **extra}, path)
