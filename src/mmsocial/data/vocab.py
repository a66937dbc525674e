"""Frequency vocabularies and multi-hot encoding: the one copy every module uses.

Counting rule (the only one in mmsocial): **document frequency**. A term counts once for every
list (post, text) that holds it, however often it is repeated there; terms are ordered by
decreasing count, ties alphabetically. This is how DMAN's "most frequent tags" are read (a
tag is a set member of a post), and the usual rule for a vocabulary of documents.

    vocab = frequency_vocabulary(train_tag_lists, size=1000)   # DMAN's top-L tags
    T = multi_hot(tag_lists, vocab)                              # (N, L) float32, unknown tags ignored
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Literal, Sequence

import numpy as np

__all__ = ["document_frequencies", "frequency_vocabulary", "multi_hot"]


def document_frequencies(lists: Iterable[Iterable[str]]) -> Counter:
    """term -> the number of lists holding it (each list counts a term once)."""
    return Counter(t for terms in lists for t in set(terms))


def frequency_vocabulary(lists: Iterable[Iterable[str]], size: int | None = None, min_count: int = 1,
                         exclude: Iterable[str] = ()) -> list[str]:
    """Terms held by at least ``min_count`` lists, most frequent first (ties alphabetical), at most ``size``."""
    if size is not None and size < 1:
        raise ValueError(f"vocabulary size must be >= 1, got {size}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = document_frequencies(lists)
    skip = set(exclude)
    terms = sorted((t for t, c in counts.items() if c >= min_count and t not in skip), key=lambda t: (-counts[t], t))
    return terms if size is None else terms[:size]


def multi_hot(lists: Sequence[Iterable], vocabulary: Sequence, unknown: Literal["ignore", "raise"] = "ignore",
              name: str = "lists") -> np.ndarray:
    """(N, len(vocabulary)) float32: row i has 1 at the position of each term of ``lists[i]``.

    A term outside the vocabulary is skipped (``unknown="ignore"``) or a ValueError naming the
    row (``"raise"``).
    """
    index = {t: j for j, t in enumerate(vocabulary)}
    rows, cols = [], []
    for i, terms in enumerate(lists):
        for t in terms:
            j = index.get(t)
            if j is None:
                if unknown == "raise":
                    raise ValueError(f"{name}[{i}] holds {t!r}, which is not in the vocabulary")
                continue
            rows.append(i)
            cols.append(j)
    out = np.zeros((len(lists), len(index)), dtype=np.float32)
    out[rows, cols] = 1.0
    return out
