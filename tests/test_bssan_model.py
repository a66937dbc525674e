"""BSSAN model: attention invariants, Eq. 8, the fast path against the paper's path, Eq. 18-19 by hand."""

import numpy as np
import pytest
import torch

from mmsocial.models.bssan import BSSANLoss, bssan, bssan_config, l2_penalty, word_mask


def _inputs(cfg, n=5, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(n, cfg.num_regions, cfg.region_dim, generator=g)
    O = torch.randn(n, cfg.num_objects, cfg.object_dim, generator=g)
    T = torch.randn(n, cfg.max_length, cfg.word_dim, generator=g)
    lengths = torch.tensor(lengths if lengths is not None else [cfg.max_length, 1, 3, 5, 2][:n])
    T = T * word_mask(lengths, cfg.max_length)[..., None]  # zero padding, as the system encodes captions
    return R, O, T, lengths


def _model(variant="bssan", seed=0, **kw):
    torch.manual_seed(seed)
    return bssan("tiny", variant, **kw).eval()


def test_attention_rows_sum_to_one_and_padding_gets_zero():
    m = _model()
    R, O, T, lengths = _inputs(m.cfg)
    out = m(R, O, T, lengths)
    alpha, beta = out["alpha"], out["beta"]
    assert alpha.shape == (5, m.cfg.max_length, m.cfg.num_regions)
    assert beta.shape == (5, m.cfg.num_objects, m.cfg.max_length)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(alpha.shape[:2]))
    torch.testing.assert_close(beta.sum(-1), torch.ones(beta.shape[:2]))
    mask = word_mask(lengths, m.cfg.max_length)
    assert (beta.masked_select(~mask[:, None, :].expand_as(beta)) == 0).all()
    assert (beta[1, :, 0] == 1).all()  # a one-word caption: all attention on that word


def test_negative_pairs_get_exactly_uniform_attention():
    m = _model()
    R, O, T, lengths = _inputs(m.cfg)
    uniform = torch.tensor([False, True, True, False, True])
    out = m(R, O, T, lengths, uniform=uniform)
    D = m.cfg.num_regions
    assert (out["alpha"][uniform] == 1.0 / D).all()  # Eq. 8
    assert not torch.allclose(out["alpha"][~uniform], torch.full_like(out["alpha"][~uniform], 1.0 / D))
    beta = out["beta"]
    for i in np.flatnonzero(uniform.numpy()):
        L = int(lengths[i])
        assert (beta[i, :, :L] == 1.0 / L).all() and (beta[i, :, L:] == 0).all()
    # a uniform row's W2R input is the mean region: u_k = (1/D) Σ_j r_j
    u = out["alpha"][1] @ R[1]
    torch.testing.assert_close(u, R[1].mean(0).expand_as(u))


def test_negative_attention_softmax_option_ignores_uniform():
    m = _model(negative_attention="softmax")
    R, O, T, lengths = _inputs(m.cfg)
    a = m(R, O, T, lengths, uniform=torch.ones(5, dtype=torch.bool))
    b = m(R, O, T, lengths)
    torch.testing.assert_close(a["score"], b["score"])


