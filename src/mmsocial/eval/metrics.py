"""Evaluation metrics: pure functions on NumPy arrays.

Retrieval metrics take either a dense score matrix ``scores`` of shape (Q, N) (higher = better),
or query/gallery embeddings plus a ``similarity`` ('dot', 'cosine', 'euclidean' = negative
Euclidean distance). Either way the work runs over blocks of ``chunk_size`` query rows, so a
score matrix over 50k x 50k items is never built at once when embeddings are given.

Tie rule (every ranking metric): items with equal scores are ranked by gallery index, lowest
first (``ties="stable"``). Average precision also offers ``ties="average"`` (the expected AP over
all orders of each group of tied items, McSherry & Najork 2008) and ``ties="threshold"`` (each
distinct score is one threshold, as scikit-learn's ``average_precision_score``). See
docs/metrics.md for every definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Callable, Literal

import numpy as np
from scipy.stats import rankdata
from tqdm.auto import tqdm

from mmsocial.arrays import finite_2d
from mmsocial.data import vocab

Similarity = Literal["dot", "cosine", "euclidean"]
Ties = Literal["stable", "average", "threshold"]
SIMILARITIES = ("dot", "cosine", "euclidean")
TIES = ("stable", "average", "threshold")
K_DENOMINATORS = ("retrieved", "relevant", "min")
DEFAULT_CHUNK_SIZE = 512

__all__ = [
    "similarity_scores", "iter_score_blocks", "multi_hot",
    "average_precision", "mean_average_precision", "precision_at_k",
    "ground_truth_ranks", "recall_at_k", "median_rank", "mean_rank", "mean_median_rank",
    "retrieval_metrics", "rsum", "normalized_rank_sum",
    "multilabel_prf", "label_average_precision", "label_mean_average_precision",
    "mse", "mae", "spearman",
]


# ----------------------------------------------------------------------------- input checks

def _check_finite(a: np.ndarray, name: str, row_offset: int = 0) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = [int(i) for i in np.argwhere(~np.isfinite(a))[0]]
        bad[0] += row_offset
        where = tuple(bad) if len(bad) > 1 else bad[0]
        raise ValueError(f"{name} contains NaN or infinite values (first at index {where}); "
                         f"remove or fix those entries before computing metrics")


def _numeric(x, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in ndims:
        raise ValueError(f"{name} must be a {' or '.join(f'{d}-D' for d in ndims)} array; "
                         f"got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold numbers; got dtype {a.dtype}")
    return a


def _check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer (rows per block); got {chunk_size!r}")
    return int(chunk_size)


def _check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _check_ks(ks, name: str, n_gallery: int | None = None) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, (int, np.integer)) else tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"{name} must be positive integers; got {ks!r}")
    if n_gallery is not None and max(ks) > n_gallery:
        raise ValueError(f"{name} asks for the top {max(ks)} but the gallery holds only "
                         f"{n_gallery} items; pass smaller values")
    return tuple(int(k) for k in ks)


# ----------------------------------------------------------------------------- scores

def _prepare_embeddings(query, gallery, similarity: str):
    _check_choice(similarity, "similarity", SIMILARITIES)
    q, g = finite_2d(query, "query"), finite_2d(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery embeddings must have the same dimension; "
                         f"got query {q.shape} and gallery {g.shape}")
    dtype = np.result_type(q.dtype, g.dtype, np.float32)
    q, g = q.astype(dtype, copy=False), g.astype(dtype, copy=False)
    extra = None
    if similarity == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), np.finfo(dtype).tiny)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), np.finfo(dtype).tiny)
    elif similarity == "euclidean":
        extra = (np.einsum("ij,ij->i", q, q), np.einsum("ij,ij->i", g, g))
    return q, g, extra


def _similarity_block(q, g, similarity: str, extra, start: int, stop: int) -> np.ndarray:
    block = q[start:stop] @ g.T
    if similarity == "euclidean":
        q_sq, g_sq = extra
        block *= -2
        block += q_sq[start:stop, None]
        block += g_sq[None, :]
        np.maximum(block, 0, out=block)
        np.sqrt(block, out=block)
        np.negative(block, out=block)
    return block


def similarity_scores(query, gallery, similarity: Similarity = "cosine") -> np.ndarray:
    """Dense (Q, N) score matrix between query and gallery embeddings (higher = more similar).

    'dot': q.g; 'cosine': q.g / (|q| |g|); 'euclidean': -|q - g|. Computed in the embeddings'
    floating dtype (at least float32).
    """
    q, g, extra = _prepare_embeddings(query, gallery, similarity)
    return _similarity_block(q, g, similarity, extra, 0, q.shape[0])


def _score_source(scores, query, gallery, similarity) -> tuple[int, int, Callable[[int, int], np.ndarray]]:
    if scores is not None:
        if query is not None or gallery is not None:
            raise ValueError("give either scores or query and gallery embeddings, not both")
        s = _numeric(scores, "scores", 2)
        if s.dtype.kind != "f":
            s = s.astype(np.float64)

        def block(start: int, stop: int) -> np.ndarray:
            b = s[start:stop]
            _check_finite(b, "scores", start)
            return b

        return s.shape[0], s.shape[1], block
    if query is None or gallery is None:
        raise ValueError("give a score matrix (scores=...) or both query= and gallery= embeddings")
    q, g, extra = _prepare_embeddings(query, gallery, similarity)
    return q.shape[0], g.shape[0], lambda start, stop: _similarity_block(q, g, similarity, extra, start, stop)


def iter_score_blocks(scores=None, *, query=None, gallery=None, similarity: Similarity = "cosine",
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first query row, score block of shape (rows, N)) over blocks of ``chunk_size`` rows."""
    chunk_size = _check_chunk_size(chunk_size)
    n_queries, _, block = _score_source(scores, query, gallery, similarity)
    for start in range(0, n_queries, chunk_size):
        yield start, block(start, min(start + chunk_size, n_queries))


