import numpy as np
import pandas as pd
import pytest
import torch

from mmsocial.data.corpus import Corpus, make_posts
from mmsocial.data.splits import uhan_split
from mmsocial.models.layers import MaskedLSTM, masked_softmax
from mmsocial.models.uhan import UHAN, VARIANTS, mse_loss, uhan, uhan_config


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add contention on a shared machine
    yield
    torch.set_num_threads(before)


def _batch(cfg, b=4, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(b, cfg.num_regions, cfg.region_dim, generator=g)
    lengths = torch.tensor(lengths if lengths is not None else [cfg.max_length, 3, 1, 5][:b])
    words = torch.randint(2, cfg.num_words, (b, cfg.max_length), generator=g)
    words[torch.arange(cfg.max_length)[None, :] >= lengths[:, None]] = 0
    users = torch.randint(0, cfg.num_users, (b,), generator=g)
    return regions, words, lengths, users


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_attentions_are_distributions_and_padding_gets_exactly_zero():
    torch.manual_seed(0)
    m = uhan("tiny").eval()
    regions, words, lengths, users = _batch(m.cfg)
    out = m.attend(regions, words, lengths, users)
    aT, aV, a = out["alpha_T"], out["alpha_V"], out["a"]
    assert aT.shape == (4, m.cfg.max_length) and aV.shape == (4, m.cfg.num_regions) and a.shape == (4, 2)
    pad = torch.arange(m.cfg.max_length)[None, :] >= lengths[:, None]
    assert pad.any()
    assert torch.all(aT[pad] == 0.0)  # exactly zero, not merely small
    assert torch.allclose(aT.sum(1), torch.ones(4), atol=1e-6)
    assert torch.allclose(aV.sum(1), torch.ones(4), atol=1e-6)
    assert torch.allclose(a.sum(1), torch.ones(4), atol=1e-6)


def test_padding_content_does_not_change_the_prediction():
    torch.manual_seed(0)
    m = uhan("tiny").eval()
    regions, words, lengths, users = _batch(m.cfg)
    words2 = words.clone()
    pad = torch.arange(m.cfg.max_length)[None, :] >= lengths[:, None]
    words2[pad] = 7  # garbage behind the lengths
    y1, y2 = m(regions, words, lengths, users), m(regions, words2, lengths, users)
    assert torch.allclose(y1, y2, atol=1e-6)


def test_empty_text_gives_finite_prediction_and_zero_word_weights():
    torch.manual_seed(0)
    m = uhan("tiny").eval()
    regions, words, lengths, users = _batch(m.cfg, lengths=[0, 3, 1, 5])
    out = m.attend(regions, words, lengths, users)
    assert torch.isfinite(out["y"]).all()
    assert torch.all(out["alpha_T"][0] == 0)


def test_masked_lstm_states_equal_unpadded_run():
    torch.manual_seed(0)
    enc = MaskedLSTM(20, 4, 5).eval()
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])
    H, mask = enc(ids, torch.tensor([3, 5]))
    alone, _ = enc.lstm(enc.embedding(ids[:1, :3]))
    assert torch.allclose(H[0, :3], alone[0], atol=1e-6)
    assert torch.all(H[0, 3:] == 0) and mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert torch.allclose(MaskedLSTM.last_state(H, torch.tensor([3, 5]))[0], alone[0, -1], atol=1e-6)


def test_masked_softmax_all_masked_row_is_zero():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.1, 9.0]])
    w = masked_softmax(s, torch.tensor([[True, True, False], [False, False, False]]))
    assert torch.allclose(w[0], torch.tensor([*torch.softmax(torch.tensor([1.0, 2.0]), 0), 0.0]))
    assert w[0, 2] == 0
    assert torch.all(w[1] == 0)


def test_intra_attention_score_equals_hand_computation_of_eq9():
    torch.manual_seed(0)
    m = uhan("tiny").eval()
    regions, words, lengths, users = _batch(m.cfg, b=2)
    out = m.attend(regions, words, lengths, users)
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in m.state_dict().items()}
    W_in, b_in = sd["region_proj.weight"], sd["region_proj.bias"]
    for i in range(2):
        V = regions[i].numpy().astype(np.float64) @ W_in.T + b_in  # regions mapped to the state size
        u = sd["W_U.weight"][int(users[i])]  # Eq. 7
        H, _ = m.text(words[i:i + 1], lengths[i:i + 1])
        h_bar = H[0, :int(lengths[i])].detach().numpy().astype(np.float64).mean(0)  # Eq. 8
        r = np.array([
            sd["att_V.W.weight"] @ (np.tanh(sd["att_V.W_x.weight"] @ v_m)
                                    * np.tanh(sd["att_V.W_g.0.weight"] @ u)
                                    * np.tanh(sd["att_V.W_g.1.weight"] @ h_bar))
            for v_m in V]).ravel()  # Eq. 9
        alpha = np.exp(r - r.max()) / np.exp(r - r.max()).sum()  # Eq. 10
        np.testing.assert_allclose(out["alpha_V"][i].detach().numpy(), alpha, atol=1e-5)
        with torch.no_grad():
            r_model = m.att_V.scores(torch.from_numpy(V).float()[None],
                                     [torch.from_numpy(u).float()[None], torch.from_numpy(h_bar).float()[None]])
        np.testing.assert_allclose(r_model[0].numpy(), r, atol=1e-5)


