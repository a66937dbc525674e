"""DU2MCE protocols, the interest probe, the averaging baselines and the §4.1 split."""

import numpy as np
import pytest

from mmsocial.data.splits import du2mce_split, near_duplicate_images
from mmsocial.eval.probes import interest_f1
from mmsocial.eval.protocols.du2mce import (RetrievalTask, joint_rank, mean_median_ranks, random_rank, retrieval_row,
                                            table2, table4_row, zeroshot_row)
from mmsocial.models.baselines.averaging import average_by_user


def test_interest_probe_equals_cross_val_score():
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["shoes", "fashion", "hospitality"]), [12, 15, 20])
    centres = {"shoes": 0.0, "fashion": 0.6, "hospitality": -0.6}
    x = rng.normal(size=(len(y), 8)) + np.array([centres[c] for c in y])[:, None]
    x[:, 0] *= 100.0  # one dimension on another scale: the scaler matters
    for seed in (0, 3):
        cv = StratifiedKFold(5, shuffle=True, random_state=seed)
        mine = interest_f1(x, y, C=1.0, folds=5, seed=seed, standardize=False)
        theirs = cross_val_score(LinearSVC(C=1.0), x, y, cv=cv, scoring="f1_macro").mean()
        assert mine == pytest.approx(theirs, abs=1e-12)
        mine = interest_f1(x, y, C=1.0, folds=5, seed=seed)
        theirs = cross_val_score(make_pipeline(StandardScaler(), LinearSVC(C=1.0)), x, y, cv=cv,
                                 scoring="f1_macro").mean()
        assert mine == pytest.approx(theirs, abs=1e-9)
    assert 0.0 < mine < 1.0


def test_interest_probe_rejects_classes_smaller_than_the_folds():
    x = np.zeros((12, 3))
    y = np.array(["a"] * 9 + ["b"] * 3)
    with pytest.raises(ValueError, match="'b' has 3 users, fewer than the 5 folds"):
        interest_f1(x, y)
    with pytest.raises(ValueError, match="at least 2 interest classes"):
        interest_f1(x, np.array(["a"] * 12))


def test_average_by_user_means_and_random_vector_for_users_without_content():
    v = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [9.0, 9.0]])
    u = np.array([0, 0, 2, -1])
    out, has = average_by_user(v, u, 3, seed=0)
    assert np.allclose(out[0], [2.0, 1.0]) and np.allclose(out[2], [0.0, 4.0])
    assert has.tolist() == [True, False, True]
    mean_norm = (np.linalg.norm([2.0, 1.0]) + 4.0) / 2
    assert np.linalg.norm(out[1]) == pytest.approx(mean_norm, rel=1e-5)
    again, _ = average_by_user(v, u, 3, seed=0)
    assert np.array_equal(out, again)
    with pytest.raises(ValueError, match="outside the 2 users"):
        average_by_user(v, u, 2)


def test_mean_median_rank_against_brute_force_and_joint():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(30, 5)), rng.normal(size=(12, 5))
    gt = rng.integers(0, 12, 30)
    ranks = mean_median_ranks({"Text-To-User": RetrievalTask(q, g, gt)})["Text-To-User"]
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    s = qn @ gn.T
    brute = np.mean([1 + (s[i] > s[i, gt[i]]).sum() for i in range(30)])
    assert ranks == pytest.approx(brute)
    tasks = {"Text-To-User": RetrievalTask(q, g, gt), "Image-To-Text": RetrievalTask(q[:10], q[:10], np.arange(10)),
             "Image-To-User": RetrievalTask(q, g, gt)}
    row = retrieval_row(tasks)
    assert row["Image-To-Text"] == 1.0  # each query is its own gallery item
    assert row["Joint"] == pytest.approx(2 * brute / 12 + 1 / 10)
    assert joint_rank(row, {"Text-To-User": 12}, ["Text-To-User"]) == pytest.approx(brute / 12)
    assert table4_row(row)["Joint-Performance"] == row["Joint"]
    t = table2()
    t.add("x", row, 0)
    assert "Joint" in t.to_markdown()


def test_zeroshot_row_reports_only_untrained_pairs():
    metrics = {"Text-To-User": 10.0, "Image-To-Text": 5.0, "Image-To-User": 30.0}
    sizes = {"Text-To-User": 99, "Image-To-Text": 19, "Image-To-User": 99}
    z = zeroshot_row(metrics, sizes, ("T-U", "I-T"))
    assert z == {"Image-To-User": pytest.approx(30.0 / 50.0)}
    assert random_rank(99) == 50.0


def test_near_duplicate_images_group_transitively():
    a = np.array([[1.0, 0.0], [0.999, 0.01], [0.0, 1.0], [1.0, 0.02]])
    g = near_duplicate_images(a, 0.99)
    assert g[0] == g[1] == g[3] != g[2]


def test_du2mce_split_images_first_no_shared_near_duplicate_and_duplicates_removed():
    rng = np.random.default_rng(0)
    n_img = 200
    vec = rng.normal(size=(n_img, 16))
    vec[1] = vec[0] + 1e-4  # near-duplicate image of post 0, different text -> kept, same split
    vec[2] = vec[0] + 2e-4  # near-duplicate image with the same words -> removed
    has_image = np.r_[np.ones(n_img, bool), np.zeros(60, bool)]
    words = [{f"w{i}", "common"} for i in range(len(has_image))]
    words[1] = {"other", "words"}
    words[2] = set(words[0])
    words[n_img + 5] = {"b", "a"}
    words[n_img + 6] = {"a", "b"}  # text-only, same words reordered -> removed
    split, dup = du2mce_split(has_image, words, vec, val=0.1, test=0.2, seed=0)
    assert dup[2] and dup[n_img + 6] and dup.sum() == 2
    assert split[2] is None and split[0] == split[1]
    kept_img = np.flatnonzero(has_image & ~dup)
    assert abs((split[kept_img] == "test").mean() - 0.2) < 0.03
    text_only = np.flatnonzero(~has_image & ~dup)
    assert set(split[text_only]) == {"train", "val", "test"}
    again, _ = du2mce_split(has_image, words, vec, val=0.1, test=0.2, seed=0)
    assert np.array_equal(split, again)
    with pytest.raises(ValueError, match="image_vectors has 3 rows"):
        du2mce_split(has_image, words, vec[:3])
