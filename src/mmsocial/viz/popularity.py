"""Pictures of a popularity model's attention: region heat map over the image, word weights beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def attention_grid(items: Sequence[tuple[Any, dict, float]], out: str | Path) -> Path:
    """One row per post: the image with its region attention (a square grid) and the words by weight.

    items: (PIL image, prediction dict with ``region_weights`` / ``tokens`` / ``word_weights`` /
    ``popularity``, true score).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not items:
        raise ValueError("attention_grid needs at least one post")
    fig, axes = plt.subplots(len(items), 2, figsize=(9, 3.2 * len(items)), squeeze=False)
    for (image, res, truth), (ax_img, ax_txt) in zip(items, axes):
        img = np.asarray(image.convert("RGB"))
        ax_img.imshow(img)
        if "region_weights" in res:
            w = np.asarray(res["region_weights"])
            side = int(round(np.sqrt(len(w))))
            if side * side == len(w):
                ax_img.imshow(w.reshape(side, side), cmap="jet", alpha=0.45, interpolation="bilinear",
                              extent=(0, img.shape[1], img.shape[0], 0))
        ax_img.set_title(f"predicted {res['popularity']:.2f}, true {truth:.2f}", fontsize=9)
        ax_img.axis("off")
        ax_txt.axis("off")
        tokens, weights = res.get("tokens", []), res.get("word_weights")
        if weights:
            top = max(weights) or 1.0
            x, y = 0.0, 0.9
            for tok, a in zip(tokens, weights):
                ax_txt.text(x, y, tok, fontsize=11, color=(1 - a / top, 1 - a / top, 1 - a / top),
                            bbox=dict(facecolor=(1.0, 0.85 * (1 - a / top) + 0.15, 0.2), alpha=0.25 + 0.75 * a / top,
                                      edgecolor="none"), transform=ax_txt.transAxes)
                x += 0.03 + 0.022 * len(tok)
                if x > 0.85:
                    x, y = 0.0, y - 0.15
            ax_txt.set_title("word weights (darker = more attention)", fontsize=9)
        if "modality_weights" in res:
            m = res["modality_weights"]
            ax_txt.text(0.0, 0.05, f"inter-attention: image {m['image']:.2f}, text {m['text']:.2f}",
                        fontsize=9, transform=ax_txt.transAxes)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