def test_inter_attention_and_output_follow_eq16_to_22():
    torch.manual_seed(0)
    m = uhan("tiny").eval()
    regions, words, lengths, users = _batch(m.cfg, b=3)
    captured = {}
    m.att_V.register_forward_hook(lambda mod, i, o: captured.__setitem__("v", o[0]))
    m.att_T.register_forward_hook(lambda mod, i, o: captured.__setitem__("h", o[0]))
    with torch.no_grad():
        out = m.attend(regions, words, lengths, users)
        v, h, u = captured["v"], captured["h"], m.W_U(users)
        ia = m.att_inter
        uv = ia.W_UVT(torch.tanh(ia.W_V(v)) * torch.tanh(ia.W_U(u)))  # Eq. 16
        ut = ia.W_UVT(torch.tanh(ia.W_T(h)) * torch.tanh(ia.W_U(u)))  # Eq. 17
        a1 = torch.exp(uv) / (torch.exp(uv) + torch.exp(ut))  # Eq. 18
        s = a1 * v + (1 - a1) * h + m.W_U3(u)  # Eq. 20, 21
        y = m.W_F2(torch.relu(m.W_F1(s))).squeeze(-1)  # Eq. 22
    assert torch.allclose(out["a"][:, 0], a1[:, 0], atol=1e-6)
    assert torch.allclose(out["y"], y, atol=1e-6)


def _component_sizes(cfg):
    d, att, du = cfg.hidden_dim, cfg.att_dim, cfg.user_dim
    return {
        "user_embedding": cfg.num_users * du,
        "shortcut": du * d,  # W_U^3
        "intra_V": d * att + du * att + d * att + att,  # W_Vv, W_Vu, W_Vt, W_V
        "intra_T": d * att + du * att + d * att + att,  # W_Tt, W_Tu, W_Tv, W_T
        "inter": 2 * d * att + du * att + att,  # W_V^2, W_T^2, W_U^2, W_UVT^2
        "region_proj": cfg.region_dim * d + d,
        "text": cfg.num_words * cfg.word_dim + 4 * d * (cfg.word_dim + d) + 8 * d,
    }


def test_each_ablation_removes_exactly_its_component():
    full_cfg = uhan_config("tiny")
    c = _component_sizes(full_cfg)
    att = full_cfg.att_dim
    expected_removed = {
        "wo_sc": c["shortcut"],
        "wo_u": c["user_embedding"] + c["shortcut"] + 3 * full_cfg.user_dim * att,  # W_Vu, W_Tu, W_U^2
        "wo_intra": c["intra_V"] + c["intra_T"],
        "wo_inter": c["inter"],
        "wo_intra_inter": c["intra_V"] + c["intra_T"] + c["inter"],
        # no image: its projection, its attention, the text's v̄ guide W_Tv and the inter-attention
        "wo_V": c["region_proj"] + c["intra_V"] + full_cfg.hidden_dim * att + c["inter"],
        "wo_T": c["text"] + c["intra_T"] + full_cfg.hidden_dim * att + c["inter"],
    }
    assert set(expected_removed) | {"uhan"} == set(VARIANTS)
    n_full = _n_params(uhan("tiny"))
    for variant, removed in expected_removed.items():
        assert n_full - _n_params(uhan("tiny", variant)) == removed, variant


def _variant_with_full_weights(full: UHAN, variant: str) -> UHAN:
    m = uhan("tiny", variant).eval()
    own = m.state_dict()
    missing = m.load_state_dict({k: v for k, v in full.state_dict().items() if k in own}, strict=False)
    assert not missing.missing_keys  # every parameter of the ablation exists in the full model
    return m


