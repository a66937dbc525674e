"""DU2MCE protocols (§4.2, Tables 2-4): mean median rank of three retrieval tasks, their normalised sum,
the user-interest probe, and the zero-shot view of Table 2. Metrics come from ``mmsocial.eval.metrics``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mmsocial.eval.metrics import ground_truth_ranks, mean_median_rank, normalized_rank_sum
from mmsocial.eval.probes import interest_f1
from mmsocial.eval.table import ResultTable

TASKS = ("Text-To-User", "Image-To-Text", "Image-To-User")
TASK_OF_PAIR = {"T-U": "Text-To-User", "I-T": "Image-To-Text", "I-U": "Image-To-User"}
TABLE2_METRICS = (*TASKS, "Joint")
TABLE3_METRICS = ("F1",)
TABLE4_METRICS = ("Text-User", "Image-Text", "Image-User", "Joint-Performance")
ZEROSHOT_METRICS = TASKS


@dataclass
class RetrievalTask:
    """One retrieval direction: query embeddings, gallery embeddings, and each query's gallery item."""

    query: np.ndarray  # (Q, E)
    gallery: np.ndarray  # (N, E)
    ground_truth: np.ndarray  # (Q,) int: the gallery row of each query's paired item

    @property
    def gallery_size(self) -> int:
        return int(len(self.gallery))


def table2(title: str = "Table 2: cross-modal retrieval, mean median rank") -> ResultTable:
    return ResultTable(title, TABLE2_METRICS, percent=False, digits=3, row_header="Model (λ1, λ2, λ3)")


def table3(title: str = "Table 3: user interest from user embeddings") -> ResultTable:
    return ResultTable(title, TABLE3_METRICS, percent=False, digits=3, row_header="Method")


def table4(title: str = "Table 4: comparison with competing methods, mean median rank") -> ResultTable:
    return ResultTable(title, TABLE4_METRICS, percent=False, digits=3, row_header="Method")


def zeroshot_table(title: str = "Zero-shot retrieval: mean median rank / random on pairs not trained on "
                   "(< 1 = better than chance)") -> ResultTable:
    return ResultTable(title, ZEROSHOT_METRICS, percent=False, digits=3, row_header="Model (λ1, λ2, λ3)")


def mean_median_ranks(tasks: Mapping[str, RetrievalTask], chunk_size: int = 512) -> dict[str, float]:
    """§4.2: for each task, the rank of every query's ground-truth item (cosine similarity, Eq. 3),
    its median per query, averaged over the queries."""
    out = {}
    for name, t in tasks.items():
        ranks = ground_truth_ranks(query=t.query, gallery=t.gallery, similarity="cosine",
                                   ground_truth=np.asarray(t.ground_truth, dtype=np.int64), chunk_size=chunk_size)
        out[name] = mean_median_rank(ranks)
    return out


def joint_rank(ranks: Mapping[str, float], gallery_sizes: Mapping[str, int], tasks: Sequence[str] | None = None) -> float:
    """Table 4's joint performance: Σ over ``tasks`` (default all given) of mean median rank / gallery size."""
    tasks = list(ranks) if tasks is None else list(tasks)
    return normalized_rank_sum({t: ranks[t] for t in tasks}, {t: gallery_sizes[t] for t in tasks})


def random_rank(gallery_size: int) -> float:
    """Expected rank of the paired item under a random order of the gallery: (N + 1) / 2."""
    return (gallery_size + 1) / 2.0


def retrieval_row(tasks: Mapping[str, RetrievalTask]) -> dict[str, float]:
    """Table 2's metrics of one row: the mean median rank of each given task and their normalised sum
    (when all three tasks are given)."""
    ranks = mean_median_ranks(tasks)
    out = dict(ranks)
    if all(t in tasks for t in TASKS):
        out["Joint"] = joint_rank(ranks, {t: tasks[t].gallery_size for t in TASKS}, TASKS)
    return out


def table4_row(table2_metrics: Mapping[str, float]) -> dict[str, float]:
    """Table 4 renames Table 2's columns (same quantities)."""
    rename = dict(zip(TABLE2_METRICS, TABLE4_METRICS))
    return {rename[k]: v for k, v in table2_metrics.items()}


def zeroshot_row(table2_metrics: Mapping[str, float], gallery_sizes: Mapping[str, int],
                 trained_pairs: Sequence[str]) -> dict[str, float]:
    """For every task whose pair was not trained on (λ = 0): mean median rank / random rank."""
    trained = {TASK_OF_PAIR[p] for p in trained_pairs}
    return {t: table2_metrics[t] / random_rank(gallery_sizes[t]) for t in TASKS
            if t not in trained and t in table2_metrics}


def user_interest(user_embeddings, labels, seed: int = 0, C: float = 1.0, folds: int = 5) -> dict[str, float]:
    """Table 3: F1 of a linear SVM (C = 1) on the user embeddings, 5-fold stratified CV (``eval.probes``)."""
    return {"F1": interest_f1(user_embeddings, labels, C=C, folds=folds, seed=seed)}
