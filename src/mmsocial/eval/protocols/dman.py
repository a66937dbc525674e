"""DMAN's evaluation protocols (Huang et al. 2017, §4.3-4.4): Table 2 and Table 3.

Table 2 (protocol a): a 3-FC classifier (``eval.probes.fit_fc_classifier``) on frozen embeddings,
threshold 0.5, micro/macro P/R/F1 and mAP. Table 3 (protocol b): one one-hot tag query per label
word found in the tag vocabulary, test images ranked by Euclidean distance, P@1/5/10/20/50.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmsocial.eval import metrics
from mmsocial.eval.probes import check_embeddings, fit_fc_classifier
from mmsocial.eval.table import ResultTable

TABLE2_METRICS = ("Micro-P", "Micro-R", "Micro-F1", "Macro-P", "Macro-R", "Macro-F1", "mAP")
TABLE3_KS = (1, 5, 10, 20, 50)
TABLE3_METRICS = tuple(f"P@{k}" for k in TABLE3_KS)


def table2(title: str = "Table 2: multi-label classification") -> ResultTable:
    return ResultTable(title, TABLE2_METRICS)


def table3(title: str = "Table 3: tag-query image search") -> ResultTable:
    return ResultTable(title, TABLE3_METRICS)


def multilabel_scores(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Table 2 metrics from label probabilities: micro/macro P/R/F1 at ``threshold`` and mAP."""
    y_true = (np.asarray(y_true) > 0).astype(np.int64)
    y_score = np.asarray(y_score, dtype=np.float64)
    prf = metrics.multilabel_prf(y_true, y_score, threshold=threshold)
    out = {"Micro-P": prf["micro_precision"], "Micro-R": prf["micro_recall"], "Micro-F1": prf["micro_f1"],
           "Macro-P": prf["macro_precision"], "Macro-R": prf["macro_recall"], "Macro-F1": prf["macro_f1"],
           "mAP": metrics.label_mean_average_precision(y_true, y_score)}
    return {k: float(v) for k, v in out.items()}


def multilabel_classification(train_emb, train_labels, test_emb, test_labels, val_emb=None, val_labels=None,
                              threshold: float = 0.5, seed: int = 0, diagnostics: dict | None = None,
                              **classifier_kw) -> dict[str, float]:
    """Protocol (a), §4.3: 3-FC classifier on frozen train embeddings, evaluated on test embeddings.

    ``diagnostics``: a dict that gets ``positive_rate``, the share of (test post, label) scores above
    ``threshold`` (0 = the classifier predicts no positive: a collapse the health check flags)."""
    predict = fit_fc_classifier(train_emb, train_labels, val_emb, val_labels, seed=seed, **classifier_kw)
    test_emb, test_labels = check_embeddings(test_emb, test_labels, "test")
    scores = predict(test_emb)
    if diagnostics is not None:
        diagnostics["positive_rate"] = float((np.asarray(scores) > threshold).mean())
    return multilabel_scores(test_labels, scores, threshold)


def singular(word: str) -> str:
    """Simple English singular of a lower-case word: "birds" -> "bird", "flies" -> "fly",
    "boxes" -> "box", "glasses" -> "glass"; words ending in "ss", "us", "is" stay as they are."""
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def label_word(label: str) -> str:
    """A label's query word: its leaf name (after the last "/"), lower-cased and singular
    (``animals/birds`` -> ``bird``, ``Food`` -> ``food``)."""
    return singular(label.rsplit("/", 1)[-1].strip().lower())


def label_queries(label_vocabulary: Sequence[str], tag_vocabulary: Sequence[str]) -> list[tuple[int, int]]:
    """§4.4: one query per label whose word appears in the tag vocabulary, as (label index, tag index).

    A label's word is ``label_word`` (leaf name, lower-cased, singular); it matches a tag whose
    lower-cased singular form is the same (the tag itself is the query's one-hot entry; when
    several tags match, the most frequent one, i.e. the first in the vocabulary, is taken)."""
    tag_index: dict[str, int] = {}
    for i, t in enumerate(tag_vocabulary):
        tag_index.setdefault(singular(t.strip().lower()), i)
    return [(li, tag_index[label_word(lab)]) for li, lab in enumerate(label_vocabulary) if label_word(lab) in tag_index]


def one_hot_queries(tag_indices: Sequence[int], num_tags: int) -> np.ndarray:
    q = np.zeros((len(tag_indices), num_tags), dtype=np.float32)
    q[np.arange(len(tag_indices)), np.asarray(tag_indices, dtype=int)] = 1.0
    return q


def tag_query_search(query_emb, image_emb, relevant, ks: Sequence[int] = TABLE3_KS) -> dict[str, float]:
    """Protocol (b), §4.4: rank the test images by Euclidean distance to each projected query,
    P@k averaged over the queries. ``relevant`` (Q, N): image n carries query q's label.
    A k larger than the number of images is left out (its cell prints as "-").
    Distances are computed in float64 (chunked, ``metrics.precision_at_k``)."""
    q, x = np.asarray(query_emb, dtype=np.float64), np.asarray(image_emb, dtype=np.float64)
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(f"queries (Q, E) and images (N, E) must share E, got {q.shape} and {x.shape}")
    relevant = np.asarray(relevant) > 0
    if relevant.shape != (len(q), len(x)):
        raise ValueError(f"relevance matrix must be (queries, images) = {(len(q), len(x))}, got {relevant.shape}")
    ks = [k for k in ks if k <= len(x)]
    if not ks:
        raise ValueError(f"every k exceeds the {len(x)} images to rank")
    p = metrics.precision_at_k(query=q, gallery=x, similarity="euclidean", relevance=relevant, ks=ks)
    return {f"P@{k}": float(p[k]) for k in ks}
