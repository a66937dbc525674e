"""BSSAN protocol (§V-C, Tables II and III): bi-directional image-text retrieval.

Test set: 1K test images with 5 captions each, or every test image with all its captions where a
corpus has fewer (``select_test_set``). Image->text: each image ranks every test caption, a hit is any
of its own captions; text->image: each caption ranks every test image, a hit is its image. R@1/5/10
(percent points, as the paper prints them), the median rank of the closest ground truth ("Med r")
and rsum, all through the chunked ``eval/metrics.py``.

Scoring: a pair-scoring model has no embedding, so the score matrix is filled pair by pair in
large chunks from per-image and per-caption caches (``pair_score_matrix``); the two-stage mode
scores with the model only each query's top-K candidates of a fast first stage (``two_stage_scores``).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mmsocial.eval import metrics
from mmsocial.eval.table import ResultTable

log = logging.getLogger(__name__)

RETRIEVAL_METRICS = ("i2t R@1", "i2t R@5", "i2t R@10", "i2t Med r",
                     "t2i R@1", "t2i R@5", "t2i R@10", "t2i Med r", "rsum")
TABLE_TITLES = {"table2": "Table II: bi-directional image-text retrieval",
               "table3": "Table III: bi-directional image-text retrieval"}


def retrieval_table(title: str) -> ResultTable:
    """An empty table in the layout of Tables II/III (recalls in percent points, Med r in ranks)."""
    return ResultTable(title, list(RETRIEVAL_METRICS), percent=False, digits=1, row_header="Methods")


def select_test_set(image_of_caption: np.ndarray, test_images: np.ndarray, n_images: int = 1000,
               captions_per_image: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The paper's test set: ``n_images`` test images (all if fewer), each with its first
    ``captions_per_image`` captions (all it has if fewer). Returns (image indices, caption indices)."""
    test_images = np.asarray(test_images)
    if len(test_images) > n_images:
        test_images = np.sort(np.random.default_rng(seed).choice(test_images, n_images, replace=False))
    keep = np.isin(image_of_caption, test_images)
    captions = np.flatnonzero(keep)
    order = np.argsort(image_of_caption[captions], kind="stable")
    captions = captions[order]
    rank_in_image = np.arange(len(captions)) - np.searchsorted(image_of_caption[captions],
                                                               image_of_caption[captions])
    captions = captions[rank_in_image < captions_per_image]
    with_caption = np.isin(test_images, image_of_caption[captions])
    if not with_caption.all():
        raise ValueError(f"{int((~with_caption).sum())} test image(s) have no caption; "
                         f"filter images without captions out first")
    return test_images, captions


def image_text_retrieval(scores, caption_image: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                         chunk_size: int = metrics.DEFAULT_CHUNK_SIZE) -> dict[str, float]:
    """Tables II/III metrics of a (N_images, N_captions) score matrix (higher = better match).

    caption_image (N_captions,): the row of each caption's image. Recalls in percent points.
    """
    scores = np.asarray(scores)
    caption_image = np.asarray(caption_image)
    if scores.ndim != 2 or scores.shape[1] != len(caption_image):
        raise ValueError(f"scores must be (images, captions) with one column per caption "
                         f"({len(caption_image)}), got {scores.shape}")
    if caption_image.min() < 0 or caption_image.max() >= scores.shape[0]:
        raise ValueError("caption_image holds an image row outside the score matrix")
    captions_of = [np.flatnonzero(caption_image == i) for i in range(scores.shape[0])]
    i2t = metrics.ground_truth_ranks(scores, ground_truth=captions_of, chunk_size=chunk_size)
    t2i = metrics.ground_truth_ranks(np.ascontiguousarray(scores.T), ground_truth=caption_image.astype(np.int64),
                                     chunk_size=chunk_size)
    r_i2t, r_t2i = metrics.recall_at_k(i2t, ks), metrics.recall_at_k(t2i, ks)
    out = {f"i2t R@{k}": 100.0 * v for k, v in r_i2t.items()}
    out["i2t Med r"] = metrics.median_rank(i2t)
    out.update({f"t2i R@{k}": 100.0 * v for k, v in r_t2i.items()})
    out["t2i Med r"] = metrics.median_rank(t2i)
    out["rsum"] = metrics.rsum(r_i2t, r_t2i, ks)
    return out


# ----------------------------------------------------------------------------- pair scoring
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (image idx, caption idx) -> scores


