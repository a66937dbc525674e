import numpy as np
import pytest

from mmsocial.index import (VectorIndex, VectorIndexError, build_index, exact_search, probe_queries,
                            recall_at_k)


def _clustered(n=3000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, d))
    return (centres[rng.integers(0, 30, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def _ids(n, prefix="p"):
    return [f"{prefix}{i}" for i in range(n)]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_index_is_exact(metric):
    x = _clustered(500)
    q = probe_queries(x, 50)
    index = build_index(x, _ids(500), metric)
    assert index.kind == "flat"
    dist, found = index.search(q, 10)
    rows = exact_search(x, q, 10, metric)
    truth = np.asarray(_ids(500), dtype=object)[rows]
    assert recall_at_k(found, truth, 10) >= 0.99  # float32 FAISS vs float64 truth: near-ties may swap
    exact = (np.linalg.norm(x[rows] - q[:, None], axis=2) if metric == "l2" else np.einsum("qkd,qd->qk", x[rows], q))
    assert np.allclose(dist, exact, atol=1e-3)
    if metric == "l2":  # Euclidean distances, not squared ones
        assert (np.diff(dist, axis=1) >= -1e-6).all()
    else:
        assert (np.diff(dist, axis=1) <= 1e-6).all()


def test_auto_picks_ivfflat_above_the_threshold_and_nprobe_sets_recall():
    x = _clustered(3000)
    index = build_index(x, _ids(3000), "l2", exact_max=1000)
    assert index.kind == "ivfflat" and index.params["build_seconds"] >= 0
    # 2√n lists, at most n/39 (FAISS wants >= 39 training vectors per centroid)
    assert index.params["nlist"] == min(3000 // 39, round(2 * np.sqrt(3000))) and index.params["nprobe"] == 8
    q = probe_queries(x, 100)
    truth = np.asarray(_ids(3000), dtype=object)[exact_search(x, q, 10)]
    recall = {}
    for nprobe in (1, 8, index.params["nlist"]):
        index.set_search_params(nprobe=nprobe)
        recall[nprobe] = recall_at_k(index.search(q, 10)[1], truth)
    assert recall[1] < recall[8] and recall[8] >= 0.95
    assert recall[index.params["nlist"]] >= 0.99  # every list scanned: exact up to float32 near-ties


def test_hnsw_recall_is_high():
    x = _clustered(3000)
    index = build_index(x, _ids(3000), "l2", kind="hnsw")
    q = probe_queries(x, 100)
    truth = np.asarray(_ids(3000), dtype=object)[exact_search(x, q, 10)]
    assert recall_at_k(index.search(q, 10)[1], truth) >= 0.95


def test_ivfpq_with_refinement_recall():
    x = _clustered(3000)
    index = build_index(x, _ids(3000), "l2", kind="ivfpq", nprobe=16)
    q = probe_queries(x, 100)
    truth = np.asarray(_ids(3000), dtype=object)[exact_search(x, q, 10)]
    assert recall_at_k(index.search(q, 10)[1], truth) >= 0.9


@pytest.mark.parametrize("kind", ["flat", "ivfflat", "hnsw", "ivfpq"])
def test_save_load_memory_mapped_and_add_without_rebuild(tmp_path, kind):
    x = _clustered(1200)
    index = build_index(x[:1000], _ids(1000), "l2", kind=kind)
    index.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix")
    assert loaded.mapped == (kind in ("flat", "ivfflat", "hnsw")) and len(loaded) == 1000
    assert (loaded.search(x[:5], 3)[1] == index.search(x[:5], 3)[1]).all()
    new = _ids(200, "new")
    loaded.add(x[1000:], new)  # a mapped index is read into memory first (FAISS cannot grow a mapped store)
    assert len(loaded) == 1200 and not loaded.mapped
    assert loaded.search(x[1100:1101], 1)[1][0, 0] == "new100"
    loaded.save(tmp_path / "ix")
    again = VectorIndex.load(tmp_path / "ix")
    assert len(again) == 1200 and again.search(x[1100:1101], 1)[1][0, 0] == "new100"
    if kind == "hnsw":
        assert again.params["ef_search"] == index.index.hnsw.efSearch
    if kind == "ivfflat":
        import faiss

        assert faiss.extract_index_ivf(again.index).nprobe == index.params["nprobe"] == 8


def test_fewer_vectors_than_k_pads_with_empty_ids():
    index = build_index(np.eye(3, dtype=np.float32), ["a", "b", "c"], "l2")
    dist, found = index.search(np.eye(3, dtype=np.float32)[:1], 5)
    assert found[0].tolist() == ["a", found[0, 1], found[0, 2], "", ""] and np.isnan(dist[0, 3:]).all()


def test_bad_input_is_named(tmp_path):
    x = _clustered(20)
    with pytest.raises(VectorIndexError, match="ids are not unique"):
        build_index(x, ["a"] * 20)
    with pytest.raises(VectorIndexError, match="20 vectors but 3 ids"):
        build_index(x, ["a", "b", "c"])
    with pytest.raises(VectorIndexError, match="metric"):
        build_index(x, _ids(20), "cosine")
    index = build_index(x, _ids(20))
    with pytest.raises(VectorIndexError, match="dimensions"):
        index.search(np.zeros((1, 5)), 3)
    with pytest.raises(VectorIndexError, match="NaN"):
        index.search(np.full((1, 32), np.nan), 3)
    with pytest.raises(VectorIndexError, match="already in the index"):
        index.add(x[:1], ["p3"])
    with pytest.raises(VectorIndexError, match="mmsocial index build"):
        VectorIndex.load(tmp_path / "nothing")


def test_recall_against_an_independent_count():
    assert recall_at_k([["a", "b", "c"]], [["c", "x", "a"]], 3) == pytest.approx(2 / 3)


def test_tie_aware_recall_counts_equally_distant_results():
    from mmsocial.index import tie_aware_recall

    v = np.eye(4, dtype=np.float32)
    q = np.full((1, 4), 0.25, np.float32)  # equally far from every stored vector
    assert tie_aware_recall(v, list("abcd"), q, np.array([["d", "c"]]), 2) == 1.0
    v2 = np.array([[0, 0], [1, 0], [5, 0]], np.float32)
    assert tie_aware_recall(v2, list("abc"), np.zeros((1, 2)), np.array([["a", "c"]]), 2) == 0.5
