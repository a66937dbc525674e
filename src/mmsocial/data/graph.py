"""The link graph between posts (DMAN §3.2, §4.1) and triplet sampling for the hinge rank loss.

DMAN links two posts when they share at least one label and keeps at most 50 sampled links
per node (``m`` below). The paper does not say how the cap is kept on an undirected graph;
here it is, in two vectorised steps:

1. Proposals. A post whose labels have at most m other posts in all proposes every one of
   them. Any other post draws max(1, m // 2) candidates with replacement (a draw picks one
   of the post's labels with probability proportional to that label's number of other posts,
   then a uniform other post of that label; duplicates are dropped).
2. Acceptance. A proposal made both ways (i -> j and j -> i) is an edge. Each post accepts,
   at random, at most ``m - (number of its own proposals)`` of the one-way proposals it
   receives; an accepted proposal is an edge, a refused one is dropped.

So a post's links are its accepted own proposals plus the proposals it accepted, at most
``own + (m - own) = m``: the cap holds exactly, and every link is between posts sharing a
label. A small label group whose posts carry no other large label becomes a clique; posts of
large groups end with about 0.8 m links (refused proposals are not redrawn).

Everything is vectorised with NumPy (no loop over posts or pairs), so 1M posts work.
"""

from __future__ import annotations

import itertools
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mmsocial.data.corpus import Corpus, CorpusError

_CHUNK_DRAWS = 4_000_000  # draws per vectorised chunk; bounds the memory of step 1


