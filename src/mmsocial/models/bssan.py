"""BSSAN: Bi-directional Spatial-Semantic Attention Networks for image-text matching (Huang et al., 2019).

Equation numbers refer to the paper (papers/bssan-image-text-matching.md). The CNNs run once and are
cached: the model takes region grids R (B, D, M), object features O (B, P, Q) and the caption's word
vectors T (B, L, E) with lengths (padding after the last word).

Every (image, caption) pair needs its own forward pass. ``forward`` is the plain path of the paper
(training, and the one-pair reference); ``encode_images`` / ``encode_captions`` / ``pair_scores`` are
the same function reorganised so that whatever depends on one side only is computed once per image
or per caption (region and object projections, BiLSTM states, the word half of the LSTM input),
leaving per pair only the attention, the LSTM recurrence and the MLPs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

VARIANTS = ("bssan", "w2r", "o2w", "no_reg")  # Table II rows BSSAN, BSSAN_w2r, BSSAN_o2w, BSSAN_no_reg
ATTENTION_INITS = ("xavier", "bilinear", "zero", "cross_covariance")


@dataclass
class BSSANConfig:
    """Paper defaults (Table I, §V-B). The variants are flags: ``w2r``/``o2w`` switch a network off
    (BSSAN_o2w / BSSAN_w2r), ``delta = 0`` removes the L2 term (BSSAN_no_reg)."""

    w2r: bool = True  # word-to-regions network (§IV-A)
    o2w: bool = True  # object-to-words network (§IV-B)
    word_dim: int = 300  # E, GloVe 300 (offline: GloVe 6B 50d)
    max_length: int = 30  # words kept per caption (zero padding / truncation)
    num_regions: int = 196  # D, VGG19 conv5_4 14x14 (offline: MobileNetV2 7x7)
    region_dim: int = 512  # M (offline: 1280)
    num_objects: int = 10  # P, top-10 Faster R-CNN proposals (offline: CAM boxes)
    object_dim: int = 4096  # Q, Faster R-CNN fc7 (offline: RoIAlign on the region grid, 1280)
    w2r_lstm: int = 1024  # Table I: W2R LSTM
    w2r_mlp: tuple[int, ...] = (1024, 512, 128)  # Table I: W2R MLP 1024-512-128-1
    o2w_lstm: int = 512  # Table I: O2W Bi-LSTM, B
    o2w_mlp: tuple[int, ...] = (512, 256, 64)  # Table I: O2W MLP 512-256-64-1
    batch_norm: bool = True  # §V-B: tanh MLPs with batch normalisation
    margin: float = 0.2  # M of Eq. 7 and 17 (the paper does not give its value)
    lam: float = 0.6  # λ, Eq. 18 and 19
    delta: float = 0.01  # δ, Eq. 18
    attention_tanh: bool = True  # Eq. 2 and 10: tanh on the bilinear logits; False feeds them to softmax unbounded (not in the paper)
    # W of Eq. 2 / 10 (the paper gives no init): "xavier" (Glorot uniform, Keras's default; the tables' runs) gives
    # logits of std 7 on the standardised 7x7x1280 grid and GloVe 50d, 68% of them where tanh' < 0.07;
    # "bilinear" draws N(0, 1/(rows * cols)): unit-variance logits for unit-variance inputs; "cross_covariance":
    # W = the covariance of the form's two inputs over matched training pairs (``init_attention_from_pairs``,
    # which the trainer calls; until then W is zero), scaled to unit-variance logits (configs/bssan/pointing.yaml)
    attention_init: str = "xavier"
    # Eq. 8: 1/D (W2R) and 1/L (O2W) for negative pairs; "softmax": their learned attention; "both": every
    # negative twice, once each way (not in the paper; train.negatives_from: batch only)
    negative_attention: str = "uniform"
    hinge_reduction: str = "sum"  # Eq. 7 and 17 sum the hinges over the pairs; "mean" averages them
    standardize: bool = True  # regions and objects standardised per channel (training statistics; not in the paper)
    lr: float = 0.01  # SGD, §V-B
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 10

    def __post_init__(self):
        if not (self.w2r or self.o2w):
            raise ValueError("BSSAN needs at least one of the W2R and O2W networks (w2r=True or o2w=True)")
        if self.hinge_reduction not in ("sum", "mean"):
            raise ValueError(f"hinge_reduction must be 'sum' (Eq. 7, 17) or 'mean', got {self.hinge_reduction!r}")
        if self.attention_init not in ATTENTION_INITS:
            raise ValueError(f"attention_init must be one of {ATTENTION_INITS}, got {self.attention_init!r}")
        if self.negative_attention not in ("uniform", "softmax", "both"):
            raise ValueError(f"negative_attention must be 'uniform' (Eq. 8), 'softmax' or 'both', "
                             f"got {self.negative_attention!r}")
        for name in ("word_dim", "max_length", "num_regions", "region_dim", "num_objects", "object_dim",
                     "w2r_lstm", "o2w_lstm", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"BSSANConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.delta < 0 or self.lam < 0 or self.margin < 0:
            raise ValueError("BSSANConfig.delta, lam and margin must be >= 0")
        self.w2r_mlp, self.o2w_mlp = tuple(int(d) for d in self.w2r_mlp), tuple(int(d) for d in self.o2w_mlp)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    "paper": {},
    # CPU-sized, same structure: GloVe 50d, MobileNetV2 7x7x1280 grid, 10 CAM objects x 1280
    "small": dict(word_dim=50, num_regions=49, region_dim=1280, object_dim=1280, w2r_lstm=128,
                  w2r_mlp=(128, 64, 32), o2w_lstm=128, o2w_mlp=(128, 64, 16), batch_size=128, epochs=10),
    "tiny": dict(word_dim=6, max_length=8, num_regions=4, region_dim=5, num_objects=3, object_dim=7,
                 w2r_lstm=8, w2r_mlp=(8, 4), o2w_lstm=6, o2w_mlp=(6, 4), batch_size=8, epochs=2),
}
PRESETS["default"] = PRESETS["paper"]
VARIANT_FLAGS: dict[str, dict] = {"bssan": {}, "w2r": dict(o2w=False), "o2w": dict(w2r=False),
                                  "no_reg": dict(delta=0.0)}


def bssan_config(preset: str = "paper", variant: str = "bssan", **overrides) -> BSSANConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown BSSAN preset {preset!r}; choose one of {tuple(PRESETS)}")
    if variant not in VARIANT_FLAGS:
        raise ValueError(f"unknown BSSAN variant {variant!r}; choose one of {VARIANTS}")
    unknown = set(overrides) - set(BSSANConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown BSSAN config field(s) {sorted(unknown)}; "
                         f"valid fields: {sorted(BSSANConfig.__dataclass_fields__)}")
    return BSSANConfig(**{**PRESETS[preset], **VARIANT_FLAGS[variant], **overrides})


def tanh_mlp(in_dim: int, hidden: tuple[int, ...], batch_norm: bool) -> nn.Sequential:
    """§V-B: Linear (-> BatchNorm) -> tanh for each hidden layer, then a linear score (one output)."""
    layers: list[nn.Module] = []
    for a, b in zip((in_dim, *hidden[:-1]), hidden):
        layers += [nn.Linear(a, b), *([nn.BatchNorm1d(b)] if batch_norm else []), nn.Tanh()]
    layers.append(nn.Linear(hidden[-1] if hidden else in_dim, 1))
    return nn.Sequential(*layers)


def word_mask(lengths: Tensor, max_length: int) -> Tensor:
    """(B, L) True on real words, False on padding."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def _check_lengths(lengths: Tensor, max_length: int) -> None:
    if (lengths < 1).any() or (lengths > max_length).any():
        raise ValueError(f"caption lengths must be in 1..{max_length} (a caption needs at least one word); "
                         f"got min {int(lengths.min())}, max {int(lengths.max())}")


