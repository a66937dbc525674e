"""Validated configuration: YAML presets loaded into pydantic models with dotted overrides.

A preset is a YAML mapping whose keys are the fields of a pydantic model. Unknown keys and
values of the wrong type are errors that name the file and the key path, e.g.
``configs/dman/small.yaml: train.lr: Input should be a valid number``. Overrides use the
command-line form ``train.lr=0.1`` (the value is read as YAML, so ``0.1`` is a float,
``true`` a bool and ``[a, b]`` a list) or a dict ``{"train.lr": 0.1}``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, Optional, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

__all__ = [
    "ConfigError", "StrictModel", "SyntheticSpec", "ExperimentConfig", "EarlyStoppingConfig", "TrainConfig",
    "load_config", "parse_overrides", "apply_overrides", "save_config", "partial_model", "check_section",
]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file, dict or override is invalid; the message names the source and key."""


class StrictModel(BaseModel):
    """Base for every mmsocial config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EarlyStoppingConfig(StrictModel):
    metric: Optional[str] = Field(None, description="validation metric to watch; None = no early stopping")
    mode: Literal["max", "min"] = "max"
    patience: int = Field(10, ge=1, description="validations without gain before stopping")
    min_delta: float = Field(0.0, ge=0.0, description="a gain must exceed this to count")


class TrainConfig(StrictModel):
    epochs: int = Field(10, ge=1)
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many optimiser steps")
    batch_size: int = Field(32, ge=1, description="per process; the global batch is batch_size * world size")
    shuffle: bool = True
    drop_last: bool = False
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: Literal["none", "step", "halfway", "cosine"] = "none"
    step_size: int = Field(10, ge=1, description="epochs between decays of lr_schedule='step'")
    gamma: float = Field(0.1, gt=0.0, description="decay factor of lr_schedule='step'")
    grad_clip: Optional[float] = Field(None, gt=0.0, description="max global gradient L2 norm")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    eval_every: int = Field(0, ge=0, description="steps between validations; 0 = each epoch")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = each epoch "
                                  "and each validation. When set, a validation also writes one if it "
                                  "improved the early-stopping metric (the best checkpoint)")
    seed: int = 0
    amp: bool = Field(False, description="mixed precision (autocast + GradScaler); CUDA only")
    num_workers: Optional[int] = Field(None, ge=0, description="DataLoader workers; None = the rule of "
                                       "train.resources.default_workers (0 on CPU and for cached features)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(10, ge=1)
    tensorboard: bool = False
    progress: bool = True
    ddp_find_unused_parameters: bool = Field(False, description="DDP option for models with branches "
                                              "that some steps do not use")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs optimizer='sgd' and momentum > 0")
        return self


def partial_model(model: type[StrictModel], name: str) -> type[StrictModel]:
    """A model with ``model``'s fields, each optional with default None: the typed shape of a
    section of overrides (e.g. a system config's ``train:``). Key names and types are checked
    here; the values' ranges are checked when the overrides are applied to ``model``.
    ``overrides.model_dump(exclude_unset=True)`` gives only the keys that were written."""
    fields = {n: (Optional[Annotated[(f.annotation, *f.metadata)]] if f.metadata else Optional[f.annotation],
                  Field(None, description=f.description)) for n, f in model.model_fields.items()}
    return create_model(name, __base__=StrictModel, __doc__=f"Overrides of {model.__name__} (None = "
                        f"not overridden).", **fields)


class SyntheticSpec(StrictModel):
    """A synthetic corpus to build when the config's corpus folder does not exist yet."""

    posts: int = Field(2000, ge=10)
    seed: int = 0


class HealthSettings(StrictModel):
    """Thresholds of the training-health flags the experiment runner sets on every (row, seed) cell
    (``mmsocial.eval.health``). They do not change what a cell computes (not fingerprinted)."""

    collapse_variance: float = Field(1e-4, ge=0, description="collapsed below this relative variance of the "
                                     "test embeddings (mean per-dimension variance / mean squared value)")
    min_positive_rate: float = Field(0.0, ge=0, le=1, description="collapsed when the classifier's share of "
                                     "positive test predictions is <= this (0: predicts no positive)")
    stuck_fraction: float = Field(0.01, ge=0, le=1, description="stuck when the training loss fell less than "
                                  "this share of its first-epoch value")
    overfit_margin: float = Field(0.10, ge=0, description="overfit when the last validation loss exceeds its "
                                  "best by more than this share of the best")
    plots: bool = Field(True, description="write curves.png (train/validation curves) in each cell folder")


class ExperimentConfig(StrictModel):
    """Settings every system's experiment shares; each system's ``Config`` subclasses this, pins
    ``system`` to its name, validates ``rows``/``tables`` against its own and adds typed settings."""

    system: str
    name: str = "experiment"
    corpus: Optional[str] = Field(None, description="corpus folder; built from `synthetic` when absent")
    synthetic: Optional[SyntheticSpec] = None
    workdir: str = "runs/experiment"
    seeds: list[int] = [0, 1, 2]
    rows: list[str] = Field(default_factory=list, description="table rows to run; empty = every row")
    tables: list[str] = Field(default_factory=list, description="paper tables to fill; empty = every table")
    device: str = "cpu"
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (None: usable CPUs minus the 1-minute load average, at least 1; docs/training.md)")

    # Each system's Config names the rows and tables it knows; `rows` and `tables` are checked
    # against them here (an empty `tables` means every table; an empty `rows` is left to the system).
    ROWS: ClassVar[tuple[str, ...]] = ()
    TABLES: ClassVar[tuple[str, ...]] = ()

    @field_validator("rows")
    @classmethod
    def _known_rows(cls, rows: list[str]) -> list[str]:
        bad = [r for r in rows if r not in cls.ROWS]
        if cls.ROWS and bad:
            raise ValueError(f"unknown row(s) {bad}; choose from {list(cls.ROWS)}")
        return rows

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, tables: list[str]) -> list[str]:
        bad = [t for t in tables if t not in cls.TABLES]
        if cls.TABLES and bad:
            raise ValueError(f"unknown table(s) {bad}; choose from {list(cls.TABLES)}")
        return tables or list(cls.TABLES)
    health: HealthSettings = Field(default_factory=HealthSettings, description="training-health flag thresholds")


