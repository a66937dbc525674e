"""Checkpoints: one folder per saved step, written atomically, plus an index naming last and best.

    OUT_DIR/checkpoints/step_00001234/model.safetensors   weights (safetensors)
                                     /config.json         train config + the caller's run config
                                     /state.pt            optimiser, AMP scaler, RNG, data position,
                                                          early-stopping state, history
    OUT_DIR/checkpoints/index.json                       {"last": "step_...", "best": "step_..."}

A folder is written under a temporary name and renamed when complete; index.json is replaced
atomically after it. A run killed at any moment leaves the previous index valid.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import _remove_duplicate_names, load_model, save_file, save_model
from torch import nn

from mmsocial.io import TMP_MARK, atomic_folder, restore_old, write_json

__all__ = ["CheckpointError", "WeightsSnapshot", "weights_snapshot", "checkpoint_dir", "save_checkpoint", "read_index", "write_index", "find_checkpoint",
           "load_checkpoint", "load_training_state", "prune_checkpoints", "recover_checkpoints"]

WEIGHTS, CONFIG, STATE, INDEX = "model.safetensors", "config.json", "state.pt", "index.json"


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing or incomplete; the message names the path."""


@dataclass
class WeightsSnapshot:
    """A copy of a model's weights as ``safetensors.torch.save_model`` writes them (shared tensors
    kept once, the dropped names in the metadata), to be written later or in another thread."""

    tensors: dict[str, torch.Tensor]
    metadata: Optional[dict[str, str]]


def weights_snapshot(model: nn.Module) -> WeightsSnapshot:
    state_dict = model.state_dict()
    metadata: Optional[dict[str, str]] = None
    for kept_name, removed in _remove_duplicate_names(state_dict).items():
        for name in removed:
            metadata = metadata or {}
            metadata.setdefault(name, kept_name)
            del state_dict[name]
    return WeightsSnapshot({k: v.detach().contiguous().clone() for k, v in state_dict.items()}, metadata)


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def save_checkpoint(root: str | Path, step: int, model: "nn.Module | WeightsSnapshot", state: dict[str, Any],
                    config: dict[str, Any]) -> Path:
    """Write ``root/step_{step:08d}`` atomically and return it (an existing one is replaced).
    ``model``: the model, or a ``weights_snapshot`` of it (the same file)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    with atomic_folder(final) as tmp:  # fsync'ed and renamed when complete (mmsocial.io)
        if isinstance(model, WeightsSnapshot):
            save_file(model.tensors, str(tmp / WEIGHTS), metadata=model.metadata)
        else:
            save_model(model, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=1, default=str), encoding="utf-8")
        torch.save(state, tmp / STATE)
    return final


def read_index(root: str | Path) -> dict[str, Optional[str]]:
    path = Path(root) / INDEX
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable checkpoint index ({e}); delete it to start over") from None
    return index


def recover_checkpoints(root: str | Path) -> None:
    """For the run's own trainer, before it reads the index: put back a step folder that a kill
    left under ``.step_….old-*`` while it was being replaced (``io.replace_folder``)."""
    index = read_index(root)
    for name in {index.get("last"), index.get("best")} - {None}:
        restore_old(Path(root) / name)


def write_index(root: str | Path, last: Optional[Path], best: Optional[Path]) -> None:
    write_json(Path(root) / INDEX, {"last": last.name if last else None, "best": best.name if best else None})


def prune_checkpoints(root: str | Path, keep: set[str]) -> None:
    """Delete step folders (and leftovers of interrupted writes) not named in ``keep``."""
    for p in Path(root).iterdir():
        if p.is_dir() and (TMP_MARK in p.name or ".old-" in p.name or
                           (p.name.startswith("step_") and p.name not in keep)):
            shutil.rmtree(p, ignore_errors=True)


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """Resolve a run folder, its ``checkpoints`` folder, or a step folder to a step folder."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    path = Path(path)
    if path.is_file() and path.name == WEIGHTS:
        return path.parent
    if (path / WEIGHTS).is_file():
        return path
    for root in (path / "checkpoints", path):
        index = read_index(root)
        if index:
            name = index.get(which) or index.get("last")
            if not name or not (root / name / WEIGHTS).is_file():
                raise CheckpointError(f"{root / INDEX} names {name!r}, which has no {WEIGHTS}")
            return root / name
    raise CheckpointError(f"{path}: no checkpoint here (expected {WEIGHTS}, or checkpoints/{INDEX} "
                          "from mmsocial.train.trainer.train)")


def load_checkpoint(path: str | Path, model: nn.Module, which: str = "best", strict: bool = True,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load weights into ``model`` (in place) and return the checkpoint's config.json as a dict.

    ``path`` is a step folder, its model.safetensors, or a run folder (then ``which`` picks
    the best or last checkpoint; best falls back to last when no metric was tracked).
    """
    folder = find_checkpoint(path, which)
    missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=strict, device=str(device))
    config_path = folder / CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    config["checkpoint"] = str(folder)
    if not strict:
        config["missing_keys"], config["unexpected_keys"] = list(missing), list(unexpected)
    return config


def load_training_state(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; this checkpoint holds weights only and cannot be resumed")
    return torch.load(path, map_location="cpu", weights_only=True)
