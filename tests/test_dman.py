import math

import numpy as np
import pytest
import torch

from mmsocial.models.dman import DMAN, DMANConfig, DMANFC, DMANLoss, dman, dman_config
from mmsocial.models.layers import LocallyConnected
from mmsocial.train.losses import hinge_rank_loss, similarity, weighted_bce


def _regions(b=5, cfg=None, seed=0):
    cfg = cfg or dman_config("tiny")
    return torch.randn(b, cfg.num_regions, cfg.region_dim, generator=torch.Generator().manual_seed(seed))


def test_attention_sums_to_one_over_regions():
    torch.manual_seed(0)
    m = dman("tiny")
    a = m.attention_maps(_regions())
    assert a.shape == (5, m.cfg.num_words, m.cfg.num_regions)
    assert torch.allclose(a.sum(-1), torch.ones(5, m.cfg.num_words), atol=1e-6)
    assert (a >= 0).all()


def test_attention_matches_equations_5_to_8():
    torch.manual_seed(0)
    m = dman("tiny")
    r = _regions(2)
    u, alpha = m.attention(r)
    w, b = m.attention.w.weight, m.attention.w.bias  # (L, M), (L,)
    for i in range(2):
        z = torch.tanh(w @ r[i].T + b[:, None])  # Eq. 7, (L, D)
        a = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)  # Eq. 6
        assert torch.allclose(alpha[i], a, atol=1e-6)
        assert torch.allclose(u[i], a @ r[i], atol=1e-5)  # Eq. 8


def test_lfc_word_outputs_are_independent():
    torch.manual_seed(0)
    m = dman("tiny").eval()
    u = torch.randn(3, m.cfg.num_words, m.cfg.region_dim)
    y0 = torch.sigmoid(m.lfc(u).squeeze(-1))
    u2 = u.clone()
    u2[:, 4] += 5 * torch.randn(3, m.cfg.region_dim)  # change only word 4's attended feature
    y1 = torch.sigmoid(m.lfc(u2).squeeze(-1))
    others = [k for k in range(m.cfg.num_words) if k != 4]
    assert torch.equal(y0[:, others], y1[:, others])
    assert not torch.allclose(y0[:, 4], y1[:, 4])


def test_lfc_has_its_own_weights_per_word_and_isolated_gradients():
    # one shared nn.Linear would pass the test above (same map, per-word inputs); it fails here
    torch.manual_seed(0)
    m = dman("tiny").eval()
    L = m.cfg.num_words
    params = list(m.lfc.parameters())
    assert params and all(p.shape[0] == L for p in params)  # every LFC parameter is per word
    u = torch.randn(3, L, m.cfg.region_dim)
    m.lfc(u)[:, 4].sum().backward()
    for p in params:
        others = torch.cat([p.grad[:4], p.grad[5:]])
        assert torch.count_nonzero(others) == 0 and torch.count_nonzero(p.grad[4]) > 0
    y0 = m.lfc(u).detach()
    with torch.no_grad():  # a step on word 4's output moves word 4 only
        for p in params:
            p -= 0.5 * p.grad
    y1 = m.lfc(u).detach()
    others = [k for k in range(L) if k != 4]
    assert torch.equal(y0[:, others], y1[:, others]) and not torch.allclose(y0[:, 4], y1[:, 4])


def test_locally_connected_equals_per_group_linear():
    torch.manual_seed(0)
    lc = LocallyConnected(6, 5, 3)
    x = torch.randn(4, 6, 5)
    ref = torch.stack([x[:, g] @ lc.weight[g] + lc.bias[g] for g in range(6)], 1)
    assert torch.allclose(lc(x), ref, atol=1e-6)
    with pytest.raises(ValueError, match="expected input"):
        lc(torch.randn(4, 5, 5))


def test_output_is_a_probability_per_word():
    m = dman("tiny")
    y = m(_regions())
    assert y.shape == (5, m.cfg.num_words)
    assert ((y > 0) & (y < 1)).all()


def test_similarity_eq1_as_printed():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]])
    # a·b = 50, ‖a‖ + ‖b‖ = 15
    assert similarity(a, b, "eq1").item() == pytest.approx(50 / 15)
    assert similarity(a, b, "cosine").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown similarity"):
        similarity(a, b, "l2")


def test_hinge_rank_loss_hand_computation():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0]])  # eq1 sim = 1 / 2 = 0.5
    n = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [2.0, 0.0]]])  # sims 0, 0.5, 2/3
    per = hinge_rank_loss(a, p, n, margin=0.3, kind="eq1", reduction="none")
    expected = torch.tensor([[max(0, 0.3 - 0.5 + 0.0), 0.3, 0.3 - 0.5 + 2 / 3]])
    assert torch.allclose(per, expected, atol=1e-6)
    assert hinge_rank_loss(a, p, n, 0.3, "eq1").item() == pytest.approx(expected.sum().item(), abs=1e-6)


