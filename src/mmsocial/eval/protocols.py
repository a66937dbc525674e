"""Evaluation protocols, one per paper table. Metrics come from ``mmsocial.eval.metrics``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mmsocial.eval.table import ResultTable
from mmsocial.models.layers import mlp

# ---------------------------------------------------------------------------- DMAN (Huang et al. 2017)
DMAN_TABLE2_METRICS = ("Micro-P", "Micro-R", "Micro-F1", "Macro-P", "Macro-R", "Macro-F1", "mAP")
DMAN_TABLE3_KS = (1, 5, 10, 20, 50)
DMAN_TABLE3_METRICS = tuple(f"P@{k}" for k in DMAN_TABLE3_KS)


def dman_table2(title: str = "Table 2: multi-label classification") -> ResultTable:
    return ResultTable(title, DMAN_TABLE2_METRICS)


def dman_table3(title: str = "Table 3: tag-query image search") -> ResultTable:
    return ResultTable(title, DMAN_TABLE3_METRICS)


def _check_xy(emb: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    emb, labels = np.asarray(emb, dtype=np.float32), np.asarray(labels)
    if emb.ndim != 2 or labels.ndim != 2 or len(emb) != len(labels):
        raise ValueError(f"{name}: embeddings must be (N, E) and labels (N, C) with the same N, got "
                         f"{emb.shape} and {labels.shape}")
    if not np.isfinite(emb).all():
        raise ValueError(f"{name}: embeddings contain NaN or infinite values")
    return emb, (labels > 0).astype(np.float32)


def fit_fc_classifier(train_emb, train_labels, val_emb=None, val_labels=None, hidden: Sequence[int] = (512, 256),
                      dropout: float = 0.3, lr: float = 1e-3, epochs: int = 100, batch_size: int = 128,
                      patience: int = 10, seed: int = 0, progress: bool = False):
    """§4.3: "the neural network with 3 FC layers" trained with BCE on frozen embeddings.

    Inputs are standardised with the training mean/std. With a validation set, training stops after
    ``patience`` epochs without a lower validation loss and keeps the best epoch. Returns a function
    mapping embeddings to label probabilities.
    """
    x, y = _check_xy(train_emb, train_labels, "train")
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
        xv_np, yv_np = _check_xy(val_emb, val_labels, "validation")
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


def multilabel_scores(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Table 2 metrics from label probabilities: micro/macro P/R/F1 at ``threshold`` and mAP."""
    from mmsocial.eval import metrics

    y_true = (np.asarray(y_true) > 0).astype(np.int64)
    y_score = np.asarray(y_score, dtype=np.float64)
    prf = metrics.multilabel_prf(y_true, y_score, threshold=threshold)
    out = {"Micro-P": prf["micro_precision"], "Micro-R": prf["micro_recall"], "Micro-F1": prf["micro_f1"],
           "Macro-P": prf["macro_precision"], "Macro-R": prf["macro_recall"], "Macro-F1": prf["macro_f1"],
           "mAP": metrics.label_mean_average_precision(y_true, y_score)}
    return {k: float(v) for k, v in out.items()}


def multilabel_classification(train_emb, train_labels, test_emb, test_labels, val_emb=None, val_labels=None,
                              threshold: float = 0.5, seed: int = 0, **classifier_kw) -> dict[str, float]:
    """DMAN protocol (a), §4.3: 3-FC classifier on frozen train embeddings, evaluated on test embeddings."""
    predict = fit_fc_classifier(train_emb, train_labels, val_emb, val_labels, seed=seed, **classifier_kw)
    test_emb, test_labels = _check_xy(test_emb, test_labels, "test")
    return multilabel_scores(test_labels, predict(test_emb), threshold)


def label_queries(label_vocabulary: Sequence[str], tag_vocabulary: Sequence[str]) -> list[tuple[int, int]]:
    """§4.4: one query per label word that appears in the tag vocabulary, as (label index, tag index)."""
    tag_index = {t.lower(): i for i, t in enumerate(tag_vocabulary)}
    return [(li, tag_index[lab.lower()]) for li, lab in enumerate(label_vocabulary) if lab.lower() in tag_index]


def one_hot_queries(tag_indices: Sequence[int], num_tags: int) -> np.ndarray:
    q = np.zeros((len(tag_indices), num_tags), dtype=np.float32)
    q[np.arange(len(tag_indices)), np.asarray(tag_indices, dtype=int)] = 1.0
    return q


def euclidean_scores(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Negative squared Euclidean distances (Q, N): larger = closer, the same ranking as the distance."""
    q, x = np.asarray(queries, dtype=np.float64), np.asarray(items, dtype=np.float64)
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(f"queries (Q, E) and items (N, E) must share E, got {q.shape} and {x.shape}")
    return -((q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :])


def tag_query_search(query_emb, image_emb, relevant, ks: Sequence[int] = DMAN_TABLE3_KS) -> dict[str, float]:
    """DMAN protocol (b), §4.4: rank the test images by Euclidean distance to each projected query,
    P@k averaged over the queries. ``relevant`` (Q, N): image n carries query q's label.
    A k larger than the number of images is left out (its cell prints as "-")."""
    from mmsocial.eval import metrics

    relevant = np.asarray(relevant) > 0
    scores = euclidean_scores(query_emb, image_emb)
    if relevant.shape != scores.shape:
        raise ValueError(f"relevance matrix must be (queries, images) = {scores.shape}, got {relevant.shape}")
    ks = [k for k in ks if k <= scores.shape[1]]
    if not ks:
        raise ValueError(f"every k exceeds the {scores.shape[1]} images to rank")
    p = metrics.precision_at_k(scores, relevance=relevant, ks=ks)
    return {f"P@{k}": float(p[k]) for k in ks}
