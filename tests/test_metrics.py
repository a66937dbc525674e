import itertools

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import (average_precision_score, label_ranking_average_precision_score,
                             mean_absolute_error, mean_squared_error, precision_recall_fscore_support)

from mmsocial.eval import metrics as M


# ----------------------------------------------------------------------------- brute-force references

def stable_order(row):
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def ap_of_order(rel_in_order, k=None, denominator="retrieved"):
    n_rel = int(sum(rel_in_order))
    if n_rel == 0:
        return np.nan
    top = rel_in_order if k is None else rel_in_order[:k]
    hits, total = 0, 0.0
    for pos, r in enumerate(top, start=1):
        if r:
            hits += 1
            total += hits / pos
    if k is None:
        return total / n_rel
    d = {"retrieved": hits, "relevant": n_rel, "min": min(n_rel, k)}[denominator]
    return total / d if d else 0.0


def brute_ap_stable(scores, rel, k=None, denominator="retrieved"):
    return np.array([ap_of_order([rel[i, j] for j in stable_order(scores[i])], k, denominator)
                     for i in range(len(scores))])


def brute_ap_average(scores, rel):
    """Mean AP over every order of the tied items (all permutations inside each tie group)."""
    out = []
    for row, r in zip(scores, rel):
        values = sorted(set(row.tolist()), reverse=True)
        groups = [[j for j in range(len(row)) if row[j] == v] for v in values]
        aps = [ap_of_order([r[j] for j in itertools.chain(*perm)])
               for perm in itertools.product(*(itertools.permutations(g) for g in groups))]
        out.append(np.mean(aps) if r.any() else np.nan)
    return np.array(out)


def brute_ranks(scores, ground_truth):
    out = []
    for row, gts in zip(scores, ground_truth):
        position = {j: p + 1 for p, j in enumerate(stable_order(row))}
        out.append(np.array([position[j] for j in gts]))
    return out


def shares_label(qlabels, glabels):
    return np.array([[len(set(a) & set(b)) > 0 for b in glabels] for a in qlabels])


# ----------------------------------------------------------------------------- data

def tied_scores(rng, shape, levels=3):
    return rng.integers(0, levels, shape).astype(np.float64)


@pytest.fixture
def problem(rng):
    q = rng.normal(size=(23, 6)).astype(np.float32)
    g = rng.normal(size=(41, 6)).astype(np.float32)
    ql = [list(rng.choice(8, size=rng.integers(1, 3), replace=False)) for _ in range(23)]
    gl = [list(rng.choice(8, size=rng.integers(0, 3), replace=False)) for _ in range(41)]
    return q, g, ql, gl


# ----------------------------------------------------------------------------- average precision

@pytest.mark.parametrize("tied", [False, True])
def test_ap_stable_matches_brute_force(rng, tied):
    scores = tied_scores(rng, (12, 30)) if tied else rng.normal(size=(12, 30))
    rel = rng.random((12, 30)) < 0.3
    rel[0] = False
    got = M.average_precision(scores, relevance=rel, chunk_size=5)
    np.testing.assert_allclose(got, brute_ap_stable(scores, rel), rtol=1e-12)
    assert np.isnan(got[0])


