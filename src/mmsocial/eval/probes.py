"""Evaluators that train something on frozen embeddings: the probes of the papers' protocols.

``fit_fc_classifier``: DMAN §4.3's classifier with 3 FC layers (BCE, multi-label).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mmsocial.models.layers import mlp

__all__ = ["check_embeddings", "fit_fc_classifier"]


def check_embeddings(emb, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, E) finite float32 embeddings and (N, C) 0/1 float32 labels, or a ValueError naming ``name``."""
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
