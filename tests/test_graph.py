"""The label-link rule (share a label, at most m links per node), the CSR graph, triplet sampling."""

import numpy as np
import pandas as pd
import pytest

from mmsocial.data.corpus import Corpus, CorpusError, make_posts
from mmsocial.data.graph import LinkGraph, TripletSampler, label_link_pairs, label_links


def _random_labels(n, n_labels, seed):
    rng = np.random.default_rng(seed)
    return [list(rng.choice(n_labels, size=rng.integers(1, 4), replace=False).astype(str)) for _ in range(n)]


def _edges(df):
    return set(zip(df["src"], df["dst"]))


def test_every_link_shares_a_label_and_the_cap_holds():
    lists = _random_labels(3000, 12, 0)
    links = label_links(lists, max_per_node=20, seed=0)
    assert (links["kind"] == "label").all()
    assert (links["src"] < links["dst"]).all()
    assert not links.duplicated(["src", "dst"]).any()
    for s, d in zip(links["src"], links["dst"]):
        assert set(lists[s]) & set(lists[d])
    deg = np.bincount(np.r_[links["src"], links["dst"]], minlength=len(lists))
    assert deg.max() <= 20
    assert deg.mean() > 0.6 * 20  # big label groups: most posts get close to the cap


@pytest.mark.parametrize("m", [1, 2, 7, 50])
def test_cap_holds_for_any_m_in_one_big_group(m):
    src, dst = label_link_pairs(np.arange(500), np.zeros(500, dtype=int), 500, max_per_node=m, seed=3)
    deg = np.bincount(np.r_[src, dst], minlength=500)
    assert deg.max() <= m and deg.sum() > 0


def test_small_groups_become_cliques_and_singletons_stay_isolated():
    lists = [["a"], ["a"], ["a"], ["a"], ["b"], ["c"], ["c"]]
    links = label_links(lists, max_per_node=50)
    assert _edges(links) == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (5, 6)}


def test_label_links_deterministic_by_seed_and_named_by_post_id():
    lists = _random_labels(500, 5, 1)
    a, b, c = (label_links(lists, 10, seed=s) for s in (0, 0, 1))
    assert a.equals(b)
    assert _edges(a) != _edges(c)
    corpus = Corpus(make_posts([{"post_id": f"x{i}", "labels": l} for i, l in enumerate(lists)]))
    named = label_links(corpus, 10, seed=0)
    assert list(named["src"]) == [f"x{i}" for i in a["src"]]
    assert list(named["dst"]) == [f"x{i}" for i in a["dst"]]


def test_posts_without_labels_get_no_links():
    links = label_links([[], ["a"], ["a"], []], 50)
    assert _edges(links) == {(1, 2)}
    assert len(label_links([[], []], 50)) == 0
    with pytest.raises(ValueError, match="max_per_node"):
        label_links([["a"]], 0)


def test_label_links_scale_20k_posts():
    lists = _random_labels(20_000, 20, 2)
    links = label_links(lists, 50, seed=0)
    deg = np.bincount(np.r_[links["src"], links["dst"]], minlength=len(lists))
    assert deg.max() <= 50 and deg.min() > 0


# ---------------------------------------------------------------------------- LinkGraph
def test_link_graph_is_symmetric_sorted_and_is_linked_matches_brute_force(rng):
    n = 300
    src, dst = rng.integers(0, n, 2000), rng.integers(0, n, 2000)
    g = LinkGraph.from_pairs(n, src, dst)
    truth = {(a, b) for a, b in zip(src, dst) if a != b} | {(b, a) for a, b in zip(src, dst) if a != b}
    assert g.n_edges * 2 == len(truth)
    for i in range(n):
        nb = g.neighbours(i)
        assert list(nb) == sorted({b for a, b in truth if a == i})
        assert g.degree[i] == len(nb)
    i, j = rng.integers(0, n, 5000), rng.integers(0, n, 5000)
    assert (g.is_linked(i, j) == np.array([(a, b) in truth for a, b in zip(i, j)])).all()
    block = g.is_linked(np.arange(10)[:, None], np.arange(n)[None, :])
    assert block.shape == (10, n) and block.sum() == g.degree[:10].sum()


def test_link_graph_from_corpus_maps_post_ids_and_checks_kinds(tiny_corpus):
    g = LinkGraph.from_corpus(tiny_corpus)
    assert g.n == len(tiny_corpus) and g.n_edges == 2
    assert g.is_linked([0, 2, 1, 0], [2, 0, 3, 1]).tolist() == [True, True, True, False]
    with pytest.raises(CorpusError, match="no links of kind"):
        LinkGraph.from_corpus(tiny_corpus, kinds=("author",))
    empty = LinkGraph.from_pairs(4, [], [])
    assert empty.is_linked([0, 1], [1, 2]).tolist() == [False, False]


# ---------------------------------------------------------------------------- triplets
def _graph(n=400, m=10, seed=0):
    lists = _random_labels(n, 15, seed) + [["lonely"]]  # the last post has no neighbour
    links = label_links(lists, m, seed=seed)
    return LinkGraph.from_pairs(len(lists), links["src"], links["dst"])


