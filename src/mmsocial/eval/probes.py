"""Evaluators that train something on frozen embeddings: the probes of the papers' protocols.

``fit_fc_classifier``: DMAN §4.3's classifier with 3 FC layers (BCE, multi-label).
``interest_f1``: DU2MCE §4.2's user-interest probe (linear SVM, C = 1, 5-fold stratified CV, F1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mmsocial.arrays import finite_2d
from mmsocial.models.layers import mlp

__all__ = ["check_embeddings", "fit_fc_classifier", "interest_f1"]


def check_embeddings(emb, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, E) finite float32 embeddings and (N, C) 0/1 float32 labels, or a ValueError naming ``name``."""
    emb, labels = finite_2d(emb, f"{name} embeddings", np.float32), finite_2d(labels, f"{name} labels")
    if len(emb) != len(labels):
        raise ValueError(f"{name}: embeddings must be (N, E) and labels (N, C) with the same N, got "
                         f"{emb.shape} and {labels.shape}")
    return emb, (labels > 0).astype(np.float32)


def fit_fc_classifier(train_emb, train_labels, val_emb=None, val_labels=None, hidden: Sequence[int] = (512, 256),
                      dropout: float = 0.3, lr: float = 1e-3, epochs: int = 100, batch_size: int = 128,
                      patience: int = 10, seed: int = 0, progress: bool = False):
    """DMAN §4.3: "the neural network with 3 FC layers" trained with BCE on frozen embeddings.

    Inputs are standardised with the training mean/std. With a validation set, training stops after
    ``patience`` epochs without a lower validation loss and keeps the best epoch. Returns a function
    mapping embeddings to label probabilities.
    """
    x, y = check_embeddings(train_emb, train_labels, "train")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
    norm = lambda a: torch.as_tensor((np.asarray(a, dtype=np.float32) - mu) / sd)  # noqa: E731
    net = mlp((x.shape[1], *hidden, y.shape[1]), dropout=dropout)  # 3 FC layers with the default hidden
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = norm(x), torch.as_tensor(y)
    has_val = val_emb is not None and val_labels is not None and len(val_emb) > 0
    if has_val:
        xv_np, yv_np = check_embeddings(val_emb, val_labels, "validation")
        xv, yv = norm(xv_np), torch.as_tensor(yv_np)
    best, best_state, bad = np.inf, None, 0
    for _ in tqdm(range(epochs), desc="FC classifier", disable=not progress):
        net.train()
        for idx in torch.randperm(len(xt), generator=g).split(batch_size):
            loss = loss_fn(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if has_val:
            net.eval()
            with torch.no_grad():
                v = loss_fn(net(xv), yv).item()
            if v < best - 1e-5:
                best, bad = v, 0
                best_state = {k: t.clone() for k, t in net.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()

    @torch.no_grad()
    def predict_proba(emb) -> np.ndarray:
        return torch.sigmoid(net(norm(emb))).numpy()

    return predict_proba


def interest_f1(embeddings, labels, C: float = 1.0, folds: int = 5, seed: int = 0, average: str = "macro",
                standardize: bool = True, max_iter: int = 1000) -> float:
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
