"""How fast can BSSAN score every (image, caption) pair, and what does the two-stage mode keep?

All in one run, on one corpus (default: the synthetic one) with the small preset:
  1. trains the dual encoder and BSSAN for a short schedule (the timing does not depend on the weights,
     the recall figures do);
  2. pairs per second of the naive loop (one ``forward`` per pair, the paper's path) against the batched
     fast path (per-image / per-caption caches, chunks of pairs under inference mode): the ratio;
  3. the full evaluation of the test set (every test image with all its captions when the corpus has
     fewer than 1K x 5), and the 1K x 5K time extrapolated from the measured pairs per second;
  4. the two-stage mode at K = 20, 50, 100: its time against full scoring and the R@1/5/10 it keeps.

    PYTHONPATH=src python bench/bssan_scoring.py --corpus /work/data/synthetic \\
        --objects /work/data/bssan/synthetic-objects --epochs 4
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mmsocial.data.corpus import Corpus
from mmsocial.eval.protocols.bssan import image_text_retrieval, pair_score_matrix, two_stage_scores
from mmsocial.systems import bssan as S


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/synthetic")
    p.add_argument("--regions", default=None, help="region store (default: CORPUS/features/regions-...)")
    p.add_argument("--objects", default=None, help="object store (default: CORPUS/features/objects-...)")
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=4, help="BSSAN epochs before measuring")
    p.add_argument("--dual-epochs", type=int, default=10)
    p.add_argument("--naive-pairs", type=int, default=300, help="pairs scored one at a time")
    p.add_argument("--chunk-pairs", type=int, default=8192)
    p.add_argument("--ks", default="20,50,100")
    p.add_argument("--images", type=int, default=1000, help="test images (1K in the paper; fewer = all the corpus has)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--negative-attention", default="softmax", help="softmax | uniform (Eq. 8; see docs/bssan.md)")
    p.add_argument("--workdir", default="runs/bench/bssan_scoring")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    cfg = S.Config(corpus=a.corpus, regions=a.regions, objects=a.objects, preset=a.preset, workdir=a.workdir,
                   seeds=[0], threads=a.threads, chunk_pairs=a.chunk_pairs, val_images=100,
                   model=S.ModelSettings(epochs=max(a.epochs, 1), negative_attention=a.negative_attention), dual=S.DualEncoderSettings(epochs=a.dual_epochs),
                   train=S.TrainSettings(progress=False))
    data = S.prepare(Corpus.load(a.corpus), cfg)
    print(f"data: {data.describe()}")
    t = time.perf_counter()
    if a.epochs > 0:
        dual, _ = S.train_dual_encoder(data, cfg, 0, Path(a.workdir) / "dual")
        model, _ = S.train_bssan(data, cfg, "bssan", 0, Path(a.workdir) / "bssan")
        print(f"trained the dual encoder ({a.dual_epochs} epochs) and BSSAN ({a.epochs} epochs) in "
              f"{time.perf_counter() - t:.0f} s; torch threads {torch.get_num_threads()}")
    else:  # speed only: the timings do not depend on the weights; the recalls below are then meaningless
        from mmsocial.models.baselines.dual_encoder import DualEncoder
        from mmsocial.models.bssan import BSSAN

        torch.manual_seed(0)
        model = BSSAN(S._bssan_config(cfg, data, "bssan")).eval()
        dual = DualEncoder(data.regions.shape[2], data.embeddings.shape[1], cfg.dual.embed_dim, cfg.dual.hidden).eval()
        print(f"--epochs 0: untrained models (speed only; recall figures meaningless); torch threads {torch.get_num_threads()}")
    imgs, caps, row = S._eval_sets(data, "test", a.images, 5, 0)
    n_pairs = len(imgs) * len(caps)
    print(f"test set: {len(imgs)} images x {len(caps)} captions = {n_pairs} pairs "
          f"({'1K x 5 captions' if len(imgs) == 1000 else 'test images with all their captions: fewer than 1K x 5'})")

    # 2. naive loop vs batched
    rng = np.random.default_rng(0)
    pi, pc = rng.integers(0, len(imgs), a.naive_pairs), rng.integers(0, len(caps), a.naive_pairs)
    model.eval()
    with torch.inference_mode():
        t = time.perf_counter()
        naive = []
        for i, c in zip(pi, pc):
            R, O = data.image_features(imgs[i:i + 1])
            T, lengths = data.words(caps[c:c + 1])
            naive.append(model(R, O, T, lengths)["score"][0].item())
        naive_s = time.perf_counter() - t
    t = time.perf_counter()
    scorer = S.bssan_scorer(model, data, imgs, caps)
    cache_s = time.perf_counter() - t
    t = time.perf_counter()
    full = pair_score_matrix(scorer, len(imgs), len(caps), a.chunk_pairs)
    batched_s = time.perf_counter() - t
    err = np.abs(full[pi, pc] - np.array(naive)).max()
    naive_rate, batched_rate = a.naive_pairs / naive_s, n_pairs / (batched_s + cache_s)
    print(f"\nnaive loop   : {naive_rate:10.0f} pairs/s ({a.naive_pairs} pairs in {naive_s:.1f} s)")
    print(f"batched      : {batched_rate:10.0f} pairs/s ({n_pairs} pairs in {batched_s:.1f} s + caches {cache_s:.1f} s)")
    print(f"speed-up     : {batched_rate / naive_rate:.1f}x  (max |batched - naive| = {err:.2e})")

    # 3. full evaluation
    t = time.perf_counter()
    full_metrics = image_text_retrieval(full, row)
    metric_s = time.perf_counter() - t
    full_s = cache_s + batched_s + metric_s
    print(f"\nfull evaluation of the test set: {full_s:.1f} s (scoring {cache_s + batched_s:.1f} s, metrics {metric_s:.2f} s)")
    print(f"1K x 5K = 5,000,000 pairs at the measured rate: {5e6 / batched_rate / 60:.1f} min (extrapolated)")
    print("full scoring: " + ", ".join(f"{k} {v:.1f}" for k, v in full_metrics.items()))

    # 4. two-stage
    first = S.dual_scores(dual, data, imgs, caps)
    print(f"\ndual encoder alone: " + ", ".join(f"{k} {v:.1f}" for k, v in image_text_retrieval(first, row).items()))
    print("\n| K | pairs scored | share | time (s) | speed-up | " + " | ".join(
        f"{k} (full)" for k in full_metrics if "R@" in k) + " |")
    print("|---|---|---|---|---|" + "---|" * 6)
    for k in [int(x) for x in a.ks.split(",")]:
        t = time.perf_counter()
        first = S.dual_scores(dual, data, imgs, caps)
        scorer = S.bssan_scorer(model, data, imgs, caps)
        merged, scored = two_stage_scores(first, scorer, k, a.chunk_pairs)
        two_s = time.perf_counter() - t
        m = image_text_retrieval(merged, row)
        print(f"| {k} | {scored} | {scored / n_pairs:.1%} | {two_s:.1f} | {(cache_s + batched_s) / two_s:.1f}x | "
              + " | ".join(f"{m[c]:.1f} ({full_metrics[c]:.1f})" for c in full_metrics if "R@" in c) + " |")


if __name__ == "__main__":
    main()
