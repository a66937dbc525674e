"""Popularity-regression baselines of UHAN's Table 2 (uhan paper §4.1.3).

- ``HisAve``: a user's historical mean popularity (the training mean for an unseen user).
- ``SVRRegressor``: scikit-learn SVR on concatenated hand-made feature blocks, standardised; which
  blocks to concatenate is chosen on validation by ``select_feature_blocks``.
- ``DMF``: deep multi-modal fusion: pooled image feature and the final LSTM state -> MLP.
- ``DualAtt``: a one-layer dual attention network (Nam et al., CVPR 2017, r-DAN with K = 1) whose
  attention is also guided by the user embedding.

DMF and DualAtt take the same batch as UHAN: regions (B, M, C), word ids (B, T), lengths (B,), user
ids (B,); ``use_visual=False`` / ``use_text=False`` drop a modality (the text-only rows).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mmsocial.models.layers import MaskedLSTM, masked_softmax

log = logging.getLogger(__name__)


class HisAve:
    """Predict a post's popularity as the mean training popularity of its user (HisAve)."""

    def fit(self, users: Sequence, y: np.ndarray) -> "HisAve":
        y = np.asarray(y, dtype=np.float64)
        if len(users) != len(y) or len(y) == 0:
            raise ValueError(f"HisAve.fit needs as many users as targets (> 0), got {len(users)} and {len(y)}")
        if not np.isfinite(y).all():
            raise ValueError("HisAve.fit: the targets contain NaN or infinity")
        self.global_mean_ = float(y.mean())
        sums: dict = {}
        for u, v in zip(users, y):
            s = sums.setdefault(u, [0.0, 0])
            s[0] += v
            s[1] += 1
        self.user_mean_ = {u: s / c for u, (s, c) in sums.items()}
        return self

    def predict(self, users: Sequence) -> np.ndarray:
        if not hasattr(self, "user_mean_"):
            raise RuntimeError("HisAve is not fitted: call fit(users, y) first")
        return np.array([self.user_mean_.get(u, self.global_mean_) for u in users], dtype=np.float64)


class SVRRegressor:
    """Standardised feature blocks -> scikit-learn SVR (RBF kernel)."""

    def __init__(self, C: float = 1.0, epsilon: float = 0.1, gamma: str | float = "scale", max_train: int | None = None,
                 random_state: int = 0):
        if C <= 0 or epsilon < 0:
            raise ValueError(f"SVR needs C > 0 and epsilon >= 0, got C={C}, epsilon={epsilon}")
        self.C, self.epsilon, self.gamma, self.max_train, self.random_state = C, epsilon, gamma, max_train, random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> "SVRRegressor":
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVR

        X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if self.max_train is not None and len(X) > self.max_train:  # SVR is quadratic in the training size
            keep = np.random.default_rng(self.random_state).choice(len(X), self.max_train, replace=False)
            X, y = X[keep], y[keep]
        self.model_ = make_pipeline(StandardScaler(), SVR(C=self.C, epsilon=self.epsilon, gamma=self.gamma))
        self.model_.fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict(np.asarray(X, dtype=np.float64))


def select_feature_blocks(blocks: Mapping[str, Mapping[str, np.ndarray]], y: Mapping[str, np.ndarray],
                          fit_predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                          candidates: Sequence[Sequence[str]] | None = None) -> tuple[tuple[str, ...], dict]:
    """Try every non-empty combination of feature blocks (or ``candidates``); keep the best validation MSE.

    ``blocks[name][split]`` is an (N_split, D) array for split "train" and "val"; ``fit_predict(X_train,
    y_train, X_val)`` returns validation predictions. Returns the chosen block names and the validation
    MSE of every combination tried.
    """
    names = list(blocks)
    if not names:
        raise ValueError("select_feature_blocks needs at least one feature block")
    if candidates is None:
        candidates = [c for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]
    scores = {}
    for combo in candidates:
        Xtr = np.concatenate([blocks[b]["train"] for b in combo], 1)
        Xva = np.concatenate([blocks[b]["val"] for b in combo], 1)
        pred = fit_predict(Xtr, y["train"], Xva)
        scores["+".join(combo)] = float(np.mean((pred - y["val"]) ** 2))
        log.info("SVR features %s: validation MSE %.4f", "+".join(combo), scores["+".join(combo)])
    best = min(scores, key=scores.get)
    return tuple(best.split("+")), scores


