"""Averaging baselines (DU2MCE §4.4.2, §4.6: Avg-Text, Avg-Image): a user is the mean of the content
vectors of their posts (mean word2vec of their texts, or their pooled image features); a user with no
such content gets a seeded random vector ("We use a random vector for users having no image content")."""

from __future__ import annotations

import numpy as np


def average_by_user(vectors, user_index, num_users: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(K, E) mean of ``vectors`` (N, E) over the rows of each user (``user_index`` (N,) in [0, K), -1 =
    no user, ignored) and a (K,) bool mask of the users that had at least one row. Users without rows get
    a standard normal vector scaled to the mean norm of the other users' means (seeded)."""
    x = np.asarray(vectors, dtype=np.float64)
    u = np.asarray(user_index, dtype=np.int64)
    if x.ndim != 2 or u.shape != (len(x),):
        raise ValueError(f"average_by_user needs (N, E) vectors and (N,) user indices, got {x.shape} and {u.shape}")
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    if (u >= num_users).any():
        raise ValueError(f"user index {int(u.max())} is outside the {num_users} users")
    keep = u >= 0
    sums = np.zeros((num_users, x.shape[1]))
    np.add.at(sums, u[keep], x[keep])
    counts = np.bincount(u[keep], minlength=num_users)
    has = counts > 0
    out = np.zeros_like(sums)
    out[has] = sums[has] / counts[has, None]
    if (~has).any():
        scale = float(np.linalg.norm(out[has], axis=1).mean()) if has.any() else 1.0
        r = np.random.default_rng(seed).standard_normal(((~has).sum(), x.shape[1]))
        out[~has] = r / np.linalg.norm(r, axis=1, keepdims=True) * scale
    return out.astype(np.float32), has
