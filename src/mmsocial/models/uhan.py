"""UHAN: User-guided Hierarchical Attention Network for social image popularity (Zhang et al., WWW 2018).

Equation numbers refer to the paper (papers/uhan-popularity-prediction.md). The VGG16 region grid
V (Eq. §3.2) is computed once and cached: the model takes V (B, M, C), word ids (B, T) with their
lengths, and user ids (B,).

Inputs: V = [v_1 .. v_M] regions; words w_t -> w̌_t (Eq. 1) -> LSTM states h_t (Eq. 2-6);
user one-hot -> ǔ (Eq. 7). The paper's region, word-state and user sizes are all 512; when the
cached regions have another size (offline: MobileNetV2, 1280) a linear map brings them to the
LSTM size first ("by necessary linear transformation", Fig. 3 caption).

Ablations (Tables 2-4) are flags of the one model: ``use_user`` (w/o u), ``shortcut`` (w/o sc),
``intra`` (w/o intra: mean pooling instead of Eq. 9-15), ``inter`` (w/o inter: a_1 = a_2 = 1/2
instead of Eq. 16-19), ``use_visual`` (w/o V), ``use_text`` (w/o T).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from mmsocial.models.layers import MaskedLSTM, masked_softmax

# row name -> the flags it switches off (Tables 2-4)
VARIANTS: dict[str, dict[str, bool]] = {
    "uhan": {},
    "wo_u": {"use_user": False},
    "wo_sc": {"shortcut": False},
    "wo_intra": {"intra": False},
    "wo_inter": {"inter": False},
    "wo_intra_inter": {"intra": False, "inter": False},
    "wo_V": {"use_visual": False},
    "wo_T": {"use_text": False},
}


@dataclass
class UHANConfig:
    """Paper defaults (§3, §4.1.4)."""

    num_words: int = 70172  # vocabulary incl. <pad>=0 and <unk>=1 (Table 1: 70,170 words)
    num_users: int = 129  # users incl. the unknown user 0 (Table 1: 128)
    num_regions: int = 196  # M, 14x14 (VGG16 at 448)
    region_dim: int = 512  # VGG16 pool5 channels (MobileNetV2 offline: 1280)
    word_dim: int = 512  # K_W
    hidden_dim: int = 512  # LSTM state size; also the size of s
    user_dim: int = 512  # K_U
    att_dim: int = 512  # rows of W_Vv^1, W_Tt^1, W_V^2, ... (512x512 in the paper)
    fc_dim: int = 512  # W_F^1 ∈ R^{512x512}
    max_length: int = 50  # L
    use_user: bool = True
    shortcut: bool = True
    intra: bool = True
    inter: bool = True
    use_visual: bool = True
    use_text: bool = True
    # training (§4.1.4): Adam with default settings, mini-batch 128, validate every 64 batches,
    # stop after 20 validations without gain
    lr: float = 1e-3
    batch_size: int = 128
    eval_every: int = 64
    patience: int = 20
    max_steps: int = 20000

    def __post_init__(self):
        for name in ("num_words", "num_users", "num_regions", "region_dim", "word_dim", "hidden_dim",
                     "user_dim", "att_dim", "fc_dim", "max_length", "batch_size", "eval_every", "patience",
                     "max_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"UHANConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.use_visual or self.use_text):
            raise ValueError("UHAN needs at least one modality: use_visual and use_text are both False")
        if self.lr <= 0:
            raise ValueError(f"UHANConfig.lr must be > 0, got {self.lr}")

    @property
    def multimodal(self) -> bool:
        return self.use_visual and self.use_text

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    "paper": {},
    # CPU-sized, same structure: MobileNetV2 7x7 grid, 64-d words/states/users/attention, a short schedule
    "small": dict(num_regions=49, region_dim=1280, word_dim=64, hidden_dim=64, user_dim=64, att_dim=64,
                  fc_dim=64, max_length=50, batch_size=128, eval_every=10, patience=8, max_steps=300),
    "tiny": dict(num_words=30, num_users=5, num_regions=4, region_dim=6, word_dim=8, hidden_dim=8, user_dim=8,
                 att_dim=8, fc_dim=8, max_length=7, batch_size=8, eval_every=2, patience=2, max_steps=10),
}
PRESETS["default"] = PRESETS["paper"]


def uhan_config(preset: str = "paper", variant: str = "uhan", **overrides) -> UHANConfig:
    """The preset's settings, then the variant's flags, then ``overrides`` (any UHANConfig field)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown UHAN preset {preset!r}; choose one of {tuple(PRESETS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown UHAN variant {variant!r}; choose one of {tuple(VARIANTS)}")
    unknown = set(overrides) - set(UHANConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown UHAN config field(s) {sorted(unknown)}; "
                         f"valid fields: {sorted(UHANConfig.__dataclass_fields__)}")
    return UHANConfig(**{**PRESETS[preset], **VARIANTS[variant], **overrides})


class IntraAttention(nn.Module):
    """User-guided intra-attention over one modality's items x_1..x_n (Eq. 9-11 for regions, 13-15 for words):

        r_n = W^1 (tanh(W_x^1 x_n) ∘ tanh(W_g1^1 g_1) ∘ tanh(W_g2^1 g_2) ...),  α = softmax(r),  ẋ = Σ α_n x_n.

    Guides g: for the image ǔ and h̄ (Eq. 9), for the text ǔ and v̄ (Eq. 13); an ablation drops some.
    """

    def __init__(self, item_dim: int, guide_dims: list[int], att_dim: int):
        super().__init__()
        self.W_x = nn.Linear(item_dim, att_dim, bias=False)  # W_Vv^1 / W_Tt^1
        self.W_g = nn.ModuleList(nn.Linear(d, att_dim, bias=False) for d in guide_dims)  # W_Vu^1, W_Vt^1 / ...
        self.W = nn.Linear(att_dim, 1, bias=False)  # W_V^1 / W_T^1 ∈ R^{1x512}

    def scores(self, items: Tensor, guides: list[Tensor]) -> Tensor:
        """r (B, n): Eq. 9 / Eq. 13."""
        if len(guides) != len(self.W_g):
            raise ValueError(f"intra-attention built for {len(self.W_g)} guides, got {len(guides)}")
        joint = torch.tanh(self.W_x(items))  # (B, n, att)
        for W_g, g in zip(self.W_g, guides):
            joint = joint * torch.tanh(W_g(g))[:, None, :]
        return self.W(joint).squeeze(-1)

    def forward(self, items: Tensor, guides: list[Tensor], mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r = self.scores(items, guides)
        alpha = torch.softmax(r, -1) if mask is None else masked_softmax(r, mask)  # Eq. 10 / 14
        return torch.einsum("bn,bnd->bd", alpha, items), alpha  # Eq. 11 / 15


class InterAttention(nn.Module):
    """User-guided inter-attention (Eq. 16-19): a_1, a_2 = softmax(uv, ut) with

        uv = W_UVT^2 (tanh(W_V^2 v̇) ∘ tanh(W_U^2 ǔ)),   ut = W_UVT^2 (tanh(W_T^2 ḣ) ∘ tanh(W_U^2 ǔ)).

    Without a user (w/o u) the ǔ factor is left out.
    """

    def __init__(self, dim: int, user_dim: int | None, att_dim: int):
        super().__init__()
        self.W_V = nn.Linear(dim, att_dim, bias=False)  # W_V^2
        self.W_T = nn.Linear(dim, att_dim, bias=False)  # W_T^2
        self.W_U = nn.Linear(user_dim, att_dim, bias=False) if user_dim else None  # W_U^2
        self.W_UVT = nn.Linear(att_dim, 1, bias=False)  # W_UVT^2 ∈ R^{1x512}

    def forward(self, v_att: Tensor, h_att: Tensor, u: Tensor | None) -> Tensor:
        gv, gt = torch.tanh(self.W_V(v_att)), torch.tanh(self.W_T(h_att))
        if self.W_U is not None:
            gu = torch.tanh(self.W_U(u))
            gv, gt = gv * gu, gt * gu
        uv, ut = self.W_UVT(gv), self.W_UVT(gt)  # Eq. 16, 17
        return torch.softmax(torch.cat([uv, ut], -1), -1)  # Eq. 18, 19: (B, 2) = [a_1, a_2]


class UHAN(nn.Module):
    """ŷ = f(V, H, u) (Problem 1): intra-attention, inter-attention, shortcut, 2-layer output (Eq. 1-22)."""

    def __init__(self, cfg: UHANConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        user_dim = cfg.user_dim if cfg.use_user else None
        if cfg.use_text:
            self.text = MaskedLSTM(cfg.num_words, cfg.word_dim, d)  # Eq. 1-6
        if cfg.use_user:
            self.W_U = nn.Embedding(cfg.num_users, cfg.user_dim)  # Eq. 7
        if cfg.use_visual:
            # deviation: regions of another size than the LSTM state are mapped to it (Fig. 3 caption)
            self.region_proj = nn.Linear(cfg.region_dim, d) if cfg.region_dim != d else nn.Identity()
        if cfg.intra:
            guides = [user_dim] if user_dim else []
            if cfg.use_visual:
                self.att_V = IntraAttention(d, guides + ([d] if cfg.use_text else []), cfg.att_dim)  # Eq. 9
            if cfg.use_text:
                self.att_T = IntraAttention(d, guides + ([d] if cfg.use_visual else []), cfg.att_dim)  # Eq. 13
        if cfg.inter and cfg.multimodal:
            self.att_inter = InterAttention(d, user_dim, cfg.att_dim)  # Eq. 16-19
        if cfg.shortcut and cfg.use_user:
            self.W_U3 = nn.Linear(cfg.user_dim, d, bias=False)  # Eq. 21
        self.W_F1 = nn.Linear(d, cfg.fc_dim)  # Eq. 22
        self.W_F2 = nn.Linear(cfg.fc_dim, 1)

    def forward(self, regions: Tensor | None, words: Tensor | None, lengths: Tensor | None,
                users: Tensor | None) -> Tensor:
        return self.attend(regions, words, lengths, users)["y"]

    def attend(self, regions: Tensor | None, words: Tensor | None, lengths: Tensor | None,
               users: Tensor | None) -> dict[str, Tensor]:
        """ŷ and every attention: ``alpha_V`` (B, M), ``alpha_T`` (B, T), ``a`` (B, 2) = [a_1, a_2]."""
        cfg, out = self.cfg, {}
        u = self.W_U(_check_users(users, cfg)) if cfg.use_user else None  # ǔ, Eq. 7
        guide_u = [u] if u is not None else []
        if cfg.use_visual:
            V = self.region_proj(_check_regions(regions, cfg))  # (B, M, d)
            v_bar = V.mean(1)  # Eq. 12
        if cfg.use_text:
            if words is None or lengths is None:
                raise ValueError("UHAN with text needs word ids (B, T) and lengths (B,)")
            H, mask = self.text(words[:, :cfg.max_length], lengths.clamp(max=cfg.max_length))  # Ȟ, Eq. 1-6
            l = mask.sum(1, keepdim=True).clamp(min=1).to(H.dtype)
            h_bar = H.sum(1) / l  # Eq. 8 (padding states are zero)
        if cfg.use_visual:
            if cfg.intra:
                v_att, out["alpha_V"] = self.att_V(V, guide_u + ([h_bar] if cfg.use_text else []))  # Eq. 9-11
            else:
                v_att = v_bar  # w/o intra: mean pooling
        if cfg.use_text:
            if cfg.intra:
                h_att, out["alpha_T"] = self.att_T(H, guide_u + ([v_bar] if cfg.use_visual else []),
                                                   mask)  # Eq. 13-15
            else:
                h_att = h_bar  # w/o intra: mean pooling over the words
        if cfg.multimodal:
            if cfg.inter:
                a = self.att_inter(v_att, h_att, u)  # Eq. 16-19
            else:
                a = torch.full((v_att.shape[0], 2), 0.5, dtype=v_att.dtype, device=v_att.device)
            out["a"] = a
            s = a[:, :1] * v_att + a[:, 1:] * h_att  # Eq. 20
        else:
            s = v_att if cfg.use_visual else h_att
        if cfg.shortcut and cfg.use_user:
            s = s + self.W_U3(u)  # Eq. 21
        out["y"] = self.W_F2(torch.relu(self.W_F1(s))).squeeze(-1)  # Eq. 22
        return out


def uhan(preset: str = "paper", variant: str = "uhan", **overrides) -> UHAN:
    """Build UHAN or an ablation, e.g. ``uhan("small", "wo_inter", num_words=5000, num_users=100)``."""
    return UHAN(uhan_config(preset, variant, **overrides))


def mse_loss(y_hat: Tensor, y: Tensor) -> Tensor:
    """§3.4: the mean square error between ŷ and the popularity score y (Eq. 24)."""
    return torch.mean((y_hat - y.to(y_hat.dtype)) ** 2)


def _check_regions(regions: Tensor | None, cfg: UHANConfig) -> Tensor:
    if regions is None or regions.dim() != 3 or regions.shape[1:] != (cfg.num_regions, cfg.region_dim):
        shape = None if regions is None else tuple(regions.shape)
        raise ValueError(f"UHAN expects region grids (B, {cfg.num_regions}, {cfg.region_dim}), got {shape}; "
                         f"set num_regions and region_dim to the feature store's grid")
    return regions.float()


def _check_users(users: Tensor | None, cfg: UHANConfig) -> Tensor:
    if users is None:
        raise ValueError("UHAN with the user (use_user=True) needs user ids (B,)")
    if users.numel() and (int(users.min()) < 0 or int(users.max()) >= cfg.num_users):
        raise ValueError(f"user ids must lie in [0, {cfg.num_users}), got [{int(users.min())}, "
                         f"{int(users.max())}]; 0 is the unknown (cold-start) user")
    return users.long()