def _blocks(n_queries: int, chunk_size: int, progress: bool, desc: str) -> Iterable[int]:
    starts = range(0, n_queries, chunk_size)
    return tqdm(starts, desc=desc, unit="block", leave=False) if progress else starts


# ----------------------------------------------------------------------------- labels

def _label_lists(labels, name: str) -> list[list]:
    if isinstance(labels, np.ndarray) and labels.ndim == 1:
        return [[x] for x in labels.tolist()]
    out = []
    for i, item in enumerate(labels):
        if item is None:
            out.append([])
        elif isinstance(item, (str, bytes, int, np.integer)):
            out.append([item])
        else:
            try:
                out.append(list(item))
            except TypeError:
                raise ValueError(f"{name}[{i}] must be a list of labels; got {item!r}") from None
    return out


def multi_hot(labels, vocabulary: Sequence | None = None) -> tuple[np.ndarray, list]:
    """Turn per-item label lists (or a 1-D array of single labels) into a (n, L) float32 matrix.

    Returns (matrix, vocabulary). Without a vocabulary, labels are numbered in order of first
    appearance; with one, a label outside it raises ValueError.
    """
    lists = _label_lists(labels, "labels")
    if vocabulary is None:
        vocabulary = list(dict.fromkeys(lab for labs in lists for lab in labs))
    return vocab.multi_hot(lists, vocabulary, unknown="raise", name="labels"), list(vocabulary)


