import numpy as np
import pytest
import torch
from PIL import Image

from mmsocial.eval.protocols.uhan import UHAN_TABLE_ROWS, evaluate_popularity, popularity_scores, uhan_table
from mmsocial.features.handmade import color_histogram, mean_word_vectors, tfidf_features
from mmsocial.models.baselines.popularity import (DMF, DualAtt, FusionConfig, HisAve, SVRRegressor,
                                                  select_feature_blocks)


def test_hisave_is_the_users_training_mean():
    h = HisAve().fit(["a", "a", "b", None], np.array([1.0, 3.0, 5.0, 7.0]))
    np.testing.assert_allclose(h.predict(["a", "b", "new", None]), [2.0, 5.0, 4.0, 7.0])
    with pytest.raises(ValueError, match="NaN"):
        HisAve().fit(["a"], np.array([np.nan]))
    with pytest.raises(RuntimeError, match="not fitted"):
        HisAve().predict(["a"])


def test_feature_selection_keeps_the_informative_block():
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    good = np.c_[y + 0.05 * rng.normal(size=300), rng.normal(size=300)]
    noise = rng.normal(size=(300, 5))
    blocks = {"noise": {"train": noise[:200], "val": noise[200:]}, "good": {"train": good[:200], "val": good[200:]}}
    chosen, scores = select_feature_blocks(blocks, {"train": y[:200], "val": y[200:]},
                                           lambda a, b, c: SVRRegressor().fit(a, b).predict(c))
    assert chosen == ("good",) and set(scores) == {"noise", "good", "noise+good"}
    assert scores["good"] < 0.3 < 0.8 < scores["noise"]


def test_handmade_features():
    img = Image.new("RGB", (10, 10), (255, 0, 0))
    h = color_histogram(img, bins=4)
    assert h.shape == (64,) and h.sum() == pytest.approx(1.0) and h[3 * 16] == pytest.approx(1.0)  # all red
    v = mean_word_vectors([["a", "b", "zzz"], ["zzz"]], ["a", "b"], np.array([[1.0, 0.0], [3.0, 2.0]]))
    np.testing.assert_allclose(v, [[2.0, 1.0], [0.0, 0.0]])
    X = tfidf_features(["cat dog", "cat bird", "dog bird", "cat"], ["cat dog", "fish"], dims=2)
    assert X.shape == (2, 2) and np.allclose(X[1], 0)


def test_dmf_and_dualatt_shapes_modalities_and_padding():
    torch.manual_seed(0)
    cfg = dict(num_words=20, num_users=4, num_regions=4, region_dim=6, word_dim=8, hidden_dim=8, user_dim=8,
               att_dim=8, fc_dim=8, max_length=5)
    regions, words = torch.randn(3, 4, 6), torch.tensor([[2, 3, 0, 0, 0], [4, 5, 6, 7, 8], [9, 0, 0, 0, 0]])
    lengths, users = torch.tensor([2, 5, 1]), torch.tensor([0, 1, 3])
    for net in (DMF(FusionConfig(**cfg)), DualAtt(FusionConfig(**cfg)), DMF(FusionConfig(**cfg, use_visual=False))):
        assert net.eval()(regions, words, lengths, users).shape == (3,)
    out = DualAtt(FusionConfig(**cfg)).eval().attend(regions, words, lengths, users)
    assert torch.all(out["alpha_T"][0, 2:] == 0) and torch.allclose(out["alpha_T"].sum(1), torch.ones(3))
    text_only = DMF(FusionConfig(**cfg, use_visual=False)).eval()
    assert torch.equal(text_only(regions, words, lengths, users), text_only(None, words, lengths, users))
    with pytest.raises(ValueError, match="at least one modality"):
        FusionConfig(**cfg, use_visual=False, use_text=False)


def test_protocol_scores_and_tables():
    y, p = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 5.0])
    s = popularity_scores(y, p)
    assert s["MSE"] == pytest.approx((0.25 + 0 + 1 + 1) / 4) and s["MAE"] == pytest.approx(2.5 / 4)
    assert evaluate_popularity("UHAN (w/o V)", ["table2", "table3", "text"], y, p).keys() == {"table3", "text"}
    assert evaluate_popularity("DualAtt", ["table4"], y, p) == {}
    for name, rows in UHAN_TABLE_ROWS.items():
        assert rows[0] == "HisAve"  # the reference row of every table
        assert uhan_table(name).metrics == ["MSE", "MAE", "Spearman"]
