"""Losses shared by several systems: similarities, hinge rank (triplet) loss, weighted BCE."""

from __future__ import annotations

import torch
from torch import Tensor

SIMILARITIES = ("eq1", "cosine", "dot")


def similarity(a: Tensor, b: Tensor, kind: str = "eq1", eps: float = 1e-8) -> Tensor:
    """Row-wise similarity of ``a`` and ``b`` (broadcast over leading dims, last dim = features).

    ``eq1``: DMAN Eq. 1 as printed, ``a·b / (‖a‖ + ‖b‖)``; ``cosine``: ``a·b / (‖a‖‖b‖)``;
    ``dot``: plain inner product.
    """
    dot = (a * b).sum(-1)
    if kind == "dot":
        return dot
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    if kind == "eq1":
        return dot / (na + nb).clamp_min(eps)
    if kind == "cosine":
        return dot / (na * nb).clamp_min(eps)
    raise ValueError(f"unknown similarity {kind!r}; choose one of {SIMILARITIES}")


def hinge_rank_loss(anchor: Tensor, positive: Tensor, negatives: Tensor, margin: float = 0.3,
                    kind: str = "eq1", reduction: str = "sum") -> Tensor:
    """DMAN Eq. 2-3: ``max(0, M - Sim(a, p) + Sim(a, n))`` for every one of the K negatives.

    anchor, positive: (B, E); negatives: (B, K, E). ``reduction`` "sum" (Eq. 3), "mean" or "none"
    (returns (B, K)).
    """
    if anchor.shape != positive.shape or anchor.dim() != 2:
        raise ValueError(f"anchor and positive must both be (B, E), got {tuple(anchor.shape)} "
                         f"and {tuple(positive.shape)}")
    if negatives.dim() != 3 or negatives.shape[0] != anchor.shape[0] or negatives.shape[2] != anchor.shape[1]:
        raise ValueError(f"negatives must be (B, K, E) = ({anchor.shape[0]}, K, {anchor.shape[1]}), "
                         f"got {tuple(negatives.shape)}")
    s_pos = similarity(anchor, positive, kind)[:, None]  # (B, 1)
    s_neg = similarity(anchor[:, None, :], negatives, kind)  # (B, K)
    loss = (margin - s_pos + s_neg).clamp_min(0)
    return _reduce(loss, reduction)


def weighted_bce(y: Tensor, t: Tensor, lam: float = 10.0, reduction: str = "sum", eps: float = 1e-7) -> Tensor:
    """DMAN Eq. 11, ``-(λ T·log Y + (1 - T)·log(1 - Y))`` summed over words.

    The paper prints ``log(1 - T)`` in the second term; ``log(1 - Y)`` is meant (the printed term is
    constant and would be log 0 for positives). ``y`` are probabilities in (0, 1), ``t`` the 0/1 tag
    vectors, both (B, L). ``reduction``: "sum" over posts (Eq. 11), "mean" over posts, or "none" (B,).
    """
    if y.shape != t.shape:
        raise ValueError(f"predictions {tuple(y.shape)} and tag vectors {tuple(t.shape)} differ in shape")
    y = y.clamp(eps, 1 - eps)
    per_post = -(lam * t * torch.log(y) + (1 - t) * torch.log(1 - y)).sum(-1)
    return _reduce(per_post, reduction)


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return x.sum()
    if reduction == "mean":
        return x.mean()
    if reduction == "none":
        return x
    raise ValueError(f"unknown reduction {reduction!r}; choose sum, mean or none")


def contrastive_hinge_loss(scores: Tensor, margin: float = 0.2, max_violation: bool = True) -> Tensor:
    """VSE++ (Faghri et al. 2018) ranking loss over an in-batch (B, B) score matrix, matched pairs on the diagonal.

    For every image i and caption c != i: max(0, m - s(i, i) + s(i, c)) and max(0, m - s(i, i) + s(c, i)).
    ``max_violation``: keep only the hardest negative of each direction (VSE++ "MH"); otherwise sum
    over all negatives (the sum of hinges of VSE0). Averaged over the B pairs.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square (B, B) matrix with matches on the diagonal, got {tuple(scores.shape)}")
    diagonal = scores.diag()[:, None]
    cost_caption = (margin + scores - diagonal).clamp_min(0)  # image i as the query, row i
    cost_image = (margin + scores - diagonal.T).clamp_min(0)  # caption c as the query, column c
    eye = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    cost_caption, cost_image = cost_caption.masked_fill(eye, 0), cost_image.masked_fill(eye, 0)
    if max_violation:
        return (cost_caption.max(1).values + cost_image.max(0).values).mean()
    return (cost_caption.sum(1) + cost_image.sum(0)).mean()
