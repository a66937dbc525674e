"""EISR: Enhanced Isomorphic Semantic Representation for cross-media retrieval (Liu et al., ICIP 2017).

Equation numbers and sections refer to papers/eisr-cross-media-retrieval.md. Two sub-networks map
an image x and a text t into the same c-dimensional semantic space (class posteriors):

- I_Net (§2.1, §3.2): CNN fc7 feature -> I_fc (latent embedding layer, l dims) -> last layer (c).
  The CNN runs once and is cached by default, so I_Net starts at the cached feature; an optional
  ``backbone`` module fine-tunes it end to end (the paper's AlexNet conv1-fc7).
- T_Net (§2.2, §3.2): text feature (LDA, 100 topics) -> FC 4096 -> T_fc (l) -> last layer (c).
- O/LE/J (§2.3, Eq. 2): the last layer W is ONE tensor shared by both branches: softmax(W φ(x)),
  softmax(W φ(t)).

Ablations of Table 2 are flags of the one model: O (no latent layer, separate last layers,
Eq. 1), O/LE (latent layers, separate last layers, Eq. 1), O/LE/J (latent layers, shared W, Eq. 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import Tensor, nn

# Table 2 column -> (latent_embedding, joint)
VARIANTS: dict[str, tuple[bool, bool]] = {"O": (False, False), "O/LE": (True, False), "O/LE/J": (True, True)}
LATENT_SWEEP = (64, 128, 256, 512, 1024)  # Table 1


@dataclass
class EISRConfig:
    """Paper defaults (§3.2). ``latent_embedding`` and ``joint`` are the Table 2 ablation flags."""

    image_dim: int = 4096  # AlexNet fc7 (offline: MobileNetV2 pooled 1280)
    text_dim: int = 100  # LDA topics (§3.1)
    num_classes: int = 10  # c (Wikipedia: 10, Pascal Sentence / VOC: 20)
    text_hidden: int = 4096  # T_Net's first FC (4096-l-c)
    latent_dim: int = 512  # l: 128 on Pascal Sentence, 512 on Wikipedia and VOC (§4.1.1)
    latent_embedding: bool = True  # LE: the latent layers I_fc / T_fc
    joint: bool = True  # J: one last layer W shared by I_Net and T_Net (Eq. 2)
    dropout: float = 0.5  # "Drop out and ReLU are added likewise" (AlexNet's 0.5)
    init_std: float = 0.01  # new layers ~ N(0, 0.01), biases 0
    lr_new: float = 0.01  # newly added layers
    lr_pretrained: float = 0.001  # pre-trained layers (the backbone, when fine-tuned)
    momentum: float = 0.9  # not given in the paper; Caffe's usual value (docs/eisr.md)
    weight_decay: float = 0.0005  # not given in the paper; Caffe's usual value (docs/eisr.md)
    batch_size: int = 256  # image-text pairs per mini-batch
    loss_reduction: str = "sum"  # Eq. 2 as printed: Σ_i over the batch ("mean" divides by the batch size)
    iterations: int = 400  # SGD iterations (Wikipedia 400, Pascal Sentence 300, VOC 2000); lr /10 at half

    def __post_init__(self):
        for name in ("image_dim", "text_dim", "num_classes", "text_hidden", "latent_dim", "batch_size",
                     "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"EISRConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise ValueError(f"EISRConfig.num_classes must be >= 2 (a softmax over classes), got {self.num_classes}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"EISRConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.init_std <= 0 or self.lr_new <= 0 or self.lr_pretrained <= 0:
            raise ValueError("EISRConfig.init_std, lr_new and lr_pretrained must be > 0")
        if self.loss_reduction not in ("sum", "mean"):
            raise ValueError(f"EISRConfig.loss_reduction must be 'sum' or 'mean', got {self.loss_reduction!r}")
        if self.joint and not self.latent_embedding:
            raise ValueError("joint=True needs latent_embedding=True: W can only be shared when both branches "
                             "end in the same l-dimensional latent space (O/LE/J); use variant 'O' or 'O/LE'")

    @property
    def variant(self) -> str:
        return next(k for k, v in VARIANTS.items() if v == (self.latent_embedding, self.joint))

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    "paper": {},
    # CPU-sized, same structure: MobileNetV2 pooled 1280 in place of fc7, narrower T_Net
    # lr_new 0.001: with Eq. 2 summed over the batch, 0.01 diverges on standardised cached features (docs/eisr.md)
    "small": dict(image_dim=1280, text_hidden=1024, latent_dim=256, iterations=300, lr_new=0.001),
    "tiny": dict(image_dim=16, text_dim=8, num_classes=4, text_hidden=16, latent_dim=8, dropout=0.0,
                 batch_size=8, iterations=6),
}
PRESETS["default"] = PRESETS["paper"]


def eisr_config(preset: str = "paper", variant: str = "O/LE/J", **overrides) -> EISRConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown EISR preset {preset!r}; choose one of {tuple(PRESETS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown EISR variant {variant!r}; choose one of {tuple(VARIANTS)}")
    unknown = set(overrides) - set(EISRConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown EISR config field(s) {sorted(unknown)}; "
                         f"valid fields: {sorted(EISRConfig.__dataclass_fields__)}")
    le, joint = VARIANTS[variant]
    return EISRConfig(**{**PRESETS[preset], "latent_embedding": le, "joint": joint, **overrides})


def _new_linear(a: int, b: int, std: float, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(a, b, bias=bias)
    nn.init.normal_(layer.weight, 0.0, std)  # §3.2: N(0, 0.01)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class EISR(nn.Module):
    """I_Net and T_Net with an optional latent embedding layer and an optional shared last layer.

    forward(x, t) -> (p_x, p_t): the semantic representations softmax(W φ(x)), softmax(W φ(t)), (B, c).
    """

    def __init__(self, cfg: EISRConfig, backbone: Optional[nn.Module] = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone  # pre-trained, lr_pretrained; None = cached features (default)
        act = [nn.ReLU(), nn.Dropout(cfg.dropout)]
        l, c = cfg.latent_dim, cfg.num_classes
        # T_Net: 4096 -> (l) -> c, ReLU + dropout after each hidden FC (§3.2)
        self.t_fc1 = nn.Sequential(_new_linear(cfg.text_dim, cfg.text_hidden, cfg.init_std), *act)
        if cfg.latent_embedding:
            self.i_fc = nn.Sequential(_new_linear(cfg.image_dim, l, cfg.init_std), nn.ReLU(), nn.Dropout(cfg.dropout))
            self.t_fc = nn.Sequential(_new_linear(cfg.text_hidden, l, cfg.init_std), nn.ReLU(), nn.Dropout(cfg.dropout))
            dim_x, dim_t = l, l
        else:  # O: fc7 -> fc8 and 4096 -> c directly
            self.i_fc = self.t_fc = None
            dim_x, dim_t = cfg.image_dim, cfg.text_hidden
        # the last layer is W φ without a bias, as Eq. 2 writes it
        if cfg.joint:
            self.W = _new_linear(l, c, cfg.init_std, bias=False)  # Eq. 2: one W for both modalities
            self.W_I, self.W_T = self.W, self.W
        else:
            self.W = None
            self.W_I = _new_linear(dim_x, c, cfg.init_std, bias=False)  # Eq. 1: W_I, W_T learned independently
            self.W_T = _new_linear(dim_t, c, cfg.init_std, bias=False)

    def phi_x(self, x: Tensor) -> Tensor:
        """φ(x): the image in the latent embedding space (fc7 itself in variant O)."""
        if self.backbone is not None:
            x = self.backbone(x)
        _check_input(x, self.cfg.image_dim, "image")
        return self.i_fc(x) if self.i_fc is not None else x

    def phi_t(self, t: Tensor) -> Tensor:
        """φ(t): the text in the latent embedding space (T_Net's 4096 layer in variant O)."""
        _check_input(t, self.cfg.text_dim, "text")
        h = self.t_fc1(t)
        return self.t_fc(h) if self.t_fc is not None else h

    def image_logits(self, x: Tensor) -> Tensor:
        return self.W_I(self.phi_x(x))

    def text_logits(self, t: Tensor) -> Tensor:
        return self.W_T(self.phi_t(t))

    def embed_image(self, x: Tensor) -> Tensor:
        """f^(I)(x) = softmax(W φ(x)): the image's semantic representation (B, c)."""
        return torch.softmax(self.image_logits(x), dim=-1)

    def embed_text(self, t: Tensor) -> Tensor:
        """f^(T)(t) = softmax(W φ(t)): the text's semantic representation (B, c)."""
        return torch.softmax(self.text_logits(t), dim=-1)

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.embed_image(x), self.embed_text(t)

    def image_parameters(self) -> list[nn.Parameter]:
        """Every parameter on the image path x -> f^(I)(x)."""
        mods = [m for m in (self.backbone, self.i_fc, self.W_I) if m is not None]
        return [p for m in mods for p in m.parameters()]

    def text_parameters(self) -> list[nn.Parameter]:
        """Every parameter on the text path t -> f^(T)(t)."""
        mods = [m for m in (self.t_fc1, self.t_fc, self.W_T) if m is not None]
        return [p for m in mods for p in m.parameters()]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameter tensors on both paths: [W] in O/LE/J, none in O and O/LE."""
        text = {id(p) for p in self.text_parameters()}
        return [p for p in self.image_parameters() if id(p) in text]

    def param_groups(self) -> list[dict]:
        """Optimiser groups: new layers at lr_new, the backbone (pre-trained) at lr_pretrained (§3.2)."""
        backbone = {id(p) for p in self.backbone.parameters()} if self.backbone is not None else set()
        new = [p for p in self.parameters() if id(p) not in backbone and p.requires_grad]
        groups = [{"params": new, "lr": self.cfg.lr_new}]
        if backbone:
            groups.append({"params": [p for p in self.backbone.parameters() if p.requires_grad],
                           "lr": self.cfg.lr_pretrained})
        return groups


def eisr(preset: str = "paper", variant: str = "O/LE/J", backbone: Optional[nn.Module] = None,
         **overrides) -> EISR:
    """Build EISR or one of its ablations, e.g. ``eisr("small", "O/LE", num_classes=20, latent_dim=128)``."""
    return EISR(eisr_config(preset, variant, **overrides), backbone)


def semantic_loss(p_x: Tensor, p_t: Tensor, y: Tensor, reduction: str = "sum") -> Tensor:
    """Eq. 1 / Eq. 2: Σ_i ‖f^(I)(x_i) − y_i‖² + ‖f^(T)(t_i) − y_i‖² on softmax outputs.

    Eq. 1 and Eq. 2 have the same form; they differ in whether the last layer is shared (the model's
    ``joint`` flag). reduction "sum" is the printed Σ_i over the mini-batch (the default); "mean" divides
    by the batch size (Caffe's EuclideanLoss also halves it; docs/eisr.md). y: (B, c) targets; a multi-label
    post's y is its normalised multi-hot vector (rows sum to 1), which the softmax can reach.
    """
    if p_x.shape != y.shape or p_t.shape != y.shape:
        raise ValueError(f"semantic vectors {tuple(p_x.shape)}, {tuple(p_t.shape)} and targets {tuple(y.shape)} "
                         f"must all be (batch, classes)")
    per_pair = ((p_x - y) ** 2).sum(-1) + ((p_t - y) ** 2).sum(-1)
    if reduction == "sum":
        return per_pair.sum()
    if reduction == "mean":
        return per_pair.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def label_targets(labels: Tensor) -> Tensor:
    """y of Eq. 1-2 from a (B, c) multi-hot label matrix: one-hot stays one-hot, several labels share
    the mass equally (rows sum to 1). A post without any label is an error."""
    labels = labels.float()
    counts = labels.sum(-1, keepdim=True)
    if (counts <= 0).any():
        raise ValueError(f"{int((counts <= 0).sum())} post(s) have no label; EISR needs at least one class per pair")
    return labels / counts


def _check_input(a: Tensor, dim: int, name: str) -> None:
    if a.dim() != 2 or a.shape[1] != dim:
        raise ValueError(f"EISR expects {name} features (B, {dim}), got {tuple(a.shape)}; set "
                         f"{'image_dim' if name == 'image' else 'text_dim'} to the feature size")
