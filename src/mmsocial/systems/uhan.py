"""UHAN (uhan paper): social image popularity from the image, the text and the user, with its Tables 2-4.

Data: posts with a popularity (views, days) and a timestamp -> y = log2(views/days + 1) (Eq. 24);
the chronological split (first 70% train, the rest 1/3 validation, 2/3 test at random, §4.1.1);
word ids over the training words seen >= ``min_word_count`` times (max length 50); user ids over the
training users (0 = unknown user); the cached region grids (MobileNetV2 7x7x1280 offline) when a row
uses the image.

Rows: the baselines HisAve, SVR (+ w/o V, w/o T), DMF (+ w/o V), DualAtt, and UHAN with its ablations.
Trained rows validate every ``eval_every`` batches on the validation MSE, stop after ``patience``
validations without gain, and are tested with the checkpoint of the best validation MSE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from mmsocial.config import ConfigError, ExperimentConfig, StrictModel
from mmsocial.data.corpus import Corpus, CorpusError
from mmsocial.eval.protocols.uhan import UHAN_TABLE_ROWS, evaluate_popularity, uhan_table
from mmsocial.eval.table import ResultTable
from mmsocial.systems import Cell

log = logging.getLogger(__name__)

NAME = "uhan"
TITLE = "UHAN"
PAPER = "uhan-popularity-prediction.md"
TABLES = ("table2", "table3", "table4", "text")

# row -> (model, variant / feature set)
_UHAN_ROWS = {"UHAN": "uhan", "UHAN (w/o u)": "wo_u", "UHAN (w/o sc)": "wo_sc", "UHAN (w/o intra)": "wo_intra",
              "UHAN (w/o inter)": "wo_inter", "UHAN (w/o intra+inter)": "wo_intra_inter", "UHAN (w/o V)": "wo_V",
              "UHAN (w/o T)": "wo_T", "UHAN (w/o V, w/o u)": "wo_V_u"}
_SVR_ROWS = {"SVR": ("color", "deep", "tfidf", "glove"), "SVR (w/o V)": ("tfidf", "glove"),
             "SVR (w/o T)": ("color", "deep")}
_FUSION_ROWS = {"DMF": ("dmf", True), "DMF (w/o V)": ("dmf", False), "DualAtt": ("dualatt", True)}
ROWS: tuple[str, ...] = ("HisAve", *_SVR_ROWS, *_FUSION_ROWS, *_UHAN_ROWS)
_TEXT_ONLY = {"HisAve", "SVR (w/o V)", "DMF (w/o V)", "UHAN (w/o V)", "UHAN (w/o V, w/o u)"}
_NO_TEXT = {"SVR (w/o T)", "UHAN (w/o T)"}


class ModelSettings(StrictModel):
    """UHAN (and DMF/DualAtt) sizes and schedule; None keeps the preset's value (models/uhan.py PRESETS)."""

    word_dim: Optional[int] = Field(None, ge=1)
    hidden_dim: Optional[int] = Field(None, ge=1)
    user_dim: Optional[int] = Field(None, ge=1)
    att_dim: Optional[int] = Field(None, ge=1)
    fc_dim: Optional[int] = Field(None, ge=1)
    max_length: Optional[int] = Field(None, ge=1)
    lr: Optional[float] = Field(None, gt=0)
    batch_size: Optional[int] = Field(None, ge=1)
    eval_every: Optional[int] = Field(None, ge=1, description="optimiser steps between validations (paper: 64)")
    patience: Optional[int] = Field(None, ge=1, description="validations without gain before stopping (paper: 20)")
    max_steps: Optional[int] = Field(None, ge=1, description="hard cap on optimiser steps")

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SVRSettings(StrictModel):
    C: float = Field(1.0, gt=0)
    epsilon: float = Field(0.1, ge=0)
    max_train: Optional[int] = Field(4000, ge=10, description="training posts the SVR sees (a random "
                                     "subset when there are more: kernel SVR is quadratic in them)")
    tfidf_dims: int = Field(100, ge=1, description="TF-IDF reduced by truncated SVD to this many dims")
    color_bins: int = Field(4, ge=2, description="levels per RGB channel of the colour histogram")


