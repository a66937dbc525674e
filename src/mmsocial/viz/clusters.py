"""User clusters of a DU2MCE run (§4.5.1): k-means over the user embeddings, a word cloud per cluster from
the words of its users' posts with the corpus's 200 most common words removed, and the images whose
embeddings lie nearest the cluster centroid (images and users share the space)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


def cluster_users(user_embeddings: np.ndarray, k: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means (scikit-learn, k-means++, 10 inits) on L2-normalised user embeddings; (labels, centroids),
    each centroid the mean of its users' normalised embeddings."""
    from sklearn.cluster import KMeans

    x = np.asarray(user_embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(k, len(x))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    centroids = np.stack([x[labels == c].mean(0) for c in range(k)])
    return labels, centroids


def cluster_words(post_words: list, post_user: list, labels: np.ndarray, drop_top: int = 200) -> list[Counter]:
    """Word frequencies of each cluster's users' posts, without the corpus's ``drop_top`` most common words
    (at most a quarter of the distinct words: a small vocabulary, like the synthetic corpus's ~120 words,
    would otherwise lose every word)."""
    corpus = Counter(w for words in post_words for w in words)
    common = {w for w, _ in corpus.most_common(min(drop_top, len(corpus) // 4))}
    out = [Counter() for _ in range(int(labels.max()) + 1 if len(labels) else 0)]
    for words, u in zip(post_words, post_user):
        if u is not None and u >= 0:
            out[labels[u]].update(w for w in words if w not in common)
    return out


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of users whose cluster's majority class is their own class."""
    total = 0
    for c in np.unique(labels):
        total += Counter(truth[labels == c]).most_common(1)[0][1]
    return total / len(labels)


def user_clusters(run_dir, out: Optional[Path] = None, k: int = 50, show: int = 6, images: int = 6,
                  seed: int = 0, drop_top: int = 200) -> dict:
    """Cluster the users of a `mmsocial train du2mce` run; write ``clusters.json`` and one PNG per drawn cluster
    (the ``show`` largest) under ``out`` (default RUN_DIR/clusters). Returns the summary (with the adjusted
    Rand index and purity against the users' interest labels when the run has them)."""
    from sklearn.metrics import adjusted_rand_score

    run_dir = Path(run_dir)
    for f in ("embeddings.npz", "du2mce_run.json"):
        if not (run_dir / f).is_file():
            raise FileNotFoundError(f"{run_dir / f} is missing: `viz clusters` reads a run folder written by "
                                    f"`mmsocial train du2mce`")
    emb = np.load(run_dir / "embeddings.npz", allow_pickle=False)
    run = json.loads((run_dir / "du2mce_run.json").read_text())
    out = Path(out) if out is not None else run_dir / "clusters"
    out.mkdir(parents=True, exist_ok=True)
    labels, centroids = cluster_users(emb["users"], k, seed)
    words = cluster_words(run["posts"]["words"], run["posts"]["user"], labels, drop_top)
    img = np.asarray(emb["images"], dtype=np.float64)
    img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    nearest = np.argsort(-(centroids @ img.T), axis=1)[:, :images] if len(img) else np.zeros((len(centroids), 0), int)
    interest = np.array(run.get("interest") or [None] * len(labels), dtype=object)
    known = np.array([x is not None for x in interest])
    summary: dict = {"users": int(len(labels)), "clusters_k": int(len(centroids)), "interest_rule": run.get("interest_rule")}
    if known.sum() > 1:
        truth = interest[known].astype(str)
        summary["adjusted_rand_index"] = float(adjusted_rand_score(truth, labels[known]))
        summary["purity"] = float(purity(labels[known], truth))
        summary["users_with_interest"] = int(known.sum())
    clusters = []
    for c in range(len(centroids)):
        members = np.flatnonzero(labels == c)
        clusters.append({"cluster": c, "size": int(len(members)),
                         "top_words": [w for w, _ in words[c].most_common(15)],
                         "interests": dict(Counter(str(x) for x in interest[members] if x is not None).most_common()),
                         "nearest_images": [str(emb["image_posts"][j]) for j in nearest[c]]})
    summary["clusters"] = clusters
    order = sorted(range(len(clusters)), key=lambda c: -clusters[c]["size"])[:show]
    corpus = _open_corpus(run.get("corpus"))
    summary["pictures"] = [str(_draw(out / f"cluster_{c:02d}.png", clusters[c], words[c], corpus)) for c in order]
    (out / "clusters.json").write_text(json.dumps(summary, indent=1))
    return summary


def _open_corpus(path):
    if not path or not (Path(path) / "posts.parquet").is_file():
        log.warning("the run's corpus %s is not available: clusters are drawn without images", path)
        return None
    from mmsocial.data.corpus import Corpus

    return Corpus.load(path)


def word_cloud_image(freq: Counter, width: int = 480, height: int = 320, seed: int = 0):
    """The word cloud of ``freq`` as an RGB array (wordcloud package); None when there is no word."""
    from wordcloud import WordCloud

    if not freq:
        return None
    wc = WordCloud(width=width, height=height, background_color="white", random_state=seed,
                   prefer_horizontal=0.9, max_words=60)
    return wc.generate_from_frequencies(dict(freq)).to_array()


def _draw(path: Path, cluster: dict, freq: Counter, corpus) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = cluster["nearest_images"]
    n = max(len(ids), 1)
    rows = 2 if n > 3 else 1
    cols = -(-n // rows)
    fig = plt.figure(figsize=(3.6 + 1.8 * cols, 3.6))
    grid = fig.add_gridspec(rows, cols + 2)
    ax = fig.add_subplot(grid[:, :2])
    cloud = word_cloud_image(freq)
    if cloud is not None:
        ax.imshow(cloud)
    else:
        ax.text(0.5, 0.5, "(no words left)", ha="center", va="center")
    ax.set_axis_off()
    top = ", ".join(f"{k} {v}" for k, v in list(cluster["interests"].items())[:3])
    ax.set_title(f"cluster {cluster['cluster']}: {cluster['size']} users" + (f"\n{top}" if top else ""), fontsize=9)
    for j, pid in enumerate(ids):
        a = fig.add_subplot(grid[j // cols, 2 + j % cols])
        if corpus is not None:
            try:
                im = corpus.open_image(pid)
                im.thumbnail((160, 160))
                a.imshow(np.asarray(im))
            except Exception as e:  # a missing file is drawn as a note, the rest of the picture stays useful
                a.text(0.5, 0.5, f"{pid}\n{type(e).__name__}", ha="center", va="center", fontsize=6)
        a.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