def _check_binary(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype != bool:
        _check_finite(a, name)
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0/1 (or booleans)")
    return a


def _label_pair(query_labels, gallery_labels) -> tuple[np.ndarray, np.ndarray]:
    as_matrix = [isinstance(x, np.ndarray) and x.ndim == 2 for x in (query_labels, gallery_labels)]
    if all(as_matrix):
        qh = _check_binary(_numeric(query_labels, "query_labels", 2), "query_labels")
        gh = _check_binary(_numeric(gallery_labels, "gallery_labels", 2), "gallery_labels")
        if qh.shape[1] != gh.shape[1]:
            raise ValueError(f"query_labels and gallery_labels must have the same number of label "
                             f"columns; got {qh.shape} and {gh.shape}")
        return qh.astype(np.float32), gh.astype(np.float32)
    if any(as_matrix):
        raise ValueError("give query_labels and gallery_labels both as multi-hot matrices or both "
                         "as label lists")
    q_lists = _label_lists(query_labels, "query_labels")
    g_lists = _label_lists(gallery_labels, "gallery_labels")
    matrix, _ = multi_hot(q_lists + g_lists)
    return matrix[: len(q_lists)], matrix[len(q_lists):]


def _relevance_source(relevance, query_labels, gallery_labels, n_queries: int, n_gallery: int):
    if relevance is not None:
        if query_labels is not None or gallery_labels is not None:
            raise ValueError("give either relevance or query_labels and gallery_labels, not both")
        rel = _check_binary(_numeric(relevance, "relevance", 2), "relevance")
        if rel.shape != (n_queries, n_gallery):
            raise ValueError(f"relevance must have the shape of the scores ({n_queries}, {n_gallery}); "
                             f"got {rel.shape}")
        return lambda start, stop: rel[start:stop].astype(bool, copy=False)
    if query_labels is None or gallery_labels is None:
        raise ValueError("give relevance= (Q, N) or both query_labels= and gallery_labels=")
    qh, gh = _label_pair(query_labels, gallery_labels)
    if qh.shape[0] != n_queries:
        raise ValueError(f"query_labels has {qh.shape[0]} rows but there are {n_queries} queries")
    if gh.shape[0] != n_gallery:
        raise ValueError(f"gallery_labels has {gh.shape[0]} rows but the gallery holds {n_gallery} items")
    return lambda start, stop: (qh[start:stop] @ gh.T) > 0


# ----------------------------------------------------------------------------- average precision

def _ap_block(block: np.ndarray, rel: np.ndarray, ties: str, k: int | None, k_denominator: str) -> np.ndarray:
    n_rows, n = block.shape
    order = np.argsort(-block, axis=1, kind="stable")
    r = np.take_along_axis(rel, order, axis=1)
    n_relevant = rel.sum(axis=1)
    positions = np.arange(1, n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if k is not None:
            r = r[:, :k]
            hits = np.cumsum(r, axis=1)
            total = (r * (hits / positions[:k])).sum(axis=1)
            denominator = {"retrieved": hits[:, -1], "relevant": n_relevant,
                           "min": np.minimum(n_relevant, k)}[k_denominator]
            ap = np.where(denominator > 0, total / np.maximum(denominator, 1), 0.0)
            return np.where(n_relevant > 0, ap, np.nan)
        if ties != "stable":
            s = np.take_along_axis(block, order, axis=1)
            new_group = np.ones((n_rows, n), dtype=bool)
            np.not_equal(s[:, 1:], s[:, :-1], out=new_group[:, 1:])
        if ties == "stable" or new_group.all():
            hits = np.cumsum(r, axis=1)
            total = (r * (hits / positions)).sum(axis=1)
        else:
            group = np.cumsum(new_group, axis=1) - 1 + (np.arange(n_rows) * n)[:, None]
            size = np.bincount(group.ravel(), minlength=n_rows * n)[group]
            rel_in_group = np.bincount(group.ravel(), weights=r.ravel(), minlength=n_rows * n)[group]
            start = np.maximum.accumulate(np.where(new_group, positions - 1, 0), axis=1)
            rel_before = np.take_along_axis(np.cumsum(r, axis=1) - r, start, axis=1)
            if ties == "threshold":
                # precision at the end of the tie group, for each relevant item in it
                total = (r * ((rel_before + rel_in_group) / (start + size))).sum(axis=1)
            else:
                # E[rel(p) P(p)] over uniform orders inside each group (McSherry & Najork 2008)
                i = positions - start
                expected_before = (i - 1) * (rel_in_group - 1) / np.maximum(size - 1, 1)
                total = ((rel_in_group / size) * (rel_before + 1 + expected_before) / positions).sum(axis=1)
        return np.where(n_relevant > 0, total / np.maximum(n_relevant, 1), np.nan)


def _exclude_diagonal(block: np.ndarray, rel: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(block.shape[0])
    block = np.array(block, dtype=block.dtype, copy=True)
    rel = np.array(rel, dtype=bool, copy=True)
    block[rows, start + rows] = -np.inf
    rel[rows, start + rows] = False
    return block, rel


def average_precision(scores=None, *, query=None, gallery=None, similarity: Similarity = "cosine",
                      relevance=None, query_labels=None, gallery_labels=None,
                      k: int | None = None, k_denominator: str = "retrieved",
                      ties: Ties = "stable", exclude_self: bool = False,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False) -> np.ndarray:
    """Average precision of each query over its ranked gallery, shape (Q,).

    AP = sum_r P(r) rel(r) / sum_r rel(r) over the whole ranked list (EISR Eq. 3). Relevance is a
    (Q, N) 0/1 matrix, or comes from labels: a gallery item is relevant to a query when they share
    at least one label (labels as multi-hot matrices, label lists, or 1-D arrays of single labels).

    k: AP@k, the sum over the top k only, divided by ``k_denominator``: 'retrieved' (relevant
    items in the top k; 0 when there is none), 'relevant' (all relevant items) or 'min'
    (min(k, relevant items)). AP@k supports ties='stable' only.
    ties: 'stable' (tied items ranked by gallery index), 'average' (expected AP over every order
    of the tied items) or 'threshold' (scikit-learn's rule: each distinct score is one cut).
    exclude_self: query i and gallery item i are the same item (Q == N); it is left out.
    Queries with no relevant item get NaN.
    """
    _check_choice(ties, "ties", TIES)
    _check_choice(k_denominator, "k_denominator", K_DENOMINATORS)
    chunk_size = _check_chunk_size(chunk_size)
    n_queries, n_gallery, score_block = _score_source(scores, query, gallery, similarity)
    rel_block = _relevance_source(relevance, query_labels, gallery_labels, n_queries, n_gallery)
    if exclude_self and n_queries != n_gallery:
        raise ValueError(f"exclude_self needs the queries to be the gallery items (Q == N); "
                         f"got Q={n_queries}, N={n_gallery}")
    if k is not None:
        (k,) = _check_ks(k, "k", n_gallery)
        if ties != "stable":
            raise ValueError("AP@k (k=...) supports ties='stable' only; drop k or use ties='stable'")
    out = np.empty(n_queries, dtype=np.float64)
    for start in _blocks(n_queries, chunk_size, progress, "average precision"):
        stop = min(start + chunk_size, n_queries)
        block, rel = score_block(start, stop), rel_block(start, stop)
        if exclude_self:
            block, rel = _exclude_diagonal(block, rel, start)
        out[start:stop] = _ap_block(block, rel, ties, k, k_denominator)
    return out


def mean_average_precision(scores=None, **kwargs) -> float:
    """mAP: mean of :func:`average_precision` over the queries that have a relevant item.

    Takes the same arguments as :func:`average_precision` (k=... gives mAP@k). Queries without
    any relevant gallery item are skipped; ValueError if no query has one.
    """
    ap = average_precision(scores, **kwargs)
    if np.isnan(ap).all():
        raise ValueError("no query has a relevant gallery item; mAP is undefined")
    return float(np.nanmean(ap))


# ----------------------------------------------------------------------------- precision@k

def _top_k_hits(block: np.ndarray, rel: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """(rows, len(ks)) number of relevant items in the top k, ties ranked by gallery index."""
    partitioned = np.partition(-block, [k - 1 for k in ks], axis=1)
    out = np.empty((block.shape[0], len(ks)), dtype=np.int64)
    for j, k in enumerate(ks):
        kth = -partitioned[:, k - 1][:, None]
        above = block > kth
        tied = block == kth
        free_slots = k - above.sum(axis=1, keepdims=True)
        taken = above | (tied & (np.cumsum(tied, axis=1) <= free_slots))
        out[:, j] = (rel & taken).sum(axis=1)
    return out


def precision_at_k(scores=None, *, query=None, gallery=None, similarity: Similarity = "cosine",
                   relevance=None, query_labels=None, gallery_labels=None,
                   ks: Sequence[int] = (1, 5, 10, 20, 50), exclude_self: bool = False,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False) -> dict[int, float]:
    """Mean over queries of P@k = (relevant items in the top k) / k, for each k in ``ks``.

    Relevance as in :func:`average_precision`; tied scores are ranked by gallery index. Every
    query counts, including one with no relevant item (its precision is 0).
    """
    chunk_size = _check_chunk_size(chunk_size)
    n_queries, n_gallery, score_block = _score_source(scores, query, gallery, similarity)
    rel_block = _relevance_source(relevance, query_labels, gallery_labels, n_queries, n_gallery)
    ks = _check_ks(ks, "ks", n_gallery - (1 if exclude_self else 0))
    if exclude_self and n_queries != n_gallery:
        raise ValueError(f"exclude_self needs the queries to be the gallery items (Q == N); "
                         f"got Q={n_queries}, N={n_gallery}")
    hits = np.zeros(len(ks), dtype=np.int64)
    for start in _blocks(n_queries, chunk_size, progress, "precision@k"):
        stop = min(start + chunk_size, n_queries)
        block, rel = score_block(start, stop), rel_block(start, stop)
        if exclude_self:
            block, rel = _exclude_diagonal(block, rel, start)
        hits += _top_k_hits(block, rel, ks).sum(axis=0)
    return {k: float(h) / (k * n_queries) for k, h in zip(ks, hits)}


# ----------------------------------------------------------------------------- ranks of ground truth

def _ground_truth_csr(ground_truth, n_queries: int, n_gallery: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(ground_truth, np.ndarray) and ground_truth.ndim in (1, 2):
        gt = ground_truth
        if gt.dtype.kind not in "iu":
            raise ValueError(f"ground_truth must hold integer gallery indices; got dtype {gt.dtype}")
        gt = gt.reshape(len(gt), -1)
        lists = None
    else:
        if isinstance(ground_truth, Mapping):
            missing = sorted(set(range(n_queries)) - set(ground_truth))
            if missing or len(ground_truth) != n_queries:
                raise ValueError(f"ground_truth as a mapping needs exactly the keys 0..{n_queries - 1} "
                                 f"(one per query); missing {missing[:5]}")
            ground_truth = [ground_truth[i] for i in range(n_queries)]
        lists = [np.atleast_1d(np.asarray(g)) for g in ground_truth]
        gt = None
    n = len(gt) if gt is not None else len(lists)
    if n != n_queries:
        raise ValueError(f"ground_truth has {n} entries but there are {n_queries} queries")
    if gt is not None:
        counts = np.full(n_queries, gt.shape[1], dtype=np.int64)
        flat = gt.ravel().astype(np.int64)
    else:
        for i, g in enumerate(lists):
            if g.size and g.dtype.kind not in "iu":
                raise ValueError(f"ground_truth[{i}] must hold integer gallery indices; got {g!r}")
        counts = np.array([g.size for g in lists], dtype=np.int64)
        flat = np.concatenate([g.astype(np.int64) for g in lists]) if n_queries else np.zeros(0, np.int64)
    if (counts == 0).any():
        raise ValueError(f"ground_truth[{int(np.argmax(counts == 0))}] is empty; every query needs at "
                         f"least one ground-truth gallery index")
    bad = (flat < 0) | (flat >= n_gallery)
    if bad.any():
        query_index = int(np.searchsorted(np.cumsum(counts), np.argmax(bad), side="right"))
        raise ValueError(f"ground_truth[{query_index}] holds {flat[np.argmax(bad)]}, outside the "
                         f"gallery's {n_gallery} items")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return offsets, flat


def ground_truth_ranks(scores=None, *, query=None, gallery=None, similarity: Similarity = "cosine",
                       ground_truth, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       progress: bool = False) -> list[np.ndarray]:
    """1-based rank of every ground-truth gallery item of every query, in the order given.

    ground_truth: (Q,) int array (one item per query), (Q, m) int array, a list of index lists
    (e.g. image -> its 5 captions), or a mapping query index -> gallery indices. rank(j) = 1 + #{n: s_n > s_j} + #{n < j: s_n == s_j}
    (ties ranked by gallery index).
    """
    chunk_size = _check_chunk_size(chunk_size)
    n_queries, n_gallery, score_block = _score_source(scores, query, gallery, similarity)
    offsets, flat = _ground_truth_csr(ground_truth, n_queries, n_gallery)
    query_of_pair = np.repeat(np.arange(n_queries), np.diff(offsets))
    ranks = np.empty(len(flat), dtype=np.int64)
    columns = np.arange(n_gallery)
    for start in _blocks(n_queries, chunk_size, progress, "ranks"):
        stop = min(start + chunk_size, n_queries)
        block = score_block(start, stop)
        for p0 in range(offsets[start], offsets[stop], chunk_size):
            p1 = min(p0 + chunk_size, offsets[stop])
            rows = block[query_of_pair[p0:p1] - start]
            target = flat[p0:p1]
            s = rows[np.arange(p1 - p0), target][:, None]
            before = (rows > s).sum(axis=1) + ((rows == s) & (columns < target[:, None])).sum(axis=1)
            ranks[p0:p1] = before + 1
    return np.split(ranks, offsets[1:-1])


def _as_rank_lists(ranks) -> list[np.ndarray]:
    if isinstance(ranks, np.ndarray):
        ranks = ranks.reshape(len(ranks), -1)
    out = [np.atleast_1d(np.asarray(r)) for r in ranks]
    if not out:
        raise ValueError("ranks is empty; there must be at least one query")
    for i, r in enumerate(out):
        if r.size == 0 or r.dtype.kind not in "iuf" or not np.isfinite(r).all() or (r < 1).any():
            raise ValueError(f"ranks[{i}] must be one or more 1-based ranks; got {r!r}")
    return out


def _best_ranks(ranks) -> np.ndarray:
    return np.array([r.min() for r in _as_rank_lists(ranks)], dtype=np.float64)


def recall_at_k(ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """R@K: fraction of queries with at least one ground-truth item in the top K, for each K.

    ranks: output of :func:`ground_truth_ranks` (or a (Q,) / (Q, m) array of 1-based ranks).
    """
    ks = _check_ks(ks, "ks")
    best = _best_ranks(ranks)
    return {k: float((best <= k).mean()) for k in ks}


def median_rank(ranks) -> float:
    """Median over queries of the rank of the closest (best ranked) ground-truth item.

    Not floored: VSE++ prints floor(median); with an even number of queries this may be x.5.
    """
    return float(np.median(_best_ranks(ranks)))


def mean_rank(ranks) -> float:
    """Mean over queries of the rank of the closest (best ranked) ground-truth item."""
    return float(np.mean(_best_ranks(ranks)))


def mean_median_rank(ranks) -> float:
    """DU2MCE's mean median rank (§4.2): the median rank of each query's ground-truth items,
    averaged over queries. With one ground-truth item per query this is the mean rank."""
    return float(np.mean([np.median(r) for r in _as_rank_lists(ranks)]))


def retrieval_metrics(scores=None, *, query=None, gallery=None, similarity: Similarity = "cosine",
                      ground_truth, ks: Sequence[int] = (1, 5, 10),
                      chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False) -> dict[str, float]:
    """R@K, median rank, mean rank and DU2MCE mean median rank of one retrieval direction.

    Returns {'R@1': ..., 'R@5': ..., 'R@10': ..., 'median_rank': ..., 'mean_rank': ...,
    'mean_median_rank': ...}; recalls are fractions in [0, 1].
    """
    ks = _check_ks(ks, "ks")
    ranks = ground_truth_ranks(scores, query=query, gallery=gallery, similarity=similarity,
                               ground_truth=ground_truth, chunk_size=chunk_size, progress=progress)
    out = {f"R@{k}": v for k, v in recall_at_k(ranks, ks).items()}
    out.update(median_rank=median_rank(ranks), mean_rank=mean_rank(ranks),
               mean_median_rank=mean_median_rank(ranks))
    return out


def rsum(image_to_text: Mapping, text_to_image: Mapping, ks: Sequence[int] = (1, 5, 10)) -> float:
    """Sum of R@K over both directions in percent points (VSE++/BSSAN), at most 100 * 2 * len(ks).

    Takes the dicts of :func:`recall_at_k` (int keys) or :func:`retrieval_metrics` ('R@K' keys).
    """
    total = 0.0
    for name, recalls in (("image_to_text", image_to_text), ("text_to_image", text_to_image)):
        for k in _check_ks(ks, "ks"):
            value = recalls.get(k, recalls.get(f"R@{k}"))
            if value is None:
                raise ValueError(f"{name} has no recall at {k}; compute it with ks including {k}")
            total += 100.0 * float(value)
    return total


def normalized_rank_sum(ranks: Mapping[str, float], gallery_sizes: Mapping[str, int]) -> float:
    """DU2MCE joint performance (Table 4): sum over tasks of rank / number of retrievable items.

    ranks: task -> (mean) median rank; gallery_sizes: task -> gallery size of that task. Pass only
    the tasks to be added (the paper adds the tasks whose lambda is non-zero). Lower is better.
    """
    if not ranks:
        raise ValueError("ranks is empty; give at least one task")
    missing = [t for t in ranks if t not in gallery_sizes]
    if missing:
        raise ValueError(f"gallery_sizes has no entry for task(s) {missing}")
    total = 0.0
    for task, rank in ranks.items():
        size = gallery_sizes[task]
        if not np.isfinite(rank) or rank < 1:
            raise ValueError(f"ranks[{task!r}] must be a rank >= 1; got {rank!r}")
        if size < 1 or rank > size:
            raise ValueError(f"gallery_sizes[{task!r}] = {size!r} must be >= ranks[{task!r}] = {rank!r}")
        total += float(rank) / float(size)
    return total


# ----------------------------------------------------------------------------- multi-label classification

def _classification_pair(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    t = _check_binary(_numeric(y_true, "y_true", 2), "y_true")
    s = _numeric(y_score, "y_score", 2)
    if t.shape != s.shape:
        raise ValueError(f"y_true and y_score must have the same shape (samples, labels); "
                         f"got {t.shape} and {s.shape}")
    _check_finite(s, "y_score")
    return t.astype(bool), s


def multilabel_prf(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Micro and macro precision, recall and F1 of the predictions y_score > threshold.

    Micro pools true/false positives over all labels; macro averages the per-label values over
    all L labels (macro F1 = mean of per-label F1). A ratio with a zero denominator counts as 0
    (scikit-learn's zero_division=0).
    """
    t, s = _classification_pair(y_true, y_score)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}")
    pred = s > threshold
    tp = (pred & t).sum(axis=0).astype(np.float64)
    n_pred = pred.sum(axis=0).astype(np.float64)
    n_true = t.sum(axis=0).astype(np.float64)

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    p_label, r_label = ratio(tp, n_pred), ratio(tp, n_true)
    f_label = ratio(2 * tp, n_pred + n_true)
    micro_p, micro_r = float(ratio(tp.sum(), n_pred.sum())), float(ratio(tp.sum(), n_true.sum()))
    micro_f = float(ratio(2 * tp.sum(), n_pred.sum() + n_true.sum()))
    return {"micro_precision": micro_p, "micro_recall": micro_r, "micro_f1": micro_f,
            "macro_precision": float(p_label.mean()), "macro_recall": float(r_label.mean()),
            "macro_f1": float(f_label.mean())}


def label_average_precision(y_true, y_score, ties: Ties = "stable") -> np.ndarray:
    """AP of each label when its scores rank the samples, shape (L,); NaN for a label with no
    positive sample."""
    t, s = _classification_pair(y_true, y_score)
    return average_precision(np.ascontiguousarray(s.T), relevance=np.ascontiguousarray(t.T), ties=ties)


def label_mean_average_precision(y_true, y_score, ties: Ties = "stable") -> float:
    """Label-wise mAP: mean over labels of :func:`label_average_precision`.

    Labels with no positive sample are skipped (their AP is undefined); ValueError if every label
    is. ties='threshold' equals scikit-learn's average_precision_score(average='macro').
    """
    ap = label_average_precision(y_true, y_score, ties)
    if np.isnan(ap).all():
        raise ValueError("y_true has no positive sample for any label; label-wise mAP is undefined")
    return float(np.nanmean(ap))


# ----------------------------------------------------------------------------- regression

def _regression_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = _numeric(y_true, "y_true", 1).astype(np.float64)
    p = _numeric(y_pred, "y_pred", 1).astype(np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length; got {t.shape} and {p.shape}")
    if t.size == 0:
        raise ValueError("y_true is empty")
    _check_finite(t, "y_true")
    _check_finite(p, "y_pred")
    return t, p


def mse(y_true, y_pred) -> float:
    """Mean squared error (UHAN §4.1.2)."""
    t, p = _regression_pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2))


def mae(y_true, y_pred) -> float:
    """Mean absolute error (UHAN §4.1.2)."""
    t, p = _regression_pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def spearman(y_true, y_pred) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks (ties get their mean rank).

    NaN when either input is constant (the correlation is undefined).
    """
    t, p = _regression_pair(y_true, y_pred)
    rt, rp = rankdata(t) - (t.size + 1) / 2, rankdata(p) - (p.size + 1) / 2
    denominator = np.sqrt((rt ** 2).sum() * (rp ** 2).sum())
    return float((rt * rp).sum() / denominator) if denominator > 0 else float("nan")
