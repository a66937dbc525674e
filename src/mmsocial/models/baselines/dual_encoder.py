"""A dual-encoder ranking baseline (VSE++-style): image and sentence embedded separately.

Image: a pooled CNN vector -> linear -> D. Sentence: a GRU over the (frozen) word vectors, its
last state at the caption's last word -> D. Both L2-normalised; the score is the cosine. Trained
with ``train.losses.contrastive_hinge_loss`` (max-violation, or the sum of hinges). Embeddings
are computed once per image and per caption, so a full score matrix is one matrix product: this
is also the first stage that BSSAN's two-stage mode re-ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DualEncoder(nn.Module):
    def __init__(self, image_dim: int, word_dim: int, embed_dim: int = 1024, hidden: int = 1024,
                 image_mean: Tensor | None = None, image_std: Tensor | None = None):
        super().__init__()
        if min(image_dim, word_dim, embed_dim, hidden) < 1:
            raise ValueError("image_dim, word_dim, embed_dim and hidden must be >= 1")
        # the pooled CNN vectors are standardised with the training mean/std (non-negative, one shared
        # direction otherwise dominates every image embedding)
        self.register_buffer("image_mean", image_mean if image_mean is not None else torch.zeros(image_dim))
        self.register_buffer("image_std", image_std if image_std is not None else torch.ones(image_dim))
        self.image_fc = nn.Linear(image_dim, embed_dim)
        self.gru = nn.GRU(word_dim, hidden, batch_first=True)
        self.text_fc = nn.Linear(hidden, embed_dim)

    def encode_images(self, pooled: Tensor) -> Tensor:
        """(N, C) pooled features -> (N, D) unit vectors."""
        return F.normalize(self.image_fc((pooled - self.image_mean) / self.image_std), dim=-1)

    def encode_captions(self, T: Tensor, lengths: Tensor) -> Tensor:
        """(N, L, E) word vectors + (N,) lengths -> (N, D) unit vectors (GRU state at the last word)."""
        if (lengths < 1).any():
            raise ValueError("every caption needs at least one word (length >= 1)")
        packed = nn.utils.rnn.pack_padded_sequence(T, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return F.normalize(self.text_fc(h[-1]), dim=-1)

    def forward(self, pooled: Tensor, T: Tensor, lengths: Tensor) -> Tensor:
        """(B, B) cosine scores of B images against B captions (matched pairs on the diagonal)."""
        return self.encode_images(pooled) @ self.encode_captions(T, lengths).T
