import numpy as np
import pytest
import torch
from sklearn.cross_decomposition import CCA as SklearnCCA

from mmsocial.models.baselines import CCA, DCCA, KCCA, cca_correlation


def _two_views(rng, n=600, shared=2):
    z = rng.normal(size=(n, shared))
    X = np.hstack([z, rng.normal(size=(n, 6))]) @ rng.normal(size=(shared + 6, 8)) + 0.3 * rng.normal(size=(n, 8))
    Y = np.hstack([z, rng.normal(size=(n, 3))]) @ rng.normal(size=(shared + 3, 5)) + 0.3 * rng.normal(size=(n, 5))
    return X, Y


def _corr(a, b):
    return np.corrcoef(a, b)[0, 1]


def test_cca_matches_scikit_learn(rng):
    X, Y = _two_views(rng)
    ours = CCA(2, reg=0.0).fit(X, Y)
    ox, oy = ours.transform_x(X), ours.transform_y(Y)
    sk = SklearnCCA(2, max_iter=5000, tol=1e-10).fit(X, Y)
    sx, sy = sk.transform(X, Y)
    for i in range(2):
        assert ours.correlations_[i] == pytest.approx(_corr(sx[:, i], sy[:, i]), abs=1e-6)
        assert _corr(ox[:, i], oy[:, i]) == pytest.approx(ours.correlations_[i], abs=1e-8)
        assert abs(_corr(ox[:, i], sx[:, i])) == pytest.approx(1.0, abs=1e-6)  # same direction up to sign
        assert abs(_corr(oy[:, i], sy[:, i])) == pytest.approx(1.0, abs=1e-6)


def test_cca_projections_are_uncorrelated_and_unit_variance(rng):
    X, Y = _two_views(rng)
    ox, _ = CCA(3, reg=0.0).fit_transform(X, Y)
    assert np.allclose(np.cov(ox.T), np.eye(3), atol=1e-8)


def test_cca_errors(rng):
    X, Y = _two_views(rng, n=20)
    with pytest.raises(ValueError, match="one row per item"):
        CCA(2).fit(X, Y[:10])
    with pytest.raises(ValueError, match="exceeds the smaller view"):
        CCA(9).fit(X, Y)
    with pytest.raises(RuntimeError, match="not fitted"):
        CCA(2).transform_x(X)
    with pytest.raises(ValueError, match="features"):
        CCA(2).fit(X, Y).transform_x(X[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        CCA(2).fit(np.full_like(X, np.nan), Y)


def test_kcca_finds_a_nonlinear_relation_that_cca_misses(rng):
    n = 800
    t = rng.uniform(-2, 2, size=(n, 1))
    X = np.hstack([t, rng.normal(size=(n, 2))])
    Y = np.hstack([t ** 2 + 0.05 * rng.normal(size=(n, 1)), rng.normal(size=(n, 2))])  # y = x^2: corr 0
    Xte, Yte = X[600:], Y[600:]
    lin = CCA(1, reg=1e-3).fit(X[:600], Y[:600])
    ker = KCCA(1, reg=1e-2, n_features=200, random_state=0).fit(X[:600], Y[:600])
    c_lin = abs(_corr(lin.transform_x(Xte)[:, 0], lin.transform_y(Yte)[:, 0]))
    c_ker = abs(_corr(ker.transform_x(Xte)[:, 0], ker.transform_y(Yte)[:, 0]))
    assert c_lin < 0.3 and c_ker > 0.8
    rff = KCCA(1, reg=1e-2, n_features=300, approximation="rff").fit(X[:600], Y[:600])
    assert abs(_corr(rff.transform_x(Xte)[:, 0], rff.transform_y(Yte)[:, 0])) > 0.7


def test_cca_correlation_objective_matches_closed_form(rng):
    X, Y = _two_views(rng, n=400)
    total = cca_correlation(torch.as_tensor(X), torch.as_tensor(Y), reg=0.0).item()
    full = CCA(5, reg=0.0).fit(X, Y).correlations_.sum()
    assert total == pytest.approx(full, rel=1e-6)


def test_dcca_learns_correlated_projections(rng):
    X, Y = _two_views(rng, n=600)
    d = DCCA(2, hidden=(32,), epochs=25, batch_size=300, lr=1e-2, random_state=0).fit(X[:500], Y[:500])
    assert d.loss_history_[-1] < d.loss_history_[0]
    px, py = d.transform_x(X[500:]), d.transform_y(Y[500:])
    assert px.shape == (100, 2) and d.transform(X[500:], Y[500:]).shape == (100, 4)
    assert abs(_corr(px[:, 0], py[:, 0])) > 0.7
