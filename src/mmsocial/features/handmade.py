"""Hand-made features of the classic popularity baselines (SVR, Khosla et al. 2014; UHAN §4.1.3).

| feature            | function            | shape      |
|--------------------|---------------------|------------|
| colour histogram   | ``color_histograms`` | (N, bins³) |
| TF-IDF (reduced)   | ``tfidf_features``   | (N, dims)  |
| mean GloVe vector  | ``mean_word_vectors`` | (N, 50)   |
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from mmsocial.data.corpus import Corpus


def color_histogram(image, bins: int = 4, size: int = 64) -> np.ndarray:
    """Joint RGB histogram with ``bins`` levels per channel (bins³ values summing to 1) of a PIL image."""
    arr = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.int64) * bins // 256
    codes = (arr[..., 0] * bins + arr[..., 1]) * bins + arr[..., 2]
    hist = np.bincount(codes.ravel(), minlength=bins ** 3).astype(np.float32)
    return hist / hist.sum()


def color_histograms(corpus: Corpus, post_ids: Sequence[str], bins: int = 4, size: int = 64,
                     progress: bool = False) -> np.ndarray:
    """(N, bins³) colour histograms of the posts' images (a CorpusError names a missing image)."""
    out = np.zeros((len(post_ids), bins ** 3), dtype=np.float32)
    for i, pid in enumerate(tqdm(post_ids, desc="colour histograms", disable=not progress)):
        out[i] = color_histogram(corpus.open_image(pid), bins, size)
    return out


def tfidf_features(train_texts: Sequence[str], texts: Sequence[str], dims: int = 100, seed: int = 0) -> np.ndarray:
    """TF-IDF fitted on ``train_texts`` (words seen in >= 2 texts), reduced to ``dims`` by truncated SVD
    fitted on the training texts; returns the reduced vectors of ``texts``."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(min_df=2, lowercase=True, token_pattern=r"(?u)\b\w\w+\b")
    try:
        X_train = vec.fit_transform([t or "" for t in train_texts])
    except ValueError:  # no word occurs twice
        return np.zeros((len(texts), 1), dtype=np.float32)
    k = max(1, min(dims, X_train.shape[1] - 1, X_train.shape[0] - 1))
    svd = TruncatedSVD(k, random_state=seed).fit(X_train)
    return svd.transform(vec.transform([t or "" for t in texts])).astype(np.float32)


def mean_word_vectors(token_lists: Sequence[Sequence[str]], words: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    """Mean word vector of each token list (zeros when no token has a vector)."""
    index = {w: i for i, w in enumerate(words)}
    out = np.zeros((len(token_lists), vectors.shape[1]), dtype=np.float32)
    for i, tokens in enumerate(token_lists):
        rows = [index[t] for t in tokens if t in index]
        if rows:
            out[i] = np.asarray(vectors[rows], dtype=np.float32).mean(0)
    return out
