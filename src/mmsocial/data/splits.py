"""Train/validation/test splits. Each returns an array of split names aligned with ``corpus.posts``."""

from __future__ import annotations

import numpy as np

from mmsocial.data.corpus import Corpus, CorpusError


def random_split(corpus: Corpus, fractions: dict[str, float], seed: int = 0) -> np.ndarray:
    """Assign posts at random to splits in the given proportions (they must sum to 1)."""
    names, fr = list(fractions), np.array(list(fractions.values()), dtype=float)
    if np.any(fr < 0) or abs(fr.sum() - 1) > 1e-9:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    n = len(corpus)
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum(fr) * n).astype(int)
    out = np.empty(n, dtype=object)
    start = 0
    for name, end in zip(names, bounds):
        out[order[start:end]] = name
        start = end
    return out


def chronological_split(corpus: Corpus, train: float = 0.7, val_share_of_rest: float = 1 / 3,
                        seed: int = 0) -> np.ndarray:
    """UHAN §4.1: the earliest ``train`` fraction trains; the rest is split at random into
    validation (``val_share_of_rest``) and test."""
    ts = corpus.posts["timestamp"].to_numpy()
    if np.isnan(ts).any():
        i = int(np.flatnonzero(np.isnan(ts))[0])
        raise CorpusError(f"post {corpus.posts['post_id'].iloc[i]!r} has no timestamp; "
                          f"a chronological split needs one on every post (field 'timestamp')")
    n = len(ts)
    order = np.argsort(ts, kind="stable")
    n_train = int(round(train * n))
    rest = order[n_train:].copy()
    np.random.default_rng(seed).shuffle(rest)
    n_val = int(round(val_share_of_rest * len(rest)))
    out = np.empty(n, dtype=object)
    out[order[:n_train]] = "train"
    out[rest[:n_val]] = "val"
    out[rest[n_val:]] = "test"
    return out


def dman_split(corpus: Corpus, seed: int = 0) -> np.ndarray:
    """DMAN §4.1: 4:1 train/test at random (validation, if any, is carved from train by the caller)."""
    return random_split(corpus, {"train": 0.8, "test": 0.2}, seed)


def uhan_split(corpus: Corpus, seed: int = 0) -> np.ndarray:
    return chronological_split(corpus, 0.7, 1 / 3, seed)


PAPER_SPLITS = {"dman": dman_split, "uhan": uhan_split}


def near_duplicate_images(vectors, threshold: float = 0.99, chunk_size: int = 1024) -> np.ndarray:
    """Group id of every image: images whose feature vectors have cosine >= ``threshold`` are joined
    (transitively, union-find), so that near-duplicates share a group. O(N^2) similarities, in chunks."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"image vectors must be (N, C), got {x.shape}")
    n = len(x)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, n, chunk_size):
        block = x[start:start + chunk_size] @ x.T
        rows, cols = np.nonzero(block >= threshold)
        for i, j in zip(rows + start, cols):
            if j > i:
                a, b = find(int(i)), find(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)])


def du2mce_split(has_image: np.ndarray, token_sets: list, image_vectors: np.ndarray | None,
                 val: float = 0.1, test: float = 0.2, seed: int = 0, image_threshold: float = 0.99,
                 text_overlap: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """DU2MCE §4.1 split. Returns (split names, duplicate mask); duplicates get split None.

    1. Near-duplicate images (cosine of the pooled features >= ``image_threshold``) form groups.
    2. A post is a duplicate of an earlier one when their images are in the same group and their word
       sets overlap (Jaccard) by >= ``text_overlap`` (or both texts are empty); a text-only post is a
       duplicate of an earlier text-only post with the same set of words (catches reordered words).
    3. Images are split first, by group (no near-duplicate image is shared between splits): ``val`` and
       ``test`` of the groups at random, the rest train. Text-only posts are split alone in the same
       proportions (they feed text -> user).
    ``image_vectors`` (rows aligned with the posts that have an image, in order) may be None: then every
    image is its own group.
    """
    has_image = np.asarray(has_image, dtype=bool)
    n = len(has_image)
    if len(token_sets) != n:
        raise ValueError(f"token_sets has {len(token_sets)} entries for {n} posts")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val and test must be fractions with val + test < 1, got {val}, {test}")
    sets = [frozenset(s) for s in token_sets]
    img = np.flatnonzero(has_image)
    group = np.full(n, -1, dtype=np.int64)
    if image_vectors is not None:
        if len(image_vectors) != len(img):
            raise ValueError(f"image_vectors has {len(image_vectors)} rows for {len(img)} posts with an image")
        group[img] = img[near_duplicate_images(image_vectors, image_threshold)]
    else:
        group[img] = img
    duplicate = np.zeros(n, dtype=bool)
    members: dict[int, list[int]] = {}
    for i in img:
        for j in members.get(group[i], ()):
            a, b = sets[i], sets[j]
            overlap = len(a & b) / len(a | b) if (a or b) else 1.0
            if overlap >= text_overlap:
                duplicate[i] = True
                break
        if not duplicate[i]:
            members.setdefault(group[i], []).append(i)
    seen: set = set()
    for i in np.flatnonzero(~has_image):
        if sets[i] and sets[i] in seen:
            duplicate[i] = True
        seen.add(sets[i])

    rng = np.random.default_rng(seed)
    out = np.full(n, None, dtype=object)

    def assign(ids: np.ndarray, keys: np.ndarray) -> None:
        uniq = rng.permutation(np.unique(keys))
        n_test, n_val = int(round(test * len(uniq))), int(round(val * len(uniq)))
        name = {k: "test" for k in uniq[:n_test]}
        name.update({k: "val" for k in uniq[n_test:n_test + n_val]})
        for i, k in zip(ids, keys):
            out[i] = name.get(k, "train")

    keep_img = img[~duplicate[img]]
    assign(keep_img, group[keep_img])
    txt = np.flatnonzero(~has_image & ~duplicate)
    assign(txt, txt)
    return out, duplicate
