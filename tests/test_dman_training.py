"""DMAN's training glue (systems/dman.py): triplet batches streamed from the feature store, the batch
loss against a direct computation, and the empty-batch defects."""

import math

import numpy as np
import torch

from mmsocial.data.graph import LinkGraph, TripletSampler
from mmsocial.features.store import FeatureSet, write_features
from mmsocial.models.dman import DMANLoss, dman, dman_config
from mmsocial.systems import dman as dman_system
from mmsocial.train.data import FeatureDataset, TripletFeatures
from mmsocial.train.losses import hinge_rank_loss, weighted_bce

D, M, L = 4, 8, 6


def _data(labels_of, split, rng, regions=None):
    n = len(labels_of)
    regions = rng.normal(size=(n, D, M)).astype(np.float32) if regions is None else regions
    tags = (rng.random((n, L)) < 0.4).astype(np.float32)
    tags[np.arange(n), rng.integers(0, L, n)] = 1
    label_vocab = sorted({lab for labs in labels_of for lab in labs})
    labels = np.zeros((n, len(label_vocab)), dtype=np.float32)
    for i, labs in enumerate(labels_of):
        labels[i, [label_vocab.index(x) for x in labs]] = 1
    return dman_system.DMANData([f"p{i}" for i in range(n)], np.asarray(split), regions, np.arange(n), tags,
                                labels, [f"t{j}" for j in range(L)], [str(x) for x in label_vocab])


def _ring_labels(n, offset=0):
    """Post i holds labels i and i+1 (mod n): posts sharing a label form a ring of n nodes."""
    return [[offset + i, offset + (i + 1) % n] for i in range(n)]


def _cfg(tmp_path, **model):
    return dman_system.Config(preset="tiny", workdir=str(tmp_path), seeds=[0],
                              model={"epochs": 2, "batch_size": 64, **model}, train={"progress": False})


def test_training_on_a_65_node_ring_with_batches_of_64(rng, tmp_path):
    # the last batch of every epoch holds one anchor linked to nothing else in it: no triplet. It used
    # to reach default_collate empty (IndexError) and to make the validation loss NaN
    labels = _ring_labels(65) + _ring_labels(65, offset=100) + [[0]] * 10
    data = _data(labels, ["train"] * 65 + ["val"] * 65 + ["test"] * 10, rng)
    model, result = dman_system.train_model(data, "dman", _cfg(tmp_path), tmp_path / "run", seed=0)
    assert result.steps == 2  # one batch of 64 triplets per epoch
    assert len(result.history) == 2
    for row in result.history:
        assert all(math.isfinite(row[k]) for k in ("train_loss", "val_loss", "val_hinge", "val_bce"))


def test_training_streams_from_the_feature_store(rng, tmp_path):
    labels = [[i % 5] for i in range(60)] + [[i % 5] for i in range(20)]
    regions = rng.normal(size=(80, D, M)).astype(np.float16)
    write_features(tmp_path / "feats", [f"p{i}" for i in range(80)], (D, M),
                   [(0, regions)], {"extractor": "test"})
    feats = FeatureSet.open(tmp_path / "feats")
    data = _data(labels, ["train"] * 50 + ["val"] * 10 + ["test"] * 20, rng, regions=feats.data)
    assert isinstance(data.regions, np.memmap)
    in_ram = _data(labels, ["train"] * 50 + ["val"] * 10 + ["test"] * 20, np.random.default_rng(0),
                   regions=regions.astype(np.float32))
    in_ram.tags, in_ram.labels = data.tags, data.labels
    cfg = _cfg(tmp_path, batch_size=16)
    a, ra = dman_system.train_model(data, "dman", cfg, tmp_path / "a", seed=0)
    b, rb = dman_system.train_model(in_ram, "dman", cfg, tmp_path / "b", seed=0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)  # float16 on disk read as float32: the same numbers as in RAM
    assert ra.history == rb.history


def test_batch_loss_equals_a_direct_computation_over_sampled_triplets(rng):
    # sampler + TripletFeatures + batch_loss against the loss computed from the triplets' own rows,
    # with B > 1 anchors of distinct embeddings: a wrong negative (e.g. always the first anchor) differs
    n = 40
    labels = [[i % 4] for i in range(n)]
    data = _data(labels, ["train"] * n, rng)
    graph = dman_system.link_graph(data, "train", 50, seed=0)
    cfg = dman_config("tiny", num_words=L, num_regions=D, region_dim=M, k_negatives=3)
    torch.manual_seed(0)
    model = dman("tiny", num_words=L, num_regions=D, region_dim=M, k_negatives=3).eval()
    loss_fn = DMANLoss(cfg)
    dataset = TripletFeatures(data.features("train"))
    batches = list(TripletSampler(graph, 16, cfg.k_negatives, seed=0))
    assert len(batches) > 1 and all(len(b.anchors) > 1 for b in batches)
    regions, tags = torch.from_numpy(data.regions), torch.from_numpy(data.tags)
    for b in batches:
        assert not graph.is_linked(b.anchors[:, None], b.negatives).any()
        out = dman_system.batch_loss(loss_fn)(model, dataset.__getitems__(b))
        with torch.no_grad():
            ya, yp = model(regions[b.anchors]), model(regions[b.positives])
            yn = model(regions[b.negatives.ravel()]).view(len(b.anchors), cfg.k_negatives, -1)
            hinge = hinge_rank_loss(ya, yp, yn, cfg.margin, cfg.similarity, "none")
            assert hinge.shape == (len(b.anchors), cfg.k_negatives)
            hinge = hinge.mean()  # the mean over the B*K (anchor, negative) terms
            both = np.concatenate([b.anchors, b.positives])
            bce = weighted_bce(model(regions[both]), tags[both], cfg.lam, "mean")  # anchors and positives
            bce = bce / L if cfg.bce_word_mean else bce
        assert torch.allclose(out["hinge"], hinge, atol=1e-6)
        assert torch.allclose(out["bce"], bce, atol=1e-6)
        assert torch.allclose(out["loss"], hinge + cfg.beta * bce, atol=1e-6)


def test_triplet_features_reads_anchors_then_positives_and_the_negative_slots(rng):
    arr = rng.normal(size=(10, 2, 3)).astype(np.float16)
    ds = TripletFeatures(FeatureDataset({"regions": arr, "tags": np.arange(10)}))
    g = LinkGraph.from_pairs(10, np.arange(9), np.arange(1, 10))
    b = next(iter(TripletSampler(g, 5, k_negatives=2, seed=0)))
    out = ds.__getitems__(b)
    rows = np.concatenate([b.anchors, b.positives])
    assert torch.equal(out["regions"], torch.from_numpy(arr[rows].astype(np.float32)))
    assert out["tags"].tolist() == rows.tolist()
    assert (b.anchors[out["slots"].numpy()] == b.negatives).all()