def _init_attention(W: nn.Parameter, init: str) -> None:
    """W of the bilinear form xᵀ W y: "bilinear" = N(0, 1/(rows·cols)), so that xᵀ W y has variance 1 when x
    and y have unit-variance entries (tanh starts in its linear range); "xavier" = Glorot uniform; "zero":
    uniform attention at the start; "cross_covariance": zero until ``BSSAN.init_attention_from_pairs``."""
    if init == "bilinear":
        nn.init.normal_(W, std=(W.shape[0] * W.shape[1]) ** -0.5)
    elif init in ("zero", "cross_covariance"):
        nn.init.zeros_(W)
    else:
        nn.init.xavier_uniform_(W)


def _pair_moments(X: Tensor, x_mask: Tensor, Y: Tensor, y_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sums over every (x, y) of every pair n (x from X[n] (n, a, dx), y from Y[n] (n, b, dy), real where the
    masks say): Σ x yᵀ, Σ x, Σ y and the number of (x, y), for ``init_attention_from_pairs``."""
    xs, ys = (X * x_mask[..., None]).sum(1), (Y * y_mask[..., None]).sum(1)
    na, nb = x_mask.sum(1), y_mask.sum(1)
    return xs.T @ ys, (nb[:, None] * xs).sum(0), (na[:, None] * ys).sum(0), (na * nb).sum()


def _logits(z: Tensor, tanh: bool) -> Tensor:
    """Eq. 2 / 10: tanh of the bilinear form (``attention_tanh: false``: the form itself)."""
    return torch.tanh(z) if tanh else z


class W2RAttention(nn.Module):
    """Eq. 1-3: e_j^k = tanh(t_kᵀ W r_j + b), α^k = softmax_j(e^k), u_k = Σ_j α_j^k r_j."""

    def __init__(self, word_dim: int, region_dim: int, tanh: bool = True, init: str = "xavier"):
        super().__init__()
        self.W = nn.Parameter(torch.empty(word_dim, region_dim))
        self.b = nn.Parameter(torch.zeros(()))
        self.tanh = tanh
        _init_attention(self.W, init)

    def project_regions(self, R: Tensor) -> Tensor:
        """W r_j for every region: (B, D, M) -> (B, D, E); depends on the image only."""
        return R @ self.W.T

    def weights(self, T: Tensor, WR: Tensor, uniform: Tensor | None = None) -> Tensor:
        """α (B, L, D) from words (B, L, E) and projected regions (B, D, E); rows of ``uniform`` get 1/D (Eq. 8)."""
        e = _logits(T @ WR.transpose(1, 2) + self.b, self.tanh)  # Eq. 2
        alpha = torch.softmax(e, dim=-1)  # Eq. 1
        if uniform is not None:
            alpha = torch.where(uniform[:, None, None], torch.full_like(alpha, 1.0 / alpha.shape[-1]), alpha)
        return alpha


class O2WAttention(nn.Module):
    """Eq. 9-11: e_j^k = tanh(o_jᵀ W s_k + b), β_j = softmax_k(e_j) over the real words, u_j = Σ_k β_j^k s_k."""

    def __init__(self, object_dim: int, state_dim: int, tanh: bool = True, init: str = "xavier"):
        super().__init__()
        self.W = nn.Parameter(torch.empty(object_dim, state_dim))
        self.b = nn.Parameter(torch.zeros(()))
        self.tanh = tanh
        _init_attention(self.W, init)

    def project_objects(self, O: Tensor) -> Tensor:
        """o_jᵀ W for every object: (B, P, Q) -> (B, P, B_s); depends on the image only."""
        return O @ self.W

    def weights(self, OW: Tensor, S: Tensor, mask: Tensor, uniform: Tensor | None = None) -> Tensor:
        """β (B, P, L) from projected objects (B, P, B_s), word states (B, L, B_s) and the word mask (B, L).
        Padding gets weight 0; rows of ``uniform`` get 1/length over the real words (Eq. 8 applied to O2W)."""
        e = _logits(OW @ S.transpose(1, 2) + self.b, self.tanh)  # Eq. 10
        e = e.masked_fill(~mask[:, None, :], float("-inf"))
        beta = torch.softmax(e, dim=-1)  # Eq. 9
        if uniform is not None:
            flat = mask[:, None, :].to(beta.dtype) / mask.sum(1).to(beta.dtype)[:, None, None]
            beta = torch.where(uniform[:, None, None], flat.expand_as(beta), beta)
        return beta


class ImageCache(NamedTuple):
    """Per-image terms of the fast path (rows = images), for the model in eval mode."""

    WR: Tensor  # (N, D, E) W r_j of Eq. 2
    RU: Tensor  # (N, D, 4H) region half of the LSTM input projection, gate columns as ``_gate_order``
    OW: Tensor  # (N, P, B) o_jᵀ W of Eq. 10
    OC: Tensor  # (N, P, h1) object half of the O2W MLP's first layer on c_j = [o_j; u_j] (as ``_fold_mlp``)


class CaptionCache(NamedTuple):
    """Per-caption terms of the fast path (rows = captions), for the model in eval mode."""

    T: Tensor  # (C, L, E) word vectors
    lengths: Tensor  # (C,)
    mask: Tensor  # (C, L)
    TX: Tensor  # (C, L, 4H) word half of the LSTM input projection + biases, gate columns as ``_gate_order``
    S: Tensor  # (C, L, B) BiLSTM states (Eq. 9-11)
    SC: Tensor  # (C, L, h1) word-state half of the O2W MLP's first layer + bias (as ``_fold_mlp``)


class _Level(NamedTuple):
    """Depth k of the prefix tree of a caption set: one node per distinct (k+1)-word prefix."""

    rep: Tensor  # (n_k,) a caption (index into the set) through each node
    parent: Tensor  # (n_k,) node at depth k-1 of each node
    end_caps: Tensor  # positions (in the set) of the captions of length k+1
    end_nodes: Tensor  # their node at depth k


def prefix_tree(words: Tensor, lengths: Tensor) -> list[_Level]:
    """The distinct prefixes of a caption set, depth by depth. W2R's LSTM state after word k depends on the
    image and the words 1..k only (Eq. 1-4), so captions that share a prefix share it for every image."""
    w, n_words = words.cpu().numpy(), lengths.cpu().numpy()
    node = np.zeros(len(n_words), dtype=np.int64)
    levels = []
    as_tensor = lambda x: torch.from_numpy(x).to(words.device)  # noqa: E731
    for k in range(int(n_words.max())):
        alive = np.flatnonzero(n_words > k)
        width = int(w[alive, k].max()) + 1
        uniq, first, inverse = np.unique(node[alive] * width + w[alive, k], return_index=True, return_inverse=True)
        node[alive] = inverse.reshape(-1)
        ends = alive[n_words[alive] == k + 1]
        levels.append(_Level(as_tensor(alive[first]), as_tensor(uniq // width), as_tensor(ends), as_tensor(node[ends])))
    return levels


def _fold_mlp(mlp: nn.Sequential) -> list[tuple[Tensor, Tensor, bool]]:
    """An eval-mode tanh MLP as (weight, bias, sigmoid?) per layer, for ``_run_folded``: each batch norm
    folded into the linear layer before it, and tanh(z) = 2σ(2z) - 1 folded into the weights (the 2 into
    this layer, the -1 and the 2 of the output into the next one), since σ costs a fraction of tanh here.
    The same function, in fewer passes over the data."""
    out: list[list] = []
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            out.append([layer.weight, layer.bias, False])
        elif isinstance(layer, nn.BatchNorm1d):
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            w, b, _ = out[-1]
            out[-1] = [w * scale[:, None], (b - layer.running_mean) * scale + layer.bias, False]
        elif isinstance(layer, nn.Tanh):
            out[-1][2] = True
    folded, previous = [], False
    for w, b, act in out:
        if previous:  # the input is σ(·) = (tanh(·) + 1) / 2
            w, b = 2 * w, b - w.sum(1)
        if act:
            w, b = 2 * w, 2 * b
        folded.append((w, b, act))
        previous = act
    return folded


def _run_folded(layers, x: Tensor) -> Tensor:
    for w, b, act in layers:
        x = torch.addmm(b, x, w.T)
        if act:
            x = x.sigmoid_()
    return x


def _gate_order(x: Tensor, hidden: int) -> Tensor:
    """PyTorch's LSTM gate rows (i, f, g, o) reordered to (i, f, o, g), the g rows doubled: one σ over all
    four gives i, f, o and σ(2 z_g) = (tanh(z_g) + 1) / 2."""
    i, f, g, o = x.split(hidden, dim=0)
    return torch.cat([i, f, o, 2 * g])


class W2R(nn.Module):
    """Eq. 1-6: attention per word over the regions, c_k = [u_k; t_k] into an LSTM, MLP on its last state."""

    def __init__(self, cfg: BSSANConfig):
        super().__init__()
        self.attention = W2RAttention(cfg.word_dim, cfg.region_dim, cfg.attention_tanh, cfg.attention_init)
        self.lstm = nn.LSTM(cfg.region_dim + cfg.word_dim, cfg.w2r_lstm, batch_first=True)
        self.mlp = tanh_mlp(cfg.w2r_lstm, cfg.w2r_mlp, cfg.batch_norm)
        self.region_dim = cfg.region_dim

    def forward(self, R: Tensor, T: Tensor, lengths: Tensor, uniform: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha = self.attention.weights(T, self.attention.project_regions(R), uniform)  # Eq. 1-2, 8
        U = alpha @ R  # Eq. 3: (B, L, M)
        c = torch.cat([U, T], dim=-1)  # c_k = [u_k; t_k]
        packed = nn.utils.rnn.pack_padded_sequence(c, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # the state after the caption's last word
        return self.mlp(h[-1]).squeeze(-1), alpha  # Eq. 5-6: Y_i

    def lstm_input_split(self) -> tuple[Tensor, Tensor, Tensor]:
        """W_ih = [W_u | W_t] (the input is [u; t]) and b = b_ih + b_hh."""
        w = self.lstm.weight_ih_l0
        return w[:, : self.region_dim], w[:, self.region_dim:], self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0


class O2W(nn.Module):
    """Eq. 9-16: BiLSTM word states (average merge), attention per object over the words,
    c_j = [o_j; u_j] into an MLP, mean over the objects."""

    def __init__(self, cfg: BSSANConfig):
        super().__init__()
        self.bilstm = nn.LSTM(cfg.word_dim, cfg.o2w_lstm, batch_first=True, bidirectional=True)
        self.attention = O2WAttention(cfg.object_dim, cfg.o2w_lstm, cfg.attention_tanh, cfg.attention_init)
        self.mlp = tanh_mlp(cfg.object_dim + cfg.o2w_lstm, cfg.o2w_mlp, cfg.batch_norm)
        self.object_dim, self.max_length = cfg.object_dim, cfg.max_length

    def states(self, T: Tensor, lengths: Tensor) -> Tensor:
        """S (B, L, B_s): the average of the forward and backward states; zero on padding."""
        packed = nn.utils.rnn.pack_padded_sequence(T, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.bilstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T.shape[1])
        fwd, bwd = out.chunk(2, dim=-1)
        return (fwd + bwd) / 2

    def forward(self, O: Tensor, T: Tensor, lengths: Tensor, uniform: Tensor | None = None) -> tuple[Tensor, Tensor]:
        S = self.states(T, lengths)
        beta = self.attention.weights(self.attention.project_objects(O), S, word_mask(lengths, T.shape[1]),
                                      uniform)  # Eq. 9-10, 8
        U = beta @ S  # Eq. 11: (B, P, B_s)
        c = torch.cat([O, U], dim=-1)  # c_j = [o_j; u_j]
        y = self.mlp(c.flatten(0, 1)).view(len(O), -1)  # Eq. 13: y'_j
        return y.mean(1), beta  # Eq. 14: Y'_i


class BSSAN(nn.Module):
    """Eq. 19: MS(V, T) = f_w2r(V, T) + λ f_o2w(V, T); a variant without one network drops its term.

    Regions and objects are standardised per channel with statistics kept in the model (buffers
    ``region_mean``/``region_std``, ``object_mean``/``object_std``; identity until
    ``set_input_statistics`` is called with training features; a deviation, see docs/bssan.md)."""

    def __init__(self, cfg: BSSANConfig):
        super().__init__()
        self.cfg = cfg
        self.w2r = W2R(cfg) if cfg.w2r else None
        self.o2w = O2W(cfg) if cfg.o2w else None
        self.register_buffer("region_mean", torch.zeros(cfg.region_dim))
        self.register_buffer("region_std", torch.ones(cfg.region_dim))
        self.register_buffer("object_mean", torch.zeros(cfg.object_dim))
        self.register_buffer("object_std", torch.ones(cfg.object_dim))
        self._memo: dict[str, tuple] = {}
        self.share_prefixes = True  # fast path: one W2R recurrence per distinct caption prefix (False: per caption)
        self._attention_ready = cfg.attention_init != "cross_covariance"  # W checked once (a host sync on GPU)

    def set_input_statistics(self, R: Tensor, O: Tensor) -> None:
        """Per-channel mean and std of regions (N, D, M) and objects (N, P, Q), e.g. of the training images."""
        with torch.no_grad():
            for name, X, dim in (("region", R, self.cfg.region_dim), ("object", O, self.cfg.object_dim)):
                if X.dim() != 3 or X.shape[2] != dim:
                    raise ValueError(f"set_input_statistics: {name}s must be (N, ·, {dim}), got {tuple(X.shape)}")
                var, mean = torch.var_mean(X.reshape(-1, dim).float(), dim=0)
                getattr(self, f"{name}_mean").copy_(mean)
                getattr(self, f"{name}_std").copy_(var.sqrt().clamp_min(1e-6))

    @torch.no_grad()
    def init_attention_from_pairs(self, batches) -> None:
        """``attention_init: cross_covariance`` (not in the paper): W of Eq. 2 (W2R) and of Eq. 10 (O2W) set to
        the covariance of the bilinear form's two inputs over every (word, region) and every (object, word
        state) of the matched training pairs, scaled so that the logits of the first batch have standard
        deviation 1. The form then starts as the word's co-occurrence score with each region: a word's
        logits are high on regions that look like the images its captions come with, i.e. on the object it
        names (W is the gradient of the form's mean over the centred (x, y) of matched pairs). ``batches``
        yields (R, O, T, lengths) of matched pairs, raw features (standardised here as in ``forward``);
        O2W's word states are those of the BiLSTM as initialised."""
        nets = [net for net in (self.w2r, self.o2w) if net is not None]
        moments, first = [None] * len(nets), None
        for R, O, T, lengths in batches:
            self._check(R, O, T, lengths)
            R, O = self.standardize(R, O)
            mask = word_mask(lengths, T.shape[1]).to(T.dtype)
            items = []
            if self.w2r is not None:
                items.append((T, mask, R, R.new_ones(R.shape[:2])))
            if self.o2w is not None:
                items.append((O, O.new_ones(O.shape[:2]), self.o2w.states(T, lengths), mask))
            first = first or items
            moments = [_pair_moments(*it) if m is None else tuple(a + b for a, b in zip(m, _pair_moments(*it)))
                       for m, it in zip(moments, items)]
        if first is None:
            raise ValueError("init_attention_from_pairs: no training pairs")
        for net, (sxy, sx, sy, n), (X, x_mask, Y, y_mask) in zip(nets, moments, first):
            C = sxy / n - torch.outer(sx / n, sy / n)
            z = torch.einsum("nax,xy,nby->nab", X, C, Y)[(x_mask[:, :, None] * y_mask[:, None, :]) > 0]
            if not torch.isfinite(C).all() or z.std() == 0:
                raise ValueError("init_attention_from_pairs: the inputs do not vary together (constant features?)")
            net.attention.W.copy_(C / z.std())

    def _require_attention_init(self) -> None:
        if self._attention_ready or not self.training:
            return
        if not any(bool(net.attention.W.any()) for net in (self.w2r, self.o2w) if net is not None):
            raise RuntimeError("attention_init: cross_covariance: call BSSAN.init_attention_from_pairs with training "
                               "pairs before training (W is still zero)")
        self._attention_ready = True  # W is non-zero: initialised from the pairs, or loaded from a checkpoint

    def standardize(self, R: Tensor, O: Tensor) -> tuple[Tensor, Tensor]:
        R = (R - self.region_mean) / self.region_std if self.w2r is not None else R
        O = (O - self.object_mean) / self.object_std if self.o2w is not None else O
        return R, O

    # ------------------------------------------------------------------ the paper's path
    def forward(self, R: Tensor, O: Tensor, T: Tensor, lengths: Tensor,
                uniform: Tensor | None = None, all_pairs: bool = False) -> dict[str, Tensor]:
        """Scores of the pairs (R_i, O_i, T_i): dict with f_w2r, f_o2w (absent network: zeros), score
        (Eq. 19), alpha (B, L, D) and beta (B, P, L) (absent network: None). ``uniform`` (B,) bool marks
        the negative pairs of training, which get uniform attention (Eq. 8). ``all_pairs``: every image
        with every caption instead, as ``grid`` (``uniform`` then (B_images, B_captions))."""
        if all_pairs:
            return self.grid(R, O, T, lengths, negative=uniform)
        self._check(R, O, T, lengths)
        self._require_attention_init()
        if uniform is not None and self.cfg.negative_attention == "softmax":
            uniform = None
        R, O = self.standardize(R, O)
        zeros = T.new_zeros(len(T))
        f_w2r, alpha = self.w2r(R, T, lengths, uniform) if self.w2r is not None else (zeros, None)
        f_o2w, beta = self.o2w(O, T, lengths, uniform) if self.o2w is not None else (zeros, None)
        return {"f_w2r": f_w2r, "f_o2w": f_o2w, "score": f_w2r + self.cfg.lam * f_o2w,
                "alpha": alpha, "beta": beta}

    def grid(self, R: Tensor, O: Tensor, T: Tensor, lengths: Tensor,
             negative: Tensor | None = None) -> dict[str, Tensor]:
        """Scores of every pair (image i, caption c) of Bi images (R, O) x Bc captions (T, lengths), for
        training with all the negatives of a batch: dict with f_w2r, f_o2w and score (Eq. 19), each (Bi, Bc).

        The same function as ``forward`` on each pair, with what depends on one side only computed once per
        image (W r_j, the region half of the LSTM input projection, o_jᵀ W, the object half of the O2W MLP's
        first layer) or once per caption (the word half, the BiLSTM states): u_k is never formed, since
        W_ihᵘ u_k = Σ_j α_j^k (W_ihᵘ r_j). Differentiable; in training mode the batch norms see all Bi·Bc
        pairs, as ``forward`` on the flattened grid would. ``negative`` (Bi, Bc) bool marks the pairs that
        get Eq. 8's uniform attention (ignored with ``negative_attention: softmax``)."""
        self._check(R, O, T, lengths)
        if negative is not None and negative.shape != (len(R), len(T)):
            raise ValueError(f"grid: negative must be ({len(R)}, {len(T)}), got {tuple(negative.shape)}")
        self._require_attention_init()
        if self.cfg.negative_attention == "softmax":
            negative = None
        R, O = self.standardize(R, O)
        zeros = T.new_zeros(len(R), len(T))
        f_w2r = self._w2r_grid(R, T, lengths, negative) if self.w2r is not None else zeros
        f_o2w = self._o2w_grid(O, T, lengths, negative) if self.o2w is not None else zeros
        return {"f_w2r": f_w2r, "f_o2w": f_o2w, "score": f_w2r + self.cfg.lam * f_o2w}

    def _w2r_grid(self, R: Tensor, T: Tensor, lengths: Tensor, negative: Tensor | None) -> Tensor:
        w2r, H = self.w2r, self.cfg.w2r_lstm
        Bi, Bc, L = len(R), len(T), T.shape[1]
        w_u, w_t, b = w2r.lstm_input_split()
        WR = w2r.attention.project_regions(R)  # (Bi, D, E)
        e = _logits(torch.einsum("cle,ide->icld", T, WR) + w2r.attention.b, w2r.attention.tanh)  # Eq. 2
        alpha = torch.softmax(e, dim=-1)  # Eq. 1: (Bi, Bc, L, D)
        if negative is not None:  # Eq. 8
            alpha = torch.where(negative[:, :, None, None], torch.full_like(alpha, 1.0 / alpha.shape[-1]), alpha)
        X = torch.einsum("icld,idg->iclg", alpha, R @ w_u.T) + (T @ w_t.T + b)  # W_ih [u_k; t_k] + b (Eq. 3)
        steps = X.reshape(Bi * Bc, L, 4 * H).unbind(1)  # one backward for all steps (indexing: one per step)
        w_hh = w2r.lstm.weight_hh_l0.T
        last_step = (lengths - 1).repeat(Bi)  # the state after the caption's last word
        h = c = None
        last = X.new_zeros(Bi * Bc, H)
        for k in range(int(lengths.max())):
            gates = steps[k] if h is None else steps[k] + h @ w_hh
            i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order
            c = torch.sigmoid(i) * torch.tanh(g) if c is None else torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            last = torch.where((last_step == k)[:, None], h, last)
        return w2r.mlp(last).view(Bi, Bc)  # Eq. 5-6

    def _o2w_grid(self, O: Tensor, T: Tensor, lengths: Tensor, negative: Tensor | None) -> Tensor:
        o2w, Q = self.o2w, self.cfg.object_dim
        Bi, Bc, P, L = len(O), len(T), O.shape[1], T.shape[1]
        S = o2w.states(T, lengths)  # (Bc, L, B_s), once per caption
        mask = word_mask(lengths, L)
        e = _logits(torch.einsum("ipb,clb->icpl", o2w.attention.project_objects(O), S) + o2w.attention.b,
                    o2w.attention.tanh)
        beta = torch.softmax(e.masked_fill(~mask[None, :, None, :], float("-inf")), dim=-1)  # Eq. 9-10
        if negative is not None:  # Eq. 8 applied to O2W
            flat = (mask.to(beta.dtype) / lengths.to(beta.dtype)[:, None])[None, :, None, :]
            beta = torch.where(negative[:, :, None, None], flat.expand_as(beta), beta)
        first_layer = o2w.mlp[0]  # on c_j = [o_j; u_j], u_j = Σ_k β_j^k s_k (Eq. 11): split into its halves
        w_o, w_s = first_layer.weight[:, :Q], first_layer.weight[:, Q:]
        z = torch.einsum("icpl,clh->icph", beta, S @ w_s.T) + (O @ w_o.T + first_layer.bias)[:, None]
        y = o2w.mlp[1:](z.reshape(Bi * Bc * P, -1)).view(Bi, Bc, P)  # Eq. 13
        return y.mean(-1)  # Eq. 14

    # ------------------------------------------------------------------ the fast path (same function)
    def _eval_only(self) -> None:
        if self.training:
            raise RuntimeError("BSSAN's fast path (encode_images / encode_captions / pair_scores) folds the "
                               "batch norms' running statistics in: call model.eval() first")

    def encode_images(self, R: Tensor, O: Tensor) -> ImageCache:
        """Everything of Eq. 1-19 that depends on the image only, once per image."""
        self._eval_only()
        R, O = self.standardize(R, O)
        empty = R.new_zeros(len(R), 0, 0)
        WR = RU = OW = OC = empty
        if self.w2r is not None:
            w_u, _, _ = self.w2r.lstm_input_split()
            WR, RU = self.w2r.attention.project_regions(R), R @ _gate_order(w_u, self.cfg.w2r_lstm).T
        if self.o2w is not None:
            w1, _, _ = _fold_mlp(self.o2w.mlp)[0]
            OW, OC = self.o2w.attention.project_objects(O), O @ w1[:, : self.cfg.object_dim].T
        return ImageCache(WR, RU, OW, OC)

    def encode_captions(self, T: Tensor, lengths: Tensor) -> CaptionCache:
        """Everything that depends on the caption only, once per caption (BiLSTM states included)."""
        self._eval_only()
        _check_lengths(lengths, T.shape[1])
        mask = word_mask(lengths, T.shape[1])
        empty = T.new_zeros(len(T), 0, 0)
        TX = S = SC = empty
        if self.w2r is not None:
            _, w_t, b = self.w2r.lstm_input_split()
            H = self.cfg.w2r_lstm
            TX = T @ _gate_order(w_t, H).T + _gate_order(b, H)
        if self.o2w is not None:
            w1, b1, _ = _fold_mlp(self.o2w.mlp)[0]
            S = self.o2w.states(T, lengths)
            SC = S @ w1[:, self.cfg.object_dim:].T + b1
        return CaptionCache(T, lengths, mask, TX, S, SC)

    def pair_scores(self, images: ImageCache, captions: CaptionCache, image_idx: Tensor, caption_idx: Tensor,
                    return_parts: bool = False):
        """Eq. 19 for the pairs (images[image_idx[n]], captions[caption_idx[n]]) from the caches.

        Equals ``forward`` on the same pairs (eval mode) up to float rounding. When every image of the call
        has the same captions (a block of the full score matrix) the block is scored at once
        (``score_block``); otherwise W2R runs image by image and O2W caption by caption, so pass long
        pair lists (the two-stage mode passes all its pairs at once).
        """
        self._eval_only()
        image_idx, caption_idx = image_idx.long(), caption_idx.long()
        n_cap = len(captions.lengths) + 1
        order = torch.argsort(image_idx * n_cap + caption_idx)
        img, cap = image_idx[order], caption_idx[order]
        uniq, counts = torch.unique_consecutive(img, return_counts=True)
        parts = captions.T.new_zeros(3, len(img))
        groups = cap.view(len(uniq), -1) if bool((counts == counts[0]).all()) else None
        if groups is not None and bool((groups == groups[:1]).all()):  # a block: every image, the same captions
            parts[:] = self.score_block(images, captions, uniq, groups[0]).flatten(1)
        else:  # W2R image by image (its region terms); O2W by caption (many objects in one product) or by image
            if self.w2r is not None:
                parts[1] = self._w2r_pairs(images, captions, img, cap, uniq, counts)
            if self.o2w is not None:
                layers = _fold_mlp(self.o2w.mlp)  # once for the many calls below
                by_cap = torch.argsort(cap * n_cap + img)
                c_uniq, c_counts = torch.unique_consecutive(cap[by_cap], return_counts=True)
                if len(c_uniq) < len(uniq):  # fewer captions than images: caption by caption
                    f, a = torch.empty_like(parts[2]), 0
                    for c, m in zip(c_uniq.tolist(), c_counts.tolist()):
                        f[a:a + m] = self._o2w_block(images, captions, img[by_cap[a:a + m]], c_uniq.new_tensor([c]),
                                                     layers)[:, 0]
                        a += m
                    parts[2, by_cap] = f
                else:
                    a = 0
                    for i, m in zip(uniq.tolist(), counts.tolist()):
                        parts[2, a:a + m] = self._o2w_block(images, captions, uniq.new_tensor([i]), cap[a:a + m],
                                                            layers)[0]
                        a += m
            parts[0] = parts[1] + self.cfg.lam * parts[2]  # Eq. 19
        out = torch.empty_like(parts).index_copy_(1, order, parts)
        return (out[0], out[1], out[2]) if return_parts else out[0]

    def score_block(self, images: ImageCache, captions: CaptionCache, image_rows: Tensor,
                    caption_rows: Tensor) -> Tensor:
        """(3, G, n): score (Eq. 19), f_w2r and f_o2w of every pair of G images x n captions."""
        self._eval_only()
        G, n = len(image_rows), len(caption_rows)
        zeros = captions.T.new_zeros(G, n)
        f_w2r = self._w2r_block(images, captions, image_rows, caption_rows) if self.w2r is not None else zeros
        f_o2w = self._o2w_block(images, captions, image_rows, caption_rows) if self.o2w is not None else zeros
        return torch.stack([f_w2r + self.cfg.lam * f_o2w, f_w2r, f_o2w])  # Eq. 19

    def _tree(self, captions: CaptionCache, caption_rows: Tensor) -> list[tuple[_Level, Tensor, Tensor]]:
        """The prefix tree of the captions ``caption_rows`` with each node's word vector and word half of the
        LSTM input (gathered once). The last tree is kept: a score matrix asks for the same captions image
        block after image block. Words are told apart by their vectors."""
        ids = self._word_ids(captions)
        if not self.share_prefixes:  # every caption its own first word, hence its own path
            ids = ids.clone()
            ids[:, 0] = torch.arange(len(ids))
        key = (self.share_prefixes, caption_rows.cpu().numpy().tobytes())
        tree = self._memo.get("tree")
        if tree is None or tree[0] is not captions.T or tree[1] != key:
            levels = prefix_tree(ids[caption_rows], captions.lengths[caption_rows])
            nodes = [(level, captions.T[caption_rows[level.rep], k].T.contiguous(),
                      captions.TX[caption_rows[level.rep], k]) for k, level in enumerate(levels)]
            tree = self._memo["tree"] = (captions.T, key, nodes)
        return tree[2]

    def _w2r_block(self, images: ImageCache, captions: CaptionCache, image_rows: Tensor,
                   caption_rows: Tensor) -> Tensor:
        """f_w2r (G, n), Eq. 1-6: the LSTM runs once per (image, distinct caption prefix)."""
        H, G, n = self.cfg.w2r_lstm, len(image_rows), len(caption_rows)
        WR = images.WR[image_rows]  # (G, D, E)
        D = WR.shape[1]
        WR2 = WR.reshape(G * D, -1)
        RU = images.RU[image_rows]  # (G, D, 4H)
        w_hh = _gate_order(self.w2r.lstm.weight_hh_l0, H).T  # (H, 4H)
        scale = 2 if self.cfg.attention_tanh else 1  # tanh(z) = 2σ(2z) - 1, and softmax ignores the -1
        WR2, b2 = scale * WR2, scale * self.w2r.attention.b
        last = WR.new_empty(G, n, H)
        h = c2 = None
        for level, Tk, TXk in self._tree(captions, caption_rows):
            e = torch.addmm(b2, WR2, Tk).view(G, D, -1)  # 2 (t_kᵀ W r_j + b) for every region and node
            alpha = torch.softmax(self._fast_logits(e), dim=1)  # Eq. 1-2, over the D regions
            gates = torch.baddbmm(TXk, alpha.transpose(1, 2), RU)  # W_ih [u_k; t_k] + b (Eq. 3)
            if h is not None:
                hp, cp = h.index_select(1, level.parent), c2.index_select(1, level.parent)
                gates.view(-1, 4 * H).addmm_(hp.view(-1, H), w_hh)
            i, f, o, g2 = gates.sigmoid_().split(H, dim=-1)
            g2 = g2.mul_(4).sub_(2)  # 2 tanh(z_g)
            c2 = i * g2 if h is None else torch.addcmul(i * g2, f, cp)  # 2 c_k
            h = torch.sigmoid(c2).mul_(2).sub_(1).mul_(o)  # o tanh(c_k)
            if len(level.end_caps):
                last[:, level.end_caps] = h[:, level.end_nodes]
        return _run_folded(_fold_mlp(self.w2r.mlp), last.view(G * n, H)).view(G, n)  # Eq. 5-6

    def _fast_logits(self, e2: Tensor) -> Tensor:
        """Eq. 2 / 10 from 2z (in place): tanh(z) + 1 = 2σ(2z), up to a constant that softmax ignores; or z
        itself (``attention_tanh: false``, given z)."""
        return e2.sigmoid_().mul_(2) if self.cfg.attention_tanh else e2

    def _word_ids(self, captions: CaptionCache) -> Tensor:
        """(C, L) ids, equal exactly where the word vectors are equal (kept for the last caption cache)."""
        words = self._memo.get("words")
        if words is None or words[0] is not captions.T:  # the memo holds the cache itself: `is` cannot be fooled
            T = captions.T
            ids = torch.unique(T.reshape(-1, T.shape[-1]), dim=0, return_inverse=True)[1].view(T.shape[:2])
            words = self._memo["words"] = (T, ids)
        return words[1]

    def _w2r_pairs(self, images: ImageCache, captions: CaptionCache, img: Tensor, cap: Tensor, uniq: Tensor,
                   counts: Tensor, group_pairs: int = 8192) -> Tensor:
        """f_w2r of an arbitrary pair list (sorted by image; ``uniq``/``counts`` its images): images with
        similar numbers of pairs are taken together, each with its own captions (``_w2r_ragged``)."""
        out = captions.T.new_empty(len(img))
        starts = torch.cumsum(counts, 0) - counts
        by_size = torch.argsort(counts, stable=True).tolist()
        group: list[int] = []
        for u in by_size + [None]:
            size = sum(int(counts[g]) for g in group)
            if group and (u is None or size + int(counts[u]) > group_pairs):
                rows = torch.cat([torch.arange(int(starts[g]), int(starts[g] + counts[g])) for g in group])
                slots = torch.repeat_interleave(torch.arange(len(group)), counts[group])
                out[rows] = self._w2r_ragged(images, captions, uniq[group], slots, cap[rows])
                group = []
            if u is not None:
                group.append(u)
        return out

    def _w2r_ragged(self, images: ImageCache, captions: CaptionCache, image_rows: Tensor, slots: Tensor,
                    cap: Tensor, chunk: int = 8) -> Tensor:
        """f_w2r (n,) of the pairs (image_rows[slots[p]], cap[p]), ``slots`` non-decreasing: as ``_w2r_block``
        over the prefix tree of the (image, caption) pairs. The image-dependent products (attention and the
        region half of the LSTM input) run ``chunk`` consecutive images at a time (``_w2r_pairs`` orders them
        by their number of pairs), each image's nodes padded to the widest of its chunk at that level; the
        recurrence and the gates on the level's real nodes only."""
        H, G = self.cfg.w2r_lstm, len(image_rows)
        ids = self._word_ids(captions)[cap].clone()
        first = ids[:, 0] if self.share_prefixes else torch.arange(len(cap))
        ids[:, 0] = slots * (int(first.max()) + 1) + first  # the image is part of every prefix
        levels = prefix_tree(ids, captions.lengths[cap])
        WR = images.WR[image_rows]
        E = WR.shape[2]
        scale = 2 if self.cfg.attention_tanh else 1  # as in _w2r_block
        WR2, b2 = scale * WR, scale * self.w2r.attention.b
        RU = images.RU[image_rows]
        w_hh = _gate_order(self.w2r.lstm.weight_hh_l0, H).T
        last = WR.new_empty(len(cap), H)
        h = c2 = None
        for k, level in enumerate(levels):  # nodes of a level are sorted by slot (the image is the first key)
            slot = slots[level.rep]
            width = torch.bincount(slot, minlength=G)
            rank = torch.arange(len(slot)) - (torch.cumsum(width, 0) - width)[slot]  # node's rank in its image
            m_c = torch.nn.functional.pad(width, (0, -G % chunk)).view(-1, chunk).amax(1)  # widest of each chunk
            n_c = torch.full_like(m_c, chunk)
            n_c[-1] = G - chunk * (len(m_c) - 1)
            size = n_c * m_c
            base = torch.cumsum(size, 0) - size
            c_of = slot // chunk
            pos = base[c_of] + (slot % chunk) * m_c[c_of] + rank  # each node's row in the padded chunks
            rows = cap[level.rep]
            Tn = WR.new_zeros(int(size.sum()), E).index_copy_(0, pos, captions.T[rows, k])
            U = WR.new_empty(int(size.sum()), 4 * H)
            for j, (m, g, a) in enumerate(zip(m_c.tolist(), n_c.tolist(), base.tolist())):
                if m == 0:  # no node of these images at this level
                    continue
                sl = slice(j * chunk, j * chunk + g)
                e = torch.baddbmm(b2, WR2[sl], Tn[a:a + g * m].view(g, m, E).transpose(1, 2))  # (g, D, m)
                alpha = torch.softmax(self._fast_logits(e), dim=1)  # Eq. 1-2
                torch.bmm(alpha.transpose(1, 2), RU[sl], out=U[a:a + g * m].view(g, m, 4 * H))  # W_ihᵘ u_k
            gates = U.index_select(0, pos).add_(captions.TX[rows, k])  # + W_ihᵗ t_k + b (Eq. 3), real nodes
            if h is not None:
                hp, cp = h.index_select(0, level.parent), c2.index_select(0, level.parent)
                gates.addmm_(hp, w_hh)
            i, f, o, g2 = gates.sigmoid_().split(H, dim=-1)
            g2 = g2.mul_(4).sub_(2)
            c2 = i * g2 if h is None else torch.addcmul(i * g2, f, cp)
            h = torch.sigmoid(c2).mul_(2).sub_(1).mul_(o)
            if len(level.end_caps):
                last[level.end_caps] = h[level.end_nodes]
        return _run_folded(_fold_mlp(self.w2r.mlp), last).view(-1)  # Eq. 5-6

    def _o2w_block(self, images: ImageCache, captions: CaptionCache, image_rows: Tensor,
                   caption_rows: Tensor, layers: list | None = None) -> Tensor:
        """f_o2w (G, n), Eq. 9-14, caption-major: one product gives every object's logits over every word."""
        G, n = len(image_rows), len(caption_rows)
        L = int(captions.lengths[caption_rows].max())
        contiguous = n == 1 or bool((caption_rows.diff() == 1).all())
        sl = slice(int(caption_rows[0]), int(caption_rows[0]) + n) if contiguous else caption_rows
        S, SC, mask = captions.S[sl, :L], captions.SC[sl, :L], captions.mask[sl, :L]
        OW = images.OW[image_rows].reshape(-1, images.OW.shape[-1])  # (G·P, B)
        P = images.OW.shape[1]
        scale = 2 if self.cfg.attention_tanh else 1
        e = torch.addmm(scale * self.o2w.attention.b, S.reshape(-1, S.shape[-1]), scale * OW.T).view(n, L, G * P)
        e = self._fast_logits(e)  # Eq. 10
        beta = torch.softmax(e.masked_fill_(~mask[:, :, None], float("-inf")), dim=1)  # Eq. 9, over the words
        first = torch.bmm(beta.transpose(1, 2), SC)  # layer 1 on u_j = Σ_k β s_k (Eq. 11, 13), word half
        first += images.OC[image_rows].reshape(1, G * P, -1)  # ... and its object half
        layers = layers if layers is not None else _fold_mlp(self.o2w.mlp)
        x = first.sigmoid_() if layers[0][2] else first
        y = _run_folded(layers[1:], x.view(n * G * P, -1)).view(n, G, P)  # Eq. 13
        return y.mean(2).T  # Eq. 14

    def _check(self, R: Tensor, O: Tensor, T: Tensor, lengths: Tensor) -> None:
        cfg = self.cfg
        if cfg.w2r and (R.dim() != 3 or R.shape[1:] != (cfg.num_regions, cfg.region_dim)):
            raise ValueError(f"BSSAN expects region grids (B, {cfg.num_regions}, {cfg.region_dim}), got "
                             f"{tuple(R.shape)}; set num_regions and region_dim to the feature store's grid")
        if cfg.o2w and (O.dim() != 3 or O.shape[1:] != (cfg.num_objects, cfg.object_dim)):
            raise ValueError(f"BSSAN expects objects (B, {cfg.num_objects}, {cfg.object_dim}), got "
                             f"{tuple(O.shape)}; set num_objects and object_dim to the feature store's")
        if T.dim() != 3 or T.shape[2] != cfg.word_dim or T.shape[1] > cfg.max_length:
            raise ValueError(f"BSSAN expects word vectors (B, <= {cfg.max_length}, {cfg.word_dim}), got {tuple(T.shape)}")
        _check_lengths(lengths, T.shape[1])


def bssan(preset: str = "paper", variant: str = "bssan", **overrides) -> BSSAN:
    """Build BSSAN or one of its variants, e.g. ``bssan("small", "w2r")`` for BSSAN_w2r."""
    return BSSAN(bssan_config(preset, variant, **overrides))


def l2_penalty(model: nn.Module) -> Tensor:
    """L_reg of Eq. 18: the sum of squared weights (matrices of Linear, LSTM and attention W; no biases,
    no batch-norm parameters)."""
    terms = [p.pow(2).sum() for name, p in model.named_parameters()
             if p.requires_grad and p.dim() >= 2]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class BSSANLoss(nn.Module):
    """Eq. 18: L = L1 (Eq. 7) + λ L2 (Eq. 17) + δ L_reg, with hinge ranking losses
    max(0, M - Y_i + Y_i^-) summed over the pairs of the batch as in the paper (``hinge_reduction: mean``
    averages them, which makes δ L_reg weigh batch-size times more). A variant without one network
    drops its term."""

    def __init__(self, cfg: BSSANConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, model: BSSAN, positive: dict[str, Tensor], negative: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        zero = positive["score"].new_zeros(())
        reduce = torch.sum if cfg.hinge_reduction == "sum" else torch.mean
        l1 = reduce((cfg.margin - positive["f_w2r"] + negative["f_w2r"]).clamp_min(0)) if cfg.w2r else zero  # Eq. 7
        l2 = reduce((cfg.margin - positive["f_o2w"] + negative["f_o2w"]).clamp_min(0)) if cfg.o2w else zero  # Eq. 17
        reg = l2_penalty(model) if cfg.delta > 0 else zero
        loss = l1 + cfg.lam * l2 + cfg.delta * reg
        return {"loss": loss, "l1": l1.detach(), "l2": l2.detach(), "reg": reg.detach()}

    def in_batch(self, model: BSSAN, grid: dict[str, Tensor] | list[dict[str, Tensor]], images: Tensor,
                 both: bool = False) -> dict[str, Tensor]:
        """Eq. 18 with the negatives of Eq. 7/17 taken from the batch (not in the paper): ``grid`` scores B
        captions (columns) against their B images (rows, ``images`` the image id of each; pair (i, i) is
        positive). For image i every caption of another image in the batch is a T_i^-, and its hinge
        max(0, M - Y_i + Y_i^-) is averaged over them: the expectation of Eq. 7's hinge over a uniformly drawn
        T_i^-, estimated with all B - 1 negatives instead of one draw. ``both``: also every other image for
        each caption (the text->image direction Eq. 7 lacks). The terms are then reduced over the positives
        as ``hinge_reduction`` says. A list of grids (``negative_attention: both``: the batch scored with
        Eq. 8's uniform attention on the negatives and with their learned attention) averages each
        positive's hinge over the negatives of every grid, each grid against its own diagonal."""
        cfg = self.cfg
        B = len(images)
        grids = grid if isinstance(grid, list) else [grid]
        if any(v.shape != (B, B) for g in grids for k, v in g.items() if k in ("f_w2r", "f_o2w")):
            raise ValueError(f"in_batch: the grid must be ({B}, {B}), one caption per image row")
        negative = (images[:, None] != images[None, :]).to(grids[0]["score"].dtype)
        zero = grids[0]["score"].new_zeros(())
        reduce = torch.sum if cfg.hinge_reduction == "sum" else torch.mean

        def ranking(key: str) -> Tensor:
            # per grid, the hinge of every (positive, negative) pair against the positive of its row / column
            rows = sum(((cfg.margin - g[key].diagonal()[:, None] + g[key]).clamp_min(0) * negative).sum(1)
                       for g in grids)
            terms = [rows / (len(grids) * negative.sum(1).clamp_min(1))]
            if both:
                cols = sum(((cfg.margin - g[key].diagonal()[None, :] + g[key]).clamp_min(0) * negative).sum(0)
                           for g in grids)
                terms.append(cols / (len(grids) * negative.sum(0).clamp_min(1)))
            return reduce(torch.cat(terms))

        l1 = ranking("f_w2r") if cfg.w2r else zero  # Eq. 7
        l2 = ranking("f_o2w") if cfg.o2w else zero  # Eq. 17
        reg = l2_penalty(model) if cfg.delta > 0 else zero
        return {"loss": l1 + cfg.lam * l2 + cfg.delta * reg, "l1": l1.detach(), "l2": l2.detach(), "reg": reg.detach()}