@dataclass
class FusionConfig:
    """Sizes of DMF / DualAtt (they share UHAN's sizes in the experiments)."""

    num_words: int
    num_users: int
    num_regions: int
    region_dim: int
    word_dim: int = 512
    hidden_dim: int = 512
    user_dim: int = 512
    att_dim: int = 512
    fc_dim: int = 512
    max_length: int = 50
    use_visual: bool = True
    use_text: bool = True

    def __post_init__(self):
        if not (self.use_visual or self.use_text):
            raise ValueError("a popularity baseline needs at least one modality")


class DMF(nn.Module):
    """Deep multi-modal fusion: [pooled image ; last LSTM state] -> ReLU MLP -> ŷ (no user, no attention)."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        width = 0
        if cfg.use_visual:
            self.image = nn.Linear(cfg.region_dim, cfg.hidden_dim)
            width += cfg.hidden_dim
        if cfg.use_text:
            self.text = MaskedLSTM(cfg.num_words, cfg.word_dim, cfg.hidden_dim)
            width += cfg.hidden_dim
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(width, cfg.fc_dim), nn.ReLU(), nn.Linear(cfg.fc_dim, 1))

    def forward(self, regions: Tensor | None, words: Tensor | None, lengths: Tensor | None,
                users: Tensor | None = None) -> Tensor:
        parts = []
        if self.cfg.use_visual:
            parts.append(self.image(regions.float().mean(1)))
        if self.cfg.use_text:
            words, lengths = words[:, :self.cfg.max_length], lengths.clamp(max=self.cfg.max_length)
            H, _ = self.text(words, lengths)
            parts.append(MaskedLSTM.last_state(H, lengths))
        return self.head(torch.cat(parts, -1)).squeeze(-1)


class DualAtt(nn.Module):
    """One-layer dual attention (r-DAN, K = 1) guided by the user.

    Memory m⁰ = v̄ ∘ h̄ (mean region, mean word state). Visual and textual attention each score their
    items with W (tanh(W_x x_n) ∘ tanh(W_m m⁰) ∘ tanh(W_u ǔ)), softmax; v = tanh(P Σ α v_n),
    h = Σ α h_t; m¹ = m⁰ + v ∘ h; ŷ = MLP(m¹). With one modality the memory is its mean.
    """

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        d, a = cfg.hidden_dim, cfg.att_dim
        self.user = nn.Embedding(cfg.num_users, cfg.user_dim)
        if cfg.use_visual:
            self.region_proj = nn.Linear(cfg.region_dim, d)
            self.Wv, self.Wvm, self.Wvu = nn.Linear(d, a), nn.Linear(d, a), nn.Linear(cfg.user_dim, a)
            self.wv = nn.Linear(a, 1)
            self.P = nn.Linear(d, d)
        if cfg.use_text:
            self.text = MaskedLSTM(cfg.num_words, cfg.word_dim, d)
            self.Wt, self.Wtm, self.Wtu = nn.Linear(d, a), nn.Linear(d, a), nn.Linear(cfg.user_dim, a)
            self.wt = nn.Linear(a, 1)
        self.head = nn.Sequential(nn.Linear(d, cfg.fc_dim), nn.ReLU(), nn.Linear(cfg.fc_dim, 1))

    def attend(self, regions, words, lengths, users) -> dict[str, Tensor]:
        cfg, out = self.cfg, {}
        u = self.user(users.long())
        if cfg.use_visual:
            V = self.region_proj(regions.float())
            v_bar = V.mean(1)
        if cfg.use_text:
            words, lengths = words[:, :cfg.max_length], lengths.clamp(max=cfg.max_length)
            H, mask = self.text(words, lengths)
            h_bar = H.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        m0 = v_bar * h_bar if cfg.use_visual and cfg.use_text else (v_bar if cfg.use_visual else h_bar)
        m1 = m0
        if cfg.use_visual:
            r = self.wv(torch.tanh(self.Wv(V)) * torch.tanh(self.Wvm(m0))[:, None] * torch.tanh(self.Wvu(u))[:, None])
            out["alpha_V"] = torch.softmax(r.squeeze(-1), -1)
            v = torch.tanh(self.P(torch.einsum("bn,bnd->bd", out["alpha_V"], V)))
        if cfg.use_text:
            r = self.wt(torch.tanh(self.Wt(H)) * torch.tanh(self.Wtm(m0))[:, None] * torch.tanh(self.Wtu(u))[:, None])
            out["alpha_T"] = masked_softmax(r.squeeze(-1), mask)
            h = torch.einsum("bn,bnd->bd", out["alpha_T"], H)
        if cfg.use_visual and cfg.use_text:
            m1 = m0 + v * h
        else:
            m1 = m0 + (v if cfg.use_visual else h)
        out["y"] = self.head(m1).squeeze(-1)
        return out

    def forward(self, regions, words, lengths, users) -> Tensor:
        return self.attend(regions, words, lengths, users)["y"]