class Config(ExperimentConfig):
    """A UHAN experiment; see configs/uhan/*.yaml."""

    ROWS: ClassVar[tuple[str, ...]] = ROWS
    TABLES: ClassVar[tuple[str, ...]] = TABLES

    system: Literal["uhan"] = "uhan"
    name: str = "uhan"
    workdir: str = "runs/uhan"
    preset: Literal["paper", "default", "small", "tiny"] = "small"
    model: ModelSettings = Field(default_factory=ModelSettings)
    svr: SVRSettings = Field(default_factory=SVRSettings)
    backbone: str = "mobilenet_v2"
    image_size: int = 224
    weights: str = Field("imagenet", description="backbone weights: imagenet, random (tests), or a path")
    features: Optional[str] = Field(None, description="region feature folder; default: the corpus's cached "
                                    "store, else extracted into <workdir>/features")
    region_pca: Optional[int] = Field(None, ge=1, description="CPU deviation: project the region channels on "
                                      "their top principal components (fitted on training regions); None = paper")
    min_word_count: int = Field(5, ge=1, description="training-word frequency to enter the vocabulary (paper 5)")
    min_text_words: int = Field(0, ge=0, description="drop posts with fewer words (paper: 5; 0 keeps all)")
    split_seed: int = Field(0, description="seed of the validation/test draw of the chronological split")
    selection: Literal["val_mse"] = "val_mse"
    progress: bool = False
    variant: str = Field("UHAN", description="`mmsocial train uhan`: the row to train")

    @model_validator(mode="before")
    @classmethod
    def _rows_of_tables(cls, data):
        """Empty ``rows``: the rows of the selected tables (every table when ``tables`` is empty)."""
        if isinstance(data, dict) and not data.get("rows"):
            tables = [t for t in (data.get("tables") or TABLES) if t in UHAN_TABLE_ROWS]
            data = {**data, "rows": list(dict.fromkeys(r for t in tables for r in UHAN_TABLE_ROWS[t]))}
        return data


    @field_validator("variant")
    @classmethod
    def _known_variant(cls, v):
        if v not in _UHAN_ROWS and v not in _FUSION_ROWS:
            raise ValueError(f"variant must be a trained row, one of {list(_UHAN_ROWS) + list(_FUSION_ROWS)}")
        return v

    def selected_tables(self) -> list[str]:
        return list(self.tables or TABLES)

    def selected_rows(self) -> list[str]:
        return list(self.rows) or list(dict.fromkeys(r for t in self.selected_tables() for r in UHAN_TABLE_ROWS[t]))


