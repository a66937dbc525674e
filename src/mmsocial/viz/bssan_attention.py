"""BSSAN attention pictures (§V-D, Figs. 7 and 8), as PNG files.

W2R (Fig. 7): for each word, its attention over the region grid, up-sampled to the image, smoothed
with a Gaussian filter and drawn as a heat map over the image with a transparency of 0.7.
O2W (Fig. 8): one line per object (the 3 strongest by default) of its attention over the words,
with the objects' boxes drawn on the image in the same colours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

COLOURS = ("#f2c200", "#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def upsampled_attention(alpha: np.ndarray, side: int, sigma: float | None = None) -> np.ndarray:
    """(D,) attention over a g x g grid (row-major) -> (side, side) map, Gaussian-smoothed, in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    alpha = np.asarray(alpha, dtype=np.float64)
    g = int(round(np.sqrt(alpha.size)))
    if g * g != alpha.size:
        raise ValueError(f"attention over {alpha.size} regions is not a square grid")
    cell = int(np.ceil(side / g))
    up = np.kron(alpha.reshape(g, g), np.ones((cell, cell)))[:side, :side]
    up = gaussian_filter(up, sigma=sigma if sigma is not None else cell / 2)
    lo, hi = up.min(), up.max()
    return (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)


def w2r_figure(image, words: Sequence[str], alpha: np.ndarray, path: "str | Path", max_words: int = 8,
               transparency: float = 0.7) -> Path:
    """Heat maps of the W2R attention of each word (rows of ``alpha`` (L, D)) over ``image`` (PIL)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = 224
    img = np.asarray(image.convert("RGB").resize((side, side)))
    words = list(words)[:max_words]
    fig, axes = plt.subplots(1, len(words) + 1, figsize=(2.2 * (len(words) + 1), 2.5))
    axes = np.atleast_1d(axes)
    axes[0].imshow(img)
    axes[0].set_title("image", fontsize=9)
    for ax, w, a in zip(axes[1:], words, alpha):
        ax.imshow(img)
        ax.imshow(upsampled_attention(a, side), cmap="jet", alpha=transparency)
        ax.set_title(w, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def o2w_figure(image, words: Sequence[str], beta: np.ndarray, boxes: np.ndarray, path: "str | Path",
               top: int = 3) -> Path:
    """Line chart of the O2W attention of the ``top`` objects (rows of ``beta`` (P, L), strongest peak
    first) over the words, beside the image with those objects' boxes (fractions of width/height)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    side = 224
    img = np.asarray(image.convert("RGB").resize((side, side)))
    words = list(words)
    beta = np.asarray(beta)[:, : len(words)]
    chosen = np.argsort(-beta.max(1), kind="stable")[:top]
    fig, (ax_img, ax_line) = plt.subplots(1, 2, figsize=(4 + 0.45 * len(words), 3),
                                          gridspec_kw={"width_ratios": [1, max(1.5, 0.25 * len(words))]})
    ax_img.imshow(img)
    ax_img.axis("off")
    for colour, j in zip(COLOURS, chosen):
        x0, y0, x1, y1 = np.asarray(boxes[j]) * side
        ax_img.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2))
        ax_line.plot(range(len(words)), beta[j], marker="o", color=colour, label=f"object {j}")
    ax_line.set_xticks(range(len(words)))
    ax_line.set_xticklabels(words, rotation=60, fontsize=8)
    ax_line.set_ylabel("attention")
    ax_line.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
