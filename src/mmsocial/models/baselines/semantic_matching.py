"""Semantic matching baselines: each modality is mapped to class posteriors, and retrieval compares
posteriors across modalities.

- SM (Rasiwasia et al., ACM MM 2010): a multinomial logistic regression per modality (scikit-learn).
- DEEP-SM (Wei et al., TCYB 2016): the same idea with a deep network per modality, each trained on
  its own with softmax cross-entropy (here an MLP on cached features; the paper fine-tunes a CNN).

Multi-label items: SM repeats an item once per label (one row per (item, label)); DEEP-SM trains
on the normalised multi-hot vector as a soft target. Both ``predict_proba`` rows sum to 1.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from mmsocial.models.layers import mlp


def _features(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or len(a) == 0:
        raise ValueError(f"{name} must be a non-empty (items, features) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _labels(Y, n: int) -> np.ndarray:
    Y = np.asarray(Y)
    if Y.ndim != 2 or len(Y) != n:
        raise ValueError(f"labels must be a (items, classes) multi-hot matrix with {n} rows, got shape {Y.shape}")
    Y = (Y > 0)
    empty = np.flatnonzero(Y.sum(1) == 0)
    if len(empty):
        raise ValueError(f"item {int(empty[0])} has no label ({len(empty)} such items); every training item needs one")
    return Y


class SemanticMatching:
    """SM: per-modality multinomial logistic regression; ``transform(m, X)`` = class posteriors (N, c).

    Features are standardised with the training mean/std before the regression. C: inverse L2
    strength (scikit-learn).
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000, modalities: Sequence[str] = ("image", "text")):
        if C <= 0:
            raise ValueError(f"C must be > 0, got {C}")
        self.C, self.max_iter, self.modalities = C, max_iter, tuple(modalities)

    def fit(self, views: dict, labels) -> "SemanticMatching":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        missing = [m for m in self.modalities if m not in views]
        if missing:
            raise ValueError(f"views lacks modality {missing}; give {self.modalities}")
        n = len(views[self.modalities[0]])
        Y = _labels(labels, n)
        self.n_classes_ = Y.shape[1]
        item, cls = np.nonzero(Y)  # one row per (item, label)
        self.models_ = {}
        for m in self.modalities:
            X = _features(views[m], m)
            if len(X) != n:
                raise ValueError(f"view {m!r} has {len(X)} rows, expected {n}")
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))
            clf.fit(X[item], cls)
            self.models_[m] = clf
        return self

    def transform(self, modality: str, X) -> np.ndarray:
        if not hasattr(self, "models_"):
            raise RuntimeError("SemanticMatching is not fitted; call fit(views, labels) first")
        if modality not in self.models_:
            raise ValueError(f"unknown modality {modality!r}; fitted: {list(self.models_)}")
        clf = self.models_[modality]
        proba = clf.predict_proba(_features(X, modality))
        out = np.zeros((len(proba), self.n_classes_))  # a class absent from training gets posterior 0
        out[:, clf.classes_] = proba
        return out

    predict_proba = transform


class DeepSemanticMatching:
    """DEEP-SM: one MLP per modality (features -> hidden -> c, ReLU + dropout), softmax cross-entropy
    on the (normalised multi-hot) label vector, Adam. With validation data, each modality keeps the
    epoch of lowest validation loss (selection on validation, never on test)."""

    def __init__(self, hidden: Sequence[int] = (1024,), dropout: float = 0.5, lr: float = 1e-3,
                 weight_decay: float = 1e-5, epochs: int = 50, batch_size: int = 256, random_state: int = 0,
                 modalities: Sequence[str] = ("image", "text"), device: str = "cpu"):
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        self.hidden, self.dropout, self.lr, self.weight_decay = tuple(hidden), dropout, lr, weight_decay
        self.epochs, self.batch_size, self.random_state = epochs, batch_size, random_state
        self.modalities, self.device = tuple(modalities), device

    def fit(self, views: dict, labels, val_views: Optional[dict] = None, val_labels=None) -> "DeepSemanticMatching":
        n = len(views[self.modalities[0]])
        Y = _labels(labels, n).astype(np.float32)
        T = torch.as_tensor(Y / Y.sum(1, keepdims=True))
        Tv = None
        if val_views is not None and val_labels is not None:
            Yv = _labels(val_labels, len(val_views[self.modalities[0]])).astype(np.float32)
            Tv = torch.as_tensor(Yv / Yv.sum(1, keepdims=True))
        self.n_classes_ = Y.shape[1]
        self.nets_, self.scalers_, self.history_ = {}, {}, {}
        for k, m in enumerate(self.modalities):
            X = _features(views[m], m)
            mean, std = X.mean(0), X.std(0)
            std = np.where(std > 1e-8, std, 1.0)
            self.scalers_[m] = (mean, std)
            x = torch.as_tensor((X - mean) / std, dtype=torch.float32)
            xv = (torch.as_tensor((_features(val_views[m], m) - mean) / std, dtype=torch.float32)
                  if Tv is not None else None)
            torch.manual_seed(self.random_state * 1000 + k)
            net = mlp((X.shape[1], *self.hidden, self.n_classes_), dropout=self.dropout).to(self.device)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            rng = np.random.default_rng([self.random_state, k])
            best, best_state, hist = np.inf, None, []
            for epoch in range(self.epochs):
                net.train()
                order = rng.permutation(n)
                total = 0.0
                for a in range(0, n, self.batch_size):
                    idx = torch.as_tensor(order[a:a + self.batch_size])
                    loss = nn.functional.cross_entropy(net(x[idx].to(self.device)), T[idx].to(self.device))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(idx)
                rec = {"epoch": epoch + 1, "train_loss": total / n}
                if xv is not None:
                    net.eval()
                    with torch.no_grad():
                        rec["val_loss"] = float(nn.functional.cross_entropy(net(xv.to(self.device)), Tv.to(self.device)))
                    if rec["val_loss"] < best:
                        best, best_state, rec["kept"] = rec["val_loss"], copy.deepcopy(net.state_dict()), True
                hist.append(rec)
            if best_state is not None:
                net.load_state_dict(best_state)
            self.nets_[m], self.history_[m] = net.eval(), hist
        return self

    @torch.no_grad()
    def transform(self, modality: str, X) -> np.ndarray:
        if not hasattr(self, "nets_"):
            raise RuntimeError("DeepSemanticMatching is not fitted; call fit(views, labels) first")
        if modality not in self.nets_:
            raise ValueError(f"unknown modality {modality!r}; fitted: {list(self.nets_)}")
        mean, std = self.scalers_[modality]
        x = torch.as_tensor((_features(X, modality) - mean) / std, dtype=torch.float32, device=self.device)
        logits = self.nets_[modality](x).double().cpu()
        return torch.softmax(logits, dim=-1).numpy()  # float64: near-saturated posteriors keep their order

    predict_proba = transform
