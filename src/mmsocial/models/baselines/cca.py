"""Two-view correlation baselines in scikit-learn style: CCA, KCCA, DCCA.

All three share ``fit(X, Y)``, ``transform_x(X)``, ``transform_y(Y)``, ``transform(X, Y)`` and
``correlations_`` (canonical correlations on the training data, largest first).

- CCA: regularised closed form (Hardoon et al. 2004): whiten each view with C^{-1/2}, SVD of
  Cxx^{-1/2} Cxy Cyy^{-1/2}. Exact, one eigendecomposition per view.
- KCCA: CCA on an approximate RBF feature map of each view (Nyström or random Fourier features), so
  it scales linearly in the number of items instead of the O(n^3) kernel eigenproblem.
- DCCA (Andrew et al. 2013): two MLPs trained to maximise the total canonical correlation of their
  outputs, then a linear CCA on the outputs.

How a baseline embeds a post (used by the DMAN protocols, see docs/dman.md): Table 2 uses the image
view's projection ``transform_x(X)`` by default (like DMAN, whose embedding sees the image only;
``baseline_embedding: both`` in the DMAN config concatenates both projected views, ``transform(X, Y)``);
Table 3 projects the one-hot tag query with ``transform_y`` and ranks the images' ``transform_x`` by
Euclidean distance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.kernel_approximation import Nystroem, RBFSampler
from torch import nn
from tqdm.auto import tqdm

from mmsocial.arrays import finite_2d
from mmsocial.models.layers import mlp


def _as_2d(a, name: str) -> np.ndarray:
    return finite_2d(a, name, np.float64, min_rows=1)


def _check_pair(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X, Y = _as_2d(X, "X"), _as_2d(Y, "Y")
    if len(X) != len(Y):
        raise ValueError(f"X and Y must have one row per item each, got {len(X)} and {len(Y)} rows")
    if len(X) < 3:
        raise ValueError(f"CCA needs at least 3 items, got {len(X)}")
    return X, Y


def _inv_sqrt(C: np.ndarray, reg: float) -> np.ndarray:
    """(C + r I)^{-1/2} with r = reg * mean eigenvalue (scale-free regularisation)."""
    d = C.shape[0]
    r = reg * max(np.trace(C) / d, 1e-12) + 1e-12
    e, V = np.linalg.eigh(C + r * np.eye(d))
    return (V / np.sqrt(np.clip(e, 1e-12, None))) @ V.T


class CCA:
    """Regularised linear CCA in closed form.

    reg: ridge added to each covariance, relative to its mean eigenvalue (0 = plain CCA).
    """

    def __init__(self, n_components: int = 10, reg: float = 1e-3):
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        self.n_components, self.reg = n_components, reg

    def fit(self, X, Y) -> "CCA":
        X, Y = _check_pair(X, Y)
        k = min(self.n_components, X.shape[1], Y.shape[1])
        if k < self.n_components:
            raise ValueError(f"n_components={self.n_components} exceeds the smaller view's dimension "
                             f"{min(X.shape[1], Y.shape[1])}; lower it")
        self.mean_x_, self.mean_y_ = X.mean(0), Y.mean(0)
        Xc, Yc = X - self.mean_x_, Y - self.mean_y_
        n = len(X) - 1
        Wx = _inv_sqrt(Xc.T @ Xc / n, self.reg)
        Wy = _inv_sqrt(Yc.T @ Yc / n, self.reg)
        T = Wx @ (Xc.T @ Yc / n) @ Wy
        U, s, Vt = np.linalg.svd(T, full_matrices=False)
        self.x_weights_ = Wx @ U[:, :k]
        self.y_weights_ = Wy @ Vt[:k].T
        self.correlations_ = s[:k]
        return self

    def _check_fitted(self):
        if not hasattr(self, "x_weights_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(X, Y) first")

    def transform_x(self, X) -> np.ndarray:
        return self._project(X, "x")

    def transform_y(self, Y) -> np.ndarray:
        return self._project(Y, "y")

    def _project(self, V, view: str) -> np.ndarray:
        self._check_fitted()
        V = _as_2d(V, view.upper())
        mean, weights = getattr(self, f"mean_{view}_"), getattr(self, f"{view}_weights_")
        if V.shape[1] != len(mean):
            raise ValueError(f"{view.upper()} has {V.shape[1]} features, the model was fitted on {len(mean)}")
        return (V - mean) @ weights

    def transform(self, X, Y) -> np.ndarray:
        """Post embedding from both views: [transform_x(X), transform_y(Y)]."""
        return np.hstack([self.transform_x(X), self.transform_y(Y)])

    def fit_transform(self, X, Y) -> tuple[np.ndarray, np.ndarray]:
        self.fit(X, Y)
        return self.transform_x(X), self.transform_y(Y)


def _gamma(X: np.ndarray, gamma) -> float:
    if gamma is None or gamma == "scale":  # scikit-learn's SVC convention
        v = X.var()
        return 1.0 / (X.shape[1] * v) if v > 0 else 1.0
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return float(gamma)


class KCCA(CCA):
    """Regularised RBF-kernel CCA through an explicit approximate feature map of each view.

    approximation: "nystroem" (landmark points, the default) or "rff" (random Fourier features).
    n_features: size of each approximate map; cost is O(n * n_features^2).
    """

    def __init__(self, n_components: int = 10, reg: float = 1e-1, gamma_x=None, gamma_y=None,
                 n_features: int = 1000, approximation: str = "nystroem", random_state: int = 0):
        super().__init__(n_components, reg)
        if approximation not in ("nystroem", "rff"):
            raise ValueError(f"approximation must be 'nystroem' or 'rff', got {approximation!r}")
        if n_features < n_components:
            raise ValueError(f"n_features ({n_features}) must be >= n_components ({n_components})")
        self.gamma_x, self.gamma_y = gamma_x, gamma_y
        self.n_features, self.approximation, self.random_state = n_features, approximation, random_state

    def _map(self, A: np.ndarray, gamma: float, seed: int):
        m = min(self.n_features, len(A)) if self.approximation == "nystroem" else self.n_features
        cls = Nystroem if self.approximation == "nystroem" else RBFSampler
        return cls(gamma=gamma, n_components=m, random_state=seed).fit(A)

    def fit(self, X, Y) -> "KCCA":
        X, Y = _check_pair(X, Y)
        self.map_x_ = self._map(X, _gamma(X, self.gamma_x), self.random_state)
        self.map_y_ = self._map(Y, _gamma(Y, self.gamma_y), self.random_state + 1)
        super().fit(self.map_x_.transform(X), self.map_y_.transform(Y))
        return self

    def _project(self, V, view: str) -> np.ndarray:
        self._check_fitted()
        kernel_map = getattr(self, f"map_{view}_")
        return super()._project(kernel_map.transform(_as_2d(V, view.upper())), view)


def _safe_std(A: np.ndarray) -> np.ndarray:
    s = A.std(0)
    return np.where(s > 1e-8, s, 1.0)  # constant columns (e.g. unused tags) are left unscaled


def cca_correlation(h1: torch.Tensor, h2: torch.Tensor, reg: float = 1e-3, k: int | None = None) -> torch.Tensor:
    """Total canonical correlation of two batches of outputs (Andrew et al. 2013, Eq. 10):
    the sum of the top-k singular values of T = Σ11^{-1/2} Σ12 Σ22^{-1/2} (all when k is None)."""
    m = h1.shape[0]
    h1, h2 = h1 - h1.mean(0), h2 - h2.mean(0)
    s11 = h1.T @ h1 / (m - 1) + reg * torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)
    s22 = h2.T @ h2 / (m - 1) + reg * torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s12 = h1.T @ h2 / (m - 1)

    def inv_sqrt(s):
        e, v = torch.linalg.eigh(s)
        return (v / e.clamp_min(1e-9).sqrt()) @ v.T

    t = inv_sqrt(s11) @ s12 @ inv_sqrt(s22)
    sv = torch.linalg.svdvals(t)
    return sv.sum() if k is None else sv[:k].sum()


class DCCA:
    """Deep CCA: MLP f on X, MLP g on Y, trained to maximise corr(f(X), g(Y)); then linear CCA on top.

    hidden: hidden layer sizes of both networks; out_dim: output size of each (>= n_components).
    Inputs are standardised with the training mean/std. Full-rank correlation when
    out_dim == n_components (Andrew et al.); otherwise the top n_components are maximised.
    """

    def __init__(self, n_components: int = 10, hidden: tuple[int, ...] = (512, 256), out_dim: int | None = None,
                 reg: float = 1e-3, lr: float = 1e-3, weight_decay: float = 1e-5, epochs: int = 50,
                 batch_size: int = 800, random_state: int = 0, device: str = "cpu", progress: bool = False):
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        out_dim = out_dim or n_components
        if out_dim < n_components:
            raise ValueError(f"out_dim ({out_dim}) must be >= n_components ({n_components})")
        if batch_size <= out_dim:
            raise ValueError(f"batch_size ({batch_size}) must exceed out_dim ({out_dim}) to estimate covariances")
        self.n_components, self.hidden, self.out_dim = n_components, tuple(hidden), out_dim
        self.reg, self.lr, self.weight_decay, self.epochs = reg, lr, weight_decay, epochs
        self.batch_size, self.random_state, self.device, self.progress = batch_size, random_state, device, progress

    def fit(self, X, Y, X_val=None, Y_val=None) -> "DCCA":
        """Train f and g on (X, Y). With a validation pair, the epoch with the lowest validation loss
        (minus the total canonical correlation of f(X_val), g(Y_val)) is kept (``best_epoch_``);
        ``history_`` holds one record per epoch (``epoch``, ``train_loss``, ``val_loss``)."""
        X, Y = _check_pair(X, Y)
        has_val = X_val is not None and Y_val is not None
        if has_val:
            X_val, Y_val = _check_pair(X_val, Y_val)
            if len(X_val) <= self.out_dim:
                raise ValueError(f"DCCA validation needs more items ({len(X_val)}) than out_dim ({self.out_dim})")
        torch.manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        self.scale_x_ = (X.mean(0), _safe_std(X))
        self.scale_y_ = (Y.mean(0), _safe_std(Y))
        x = torch.as_tensor((X - self.scale_x_[0]) / self.scale_x_[1], dtype=torch.float32, device=self.device)
        y = torch.as_tensor((Y - self.scale_y_[0]) / self.scale_y_[1], dtype=torch.float32, device=self.device)
        self.f_ = mlp((X.shape[1], *self.hidden, self.out_dim), activation=nn.Sigmoid).to(self.device)
        self.g_ = mlp((Y.shape[1], *self.hidden, self.out_dim), activation=nn.Sigmoid).to(self.device)
        opt = torch.optim.Adam([*self.f_.parameters(), *self.g_.parameters()], lr=self.lr,
                               weight_decay=self.weight_decay)
        bs = min(self.batch_size, len(X))
        if bs <= self.out_dim:
            raise ValueError(f"DCCA needs more training items ({len(X)}) than out_dim ({self.out_dim})")
        k = None if self.out_dim == self.n_components else self.n_components
        self.loss_history_, self.history_, self.best_epoch_ = [], [], None
        if has_val:
            xv = torch.as_tensor((X_val - self.scale_x_[0]) / self.scale_x_[1], dtype=torch.float32, device=self.device)
            yv = torch.as_tensor((Y_val - self.scale_y_[0]) / self.scale_y_[1], dtype=torch.float32, device=self.device)
        best, best_state = math.inf, None
        for epoch in tqdm(range(self.epochs), desc="DCCA", disable=not self.progress):
            order = rng.permutation(len(X))
            total, batches = 0.0, 0
            for start in range(0, len(X) - bs + 1, bs):
                idx = torch.as_tensor(order[start:start + bs], device=self.device)
                loss = -cca_correlation(self.f_(x[idx]), self.g_(y[idx]), self.reg, k)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, batches = total + loss.item(), batches + 1
            self.loss_history_.append(total / batches)
            record = {"epoch": float(epoch + 1), "train_loss": total / batches}
            if has_val:
                with torch.no_grad():
                    record["val_loss"] = float(-cca_correlation(self.f_(xv), self.g_(yv), self.reg, k))
                if math.isfinite(record["val_loss"]) and record["val_loss"] < best:
                    best, self.best_epoch_ = record["val_loss"], epoch + 1
                    best_state = ({n: t.clone() for n, t in self.f_.state_dict().items()},
                                  {n: t.clone() for n, t in self.g_.state_dict().items()})
            self.history_.append(record)
        if best_state is not None:
            self.f_.load_state_dict(best_state[0])
            self.g_.load_state_dict(best_state[1])
        self.f_.eval(), self.g_.eval()
        self.cca_ = CCA(self.n_components, reg=self.reg).fit(self._fx(X), self._gy(Y))
        self.correlations_ = self.cca_.correlations_
        return self

    @torch.no_grad()
    def _fx(self, X: np.ndarray) -> np.ndarray:
        if X.shape[1] != len(self.scale_x_[0]):
            raise ValueError(f"X has {X.shape[1]} features, the model was fitted on {len(self.scale_x_[0])}")
        x = torch.as_tensor((X - self.scale_x_[0]) / self.scale_x_[1], dtype=torch.float32, device=self.device)
        return self.f_(x).double().cpu().numpy()

    @torch.no_grad()
    def _gy(self, Y: np.ndarray) -> np.ndarray:
        if Y.shape[1] != len(self.scale_y_[0]):
            raise ValueError(f"Y has {Y.shape[1]} features, the model was fitted on {len(self.scale_y_[0])}")
        y = torch.as_tensor((Y - self.scale_y_[0]) / self.scale_y_[1], dtype=torch.float32, device=self.device)
        return self.g_(y).double().cpu().numpy()

    def _check_fitted(self):
        if not hasattr(self, "cca_"):
            raise RuntimeError("DCCA is not fitted; call fit(X, Y) first")

    def transform_x(self, X) -> np.ndarray:
        self._check_fitted()
        return self.cca_.transform_x(self._fx(_as_2d(X, "X")))

    def transform_y(self, Y) -> np.ndarray:
        self._check_fitted()
        return self.cca_.transform_y(self._gy(_as_2d(Y, "Y")))

    def transform(self, X, Y) -> np.ndarray:
        return np.hstack([self.transform_x(X), self.transform_y(Y)])

    def fit_transform(self, X, Y) -> tuple[np.ndarray, np.ndarray]:
        self.fit(X, Y)
        return self.transform_x(X), self.transform_y(Y)


class MultiViewCCA:
    """Multi-view CCA (Gong et al. 2014, IJCV), e.g. the three-view CCA of image, text and label views.

    Solves S w = λ D w, where S is the covariance of all views stacked side by side and D its
    block diagonal (each Σ_ii + ridge); view i's embedding is (x − μ_i) W_i diag(λ)^power
    (Gong et al. scale the projections by the eigenvalues to the power 4). Retrieval between two
    views compares their embeddings (Gong et al.: normalised correlation).
    """

    def __init__(self, n_components: int = 10, reg: float = 1e-3, power: float = 4.0):
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        self.n_components, self.reg, self.power = n_components, reg, power

    def fit(self, *views) -> "MultiViewCCA":
        if len(views) < 2:
            raise ValueError(f"multi-view CCA needs at least 2 views, got {len(views)}")
        views = [_as_2d(v, f"view {i}") for i, v in enumerate(views)]
        n = len(views[0])
        if any(len(v) != n for v in views):
            raise ValueError(f"every view needs one row per item; got {[len(v) for v in views]} rows")
        if n < 3:
            raise ValueError(f"multi-view CCA needs at least 3 items, got {n}")
        total = sum(v.shape[1] for v in views)
        if self.n_components > total:
            raise ValueError(f"n_components={self.n_components} exceeds the views' total dimension {total}")
        self.means_ = [v.mean(0) for v in views]
        Z = np.hstack([v - m for v, m in zip(views, self.means_)])
        S = Z.T @ Z / (n - 1)
        bounds = np.cumsum([0] + [v.shape[1] for v in views])
        whiten = np.zeros_like(S)  # D^{-1/2}, block diagonal
        for a, b in zip(bounds[:-1], bounds[1:]):
            whiten[a:b, a:b] = _inv_sqrt(S[a:b, a:b], self.reg)
        e, V = np.linalg.eigh(whiten @ S @ whiten)
        top = np.argsort(-e)[:self.n_components]
        W = whiten @ V[:, top]
        self.eigenvalues_ = e[top]
        scale = np.clip(self.eigenvalues_, 0, None) ** self.power
        self.weights_ = [W[a:b] * scale for a, b in zip(bounds[:-1], bounds[1:])]
        return self

    def transform(self, view: int, X) -> np.ndarray:
        """Embedding of the items X given in view number ``view`` (0-based, the order of fit)."""
        if not hasattr(self, "weights_"):
            raise RuntimeError("MultiViewCCA is not fitted; call fit(view0, view1, ...) first")
        if not 0 <= view < len(self.weights_):
            raise ValueError(f"view must be 0..{len(self.weights_) - 1}, got {view}")
        X = _as_2d(X, f"view {view}")
        if X.shape[1] != len(self.means_[view]):
            raise ValueError(f"view {view} has {X.shape[1]} features, the model was fitted on "
                             f"{len(self.means_[view])}")
        return (X - self.means_[view]) @ self.weights_[view]
