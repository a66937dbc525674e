"""Training curves of one run: train and validation values per epoch, one panel per loss term."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def plot_training_curves(history: Sequence[dict[str, float]], path: str | Path, title: str = "",
                         best_epoch: Optional[float] = None) -> Path:
    """Write a small PNG of ``history`` (records with ``epoch`` and ``train_<x>`` / ``val_<x>``).

    One panel per term ``x`` (loss first), train solid, validation dashed; ``best_epoch`` (the
    kept checkpoint) is a vertical dotted line. Uses matplotlib's Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = {k.split("_", 1)[1] for r in history for k, v in r.items()
            if k.startswith(("train_", "val_")) and v}  # a term that is 0 throughout (no BCE) gets no panel
    terms = sorted(keys, key=lambda t: (t != "loss", t))
    if not terms:
        raise ValueError("history has no train_* or val_* values to plot")
    fig, axes = plt.subplots(1, len(terms), figsize=(3.0 * len(terms), 2.4), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for prefix, style in (("train", "-"), ("val", "--")):
            pts = [(r["epoch"], r[f"{prefix}_{term}"]) for r in history
                   if f"{prefix}_{term}" in r and r[f"{prefix}_{term}"] is not None and "epoch" in r]
            if pts:
                ax.plot(*zip(*pts), style, marker=".", ms=3, lw=1.2, label=prefix)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1)
        ax.set_title(term, fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