def pair_score_matrix(score_pairs: PairScorer, n_images: int, n_captions: int, chunk_pairs: int = 16384,
                      progress: bool = False, caption_block: int = 1024) -> np.ndarray:
    """Every (image, caption) score, about ``chunk_pairs`` pairs per call of ``score_pairs`` (under
    inference mode): blocks of images x up to ``caption_block`` captions, caption block by caption block
    (so that a scorer can keep what it derived from one caption block for every image block)."""
    if chunk_pairs < 1 or caption_block < 1:
        raise ValueError(f"chunk_pairs and caption_block must be >= 1, got {chunk_pairs}, {caption_block}")
    out = np.empty((n_images, n_captions), dtype=np.float32)
    cb = max(1, min(n_captions, caption_block, chunk_pairs))
    per_image = max(1, chunk_pairs // cb)
    blocks = [(a, c0) for c0 in range(0, n_captions, cb) for a in range(0, n_images, per_image)]
    with torch.inference_mode():
        for a, c0 in tqdm(blocks, desc="pair scores", disable=not progress):
            b, c1 = min(a + per_image, n_images), min(c0 + cb, n_captions)
            img = torch.arange(a, b).repeat_interleave(c1 - c0)
            cap = torch.arange(c0, c1).repeat(b - a)
            out[a:b, c0:c1] = score_pairs(img, cap).float().cpu().view(b - a, c1 - c0).numpy()
    return out


def default_k_t2i(k: int, n_images: int, n_captions: int) -> int:
    """K of the text->image direction by default: ceil(K / captions per image), captions per image being
    n_captions / n_images, so that a caption re-ranks the same share of its candidates (the images) as an
    image does of its own (the captions): K / n_captions = K_t2i / n_images, rounded up."""
    if k < 1 or n_images < 1 or n_captions < 1:
        raise ValueError(f"need k, n_images and n_captions >= 1, got {k}, {n_images}, {n_captions}")
    return -(-k * n_images // n_captions)


def candidate_pairs(first_stage: np.ndarray, k: int, k_t2i: int | None = None) -> np.ndarray:
    """(n, 2) distinct (image, caption) pairs, sorted, among each image's top-``k`` captions and each
    caption's top-``k_t2i`` images under the first-stage scores (a pair in both sets once).
    ``k_t2i`` None: ``default_k_t2i`` (= k when there are as many captions as images); 0: no caption's."""
    first_stage = np.asarray(first_stage)
    n_img, n_cap = first_stage.shape
    if k_t2i is None:
        k_t2i = default_k_t2i(k, n_img, n_cap)
    if k < 1 or k_t2i < 0:
        raise ValueError(f"need k >= 1 and k_t2i >= 0, got {k}, {k_t2i}")
    k_cap, k_img = min(k, n_cap), min(k_t2i, n_img)
    top_cap = np.argpartition(-first_stage, k_cap - 1, axis=1)[:, :k_cap]  # (N_img, k)
    parts = [np.repeat(np.arange(n_img, dtype=np.int64), k_cap) * n_cap + top_cap.ravel()]
    if k_img:
        top_img = np.argpartition(-first_stage, k_img - 1, axis=0)[:k_img]  # (k_t2i, N_cap)
        parts.append(top_img.ravel().astype(np.int64) * n_cap + np.tile(np.arange(n_cap), k_img))
    flat = np.unique(np.concatenate(parts))
    return np.stack([flat // n_cap, flat % n_cap], 1)


def two_stage_scores(first_stage: np.ndarray, score_pairs: PairScorer, k: int, k_t2i: int | None = None,
                     chunk_pairs: int = 1 << 22) -> tuple[np.ndarray, int]:
    """Re-rank the first stage's candidates (``candidate_pairs``: each image's top-``k`` captions and each
    caption's top-``k_t2i`` images, by default ceil(k / captions per image)) with ``score_pairs``,
    ``chunk_pairs`` pairs per call (large: a scorer can group long pair lists by image and by caption).

    Returns a score matrix in which, for every query, its re-scored candidates rank above every
    other item (ordered by the model's score) and the rest keep the first stage's order; and the
    number of pairs the model scored.
    """
    first_stage = np.asarray(first_stage, dtype=np.float64)
    pairs = candidate_pairs(first_stage, k, k_t2i)
    model_scores = np.empty(len(pairs), dtype=np.float64)
    with torch.inference_mode():
        for a in range(0, len(pairs), chunk_pairs):
            p = torch.as_tensor(pairs[a:a + chunk_pairs])
            model_scores[a:a + chunk_pairs] = score_pairs(p[:, 0], p[:, 1]).double().cpu().numpy()
    lo, hi = first_stage.min(), first_stage.max()
    offset = (hi - lo) + 1.0 - model_scores.min()  # every re-scored pair lands above hi
    out = first_stage.copy()
    out[pairs[:, 0], pairs[:, 1]] = model_scores + offset
    return out, len(pairs)


def timed(fn: Callable, *args, **kwargs):
    """(result, seconds) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def recall_kept(full: dict[str, float], two_stage: dict[str, float]) -> dict[str, float]:
    """Two-stage minus full-scoring recall, per R@K column (percent points; 0 = nothing lost)."""
    return {k: two_stage[k] - full[k] for k in full if "R@" in k}


def embedding_scores(image_emb: np.ndarray, caption_emb: np.ndarray, similarity: str = "cosine") -> np.ndarray:
    """(N_images, N_captions) similarity matrix of two embeddings (the dual encoder, CCA, DCCA)."""
    return metrics.similarity_scores(image_emb, caption_emb, similarity).astype(np.float32)
