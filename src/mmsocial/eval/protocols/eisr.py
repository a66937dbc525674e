"""EISR's protocol (Liu et al. 2017, §3.1 and Tables 1-3): mAP over the whole ranked test list.

Image query: every test image ranks every test text; text query: every test text ranks every test
image. Distance: Euclidean between semantic vectors, computed in float64 from the coordinate
differences (the vectors are near-saturated softmax outputs whose distances the |q|²+|g|²−2q·g
expansion cannot resolve). Relevant: the result shares at least one label with the query. AP is
Eq. 3; every number comes from the chunked ``mmsocial.eval.metrics``.
"""

from __future__ import annotations

import numpy as np

from mmsocial.eval.metrics import DEFAULT_CHUNK_SIZE, mean_average_precision
from mmsocial.eval.table import ResultTable

EISR_METRICS = ("Image query", "Text query", "Average")  # the layout of Tables 1-3
TABLE_TITLES = {
    "table1": "Table 1: mAP by the dimension l of the latent embedding layer",
    "table2": "Table 2: latent embedding layer (LE) and joint parameters (J)",
    "table3": "Table 3: cross-media retrieval, mAP",
}


def eisr_table(table: str, name: str = "") -> ResultTable:
    """An empty table of the paper's layout: rows = methods, columns = image query, text query, average."""
    if table not in TABLE_TITLES:
        raise ValueError(f"unknown EISR table {table!r}; choose one of {tuple(TABLE_TITLES)}")
    title = TABLE_TITLES[table] + (f" ({name})" if name else "")
    return ResultTable(title, EISR_METRICS, row_header="Dim" if table == "table1" else "Method")


def _check(sem, labels, name: str) -> np.ndarray:
    sem = np.asarray(sem, dtype=np.float64)
    if sem.ndim != 2 or len(sem) != len(labels):
        raise ValueError(f"{name} must be (N, d) with one row per test pair ({len(labels)}), got shape {sem.shape}")
    return sem


def cross_media_map(image_sem, text_sem, labels, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    similarity: str = "euclidean_exact") -> dict[str, float]:
    """{'Image query', 'Text query', 'Average'} mAP of the test pairs' semantic vectors.

    image_sem, text_sem: (N, d) vectors of the N test images and texts (pair i = image i + text i);
    labels: (N, c) multi-hot, or (N,) class indices. Queries with no relevant result are skipped
    (none exist when every item has a label, since its own pair shares it).
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        classes = np.unique(labels)
        labels = (labels[:, None] == classes[None, :])
    if labels.ndim != 2 or len(labels) == 0:
        raise ValueError(f"labels must be (N, c) multi-hot or (N,) class indices, got shape {labels.shape}")
    labels = (labels > 0).astype(np.float64)
    x, t = _check(image_sem, labels, "image_sem"), _check(text_sem, labels, "text_sem")
    if x.shape[1] != t.shape[1]:
        raise ValueError(f"image and text vectors must live in the same space, got {x.shape[1]} and {t.shape[1]} dims")
    kw = dict(similarity=similarity, query_labels=labels, gallery_labels=labels, chunk_size=chunk_size)
    i2t = mean_average_precision(query=x, gallery=t, **kw)
    t2i = mean_average_precision(query=t, gallery=x, **kw)
    return {"Image query": i2t, "Text query": t2i, "Average": (i2t + t2i) / 2}