# ---------------------------------------------------------------------------- label links
def label_link_pairs(post_of: np.ndarray, label_of: np.ndarray, n_posts: int,
                     max_per_node: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Undirected label links from a (post, label) incidence list; returns (src, dst), src < dst.

    ``post_of[k]`` and ``label_of[k]`` are integer ids of one (post, label) membership.
    """
    if max_per_node < 1:
        raise ValueError(f"max_per_node must be >= 1, got {max_per_node}")
    post_of = np.asarray(post_of, dtype=np.int64)
    label_of = np.asarray(label_of, dtype=np.int64)
    if post_of.shape != label_of.shape:
        raise ValueError("post_of and label_of must have the same length")
    if len(post_of) and (post_of.min() < 0 or post_of.max() >= n_posts):
        raise ValueError(f"post ids must lie in [0, {n_posts}), got {post_of.min()}..{post_of.max()}")
    rng = np.random.default_rng(seed)
    src, dst = _propose(post_of, label_of, n_posts, max_per_node, rng)
    return _accept(src, dst, n_posts, max_per_node, rng)


def label_links(corpus_or_label_lists: "Corpus | Sequence[Sequence[str]]", max_per_node: int = 50,
                seed: int = 0) -> pd.DataFrame:
    """DMAN's label rule: DataFrame(src, dst, kind="label"), each undirected edge once (src < dst).

    Given a Corpus, src/dst are post ids; given a list of label lists, they are row positions.
    """
    if isinstance(corpus_or_label_lists, Corpus):
        ids = corpus_or_label_lists.posts["post_id"].to_numpy(dtype=object)
        lists = corpus_or_label_lists.posts["labels"]
    else:
        ids, lists = None, corpus_or_label_lists
    n = len(lists)
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=n)
    flat = list(itertools.chain.from_iterable(lists))
    label_of, _ = pd.factorize(pd.Series(flat, dtype=object))
    post_of = np.repeat(np.arange(n), lengths)
    src, dst = label_link_pairs(post_of, label_of, n, max_per_node, seed)
    if ids is not None:
        src, dst = ids[src], ids[dst]
    return pd.DataFrame({"src": src, "dst": dst, "kind": np.full(len(src), "label", dtype=object)})


def _propose(post_of, label_of, n, m, rng) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: distinct directed proposals (src, dst), sorted by src then dst."""
    n_labels = int(label_of.max(initial=0)) + 1
    inc = _sorted_unique(post_of * n_labels + label_of)  # dedupe; sorted by post
    post_of, label_of = inc // n_labels, inc % n_labels
    cnt = np.bincount(label_of, minlength=n_labels)
    by_label = np.argsort(label_of, kind="stable")
    members = post_of[by_label]                      # posting lists, concatenated by label
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    pos_in_label = np.empty(len(inc), dtype=np.int64)  # each incidence's place in its posting list
    pos_in_label[by_label] = np.arange(len(inc)) - start[label_of[by_label]]
    others = cnt[label_of] - 1                       # posts sharing this label, self excluded
    total = np.bincount(post_of, weights=others, minlength=n).astype(np.int64)
    keys = []

    # Posts with at most m label-mates propose all of them.
    exact = total[post_of] <= m
    e_post, e_label = post_of[exact], label_of[exact]
    reps = cnt[e_label]
    if reps.sum():
        src = np.repeat(e_post, reps)
        k = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
        dst = members[np.repeat(start[e_label], reps) + k]
        keys.append(src[dst != src] * n + dst[dst != src])

    # The others draw max(1, m // 2) label-mates with replacement.
    sampled = np.flatnonzero(total > m)
    draws = max(1, m // 2)
    if len(sampled):
        s_inc = ~exact                                   # incidences of sampled posts, sorted by post
        i_label, i_pos, w = label_of[s_inc], pos_in_label[s_inc], others[s_inc]
        cw = np.cumsum(w)
        first_inc = np.searchsorted(post_of[s_inc], sampled, side="left")
        base = np.where(first_inc > 0, cw[np.maximum(first_inc - 1, 0)], 0)
        per_chunk = max(1, _CHUNK_DRAWS // draws)
        for a in range(0, len(sampled), per_chunk):
            nodes = sampled[a:a + per_chunk]
            r = (rng.random((len(nodes), draws)) * total[nodes][:, None]).astype(np.int64)
            target = (base[a:a + per_chunk][:, None] + np.minimum(r, total[nodes][:, None] - 1)).ravel()
            j = np.searchsorted(cw, target, side="right")  # which of the post's labels
            k = target - (cw[j] - w[j])                    # rank among that label's other posts
            k = k + (k >= i_pos[j])                        # skip the post itself
            keys.append(np.repeat(nodes, draws) * n + members[start[i_label[j]] + k])
    if not keys:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    keys = _sorted_unique(np.concatenate(keys))
    return keys // n, keys % n


def _accept(src, dst, n, m, rng) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: each node accepts at most m - (its own proposals) of the non-mutual proposals it
    receives, at random; returns the undirected edges (src < dst), sorted."""
    keys = src * n + dst                               # sorted (from _propose)
    both = np.sort(np.r_[keys, dst * n + src])         # a key present twice is a mutual proposal
    twice = both[1:][both[1:] == both[:-1]]
    mutual = np.zeros(len(keys), dtype=bool)
    if len(twice):
        mutual = twice[np.minimum(np.searchsorted(twice, keys), len(twice) - 1)] == keys
    room = m - np.bincount(src, minlength=n)
    s_in, d_in = src[~mutual], dst[~mutual]
    shuffle = rng.permutation(len(s_in))                # random priority among a node's proposers
    s_in, d_in = s_in[shuffle], d_in[shuffle]
    by_dst = np.argsort(d_in, kind="stable")
    grouped = d_in[by_dst]
    group_start = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if len(grouped) else grouped
    sizes = np.diff(np.r_[group_start, len(grouped)])
    rank = np.empty(len(d_in), dtype=np.int64)
    rank[by_dst] = np.arange(len(d_in)) - np.repeat(group_start, sizes)
    ok = rank < room[d_in]
    a = np.r_[src[mutual & (src < dst)], s_in[ok]]
    b = np.r_[dst[mutual & (src < dst)], d_in[ok]]
    edges = _sorted_unique(np.minimum(a, b) * n + np.maximum(a, b))
    return edges // n, edges % n


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    a = np.sort(a)  # np.unique's hash path is several times slower on large int64 arrays
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


# ---------------------------------------------------------------------------- graph
class LinkGraph:
    """Undirected adjacency over row positions 0..n-1 in CSR form (sorted neighbour lists)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices)
        self.n = len(self.indptr) - 1

    @classmethod
    def from_pairs(cls, n: int, src: np.ndarray, dst: np.ndarray) -> "LinkGraph":
        """Symmetrise, drop self loops and duplicates, and build the CSR arrays."""
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
            raise ValueError(f"link ends must be row positions in [0, {n})")
        import scipy.sparse as sp

        a, b = np.r_[src, dst], np.r_[dst, src]
        loop = a == b
        adj = sp.csr_matrix((np.ones(int((~loop).sum()), dtype=bool), (a[~loop], b[~loop])), shape=(n, n))
        adj.sum_duplicates()  # sorts each row and merges repeated links
        return cls(adj.indptr.astype(np.int64), adj.indices)

    @classmethod
    def from_corpus(cls, corpus: Corpus, kinds: Sequence[str] | None = ("label",)) -> "LinkGraph":
        """The graph of ``corpus.links`` of the given kinds (None: all) over ``corpus.posts`` rows."""
        links = corpus.links
        if kinds is not None:
            known = set(links["kind"].unique())
            if not set(kinds) & known and len(links):
                raise CorpusError(f"{corpus._where()}: no links of kind {list(kinds)} "
                                  f"(links.parquet has {sorted(known)})")
            if not known <= set(kinds):
                links = links[links["kind"].isin(list(kinds))]
        ids = pa.array(corpus.posts["post_id"], type=pa.string())
        src, dst = (pc.index_in(pa.array(links[end], type=pa.string()), value_set=ids)
                    .fill_null(-1).to_numpy() for end in ("src", "dst"))
        bad = (src < 0) | (dst < 0)
        if bad.any():
            r = links[bad].iloc[0]
            raise CorpusError(f"{corpus._where()}: link {r['src']!r} -> {r['dst']!r} points to a post "
                              f"that is not in this corpus (field 'src'/'dst' of links.parquet)")
        return cls.from_pairs(len(corpus), src, dst)

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def n_edges(self) -> int:
        return len(self.indices) // 2

    def neighbours(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i]:self.indptr[i + 1]]

    def is_linked(self, i, j) -> np.ndarray:
        """Whether i and j are linked, elementwise with broadcasting (a vectorised binary search)."""
        i, j = np.broadcast_arrays(np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64))
        if len(self.indices) == 0:
            return np.zeros(i.shape, dtype=bool)
        lo, end = self.indptr[i], self.indptr[i + 1]
        hi = end.copy()
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            less = self.indices[np.minimum(mid, len(self.indices) - 1)] < j
            lo = np.where(active & less, mid + 1, lo)
            hi = np.where(active & ~less, mid, hi)
        found = lo < end
        found[found] = self.indices[lo[found]] == j[found]
        return found


