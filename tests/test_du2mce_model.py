"""DU2MCE network and loss (models/du2mce.py): Eq. 1-4 against hand computations and invariants."""

import math

import numpy as np
import pytest
import torch

from mmsocial.models.du2mce import (DU2MCELoss, PRESETS, cosine_similarity_matrix, du2mce, du2mce_config,
                                    pair_ranking_loss)

V, K = 10, 4


def _model(lambdas=(0.2, 0.3, 0.5), variant="du2mce", seed=0):
    torch.manual_seed(seed)
    return du2mce("tiny", vocab_size=V, num_users=K, lambdas=lambdas, variant=variant, train_word_vectors=True)


def _batch(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 16, generator=g)
    tokens = torch.randint(2, V, (n, 6), generator=g)
    tokens[:, 4:] = 0  # padding
    user = torch.tensor([0, 2, 3, 2, 1, 0][:n])
    ones = torch.ones(n, dtype=torch.bool)
    return image, tokens, user, ones.clone(), ones.clone(), ones.clone()


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _hand_term(anchors, candidates, positive, m):
    """Eq. 4 with explicit loops: Σ_j Σ_{n != pos} max(0, m - S(a_j, c_pos) + S(a_j, c_n))."""
    total = 0.0
    for j, a in enumerate(anchors):
        for n, c in enumerate(candidates):
            if n != positive[j]:
                total += max(0.0, m - _cos(a, candidates[positive[j]]) + _cos(a, c))
    return total


def test_presets_build_and_paper_defaults():
    cfg = du2mce_config("paper")
    assert (cfg.word_dim, cfg.max_length, cfg.kernel_widths, cfg.filters) == (300, 20, (2, 3, 4), (512, 256, 256))
    assert (cfg.user_dim, cfg.embed_dim, cfg.margin, cfg.lr, cfg.batch_size) == (300, 1024, 0.2, 5e-4, 1000)
    assert cfg.text_dim == 1024
    for preset in PRESETS:
        du2mce_config(preset)
    with pytest.raises(ValueError, match="unknown DU2MCE config field"):
        du2mce_config("tiny", lambda1=0.3)
    with pytest.raises(ValueError, match="lambdas"):
        du2mce_config("tiny", lambdas=(0, 0, 0))
    with pytest.raises(ValueError, match="variant"):
        du2mce_config("tiny", variant="bridging")


def test_shapes_and_init_copies():
    w = np.random.default_rng(0).normal(size=(V, 8)).astype(np.float32)
    w[0] = 0
    u0 = np.random.default_rng(1).normal(size=(K, 8)).astype(np.float32)
    model = du2mce("tiny", vocab_size=V, num_users=K, word_vectors=w, user_init=u0)
    assert torch.allclose(model.phi_T.words.weight, torch.from_numpy(w))
    assert torch.allclose(model.U_e.weight, torch.from_numpy(u0))
    assert not model.phi_T.words.weight.requires_grad  # fixed word2vec by default
    image, tokens, user, *_ = _batch()
    out = model(image, tokens, user)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"I": (3, 12), "T": (3, 12), "U": (3, 12)}
    with pytest.raises(ValueError, match="user_init must have shape"):
        du2mce("tiny", vocab_size=V, num_users=K, user_init=u0[:2])
    with pytest.raises(ValueError, match="pooled image features"):
        model.encode_image(torch.zeros(2, 7))


def test_each_loss_term_equals_hand_computation():
    lambdas, m = (0.2, 0.3, 0.5), 0.2
    model = _model(lambdas)
    image, tokens, user, hi, ht, hu = _batch()
    out = DU2MCELoss(model.cfg)(model, image, tokens, user, hi, ht, hu)
    with torch.no_grad():
        xI = model.encode_image(image).numpy()
        xT = model.encode_text(tokens).numpy()
        users = [0, 2, 3]  # the distinct users of the batch, each once
        xU = model.encode_user(torch.tensor(users)).numpy()
    pos_u = [users.index(u) for u in user.tolist()]
    t_tu = _hand_term(xT, xU, pos_u, m) / 3
    t_it = _hand_term(xI, xT, [0, 1, 2], m) / 3
    t_iu = _hand_term(xI, xU, pos_u, m) / 3
    assert out["T-U"].item() == pytest.approx(t_tu, rel=1e-5, abs=1e-6)
    assert out["I-T"].item() == pytest.approx(t_it, rel=1e-5, abs=1e-6)
    assert out["I-U"].item() == pytest.approx(t_iu, rel=1e-5, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.2 * t_tu + 0.3 * t_it + 0.5 * t_iu, rel=1e-5)
    assert t_tu > 0 and t_it > 0 and t_iu > 0  # random embeddings violate the margin: the check is not vacuous