# ---------------------------------------------------------------------------- data
@dataclass
class Data:
    """Aligned arrays over the kept posts."""

    post_ids: list[str]
    split: np.ndarray  # "train" / "val" / "test"
    y: np.ndarray  # (N,) float32, log2(views/days + 1)
    users: np.ndarray  # (N,) int64, 0 = unknown user
    user_raw: list  # (N,) the corpus user ids (None when missing)
    user_vocabulary: list[str]  # index -> user id (index 0 = "<unknown>")
    words: np.ndarray  # (N, L) int64 ids, 0 = padding
    lengths: np.ndarray  # (N,) int64
    tokens: list[list[str]]
    texts: list[Optional[str]]
    word_vocabulary: list[str]
    regions: Optional[np.ndarray] = None  # (N, M, C) float16, aligned with post_ids; None: text only
    timestamps: Optional[np.ndarray] = None
    region_pca: Optional[tuple[np.ndarray, np.ndarray]] = None  # (mean (C,), P (C, k)) when reduced
    corpus: Optional[Corpus] = field(default=None, repr=False)
    _handmade: dict = field(default_factory=dict, repr=False)

    def idx(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    @property
    def has_images(self) -> bool:
        return self.regions is not None

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.post_ids, self.split.tolist(), self.word_vocabulary,
                                       self.user_vocabulary]).encode())
        h.update(np.ascontiguousarray(self.y).tobytes())
        if self.regions is not None:
            h.update(np.ascontiguousarray(self.regions[:4]).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        sizes = {s: len(self.idx(s)) for s in ("train", "val", "test")}
        grid = tuple(self.regions.shape[1:]) if self.regions is not None else "none (text only)"
        return (f"UHAN data: {sizes['train']} train / {sizes['val']} val / {sizes['test']} test posts, "
                f"{len(self.word_vocabulary)} words, {len(self.user_vocabulary) - 1} users, regions {grid}, "
                f"y mean {self.y.mean():.3f} std {self.y.std():.3f}")


def popularity_target(views, days) -> np.ndarray:
    """Eq. 24: y = log2(c / d + 1)."""
    views, days = np.asarray(views, dtype=np.float64), np.asarray(days, dtype=np.float64)
    return np.log2(views / days + 1.0)


def _needs_images(cfg: Config) -> bool:
    return any(r not in _TEXT_ONLY for r in cfg.selected_rows())


def _region_store(corpus: Corpus, cfg: Config, post_ids: list[str]):
    from mmsocial.features.extract import default_output, extract_features
    from mmsocial.features.store import FeatureSet, FeatureStoreError

    if cfg.features:
        return FeatureSet.open(cfg.features)
    try:
        fs = FeatureSet.open(default_output(corpus, "regions", cfg.backbone, cfg.image_size))
        fs.rows(post_ids)
        return fs
    except (FeatureStoreError, KeyError, FileNotFoundError):
        pass
    out = Path(cfg.workdir) / "features" / f"regions-{cfg.backbone}-{cfg.image_size}"
    log.info("no cached region grid for every post: extracting into %s", out)
    return extract_features(corpus, "regions", cfg.backbone, cfg.image_size, out=out, weights=cfg.weights,
                            progress=cfg.progress)


def prepare(corpus: Corpus, cfg: Config) -> Data:
    """Target, chronological split, vocabularies, token ids, user ids and region grids."""
    from mmsocial.data.splits import uhan_split
    from mmsocial.features.text import Vocabulary, encode_texts, tokenize

    posts = corpus.posts
    y = popularity_target(posts["views"].to_numpy(dtype=float), posts["days"].to_numpy(dtype=float))
    tokens_all = [tokenize(t) for t in posts["text"]]
    keep = np.isfinite(y) & (posts["days"].to_numpy(dtype=float) > 0) & posts["timestamp"].notna().to_numpy()
    if cfg.min_text_words:
        keep &= np.array([len(t) >= cfg.min_text_words for t in tokens_all])
    images = _needs_images(cfg)
    if images:
        has_image = posts["image"].notna().to_numpy()
        if cfg.features:  # precomputed regions (e.g. the official UHAN/Flickr files) stand for the image
            from mmsocial.features.store import FeatureSet

            has_image |= posts["post_id"].isin(set(FeatureSet.open(cfg.features).post_ids)).to_numpy()
        if not has_image.any():
            raise ConfigError(f"{corpus.root or corpus.name}: no post has an image, but rows "
                              f"{[r for r in cfg.selected_rows() if r not in _TEXT_ONLY]} need one; "
                              f"use the text-only rows (tables: [text])")
        keep &= has_image
    dropped = int((~keep).sum())
    if dropped:
        log.info("UHAN: %d of %d posts dropped (no views/days/timestamp%s%s)", dropped, len(posts),
                 ", no image" if images else "", f", < {cfg.min_text_words} words" if cfg.min_text_words else "")
    if keep.sum() < 10:
        raise CorpusError(f"{corpus.root or corpus.name}: only {int(keep.sum())} posts have views, days > 0 and a "
                          f"timestamp{' and an image' if images else ''}; UHAN needs popularity data")
    sub = corpus.filter(keep)
    split = uhan_split(sub, cfg.split_seed)
    posts = sub.posts
    tokens = [t for t, k in zip(tokens_all, keep) if k]
    tr = np.flatnonzero(split == "train")
    vocab = Vocabulary.build([tokens[i] for i in tr], min_count=cfg.min_word_count)
    mcfg = _model_config(cfg, "uhan", 2, 2, 1, 1)
    words, lengths = encode_texts(tokens, vocab, mcfg.max_length)
    user_raw = posts["user_id"].tolist()
    train_users = sorted({u for u in (user_raw[i] for i in tr) if u is not None})
    user_vocab = ["<unknown>", *train_users]
    uidx = {u: i for i, u in enumerate(user_vocab)}
    users = np.array([uidx.get(u, 0) if u is not None else 0 for u in user_raw], dtype=np.int64)
    ids = posts["post_id"].tolist()
    regions, pca = None, None
    if images:
        fs = _region_store(sub, cfg, ids)
        regions = fs.get(ids, dtype=np.float16)
        if cfg.region_pca:
            regions, pca = _cached_pca_regions(regions, fs, ids, np.flatnonzero(split == "train"), cfg)
    data = Data(ids, split, y[keep].astype(np.float32), users, user_raw, user_vocab, words.astype(np.int64),
                lengths.astype(np.int64), tokens, posts["text"].tolist(), vocab.words, regions,
                posts["timestamp"].to_numpy(dtype=float), pca, sub)
    for s in ("train", "val", "test"):
        if len(data.idx(s)) == 0:
            raise CorpusError(f"{corpus.root or corpus.name}: the chronological split left no {s} post")
    return data


def _cached_pca_regions(regions: np.ndarray, fs, ids: list[str], train: np.ndarray, cfg: Config):
    """``_pca_regions``, kept in ``<workdir>/../cache`` so that the experiments of one corpus share it."""
    key = hashlib.sha256(json.dumps([str(Path(fs.path).resolve()), ids, train.tolist(), cfg.region_pca,
                                     cfg.split_seed]).encode()).hexdigest()[:16]
    path = Path(cfg.workdir).resolve().parent / "cache" / f"regions-pca{cfg.region_pca}-{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["regions"], (z["mean"], z["P"])
    mean, P = fit_region_pca(regions, train, cfg.region_pca, cfg.split_seed)
    out = np.empty((*regions.shape[:2], P.shape[1]), dtype=np.float16)
    for a in range(0, len(regions), 256):
        out[a:a + 256] = project_regions(regions[a:a + 256], mean, P)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, regions=out, mean=mean, P=P)
    os.replace(tmp, path)
    return out, (mean, P)


