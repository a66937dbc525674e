"""BSSAN protocol: R@K / Med r / rsum on a hand-made score matrix, the test set rule, chunked and two-stage scoring."""

import numpy as np
import pytest
import torch

from mmsocial.eval.protocols.bssan import (candidate_pairs, default_k_t2i, image_text_retrieval,
                                           pair_score_matrix, retrieval_table, select_test_set, two_stage_scores)


def test_retrieval_metrics_on_a_hand_made_matrix():
    # 3 images, 6 captions; captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2
    caption_image = np.array([0, 0, 1, 1, 2, 2])
    s = np.array([
        [0.9, 0.1, 0.8, 0.0, 0.2, 0.3],  # image 0: best own caption (0) at rank 1
        [0.5, 0.6, 0.1, 0.7, 0.0, 0.2],  # image 1: own captions 2 (0.1), 3 (0.7) -> caption 3 rank 1
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],  # image 2: own captions 4 (rank 5), 5 (rank 6) -> 5
    ])
    m = image_text_retrieval(s, caption_image)
    # i2t best ranks: 1, 1, 5
    assert m["i2t R@1"] == pytest.approx(200 / 3) and m["i2t R@5"] == 100 and m["i2t R@10"] == 100
    assert m["i2t Med r"] == 1
    # t2i: caption columns; rank of the own image among 3:
    # c0: [0.9, 0.5, 0.9] own 0 -> tie with image 2, lower index first -> 1
    # c1: [0.1, 0.6, 0.8] own 0 -> 3;  c2: [0.8, 0.1, 0.7] own 1 -> 3;  c3: [0.0, 0.7, 0.6] own 1 -> 1
    # c4: [0.2, 0.0, 0.5] own 2 -> 1;  c5: [0.3, 0.2, 0.1] own 2 -> 3
    assert m["t2i R@1"] == pytest.approx(50) and m["t2i R@5"] == 100
    assert m["t2i Med r"] == 2  # median of 1, 3, 3, 1, 1, 3
    assert m["rsum"] == pytest.approx(200 / 3 + 100 + 100 + 50 + 100 + 100)


def test_retrieval_table_prints_paper_layout():
    t = retrieval_table("Table II")
    t.add("BSSAN", {"i2t R@1": 44.6, "i2t Med r": 2.0}, seed=0)
    t.add("BSSAN", {"i2t R@1": 45.6, "i2t Med r": 3.0}, seed=1)
    md = t.to_markdown()
    assert "45.1 ± 0.7" in md and "2.5 ± 0.7" in md and "%" not in md


def test_test_pairs_keeps_1k_images_and_5_captions():
    image_of_caption = np.repeat(np.arange(1500), 6)  # 6 captions per image
    images, captions = select_test_set(image_of_caption, np.arange(200, 1500), n_images=1000, captions_per_image=5)
    assert len(images) == 1000 and len(captions) == 5000
    assert set(np.unique(image_of_caption[captions])) == set(images)
    small_images, small_caps = select_test_set(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 2]))
    assert list(small_images) == [0, 2] and list(small_caps) == [0, 1, 3, 4, 5]
    with pytest.raises(ValueError, match="no caption"):
        select_test_set(np.array([0, 0]), np.array([0, 1]))


def test_pair_score_matrix_chunks_cover_every_pair():
    a, b = torch.randn(7), torch.randn(11)
    scorer = lambda i, c: a[i] * b[c] + c.float()  # noqa: E731
    full = (a[:, None] * b[None, :] + torch.arange(11.0)).numpy()
    for chunk in (1, 5, 11, 30, 1000):
        for block in (1, 4, 11, 1024):
            np.testing.assert_allclose(pair_score_matrix(scorer, 7, 11, chunk_pairs=chunk, caption_block=block),
                                       full, rtol=1e-6)


def test_two_stage_with_k_covering_everything_equals_full_scoring():
    rng = np.random.default_rng(0)
    first, model = rng.normal(size=(6, 12)), rng.normal(size=(6, 12))
    caption_image = np.repeat(np.arange(6), 2)
    scorer = lambda i, c: torch.as_tensor(model)[i, c]  # noqa: E731
    merged, n = two_stage_scores(first, scorer, k=12)
    assert n == 72
    assert image_text_retrieval(merged, caption_image) == image_text_retrieval(model, caption_image)
    merged3, n3 = two_stage_scores(first, scorer, k=3)
    pairs = candidate_pairs(first, 3)
    assert n3 == len(pairs) < 72
    # every image's top-3 first-stage captions are re-scored and rank above the others
    for i in range(6):
        top = np.argsort(-first[i])[:3]
        rescored = {int(c) for ii, c in pairs if ii == i}
        assert set(top) <= rescored
        order = np.argsort(-merged3[i])[:len(rescored)]
        assert set(order) == rescored
        assert list(order) == sorted(rescored, key=lambda c: -model[i, c])


def test_candidate_sets_of_both_directions_on_a_hand_made_matrix():
    # 2 images x 4 captions (2 each): image 0 tops captions 0 (0.9) and 2 (0.5); image 1 tops 1 (0.8) and 3 (0.7);
    # each caption's top image: c0 -> 0, c1 -> 1, c2 -> 1 (0.6 > 0.5), c3 -> 1
    first = np.array([[0.9, 0.1, 0.5, 0.3],
                      [0.2, 0.8, 0.6, 0.7]])
    assert default_k_t2i(2, 2, 4) == 1 and default_k_t2i(100, 1000, 5000) == 20
    assert default_k_t2i(100, 378, 378) == 100 and default_k_t2i(3, 6, 12) == 2 and default_k_t2i(7, 1000, 5000) == 2
    i2t = [[0, 0], [0, 2], [1, 1], [1, 3]]
    # default K_t2i = ceil(2 / 2 captions per image) = 1: adds (1, 2); (0, 0), (1, 1), (1, 3) are in both sets, once
    assert candidate_pairs(first, 2).tolist() == [[0, 0], [0, 2], [1, 1], [1, 2], [1, 3]]
    assert candidate_pairs(first, 2, 1).tolist() == candidate_pairs(first, 2).tolist()
    assert candidate_pairs(first, 2, 0).tolist() == i2t  # image->text candidates only
    assert len(candidate_pairs(first, 2, 2)) == 8  # the rule before K_t2i: K = 2 both ways covers every pair
    assert candidate_pairs(first, 1, 1).tolist() == [[0, 0], [1, 1], [1, 2], [1, 3]]
    with pytest.raises(ValueError, match="k_t2i"):
        candidate_pairs(first, 2, -1)
    seen = []

    def scorer(i, c):
        seen.extend(zip(i.tolist(), c.tolist()))
        return (i * 10 + c).double()

    merged, n = two_stage_scores(first, scorer, 2)
    assert n == 5 and sorted(seen) == [(0, 0), (0, 2), (1, 1), (1, 2), (1, 3)]  # each candidate scored once
    rescored = np.zeros(first.shape, dtype=bool)
    rescored[[0, 0, 1, 1, 1], [0, 2, 1, 2, 3]] = True
    assert merged[rescored].min() > merged[~rescored].max()  # above every pair not re-scored
    assert merged[1, 2] > merged[0, 2]  # caption 2's two candidates in the model's order (12 > 2)
    assert merged[0, 1] == first[0, 1] and merged[0, 3] == first[0, 3]  # not re-scored: first-stage score