def test_repeated_user_is_one_negative_not_a_negative_of_itself():
    """Posts 1 and 3 share user 2: for post 1 the user of post 3 is its positive, not a negative."""
    model = _model((1.0, 0.0, 0.0))
    image, tokens, user, hi, ht, hu = _batch(n=4)  # users 0, 2, 3, 2
    out = DU2MCELoss(model.cfg)(model, image, tokens, user, hi, ht, hu)
    with torch.no_grad():
        xT = model.encode_text(tokens).numpy()
        xU = model.encode_user(torch.tensor([0, 2, 3])).numpy()
    hand = _hand_term(xT, xU, [0, 1, 2, 1], 0.2) / 4
    assert out["T-U"].item() == pytest.approx(hand, rel=1e-5, abs=1e-6)


def test_missing_image_adds_no_image_pair():
    model = _model()
    image, tokens, user, hi, ht, hu = _batch()
    hi[1] = False
    loss_fn = DU2MCELoss(model.cfg)
    out = loss_fn(model, image, tokens, user, hi, ht, hu)
    assert out["N_I-T"].item() == 2 and out["N_I-U"].item() == 2 and out["N_T-U"].item() == 3
    garbage = image.clone()
    garbage[1] = 1e6  # the missing image's placeholder row never reaches the loss
    out2 = loss_fn(model, garbage, tokens, user, hi, ht, hu)
    assert out2["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)
    with torch.no_grad():
        xI = model.encode_image(image[[0, 2]]).numpy()
        xT = model.encode_text(tokens).numpy()
    # I-T over the two posts with an image; their negatives are every other text of the batch
    assert out["I-T"].item() == pytest.approx(_hand_term(xI, xT, [0, 2], 0.2) / 2, rel=1e-5, abs=1e-6)
    out["loss"].backward()  # does not crash
    # a batch with no image at all: both image terms are zero, no crash
    none = torch.zeros(3, dtype=torch.bool)
    out3 = loss_fn(model, image, tokens, user, none, ht, hu)
    assert out3["I-T"].item() == 0 and out3["I-U"].item() == 0 and math.isfinite(out3["loss"].item())


def test_missing_text_and_user_are_skipped():
    model = _model()
    image, tokens, user, hi, ht, hu = _batch()
    ht[0], hu[2] = False, False
    out = DU2MCELoss(model.cfg)(model, image, tokens, user, hi, ht, hu)
    assert (out["N_T-U"].item(), out["N_I-T"].item(), out["N_I-U"].item()) == (1, 2, 2)


def test_text_user_only_leaves_image_encoder_gradient_at_zero():
    model = _model((1.0, 0.0, 0.0))
    image, tokens, user, hi, ht, hu = _batch()
    out = DU2MCELoss(model.cfg)(model, image, tokens, user, hi, ht, hu)
    out["loss"].backward()
    for p in model.W_I.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert model.W_T.weight.grad is not None and torch.count_nonzero(model.W_T.weight.grad) > 0
    assert model.U_e.weight.grad is not None and torch.count_nonzero(model.U_e.weight.grad) > 0


def test_image_text_only_leaves_user_encoder_gradient_at_zero():
    model = _model((0.0, 1.0, 0.0))
    image, tokens, user, hi, ht, hu = _batch()
    DU2MCELoss(model.cfg)(model, image, tokens, user, hi, ht, hu)["loss"].backward()
    for p in (*model.U_e.parameters(), *model.W_U.parameters()):
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert torch.count_nonzero(model.W_I.weight.grad) > 0


def test_merged_modality_sums_image_and_text_and_zero_fills_missing_image():
    model = _model(variant="merged")
    image, tokens, user, hi, ht, hu = _batch()
    hi[2] = False
    out = DU2MCELoss(model.cfg)(model, image, tokens, user, hi, ht, hu)
    with torch.no_grad():
        xI = model.encode_image(image).numpy()
        xT = model.encode_text(tokens).numpy()
        xU = model.encode_user(torch.tensor([0, 2, 3])).numpy()
    content = xT + xI * np.array([1, 1, 0])[:, None]
    assert out["loss"].item() == pytest.approx(_hand_term(content, xU, [0, 1, 2], 0.2) / 3, rel=1e-5)


def test_pair_ranking_loss_zero_when_margin_met_and_cosine_matrix():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    c = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(cosine_similarity_matrix(a, c), torch.eye(2))
    assert pair_ranking_loss(a, c, torch.tensor([0, 1]), 0.2).item() == 0.0
    # swapped positives: each anchor pays m - 0 + 1 = 1.2 for its one negative
    assert pair_ranking_loss(a, c, torch.tensor([1, 0]), 0.2).item() == pytest.approx(2.4)


def test_bridging_freeze_keeps_text_and_user_fixed():
    model = _model((0.0, 1.0, 0.0))
    model.set_trainable(image=True, text=False, user=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"W_I.weight", "W_I.bias"}
    model.set_trainable()
    assert "phi_T.words.weight" in {n for n, p in model.named_parameters() if p.requires_grad}