@pytest.mark.parametrize("tied", [False, True])
def test_ap_threshold_matches_sklearn(rng, tied):
    scores = tied_scores(rng, (15, 40)) if tied else rng.normal(size=(15, 40))
    rel = rng.random((15, 40)) < 0.3
    rel[:, 0] = True
    got = M.average_precision(scores, relevance=rel, ties="threshold", chunk_size=4)
    ref = [average_precision_score(rel[i], scores[i]) for i in range(15)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_ap_threshold_matches_sklearn_label_ranking(rng):
    scores = tied_scores(rng, (30, 9), levels=4)
    rel = rng.random((30, 9)) < 0.4
    rel[:, 0], rel[:, 1] = True, False
    got = M.average_precision(scores, relevance=rel, ties="threshold").mean()
    assert got == pytest.approx(label_ranking_average_precision_score(rel, scores), rel=1e-12)


def test_ap_average_matches_all_orders(rng):
    scores = tied_scores(rng, (6, 8))
    rel = rng.random((6, 8)) < 0.4
    rel[:, 3] = True
    got = M.average_precision(scores, relevance=rel, ties="average", chunk_size=4)
    np.testing.assert_allclose(got, brute_ap_average(scores, rel), rtol=1e-12)


def test_ap_tie_rules_agree_without_ties(rng):
    scores = rng.normal(size=(10, 50))
    rel = rng.random((10, 50)) < 0.2
    ap = [M.average_precision(scores, relevance=rel, ties=t) for t in M.TIES]
    np.testing.assert_allclose(ap[1], ap[0], rtol=1e-12)
    np.testing.assert_allclose(ap[2], ap[0], rtol=1e-12)


@pytest.mark.parametrize("denominator", M.K_DENOMINATORS)
@pytest.mark.parametrize("tied", [False, True])
def test_ap_at_k_matches_brute_force(rng, denominator, tied):
    scores = tied_scores(rng, (14, 25)) if tied else rng.normal(size=(14, 25))
    rel = rng.random((14, 25)) < 0.25
    got = M.average_precision(scores, relevance=rel, k=7, k_denominator=denominator, chunk_size=3)
    np.testing.assert_allclose(got, brute_ap_stable(scores, rel, 7, denominator), rtol=1e-12)


def test_ap_at_all_equals_ap(rng):
    scores, rel = rng.normal(size=(8, 20)), rng.random((8, 20)) < 0.3
    np.testing.assert_allclose(M.average_precision(scores, relevance=rel, k=20),
                               M.average_precision(scores, relevance=rel), rtol=1e-12)


def test_map_from_labels_matches_brute_force(problem):
    q, g, ql, gl = problem
    scores = M.similarity_scores(q, g, "euclidean").astype(np.float64)
    expected = np.nanmean(brute_ap_stable(scores, shares_label(ql, gl)))
    got = M.mean_average_precision(query=q, gallery=g, similarity="euclidean",
                                   query_labels=ql, gallery_labels=gl, chunk_size=6)
    assert got == pytest.approx(expected, rel=1e-6)


def test_label_lists_and_multi_hot_agree(problem):
    q, g, ql, gl = problem
    hot, vocab = M.multi_hot(ql + gl)
    by_lists = M.average_precision(query=q, gallery=g, query_labels=ql, gallery_labels=gl)
    by_matrix = M.average_precision(query=q, gallery=g, query_labels=hot[:23], gallery_labels=hot[23:])
    np.testing.assert_array_equal(by_lists, by_matrix)
    assert sorted(vocab) == sorted(set(itertools.chain(*ql, *gl)))


def test_single_label_arrays(rng):
    scores = rng.normal(size=(5, 12))
    qc, gc = rng.integers(0, 3, 5), rng.integers(0, 3, 12)
    got = M.average_precision(scores, query_labels=qc, gallery_labels=gc)
    np.testing.assert_allclose(got, brute_ap_stable(scores, qc[:, None] == gc[None, :]), rtol=1e-12)


def test_exclude_self(rng):
    x = rng.normal(size=(15, 4))
    labels = rng.integers(0, 3, 15)
    got = M.average_precision(query=x, gallery=x, query_labels=labels, gallery_labels=labels,
                              exclude_self=True, chunk_size=4)
    scores = M.similarity_scores(x, x)
    for i in range(15):
        keep = np.arange(15) != i
        ref = brute_ap_stable(scores[i:i + 1, keep], (labels[keep] == labels[i])[None])
        np.testing.assert_allclose(got[i:i + 1], ref, rtol=1e-12)


# ----------------------------------------------------------------------------- chunked == dense

@pytest.mark.parametrize("similarity", M.SIMILARITIES)
def test_chunked_equals_dense(problem, similarity):
    q, g, ql, gl = problem
    dense = M.similarity_scores(q, g, similarity)
    gt = [[i, (i * 7) % 41] for i in range(23)]
    for chunk in (4, 7, 11, 23, 100):
        for ties in M.TIES:
            np.testing.assert_array_equal(
                M.average_precision(query=q, gallery=g, similarity=similarity, query_labels=ql,
                                    gallery_labels=gl, ties=ties, chunk_size=chunk),
                M.average_precision(dense, query_labels=ql, gallery_labels=gl, ties=ties,
                                    chunk_size=23))
        assert (M.precision_at_k(query=q, gallery=g, similarity=similarity, query_labels=ql,
                                 gallery_labels=gl, ks=(1, 5, 10), chunk_size=chunk)
                == M.precision_at_k(dense, query_labels=ql, gallery_labels=gl, ks=(1, 5, 10),
                                    chunk_size=23))
        assert (M.retrieval_metrics(query=q, gallery=g, similarity=similarity, ground_truth=gt,
                                    chunk_size=chunk)
                == M.retrieval_metrics(dense, ground_truth=gt, chunk_size=23))


def test_chunked_equals_dense_with_tied_embeddings(rng):
    q = rng.integers(-1, 2, (19, 3)).astype(np.float32)
    g = rng.integers(-1, 2, (33, 3)).astype(np.float32)
    ql, gl = rng.integers(0, 4, 19), rng.integers(0, 4, 33)
    dense = M.similarity_scores(q, g, "dot")
    assert len(np.unique(dense)) < 10
    for ties in M.TIES:
        ref = M.average_precision(dense, query_labels=ql, gallery_labels=gl, ties=ties, chunk_size=19)
        for chunk in (4, 6, 10):
            np.testing.assert_array_equal(
                M.average_precision(query=q, gallery=g, similarity="dot", query_labels=ql,
                                    gallery_labels=gl, ties=ties, chunk_size=chunk), ref)
    ranks = M.ground_truth_ranks(query=q, gallery=g, similarity="dot",
                                 ground_truth=np.arange(19), chunk_size=4)
    for got, ref in zip(ranks, brute_ranks(dense, [[i] for i in range(19)])):
        np.testing.assert_array_equal(got, ref)


def test_similarity_scores_definitions(rng):
    q, g = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    np.testing.assert_allclose(M.similarity_scores(q, g, "dot"), q @ g.T)
    cos = (q @ g.T) / np.outer(np.linalg.norm(q, axis=1), np.linalg.norm(g, axis=1))
    np.testing.assert_allclose(M.similarity_scores(q, g, "cosine"), cos)
    dist = np.linalg.norm(q[:, None] - g[None], axis=2)
    np.testing.assert_allclose(M.similarity_scores(q, g, "euclidean"), -dist, rtol=1e-10)


# ----------------------------------------------------------------------------- precision@k

@pytest.mark.parametrize("tied", [False, True])
def test_precision_at_k_matches_brute_force(rng, tied):
    scores = tied_scores(rng, (11, 60)) if tied else rng.normal(size=(11, 60))
    rel = rng.random((11, 60)) < 0.3
    ks = (1, 5, 10, 20, 50)
    got = M.precision_at_k(scores, relevance=rel, ks=ks, chunk_size=4)
    for k in ks:
        ref = np.mean([sum(rel[i, j] for j in stable_order(scores[i])[:k]) / k for i in range(11)])
        assert got[k] == pytest.approx(ref, rel=1e-12)


# ----------------------------------------------------------------------------- cross-modal ranks

def vsepp_i2t(images, captions):
    """VSE++ evaluation.i2t: image i owns captions 5i..5i+4; no ties in random data."""
    ranks = np.zeros(len(images))
    for i in range(len(images)):
        inds = np.argsort(images[i] @ captions.T)[::-1]
        ranks[i] = min(np.where(inds == c)[0][0] for c in range(5 * i, 5 * i + 5))
    r = [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]
    return r, np.floor(np.median(ranks)) + 1, ranks.mean() + 1


def vsepp_t2i(images, captions):
    ranks = np.zeros(len(captions))
    for c in range(len(captions)):
        inds = np.argsort(captions[c] @ images.T)[::-1]
        ranks[c] = np.where(inds == c // 5)[0][0]
    r = [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]
    return r, np.floor(np.median(ranks)) + 1, ranks.mean() + 1


def test_recall_and_ranks_match_vsepp(rng):
    images = rng.normal(size=(40, 4))
    captions = np.repeat(images, 5, axis=0) + rng.normal(scale=1.5, size=(200, 4))
    i2t = M.retrieval_metrics(query=images, gallery=captions, similarity="dot",
                              ground_truth=np.arange(200).reshape(40, 5), chunk_size=7)
    t2i = M.retrieval_metrics(query=captions, gallery=images, similarity="dot",
                              ground_truth=np.arange(200) // 5, chunk_size=7)
    for got, (r, medr, meanr) in ((i2t, vsepp_i2t(images, captions)), (t2i, vsepp_t2i(images, captions))):
        assert [100 * got[f"R@{k}"] for k in (1, 5, 10)] == pytest.approx(r)
        assert np.floor(got["median_rank"]) == medr
        assert got["mean_rank"] == pytest.approx(meanr)
    assert 0 < i2t["R@1"] < i2t["R@10"] < 1
    assert M.rsum(i2t, t2i) == pytest.approx(sum(vsepp_i2t(images, captions)[0])
                                             + sum(vsepp_t2i(images, captions)[0]))


@pytest.mark.parametrize("tied", [False, True])
def test_ground_truth_ranks_match_brute_force(rng, tied):
    scores = tied_scores(rng, (9, 20)) if tied else rng.normal(size=(9, 20))
    gt = [list(rng.choice(20, size=rng.integers(1, 4), replace=False)) for _ in range(9)]
    got = M.ground_truth_ranks(scores, ground_truth=gt, chunk_size=2)
    by_mapping = M.ground_truth_ranks(scores, ground_truth=dict(enumerate(gt)), chunk_size=4)
    for a, b in zip(got, by_mapping):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got, brute_ranks(scores, gt)):
        np.testing.assert_array_equal(a, b)
    best = np.array([min(b) for b in brute_ranks(scores, gt)])
    assert M.recall_at_k(got, (1, 5, 10)) == {k: float(np.mean(best <= k)) for k in (1, 5, 10)}
    assert M.median_rank(got) == float(np.median(best))
    assert M.mean_rank(got) == pytest.approx(best.mean())


def test_mean_median_rank_and_normalized_sum():
    ranks = [np.array([1, 3, 10]), np.array([4]), np.array([2, 6])]
    assert M.mean_median_rank(ranks) == pytest.approx((3 + 4 + 4) / 3)
    assert M.mean_median_rank(np.array([2, 5, 11])) == pytest.approx(6.0)
    total = M.normalized_rank_sum({"text_to_user": 551, "image_to_text": 127, "image_to_user": 785},
                                  {"text_to_user": 40000, "image_to_text": 5000, "image_to_user": 40000})
    assert total == pytest.approx(551 / 40000 + 127 / 5000 + 785 / 40000)
    assert M.normalized_rank_sum({"a": 5}, {"a": 10, "b": 3}) == 0.5
    with pytest.raises(ValueError, match="gallery_sizes"):
        M.normalized_rank_sum({"a": 5, "c": 1}, {"a": 10})


# ----------------------------------------------------------------------------- multi-label classification

@pytest.mark.parametrize("tied", [False, True])
def test_multilabel_prf_matches_sklearn(rng, tied):
    y_true = rng.random((50, 7)) < 0.3
    y_true[:, 6] = False
    y_score = rng.integers(0, 5, (50, 7)) / 8 if tied else rng.random((50, 7))
    got = M.multilabel_prf(y_true, y_score, threshold=0.5)
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_score > 0.5, average=average,
                                                     zero_division=0)
        assert got[f"{average}_precision"] == pytest.approx(p, rel=1e-12)
        assert got[f"{average}_recall"] == pytest.approx(r, rel=1e-12)
        assert got[f"{average}_f1"] == pytest.approx(f, rel=1e-12)


@pytest.mark.parametrize("tied", [False, True])
def test_label_map_matches_sklearn(rng, tied):
    y_true = (rng.random((60, 6)) < 0.3).astype(int)
    y_true[:, 5] = 0
    y_score = rng.integers(0, 4, (60, 6)) / 4 if tied else rng.random((60, 6))
    per_label = M.label_average_precision(y_true, y_score, ties="threshold")
    assert np.isnan(per_label[5])
    ref = [average_precision_score(y_true[:, j], y_score[:, j]) for j in range(5)]
    np.testing.assert_allclose(per_label[:5], ref, rtol=1e-12)
    assert M.label_mean_average_precision(y_true, y_score, ties="threshold") == pytest.approx(np.mean(ref))
    stable = M.label_average_precision(y_true, y_score)
    np.testing.assert_allclose(stable[:5], brute_ap_stable(y_score.T[:5], y_true.T[:5].astype(bool)))


# ----------------------------------------------------------------------------- regression

@pytest.mark.parametrize("tied", [False, True])
def test_regression_matches_references(rng, tied):
    y = rng.integers(0, 5, 40).astype(float) if tied else rng.normal(size=40)
    p = y + rng.normal(size=40) if not tied else rng.integers(0, 4, 40).astype(float)
    assert M.mse(y, p) == pytest.approx(mean_squared_error(y, p), rel=1e-12)
    assert M.mae(y, p) == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
    assert M.spearman(y, p) == pytest.approx(spearmanr(y, p).statistic, rel=1e-10)
    assert np.isnan(M.spearman(y, np.ones(40)))


# ----------------------------------------------------------------------------- bad input

def test_bad_input_raises_clear_errors(rng):
    scores = rng.normal(size=(4, 6))
    rel = rng.random((4, 6)) < 0.5
    nan_scores = scores.copy()
    nan_scores[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"scores contains NaN.*\(2, 3\)"):
        M.average_precision(nan_scores, relevance=rel, chunk_size=1)
    with pytest.raises(ValueError, match="relevance must have the shape"):
        M.average_precision(scores, relevance=rel[:, :5])
    with pytest.raises(ValueError, match="same dimension"):
        M.average_precision(query=rng.normal(size=(3, 4)), gallery=rng.normal(size=(5, 3)),
                            relevance=np.ones((3, 5)))
    q = rng.normal(size=(3, 4))
    q[1, 0] = np.inf
    with pytest.raises(ValueError, match="query contains NaN"):
        M.ground_truth_ranks(query=q, gallery=rng.normal(size=(5, 4)), ground_truth=[0, 1, 2])
    with pytest.raises(ValueError, match="gallery_labels has 5 rows"):
        M.precision_at_k(scores, query_labels=[[1]] * 4, gallery_labels=[[1]] * 5, ks=(1,))
    with pytest.raises(ValueError, match="ks asks for the top 10"):
        M.precision_at_k(scores, relevance=rel, ks=(1, 10))
    with pytest.raises(ValueError, match=r"ground_truth\[1\] holds 6"):
        M.ground_truth_ranks(scores, ground_truth=[[0], [6], [1], [2]])
    with pytest.raises(ValueError, match=r"ground_truth\[2\] is empty"):
        M.ground_truth_ranks(scores, ground_truth=[[0], [1], [], [2]])
    with pytest.raises(ValueError, match="chunk_size"):
        M.average_precision(scores, relevance=rel, chunk_size=0)
    with pytest.raises(ValueError, match="ties"):
        M.average_precision(scores, relevance=rel, ties="random")
    with pytest.raises(ValueError, match="similarity"):
        M.similarity_scores(q, q, "manhattan")
    with pytest.raises(ValueError, match="relevance must hold only 0/1"):
        M.average_precision(scores, relevance=rel * 2)
    with pytest.raises(ValueError, match="y_score contains NaN"):
        M.multilabel_prf(np.ones((2, 2)), np.array([[0.1, np.nan], [0.2, 0.3]]))
    with pytest.raises(ValueError, match="same shape"):
        M.label_mean_average_precision(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="y_pred contains NaN"):
        M.mse([1.0, 2.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="same length"):
        M.mae([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no query has a relevant"):
        M.mean_average_precision(scores, relevance=np.zeros((4, 6)))
