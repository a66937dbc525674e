"""Config-driven experiments: train every row of a paper table over seeds and print the tables.

    tables = run_experiment("configs/dman/table2.yaml")   # or a dict; also `mmsocial experiment ...`

DMAN (Tables 2 and 3): corpus -> DMAN split (4:1, validation carved from train) -> top-L tag
vectors -> cached region grids -> label graph over the training posts -> for each seed and row
(CCA, KCCA, DCCA, DMAN_Triplet, DMAN_Triplet+Text, DMAN) train, embed, run both protocols.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import numpy as np
import torch
import typer
from pydantic import Field, field_validator

from mmsocial.config import ConfigError, StrictModel, TrainConfig, load_config
from mmsocial.data.corpus import Corpus, CorpusError
from mmsocial.eval.table import ResultTables

DMAN_ROWS = ("CCA", "KCCA", "DCCA", "DMAN_Triplet", "DMAN_Triplet+Text", "DMAN")
_VARIANT_OF_ROW = {"DMAN_Triplet": "triplet", "DMAN_Triplet+Text": "triplet_text", "DMAN": "dman"}


class SyntheticSpec(StrictModel):
    posts: int = Field(2000, ge=10)
    seed: int = 0


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


class DMANExperimentConfig(StrictModel):
    """Everything one DMAN experiment needs; see configs/dman/*.yaml."""

    system: Literal["dman"] = "dman"
    name: str = "dman"
    corpus: Optional[str] = Field(None, description="corpus folder; built from `synthetic` when absent")
    synthetic: Optional[SyntheticSpec] = None
    workdir: str = "runs/dman"
    backbone: str = "mobilenet_v2"
    image_size: int = 224
    weights: str = Field("imagenet", description="backbone weights: imagenet, random (tests), or a path")
    num_tags: int = Field(300, ge=1, description="L: the most frequent training tags")
    max_links: int = Field(50, ge=1, description="links kept per node (paper: 50)")
    split_seed: int = 0
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of train kept for validation")
    preset: Literal["default", "small", "tiny"] = "small"
    model: dict[str, Any] = Field(default_factory=dict, description="DMANConfig overrides")
    rows: list[str] = list(DMAN_ROWS)
    seeds: list[int] = [0, 1, 2]
    tables: list[Literal["table2", "table3"]] = ["table2", "table3"]
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides; optimiser, "
                                  "lr, batch size and epochs default to the DMAN config")
    baseline_embedding: Literal["image", "both"] = Field(
        "image", description="Table 2 post embedding of CCA/KCCA/DCCA: the image view's projection "
        "(like DMAN, whose Y = f_w(V) sees the image only) or both projected views concatenated")
    device: str = "cpu"
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (None: leave as is); 1 is "
                                   "much faster than oversubscribed threads on a busy machine")

    @field_validator("rows")
    @classmethod
    def _known_rows(cls, rows):
        bad = [r for r in rows if r not in DMAN_ROWS]
        if bad:
            raise ValueError(f"unknown row(s) {bad}; choose from {list(DMAN_ROWS)}")
        return rows


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

    def idx(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def region_block(self, idx: np.ndarray) -> np.ndarray:
        rows = self.region_rows[idx]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.regions.shape[1:]), dtype=np.float32)
        out[order] = self.regions[rows[order]]
        return out

    def pooled(self, idx: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Mean of the region grid: the pooled CNN vector the baselines see."""
        if len(idx) == 0:
            return np.zeros((0, self.regions.shape[2]), dtype=np.float32)
        return np.concatenate([self.region_block(idx[a:a + chunk]).mean(1) for a in range(0, len(idx), chunk)])


def load_corpus(cfg: DMANExperimentConfig) -> Corpus:
    if cfg.corpus and (Path(cfg.corpus) / "posts.parquet").is_file():
        return Corpus.load(cfg.corpus)
    if cfg.synthetic is None:
        raise CorpusError(f"{cfg.corpus}: no corpus there (posts.parquet missing); build one with "
                          f"`mmsocial data ...` or add a `synthetic:` section to the config")
    from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus

    out = Path(cfg.corpus or Path(cfg.workdir) / "corpus")
    typer.echo(f"no corpus at {out}: building the synthetic corpus the config describes "
               f"({cfg.synthetic.posts} posts, seed {cfg.synthetic.seed}) there")
    return make_synthetic_corpus(SyntheticConfig(posts=cfg.synthetic.posts, seed=cfg.synthetic.seed), out)


def prepare_dman_data(corpus: Corpus, cfg: DMANExperimentConfig, regions=None) -> DMANData:
    """Split, vocabularies, tag/label vectors and the cached region grids (extracted if missing)."""
    from mmsocial.data.splits import dman_split
    from mmsocial.features.text import tag_vectors, top_tags

    posts = corpus.posts
    split = dman_split(corpus, cfg.split_seed)
    rng = np.random.default_rng([cfg.split_seed, 1])
    train = np.flatnonzero(split == "train")
    split[rng.choice(train, int(round(cfg.val_fraction * len(train))), replace=False)] = "val"
    vocab = top_tags(posts["tags"][split == "train"], cfg.num_tags)
    tags = tag_vectors(list(posts["tags"]), vocab)
    keep = posts["image"].notna().to_numpy() & (posts["labels"].map(len).to_numpy() > 0) & (tags.sum(1) > 0)
    if keep.sum() < 10:
        raise CorpusError(f"{corpus.root or corpus.name}: only {keep.sum()} posts have an image, a label and "
                          f"a tag among the top {cfg.num_tags}; DMAN needs labelled, tagged images")
    label_vocab = sorted({lab for labs in posts["labels"][keep] for lab in labs})
    labels = tag_vectors(list(posts["labels"][keep]), label_vocab)
    ids = posts["post_id"][keep].tolist()
    if regions is None:
        from mmsocial.features.extract import extract_features

        regions = extract_features(corpus, "regions", cfg.backbone, cfg.image_size, weights=cfg.weights)
    rows = regions.rows(ids) if hasattr(regions, "rows") else np.flatnonzero(keep)
    data = regions.data if hasattr(regions, "data") else regions
    out = DMANData(ids, split[keep], data, rows, tags[keep], labels, vocab, label_vocab)
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
def dman_batch_loss(loss_fn, regions: torch.Tensor, tags: torch.Tensor, k: int):
    """Loss of one triplet batch laid out as [anchors (B), positives (B), negatives (B*K)] rows."""
    def loss(model, batch):
        rows = batch["row"]
        b = len(rows) // (2 + k)
        anchors, negatives = rows[:b], rows[2 * b:].view(b, k)
        order = torch.argsort(anchors)
        slots = order[torch.searchsorted(anchors[order], negatives)]  # negatives are batch anchors (§3.2)
        device = rows.device
        y = model(regions[rows[:2 * b].cpu()].to(device))
        ya, yp = y[:b], y[b:]
        return loss_fn(ya, yp, ya[slots], y, tags[rows[:2 * b].cpu()].to(device))
    return loss


@torch.no_grad()
def embed(model: torch.nn.Module, regions, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    model.eval()
    if len(regions) == 0:
        return np.zeros((0, model.cfg.num_words), dtype=np.float32)
    out = [model(torch.as_tensor(np.asarray(regions[a:a + batch_size], dtype=np.float32), device=device)).cpu()
           for a in range(0, len(regions), batch_size)]
    return torch.cat(out).numpy()


def train_dman(data: DMANData, variant: str, preset: str, out_dir: Path, seed: int = 0,
               model_overrides: Optional[Mapping] = None, train_overrides: Optional[Mapping] = None,
               max_links: int = 50, device: str = "cpu", progress: bool = True):
    """Train one DMAN variant on the training posts with the shared trainer; returns (model, TrainResult)."""
    from mmsocial.data.graph import TripletSampler
    from mmsocial.models.dman import DMANLoss, dman
    from mmsocial.train.data import FeatureDataset
    from mmsocial.train.trainer import train

    tr = data.idx("train")
    overrides = {"num_words": data.tags.shape[1], "region_dim": data.regions.shape[2],
                 "num_regions": data.regions.shape[1],
                 **{k: v for k, v in (model_overrides or {}).items() if k != "variant"}}
    torch.manual_seed(seed)
    model = dman(preset, variant=variant, **overrides)
    mcfg = model.cfg
    tcfg = load_config({"epochs": mcfg.epochs, "batch_size": mcfg.batch_size, "optimizer": "sgd", "lr": mcfg.lr,
                        "momentum": mcfg.momentum, "nesterov": mcfg.nesterov, "seed": seed, "device": device,
                        "progress": progress, **(train_overrides or {})}, TrainConfig)
    regions = torch.from_numpy(data.region_block(tr))
    tags = torch.from_numpy(data.tags[tr])
    graph = link_graph(data, "train", max_links, seed)

    def sampler_factory(epoch, rank, world_size):
        s = TripletSampler(graph, tcfg.batch_size, mcfg.k_negatives, seed, rank, world_size)
        s.set_epoch(epoch)
        return [np.concatenate([b.anchors, b.positives, b.negatives.ravel()]) for b in s]

    loss_fn = DMANLoss(mcfg)
    evaluate = None
    va = data.idx("val")
    val_graph = link_graph(data, "val", max_links, seed) if len(va) > mcfg.k_negatives + 1 else None
    if val_graph is not None and (val_graph.degree > 0).sum() > mcfg.k_negatives + 1:
        val_regions, val_tags = torch.from_numpy(data.region_block(va)), torch.from_numpy(data.tags[va])
        val_batches = [np.concatenate([b.anchors, b.positives, b.negatives.ravel()])
                       for b in TripletSampler(val_graph, tcfg.batch_size, mcfg.k_negatives, seed)]
        val_loss = dman_batch_loss(loss_fn, val_regions, val_tags, mcfg.k_negatives)

        def evaluate(m):
            dev = next(m.parameters()).device
            parts = [val_loss(m, {"row": torch.as_tensor(b, device=dev)}) for b in val_batches]
            return {f"val_{k}": float(np.mean([p[k].item() for p in parts])) for k in ("loss", "hinge", "bce")}

    result = train(model, FeatureDataset({"row": np.arange(len(tr))}), dman_batch_loss(loss_fn, regions, tags,
                   mcfg.k_negatives), tcfg, out_dir, evaluate=evaluate, sampler_factory=sampler_factory,
                   resume=False, run_config={"dman": mcfg.to_dict()})
    if tcfg.early_stopping.metric and result.best_checkpoint is not None:
        from mmsocial.train.checkpoint import load_checkpoint
        load_checkpoint(result.best_checkpoint, model)
    return model.to("cpu").eval(), result


# ---------------------------------------------------------------------------- the experiment
def _baseline(row: str, cfg: DMANExperimentConfig, seed: int):
    from mmsocial.models.baselines import CCA, DCCA, KCCA

    b = cfg.baselines
    if row == "CCA":
        return CCA(b.n_components, reg=b.cca_reg)
    if row == "KCCA":
        return KCCA(b.n_components, reg=b.kcca_reg, n_features=b.kcca_features, random_state=seed)
    return DCCA(b.n_components, hidden=tuple(b.dcca_hidden), epochs=b.dcca_epochs, lr=b.dcca_lr,
                random_state=seed, device=cfg.device)


def run_dman_experiment(cfg: DMANExperimentConfig, data: Optional[DMANData] = None,
                        progress: bool = True) -> ResultTables:
    from mmsocial.eval.protocols import dman_table2, dman_table3, label_queries, one_hot_queries

    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if data is None:
        data = prepare_dman_data(load_corpus(cfg), cfg)
    tr, va, te = data.idx("train"), data.idx("val"), data.idx("test")
    typer.echo(f"DMAN experiment {cfg.name!r}: {len(tr)} train / {len(va)} val / {len(te)} test posts, "
               f"L={len(data.tag_vocabulary)} tags, {len(data.label_vocabulary)} labels, "
               f"regions {tuple(data.regions.shape[1:])}")
    queries = label_queries(data.label_vocabulary, data.tag_vocabulary)
    q_onehot = one_hot_queries([t for _, t in queries], len(data.tag_vocabulary))
    relevant = data.labels[te][:, [li for li, _ in queries]].T > 0  # (Q, N_test)
    typer.echo(f"Table 3 queries: {len(queries)} of {len(data.label_vocabulary)} labels found in the tag vocabulary")
    t2 = dman_table2(f"Table 2: multi-label classification ({cfg.name})")
    t3 = dman_table3(f"Table 3: tag-query image search ({cfg.name}, {len(queries)} queries)")
    need_pooled = any(r in ("CCA", "KCCA", "DCCA") for r in cfg.rows)
    X = {s: data.pooled(i) for s, i in (("train", tr), ("val", va), ("test", te))} if need_pooled else {}
    T = {"train": data.tags[tr], "val": data.tags[va], "test": data.tags[te]}
    Lab = {"train": data.labels[tr], "val": data.labels[va], "test": data.labels[te]}
    fingerprint = _fingerprint(cfg, data)
    log = []
    for seed in cfg.seeds:
        for row in cfg.rows:
            t0 = time.perf_counter()
            # A finished (row, seed) cell is kept on disk, so a killed experiment resumes where it stopped.
            cell = workdir / f"{row}-seed{seed}" / "result.json"
            done = json.loads(cell.read_text()) if cell.is_file() else None
            if done is None or done.get("fingerprint") != fingerprint:
                done = {"fingerprint": fingerprint, **_run_cell(row, seed, cfg, data, X, T, Lab, q_onehot,
                                                                  relevant, len(queries), progress)}
                cell.parent.mkdir(parents=True, exist_ok=True)
                cell.with_suffix(".tmp").write_text(json.dumps(done))
                cell.with_suffix(".tmp").replace(cell)
                how = "s"
            else:
                how = "s (result kept from an earlier run)"
            if done.get("table2") is not None:
                t2.add(row, done["table2"], seed)
            if done.get("table3") is not None:
                t3.add(row, done["table3"], seed)
            seconds = time.perf_counter() - t0
            log.append({"row": row, "seed": seed, "seconds": round(seconds, 1)})
            typer.echo(f"  {row} seed {seed}: {seconds:.0f} {how}")
    tables = [t for t, name in ((t2, "table2"), (t3, "table3")) if name in cfg.tables]
    for t, name in zip(tables, [n for n in ("table2", "table3") if n in cfg.tables]):
        for ext in ("json", "csv", "md"):
            t.save(workdir / f"{name}.{ext}")
        typer.echo(t.to_markdown() + "\n")
    (workdir / "timings.json").write_text(json.dumps(log, indent=1))
    return ResultTables(tables)


def _fingerprint(cfg: DMANExperimentConfig, data: DMANData) -> str:
    import hashlib

    settings = cfg.model_dump(exclude={"seeds", "rows", "name", "workdir", "threads"})
    key = json.dumps([settings, data.post_ids, data.tag_vocabulary, data.label_vocabulary], default=str)
    h = hashlib.sha256(key.encode())
    h.update(np.ascontiguousarray(data.region_block(np.arange(min(4, len(data.post_ids))))).tobytes())
    return h.hexdigest()[:16]


def _run_cell(row: str, seed: int, cfg: DMANExperimentConfig, data: DMANData, X, T, Lab, q_onehot,
              relevant, n_queries: int, progress: bool) -> dict:
    """Train (or fit) one row of the tables with one seed; returns its Table 2 and Table 3 metrics."""
    from mmsocial.eval.protocols import multilabel_classification, tag_query_search

    tr, va, te = data.idx("train"), data.idx("val"), data.idx("test")
    workdir = Path(cfg.workdir)
    if row in _VARIANT_OF_ROW:
        model, _ = train_dman(data, _VARIANT_OF_ROW[row], cfg.preset, workdir / f"{row}-seed{seed}",
                              seed, cfg.model, cfg.train, cfg.max_links, cfg.device, progress)
        emb = {s: embed(model, _RegionView(data, i)) for s, i in (("train", tr), ("val", va), ("test", te))}
        q_emb = model.query(torch.from_numpy(q_onehot)).numpy() if model.cfg.uses_text else None
        img_test = emb["test"]
    else:
        model = _baseline(row, cfg, seed).fit(X["train"], T["train"])
        emb = {s: (model.transform(X[s], T[s]) if cfg.baseline_embedding == "both"
                   else model.transform_x(X[s])) if len(X[s]) else None for s in X}
        q_emb, img_test = model.transform_y(q_onehot) if n_queries else None, model.transform_x(X["test"])
    out = {"table2": None, "table3": None}
    c = cfg.classifier
    if "table2" in cfg.tables:
        out["table2"] = multilabel_classification(
            emb["train"], Lab["train"], emb["test"], Lab["test"],
            emb["val"] if len(va) else None, Lab["val"] if len(va) else None, seed=seed,
            hidden=tuple(c.hidden), epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, patience=c.patience,
            dropout=c.dropout)
    if "table3" in cfg.tables and q_emb is not None and n_queries:
        out["table3"] = tag_query_search(q_emb, img_test, relevant)
    return {k: ({m: float(x) for m, x in v.items()} if v is not None else None) for k, v in out.items()}


class _RegionView:
    """Row-sliceable view of the region grids of some posts (for batched embedding)."""

    def __init__(self, data: DMANData, idx: np.ndarray):
        self.data, self.idx = data, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.data.region_block(self.idx[s])


def run_experiment(config, overrides=None, progress: bool = True) -> ResultTables:
    """Run the experiment a YAML file (or dict) describes; returns its tables (also saved in workdir)."""
    raw = load_config(config, _SystemOnly, None).system if not isinstance(config, StrictModel) else config.system
    if raw != "dman":
        raise ConfigError(f"{config}: system {raw!r} has no experiment runner yet (known: dman)")
    cfg = load_config(config, DMANExperimentConfig, overrides)
    return run_dman_experiment(cfg, progress=progress)


class _SystemOnly(StrictModel):
    model_config = StrictModel.model_config | {"extra": "ignore"}
    system: str = "dman"


DEMO_SETTINGS = {"seeds": [0], "name": "demo", "baselines": {"dcca_epochs": 30},
                 "classifier": {"epochs": 60}, "model": {"epochs": 8}}


def dman_demo(corpus_path, workdir, preset: str = "small") -> ResultTables:
    """DMAN's part of `mmsocial demo`: Tables 2 and 3 on one seed with a short schedule (~2-3 min on
    CPU for 2000 synthetic posts with cached features)."""
    cfg = load_config({**DEMO_SETTINGS, "corpus": str(corpus_path), "workdir": str(workdir), "preset": preset},
                      DMANExperimentConfig)
    return ResultTables(run_dman_experiment(cfg, progress=False))


def train_dman_command(config, corpus=None, out=None, overrides=None, variant: str | None = None) -> Path:
    """`mmsocial train dman`: train the config's DMAN variant (``model.variant``, default "dman") on the
    corpus's training posts with the first seed; the run folder gets the checkpoints and vocabularies."""
    extra = {}
    if corpus is not None:
        extra["corpus"] = str(corpus)
    if out is not None:
        extra["workdir"] = str(out)
    from mmsocial.config import parse_overrides

    ov = {**extra, **(parse_overrides(list(overrides)) if overrides and not isinstance(overrides, Mapping)
                      else dict(overrides or {}))}
    if corpus is not None:
        ov["synthetic"] = None  # a corpus named on the command line is used as it is, never generated
    cfg = load_config(config, DMANExperimentConfig, ov)
    model_overrides = dict(cfg.model)
    variant = variant or model_overrides.pop("variant", "dman")
    from mmsocial.models.dman import dman_config

    dman_config(cfg.preset, variant, **model_overrides)  # a bad model setting fails before any extraction
    data = prepare_dman_data(load_corpus(cfg), cfg)
    run_dir = Path(cfg.workdir)
    model, result = train_dman(data, variant, cfg.preset, run_dir, cfg.seeds[0] if cfg.seeds else 0,
                               model_overrides, cfg.train, cfg.max_links, cfg.device)
    (run_dir / "vocabulary.json").write_text(json.dumps(
        {"tags": data.tag_vocabulary, "labels": data.label_vocabulary, "variant": variant,
         "preset": cfg.preset, "model": model.cfg.to_dict()}, indent=1))
    typer.echo(result.summary())
    return run_dir
