"""DMAN as a system: settings, data preparation, the rows of Tables 2 and 3, one (row, seed) cell,
`mmsocial train dman` and DMAN's part of the demo. The model itself is ``models/dman.py``; the
protocols are ``eval/protocols/dman.py``.

    from mmsocial.experiment import run_experiment
    result = run_experiment("configs/dman/table2.yaml")      # or `mmsocial experiment ...`

Recipe: corpus -> ``select_posts`` (split 4:1, a tenth of train kept for validation: 72/8/20; the
top-L training tags by document frequency; posts with an image, a label and a vocabulary tag) ->
cached region grids, memory-mapped -> label graph over the training posts -> for each seed and row
(CCA, KCCA, DCCA, DMAN_Triplet, DMAN_Triplet+Text, DMAN) train, embed, run both protocols.
Training streams the region grids of each TripletBatch from the feature store
(``train.data.TripletFeatures``): no split is ever copied whole into RAM.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Optional

import numpy as np
import torch
from pydantic import Field, model_validator

from mmsocial.config import ConfigError, ExperimentConfig, StrictModel, TrainConfig, load_config, partial_model
from mmsocial.data.corpus import Corpus, CorpusError
from mmsocial.eval.table import ResultTable
from mmsocial.io import write_json
from mmsocial.systems import Cell

log = logging.getLogger(__name__)

NAME = "dman"
TITLE = "DMAN"
PAPER = "dman-social-image-embedding.md"
ROWS = ("CCA", "KCCA", "DCCA", "DMAN_Triplet", "DMAN_Triplet+Text", "DMAN")
TABLES = ("table2", "table3")
VARIANT_OF_ROW = {"DMAN_Triplet": "triplet", "DMAN_Triplet+Text": "triplet_text", "DMAN": "dman"}


# ---------------------------------------------------------------------------- settings
class ModelSettings(StrictModel):
    """Overrides of ``models.dman.DMANConfig`` (None = the preset's value). ``num_words``,
    ``num_regions`` and ``region_dim`` are always set from the data when a model is built;
    ``variant`` is the row's in an experiment and this value (default "dman") in `train`."""

    variant: Optional[Literal["dman", "triplet", "triplet_text"]] = None
    num_words: Optional[int] = Field(None, ge=1)
    num_regions: Optional[int] = Field(None, ge=1)
    region_dim: Optional[int] = Field(None, ge=1)
    lfc_dims: Optional[list[int]] = None
    fc_dims: Optional[list[int]] = None
    dropout: Optional[float] = Field(None, ge=0, lt=1)
    margin: Optional[float] = None
    k_negatives: Optional[int] = Field(None, ge=1)
    similarity: Optional[Literal["eq1", "cosine"]] = None
    lam: Optional[float] = None
    beta: Optional[float] = None
    bce_word_mean: Optional[bool] = None
    input_norm: Optional[bool] = None
    init: Optional[Literal["torch", "keras"]] = None
    lr: Optional[float] = Field(None, gt=0)
    momentum: Optional[float] = Field(None, ge=0, lt=1)
    nesterov: Optional[bool] = None
    batch_size: Optional[int] = Field(None, ge=1)
    epochs: Optional[int] = Field(None, ge=1)

    def overrides(self) -> dict[str, Any]:
        """The fields that were set (variant excluded), as keyword arguments of ``dman_config``."""
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None and k != "variant"}


TrainOverrides = partial_model(TrainConfig, "TrainOverrides")


class BaselineSettings(StrictModel):
    n_components: int = Field(64, ge=1, description="canonical components of CCA, KCCA and DCCA")
    cca_reg: float = Field(1e-3, ge=0)
    kcca_reg: float = Field(1e-1, ge=0)
    kcca_features: int = Field(1000, ge=1, description="Nyström landmarks per view")
    dcca_hidden: list[int] = [512, 256]
    dcca_epochs: int = Field(50, ge=1)
    dcca_lr: float = Field(1e-3, gt=0)


class ClassifierSettings(StrictModel):
    hidden: list[int] = [512, 256]
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(10, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)