def test_each_ablation_changes_the_forward_pass_as_expected():
    torch.manual_seed(0)
    full = uhan("tiny").eval()
    regions, words, lengths, users = _batch(full.cfg)
    g = torch.Generator().manual_seed(9)
    other_regions = torch.randn(regions.shape, generator=g)
    other_words = torch.where(words > 0, torch.randint(2, full.cfg.num_words, words.shape, generator=g), words)
    other_users = (users + 1) % full.cfg.num_users
    with torch.no_grad():
        y_full = full(regions, words, lengths, users)
        # w/o sc = the full model with W_U^3 = 0
        no_sc = _variant_with_full_weights(full, "wo_sc")
        full_zero_sc = uhan("tiny").eval()
        full_zero_sc.load_state_dict(full.state_dict())
        full_zero_sc.W_U3.weight.zero_()
        assert torch.allclose(no_sc(regions, words, lengths, users),
                              full_zero_sc(regions, words, lengths, users), atol=1e-6)
        assert not torch.allclose(no_sc(regions, words, lengths, users), y_full)
        # w/o inter: a_1 = a_2 = 1/2
        no_inter = _variant_with_full_weights(full, "wo_inter")
        out = no_inter.attend(regions, words, lengths, users)
        assert torch.all(out["a"] == 0.5)
        assert torch.allclose(out["alpha_V"], full.attend(regions, words, lengths, users)["alpha_V"])
        # w/o intra: no attention inside a modality
        out = _variant_with_full_weights(full, "wo_intra").attend(regions, words, lengths, users)
        assert "alpha_V" not in out and "alpha_T" not in out and "a" in out
        out = _variant_with_full_weights(full, "wo_intra_inter").attend(regions, words, lengths, users)
        assert "alpha_V" not in out and "alpha_T" not in out and torch.all(out["a"] == 0.5)
        # w/o u, w/o V, w/o T: the prediction ignores the removed input (the full model does not)
        for variant, args_other in (("wo_u", (regions, words, lengths, other_users)),
                                    ("wo_V", (other_regions, words, lengths, users)),
                                    ("wo_T", (regions, other_words, lengths, users))):
            m = _variant_with_full_weights(full, variant)
            assert torch.allclose(m(regions, words, lengths, users), m(*args_other), atol=1e-6), variant
            assert not torch.allclose(full(*args_other), y_full, atol=1e-6), variant
        assert _variant_with_full_weights(full, "wo_V")(None, words, lengths, users).shape == (4,)
        assert _variant_with_full_weights(full, "wo_T")(regions, None, None, users).shape == (4,)
        assert _variant_with_full_weights(full, "wo_u")(regions, words, lengths, None).shape == (4,)


def test_mse_loss_and_training_step_reduce_error():
    torch.manual_seed(0)
    m = uhan("tiny")
    regions, words, lengths, users = _batch(m.cfg)
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.isclose(mse_loss(torch.zeros(4), y), torch.tensor(7.5))
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    first = None
    for _ in range(40):
        loss = mse_loss(m(regions, words, lengths, users), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_bad_inputs_and_settings_are_clear_errors():
    m = uhan("tiny")
    regions, words, lengths, users = _batch(m.cfg)
    with pytest.raises(ValueError, match="region grids"):
        m(regions[:, :2], words, lengths, users)
    with pytest.raises(ValueError, match="user ids must lie"):
        m(regions, words, lengths, users + 100)
    with pytest.raises(ValueError, match="unknown UHAN variant"):
        uhan("tiny", "wo_x")
    with pytest.raises(ValueError, match="unknown UHAN preset"):
        uhan("huge")
    with pytest.raises(ValueError, match="unknown UHAN config field"):
        uhan("tiny", hidden=3)
    with pytest.raises(ValueError, match="at least one modality"):
        uhan("tiny", use_visual=False, use_text=False)


def test_paper_preset_has_paper_sizes():
    cfg = uhan_config("paper")
    assert (cfg.num_regions, cfg.region_dim, cfg.word_dim, cfg.hidden_dim, cfg.user_dim, cfg.max_length) == \
        (196, 512, 512, 512, 512, 50)
    assert (cfg.batch_size, cfg.eval_every, cfg.patience) == (128, 64, 20)
    assert uhan_config("default") == cfg


def test_chronological_split_never_trains_on_a_later_post_than_a_test_post():
    rng = np.random.default_rng(0)
    ts = rng.permutation(np.repeat(np.arange(60), 2)).astype(float) * 3600.0  # ties included
    posts = make_posts([{"post_id": f"p{i}", "user_id": f"u{i % 3}", "text": "x", "timestamp": t,
                         "views": 1.0, "days": 1.0} for i, t in enumerate(ts)])
    corpus = Corpus(posts, pd.DataFrame({"user_id": ["u0", "u1", "u2"], "name": ["a", "b", "c"]}),
                    pd.DataFrame({"src": [], "dst": [], "kind": []}), {"name": "t"})
    for seed in range(3):
        split = uhan_split(corpus, seed)
        assert (split == "train").sum() == 84 and (split == "val").sum() == 12 and (split == "test").sum() == 24
        assert ts[split == "train"].max() <= ts[split == "test"].min()
        assert ts[split == "train"].max() <= ts[split == "val"].min()