def fit_region_pca(regions: np.ndarray, train: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (C,) and top-k principal directions P (C, k) of the regions of (150 of) the training posts."""
    from sklearn.utils.extmath import randomized_svd

    rng = np.random.default_rng(seed)
    sample = regions[np.sort(rng.choice(train, min(len(train), 150), replace=False))].reshape(-1, regions.shape[2])
    sample = sample.astype(np.float32)
    mean = sample.mean(0)
    k = min(k, regions.shape[2])
    _, _, vt = randomized_svd(sample - mean, k, n_iter=3, random_state=seed)
    log.info("regions: %d channels -> %d principal components", regions.shape[2], k)
    return mean, vt.T.astype(np.float32)


def project_regions(regions: np.ndarray, mean: np.ndarray, P: np.ndarray) -> np.ndarray:
    return (np.asarray(regions, dtype=np.float32) - mean) @ P


def new_tables(cfg: Config, data: Data) -> dict[str, ResultTable]:
    """The selected tables, their selected rows laid out in the paper's order (filled by the runner)."""
    tables = {t: uhan_table(t, cfg.name) for t in cfg.selected_tables()}
    for name, table in tables.items():
        for row in UHAN_TABLE_ROWS[name]:
            if row in cfg.selected_rows():
                table.rows[row] = {m: {} for m in table.metrics}
    return tables


# ---------------------------------------------------------------------------- models
def _model_config(cfg: Config, variant: str, num_words: int, num_users: int, num_regions: int, region_dim: int):
    from mmsocial.models.uhan import uhan_config

    flags = {"use_user": False, "use_visual": False} if variant == "wo_V_u" else {}
    return uhan_config(cfg.preset, "uhan" if variant == "wo_V_u" else variant, num_words=num_words,
                       num_users=num_users, num_regions=num_regions, region_dim=region_dim,
                       **{**cfg.model.overrides(), **flags})


def build_model(row: str, cfg: Config, data: Data) -> torch.nn.Module:
    """The network of a trained row, sized for ``data``."""
    from mmsocial.models.baselines.popularity import DMF, DualAtt, FusionConfig
    from mmsocial.models.uhan import UHAN

    M, C = data.regions.shape[1:] if data.regions is not None else (1, 1)
    if row in _UHAN_ROWS:
        return UHAN(_model_config(cfg, _UHAN_ROWS[row], len(data.word_vocabulary), len(data.user_vocabulary), M, C))
    kind, visual = _FUSION_ROWS[row]
    m = _model_config(cfg, "uhan", len(data.word_vocabulary), len(data.user_vocabulary), M, C)
    fcfg = FusionConfig(m.num_words, m.num_users, M, C, m.word_dim, m.hidden_dim, m.user_dim, m.att_dim,
                        m.fc_dim, m.max_length, use_visual=visual)
    net = DMF(fcfg) if kind == "dmf" else DualAtt(fcfg)
    net.schedule = m  # lr, batch size, validation schedule
    return net


def _schedule(model: torch.nn.Module):
    return model.cfg if hasattr(model.cfg, "eval_every") else model.schedule


class _Inputs:
    """The model inputs of the kept posts as tensors (regions stay float16 until a batch is cut)."""

    def __init__(self, data: Data):
        self.regions = torch.from_numpy(np.ascontiguousarray(data.regions)) if data.regions is not None else None
        self.words, self.lengths = torch.from_numpy(data.words), torch.from_numpy(data.lengths)
        self.users, self.y = torch.from_numpy(data.users), torch.from_numpy(data.y)

    def batch(self, rows: torch.Tensor, device="cpu"):
        rows = rows.cpu()
        L = int(self.lengths[rows].max().clamp(min=1))  # cut the padding every post of the batch has
        regions = self.regions[rows].to(device).float() if self.regions is not None else None
        return (regions, self.words[rows, :L].to(device), self.lengths[rows].to(device),
                self.users[rows].to(device))


@torch.inference_mode()
def predict(model: torch.nn.Module, inputs: _Inputs, idx: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [model(*inputs.batch(torch.as_tensor(idx[a:a + batch_size]), device)).float().cpu()
           for a in range(0, len(idx), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def train_network(row: str, seed: int, data: Data, cfg: Config, out_dir: Path,
                  inputs: Optional[_Inputs] = None):
    """Train one neural row; returns (model on the best validation checkpoint, TrainResult)."""
    from mmsocial.models.uhan import mse_loss
    from mmsocial.train.checkpoint import load_checkpoint
    from mmsocial.train.data import FeatureDataset
    from mmsocial.train.trainer import train

    torch.manual_seed(seed)
    model = build_model(row, cfg, data)
    s = _schedule(model)
    inputs = inputs or _Inputs(data)
    tr, va = data.idx("train"), data.idx("val")
    tr_t = torch.from_numpy(tr)

    def loss_fn(m, batch):
        rows = tr_t[batch["row"].cpu()]
        dev = batch["row"].device
        return {"loss": mse_loss(m(*inputs.batch(rows, dev)), inputs.y[rows].to(dev))}

    def evaluate(m):
        pred = predict(m, inputs, va)
        return {"val_mse": float(np.mean((pred - data.y[va]) ** 2))}

    steps_per_epoch = max(1, -(-len(tr) // s.batch_size))
    tcfg = {"epochs": max(1, -(-s.max_steps // steps_per_epoch)), "max_steps": s.max_steps,
            "batch_size": s.batch_size, "optimizer": "adam", "lr": s.lr, "seed": seed, "device": cfg.device,
            "eval_every": s.eval_every, "progress": cfg.progress, "log_every": max(1, s.eval_every),
            # rows are never resumed: checkpoints only keep the best validation (and the last step)
            "checkpoint_every": s.max_steps,
            "early_stopping": {"metric": "val_mse", "mode": "min", "patience": s.patience}}
    result = train(model, FeatureDataset({"row": np.arange(len(tr))}), loss_fn, tcfg, out_dir, evaluate=evaluate,
                   resume=False, run_config={"row": row, "uhan": getattr(model.cfg, "to_dict", lambda: {})()})
    if result.best_checkpoint is not None:
        load_checkpoint(result.best_checkpoint, model)
    _cold_start_user(model, data)
    return model.to("cpu").eval(), result


def _cold_start_user(model: torch.nn.Module, data: Data) -> None:
    """User 0 (unknown) gets the mean embedding of the training users when no training post trained it."""
    emb = getattr(model, "W_U", None) if hasattr(model, "W_U") else getattr(model, "user", None)
    if not isinstance(emb, torch.nn.Embedding) or (data.users[data.idx("train")] == 0).any():
        return
    with torch.no_grad():
        emb.weight[0] = emb.weight[1:].mean(0)


# ---------------------------------------------------------------------------- baselines
def _handmade(data: Data, cfg: Config, block: str) -> np.ndarray:
    """(N, D) hand-made feature block of every kept post, computed once per Data."""
    if block in data._handmade:
        return data._handmade[block]
    from mmsocial.features import handmade

    tr = data.idx("train")
    if block == "color":
        X = handmade.color_histograms(data.corpus, data.post_ids, bins=cfg.svr.color_bins, progress=cfg.progress)
    elif block == "deep":
        X = np.concatenate([data.regions[a:a + 512].astype(np.float32).mean(1)
                            for a in range(0, len(data.post_ids), 512)])  # pooled = mean of the grid
    elif block == "tfidf":
        X = handmade.tfidf_features([data.texts[i] for i in tr], data.texts, cfg.svr.tfidf_dims)
    elif block == "glove":
        from mmsocial.features.text import load_glove

        words, vectors = load_glove()
        X = handmade.mean_word_vectors(data.tokens, words, vectors)
    else:
        raise ValueError(f"unknown feature block {block!r}")
    data._handmade[block] = X
    return X


def _svr(row: str, seed: int, data: Data, cfg: Config) -> tuple[np.ndarray, dict]:
    from mmsocial.models.baselines.popularity import SVRRegressor, select_feature_blocks

    tr, va, te = data.idx("train"), data.idx("val"), data.idx("test")
    blocks = {b: _handmade(data, cfg, b) for b in _SVR_ROWS[row]}

    def fit(Xtr, ytr):
        return SVRRegressor(cfg.svr.C, cfg.svr.epsilon, max_train=cfg.svr.max_train, random_state=seed).fit(Xtr, ytr)

    chosen, scores = select_feature_blocks({b: {"train": X[tr], "val": X[va]} for b, X in blocks.items()},
                                           {"train": data.y[tr], "val": data.y[va]},
                                           lambda Xtr, ytr, Xva: fit(Xtr, ytr).predict(Xva))
    X = np.concatenate([blocks[b] for b in chosen], 1)
    model = fit(X[tr], data.y[tr])
    return model.predict(X[te]), {"metric": "val_mse", "mode": "min", "chosen_features": "+".join(chosen),
                                  "val_mse_by_features": scores}


# ---------------------------------------------------------------------------- one cell
def run_cell(row: str, seed: int, data: Data, cfg: Config, workdir: Path) -> Cell:
    """Fit/train one row with one seed and score its test predictions (MSE, MAE, Spearman)."""
    from mmsocial.models.baselines.popularity import HisAve

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tr, te = data.idx("train"), data.idx("test")
    history, selection, diagnostics = [], None, {}
    if row == "HisAve":
        his = HisAve().fit([data.user_raw[i] for i in tr], data.y[tr])
        pred = his.predict([data.user_raw[i] for i in te])
    elif row in _SVR_ROWS:
        pred, selection = _svr(row, seed, data, cfg)
    elif row in _UHAN_ROWS or row in _FUSION_ROWS:
        if data.regions is None and row not in _TEXT_ONLY:
            raise ConfigError(f"row {row!r} needs the image, but this corpus has no region features")
        model, result = train_network(row, seed, data, cfg, Path(workdir))
        pred = predict(model, _Inputs(data), te)
        history = [{k: float(v) for k, v in h.items() if isinstance(v, (int, float))} for h in result.history]
        selection = {"metric": "val_mse", "mode": "min", "best_step": result.best_step,
                     "best_val_mse": result.best_metric, "last_step": result.steps,
                     "stopped_early": result.stopped_early,
                     "checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None}
    else:
        raise ConfigError(f"unknown UHAN row {row!r}; choose from {list(ROWS)}")
    diagnostics = {"prediction_std": float(np.std(pred)), "target_std": float(np.std(data.y[te]))}
    return Cell(evaluate_popularity(row, cfg.selected_tables(), data.y[te], pred), history, selection, diagnostics)


# ---------------------------------------------------------------------------- train / demo
def train(cfg: Config) -> Path:
    """`mmsocial train uhan`: train ``cfg.variant`` on the corpus (first seed); save what predict needs."""
    from safetensors.torch import save_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    row = cfg.variant
    cfg = cfg.model_copy(update={"rows": [row]})
    from mmsocial.experiment import load_corpus

    data = prepare(load_corpus(cfg), cfg)
    log.info(data.describe())
    run_dir = Path(cfg.workdir)
    seed = cfg.seeds[0] if cfg.seeds else 0
    model, result = train_network(row, seed, data, cfg, run_dir / "training", _Inputs(data))
    te = data.idx("test")
    test = evaluate_popularity(row, ["table2", "table3", "table4", "text"], data.y[te], predict(model, _Inputs(data), te))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, str(run_dir / "model.safetensors"))
    if data.region_pca is not None:
        np.savez(run_dir / "region_pca.npz", mean=data.region_pca[0], P=data.region_pca[1])
    (run_dir / "uhan.json").write_text(json.dumps({
        "row": row, "config": cfg.model_dump(mode="json"), "words": data.word_vocabulary,
        "users": data.user_vocabulary, "regions": list(data.regions.shape[1:]) if data.regions is not None else None,
        "best_val_mse": result.best_metric, "best_step": result.best_step, "steps": result.steps,
        "test": next(iter(test.values()), {}),
        "test_posts": [data.post_ids[i] for i in te]}))
    log.info(result.summary())
    return run_dir


@dataclass
class Predictor:
    """A trained UHAN run loaded for prediction (``load_predictor``)."""

    model: torch.nn.Module
    cfg: Config
    row: str
    words: dict[str, int]
    users: dict[str, int]
    pca: Optional[tuple[np.ndarray, np.ndarray]]
    max_length: int
    _backbone: Any = None

    @property
    def uses_image(self) -> bool:
        return self.row not in _TEXT_ONLY

    def regions_of(self, image) -> torch.Tensor:
        """Region features of an image file (a path) or of an opened PIL image."""
        from PIL import Image

        from mmsocial.features.backbones import image_to_tensor, load_backbone

        if isinstance(image, Image.Image):
            x = image_to_tensor(image, self.cfg.image_size)[None]
        else:
            image_path = Path(image)
            if not image_path.is_file():
                raise FileNotFoundError(f"image {image_path} does not exist")
            try:
                with Image.open(image_path) as im:
                    x = image_to_tensor(im, self.cfg.image_size)[None]
            except OSError as e:
                raise ValueError(f"image {image_path} is unreadable ({e})") from None
        if self._backbone is None:
            self._backbone = load_backbone(self.cfg.backbone, self.cfg.weights)
        with torch.no_grad():
            r = self._backbone.region_grid(x).numpy()
        if self.pca is not None:
            r = project_regions(r, *self.pca)
        return torch.from_numpy(np.asarray(r, dtype=np.float32))

    def predict(self, text: str, user: Optional[str], image: Any = None) -> dict[str, Any]:
        """ŷ for one new post, with its attention weights; an unknown user is the cold-start user 0.
        ``image``: a path or a PIL image."""
        from mmsocial.features.text import tokenize

        if text is None or not str(text).strip():
            raise ValueError("the text is empty: UHAN predicts from a text (and an image and a user)")
        tokens = tokenize(text)[: self.max_length]
        ids = [self.words.get(w, 1) for w in tokens]
        if not ids:
            raise ValueError(f"the text {text!r} has no word (only punctuation?)")
        regions = None
        if self.uses_image:
            if image is None:
                raise ValueError(f"row {self.row!r} uses the image: pass an image")
            regions = self.regions_of(image)
        known = user is not None and user in self.users
        u = torch.tensor([self.users[user] if known else 0])
        words, lengths = torch.tensor([ids]), torch.tensor([len(ids)])
        with torch.no_grad():
            if hasattr(self.model, "attend"):
                out = self.model.attend(regions, words, lengths, u)
            else:
                out = {"y": self.model(regions, words, lengths, u)}
        res = {"popularity": float(out["y"][0]), "known_user": known, "tokens": tokens}
        if "alpha_T" in out:
            res["word_weights"] = [float(a) for a in out["alpha_T"][0, :len(tokens)]]
        if "alpha_V" in out:
            res["region_weights"] = [float(a) for a in out["alpha_V"][0]]
            side = int(round(len(res["region_weights"]) ** 0.5))
            if side * side == len(res["region_weights"]):
                res["region_grid"] = [side, side]
        if "a" in out:
            res["modality_weights"] = {"image": float(out["a"][0, 0]), "text": float(out["a"][0, 1])}
        return res


def load_predictor(run_dir: str | Path) -> Predictor:
    """Load what `mmsocial train uhan` saved in ``run_dir``."""
    from safetensors.torch import load_model

    run_dir = Path(run_dir)
    info_file = run_dir / "uhan.json"
    if not info_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no uhan.json (train a model first: mmsocial train uhan --config ...)")
    info = json.loads(info_file.read_text())
    cfg = Config.model_validate(info["config"])
    M, C = info["regions"] or (1, 1)
    shell = Data([], np.array([]), np.zeros(0, np.float32), np.zeros(0, np.int64), [], info["users"],
                 np.zeros((0, 1), np.int64), np.zeros(0, np.int64), [], [], info["words"],
                 np.zeros((0, M, C), np.float16) if info["regions"] else None)
    model = build_model(info["row"], cfg, shell)
    load_model(model, str(run_dir / "model.safetensors"))
    pca = None
    if (run_dir / "region_pca.npz").is_file():
        z = np.load(run_dir / "region_pca.npz")
        pca = (z["mean"], z["P"])
    max_length = model.cfg.max_length
    return Predictor(model.eval(), cfg, info["row"], {w: i for i, w in enumerate(info["words"])},
                     {u: i for i, u in enumerate(info["users"]) if i > 0}, pca, max_length)


def add_commands(groups) -> None:
    """`mmsocial predict popularity` and `mmsocial viz uhan-attention`."""
    import typer

    @groups["predict"].command("popularity")
    def predict_popularity(run_dir: Path = typer.Argument(..., help="folder written by `mmsocial train uhan`"),
                           text: str = typer.Option(..., help="the post's text (title and description)"),
                           user: Optional[str] = typer.Option(None, help="the author's user id (unknown: cold start)"),
                           image: Optional[Path] = typer.Option(None, help="the image file"),
                           views: Optional[float] = typer.Option(None, help="known view count, to print the error"),
                           days: Optional[float] = typer.Option(None, help="days since posting, with --views")):
        """Predict the popularity score log2(views/days + 1) of a new post with a trained UHAN run."""
        truth = None
        if views is not None or days is not None:
            if views is None or days is None or not np.isfinite(views) or not np.isfinite(days) \
                    or views < 0 or days <= 0:
                raise ValueError(f"--views and --days must both be given, finite, views >= 0 and days > 0; "
                                 f"got views={views}, days={days}")
            truth = float(popularity_target(views, days))
        res = load_predictor(run_dir).predict(text, user, image)  # bad input: the CLI's one-line error, exit 2
        log.info(f"predicted popularity: {res['popularity']:.3f}"
                 + (f" (true {truth:.3f}, error {res['popularity'] - truth:+.3f})" if truth is not None else ""))
        if not res["known_user"]:
            log.info(f"user {user!r} is not among the training users: predicted as the cold-start user")
        if "word_weights" in res:
            log.info("word weights: " + " ".join(f"{w}:{a:.2f}" for w, a in zip(res["tokens"], res["word_weights"])))
        if "modality_weights" in res:
            log.info("modality weights: image {image:.2f}, text {text:.2f}".format(**res["modality_weights"]))

    @groups["viz"].command("uhan-attention")
    def viz_attention(run_dir: Path = typer.Argument(..., help="folder written by `mmsocial train uhan`"),
                      corpus: Path = typer.Option(..., help="the corpus the run was trained on"),
                      out: Path = typer.Option(Path("uhan-attention.png"), help="picture to write"),
                      posts: int = typer.Option(3, help="how many test posts to draw")):
        """Region heat maps and word weights of UHAN for a few test posts (one row per post)."""
        from mmsocial.viz.popularity import attention_grid

        info = json.loads((Path(run_dir) / "uhan.json").read_text())
        pred = load_predictor(run_dir)
        c = Corpus.load(corpus)
        items = []
        for pid in info.get("test_posts", [])[:posts]:
            row = c.row(pid)
            img = c.image_path(pid)
            res = pred.predict(row["text"] or "", row["user_id"], img)
            y = float(popularity_target(row["views"], row["days"]))
            items.append((c.open_image(pid), res, y))
        attention_grid(items, out)
        log.info("wrote %s", out)


DEMO_ROWS = ["HisAve", "DMF", "UHAN"]


def demo(corpus_dir: Path, workdir: Path):
    """UHAN's part of `mmsocial demo`: UHAN against HisAve and DMF (Table 2 rows), one seed, short schedule."""
    from mmsocial.experiment import run_experiment

    return run_experiment({"system": NAME, "name": "demo", "corpus": str(corpus_dir), "workdir": str(workdir),
                           "preset": "small", "seeds": [0], "rows": DEMO_ROWS, "tables": ["table2"],
                           "threads": 1, "region_pca": 64, "model": {"max_steps": 120, "patience": 4}},
                          progress=False)


# ---------------------------------------------------------------------------- serving hook
def load_run(run_dir: Path):
    """`mmsocial serve`: a trained UHAN run as a ``systems.Served`` answering popularity predictions.

    ``popularity(image, text, user_id, post_id=None)``: ŷ (the score log2(views/days + 1)) of a new post
    through ``Predictor.predict``, with its attention: the word weights α_T, the region weights α_V (with
    their grid) and the modality weights; an author outside the training users is the cold-start user.
    With a post_id the post's own image is used (through the backbone, as for a new post)."""
    from mmsocial.systems import Served, served_corpus

    run_dir = Path(run_dir)
    pred = load_predictor(run_dir)
    corpus = served_corpus(pred.cfg, run_dir / "uhan.json")

    def popularity(image, text: str, user_id: Optional[str] = None, post_id: Optional[str] = None) -> dict:
        if pred.uses_image and image is None:
            if post_id is None:
                raise ValueError(f"row {pred.row!r} uses the image: give an image file or a post_id")
            image = corpus.open_image(post_id)
        return {**pred.predict(text, user_id, image), "row": pred.row}

    return Served(NAME, run_dir, corpus, "l2", {}, popularity=popularity,
                  info={"title": TITLE, "row": pred.row, "users": len(pred.users), "words": len(pred.words)})
