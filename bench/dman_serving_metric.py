"""Which comparison should the service use for DMAN's tag -> image search? P@10 of single-tag queries
on a trained run, with the posts ranked by each candidate against the query's one-hot tag vector q:

    l2      Euclidean distance ||Y - q|| (Table 3's protocol; what the service used before)
    ip      inner product Y·q = Y_w, the predicted probability of the tag
    cosine  Y·q / ||Y||: the tag's share of the post's whole tag vector

A result is relevant when the post carries the query tag. Printed per query for a few label words, and
as the mean over every vocabulary tag held by at least --min-posts posts; over all served posts (what a
user of the service searches) and over the run's test posts only (posts the model never trained on).

    python bench/dman_serving_metric.py RUN_DIR [--words bird dog ...]
"""

from __future__ import annotations

import argparse

import numpy as np

WORDS = ["bird", "dog", "cat", "fish", "flower", "tree", "house", "car", "music", "flag", "food", "people"]


def rankings(Y: np.ndarray, w: int, k: int) -> dict[str, np.ndarray]:
    l2 = (Y * Y).sum(1) - 2 * Y[:, w] + 1
    cos = Y[:, w] / np.maximum(np.linalg.norm(Y, axis=1), 1e-12)
    return {"l2": np.argsort(l2, kind="stable")[:k], "ip": np.argsort(-Y[:, w], kind="stable")[:k],
            "cosine": np.argsort(-cos, kind="stable")[:k]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--words", nargs="+", default=WORDS)
    ap.add_argument("--min-posts", type=int, default=10)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    import torch

    from mmsocial.config import load_config
    from mmsocial.data.corpus import Corpus
    from mmsocial.systems import RUN_CONFIG, load_run
    from mmsocial.systems.dman import Config, prepare

    torch.set_num_threads(1)
    served = load_run(args.run_dir)
    posts = served.collections["posts"]()
    vocab = served.info["vocabulary"]
    cfg = load_config(f"{args.run_dir}/{RUN_CONFIG}", Config)
    data = prepare(Corpus.load(cfg.corpus), cfg)
    assert list(data.post_ids) == list(posts.ids)
    tags = served.corpus.posts.set_index("post_id").loc[posts.ids, "tags"]
    has = {w: np.array([w in set(t) for t in tags]) for w in vocab}
    Y = np.asarray(posts.vectors, dtype=np.float64)
    test = data.idx("test")
    scopes = {"all": np.arange(len(Y)), "test": test}
    metrics = ("l2", "ip", "cosine")
    print(f"run {args.run_dir}: {len(Y)} served posts ({len(test)} test), L={len(vocab)} tags; "
          f"relevant = the post carries the query tag; P@{args.k}")
    print(f"\n| query | posts with the tag (all / test) | " +
          " | ".join(f"{m} all | {m} test" for m in metrics) + " |")
    print("|---|---|" + "---|" * (2 * len(metrics)))
    for word in args.words:
        if word not in vocab:
            print(f"| {word} | not in the run's vocabulary |")
            continue
        w = vocab.index(word)
        cells = []
        for m in metrics:
            for name, rows in scopes.items():
                top = rankings(Y[rows], w, args.k)[m]
                cells.append(f"{has[word][rows][top].mean():.1f}")
        per = " | ".join(cells[i] for i in range(len(cells)))
        print(f"| {word} | {int(has[word].sum())} / {int(has[word][test].sum())} | {per} |")
    for name, rows in scopes.items():
        words = [w for w in vocab if has[w][rows].sum() >= args.min_posts]
        means = {m: np.mean([has[w][rows][rankings(Y[rows], vocab.index(w), args.k)[m]].mean() for w in words])
                 for m in metrics}
        print(f"\nmean P@{args.k} over the {len(words)} tags held by >= {args.min_posts} {name} posts: " +
              ", ".join(f"{m} {v:.3f}" for m, v in means.items()))
    # image -> similar images: relevant = shares a top-level label (e.g. "animals") with the query post
    labels = served.corpus.posts.set_index("post_id").loc[posts.ids, "labels"]
    top = [{str(x).split("/")[0] for x in ls} for ls in labels]
    rng = np.random.default_rng(0)
    queries = rng.choice(test, min(300, len(test)), replace=False)
    unit = Y / np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-12)
    score = {"l2": lambda i: -((Y - Y[i]) ** 2).sum(1), "ip": lambda i: Y @ Y[i], "cosine": lambda i: unit @ unit[i]}
    out = {}
    for m in metrics:
        hits = []
        for i in queries:
            s = score[m](i)
            s[i] = -np.inf  # the query post itself left out, as the service does
            found = np.argsort(-s, kind="stable")[: args.k]
            hits.append(np.mean([bool(top[j] & top[i]) for j in found]))
        out[m] = np.mean(hits)
    print(f"\nimage -> similar images, P@{args.k} (shares a top-level label), {len(queries)} test posts as "
          f"queries over all posts: " + ", ".join(f"{m} {v:.3f}" for m, v in out.items()))


if __name__ == "__main__":
    main()