def _format_errors(source: str, err: ValidationError, prefix: str = "",
                   overrides: Mapping[str, Any] | None = None) -> str:
    """One line per bad key: ``SOURCE: dotted.key: what is wrong (got VALUE)``; a key set by an
    override says so (``--set model.epochs=two``)."""
    lines = []
    for e in err.errors():
        parts = [str(p) for p in (*([prefix] if prefix else []), *e["loc"])
                 if not (isinstance(p, str) and p.startswith("function-"))]
        loc = ".".join(parts) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the model's fields)"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif "input" in e and not isinstance(e["input"], (dict, list)) and e["type"] != "missing":
            shown = repr(e["input"])
            msg += f" (got {shown if len(shown) <= 40 else shown[:37] + '...'})"
        origin = source
        if overrides:
            hit = next((k for k in overrides if loc == str(k) or loc.startswith(f"{k}.")), None)
            origin = f"{source} --set {hit}={_shown(overrides[hit])}" if hit else source
        lines.append(f"{origin}: {loc}: {msg}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def check_section(values: Mapping[str, Any] | None, model: type[M], key: str, source: str = "config") -> M:
    """Validate a free-form section (e.g. ``train:`` held as a dict) against ``model`` now, with
    errors naming the dotted key (``train.lr``), not after a corpus was read or features extracted."""
    try:
        return model.model_validate(dict(values or {}))
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e, prefix=key)) from None


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "train.optimizer=adam"]`` -> ``{"train.lr": 0.1, "train.optimizer": "adam"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=0.1")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | Sequence[str] | None,
                    source: str = "config") -> dict[str, Any]:
    """Return a deep copy of ``data`` with dotted-key overrides set (intermediate dicts created)."""
    out = copy.deepcopy(dict(data))
    if not overrides:
        return out
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: override {key}: {'.'.join(parts[:i + 1])} is a "
                                  f"{type(child).__name__}, not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(source: str | Path | Mapping[str, Any] | BaseModel, model: type[M],
                overrides: Mapping[str, Any] | Sequence[str] | None = None) -> M:
    """Load a YAML file (or dict, or model instance) into ``model``, applying dotted overrides.

    Raises ConfigError whose message names the file and every bad key path.
    """
    if isinstance(source, BaseModel):
        name, data = type(source).__name__, source.model_dump()
    elif isinstance(source, Mapping):
        name, data = "<dict>", dict(source)
    elif isinstance(source, (str, Path)):
        name, data = str(source), _read_yaml(Path(source))
    else:
        raise ConfigError(f"config source must be a YAML path, dict or model, got {type(source).__name__}")
    if overrides and not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    data = apply_overrides(data, overrides, name)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(name, e, overrides=overrides)) from None


def save_config(cfg: BaseModel, path: str | Path) -> Path:
    """Write ``cfg`` as YAML that ``load_config`` reads back to an equal model."""
    from mmsocial.io import write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