def test_triplets_positive_linked_negatives_unlinked_and_from_the_batch():
    g = _graph()
    sampler = TripletSampler(g, batch_size=32, k_negatives=3, seed=0)
    seen = []
    for batch in sampler:
        a, p, neg = batch
        assert neg.shape == (len(a), 3)
        assert g.is_linked(a, p).all()
        assert not g.is_linked(a[:, None], neg).any()
        assert (neg != a[:, None]).all()
        assert np.isin(neg, a).all()
        assert (a[batch.negative_slots()] == neg).all()
        seen.append(a)
    seen = np.concatenate(seen)
    assert len(seen) == len(np.unique(seen))
    assert g.n - 1 not in seen  # isolated node skipped
    assert len(seen) >= 0.95 * (g.degree > 0).sum()


def test_triplets_deterministic_and_reshuffled_each_epoch():
    g = _graph()
    first = [b.anchors for b in TripletSampler(g, 64, seed=5)]
    s = TripletSampler(g, 64, seed=5)
    again, second = [b.anchors for b in s], [b.anchors for b in s]  # internal epoch counter
    assert all((x == y).all() for x, y in zip(first, again))
    assert not all((x == y).all() for x, y in zip(first, second))
    s.set_epoch(0)
    assert all((x == y).all() for x, y in zip(first, [b.anchors for b in s]))
    other_seed = [b.anchors for b in TripletSampler(g, 64, seed=6)]
    assert not (first[0] == other_seed[0]).all()


def test_triplets_shard_disjointly_across_ranks():
    g = _graph()
    world = 3
    per_rank = []
    for rank in range(world):
        s = TripletSampler(g, 50, seed=1, rank=rank, world_size=world)
        s.set_epoch(4)
        per_rank.append(np.concatenate([b.anchors for b in s]) if len(s) else np.array([]))
        assert len(s) == len(list(s))
    sizes = {len(x) for x in per_rank}
    linked = int((g.degree > 0).sum())
    all_anchors = np.concatenate(per_rank)
    assert len(np.unique(all_anchors)) == len(all_anchors)
    assert len(all_anchors) > linked - world - 50  # only the remainder / dropped anchors missing
    assert max(sizes) - min(sizes) <= 50


def test_triplets_when_few_negatives_exist():
    # a clique of 4 plus 2 loose pairs: in one batch of all 8, clique members have 4 negatives
    src = [0, 0, 0, 1, 1, 2, 4, 6]
    dst = [1, 2, 3, 2, 3, 3, 5, 7]
    g = LinkGraph.from_pairs(8, src, dst)
    b = next(iter(TripletSampler(g, batch_size=8, k_negatives=6, seed=0)))
    assert len(b.anchors) == 8
    assert not g.is_linked(b.anchors[:, None], b.negatives).any()
    assert (b.negatives != b.anchors[:, None]).all()
    # a batch where everything is linked: no negative exists, every anchor is dropped, and the
    # batch, left without any triplet, is not yielded at all
    full = LinkGraph.from_pairs(3, [0, 0, 1], [1, 2, 2])
    assert list(TripletSampler(full, batch_size=3, seed=0)) == []


def _ring(n):
    return LinkGraph.from_pairs(n, np.arange(n), (np.arange(n) + 1) % n)


def test_no_empty_triplet_batch_from_a_short_last_batch():
    # 65 nodes in a ring, batches of 64: the last batch holds one anchor, which has no negative
    s = TripletSampler(_ring(65), batch_size=64, k_negatives=3, seed=0)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == 1 and len(batches[0].anchors) == 64 and batches[0].num_examples == 64
    assert len(s) == 2  # an upper bound


def test_empty_batch_positions_skipped_on_every_rank_alike():
    # 4 linked pairs; batches of 2 nodes per rank: a batch that is one linked pair has no triplet
    g = LinkGraph.from_pairs(8, [0, 2, 4, 6], [1, 3, 5, 7])
    one_rank_empty = 0
    for epoch in range(20):
        per_rank = []
        for rank in range(2):
            s = TripletSampler(g, batch_size=2, k_negatives=1, seed=0, rank=rank, world_size=2)
            s.set_epoch(epoch)
            per_rank.append(list(s))
            assert all(len(b.anchors) > 0 for b in per_rank[-1])
            nodes = s._rank_nodes(epoch)[rank]
            pairs_empty = g.is_linked(nodes[[0, 2]], nodes[[1, 3]])
            one_rank_empty += sum(pairs_empty)
        assert len(per_rank[0]) == len(per_rank[1])
    assert one_rank_empty > 0  # the case occurred


def test_sampler_checks_its_arguments():
    g = _graph(50)
    with pytest.raises(ValueError, match="batch_size"):
        TripletSampler(g, 1)
    with pytest.raises(ValueError, match="rank"):
        TripletSampler(g, 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="linked nodes"):
        TripletSampler(LinkGraph.from_pairs(3, [], []), 8)


def test_link_graph_from_corpus_keeps_only_the_chosen_kinds(tiny_corpus):
    extra = pd.DataFrame({"src": ["p4", "p0"], "dst": ["p5", "p2"], "kind": ["author", "author"]})
    c = tiny_corpus.with_links(pd.concat([tiny_corpus.links, extra], ignore_index=True))
    assert LinkGraph.from_corpus(c, kinds=("author",)).n_edges == 2
    assert LinkGraph.from_corpus(c, kinds=("label",)).n_edges == 2
    assert LinkGraph.from_corpus(c, kinds=None).n_edges == 3  # p0-p2 is both kinds
    train = LinkGraph.from_corpus(c.filter(np.array([True, True, True, True, False, False])), kinds=None)
    assert train.n == 4 and train.n_edges == 2