@pytest.mark.parametrize("variant", ["bssan", "w2r", "o2w", "no_reg"])
def test_batched_pair_scores_equal_one_pair_at_a_time(variant):
    m = _model(variant, seed=1)
    # train a few steps so the batch-norm running statistics are not the identity
    m.train()
    R, O, T, lengths = _inputs(m.cfg, n=5, seed=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(3):
        loss = m(R, O, T, lengths)["score"].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    R, O, T, lengths = _inputs(m.cfg, n=5, seed=3, lengths=[8, 1, 3, 5, 2])  # padded captions included
    with torch.inference_mode():
        images, captions = m.encode_images(R, O), m.encode_captions(T, lengths)
        ii, cc = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
        batched = m.pair_scores(images, captions, ii.reshape(-1), cc.reshape(-1)).view(5, 5)
        naive = torch.stack([torch.stack([m(R[i:i + 1], O[i:i + 1], T[c:c + 1], lengths[c:c + 1])["score"][0]
                                          for c in range(5)]) for i in range(5)])
        # the caption tensor cut to its own length gives the same score (padding changes nothing)
        short = m(R[:1], O[:1], T[1:2, :1], lengths[1:2])["score"][0]
    torch.testing.assert_close(batched, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short, naive[0, 1], atol=1e-5, rtol=1e-5)
    assert batched.std() > 0


def test_w2r_attention_by_hand():
    """Eq. 1-3 on a 2-word, 3-region example computed with NumPy."""
    m = _model("w2r")
    att = m.w2r.attention
    with torch.no_grad():
        W = torch.tensor(np.arange(6 * 5, dtype=np.float32).reshape(6, 5) / 50.0 - 0.3)
        att.W.copy_(W)
        att.b.fill_(0.1)
    t = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    r = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    r4 = np.vstack([r, np.zeros((1, 5), np.float32)])  # tiny preset has D = 4 regions
    alpha = att.weights(torch.tensor(t)[None], att.project_regions(torch.tensor(r4)[None]))[0].detach().numpy()
    e = np.tanh(t @ W.numpy() @ r4.T + 0.1)  # Eq. 2
    expected = np.exp(e) / np.exp(e).sum(1, keepdims=True)  # Eq. 1
    np.testing.assert_allclose(alpha, expected, rtol=1e-5, atol=1e-6)


def test_score_is_eq19_and_variants_drop_a_network():
    m = _model()
    R, O, T, lengths = _inputs(m.cfg)
    out = m(R, O, T, lengths)
    torch.testing.assert_close(out["score"], out["f_w2r"] + 0.6 * out["f_o2w"])
    assert m.cfg.lam == 0.6 and m.cfg.delta == 0.01 and m.cfg.max_length == 8
    assert _model("w2r").o2w is None and _model("o2w").w2r is None
    assert bssan_config("tiny", "no_reg").delta == 0
    assert _model("w2r")(R, O, T, lengths)["beta"] is None
    with pytest.raises(ValueError, match="at least one"):
        bssan_config("tiny", w2r=False, o2w=False)
    with pytest.raises(ValueError, match="unknown BSSAN variant"):
        bssan_config("tiny", "w2r_o2w")


def test_paper_preset_has_table1_sizes():
    cfg = bssan_config("paper")
    assert (cfg.w2r_lstm, cfg.w2r_mlp, cfg.o2w_lstm, cfg.o2w_mlp) == (1024, (1024, 512, 128), 512, (512, 256, 64))
    assert (cfg.num_regions, cfg.region_dim, cfg.num_objects, cfg.object_dim, cfg.max_length) == (196, 512, 10, 4096, 30)
    assert (cfg.lr, cfg.momentum) == (0.01, 0.9)


def test_loss_eq18_by_hand():
    m = _model()
    cfg = m.cfg
    pos = {"f_w2r": torch.tensor([1.0, 0.0]), "f_o2w": torch.tensor([0.5, 0.3]), "score": torch.zeros(2)}
    neg = {"f_w2r": torch.tensor([0.9, -1.0]), "f_o2w": torch.tensor([0.1, 0.4]), "score": torch.zeros(2)}
    out = BSSANLoss(cfg)(m, pos, neg)
    l1 = max(0, 0.2 - 1.0 + 0.9) + max(0, 0.2 - 0.0 - 1.0)  # Eq. 7 (sum over pairs)
    l2 = max(0, 0.2 - 0.5 + 0.1) + max(0, 0.2 - 0.3 + 0.4)  # Eq. 17
    reg = sum(float((p.detach() ** 2).sum()) for p in m.parameters() if p.dim() >= 2)
    assert out["l1"].item() == pytest.approx(l1, abs=1e-6)
    assert out["l2"].item() == pytest.approx(l2, abs=1e-6)
    assert out["reg"].item() == pytest.approx(reg, rel=1e-5)
    assert out["loss"].item() == pytest.approx(l1 + 0.6 * l2 + 0.01 * reg, rel=1e-5)
    assert l2_penalty(m).item() == pytest.approx(reg, rel=1e-5)
    no_reg = BSSANLoss(bssan_config("tiny", "no_reg"))(m, pos, neg)
    assert no_reg["loss"].item() == pytest.approx(l1 + 0.6 * l2, abs=1e-6)
    mean = BSSANLoss(bssan_config("tiny", hinge_reduction="mean"))(m, pos, neg)
    assert mean["l1"].item() == pytest.approx(l1 / 2, abs=1e-6) and mean["l2"].item() == pytest.approx(l2 / 2, abs=1e-6)
    assert mean["loss"].item() == pytest.approx((l1 + 0.6 * l2) / 2 + 0.01 * reg, rel=1e-5)
    with pytest.raises(ValueError, match="hinge_reduction"):
        bssan_config("tiny", hinge_reduction="max")


def test_input_standardisation_statistics_are_buffers_and_used():
    m = _model()
    R, O, T, lengths = _inputs(m.cfg)
    before = m(R, O, T, lengths)["score"]
    R2, O2 = R * 3 + 5, O * 2 - 1  # an affine change of every channel ...
    m.set_input_statistics(R2, O2)
    state = m.state_dict()
    torch.testing.assert_close(state["region_mean"], R2.reshape(-1, R2.shape[-1]).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state["object_std"], O2.reshape(-1, O2.shape[-1]).std(0), atol=1e-5, rtol=1e-5)
    m.set_input_statistics(R, O)
    m2 = _model(seed=9)
    m2.load_state_dict(m.state_dict())  # ... the statistics travel with the weights
    torch.testing.assert_close(m2.region_std, m.region_std)
    after = m(R, O, T, lengths)["score"]
    assert not torch.allclose(before, after)  # the statistics are applied
    m.set_input_statistics(R2, O2)  # ... is undone by statistics taken from the changed features
    torch.testing.assert_close(m(R2, O2, T, lengths)["score"], after, atol=1e-4, rtol=1e-4)
    with torch.inference_mode():
        fast = m.pair_scores(m.encode_images(R2, O2), m.encode_captions(T, lengths), torch.arange(5), torch.arange(5))
    torch.testing.assert_close(fast, after, atol=1e-4, rtol=1e-4)


def test_bad_shapes_and_lengths_are_errors():
    m = _model()
    R, O, T, lengths = _inputs(m.cfg)
    with pytest.raises(ValueError, match="region grids"):
        m(R[:, :2], O, T, lengths)
    with pytest.raises(ValueError, match="objects"):
        m(R, O[..., :2], T, lengths)
    with pytest.raises(ValueError, match="lengths"):
        m(R, O, T, torch.tensor([0, 1, 2, 3, 4]))


@pytest.mark.parametrize("variant", ["bssan", "w2r", "o2w"])
@pytest.mark.parametrize("attention_tanh", [True, False])
def test_fast_path_shared_prefixes_and_arbitrary_pairs_equal_forward(variant, attention_tanh):
    """Captions sharing a prefix (one a prefix of another, one a duplicate) share their W2R recurrence in
    the fast path; arbitrary (image, caption) pairs (not a block) take the image-by-image path. Also with
    the attention logits without Eq. 2/10's tanh."""
    m = _model(variant, seed=4, attention_tanh=attention_tanh)
    m.train()
    R, O, T, lengths = _inputs(m.cfg, n=6, seed=5, lengths=[8, 8, 5, 3, 8, 1])
    m(R, O, T, lengths)["score"].sum().backward()  # batch-norm running statistics move off the identity
    m.eval()
    T = T.clone()
    T[1, :2] = T[0, :2]  # caption 1 shares its first two words with caption 0
    T[2, :5] = T[0, :5]  # caption 2 is caption 0's first five words
    T[3, :3] = T[1, :3]  # caption 3 is caption 1's first three words
    T[4] = T[0]  # caption 4 repeats caption 0
    T[5, :1] = T[0, :1]
    T = T * word_mask(lengths, m.cfg.max_length)[..., None]
    with torch.inference_mode():
        naive = torch.stack([torch.stack([m(R[i:i + 1], O[i:i + 1], T[c:c + 1], lengths[c:c + 1])["score"][0]
                                          for c in range(6)]) for i in range(6)])
        images, captions = m.encode_images(R, O), m.encode_captions(T, lengths)
        for share in (True, False):
            m.share_prefixes = share
            ii, cc = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
            block = m.pair_scores(images, captions, ii.reshape(-1), cc.reshape(-1)).view(6, 6)
            torch.testing.assert_close(block, naive, atol=1e-5, rtol=1e-5)
            g = torch.Generator().manual_seed(int(share))
            img, cap = torch.randint(0, 6, (17,), generator=g), torch.randint(0, 6, (17,), generator=g)
            torch.testing.assert_close(m.pair_scores(images, captions, img, cap), naive[img, cap], atol=1e-5, rtol=1e-5)
            img, cap = torch.tensor([0, 1, 2, 3, 4, 5, 2, 0, 1]), torch.tensor([0, 0, 0, 0, 0, 0, 2, 2, 2])
            torch.testing.assert_close(m.pair_scores(images, captions, img, cap), naive[img, cap], atol=1e-5, rtol=1e-5)
            if m.w2r is not None:  # images taken a few at a time (small groups), each with its own captions
                img, cap = torch.tensor([0, 0, 0, 1, 3, 3, 5, 5, 5, 5]), torch.tensor([0, 4, 2, 1, 3, 0, 1, 5, 2, 4])
                f = m._w2r_pairs(images, captions, img, cap, *torch.unique_consecutive(img, return_counts=True),
                                 group_pairs=3)
                ref = torch.stack([m(R[i:i + 1], O[i:i + 1], T[c:c + 1], lengths[c:c + 1])["f_w2r"][0]
                                   for i, c in zip(img.tolist(), cap.tolist())])
                torch.testing.assert_close(f, ref, atol=1e-5, rtol=1e-5)
                for chunk in (1, 2, 3):  # images padded a few at a time, sorted by their nodes per level
                    slots = torch.repeat_interleave(torch.arange(4), torch.tensor([3, 1, 2, 4]))
                    f = m._w2r_ragged(images, captions, torch.tensor([0, 1, 3, 5]), slots, cap, chunk=chunk)
                    torch.testing.assert_close(f, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(naive[:, 4], naive[:, 0])


def test_fast_path_needs_eval_mode():
    m = _model()
    R, O, T, lengths = _inputs(m.cfg)
    m.train()
    with pytest.raises(RuntimeError, match="eval"):
        m.encode_images(R, O)


@pytest.mark.parametrize("variant", ["bssan", "w2r", "o2w"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("negative_attention", ["uniform", "softmax"])
@pytest.mark.parametrize("attention_tanh", [True, False])
def test_grid_equals_forward_on_every_pair_with_gradients(variant, mode, negative_attention, attention_tanh):
    """The training grid (all images x all captions of a batch) is ``forward`` on the flattened pairs: same
    scores, same batch-norm statistics in training mode, same Eq. 8 on the marked pairs, same gradients
    (in float64: the two orders of summation differ by float32 rounding, more without the tanh)."""
    m = _model(variant, seed=4, negative_attention=negative_attention, attention_tanh=attention_tanh).double()
    m.train(mode == "train")
    R, O, _, _ = (x.double() if x.is_floating_point() else x for x in _inputs(m.cfg, n=3, seed=5))
    _, _, T, lengths = (x.double() if x.is_floating_point() else x for x in _inputs(m.cfg, n=4, seed=6, lengths=[8, 1, 3, 5]))
    negative = ~torch.eye(3, 4, dtype=torch.bool)
    ii, cc = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    ii, cc = ii.reshape(-1), cc.reshape(-1)

    grid = m.grid(R, O, T, lengths, negative=negative)
    g_grad = torch.autograd.grad(grid["score"].square().sum(), list(m.parameters()), allow_unused=True)
    flat = m(R[ii], O[ii], T[cc], lengths[cc], uniform=negative.reshape(-1))
    f_grad = torch.autograd.grad(flat["score"].square().sum(), list(m.parameters()), allow_unused=True)
    for key in ("f_w2r", "f_o2w", "score"):
        torch.testing.assert_close(grid[key], flat[key].view(3, 4), atol=1e-10, rtol=1e-9)
    for a, b in zip(g_grad, f_grad):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)
    assert grid["score"].std() > 0
    with pytest.raises(ValueError, match="negative must be"):
        m.grid(R, O, T, lengths, negative=negative.T)


def test_in_batch_loss_by_hand_averages_the_hinge_over_the_batch_negatives():
    m = _model()
    cfg = m.cfg
    f_w2r = torch.tensor([[1.0, 0.9, 0.5], [0.2, 0.0, -1.0], [0.4, 0.3, 0.6]])
    f_o2w = torch.tensor([[0.5, 0.1, 0.6], [0.3, 0.3, 0.4], [0.0, 0.2, 0.1]])
    grid = {"f_w2r": f_w2r, "f_o2w": f_o2w, "score": f_w2r + cfg.lam * f_o2w}
    images = torch.tensor([7, 8, 7])  # captions 0 and 2 belong to the same image: not negatives of each other
    h = lambda pos, neg: max(0.0, cfg.margin - pos + neg)  # noqa: E731

    def by_hand(f, both):
        rows = [h(f[0, 0], f[0, 1]), (h(f[1, 1], f[1, 0]) + h(f[1, 1], f[1, 2])) / 2, h(f[2, 2], f[2, 1])]
        cols = [h(f[0, 0], f[1, 0]), (h(f[1, 1], f[0, 1]) + h(f[1, 1], f[2, 1])) / 2, h(f[2, 2], f[1, 2])]
        return sum(rows) + (sum(cols) if both else 0.0)

    reg = l2_penalty(m).item()
    for both in (False, True):
        out = BSSANLoss(cfg).in_batch(m, grid, images, both=both)
        l1, l2 = by_hand(f_w2r.numpy(), both), by_hand(f_o2w.numpy(), both)
        assert out["l1"].item() == pytest.approx(l1, abs=1e-6)  # Eq. 7
        assert out["l2"].item() == pytest.approx(l2, abs=1e-6)  # Eq. 17
        assert out["loss"].item() == pytest.approx(l1 + cfg.lam * l2 + cfg.delta * reg, rel=1e-5)
    # with one negative per row, the in-batch loss is Eq. 7/17 on those pairs
    two = {k: v[:2, :2] for k, v in grid.items()}
    pos = {k: v.diagonal() for k, v in two.items()}
    neg = {k: torch.stack([v[0, 1], v[1, 0]]) for k, v in two.items()}
    torch.testing.assert_close(BSSANLoss(cfg).in_batch(m, two, images[:2])["loss"], BSSANLoss(cfg)(m, pos, neg)["loss"])
    with pytest.raises(ValueError, match="one caption per image"):
        BSSANLoss(cfg).in_batch(m, grid, images[:2])
    # negative_attention: both: each positive's hinge averaged over the negatives of both grids
    other = {k: v.flip(1) * 0.7 for k, v in grid.items()}
    for both in (False, True):
        out = BSSANLoss(cfg).in_batch(m, [grid, other], images, both=both)
        l1 = (by_hand(f_w2r.numpy(), both) + by_hand(other["f_w2r"].numpy(), both)) / 2
        assert out["l1"].item() == pytest.approx(l1, abs=1e-6)


def test_attention_without_tanh_is_the_softmax_of_the_bilinear_form():
    m = _model(attention_tanh=False)
    R, O, T, lengths = _inputs(m.cfg)
    m.w2r.attention.W.data.mul_(5)  # logits beyond [-1, 1]: the tanh would bound them
    out = m(R, O, T, lengths)
    z = T @ (R @ m.w2r.attention.W.T).transpose(1, 2) + m.w2r.attention.b
    torch.testing.assert_close(out["alpha"], torch.softmax(z, dim=-1))
    assert out["alpha"].max() > torch.softmax(torch.tanh(z), dim=-1).max()


@pytest.mark.parametrize("rows, cols", [(50, 1280), (300, 512), (1280, 128)])
def test_bilinear_init_gives_unit_variance_logits_and_xavier_saturates_the_tanh(rows, cols):
    from mmsocial.models.bssan import W2RAttention

    torch.manual_seed(0)
    x, y = torch.randn(64, rows), torch.randn(64, cols)  # unit-variance inputs (standardised regions)
    stds = {}
    for init in ("bilinear", "xavier"):
        W = W2RAttention(rows, cols, init=init).W.detach()
        stds[init] = float((x @ W @ y.T).std())
    assert 0.85 < stds["bilinear"] < 1.15
    assert stds["xavier"] > 4  # most logits where tanh' < 0.07 (docs/bssan.md)
    assert (W2RAttention(rows, cols, init="zero").W == 0).all()  # uniform attention at the start
    with pytest.raises(ValueError, match="attention_init"):
        bssan_config("tiny", attention_init="glorot")


def test_cross_covariance_init_by_hand():
    m = _model(attention_init="cross_covariance")
    R, O, T, lengths = _inputs(m.cfg)
    m.init_attention_from_pairs([(R[:3], O[:3], T[:3], lengths[:3]), (R[3:], O[3:], T[3:], lengths[3:])])
    S = m.o2w.states(T, lengths).detach()
    forms = ((m.w2r.attention.W, lambda n: T[n, : lengths[n]], lambda n: R[n]),  # W2R: (word, region)
             (m.o2w.attention.W, lambda n: O[n], lambda n: S[n, : lengths[n]]))  # O2W: (object, word state)
    for W, xs, ys in forms:
        x = np.concatenate([np.repeat(xs(n).numpy(), len(ys(n)), 0) for n in range(5)]).astype(np.float64)
        y = np.concatenate([np.tile(ys(n).numpy(), (len(xs(n)), 1)) for n in range(5)]).astype(np.float64)
        C = (x - x.mean(0)).T @ (y - y.mean(0)) / len(x)  # every (x, y) of every matched pair
        first = slice(0, sum(len(xs(n)) * len(ys(n)) for n in range(3)))  # the first batch's logits
        z = ((x[first] @ C) * y[first]).sum(1)
        np.testing.assert_allclose(W.detach().numpy(), C / z.std(ddof=1), rtol=1e-4, atol=1e-6)


def test_cross_covariance_init_points_at_the_region_a_word_comes_with():
    """Word v names an object whose regions look like pattern p_v; before any training, the attention of
    word v in new images peaks on the region that holds p_v (uniform attention would hit 1 in 4)."""
    torch.manual_seed(0)
    m = bssan("tiny", "w2r", attention_init="cross_covariance", attention_tanh=False)
    g = torch.Generator().manual_seed(1)
    cfg = m.cfg
    words, patterns = torch.randn(3, cfg.word_dim, generator=g), 2 * torch.randn(3, cfg.region_dim, generator=g)
    filler = torch.randn(cfg.word_dim, generator=g)

    def images(n):
        v = torch.randint(0, 3, (n,), generator=g)
        where = torch.randint(0, cfg.num_regions, (n,), generator=g)
        R = torch.randn(n, cfg.num_regions, cfg.region_dim, generator=g)
        R[torch.arange(n), where] += patterns[v]
        T = torch.zeros(n, cfg.max_length, cfg.word_dim)
        T[:, 0], T[:, 1] = filler, words[v]  # "a <object>"
        return R, torch.zeros(n, cfg.num_objects, cfg.object_dim), T, torch.full((n,), 2), where

    *train, _ = images(200)
    with pytest.raises(RuntimeError, match="init_attention_from_pairs"):
        m.train()(*train)  # W still zero: training without the init is an error, not uniform attention
    m.init_attention_from_pairs([tuple(train)])
    *test, where = images(100)
    alpha = m.eval()(*test)["alpha"]
    assert (alpha[:, 1].argmax(1) == where).float().mean() > 0.9
    assert (alpha.sum(-1) - 1).abs().max() < 1e-5
