import numpy as np
import pytest

from mmsocial.eval.protocols.dman import (label_queries, multilabel_classification, multilabel_scores,
                                          one_hot_queries, tag_query_search)
from mmsocial.eval.table import ResultTable, ResultTables


def test_multilabel_scores_known_answer():
    y_true = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    y_score = np.array([[0.9, 0.6], [0.8, 0.2], [0.1, 0.7], [0.3, 0.1]])
    # predictions > 0.5: [[1,1],[1,0],[0,1],[0,0]] -> label0 tp2 fp0 fn0; label1 tp1 fp1 fn1
    m = multilabel_scores(y_true, y_score)
    assert m["Micro-P"] == pytest.approx(3 / 4) and m["Micro-R"] == pytest.approx(3 / 4)
    assert m["Macro-P"] == pytest.approx((1 + 0.5) / 2) and m["Macro-R"] == pytest.approx((1 + 0.5) / 2)
    assert m["Macro-F1"] == pytest.approx((1 + 0.5) / 2) and m["Micro-F1"] == pytest.approx(0.75)
    # AP label0: ranks 0.9,0.8 both relevant -> 1; label1: 0.7 (rel), 0.6 (no), 0.2 (rel) -> (1 + 2/3)/2
    assert m["mAP"] == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)


def test_classification_protocol_separable_vs_random(rng):
    n = 300
    labels = np.zeros((n, 3))
    labels[np.arange(n), rng.integers(0, 3, n)] = 1
    good = labels * 3 + 0.3 * rng.normal(size=(n, 3))
    bad = rng.normal(size=(n, 3))
    kw = dict(hidden=(16, 16), epochs=20, patience=5, batch_size=32)
    m_good = multilabel_classification(good[:200], labels[:200], good[200:], labels[200:],
                                       good[150:200], labels[150:200], **kw)
    m_bad = multilabel_classification(bad[:200], labels[:200], bad[200:], labels[200:], **kw)
    assert m_good["Micro-F1"] > 0.95 and m_good["mAP"] > 0.95
    assert m_bad["mAP"] < 0.6


def test_tag_query_search_known_answer():
    queries = one_hot_queries([0, 2], 3)
    images = np.array([[1, 0, 0], [0.9, 0, 0.1], [0, 0, 1], [0.5, 0, 0.5]], dtype=float)
    # query 0 ranks images 0, 1, 3, 2; query 1 ranks 2, 3, 1, 0
    relevant = np.array([[1, 0, 0, 1], [1, 0, 1, 0]], dtype=bool)
    m = tag_query_search(queries, images, relevant, ks=(1, 2, 4, 50))
    assert m["P@1"] == pytest.approx((1 + 1) / 2)
    assert m["P@2"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["P@4"] == pytest.approx(0.5)
    assert "P@50" not in m  # more than the 4 images: left out, prints "-"


def test_tag_query_search_matches_brute_force_euclidean_ranking(rng):
    queries, images = rng.normal(size=(7, 5)), rng.normal(size=(40, 5))
    relevant = rng.random((7, 40)) < 0.3
    dist = ((queries[:, None, :] - images[None, :, :]) ** 2).sum(-1)
    order = np.argsort(dist, axis=1, kind="stable")
    m = tag_query_search(queries, images, relevant, ks=(1, 5, 10))
    for k in (1, 5, 10):
        expected = np.mean([relevant[q, order[q, :k]].sum() / k for q in range(7)])
        assert m[f"P@{k}"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="relevance"):
        tag_query_search(queries, images, relevant[:, :5])


def test_label_queries_only_labels_in_tag_vocabulary():
    assert label_queries(["Dog", "car", "sky"], ["sky", "tree", "dog"]) == [(0, 2), (2, 0)]


def test_result_table_markdown_csv_json(tmp_path):
    t = ResultTable("Table 2", ["Micro-F1", "mAP"])
    t.add("CCA", {"Micro-F1": 0.5, "mAP": 0.4}, seed=0)
    t.add("CCA", {"Micro-F1": 0.7, "mAP": 0.6}, seed=1)
    t.add("DMAN", {"mAP": 0.9}, seed=0)
    md = t.to_markdown()
    assert "| CCA | 60.00% ± 14.14 | 50.00% ± 14.14 |" in md
    assert "| DMAN | - | 90.00% |" in md
    assert t.mean("CCA", "mAP") == pytest.approx(0.5)
    back = ResultTable.load(t.save(tmp_path / "t.json"))
    assert back.to_markdown() == md
    assert (tmp_path / "t.csv").exists() is False
    lines = t.save(tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "row,metric,seed,value" and len(lines) == 1 + 5
    with pytest.raises(ValueError, match="no column"):
        t.add("CCA", {"MAP": 1.0})
    with pytest.raises(ValueError, match=".json, .csv or .md"):
        t.save(tmp_path / "t.txt")
    both = ResultTables([t, ResultTable("Table 3", ["P@1"])])
    assert both["Table 3"].metrics == ["P@1"] and "Table 2" in both.to_markdown()
