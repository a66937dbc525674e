"""Input checks on arrays shared by the metrics, the probes and the baselines (one copy each)."""

from __future__ import annotations

import numpy as np

__all__ = ["finite_2d"]


def finite_2d(x, name: str, dtype=None, min_rows: int = 0) -> np.ndarray:
    """``x`` as a 2-D numeric array (items x features) of ``dtype`` (None: as given) with no NaN or
    infinity and at least ``min_rows`` rows; else a ValueError naming ``name`` and the first bad entry."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (items x features); got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold numbers; got dtype {a.dtype}")
    if len(a) < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s) (items x features); got shape {a.shape}")
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(f"{name} contains NaN or infinite values (first at index {where}); "
                         f"remove or fix those entries")
    return a