class Config(ExperimentConfig):
    """Everything one DMAN experiment or training run needs; see configs/dman/*.yaml."""

    ROWS: ClassVar[tuple[str, ...]] = ROWS
    TABLES: ClassVar[tuple[str, ...]] = TABLES

    system: Literal["dman"] = "dman"
    name: str = "dman"
    workdir: str = "runs/dman"
    backbone: str = "mobilenet_v2"
    image_size: int = 224
    weights: str = Field("imagenet", description="backbone weights: imagenet, random (tests), or a path")
    num_tags: int = Field(300, ge=1, description="L: the most frequent training tags")
    max_links: int = Field(50, ge=1, description="links kept per node (paper: 50)")
    split_seed: int = 0
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of train kept for validation")
    preset: Literal["default", "small", "tiny"] = "small"
    model: ModelSettings = Field(default_factory=ModelSettings, description="DMANConfig overrides")
    rows: list[str] = Field(default_factory=lambda: list(ROWS), description="table rows to run; empty = every row")
    tables: list[Literal["table2", "table3"]] = Field(default_factory=lambda: list(TABLES))
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="TrainConfig overrides; "
                                  "optimiser, lr, momentum, batch size and epochs default to the DMAN config")
    selection: Optional[Literal["val_loss", "val_hinge", "val_bce"]] = Field(
        "val_loss", description="model selection, one rule for every trained row: the epoch with the lowest "
        "value of this validation metric is kept (val_loss: the row's own training loss on the validation "
        "posts; DCCA always uses its val_loss, minus the validation canonical correlation); the test split "
        "is never used. None keeps the last epoch. Sets train.early_stopping (patience = every epoch, so "
        "the whole schedule runs and the curves show it) unless that is given")
    baseline_embedding: Literal["image", "both"] = Field(
        "image", description="Table 2 post embedding of CCA/KCCA/DCCA: the image view's projection "
        "(like DMAN, whose Y = f_w(V) sees the image only) or both projected views concatenated")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (None: usable CPUs minus "
                                   "the 1-minute load average, at least 1; oversubscribed threads on a busy "
                                   "machine are much slower than 1)")

    @model_validator(mode="after")
    def _check_model_and_train(self) -> "Config":
        # Build the model and trainer settings once so that a bad value fails before any corpus is read.
        try:
            mcfg = model_config(self, self.model.variant or "dman")
        except ValueError as e:
            raise ValueError(f"model: {e}") from None
        try:
            train_config(self, mcfg, seed=0)
        except ConfigError as e:
            raise ValueError(str(e).replace("<dict>: <root>: ", "train: ").replace("<dict>: ", "train.")) from None
        return self


def model_config(cfg: Config, variant: str, **from_data):
    from mmsocial.models.dman import dman_config

    return dman_config(cfg.preset, variant, **{**cfg.model.overrides(), **from_data})


def train_config(cfg: Config, mcfg, seed: int) -> TrainConfig:
    """The trainer settings of one DMAN run: the model config's optimiser and schedule, then ``cfg.train``."""
    overrides = cfg.train.model_dump(exclude_unset=True)
    if cfg.selection and "early_stopping" not in overrides:
        overrides["early_stopping"] = {"metric": cfg.selection, "mode": "min", "patience": mcfg.epochs}
    return load_config({"epochs": mcfg.epochs, "batch_size": mcfg.batch_size, "optimizer": "sgd", "lr": mcfg.lr,
                        "momentum": mcfg.momentum, "nesterov": mcfg.nesterov, "seed": seed,
                        "device": cfg.device,
                        **overrides}, TrainConfig)


