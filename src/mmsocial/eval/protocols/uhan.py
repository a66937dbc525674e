"""UHAN's evaluation (uhan paper §4.1.2, Tables 2-4): regression of the popularity score on the test posts.

Every table has the columns MSE, MAE (Eq. 23) and Spearman (the SMP challenge's rank metric), printed
as mean ± std over seeds. HisAve is the reference row of every table. The "text" table holds the
text-only rows (for corpora without images, e.g. the real tweets).
"""

from __future__ import annotations

import numpy as np

from mmsocial.eval.metrics import mae, mse, spearman
from mmsocial.eval.table import ResultTable

UHAN_METRICS = ("MSE", "MAE", "Spearman")

# table -> its rows in the paper's order (HisAve first: the reference row)
UHAN_TABLE_ROWS: dict[str, tuple[str, ...]] = {
    "table2": ("HisAve", "SVR", "DMF", "DualAtt", "UHAN (w/o u)", "UHAN (w/o sc)", "UHAN"),
    "table3": ("HisAve", "SVR (w/o V)", "SVR (w/o T)", "SVR", "UHAN (w/o V)", "UHAN (w/o T)", "UHAN"),
    "table4": ("HisAve", "UHAN (w/o intra+inter)", "UHAN (w/o intra)", "UHAN (w/o inter)", "UHAN (w/o sc)",
               "UHAN"),
    "text": ("HisAve", "SVR (w/o V)", "DMF (w/o V)", "UHAN (w/o V, w/o u)", "UHAN (w/o V)"),
}
UHAN_TABLE_TITLES = {
    "table2": "Table 2: UHAN and baselines",
    "table3": "Table 3: unstructured modalities",
    "table4": "Table 4: ablation of UHAN's components",
    "text": "Text-only rows",
}


def popularity_scores(y_true, y_pred) -> dict[str, float]:
    """MSE, MAE (Eq. 23) and Spearman's rank correlation of predicted vs. true popularity."""
    return {"MSE": mse(y_true, y_pred), "MAE": mae(y_true, y_pred), "Spearman": spearman(y_true, y_pred)}


def uhan_table(name: str, suffix: str = "") -> ResultTable:
    """An empty table of ``name`` (table2, table3, table4 or text) with the paper's columns."""
    if name not in UHAN_TABLE_ROWS:
        raise ValueError(f"unknown UHAN table {name!r}; choose one of {tuple(UHAN_TABLE_ROWS)}")
    title = UHAN_TABLE_TITLES[name] + (f" ({suffix})" if suffix else "")
    return ResultTable(title, UHAN_METRICS, percent=False, digits=3, row_header="Method")


def evaluate_popularity(row: str, tables, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Score one row's test predictions for every table in ``tables`` that lists the row.

    Returns table name -> metric -> value (what a ``Cell`` stores); {} when no table lists the row.
    """
    names = [t for t in tables if row in UHAN_TABLE_ROWS[t]]
    if not names:
        return {}
    scores = popularity_scores(y_true, y_pred)
    return {t: dict(scores) for t in names}
