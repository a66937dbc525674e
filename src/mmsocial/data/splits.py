"""Train/validation/test splits. Each returns an array of split names aligned with ``corpus.posts``."""

from __future__ import annotations

import numpy as np

from mmsocial.data.corpus import Corpus, CorpusError


def random_split(corpus: Corpus, fractions: dict[str, float], seed: int = 0) -> np.ndarray:
    """Assign posts at random to splits in the given proportions (they must sum to 1)."""
    names, fr = list(fractions), np.array(list(fractions.values()), dtype=float)
    if np.any(fr < 0) or abs(fr.sum() - 1) > 1e-9:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    n = len(corpus)
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum(fr) * n).astype(int)
    out = np.empty(n, dtype=object)
    start = 0
    for name, end in zip(names, bounds):
        out[order[start:end]] = name
        start = end
    return out


def chronological_split(corpus: Corpus, train: float = 0.7, val_share_of_rest: float = 1 / 3,
                        seed: int = 0) -> np.ndarray:
    """UHAN §4.1: the earliest ``train`` fraction trains; the rest is split at random into
    validation (``val_share_of_rest``) and test."""
    ts = corpus.posts["timestamp"].to_numpy()
    if np.isnan(ts).any():
        i = int(np.flatnonzero(np.isnan(ts))[0])
        raise CorpusError(f"post {corpus.posts['post_id'].iloc[i]!r} has no timestamp; "
                          f"a chronological split needs one on every post (field 'timestamp')")
    n = len(ts)
    order = np.argsort(ts, kind="stable")
    n_train = int(round(train * n))
    rest = order[n_train:].copy()
    np.random.default_rng(seed).shuffle(rest)
    n_val = int(round(val_share_of_rest * len(rest)))
    out = np.empty(n, dtype=object)
    out[order[:n_train]] = "train"
    out[rest[:n_val]] = "val"
    out[rest[n_val:]] = "test"
    return out


def dman_split(corpus: Corpus, seed: int = 0) -> np.ndarray:
    """DMAN §4.1: 4:1 train/test at random (validation, if any, is carved from train by the caller)."""
    return random_split(corpus, {"train": 0.8, "test": 0.2}, seed)


def uhan_split(corpus: Corpus, seed: int = 0) -> np.ndarray:
    return chronological_split(corpus, 0.7, 1 / 3, seed)


PAPER_SPLITS = {"dman": dman_split, "uhan": uhan_split}
