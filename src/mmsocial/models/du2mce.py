"""DU2MCE: Deep Unified User and Multimodal Content Embedding (Sikka, Van Bramer, Divakaran).

Equation numbers refer to the paper (papers/du2mce-unified-user-content-embedding.md). The image CNN
φ_I is run once and cached: the model takes the pooled feature φ_I(I_j) as input (§4.3: the CNN is
not fine-tuned). Post j = (I_j, T_j, U_j); any of the three may be missing (∅_I, ∅_T).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

VARIANTS = ("du2mce", "merged")
PAIRS = ("T-U", "I-T", "I-U")  # λ1, λ2, λ3


@dataclass
class DU2MCEConfig:
    """Paper defaults (§3.1, §4.3). ``variant``: "du2mce" (Eq. 1, the mixture of pair losses) or
    "merged" (§4.6 Merged-Modality: x^I + x^T sum-pooled, one content→user ranking loss)."""

    variant: str = "du2mce"
    image_dim: int = 2048  # D_I, ResNet-152 pool (MobileNetV2 offline: 1280)
    vocab_size: int = 2  # words incl. <pad>=0, <unk>=1; set from the corpus vocabulary
    word_dim: int = 300  # word2vec size
    max_length: int = 20  # tokens per text
    kernel_widths: tuple[int, ...] = (2, 3, 4)  # Kim CNN parallel blocks
    filters: tuple[int, ...] = (512, 256, 256)  # D_T = sum = 1024
    train_word_vectors: bool = False  # word2vec "learned separately" (§4.3): kept fixed by default
    num_users: int = 1  # K
    user_dim: int = 300  # D_u
    embed_dim: int = 1024  # D
    margin: float = 0.2  # m, Eq. 4
    lambdas: tuple[float, float, float] = (0.1, 0.45, 0.45)  # λ1 (T-U), λ2 (I-T), λ3 (I-U); Table 2 best
    lr: float = 5e-4  # Adam
    lr_step: int = 10  # epochs between ×0.1 drops
    lr_gamma: float = 0.1
    batch_size: int = 1000  # posts
    epochs: int = 30  # not given in the paper (docs/du2mce.md)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown DU2MCE variant {self.variant!r}; choose one of {VARIANTS}")
        self.kernel_widths, self.filters = tuple(int(k) for k in self.kernel_widths), tuple(int(f) for f in self.filters)
        self.lambdas = tuple(float(x) for x in self.lambdas)
        if len(self.kernel_widths) != len(self.filters) or not self.kernel_widths:
            raise ValueError(f"kernel_widths {self.kernel_widths} and filters {self.filters} must be "
                             f"non-empty and of the same length (one filter count per width)")
        if len(self.lambdas) != 3 or any(x < 0 for x in self.lambdas) or sum(self.lambdas) <= 0:
            raise ValueError(f"lambdas must be three weights (λ1 T-U, λ2 I-T, λ3 I-U) >= 0 with a positive "
                             f"sum, got {self.lambdas}")
        if any(x > 1 for x in self.lambdas):
            raise ValueError(f"Eq. 2 bounds each λ by 1; got {self.lambdas}")
        for name in ("image_dim", "vocab_size", "word_dim", "max_length", "num_users", "user_dim", "embed_dim",
                     "batch_size", "epochs", "lr_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"DU2MCEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < max(self.kernel_widths):
            raise ValueError(f"max_length {self.max_length} is shorter than the widest kernel {max(self.kernel_widths)}")
        if self.margin < 0 or self.lr <= 0 or self.lr_gamma <= 0:
            raise ValueError("margin must be >= 0, lr and lr_gamma > 0")

    @property
    def text_dim(self) -> int:  # D_T
        return sum(self.filters)

    def active_pairs(self) -> tuple[str, ...]:
        """The pairs trained on (λ > 0); Merged-Modality trains content→user only."""
        if self.variant == "merged":
            return ("T-U", "I-U")
        return tuple(p for p, lam in zip(PAIRS, self.lambdas) if lam > 0)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    "default": {},
    "paper": {},
    # CPU-sized, same structure: MobileNetV2 pooled 1280, narrower Kim CNN, D = 256, 100-d word2vec/users;
    # batches of 100 posts so that a 2000-post corpus still gives 14 steps an epoch
    "small": dict(image_dim=1280, word_dim=100, filters=(128, 64, 64), user_dim=100, embed_dim=256,
                  batch_size=100, epochs=12, lr_step=8),
    "tiny": dict(image_dim=16, word_dim=8, max_length=6, filters=(8, 4, 4), user_dim=8, embed_dim=12,
                 batch_size=16, epochs=2, lr_step=1),
}


def du2mce_config(preset: str = "default", **overrides) -> DU2MCEConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown DU2MCE preset {preset!r}; choose one of {tuple(PRESETS)}")
    unknown = set(overrides) - set(DU2MCEConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown DU2MCE config field(s) {sorted(unknown)}; "
                         f"valid fields: {sorted(DU2MCEConfig.__dataclass_fields__)}")
    return DU2MCEConfig(**{**PRESETS[preset], **overrides})


class KimCNN(nn.Module):
    """φ_T (§4.3, [35]): word vectors → parallel Conv1d of widths (2, 3, 4) with (512, 256, 256) filters,
    ReLU, max over time, concatenated (D_T). Texts are padded to ``max_length`` with the pad token."""

    def __init__(self, cfg: DU2MCEConfig):
        super().__init__()
        self.words = nn.Embedding(cfg.vocab_size, cfg.word_dim, padding_idx=0)
        self.words.weight.requires_grad_(cfg.train_word_vectors)
        self.convs = nn.ModuleList(nn.Conv1d(cfg.word_dim, f, k) for k, f in zip(cfg.kernel_widths, cfg.filters))

    def forward(self, tokens: Tensor) -> Tensor:
        e = self.words(tokens).transpose(1, 2)  # (B, word_dim, L)
        return torch.cat([F.relu(conv(e)).amax(-1) for conv in self.convs], dim=1)  # (B, D_T)


class DU2MCE(nn.Module):
    """The three encoders of §3.1 into the common space R^D:
    x^I = W_I φ_I(I), x^T = W_T φ_T(T), x^U = W_U φ_U(U) with φ_U(U_k) = U_e[k] (U_e ∈ R^{K×D_u})."""

    def __init__(self, cfg: DU2MCEConfig, word_vectors: Tensor | np.ndarray | None = None,
                 user_init: Tensor | np.ndarray | None = None):
        super().__init__()
        self.cfg = cfg
        self.W_I = nn.Linear(cfg.image_dim, cfg.embed_dim)
        self.phi_T = KimCNN(cfg)
        self.W_T = nn.Linear(cfg.text_dim, cfg.embed_dim)
        self.U_e = nn.Embedding(cfg.num_users, cfg.user_dim)
        self.W_U = nn.Linear(cfg.user_dim, cfg.embed_dim)
        if word_vectors is not None:
            _copy_rows(self.phi_T.words.weight, word_vectors, "word_vectors", (cfg.vocab_size, cfg.word_dim))
        if user_init is not None:  # §4.3: the mean word2vec of each user's texts
            _copy_rows(self.U_e.weight, user_init, "user_init", (cfg.num_users, cfg.user_dim))

    def encode_image(self, features: Tensor) -> Tensor:
        if features.dim() != 2 or features.shape[1] != self.cfg.image_dim:
            raise ValueError(f"DU2MCE expects pooled image features (B, {self.cfg.image_dim}), got "
                             f"{tuple(features.shape)}; set image_dim to the feature store's channels")
        return self.W_I(features)

    def encode_text(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] < max(self.cfg.kernel_widths):
            raise ValueError(f"DU2MCE expects token ids (B, L >= {max(self.cfg.kernel_widths)}), got "
                             f"{tuple(tokens.shape)}")
        return self.W_T(self.phi_T(tokens))

    def encode_user(self, users: Tensor) -> Tensor:
        return self.W_U(self.U_e(users))

    def forward(self, image: Tensor, tokens: Tensor, user: Tensor) -> dict[str, Tensor]:
        """Embeddings of every post of a batch; rows of a missing modality are computed on the placeholder
        input and ignored by the loss through the masks."""
        return {"I": self.encode_image(image), "T": self.encode_text(tokens), "U": self.encode_user(user)}

    def set_trainable(self, image: bool = True, text: bool = True, user: bool = True) -> None:
        """Freeze or unfreeze encoders (Bridging-Modality, §4.6, fixes φ_T, W_T, U_e, W_U in its second stage)."""
        for module, on in ((self.W_I, image), (self.W_T, text), (self.phi_T.convs, text), (self.U_e, user),
                           (self.W_U, user)):
            for p in module.parameters():
                p.requires_grad_(on)
        self.phi_T.words.weight.requires_grad_(text and self.cfg.train_word_vectors)


def du2mce(preset: str = "default", word_vectors=None, user_init=None, **overrides) -> DU2MCE:
    """Build DU2MCE, e.g. ``du2mce("small", vocab_size=V, num_users=K, word_vectors=W, user_init=U0)``."""
    return DU2MCE(du2mce_config(preset, **overrides), word_vectors, user_init)


def cosine_similarity_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Eq. 3 for every pair: S[i, n] = x_i · x_n / (‖x_i‖₂ ‖x_n‖₂)."""
    return F.normalize(a, dim=-1, eps=eps) @ F.normalize(b, dim=-1, eps=eps).T


