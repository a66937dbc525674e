"""Evaluators that train something on frozen embeddings: the probes of the papers' protocols.

``interest_f1``: DU2MCE §4.2's user-interest probe (linear SVM, C = 1, 5-fold stratified CV, F1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["interest_f1"]


def interest_f1(embeddings, labels, C: float = 1.0, folds: int = 5, seed: int = 0, average: str = "macro",
                standardize: bool = True, max_iter: int = 10000) -> float:
    """DU2MCE Table 3: mean F1 over ``folds`` stratified folds of a linear SVM (scikit-learn LinearSVC, C)
    trained on the other folds. ``labels``: one class per user (multi-class); F1 averaged over the
    classes with ``average`` ("macro" by default). The folds are shuffled with ``seed``. ``standardize``:
    scale each dimension to zero mean and unit variance on the training folds first (the paper does not
    say; without it embeddings of very different scales, e.g. mean word2vec, are not comparable at C = 1).

    Equals ``cross_val_score(make_pipeline(StandardScaler(), LinearSVC(C=C)), X, y, cv=StratifiedKFold(folds,
    shuffle=True, random_state=seed), scoring=f"f1_{average}").mean()`` (without the scaler when not
    ``standardize``).
    """
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"interest_f1 needs (N, E) embeddings and (N,) labels with the same N, got "
                         f"{x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("interest_f1: the user embeddings contain NaN or infinite values")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"interest_f1 needs at least 2 interest classes, got {len(classes)}")
    if counts.min() < folds:
        raise ValueError(f"interest class {str(classes[np.argmin(counts)])!r} has {counts.min()} users, fewer than the "
                         f"{folds} folds of the stratified CV; merge or drop the small classes")
    scores = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        xtr, xte = x[train], x[test]
        if standardize:
            mu, sd = xtr.mean(0), xtr.std(0)
            sd = np.where(sd > 0, sd, 1.0)
            xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        svm = LinearSVC(C=C, max_iter=max_iter).fit(xtr, y[train])
        scores.append(f1_score(y[test], svm.predict(xte), average=average))
    return float(np.mean(scores))