# ---------------------------------------------------------------------------- triplets
class TripletBatch(NamedTuple):
    """Row positions: anchors (B,), positives (B,), negatives (B, K); negatives are anchors of
    the same batch (DMAN §3.2), so their embeddings can be reused (see ``negative_slots``)."""
    anchors: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray

    def negative_slots(self) -> np.ndarray:
        """Positions of ``negatives`` inside ``anchors``, (B, K)."""
        order = np.argsort(self.anchors)
        return order[np.searchsorted(self.anchors[order], self.negatives)]

    @property
    def num_examples(self) -> int:
        """B, the number of triplets (what the trainer counts as examples)."""
        return len(self.anchors)


class TripletSampler:
    """DMAN triplets: each anchor gets one linked positive and K unlinked negatives from its batch.

    - Anchors are the nodes with at least one link, shuffled every epoch (``set_epoch(e)``, or an
      internal counter that advances after each full pass). Nodes without links are skipped:
      they have no positive.
    - The positive is a uniform neighbour of the anchor from the whole graph; it is *added* to
      the batch (it need not be an anchor of the batch).
    - The K negatives are other anchors of the same batch not linked to the anchor, drawn
      without replacement; when fewer than K exist they are drawn with replacement, and an
      anchor with none at all is dropped from the batch.
    - A batch left without any triplet (all its anchors linked to each other, e.g. a short last
      batch of one node) is not yielded, so every batch has B >= 1 (``len(sampler)`` is then an
      upper bound). Distributed, such a position is skipped on every rank alike, so that the
      ranks keep the same number of batches.
    - Distributed: every rank shuffles with the same seed and epoch, drops the tail so the
      count divides by ``world_size``, and takes every ``world_size``-th node from ``rank``:
      the ranks' anchors are disjoint and equal in number.
    """

    def __init__(self, graph: LinkGraph, batch_size: int, k_negatives: int = 3, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False):
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (negatives come from the batch), got {batch_size}")
        if k_negatives < 1:
            raise ValueError(f"k_negatives must be >= 1, got {k_negatives}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.graph, self.batch_size, self.k = graph, batch_size, k_negatives
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.nodes = np.flatnonzero(graph.degree > 0)
        if len(self.nodes) < world_size:
            raise ValueError(f"the graph has {len(self.nodes)} linked nodes, fewer than world_size "
                             f"{world_size}; build links first (mmsocial.data.graph.label_links)")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_nodes(self, epoch: int) -> list[np.ndarray]:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.nodes)
        perm = perm[:len(perm) - len(perm) % self.world_size]
        return [perm[r::self.world_size] for r in range(self.world_size)]

    def __len__(self) -> int:
        """Batches per epoch at most (a batch without any triplet is skipped)."""
        n = len(self.nodes) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _has_triplet(self, batch: np.ndarray) -> bool:
        linked = self.graph.is_linked(batch[:, None], batch[None, :])
        np.fill_diagonal(linked, True)
        return not linked.all()

    def __iter__(self) -> Iterator[TripletBatch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        ranks = self._rank_nodes(epoch)
        nodes = ranks[self.rank]
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        for a in range(0, len(nodes), self.batch_size):
            batch = nodes[a:a + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                break
            triplets = self._triplets(batch, rng)
            if len(triplets.anchors) and all(self._has_triplet(other[a:a + self.batch_size])
                                             for r, other in enumerate(ranks) if r != self.rank):
                yield triplets

    def _triplets(self, batch: np.ndarray, rng: np.random.Generator) -> TripletBatch:
        g, k, b = self.graph, self.k, len(batch)
        deg = g.degree[batch]
        positives = g.indices[g.indptr[batch] + (rng.random(b) * deg).astype(np.int64)].astype(np.int64)
        allowed = ~g.is_linked(batch[:, None], batch[None, :])
        np.fill_diagonal(allowed, False)
        n_allowed = allowed.sum(1)
        keys = np.where(allowed, rng.random((b, b)), np.inf)
        if b > k:
            slots = np.argpartition(keys, k - 1, axis=1)[:, :k]
        else:
            slots = np.argsort(keys, axis=1)[:, :k]
            slots = np.pad(slots, ((0, 0), (0, k - slots.shape[1])), mode="edge")
        for row in np.flatnonzero((n_allowed > 0) & (n_allowed < k)):
            slots[row] = rng.choice(np.flatnonzero(allowed[row]), size=k, replace=True)
        keep = n_allowed > 0
        return TripletBatch(batch[keep].astype(np.int64), positives[keep],
                            batch[slots[keep]].astype(np.int64))