def pair_ranking_loss(anchors: Tensor, candidates: Tensor, positive: Tensor, margin: float) -> Tensor:
    """Eq. 4 summed over the anchors: Σ_j Σ_{n ≠ pos(j)} [m − S(a_j, c_pos(j)) + S(a_j, c_n)]_+.

    anchors (A, D); candidates (C, D), the positive of anchor j is ``candidates[positive[j]]`` and every
    other candidate is one of its negatives (in-batch negatives, §3.2)."""
    if len(anchors) == 0:
        return anchors.sum() * 0.0
    s = cosine_similarity_matrix(anchors, candidates)  # (A, C)
    rows = torch.arange(len(anchors), device=anchors.device)
    s_pos = s[rows, positive][:, None]
    hinge = (margin - s_pos + s).clamp_min(0)
    negative = torch.ones_like(hinge, dtype=torch.bool)
    negative[rows, positive] = False
    return (hinge * negative).sum()


class DU2MCELoss(nn.Module):
    """Eq. 1: L = λ1/N_{T-U} L_{T-U} + λ2/N_{I-T} L_{I-T} + λ3/N_{I-U} L_{I-U}, each term Eq. 4.

    Eq. 1 prints λ3 = 1 − λ1 − λ2; the three weights are given explicitly here (Table 2's rows sum to 1
    up to rounding). N_· counts the valid pairs of the batch (both modalities present); a term with no
    valid pair, or with λ = 0, adds nothing and is not computed. Anchors and negatives (Eq. 4):
    T-U: anchor text, negatives the other users of the batch (U_n ≠ U_j, each user once);
    I-T: anchor image, negatives the texts of the other posts of the batch;
    I-U: anchor image, negatives the other users of the batch.
    Merged-Modality: anchor x^I + x^T (a missing image counts as a zero vector, §4.6), negatives users.
    """

    def __init__(self, cfg: DU2MCEConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, model: DU2MCE, image: Tensor, tokens: Tensor, user: Tensor, has_image: Tensor,
                has_text: Tensor, has_user: Tensor) -> dict[str, Tensor]:
        cfg, m = self.cfg, self.cfg.margin
        has_image, has_text, has_user = has_image.bool(), has_text.bool(), has_user.bool()
        need = set(cfg.active_pairs())
        x_I = model.encode_image(image[has_image]) if ("I-T" in need or "I-U" in need) and has_image.any() else None
        x_T = model.encode_text(tokens[has_text]) if ("T-U" in need or "I-T" in need) and has_text.any() else None
        # rows of x_I / x_T for every post of the batch (-1: modality missing)
        row_I = torch.cumsum(has_image.long(), 0) - 1
        row_T = torch.cumsum(has_text.long(), 0) - 1
        users, user_slot = torch.unique(user[has_user], return_inverse=True)
        slot = torch.full_like(user, -1)
        slot[has_user] = user_slot
        x_U = model.encode_user(users) if ("T-U" in need or "I-U" in need) and len(users) else None
        zero = next(model.parameters()).sum() * 0.0
        out: dict[str, Tensor] = {}
        total = zero
        if cfg.variant == "merged":
            valid = has_user & (has_text | has_image)
            content = zero.new_zeros((int(valid.sum()), cfg.embed_dim))
            if x_T is not None:
                content = content + _gather(x_T, row_T, valid, has_text)
            if x_I is not None:
                content = content + _gather(x_I, row_I, valid, has_image)
            n = int(valid.sum())
            loss = pair_ranking_loss(content, x_U, slot[valid], m) / n if n and x_U is not None else zero
            out.update({"loss": loss, "C-U": loss.detach(), "N_C-U": torch.tensor(float(n))})
            return out
        for pair, lam in zip(PAIRS, cfg.lambdas):
            if pair == "T-U":
                valid = has_text & has_user
            elif pair == "I-T":
                valid = has_image & has_text
            else:
                valid = has_image & has_user
            n = int(valid.sum())
            out[f"N_{pair}"] = torch.tensor(float(n))
            if lam == 0 or n == 0:
                out[pair] = zero.detach()
                continue
            if pair == "T-U":
                term = pair_ranking_loss(x_T[row_T[valid]], x_U, slot[valid], m)
            elif pair == "I-T":
                term = pair_ranking_loss(x_I[row_I[valid]], x_T, row_T[valid], m)
            else:
                term = pair_ranking_loss(x_I[row_I[valid]], x_U, slot[valid], m)
            term = term / n
            out[pair] = term.detach()
            total = total + lam * term
        out["loss"] = total
        return out


def _gather(x: Tensor, rows: Tensor, valid: Tensor, present: Tensor) -> Tensor:
    """x's row for every valid post, zeros where the modality is missing."""
    keep = present[valid]
    out = x.new_zeros((int(valid.sum()), x.shape[1]))
    out[keep] = x[rows[valid][keep]]
    return out


def _copy_rows(weight: nn.Parameter, values, name: str, shape: tuple[int, int]) -> None:
    t = torch.as_tensor(np.asarray(values), dtype=weight.dtype)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    with torch.no_grad():
        weight.copy_(t)
