"""Layers shared by several systems."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class LocallyConnected(nn.Module):
    """Independent fully connected maps for each of ``groups`` slots, run as one batched matmul.

    Input (B, G, in_features) -> output (B, G, out_features); slot g only sees x[:, g] and has its own
    weight (in_features, out_features) and bias. DMAN's LFC layer is this with G = L words.
    """

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if min(groups, in_features, out_features) < 1:
            raise ValueError(f"groups, in_features and out_features must be >= 1, got "
                             f"{groups}, {in_features}, {out_features}")
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)  # nn.Linear's default, per slot
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.groups or x.shape[2] != self.in_features:
            raise ValueError(f"expected input (B, {self.groups}, {self.in_features}), got {tuple(x.shape)}")
        out = torch.bmm(x.transpose(0, 1), self.weight).transpose(0, 1)  # (B, G, out)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in_features={self.in_features}, out_features={self.out_features}"


def mlp(dims: Sequence[int], dropout: float = 0.0, last_activation: nn.Module | None = None,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers dims[0] -> dims[1] -> ... with ``activation`` (+ dropout) between them."""
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {list(dims)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    if last_activation is not None:
        layers.append(last_activation)
    return nn.Sequential(*layers)


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` where ``mask`` is False gets exactly 0 weight.

    A slice with no True entry (e.g. an empty text) gets all-zero weights instead of NaN.
    """
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal scores shape {tuple(scores.shape)}")
    mask = mask.bool()
    any_valid = mask.any(dim=dim, keepdim=True)
    filled = scores.masked_fill(~mask, float("-inf")).masked_fill(~any_valid, 0.0)
    return torch.softmax(filled, dim=dim) * any_valid


class MaskedLSTM(nn.Module):
    """Word embedding + one-layer LSTM over padded id sequences (0 = padding).

    Returns the hidden states (B, T, H), exactly zero at padded positions, and the mask (B, T).
    Sequences are packed, so padding never enters the recurrence; an empty sequence gives zeros.
    """

    def __init__(self, num_words: int, word_dim: int, hidden_dim: int, padding_idx: int = 0):
        super().__init__()
        self.embedding = nn.Embedding(num_words, word_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(word_dim, hidden_dim, batch_first=True)
        self.hidden_dim = hidden_dim

    def forward(self, words: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if words.dim() != 2:
            raise ValueError(f"words must be (B, T) ids, got shape {tuple(words.shape)}")
        B, T = words.shape
        lengths = lengths.to("cpu", torch.int64).clamp(0, T)
        mask = torch.arange(T)[None, :] < lengths[:, None]
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(words), lengths.clamp(min=1),
                                                   batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=T)
        mask = mask.to(words.device)
        return states * mask[..., None], mask

    @staticmethod
    def last_state(states: Tensor, lengths: Tensor) -> Tensor:
        """h_l: the state at each sequence's last word (zeros for an empty sequence)."""
        idx = (lengths.to(states.device, torch.int64) - 1).clamp(min=0)
        last = states[torch.arange(states.shape[0], device=states.device), idx]
        return last * (lengths.to(states.device) > 0)[:, None]