# ---------------------------------------------------------------------------- data
@dataclass
class DMANData:
    """Aligned arrays over the kept posts (image, >= 1 label, >= 1 vocabulary tag)."""

    post_ids: list[str]
    split: np.ndarray  # "train" / "val" / "test"
    regions: Any  # (N, D, M) array-like (memmap rows re-indexed by ``region_rows``)
    region_rows: np.ndarray  # row of each kept post in ``regions``
    tags: np.ndarray  # (N, L) float32
    labels: np.ndarray  # (N, C) float32
    tag_vocabulary: list[str]
    label_vocabulary: list[str]
    _pooled: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def idx(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def region_block(self, idx: np.ndarray) -> np.ndarray:
        """The region grids of kept posts ``idx`` as float32 (read in row order; keep ``idx`` small)."""
        from mmsocial.features.store import read_rows
        from mmsocial.train.data import sorted_row_reader

        return read_rows(self.regions, self.region_rows[idx], np.float32, sorted_row_reader(self.regions))

    def features(self, split: str):
        """A FeatureDataset over the posts of ``split``: item i = {"regions": (D, M), "tags": (L,)}
        of ``idx(split)[i]``, read from the (memory-mapped) store one batch at a time."""
        from mmsocial.train.data import FeatureDataset

        idx = self.idx(split)
        return FeatureDataset({"regions": self.regions, "tags": self.tags},
                              rows={"regions": self.region_rows[idx], "tags": idx})

    def pooled(self, idx: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Mean of the region grid: the pooled CNN vector the baselines see."""
        if len(idx) == 0:
            return np.zeros((0, self.regions.shape[2]), dtype=np.float32)
        return np.concatenate([self.region_block(idx[a:a + chunk]).mean(1) for a in range(0, len(idx), chunk)])

    def region_channel_stats(self, idx: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (unbiased) std of each region channel over the posts ``idx``, read chunk by chunk."""
        channels = self.regions.shape[2]
        total, squares, n = np.zeros(channels), np.zeros(channels), 0
        for a in range(0, len(idx), chunk):
            block = self.region_block(idx[a:a + chunk]).reshape(-1, channels).astype(np.float64)
            total += block.sum(0)
            squares += (block * block).sum(0)
            n += len(block)
        mean = total / max(n, 1)
        var = (squares - n * mean * mean) / max(n - 1, 1)
        return mean.astype(np.float32), np.sqrt(np.maximum(var, 0.0)).astype(np.float32)

    def pooled_split(self, split: str) -> np.ndarray:
        """``pooled`` of one split, computed once."""
        if split not in self._pooled:
            self._pooled[split] = self.pooled(self.idx(split))
        return self._pooled[split]

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.post_ids, self.split.tolist(), self.tag_vocabulary,
                                       self.label_vocabulary, list(self.regions.shape)]).encode())
        h.update(np.ascontiguousarray(self.tags).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update(np.ascontiguousarray(self.region_block(np.arange(min(4, len(self.post_ids))))).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        return (f"{len(self.idx('train'))} train / {len(self.idx('val'))} val / {len(self.idx('test'))} test posts, "
                f"L={len(self.tag_vocabulary)} tags, {len(self.label_vocabulary)} labels, "
                f"regions {tuple(self.regions.shape[1:])}")


@dataclass
class Selection:
    """DMAN's preparation of a corpus (§4.1), before any feature is read: see ``select_posts``."""

    keep: np.ndarray  # (len(corpus),) bool: image, >= 1 label, >= 1 vocabulary tag
    split: np.ndarray  # (kept,) "train" / "val" / "test"
    tag_vocabulary: list[str]  # the L most frequent training tags, most frequent first
    label_vocabulary: list[str]  # sorted labels of the kept posts
    tags: np.ndarray  # (kept, L) float32 multi-hot
    labels: np.ndarray  # (kept, C) float32 multi-hot


def select_posts(corpus: Corpus, num_tags: int, split_seed: int = 0, val_fraction: float = 0.1) -> Selection:
    """The one DMAN recipe (used by ``prepare`` and ``prepare_corpus``), after the paper's §4.1:

    1. every post of the corpus is split train/test 4:1 at random (``data.splits.dman_split``,
       ``split_seed``), then ``val_fraction`` of train becomes validation: 72/8/20 with the default
       0.1 (the paper: 4:1 and no validation split);
    2. the tag vocabulary is the ``num_tags`` tags held by most *training* posts (document frequency,
       ``data.vocab``: a tag counts once per post; ties alphabetical), so no test tag leaks into it;
    3. kept: posts with an image, at least one label and at least one vocabulary tag (the split of
       step 1 is kept, so the kept posts are about 72/8/20);
    4. the label vocabulary is the sorted labels of the kept posts.
    """
    from mmsocial.data.splits import dman_split
    from mmsocial.data.vocab import frequency_vocabulary, multi_hot

    if num_tags < 1:
        raise ValueError(f"num_tags must be >= 1, got {num_tags}")
    posts = corpus.posts
    split = dman_split(corpus, split_seed)
    rng = np.random.default_rng([split_seed, 1])
    train = np.flatnonzero(split == "train")
    split[rng.choice(train, int(round(val_fraction * len(train))), replace=False)] = "val"
    vocab = frequency_vocabulary(posts["tags"][split == "train"], num_tags)
    tags = multi_hot(list(posts["tags"]), vocab)
    keep = posts["image"].notna().to_numpy() & (posts["labels"].map(len).to_numpy() > 0) & (tags.sum(1) > 0)
    label_vocab = sorted({lab for labs in posts["labels"][keep] for lab in labs})
    labels = multi_hot(list(posts["labels"][keep]), label_vocab)
    return Selection(keep, split[keep], vocab, label_vocab, tags[keep], labels)


def prepare_corpus(corpus: Corpus, cfg: Config) -> Corpus:
    """The corpus DMAN trains on, as a Corpus to save or inspect: ``select_posts``' posts, their tags
    restricted to the vocabulary, ``split`` train/val/test, ``meta["vocabularies"]`` and
    ``meta["preparation"]``. (``prepare`` uses the same selection.)"""
    sel = select_posts(corpus, cfg.num_tags, cfg.split_seed, cfg.val_fraction)
    if not sel.keep.any():
        raise CorpusError(f"{corpus.root or corpus.name}: no post has an image, a label and a tag among "
                          f"the top {cfg.num_tags}")
    kept = corpus.filter(sel.keep)
    posts = kept.posts.copy()
    in_vocab = set(sel.tag_vocabulary)
    posts["tags"] = posts["tags"].map(lambda ts: [t for t in ts if t in in_vocab])
    posts["split"] = sel.split
    meta = {**kept.meta, "vocabularies": {"tags": sel.tag_vocabulary, "labels": sel.label_vocabulary},
            "preparation": {"recipe": "dman", "num_tags": cfg.num_tags, "split_seed": cfg.split_seed,
                            "val_fraction": cfg.val_fraction, "posts_before": len(corpus),
                            "posts_after": int(sel.keep.sum())}}
    return Corpus(posts, kept.users, kept.links, meta, kept.root)


def prepare(corpus: Corpus, cfg: Config, regions=None) -> DMANData:
    """``select_posts``, then the cached region grids (extracted if missing), memory-mapped: training
    streams them batch by batch. ``regions``: a FeatureSet or (N, D, M) array aligned with the
    corpus, to skip the extraction."""
    sel = select_posts(corpus, cfg.num_tags, cfg.split_seed, cfg.val_fraction)
    keep = sel.keep
    if keep.sum() < 10:
        raise CorpusError(f"{corpus.root or corpus.name}: only {keep.sum()} posts have an image, a label and "
                          f"a tag among the top {cfg.num_tags}; DMAN needs labelled, tagged images")
    ids = corpus.posts["post_id"][keep].tolist()
    if regions is None:
        from mmsocial.features.extract import extract_features

        regions = extract_features(corpus, "regions", cfg.backbone, cfg.image_size, weights=cfg.weights)
    rows = regions.rows(ids) if hasattr(regions, "rows") else np.flatnonzero(keep)
    array = regions.data if hasattr(regions, "data") else regions
    out = DMANData(ids, sel.split, array, rows, sel.tags, sel.labels, sel.tag_vocabulary, sel.label_vocabulary)
    for s in ("train", "test"):
        if len(out.idx(s)) == 0:
            raise CorpusError(f"{corpus.root or corpus.name}: no {s} post left after filtering")
    return out


def link_graph(data: DMANData, split: str, max_links: int, seed: int):
    """DMAN §4.1: link two posts of ``split`` that share a label, at most ``max_links`` per node."""
    from mmsocial.data.graph import LinkGraph, label_links

    idx = data.idx(split)
    label_lists = [list(np.flatnonzero(row)) for row in data.labels[idx]]
    links = label_links(label_lists, max_per_node=max_links, seed=seed)
    return LinkGraph.from_pairs(len(idx), links["src"].to_numpy(), links["dst"].to_numpy())


# ---------------------------------------------------------------------------- DMAN training
def batch_loss(loss_fn):
    """Loss of one triplet batch as ``train.data.TripletFeatures`` reads it: regions and tags of the
    B anchors then the B positives, and ``slots`` (B, K), the negatives' positions among the anchors
    (negatives are anchors of the batch, §3.2, so their embeddings are the anchors'). The hinge is
    the mean over the B·K (anchor, negative) terms; the BCE is over the 2B anchors and positives."""
    def loss(model, batch):
        slots = batch["slots"]
        y = model(batch["regions"])
        ya, yp = y[:len(slots)], y[len(slots):]
        return loss_fn(ya, yp, ya[slots], y, batch["tags"])
    return loss


def embed(model: torch.nn.Module, regions, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Y of the region grids ``regions`` (an array or a row view), in inference mode, batch by batch."""
    from mmsocial.train.trainer import inference

    model.eval()
    if len(regions) == 0:
        return np.zeros((0, model.cfg.num_words), dtype=np.float32)
    return inference(model, regions, batch_size, device=device).numpy()


def train_model(data: DMANData, variant: str, cfg: Config, out_dir: Path, seed: int = 0,
                resume: "bool | str" = False):
    """Train one DMAN variant on the training posts with the shared trainer; returns (model, TrainResult).

    resume: passed to the trainer ("auto": continue the run in ``out_dir`` when its config and
    data are unchanged, else start over saying why)."""
    from mmsocial.data.graph import TripletSampler
    from mmsocial.models.dman import DMANLoss, dman
    from mmsocial.train.data import TripletFeatures, as_is
    from mmsocial.train.trainer import move_to_device, train

    from_data = {"num_words": data.tags.shape[1], "region_dim": data.regions.shape[2],
                 "num_regions": data.regions.shape[1]}
    mcfg = model_config(cfg, variant, **from_data)
    torch.manual_seed(seed)
    model = dman(cfg.preset, variant=variant, **{**cfg.model.overrides(), **from_data})
    tcfg = train_config(cfg, mcfg, seed)
    if mcfg.input_norm:  # per-channel standardisation with training statistics (docs/dman.md, deviation 12)
        from mmsocial.models.dman import set_region_scale
        set_region_scale(model, *data.region_channel_stats(data.idx("train")))
    graph = link_graph(data, "train", cfg.max_links, seed)

    def sampler_factory(epoch, rank, world_size):
        s = TripletSampler(graph, tcfg.batch_size, mcfg.k_negatives, seed, rank, world_size)
        s.set_epoch(epoch)
        return list(s)  # TripletBatches as they are; TripletFeatures streams their rows from the store

    loss_fn = DMANLoss(mcfg)
    evaluate = None
    va = data.idx("val")
    val_graph = link_graph(data, "val", cfg.max_links, seed) if len(va) > mcfg.k_negatives + 1 else None
    val_batches = list(TripletSampler(val_graph, tcfg.batch_size, mcfg.k_negatives, seed)) \
        if val_graph is not None and (val_graph.degree > 0).sum() > mcfg.k_negatives + 1 else []
    if val_batches:  # every one holds >= 1 triplet (the sampler skips empty ones), so no mean is NaN
        val_data, val_loss = TripletFeatures(data.features("val")), batch_loss(loss_fn)

        def evaluate(m):
            dev = next(m.parameters()).device
            parts = [val_loss(m, move_to_device(val_data.__getitems__(b), dev)) for b in val_batches]
            return {f"val_{k}": float(np.mean([p[k].item() for p in parts])) for k in ("loss", "hinge", "bce")}

    result = train(model, TripletFeatures(data.features("train")), batch_loss(loss_fn), tcfg, out_dir,
                   evaluate=evaluate, collate_fn=as_is, sampler_factory=sampler_factory,
                   resume=resume, run_config={"dman": mcfg.to_dict(), "data": data.fingerprint()})
    if tcfg.early_stopping.metric and result.best_checkpoint is not None:
        from mmsocial.train.checkpoint import load_checkpoint
        load_checkpoint(result.best_checkpoint, model)
    return model.to("cpu").eval(), result


def _history_and_selection(result) -> tuple[list[dict[str, float]], dict[str, Any]]:
    history = [{k: float(v) for k, v in row.items() if isinstance(v, (int, float))} for row in result.history]
    best_epoch = next((r["epoch"] for r in history if r.get("step") == result.best_step), None)
    if result.metric:
        selection = {"metric": result.metric, "mode": "min" if result.metric.startswith("val_") else None,
                     "best_epoch": best_epoch, "last_epoch": float(result.epochs),
                     "stopped_early": bool(result.stopped_early)}
    else:
        selection = {"metric": None, "kept": "last epoch", "last_epoch": float(result.epochs)}
    return history, selection


# ---------------------------------------------------------------------------- tables and cells
class _RegionView:
    """Row-sliceable view of the region grids of some posts (for batched embedding)."""

    def __init__(self, data: DMANData, idx: np.ndarray):
        self.data, self.idx = data, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.data.region_block(self.idx[s])


def _queries(data: DMANData):
    """Table 3's queries: (label index, tag index) pairs, their one-hot tag vectors, and relevance (Q, N_test)."""
    from mmsocial.eval.protocols.dman import label_queries, one_hot_queries

    queries = label_queries(data.label_vocabulary, data.tag_vocabulary)
    q_onehot = one_hot_queries([t for _, t in queries], len(data.tag_vocabulary))
    relevant = data.labels[data.idx("test")][:, [li for li, _ in queries]].T > 0
    return queries, q_onehot, relevant


def new_tables(cfg: Config, data: DMANData) -> dict[str, ResultTable]:
    from mmsocial.eval.protocols.dman import table2, table3

    n_queries = len(_queries(data)[0])
    log.info("Table 3 queries: %d of %d labels found in the tag vocabulary", n_queries, len(data.label_vocabulary))
    make = {"table2": lambda: table2(f"Table 2: multi-label classification ({cfg.name})"),
            "table3": lambda: table3(f"Table 3: tag-query image search ({cfg.name}, {n_queries} queries: the labels "
                                     f"whose word is a tag, of {len(data.label_vocabulary)} labels)")}
    return {name: make[name]() for name in TABLES if name in cfg.tables}


def _baseline(row: str, cfg: Config, seed: int):
    from mmsocial.models.baselines import CCA, DCCA, KCCA

    b = cfg.baselines
    if row == "CCA":
        return CCA(b.n_components, reg=b.cca_reg)
    if row == "KCCA":
        return KCCA(b.n_components, reg=b.kcca_reg, n_features=b.kcca_features, random_state=seed)
    return DCCA(b.n_components, hidden=tuple(b.dcca_hidden), epochs=b.dcca_epochs, lr=b.dcca_lr,
                random_state=seed, device=cfg.device)


def run_cell(row: str, seed: int, data: DMANData, cfg: Config, workdir: Path) -> Cell:
    """Train (or fit) one row of the tables with one seed; its Table 2 and Table 3 metrics."""
    from mmsocial.eval.protocols.dman import multilabel_classification, tag_query_search

    if row not in ROWS:
        raise ValueError(f"unknown DMAN row {row!r}; choose from {list(ROWS)}")
    splits = {s: data.idx(s) for s in ("train", "val", "test")}
    queries, q_onehot, relevant = _queries(data)
    history, selection = [], None
    if row in VARIANT_OF_ROW:
        model, result = train_model(data, VARIANT_OF_ROW[row], cfg, Path(workdir), seed)
        history, selection = _history_and_selection(result)
        emb = {s: embed(model, _RegionView(data, i)) for s, i in splits.items()}
        q_emb = model.query(torch.from_numpy(q_onehot)).numpy() if model.cfg.uses_text else None
        img_test = emb["test"]
    else:
        X = {s: data.pooled_split(s) for s in splits}
        T = {s: data.tags[i] for s, i in splits.items()}
        model = _baseline(row, cfg, seed)
        if row == "DCCA" and cfg.selection and len(X["val"]) > model.out_dim:
            model.fit(X["train"], T["train"], X["val"], T["val"])
            history = model.history_
            selection = {"metric": "val_loss", "mode": "min", "best_epoch": float(model.best_epoch_),
                         "last_epoch": float(len(history))}
        else:
            model.fit(X["train"], T["train"])
            if row == "DCCA":
                history = [{"epoch": float(e + 1), "train_loss": v} for e, v in enumerate(model.loss_history_)]
                selection = {"metric": None, "kept": "last epoch", "last_epoch": float(len(history))}
        emb = {s: (model.transform(X[s], T[s]) if cfg.baseline_embedding == "both"
                   else model.transform_x(X[s])) if len(X[s]) else None for s in X}
        q_emb, img_test = model.transform_y(q_onehot) if queries else None, model.transform_x(X["test"])
    metrics: dict[str, dict[str, float]] = {}
    c = cfg.classifier
    lab = {s: data.labels[i] for s, i in splits.items()}
    diagnostics: dict[str, float] = {}
    if "table2" in cfg.tables:
        has_val = len(splits["val"]) > 0
        metrics["table2"] = multilabel_classification(
            emb["train"], lab["train"], emb["test"], lab["test"],
            emb["val"] if has_val else None, lab["val"] if has_val else None, seed=seed,
            hidden=tuple(c.hidden), epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, patience=c.patience,
            dropout=c.dropout, diagnostics=diagnostics)
    if "table3" in cfg.tables and q_emb is not None and queries:
        metrics["table3"] = tag_query_search(q_emb, img_test, relevant)
    metrics = {t: {m: float(x) for m, x in v.items()} for t, v in metrics.items()}
    if emb["test"] is not None:
        e = np.asarray(emb["test"], dtype=np.float64)
        diagnostics["embedding_variance"] = float(e.var(axis=0).mean())
        diagnostics["embedding_relative_variance"] = float(e.var(axis=0).mean() / max((e ** 2).mean(), 1e-30))
    return Cell(metrics, history, selection, diagnostics)


# ---------------------------------------------------------------------------- train command and demo
def train(cfg: Config) -> Path:
    """`mmsocial train dman`: train the config's DMAN variant (``model.variant``, default "dman") on the
    corpus's training posts with the first seed; the run folder gets the checkpoints and vocabularies."""
    from mmsocial.experiment import load_corpus

    variant = cfg.model.variant or "dman"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = prepare(load_corpus(cfg), cfg)
    log.info("DMAN %s: %s", variant, data.describe())
    run_dir = Path(cfg.workdir)
    model, result = train_model(data, variant, cfg, run_dir, cfg.seeds[0] if cfg.seeds else 0, resume="auto")
    write_json(run_dir / "vocabulary.json", {"tags": data.tag_vocabulary, "labels": data.label_vocabulary,
                                             "variant": variant, "preset": cfg.preset,
                                             "model": model.cfg.to_dict()}, indent=1)
    log.info("%s", result.summary())
    return run_dir


# The demo's shorter schedule: DMAN and its strongest baseline only (KCCA: best of the three in
# Table 3 and within 0.5 point of DCCA in Table 2 on the synthetic corpus, and closed form), one
# seed, DMAN 5 epochs instead of 15 (preset small), the FC probe 40 epochs instead of 100. On the
# 2000-post synthetic corpus with cached features: 111 CPU-seconds with one thread (docs/dman.md).
DEMO_SETTINGS: Mapping[str, Any] = {
    "system": NAME, "seeds": [0], "name": "demo", "preset": "small", "rows": ["KCCA", "DMAN"],
    "classifier": {"epochs": 40}, "model": {"epochs": 5}, "train": {"progress": False}}


def demo(corpus_dir: Path, workdir: Path):
    """DMAN's part of `mmsocial demo`: Tables 2 and 3 for DMAN and its strongest baseline (KCCA) on
    one seed with a shorter schedule (``DEMO_SETTINGS``); under 2 minutes of one CPU core for 2000
    synthetic posts with cached features. `mmsocial experiment configs/dman/small.yaml` runs every
    row with the full schedule."""
    from mmsocial.experiment import run_experiment

    return run_experiment({**DEMO_SETTINGS, "corpus": str(corpus_dir), "workdir": str(workdir)}, progress=False)


# ---------------------------------------------------------------------------- serving hook
def load_run(run_dir: Path):
    """`mmsocial serve` / `mmsocial index build`: a trained DMAN run as a ``systems.Served``.

    The posts live in the tag space Y ∈ (0,1)^L and are compared by inner product. A text query is the
    multi-hot vector q of its words (and of the whole query, for tags with spaces) found in the run's tag
    vocabulary, so a post scores Y·q, the sum of the predicted probabilities of the query tags. Deviation:
    Table 3's protocol compares by Euclidean distance, but ||Y - q||² = ||Y||² - 2 Y·q + |q| also rewards
    posts whose other tags are all improbable; on an openclipart run the mean P@10 of single-tag queries
    was 0.19 by distance, 0.71 by inner product, 0.66 by cosine (docs/serving.md,
    bench/dman_serving_metric.py). The "texts" of an image are the vocabulary tags (one-hot vectors, so
    image -> texts ranks words by Y_k). Explanations are the attention maps A of Eq. 6 over the region
    grid. Weights load from safetensors only."""
    from mmsocial.config import load_config
    from mmsocial.features.text import tag_vectors, tokenize
    from mmsocial.models.dman import DMAN, DMANConfig, DMANFC
    from mmsocial.systems import RUN_CONFIG, Collection, Served, require_run_files, served_corpus
    from mmsocial.train.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / RUN_CONFIG, Config)
    require_run_files(run_dir, ("vocabulary.json",), "dman")
    saved = json.loads((run_dir / "vocabulary.json").read_text())
    mcfg = DMANConfig(**saved["model"])
    model = DMAN(mcfg) if mcfg.variant == "dman" else DMANFC(mcfg)
    load_checkpoint(run_dir, model)  # safetensors
    model.eval()
    corpus = served_corpus(cfg, run_dir / RUN_CONFIG)
    data = prepare(corpus, cfg)
    if data.tag_vocabulary != saved["tags"]:
        raise ValueError(f"{run_dir}: the corpus's top-{cfg.num_tags} tags differ from the run's vocabulary.json "
                         f"(the corpus changed since training); retrain or serve the original corpus")
    vocab = saved["tags"]
    word_row = {w: i for i, w in enumerate(vocab)}
    row_of_post = {p: i for i, p in enumerate(data.post_ids)}
    from mmsocial.features.backbones import upload_regions

    regions_of_images = upload_regions(cfg.backbone, cfg.weights, cfg.image_size)

    def post_regions(post_ids: list[str]) -> np.ndarray:
        rows = [row_of_post.get(p) for p in post_ids]
        known = [i for i, r in enumerate(rows) if r is not None]
        out = np.empty((len(post_ids), *data.regions.shape[1:]), dtype=np.float32)
        if known:
            out[known] = data.region_block(np.array([rows[i] for i in known]))
        new = [i for i, r in enumerate(rows) if r is None]  # e.g. posts added to the corpus after training
        if new:
            out[new] = regions_of_images([corpus.open_image(post_ids[i]) for i in new])
        return out

    def posts() -> Collection:
        return Collection(list(data.post_ids), embed(model, _RegionView(data, np.arange(len(data.post_ids)))))

    def texts() -> Collection:
        return Collection(list(vocab), np.eye(len(vocab), dtype=np.float32), kind="word", display=list(vocab))

    def query_words(text: str) -> tuple[list[str], list[str]]:
        words = tokenize(text)
        whole = " ".join(text.lower().split())
        known = ([whole] if whole in word_row and whole not in words else []) + [w for w in words if w in word_row]
        return list(dict.fromkeys(known)), [w for w in words if w not in word_row]

    def embed_text(text: str):
        if not mcfg.uses_text:
            raise ValueError("this run is DMAN_Triplet (image only): it has no text query")
        known, unknown = query_words(text)
        if not known:
            raise ValueError(f"no word of {text!r} is in this run's tag vocabulary ({len(vocab)} tags, e.g. "
                             f"{', '.join(vocab[:8])})")
        return model.query(torch.from_numpy(tag_vectors([known], vocab)))[0].numpy(), \
            {"words": known, "unknown_words": unknown}

    def embed_image(image) -> np.ndarray:
        return embed(model, regions_of_images([image]))[0]

    def embed_posts(post_ids: list[str]) -> np.ndarray:
        return embed(model, post_regions(list(post_ids)))

    def explain(post_id: str, text: str = "") -> dict:
        return explain_regions(torch.from_numpy(post_regions([post_id])), text)

    def explain_image(image, text: str = "") -> dict:
        return explain_regions(torch.from_numpy(regions_of_images([image])), text)

    def explain_regions(regions: torch.Tensor, text: str) -> dict:
        with torch.no_grad():
            y = model(regions)[0]
        known = query_words(text)[0] if text.strip() else []
        if not known:  # no query word: explain the word the model is most sure of
            known = [vocab[int(y.argmax())]]
        alpha = model.attention_maps(regions)[0]  # (L, D), Eq. 6
        side = int(round(np.sqrt(alpha.shape[1])))
        maps = {w: alpha[word_row[w]].reshape(side, side).tolist() for w in known}
        return {"word": known[0], "words": known, "grid": [side, side], "weights": maps[known[0]],
                "maps": maps, "scores": {w: float(y[word_row[w]]) for w in known}}

    return Served(NAME, run_dir, corpus, "ip", {"posts": posts, "texts": texts}, embed_text=embed_text,
                  embed_image=embed_image, embed_posts=embed_posts,
                  explain=explain if mcfg.variant == "dman" else None,
                  explain_image=explain_image if mcfg.variant == "dman" else None,
                  info={"title": TITLE, "variant": mcfg.variant, "tags": len(vocab), "posts": len(data.post_ids),
                        "vocabulary": vocab})
