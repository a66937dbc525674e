"""DMAN: Deep Multimodal Attention Networks for social image embedding (Huang et al., 2017).

Equation numbers refer to the paper (papers/dman-social-image-embedding.md). The CNN f_c (Eq. 4)
is run once and cached: the model takes region grids R (B, D, M) as input.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from mmsocial.models.layers import LocallyConnected, mlp
from mmsocial.train.losses import SIMILARITIES, hinge_rank_loss, weighted_bce

VARIANTS = ("dman", "triplet", "triplet_text")


@dataclass
class DMANConfig:
    """Paper defaults (§3, §4.1). ``variant``: "dman" (attention + LFC, Eq. 12), "triplet" (FC base,
    image only, hinge only) or "triplet_text" (FC base, hinge + BCE), §4.2."""

    variant: str = "dman"
    num_words: int = 1000  # L, most frequent tags
    num_regions: int = 49  # D, 7x7 grid
    region_dim: int = 512  # M, VGG16 pool5 channels (MobileNetV2 offline: 1280)
    lfc_dims: tuple[int, ...] = (128, 32)  # hidden LFC sizes per word; the last LFC has 1 neuron
    fc_dims: tuple[int, ...] = (1024, 1024)  # hidden FC sizes of the variants' base network
    dropout: float = 0.5  # "the L2 normalization are replaced by dropout layers" (§3.2)
    margin: float = 0.3  # M, Eq. 2
    k_negatives: int = 3  # K
    similarity: str = "eq1"  # Eq. 1 as printed; "cosine" as an option
    lam: float = 10.0  # λ, Eq. 11
    beta: float = 1.0  # β, Eq. 12
    bce_word_mean: bool = False  # True: average Eq. 11 over the L words instead of summing (docs)
    input_norm: bool = True  # standardise each region channel with the training split's mean/std (docs)
    init: str = "keras"  # Glorot-uniform weights, zero biases: Keras' defaults, the paper's framework (docs)
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    batch_size: int = 64
    epochs: int = 20

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown DMAN variant {self.variant!r}; choose one of {VARIANTS}")
        if self.init not in ("torch", "keras"):
            raise ValueError(f"unknown DMAN init {self.init!r}; choose 'torch' or 'keras'")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {self.similarity!r}; choose one of {SIMILARITIES}")
        for name in ("num_words", "num_regions", "region_dim", "k_negatives", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"DMANConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"DMANConfig.dropout must be in [0, 1), got {self.dropout}")
        self.lfc_dims, self.fc_dims = tuple(int(d) for d in self.lfc_dims), tuple(int(d) for d in self.fc_dims)

    @property
    def uses_text(self) -> bool:
        return self.variant != "triplet"

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    "default": {},
    # CPU-sized, same structure: MobileNetV2 7x7x1280 grid, 300 tags, narrower LFC/FC stacks
    "small": dict(num_words=300, region_dim=1280, lfc_dims=(32, 8), fc_dims=(512, 512), dropout=0.2,
                  batch_size=64, epochs=15),
    "tiny": dict(num_words=12, num_regions=4, region_dim=16, lfc_dims=(8, 4), fc_dims=(16,), dropout=0.0,
                 batch_size=8, epochs=2),
}


def dman_config(preset: str = "default", variant: str = "dman", **overrides) -> DMANConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown DMAN preset {preset!r}; choose one of {tuple(PRESETS)}")
    unknown = set(overrides) - set(DMANConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown DMAN config field(s) {sorted(unknown)}; "
                         f"valid fields: {sorted(DMANConfig.__dataclass_fields__)}")
    return DMANConfig(**{**PRESETS[preset], "variant": variant, **overrides})


class VisualTextualAttention(nn.Module):
    """Eq. 5-8: Z = tanh(w Rᵀ + b), A = softmax over regions per word, U = A R."""

    def __init__(self, num_words: int, region_dim: int):
        super().__init__()
        self.w = nn.Linear(region_dim, num_words)  # w ∈ R^{L×M}, b ∈ R^L

    def forward(self, regions: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.tanh(self.w(regions)).transpose(1, 2)  # Eq. 7: (B, L, D)
        alpha = torch.softmax(z, dim=-1)  # Eq. 6
        u = torch.bmm(alpha, regions)  # Eq. 8: (B, L, M)
        return u, alpha


class DMAN(nn.Module):
    """f_w = f_l ∘ f_a (Eq. 10) on cached CNN regions: attention, then LFC layers, sigmoid -> Y ∈ (0,1)^L."""

    def __init__(self, cfg: DMANConfig):
        super().__init__()
        if cfg.variant != "dman":
            raise ValueError(f"DMAN builds variant 'dman'; use dman(variant={cfg.variant!r}) for the others")
        self.cfg = cfg
        self.attention = VisualTextualAttention(cfg.num_words, cfg.region_dim)
        dims = (cfg.region_dim, *cfg.lfc_dims, 1)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(LocallyConnected(cfg.num_words, a, b))
            if i < len(dims) - 2:
                layers += [nn.ReLU(), nn.Dropout(cfg.dropout)]
        self.lfc = nn.Sequential(*layers)  # Eq. 9
        _add_region_scale(self, cfg)
        _initialise(self, cfg.init)

    def forward(self, regions: Tensor) -> Tensor:
        _check_regions(regions, self.cfg)
        u, _ = self.attention(_scaled(self, regions))
        return torch.sigmoid(self.lfc(u).squeeze(-1))  # (B, L)

    @torch.no_grad()
    def attention_maps(self, regions: Tensor) -> Tensor:
        """A (B, L, D): the attention of every vocabulary word over the regions."""
        _check_regions(regions, self.cfg)
        return self.attention(_scaled(self, regions))[1]

    def query(self, tags: Tensor) -> Tensor:
        """Tag-space query: Y lives in the tag space (Eq. 9-11), so a tag vector is its own query."""
        return tags.float()


class DMANFC(nn.Module):
    """§4.2 variants: the Siamese-Triplet base network with FC layers on the pooled CNN feature.

    DMAN_Triplet trains it with the hinge loss only; DMAN_Triplet+Text adds the BCE against the
    tag vector. The output is L-dimensional with a sigmoid in both, so the two differ only by the text.
    """

    def __init__(self, cfg: DMANConfig):
        super().__init__()
        if cfg.variant == "dman":
            raise ValueError("DMANFC is the FC base of the variants; build variant 'dman' with DMAN")
        self.cfg = cfg
        self.fc = mlp((cfg.region_dim, *cfg.fc_dims, cfg.num_words), dropout=cfg.dropout,
                      last_activation=nn.Sigmoid())
        _add_region_scale(self, cfg)
        _initialise(self, cfg.init)

    def forward(self, regions: Tensor) -> Tensor:
        _check_regions(regions, self.cfg)
        return self.fc(_scaled(self, regions).mean(1))

    def query(self, tags: Tensor) -> Tensor:
        if not self.cfg.uses_text:
            raise ValueError("DMAN_Triplet is image-only: it has no text query (it is not in Table 3)")
        return tags.float()


def dman(preset: str = "default", variant: str = "dman", **overrides) -> nn.Module:
    """Build DMAN or one of its variants, e.g. ``dman("small", region_dim=1280, num_words=250)``."""
    cfg = dman_config(preset, variant, **overrides)
    return DMAN(cfg) if cfg.variant == "dman" else DMANFC(cfg)


class DMANLoss(nn.Module):
    """Eq. 12: L = L_h (Eq. 3, over the triplets) + β L_c (Eq. 11, over the posts with tags).

    Sums over the batch are replaced by means so that the learning rate does not depend on the batch size.
    The variant "triplet" has no text and uses L_h alone.
    """

    def __init__(self, cfg: DMANConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, y_anchor: Tensor, y_positive: Tensor, y_negatives: Tensor,
                y_tagged: Tensor | None = None, tags: Tensor | None = None) -> dict[str, Tensor]:
        cfg = self.cfg
        hinge = hinge_rank_loss(y_anchor, y_positive, y_negatives, cfg.margin, cfg.similarity, "mean")
        if not cfg.uses_text or cfg.beta == 0:
            return {"loss": hinge, "hinge": hinge.detach(), "bce": torch.zeros(())}
        if y_tagged is None or tags is None:
            raise ValueError(f"variant {cfg.variant!r} needs the tag vectors for the BCE term (Eq. 11)")
        bce = weighted_bce(y_tagged, tags.float(), cfg.lam, reduction="mean")
        if cfg.bce_word_mean:
            bce = bce / cfg.num_words
        return {"loss": hinge + cfg.beta * bce, "hinge": hinge.detach(), "bce": bce.detach()}


def set_region_scale(model: nn.Module, mean: Tensor, std: Tensor) -> None:
    """Store the training split's per-channel region mean/std (M,) that ``input_norm`` standardises with."""
    m = model.cfg.region_dim
    mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    if mean.shape != (m,) or std.shape != (m,):
        raise ValueError(f"region mean/std must both be ({m},), got {tuple(mean.shape)} and {tuple(std.shape)}")
    model.region_mean.copy_(mean)
    model.region_std.copy_(std.clamp_min(1e-6))


def _initialise(model: nn.Module, init: str) -> None:
    """``torch``: PyTorch's defaults (left as built). ``keras``: Keras' Dense defaults, the framework of
    the paper (§4.1): Glorot-uniform weights, zero biases; an LFC slot is initialised like a Dense layer."""
    if init != "keras":
        return
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, LocallyConnected):
            bound = math.sqrt(6.0 / (m.in_features + m.out_features))
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _add_region_scale(model: nn.Module, cfg: DMANConfig) -> None:
    model.register_buffer("region_mean", torch.zeros(cfg.region_dim))
    model.register_buffer("region_std", torch.ones(cfg.region_dim))


def _scaled(model: nn.Module, regions: Tensor) -> Tensor:
    return (regions - model.region_mean) / model.region_std if model.cfg.input_norm else regions


def _check_regions(regions: Tensor, cfg: DMANConfig) -> None:
    if regions.dim() != 3 or regions.shape[1:] != (cfg.num_regions, cfg.region_dim):
        raise ValueError(f"DMAN expects region grids (B, {cfg.num_regions}, {cfg.region_dim}), got "
                         f"{tuple(regions.shape)}; set num_regions and region_dim to the feature store's grid")