def test_weighted_bce_hand_computation():
    y = torch.tensor([[0.9, 0.2, 0.6]])
    t = torch.tensor([[1.0, 0.0, 1.0]])
    lam = 10.0
    expected = -(lam * math.log(0.9) + math.log(1 - 0.2) + lam * math.log(0.6))
    assert weighted_bce(y, t, lam).item() == pytest.approx(expected, rel=1e-5)
    # λ = 1 is the ordinary binary cross-entropy (summed over words)
    ref = torch.nn.functional.binary_cross_entropy(y, t, reduction="sum")
    assert weighted_bce(y, t, 1.0).item() == pytest.approx(ref.item(), rel=1e-5)


def test_config_validation_and_presets():
    assert dman_config().num_words == 1000 and dman_config().lfc_dims == (128, 32)
    assert dman_config().lr == 0.01 and dman_config().nesterov and dman_config().lam == 10
    with pytest.raises(ValueError, match="unknown DMAN preset"):
        dman_config("huge")
    with pytest.raises(ValueError, match="unknown DMAN variant"):
        dman_config(variant="dman_plus")
    with pytest.raises(ValueError, match="unknown DMAN config field"):
        dman_config(num_word=3)
    with pytest.raises(ValueError, match="region grids"):
        dman("tiny")(torch.randn(2, 4, 7))


@pytest.mark.parametrize("variant", ["dman", "triplet", "triplet_text"])
def test_variants_build_and_run(variant):
    torch.manual_seed(0)
    m = dman("tiny", variant=variant)
    assert isinstance(m, DMAN if variant == "dman" else DMANFC)
    y = m(_regions())
    assert y.shape == (5, m.cfg.num_words)
    tags = torch.zeros(2, m.cfg.num_words)
    tags[0, [1, 3]] = 1  # non-zero queries: a query returning zeros must fail
    tags[1, 0] = 1
    if variant == "triplet":
        with pytest.raises(ValueError, match="image-only"):
            m.query(tags)
    else:
        q = m.query(tags)
        assert q.shape == tags.shape and torch.count_nonzero(q) > 0
        assert torch.equal(q, tags)  # Y lives in the tag space: a tag vector is its own query


def _toy_problem(cfg, n=64, seed=0):
    """Posts of 4 classes; class c lights up region c's features and tags {c, c+4}; linked = same class."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.arange(n) % 4
    r = 0.3 * torch.randn(n, cfg.num_regions, cfg.region_dim, generator=g)
    r[torch.arange(n), cls, cls] += 3.0
    tags = torch.zeros(n, cfg.num_words)
    tags[torch.arange(n), cls] = 1
    tags[torch.arange(n), cls + 4] = 1
    return r, tags, cls.numpy()


def _triplets(cls, k, rng):
    anchors = rng.permutation(len(cls))
    pos = np.array([rng.choice(np.flatnonzero((cls == cls[a]) & (np.arange(len(cls)) != a))) for a in anchors])
    neg = np.array([rng.choice(np.flatnonzero(cls != cls[a]), k) for a in anchors])
    return anchors, pos, neg


@pytest.mark.parametrize("variant", ["dman", "triplet_text"])
def test_tiny_training_decreases_both_losses(variant):
    torch.manual_seed(0)
    cfg = dman_config("tiny", variant=variant, similarity="cosine")
    m = dman("tiny", variant=variant, similarity="cosine")
    loss_fn = DMANLoss(cfg)
    r, tags, cls = _toy_problem(cfg)
    opt = torch.optim.SGD(m.parameters(), lr=0.3, momentum=cfg.momentum, nesterov=cfg.nesterov)
    rng = np.random.default_rng(0)

    def losses(anc, pos, neg):
        ya, yp, yn = m(r[anc]), m(r[pos]), m(r[neg.ravel()]).view(len(anc), cfg.k_negatives, -1)
        return loss_fn(ya, yp, yn, ya, tags[anc])

    fixed = _triplets(cls, cfg.k_negatives, np.random.default_rng(1))
    with torch.no_grad():
        before = losses(*fixed)
    for _ in range(60):
        out = losses(*_triplets(cls, cfg.k_negatives, rng))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = losses(*fixed)
    assert after["hinge"] < 0.5 * before["hinge"]
    assert after["bce"] < 0.5 * before["bce"]


def test_triplet_variant_uses_hinge_only():
    cfg = dman_config("tiny", variant="triplet")
    y = torch.rand(3, cfg.num_words)
    out = DMANLoss(cfg)(y, y, y[:, None].expand(3, 2, -1).contiguous())
    assert out["bce"].item() == 0 and out["loss"].item() == pytest.approx(out["hinge"].item())
    with pytest.raises(ValueError, match="needs the tag vectors"):
        DMANLoss(dman_config("tiny"))(y, y, y[:, None])
