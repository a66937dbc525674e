"""Training health of one (row, seed) cell of an experiment: best/last epochs and four flags.

    from mmsocial.eval.health import check_health
    health = check_health("DMAN", 0, cell, HealthSettings())     # health.flags: {"overfit": "why"}

The flags read only what a ``Cell`` holds (its validation ``history``, ``selection`` and
``diagnostics``), so a cell kept from an earlier run is checked the same way:

- **collapsed**: the test embeddings hardly vary (``embedding_relative_variance``, the mean
  per-dimension variance over the mean squared value, below ``collapse_variance``; the absolute
  ``embedding_variance`` when the relative one is missing), or the Table classifier predicts no
  positive at all (``positive_rate`` <= ``min_positive_rate``).
- **stuck**: the training loss fell by less than ``stuck_fraction`` (1 %) of its first-epoch value.
- **overfit**: the validation loss at the last epoch is worse than its best by more than
  ``overfit_margin`` (10 %) of the best (model selection keeps the best epoch; the flag says
  that the last one would have been worse).
- **non-finite**: a NaN or Inf in the history or the diagnostics (``non_finite`` > 0 when the
  trainer stopped on one).

Thresholds are ``config.HealthSettings`` (an experiment's ``health:`` section).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from mmsocial.config import HealthSettings
from mmsocial.systems import Cell

__all__ = ["FLAGS", "SIGNS", "Health", "check_health", "flag_reasons", "selected_epochs", "HealthSettings"]

FLAGS = ("collapsed", "stuck", "overfit", "non-finite")
SIGNS = {"collapsed": "†", "stuck": "‡", "overfit": "§", "non-finite": "¶"}


@dataclass
class Health:
    """The health record of one cell: flags (name -> reason), best and last epochs, the curve picture."""

    row: str
    seed: int
    flags: dict[str, str] = field(default_factory=dict)
    best_epoch: Optional[float] = None
    last_epoch: Optional[float] = None
    metric: Optional[str] = None
    curves: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Health":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


def _finite(x: Any) -> bool:
    return not isinstance(x, (int, float)) or math.isfinite(x)


def _series(history: list[dict[str, float]], key: str) -> list[float]:
    return [float(r[key]) for r in history if key in r and r[key] is not None and _finite(r[key])]


def selected_epochs(cell: Cell) -> tuple[Any, Optional[float]]:
    """(kept, last) epoch of a cell: the selection's ``best_epoch`` / ``last_epoch``, or its ``best_step`` /
    ``last_step`` found in the history (systems that count iterations); kept = last when no validation
    metric chose. A per-modality selection (``{"image": 3, "text": 5}``) is returned as it is."""
    sel = cell.selection or {}
    epoch_at = {float(r["step"]): float(r["epoch"]) for r in cell.history
                if r.get("step") is not None and r.get("epoch") is not None}

    def epoch_of(epoch_key: str, step_key: str) -> Any:
        if sel.get(epoch_key) is not None:
            return sel[epoch_key]
        return None if sel.get(step_key) is None else epoch_at.get(float(sel[step_key]))

    epochs = _series(cell.history, "epoch")
    last = epoch_of("last_epoch", "last_step")
    if last is None and epochs:
        last = epochs[-1]
    return (epoch_of("best_epoch", "best_step") if sel.get("metric") else last), last


def flag_reasons(cell: Cell, settings: HealthSettings | None = None) -> dict[str, str]:
    """The flags a cell earns, each with a one-line reason; empty when it is healthy."""
    s = settings or HealthSettings()
    d, history, flags = cell.diagnostics, cell.history, {}
    rel, var, pos = d.get("embedding_relative_variance"), d.get("embedding_variance"), d.get("positive_rate")
    if rel is not None and _finite(rel) and rel < s.collapse_variance:
        flags["collapsed"] = f"test embeddings' relative variance {rel:.2g} < {s.collapse_variance:g}"
    elif rel is None and var is not None and _finite(var) and var < s.collapse_variance:
        flags["collapsed"] = f"test embeddings' variance {var:.2g} < {s.collapse_variance:g}"
    if pos is not None and _finite(pos) and pos <= s.min_positive_rate:
        why = f"the classifier predicts {'no' if pos == 0 else f'{pos:.2%}'} positive labels on the test posts"
        flags["collapsed"] = f"{flags['collapsed']}; {why}" if "collapsed" in flags else why
    train = _series(history, "train_loss")
    if len(train) >= 2 and train[0] != 0:
        fell = (train[0] - min(train)) / abs(train[0])
        if fell < s.stuck_fraction:
            flags["stuck"] = (f"training loss fell {fell:.2%} from the first epoch ({train[0]:.4g} -> "
                              f"min {min(train):.4g}), < {s.stuck_fraction:.0%}")
    val = _series(history, "val_loss")
    if len(val) >= 2:
        best, last = min(val), val[-1]
        if last - best > s.overfit_margin * abs(best):
            rise = f"{(last - best) / abs(best):.0%} above its best {best:.4g}" if best else "above its best of 0"
            flags["overfit"] = (f"last validation loss {last:.4g} is {rise} (> {s.overfit_margin:.0%}); the best "
                                f"epoch is the one kept"
                                if cell.selection and cell.selection.get("metric") else
                                f"last validation loss {last:.4g} is above its best {best:.4g} by more than "
                                f"{s.overfit_margin:.0%}, and the last epoch is the one kept")
    bad = sorted({k for r in history for k, v in r.items() if not _finite(v)}
                 | {k for k, v in d.items() if not _finite(v)})
    if bad or d.get("non_finite", 0) > 0:
        flags["non-finite"] = ("NaN/Inf in " + ", ".join(bad)) if bad else "training stopped on a NaN/Inf loss"
    return {f: flags[f] for f in FLAGS if f in flags}


def check_health(row: str, seed: int, cell: Cell, settings: HealthSettings | None = None,
                 where: str | Path | None = None) -> Health:
    """Flags, best and last epochs of a cell; with ``where``, ``curves.png`` (if it has a history)
    and ``health.json`` are written there."""
    s = settings or HealthSettings()
    sel = cell.selection or {}
    best, last = selected_epochs(cell)
    health = Health(row, int(seed), flag_reasons(cell, s), best, last, sel.get("metric"))
    if where is not None:
        import json

        where = Path(where)
        where.mkdir(parents=True, exist_ok=True)
        if s.plots and cell.history:
            from mmsocial.viz.curves import plot_training_curves

            title = f"{row}, seed {seed}" + (f" [{', '.join(health.flags)}]" if health.flags else "")
            health.curves = str(plot_training_curves(cell.history, where / "curves.png", title=title,
                                                     best_epoch=best if sel.get("metric") and isinstance(best, (int, float))
                                                     else None))
        (where / "health.json").write_text(json.dumps(health.to_dict(), indent=1))
    return health
