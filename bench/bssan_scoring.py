"""How fast can BSSAN score every (image, caption) pair, and what does the two-stage mode keep?

All in one run, on one corpus (default: the synthetic one) with the small preset:
  1. the models: trained ones from run folders (``--bssan-run``, ``--dual-run``: a Table II cell's ``bssan``
     and ``dual`` folders), or trained here for a short schedule (the timing does not depend on the
     weights, the recall figures do);
  2. pairs per second of the naive loop (one ``forward`` per pair, the paper's path) against the batched
     fast path (per-image / per-caption caches, image blocks x the captions' prefix tree, under inference
     mode) on the test set: the ratio;
  3. the full evaluation of the test set: every pair scored and timed. On a corpus with 1K test images
     of 5 captions each (``mmsocial data synthetic --posts 5000 --captions 5``) that is the real 1K x 5K
     evaluation; on a smaller test set the 1K x 5K time is EXTRAPOLATED from a slice of ``--slice-images``
     images x 5,000 captions (prefix sharing off), times 1000 / slice-images;
  4. the two-stage mode at K = 20, 50, 100 on the same test set (K_t2i by the default rule, and K = 100 with
     K_t2i = K, the rule before K_t2i): pairs scored, time and speed-up against the full scoring of step 3
     (both with the caches), and the R@1/5/10 of both directions against full scoring.
Wall time and this process's CPU time are both given, with the load average (the machine is shared).

    PYTHONPATH=src python bench/bssan_scoring.py --corpus /work/data/synthetic5 \\
        --bssan-run RUN/bssan --dual-run RUN/dual      # or no run folders: a short schedule is trained here
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from mmsocial.data.corpus import Corpus
from mmsocial.eval.protocols.bssan import (candidate_pairs, default_k_t2i, image_text_retrieval, pair_score_matrix,
                                           two_stage_scores)
from mmsocial.systems import bssan as S


def best_ranks(scores: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of the closest ground truth of every image query (over the captions) and caption query (over the
    images), as image_text_retrieval counts them."""
    from mmsocial.eval import metrics

    i2t = metrics.ground_truth_ranks(scores, ground_truth=[np.flatnonzero(row == i) for i in range(scores.shape[0])])
    t2i = metrics.ground_truth_ranks(np.ascontiguousarray(scores.T), ground_truth=row.astype(np.int64))
    return np.array([r.min() for r in i2t]), np.concatenate(t2i)


class Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c

    def __str__(self):
        return f"{self.wall:.1f} s wall, {self.cpu:.1f} s CPU, load {os.getloadavg()[0]:.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/synthetic")
    p.add_argument("--regions", default=None, help="region store (default: CORPUS/features/regions-...)")
    p.add_argument("--objects", default=None, help="object store (default: CORPUS/features/objects-...)")
    p.add_argument("--objects-from", default="regions", help="objects missing: extract | regions")
    p.add_argument("--preset", default="small")
    p.add_argument("--bssan-run", default=None, help="a trained BSSAN run folder (load_trained)")
    p.add_argument("--dual-run", default=None, help="a trained dual-encoder run folder (load_trained)")
    p.add_argument("--epochs", type=int, default=4, help="BSSAN epochs when no --bssan-run (0: untrained)")
    p.add_argument("--dual-epochs", type=int, default=10)
    p.add_argument("--naive-pairs", type=int, default=300, help="pairs scored one at a time")
    p.add_argument("--chunk-pairs", type=int, default=8192)
    p.add_argument("--slice-images", type=int, default=50, help="images of the measured 1K x 5K slice")
    p.add_argument("--ks", default="20,50,100", help="two-stage K (image->text), K_t2i by the default rule")
    p.add_argument("--old-rule-ks", default="100", help="two-stage K also run with K_t2i = K (the rule before "
                   "K_t2i); empty: none")
    p.add_argument("--unshared", action=argparse.BooleanOptionalAction, default=None,
                   help="also score the test set with prefix sharing off (default: when <= 1M pairs)")
    p.add_argument("--images", type=int, default=1000, help="test images (1K in the paper; fewer = all the corpus has)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="runs/bench/bssan_scoring")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    cfg = S.Config(corpus=a.corpus, regions=a.regions, objects=a.objects, objects_from=a.objects_from,
                   preset=a.preset, workdir=a.workdir, seeds=[0], threads=a.threads, chunk_pairs=a.chunk_pairs,
                   val_images=100, model=S.ModelSettings(epochs=max(a.epochs, 1), negative_attention="softmax"),
                   dual=S.DualEncoderSettings(epochs=a.dual_epochs, max_violation=False),
                   train=S.TrainSettings(progress=False))
    data = S.prepare(Corpus.load(a.corpus), cfg)
    print(f"data: {data.describe()}; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    from mmsocial.models.baselines.dual_encoder import DualEncoder
    from mmsocial.models.bssan import BSSAN

    if a.bssan_run:
        model, _ = S.load_trained(Path(a.bssan_run))
        print(f"BSSAN from {a.bssan_run}")
    elif a.epochs > 0:
        with Clock() as t:
            model, _ = S.train_bssan(data, cfg, "bssan", 0, Path(a.workdir) / "bssan")
        print(f"trained BSSAN ({a.epochs} epochs): {t}")
    else:
        torch.manual_seed(0)
        model = BSSAN(S._bssan_config(cfg, data, "bssan")).eval()
        print("BSSAN untrained (--epochs 0): speed only, the recall figures are meaningless")
    if a.dual_run:
        dual, _ = S.load_trained(Path(a.dual_run))
        print(f"dual encoder from {a.dual_run}")
    elif a.epochs > 0:
        dual, _ = S.train_dual_encoder(data, cfg, 0, Path(a.workdir) / "dual")
    else:
        dual = DualEncoder(data.regions.shape[2], data.embeddings.shape[1], cfg.dual.embed_dim, cfg.dual.hidden).eval()
    model.eval()
    imgs, caps, row = S._eval_sets(data, "test", a.images, 5, 0)
    n_pairs = len(imgs) * len(caps)
    print(f"test set: {len(imgs)} images x {len(caps)} captions = {n_pairs} pairs "
          f"({'1K x 5 captions' if len(imgs) == 1000 else 'test images with all their captions: fewer than 1K x 5'})")

    # 2. naive loop vs batched
    rng = np.random.default_rng(0)
    pi, pc = rng.integers(0, len(imgs), a.naive_pairs), rng.integers(0, len(caps), a.naive_pairs)
    with torch.inference_mode(), Clock() as t_naive:
        naive = []
        for i, c in zip(pi, pc):
            R, O = data.image_features(imgs[i:i + 1])
            T, lengths = data.words(caps[c:c + 1])
            naive.append(model(R, O, T, lengths)["score"][0].item())
    with Clock() as t_cache:
        scorer = S.bssan_scorer(model, data, imgs, caps)
    with Clock() as t_batch:
        full = pair_score_matrix(scorer, len(imgs), len(caps), a.chunk_pairs)
    err = np.abs(full[pi, pc] - np.array(naive)).max()
    unshared = a.unshared if a.unshared is not None else n_pairs <= 1_000_000
    if unshared:
        model.share_prefixes = False
        with Clock() as t_flat:
            flat = pair_score_matrix(S.bssan_scorer(model, data, imgs, caps), len(imgs), len(caps), a.chunk_pairs)
        model.share_prefixes = True
        err = max(err, np.abs(flat - full).max())
    rate = lambda n, c: n / max(c.cpu, 1e-9)  # noqa: E731  pairs per CPU second
    print(f"\n| path | pairs | time | pairs/s (wall) | pairs/s (CPU) |\n|---|---|---|---|---|")
    print(f"| naive loop, one forward per pair | {a.naive_pairs} | {t_naive} | "
          f"{a.naive_pairs / t_naive.wall:.0f} | {rate(a.naive_pairs, t_naive):.0f} |")
    print(f"| batched, prefix sharing on (+ caches: {t_cache}) | {n_pairs} | {t_batch} | "
          f"{n_pairs / (t_batch.wall + t_cache.wall):.0f} | {n_pairs / (t_batch.cpu + t_cache.cpu):.0f} |")
    if unshared:
        print(f"| batched, prefix sharing off | {n_pairs} | {t_flat} | {n_pairs / t_flat.wall:.0f} | "
              f"{rate(n_pairs, t_flat):.0f} |")
    print(f"speed-up batched / naive (CPU time, caches included): "
          f"{n_pairs / (t_batch.cpu + t_cache.cpu) / rate(a.naive_pairs, t_naive):.1f}x with prefix sharing"
          + (f", {rate(n_pairs, t_flat) / rate(a.naive_pairs, t_naive):.1f}x without" if unshared else "")
          + f" (max |batched - naive|{', |shared - unshared|' if unshared else ''} = {err:.2e})")

    # 3. full evaluation of the test set (1K x 5K when the corpus has it); else a measured slice of 1K x 5K
    with Clock() as t_metric:
        full_metrics = image_text_retrieval(full, row)
    full_s, full_cpu = t_cache.wall + t_batch.wall, t_cache.cpu + t_batch.cpu
    print(f"\nfull evaluation of the test set ({len(imgs)} x {len(caps)} = {n_pairs:,} pairs, every pair scored): "
          f"{(full_s + t_metric.wall) / 60:.2f} min wall, {(full_cpu + t_metric.cpu) / 60:.2f} min CPU "
          f"(caches {t_cache.wall:.1f} s, pair scores {t_batch.wall:.1f} s, metrics {t_metric.wall:.1f} s; "
          f"load {os.getloadavg()[0]:.1f})")
    print("full scoring: " + ", ".join(f"{k} {v:.1f}" for k, v in full_metrics.items()))
    if len(imgs) < 1000 or len(caps) < 5000:
        all_caps = np.arange(len(data.lengths))
        slice_caps = np.sort(rng.choice(all_caps, 5000, replace=len(all_caps) < 5000))
        slice_imgs = np.sort(rng.choice(len(data.post_ids), a.slice_images, replace=False))
        model.share_prefixes = False
        with Clock() as t_sc:
            sl = S.bssan_scorer(model, data, slice_imgs, slice_caps)
        with Clock() as t_sl:
            pair_score_matrix(sl, len(slice_imgs), len(slice_caps), a.chunk_pairs)
        with Clock() as t_ic:  # the image caches alone (one caption), to scale them to 1K images
            S.bssan_scorer(model, data, slice_imgs, slice_caps[:1])
        model.share_prefixes = True
        scale = 1000 / a.slice_images
        print(f"1K x 5K slice: {a.slice_images} images x 5000 captions (mean length "
              f"{data.lengths[slice_caps].mean():.1f} words, prefix sharing off): {t_sl}; caches {t_sc}")
        print(f"1K x 5K = 5,000,000 pairs, EXTRAPOLATED: {(t_sl.wall * scale + t_sc.wall + t_ic.wall * (scale - 1)) / 60:.1f} "
              f"min wall, {(t_sl.cpu * scale + t_sc.cpu + t_ic.cpu * (scale - 1)) / 60:.1f} min CPU "
              f"(the measured slice x {scale:.0f}, + the caches of 5000 captions and 1000 images)")

    # 4. two-stage, on the same test set, against the full scoring above (both with the caches)
    with Clock() as t_first:
        first = S.dual_scores(dual, data, imgs, caps)
    print(f"\ndual encoder alone ({t_first}): " + ", ".join(f"{k} {v:.1f}" for k, v in image_text_retrieval(first, row).items()))
    print(f"full BSSAN scoring: {full_s:.1f} s wall, {full_cpu:.1f} s CPU (caches + every pair)")
    print("\n(GT re-scored: the share of image / caption queries with a ground-truth item among the pairs BSSAN "
          "re-scores; lost@10: the share of queries that full scoring finds in its top 10 and the two-stage does not)")
    full_i2t, full_t2i = best_ranks(full, row)
    print("\n| K | K_t2i | pairs scored | share | GT re-scored i2t / t2i | time | speed-up wall (CPU) | " + " | ".join(
        f"{k} (full)" for k in full_metrics if "R@" in k) + " | lost@10 i2t / t2i |")
    print("|---|---|---|---|---|---|---|" + "---|" * 7)
    runs = [(int(x), None) for x in a.ks.split(",")] + [(int(x), int(x)) for x in a.old_rule_ks.split(",") if x]
    for k, k_t2i in runs:
        with Clock() as t:
            first = S.dual_scores(dual, data, imgs, caps)
            scorer = S.bssan_scorer(model, data, imgs, caps)
            merged, scored = two_stage_scores(first, scorer, k, k_t2i)
        m = image_text_retrieval(merged, row)
        kt = k_t2i if k_t2i is not None else default_k_t2i(k, len(imgs), len(caps))
        pairs = candidate_pairs(first, k, kt)
        hit = row[pairs[:, 1]] == pairs[:, 0]  # the pair is a ground-truth (image, caption)
        gt_i2t, gt_t2i = len(np.unique(pairs[hit, 0])) / len(imgs), len(np.unique(pairs[hit, 1])) / len(caps)
        two_i2t, two_t2i = best_ranks(merged, row)
        lost = lambda f, t: float(np.mean((f <= 10) & (t > 10)))  # noqa: E731
        print(f"| {k} | {kt}{' (= K, old rule)' if k_t2i is not None else ''} | {scored:,} | {scored / n_pairs:.1%} | "
              f"{gt_i2t:.1%} / {gt_t2i:.1%} | {t} | {full_s / t.wall:.1f}x ({full_cpu / t.cpu:.1f}x) | "
              + " | ".join(f"{m[c]:.1f} ({full_metrics[c]:.1f})" for c in full_metrics if "R@" in c)
              + f" | {lost(full_i2t, two_i2t):.1%} / {lost(full_t2i, two_t2i):.1%} |")
    n, kk = len(imgs), 100
    kt = default_k_t2i(kk, n, len(caps))
    print(f"\nCandidates at K = {kk}: each image's top {kk} captions ({n * kk:,}) and each caption's top {kt} images "
          f"({len(caps) * kt:,}): at most {n * kk + len(caps) * kt:,} of {n_pairs:,} pairs "
          f"({n_pairs / (n * kk + len(caps) * kt):.1f}x fewer than full scoring); with K_t2i = K (the old rule) "
          f"at most {n * kk + len(caps) * kk:,} ({n_pairs / (n * kk + len(caps) * kk):.1f}x fewer).")


if __name__ == "__main__":
    main()
