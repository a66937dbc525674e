"""EISR: model invariants, Eq. 1/2 against a hand computation, the mAP protocol, the baselines."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mmsocial.eval import metrics as M
from mmsocial.eval.protocols.eisr import cross_media_map, eisr_table
from mmsocial.models.baselines import CCA, DeepSemanticMatching, MultiViewCCA, SemanticMatching
from mmsocial.models.eisr import VARIANTS, eisr, eisr_config, label_targets, semantic_loss


def test_joint_variant_shares_exactly_one_last_layer_tensor():
    m = eisr("tiny", "O/LE/J")
    shared = m.shared_parameters()
    assert len(shared) == 1 and shared[0] is m.W.weight and m.W_I is m.W_T
    assert shared[0].shape == (m.cfg.num_classes, m.cfg.latent_dim)
    # a loss through the image branch alone moves W, which the text branch then sees
    x, t = torch.randn(3, 16), torch.randn(3, 8)
    m.embed_image(x).sum().backward()
    assert m.W.weight.grad is not None and m.t_fc1[0].weight.grad is None
    assert len({id(p) for p in m.parameters()}) == len(list(m.parameters()))


@pytest.mark.parametrize("variant", ["O", "O/LE"])
def test_ablations_share_no_parameter(variant):
    m = eisr("tiny", variant)
    assert m.shared_parameters() == []
    assert m.W is None and m.W_I is not m.W_T
    assert (m.i_fc is None) == (variant == "O")
    p_x, p_t = m(torch.randn(5, 16), torch.randn(5, 8))
    assert p_x.shape == p_t.shape == (5, 4)


def test_outputs_are_distributions_and_init_is_paper():
    m = eisr("tiny", "O/LE/J", init_std=0.01)
    p_x, p_t = m(torch.randn(6, 16), torch.randn(6, 8))
    torch.testing.assert_close(p_x.sum(1), torch.ones(6))
    torch.testing.assert_close(p_t.sum(1), torch.ones(6))
    big = eisr("tiny", text_dim=64, text_hidden=512)  # 32k weights: the sample std is close to 0.01
    assert abs(big.t_fc1[0].weight.std().item() - 0.01) < 5e-4
    assert big.t_fc1[0].bias.abs().max().item() == 0
    assert big.W.bias is None  # Eq. 2: W φ, no bias


def test_config_validation_and_variants():
    assert {v: eisr_config("tiny", v).variant for v in VARIANTS} == {v: v for v in VARIANTS}
    with pytest.raises(ValueError, match="latent_embedding"):
        eisr_config("tiny", "O", joint=True)
    with pytest.raises(ValueError, match="unknown EISR preset"):
        eisr_config("huge")
    with pytest.raises(ValueError, match="unknown EISR config field"):
        eisr_config("tiny", latent=3)
    with pytest.raises(ValueError, match="image features"):
        eisr("tiny").embed_image(torch.randn(2, 5))
    assert eisr_config("paper").latent_dim == 512 and eisr_config("paper").batch_size == 256


def test_param_groups_give_backbone_the_pretrained_rate():
    backbone = torch.nn.Linear(3, 16)
    m = eisr("tiny", backbone=backbone)
    groups = m.param_groups()
    assert [g["lr"] for g in groups] == [0.01, 0.001]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in backbone.parameters()}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(m.parameters()))
    assert m.embed_image(torch.randn(2, 3)).shape == (2, 4)
    assert len(eisr("tiny").param_groups()) == 1  # cached features: every layer is new


def test_loss_equals_hand_computation():
    p_x = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    p_t = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    # pair 1: image 0.09+0.04+0.01 = 0.14, text 0.25+0.25 = 0.5; pair 2: image 0.01+0.16+0.09 = 0.26, text 0
    assert semantic_loss(p_x, p_t, y, "sum").item() == pytest.approx(0.14 + 0.5 + 0.26)
    assert semantic_loss(p_x, p_t, y).item() == pytest.approx(0.14 + 0.5 + 0.26)
    assert semantic_loss(p_x, p_t, y, "mean").item() == pytest.approx((0.14 + 0.5 + 0.26) / 2)
    with pytest.raises(ValueError):
        semantic_loss(p_x, p_t, y[:, :2])


def test_loss_through_the_model_matches_eq2_by_hand():
    torch.manual_seed(0)
    m = eisr("tiny", "O/LE/J").eval()
    x, t = torch.randn(4, 16), torch.randn(4, 8)
    y = label_targets(torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1]]))
    W = m.W.weight.detach().numpy().astype(np.float64)
    phi_x, phi_t = m.phi_x(x).detach().numpy(), m.phi_t(t).detach().numpy()

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    want = (((softmax(phi_x @ W.T) - y.numpy()) ** 2).sum() + ((softmax(phi_t @ W.T) - y.numpy()) ** 2).sum())
    got = semantic_loss(*m(x, t), y)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_label_targets_normalise_multi_hot():
    y = label_targets(torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]]))
    torch.testing.assert_close(y, torch.tensor([[0.5, 0, 0.5, 0], [0, 1.0, 0, 0]]))
    with pytest.raises(ValueError, match="no label"):
        label_targets(torch.tensor([[0, 0]]))


def test_map_of_a_perfect_semantic_space_is_one():
    labels = np.eye(5)[np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 2])]
    got = cross_media_map(labels.copy(), labels.copy(), labels)
    assert got == {"Image query": 1.0, "Text query": 1.0, "Average": 1.0}


def test_map_on_a_hand_made_3x4_case():
    g = np.array([[0.0, 0], [1, 0], [2, 0], [3, 0]])
    g_labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    q = np.array([[0.0, 0], [3, 0], [1.1, 0]])
    q_labels = np.array([[1, 0], [1, 0], [0, 1]])
    # q1 ranks g1+ g2 g3+ g4: (1 + 2/3)/2; q2 ranks g4 g3+ g2 g1+: (1/2 + 2/4)/2; q3 ranks g2+ g3 g1 g4+: (1 + 2/4)/2
    want = (5 / 6 + 1 / 2 + 3 / 4) / 3
    got = M.mean_average_precision(query=q, gallery=g, similarity="euclidean_exact",
                                   query_labels=q_labels, gallery_labels=g_labels, chunk_size=2)
    assert got == pytest.approx(want)


def test_cross_media_map_both_directions_by_hand():
    # 3 pairs; classes a, b, a. images: x0 near t1 (wrong class), x1 near t1, x2 near t0
    x = np.array([[0.0], [1.0], [5.0]])
    t = np.array([[4.0], [0.9], [10.0]])
    labels = np.array([0, 1, 0])
    # image queries: x0 -> t1(-) t0(+) t2(+): (1/2 + 2/3)/2; x1 -> t1(+): 1; x2 -> t0(+) t1(-) t2(+): (1 + 2/3)/2
    i2t = ((1 / 2 + 2 / 3) / 2 + 1 + (1 + 2 / 3) / 2) / 3
    # text queries: t0 -> x2(+) x1(-) x0(+): (1 + 2/3)/2; t1 -> x1(+): 1; t2 -> x2(+) x1 x0(+): (1 + 2/3)/2
    t2i = ((1 + 2 / 3) / 2 + 1 + (1 + 2 / 3) / 2) / 3
    got = cross_media_map(x, t, labels)
    assert got["Image query"] == pytest.approx(i2t) and got["Text query"] == pytest.approx(t2i)
    assert got["Average"] == pytest.approx((i2t + t2i) / 2)


def test_exact_euclidean_matches_cdist_and_resolves_saturated_vectors():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
    np.testing.assert_allclose(M.similarity_scores(q, g, "euclidean_exact"), -cdist(q, g), rtol=1e-12)
    # near-saturated softmax outputs: the distances differ by ~1e-9, below what |q|²+|g|²-2q·g resolves
    eps = np.array([1e-9, 3e-9, 2e-9])
    gallery = np.stack([1 - eps, eps], axis=1)
    query = np.array([[1 - 2.9e-9, 2.9e-9]])
    exact = M.similarity_scores(query, gallery, "euclidean_exact")[0]
    assert list(np.argsort(-exact)) == list(np.argsort(np.abs(eps - 2.9e-9)))


def test_sm_posteriors_sum_to_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    views = {"image": rng.normal(size=(60, 6)) + y[:, None], "text": rng.normal(size=(60, 4)) - y[:, None]}
    labels = np.eye(3)[y]
    labels[0, 1] = 1  # a multi-label item
    sm = SemanticMatching().fit(views, labels)
    for m in ("image", "text"):
        p = sm.transform(m, views[m][:10])
        assert p.shape == (10, 3)
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    assert (sm.transform("image", views["image"]).argmax(1) == y).mean() > 0.8
    with pytest.raises(ValueError, match="no label"):
        SemanticMatching().fit(views, np.zeros((60, 3)))


def test_deep_sm_posteriors_and_validation_selection():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 80)
    views = {"image": rng.normal(size=(80, 6)) + y[:, None], "text": rng.normal(size=(80, 4)) - y[:, None]}
    labels = np.eye(3)[y]
    dsm = DeepSemanticMatching(hidden=(16,), epochs=5, batch_size=16).fit(
        {k: v[:60] for k, v in views.items()}, labels[:60], {k: v[60:] for k, v in views.items()}, labels[60:])
    p = dsm.transform("text", views["text"])
    assert p.dtype == np.float64 and p.shape == (80, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    assert any(r.get("kept") for r in dsm.history_["image"])


def test_multiview_cca_with_two_views_gives_cca_correlations():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 3))
    X = np.hstack([z, rng.normal(size=(400, 4))]) @ rng.normal(size=(7, 7))
    Y = np.hstack([z + 0.3 * rng.normal(size=(400, 3)), rng.normal(size=(400, 2))]) @ rng.normal(size=(5, 5))
    mv = MultiViewCCA(3, reg=0.0).fit(X, Y)
    cca = CCA(3, reg=0.0).fit(X, Y)
    np.testing.assert_allclose(mv.eigenvalues_ - 1, cca.correlations_, atol=1e-8)  # λ = 1 + ρ for two views
    labels = np.eye(3)[rng.integers(0, 3, 400)]
    three = MultiViewCCA(4).fit(X, Y, labels)
    assert three.transform(0, X).shape == three.transform(1, Y).shape == (400, 4)
    with pytest.raises(ValueError, match="features"):
        three.transform(1, X)


def test_result_table_layout():
    t = eisr_table("table3", "synthetic")
    assert t.metrics == ["Image query", "Text query", "Average"]
    with pytest.raises(ValueError):
        eisr_table("table9")
