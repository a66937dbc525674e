"""EISR (Liu et al., ICIP 2017): isomorphic semantic space for images and texts; Tables 1-3.

Data: pairs (image, text) with >= 1 class. Image = the cached CNN region grid's mean (the pooled
vector standing in for AlexNet fc7); text = LDA topic proportions (100 topics, fitted on the
training texts: text + tags); classes = the corpus's labels (top-level part of a
``top/sub`` label; ``classes: labels`` keeps whole labels). Split: the corpus's own ``split``
column when every kept post has one (official lists), otherwise random 70/10/20; a corpus
without validation posts gets ``val_fraction`` of train carved out.

Rows: the paper's baselines (CCA, SM, T-V CCA, DEEP-SM: Table 3), the ablations (O, O/LE, O/LE/J:
Table 2; O/LE/J is the system and also in Table 3) and the latent sweep (l=64 ... l=1024: Table 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch
from pydantic import Field

from mmsocial.config import ConfigError, ExperimentConfig, StrictModel, TrainConfig, load_config
from mmsocial.data.corpus import Corpus, CorpusError
from mmsocial.eval.table import ResultTable
from mmsocial.systems import Cell

log = logging.getLogger(__name__)

NAME = "eisr"
TITLE = "EISR"
PAPER = "eisr-cross-media-retrieval.md"
BASELINE_ROWS = ("CCA", "SM", "T-V CCA", "DEEP-SM")
VARIANT_ROWS = ("O", "O/LE", "O/LE/J")
SWEEP_ROWS = tuple(f"l={d}" for d in (64, 128, 256, 512, 1024))
ROWS: tuple[str, ...] = (*BASELINE_ROWS, *VARIANT_ROWS, *SWEEP_ROWS)
TABLES: tuple[str, ...] = ("table1", "table2", "table3")
MAIN_ROW = "O/LE/J"


def row_tables(row: str) -> tuple[str, ...]:
    """The paper tables a row belongs to."""
    if row in SWEEP_ROWS:
        return ("table1",)
    if row == MAIN_ROW:
        return ("table2", "table3")
    if row in VARIANT_ROWS:
        return ("table2",)
    return ("table3",)


# ---------------------------------------------------------------------------- settings
class ModelSettings(StrictModel):
    """Overrides of the preset's EISRConfig fields (None = the preset's value)."""

    text_hidden: Optional[int] = Field(None, ge=1, description="T_Net's first FC (paper 4096)")
    latent_dim: Optional[int] = Field(None, ge=1, description="l of O/LE and O/LE/J (Table 1 rows set their own)")
    dropout: Optional[float] = Field(None, ge=0, lt=1)
    init_std: Optional[float] = Field(None, gt=0)
    lr_new: Optional[float] = Field(None, gt=0)
    lr_pretrained: Optional[float] = Field(None, gt=0)
    momentum: Optional[float] = Field(None, ge=0, lt=1)
    weight_decay: Optional[float] = Field(None, ge=0)
    batch_size: Optional[int] = Field(None, ge=1)
    iterations: Optional[int] = Field(None, ge=1, description="SGD iterations; lr / 10 at half")
    loss_reduction: Optional[Literal["sum", "mean"]] = Field(None, description="Eq. 2 summed over the batch "
                                                             "(as printed) or averaged")

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class TextSettings(StrictModel):
    features: Literal["lda", "tags"] = Field("lda", description="lda: LDA topic proportions of text (+ tags); "
                                             "tags: the multi-hot tag vector (PASCAL VOC 2007's tag features)")
    topics: int = Field(100, ge=2, description="LDA topics (paper: 100)")
    min_count: int = Field(2, ge=1, description="a word enters the LDA vocabulary when in this many training texts")
    max_iter: int = Field(20, ge=1, description="LDA (batch variational Bayes) passes")
    use_tags: bool = Field(True, description="append the post's tags to its text")


class BaselineSettings(StrictModel):
    cca_components: int = Field(10, ge=1, description="canonical components of CCA")
    cca_reg: float = Field(1e-3, ge=0)
    tvcca_components: int = Field(10, ge=1, description="components of three-view CCA")
    tvcca_power: float = Field(4.0, description="eigenvalue power scaling the projections (Gong et al.: 4)")
    normalize_projections: bool = Field(True, description="L2-normalise CCA projections before the Euclidean "
                                        "distance (= ranking by cosine, the usual CCA retrieval)")
    sm_C: float = Field(0.01, gt=0, description="inverse L2 strength of SM's logistic regressions")
    sm_max_iter: int = Field(300, ge=1, description="L-BFGS iterations of each logistic regression")
    deep_sm_hidden: list[int] = [1024]
    deep_sm_epochs: int = Field(20, ge=1)
    deep_sm_lr: float = Field(1e-3, gt=0)
    deep_sm_dropout: float = Field(0.5, ge=0, lt=1)


class Config(ExperimentConfig):
    """One EISR experiment; see configs/eisr/*.yaml."""

    ROWS: ClassVar[tuple[str, ...]] = ROWS
    TABLES: ClassVar[tuple[str, ...]] = TABLES

    system: Literal["eisr"] = "eisr"
    name: str = "eisr"
    workdir: str = "runs/eisr"
    backbone: str = "mobilenet_v2"
    image_size: int = Field(224, ge=32)
    weights: str = Field("imagenet", description="backbone weights: imagenet, random (tests), or a path")
    finetune: bool = Field(False, description="train the backbone end to end with I_Net (the paper's AlexNet "
                           "conv1-fc7 at lr_pretrained): images are decoded and run through the CNN at every "
                           "step, so it is far slower than the cached features (the default)")
    classes: Literal["top", "labels"] = Field("top", description="top: the top-level part of 'top/sub' labels")
    standardize: bool = Field(True, description="z-score image and text features with the training pairs' "
                              "mean and std (docs/eisr.md: with raw LDA proportions T_Net does not train)")
    split_seed: int = 0
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of train kept for validation when the "
                                "corpus has no validation posts")
    preset: Literal["paper", "default", "small", "tiny"] = "small"
    model: ModelSettings = Field(default_factory=ModelSettings)
    text: TextSettings = Field(default_factory=TextSettings)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)
    selection: Literal["val_map", "val_loss", "last"] = Field(
        "val_map", description="checkpoint kept: best validation mAP (average of both directions), lowest "
        "validation loss, or the last iteration (the paper's fixed schedule)")
    eval_every: int = Field(100, ge=1, description="iterations between validations")
    progress: bool = False


# ---------------------------------------------------------------------------- data
@dataclass
class Data:
    """Aligned arrays over the kept pairs (image, non-empty text, >= 1 class)."""

    post_ids: list[str]
    split: np.ndarray  # "train" / "val" / "test"
    image: np.ndarray  # (N, C) float32 pooled CNN vectors
    text: np.ndarray  # (N, topics) float32 LDA topic proportions
    labels: np.ndarray  # (N, c) float32 multi-hot
    classes: list[str]
    top_words: list[list[str]]
    corpus: Optional[Corpus] = None  # the images themselves, read when the backbone is fine-tuned
    text_model: Any = None  # the fitted LDA (features.text.TopicModel), or the tag vocabulary (list)
    stats: Optional[dict[str, tuple[np.ndarray, np.ndarray]]] = None  # "image"/"text": training mean, std

    def idx(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.post_ids, list(self.split), self.classes]).encode())
        for a in (self.image[:8], self.text[:8], self.labels):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        sizes = "/".join(str(len(self.idx(s))) for s in ("train", "val", "test"))
        multi = int((self.labels.sum(1) > 1).sum())
        return (f"EISR pairs train/val/test {sizes}, {len(self.classes)} classes ({multi} multi-label pairs), "
                f"image {self.image.shape[1]}-d pooled, text {self.text.shape[1]} LDA topics")


def _classes_of(labels: list[str], mode: str) -> list[str]:
    out = [lab.split("/")[0] if mode == "top" else lab for lab in labels]
    return sorted(set(o for o in out if o))


def _pooled(features, ids: list[str], positions: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Mean of each post's region grid; ``features`` is a FeatureSet or an array aligned with the corpus."""
    is_store = hasattr(features, "rows") and not isinstance(features, np.ndarray)
    rows = features.rows(ids) if is_store else np.asarray(positions)
    data = features.data if is_store else features
    out = np.empty((len(rows), data.shape[-1]), dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    for a in range(0, len(rows), chunk):
        sel = order[a:a + chunk]
        block = np.asarray(data[rows[sel]], dtype=np.float32)
        out[sel] = block.mean(axis=tuple(range(1, block.ndim - 1))) if block.ndim > 2 else block
    return out


def _split(corpus: Corpus, keep: np.ndarray, cfg: Config) -> np.ndarray:
    from mmsocial.data.splits import random_split

    given = corpus.posts["split"].to_numpy(dtype=object) if "split" in corpus.posts else None
    if (given is None or not set(given[keep]) <= {"train", "val", "test"}) and "official_split" in corpus.posts:
        # PASCAL VOC 2007: the paper trains on trainval (5,011) and tests on test (4,952)
        given = np.array([{"val": "train"}.get(s, s) for s in corpus.posts["official_split"]], dtype=object)
    if given is not None and all(s in ("train", "val", "test") for s in given[keep]) \
            and {"train", "test"} <= set(given[keep]):
        split = given.copy()
        log.info("EISR uses the corpus's own split")
    else:
        split = random_split(corpus, {"train": 0.7, "val": 0.1, "test": 0.2}, cfg.split_seed)
        log.info("EISR: no complete split column; random 70/10/20 split (seed %d)", cfg.split_seed)
    if not (split[keep] == "val").any() and cfg.val_fraction > 0:
        train = np.flatnonzero(keep & (split == "train"))
        rng = np.random.default_rng([cfg.split_seed, 1])
        split[rng.choice(train, int(round(cfg.val_fraction * len(train))), replace=False)] = "val"
    return split


def post_texts(posts, cfg: Config) -> list[str]:
    """The text each post contributes: its text, plus its tags when ``text.use_tags``."""
    return [" ".join([t or "", *(tags if cfg.text.use_tags else [])]) for t, tags in
            zip(posts["text"].where(posts["text"].notna(), None), posts["tags"])]


def text_tokens(texts: list[str]) -> list[list[str]]:
    from mmsocial.features.text import corpus_tokens

    return corpus_tokens(texts, stop_words="english", min_length=2, keep_numbers=False)


def prepare(corpus: Corpus, cfg: Config, features=None, text_model=None) -> Data:
    """Split, classes, LDA text features (fitted on training texts) and pooled image vectors.

    features: the region grids (a FeatureSet, or an array with one row per corpus post); None =
    extracted (or opened from the corpus's cache) with cfg.backbone / cfg.image_size / cfg.weights.
    text_model: an already-fitted LDA (``Data.text_model`` of an earlier call) used instead of fitting one.
    The returned Data keeps the fitted text transform and the standardisation statistics, so that new
    texts and images can be mapped the same way (``text_features``, ``image_features``).
    """
    from mmsocial.features.text import fit_lda, tag_vectors

    posts = corpus.posts
    tokens = text_tokens(post_texts(posts, cfg))
    class_lists = [_classes_of(list(labs), cfg.classes) for labs in posts["labels"]]
    has_text = (np.array([len(t) > 0 for t in tokens]) if cfg.text.features == "lda"
                else posts["tags"].map(len).to_numpy() > 0)
    keep = posts["image"].notna().to_numpy() & np.array([len(c) > 0 for c in class_lists]) & has_text
    if keep.sum() < 3:
        raise CorpusError(f"{corpus.root or corpus.name}: only {int(keep.sum())} posts have an image, a text and "
                          f"a label; EISR needs labelled image-text pairs")
    split = _split(corpus, keep, cfg)
    for s in ("train", "test"):
        if not (keep & (split == s)).any():
            raise CorpusError(f"{corpus.root or corpus.name}: no {s} pair left after filtering")
    classes = sorted({c for cl, k in zip(class_lists, keep) if k for c in cl})
    if len(classes) < 2:
        raise CorpusError(f"{corpus.root or corpus.name}: EISR needs at least 2 classes, found {classes}")
    idx = np.flatnonzero(keep)
    train_tokens = [tokens[i] for i in idx if split[i] == "train"]
    if cfg.text.features == "lda":
        lda = text_model if text_model is not None else fit_lda(
            train_tokens, topics=cfg.text.topics, min_count=cfg.text.min_count, max_iter=cfg.text.max_iter,
            seed=cfg.split_seed)
        text, top_words, text_model = lda.transform([tokens[i] for i in idx]), lda.top_words(8), lda
    else:
        from collections import Counter

        counts = Counter(t for i in idx if split[i] == "train" for t in set(posts["tags"].iloc[i]))
        vocab = sorted(t for t, n in counts.items() if n >= cfg.text.min_count)
        if not vocab:
            raise CorpusError(f"{corpus.root or corpus.name}: no tag occurs on {cfg.text.min_count} training posts")
        text, top_words, text_model = tag_vectors([list(posts["tags"].iloc[i]) for i in idx], vocab), [vocab], vocab
    labels = tag_vectors([class_lists[i] for i in idx], classes)
    ids = posts["post_id"].iloc[idx].tolist()
    if features is None:
        from mmsocial.features.extract import extract_features

        features = extract_features(corpus, "regions", cfg.backbone, cfg.image_size, weights=cfg.weights,
                                    progress=cfg.progress)
    image = _pooled(features, ids, idx)
    stats = None
    if cfg.standardize:
        tr = split[idx] == "train"
        stats = {}
        for name, a in (("image", image), ("text", text)):
            mean, std = a[tr].mean(0), np.maximum(a[tr].std(0), 1e-6)
            a -= mean
            a /= std
            stats[name] = (mean, std)
    return Data(ids, split[idx], image, text, labels, classes, top_words, corpus, text_model, stats)


def text_features(data: Data, texts: list[str]) -> np.ndarray:
    """T_Net's input for new texts: the run's LDA topic proportions (or tag multi-hot when the run's
    text features are tags), standardised as the training pairs were."""
    from mmsocial.features.text import tag_vectors

    if isinstance(data.text_model, list):
        t = tag_vectors([s.split() for s in texts], data.text_model)
    else:
        t = data.text_model.transform(text_tokens(texts))
    return _standardised(data, "text", t)


def image_features(data: Data, pooled: np.ndarray) -> np.ndarray:
    """I_Net's input for new pooled CNN vectors, standardised as the training pairs were."""
    return _standardised(data, "image", np.asarray(pooled, dtype=np.float32))


def _standardised(data: Data, name: str, a: np.ndarray) -> np.ndarray:
    if data.stats is None:
        return a.astype(np.float32)
    mean, std = data.stats[name]
    return ((a - mean) / std).astype(np.float32)


def new_tables(cfg: Config, data: Data) -> dict[str, ResultTable]:
    from mmsocial.eval.protocols.eisr import eisr_table

    return {t: eisr_table(t, cfg.name) for t in (cfg.tables or TABLES)}


# ---------------------------------------------------------------------------- EISR training
def _model_settings(row: str, cfg: Config, data: Data) -> tuple[str, dict[str, Any]]:
    variant = "O/LE/J" if row in SWEEP_ROWS else row
    ov = {"image_dim": data.image.shape[1], "text_dim": data.text.shape[1], "num_classes": len(data.classes),
          **cfg.model.overrides()}
    if row in SWEEP_ROWS:
        ov["latent_dim"] = int(row.split("=")[1])
    return variant, ov


class PairImages(torch.utils.data.Dataset):
    """The decoded images of some pairs, for fine-tuning: ``images[a:b]`` is a (b - a, 3, S, S) tensor in
    [0, 1] (sliced like the cached feature array it replaces); as a dataset, item i is a training example."""

    def __init__(self, data: Data, rows: np.ndarray, size: int, targets: Optional[torch.Tensor] = None):
        if data.corpus is None:
            raise ValueError("fine-tuning reads the images: prepare() the data from a corpus")
        self.data, self.rows, self.size, self.targets = data, np.asarray(rows), size, targets

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return torch.stack([self._image(r) for r in self.rows[i]]) if len(self.rows[i]) else \
                torch.zeros(0, 3, self.size, self.size)
        r = self.rows[i]
        return {"x": self._image(r), "t": torch.from_numpy(self.data.text[r]), "y": self.targets[r]}

    def _image(self, r: int) -> torch.Tensor:
        from mmsocial.features.backbones import image_to_tensor

        return image_to_tensor(self.data.corpus.open_image(self.data.post_ids[r]), self.size)


def finetuned_encoder(cfg: Config, data: Data, stats_images: int = 256):
    """The backbone (cfg.backbone / cfg.weights) as a trainable pooled encoder, its outputs standardised
    with their mean and std over up to ``stats_images`` training images (as the cached vectors are)."""
    from mmsocial.features.backbones import PooledEncoder, load_backbone

    encoder = PooledEncoder(load_backbone(cfg.backbone, cfg.weights))
    tr = data.idx("train")
    sample = np.sort(np.random.default_rng(cfg.split_seed).choice(tr, min(stats_images, len(tr)), replace=False))
    images = PairImages(data, sample, cfg.image_size)
    with torch.no_grad():
        encoder.eval()
        out = torch.cat([encoder(images[a:a + 64]) for a in range(0, len(sample), 64)])
    encoder.feature_mean, encoder.feature_std = out.mean(0), out.std(0).clamp_min(1e-6)
    return encoder


@torch.inference_mode()
def semantic_vectors(model, image, text: np.ndarray, batch: int = 1024,
                     image_batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """f^(I), f^(T) of the given items in float64: the softmax is taken on float64 logits, because the
    trained vectors saturate and their float32 softmax would tie (DESIGN.md, EISR). image: cached
    vectors, or a PairImages when the backbone is fine-tuned."""
    model.eval()

    def run(fn, a, step):
        outs = [torch.softmax(fn(torch.as_tensor(a[i:i + step], dtype=torch.float32)).double(), -1)
                for i in range(0, len(a), step)]
        return torch.cat(outs).numpy() if outs else np.zeros((0, model.cfg.num_classes))

    images_step = image_batch if isinstance(image, PairImages) else batch
    return run(model.image_logits, image, images_step), run(model.text_logits, text, batch)


def image_inputs(data: Data, rows: np.ndarray, cfg: Config):
    """What I_Net reads for these pairs: the cached vectors, or the images when fine-tuning."""
    return PairImages(data, rows, cfg.image_size) if cfg.finetune else data.image[rows]


def train_eisr(data: Data, row: str, cfg: Config, out_dir: Path, seed: int):
    """Train one EISR row (variant / latent size) with the shared trainer; returns (model, TrainResult)."""
    from mmsocial.eval.protocols.eisr import cross_media_map
    from mmsocial.models.eisr import eisr, label_targets, semantic_loss
    from mmsocial.train.data import FeatureDataset
    from mmsocial.train.trainer import train

    variant, ov = _model_settings(row, cfg, data)
    torch.manual_seed(seed)
    backbone = None
    if cfg.finetune:
        backbone = finetuned_encoder(cfg, data)
        ov["image_dim"] = int(backbone.feature_mean.numel())
    model = eisr(cfg.preset, variant, backbone=backbone, **ov)
    m = model.cfg
    tr, va = data.idx("train"), data.idx("val")
    steps_per_epoch = math.ceil(len(tr) / m.batch_size)
    selection = cfg.selection if len(va) else "last"
    tcfg = load_config({"epochs": math.ceil(m.iterations / steps_per_epoch), "max_steps": m.iterations,
                        "batch_size": m.batch_size, "optimizer": "sgd", "lr": m.lr_new, "momentum": m.momentum,
                        "weight_decay": m.weight_decay, "lr_schedule": "halfway", "seed": seed,
                        "device": cfg.device, "progress": cfg.progress, "eval_every": cfg.eval_every,
                        "log_every": cfg.eval_every, "checkpoint_every": cfg.eval_every,
                        "early_stopping": {"metric": None if selection == "last" else selection,
                                           "mode": "min" if selection == "val_loss" else "max",
                                           "patience": 10 ** 6}}, TrainConfig)
    y = label_targets(torch.from_numpy(data.labels))
    dataset = (PairImages(data, tr, cfg.image_size, y) if cfg.finetune else
               FeatureDataset({"x": data.image, "t": data.text, "y": y.numpy()}, rows=tr))

    def loss_fn(net, batch):
        p_x, p_t = net(batch["x"], batch["t"])
        loss = semantic_loss(p_x, p_t, batch["y"], m.loss_reduction)
        return {"loss": loss}

    evaluate = None
    if len(va):
        xv = image_inputs(data, va, cfg)

        def evaluate(net):
            sx, st = semantic_vectors(net, xv, data.text[va])
            out = {"val_loss": float(semantic_loss(torch.from_numpy(sx), torch.from_numpy(st),
                                                   y[va].double(), "mean"))}
            out.update({f"val_{k}": v for k, v in
                        zip(("map_image", "map_text", "map"), cross_media_map(sx, st, data.labels[va]).values())})
            return out

    result = train(model, dataset, loss_fn, tcfg, out_dir, evaluate=evaluate, param_groups=model.param_groups(),
                   resume=False, run_config={"eisr": m.to_dict(), "classes": data.classes})
    if selection != "last" and result.best_checkpoint is not None:
        from mmsocial.train.checkpoint import load_checkpoint
        load_checkpoint(result.best_checkpoint, model)
    chosen = selection != "last"
    kept = {"metric": selection if chosen else None, "mode": tcfg.early_stopping.mode if chosen else None,
            "best_step": result.best_step if chosen else result.steps, "last_step": result.steps,
            "best_value": result.best_metric}
    return model.to("cpu").eval(), result, kept


# ---------------------------------------------------------------------------- baselines
def _normalise(a: np.ndarray, on: bool) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12) if on else a


def _baseline(row: str, data: Data, cfg: Config, seed: int) -> tuple[np.ndarray, np.ndarray, list, Optional[dict]]:
    from mmsocial.models.baselines import CCA, DeepSemanticMatching, MultiViewCCA, SemanticMatching

    b = cfg.baselines
    tr, va, te = data.idx("train"), data.idx("val"), data.idx("test")
    X, T, L = data.image, data.text, data.labels
    if row == "CCA":
        k = min(b.cca_components, X.shape[1], T.shape[1])
        m = CCA(k, reg=b.cca_reg).fit(X[tr], T[tr])
        return (_normalise(m.transform_x(X[te]), b.normalize_projections),
                _normalise(m.transform_y(T[te]), b.normalize_projections), [], None)
    if row == "T-V CCA":
        lab = L[tr] / L[tr].sum(1, keepdims=True)
        m = MultiViewCCA(b.tvcca_components, reg=b.cca_reg, power=b.tvcca_power).fit(X[tr], T[tr], lab)
        return (_normalise(m.transform(0, X[te]), b.normalize_projections),
                _normalise(m.transform(1, T[te]), b.normalize_projections), [], None)
    if row == "SM":
        m = SemanticMatching(C=b.sm_C, max_iter=b.sm_max_iter).fit({"image": X[tr], "text": T[tr]}, L[tr])
        return m.transform("image", X[te]), m.transform("text", T[te]), [], None
    m = DeepSemanticMatching(hidden=b.deep_sm_hidden, dropout=b.deep_sm_dropout, lr=b.deep_sm_lr,
                             epochs=b.deep_sm_epochs, random_state=seed, device=cfg.device)
    val = ({"image": X[va], "text": T[va]}, L[va]) if len(va) else (None, None)
    m.fit({"image": X[tr], "text": T[tr]}, L[tr], *val)
    hist = [{"epoch": float(hi["epoch"]), "train_loss": hi["train_loss"] + ht["train_loss"],
             **({"val_loss": hi["val_loss"] + ht["val_loss"]} if "val_loss" in hi else {})}
            for hi, ht in zip(m.history_["image"], m.history_["text"])]
    best = {mod: max((h["epoch"] for h in m.history_[mod] if h.get("kept")), default=len(m.history_[mod]))
            for mod in ("image", "text")}
    selection = {"metric": "val_loss" if len(va) else None, "mode": "min", "best_epoch": best,
                 "last_epoch": b.deep_sm_epochs, "per_modality": True}
    return m.transform("image", X[te]), m.transform("text", T[te]), hist, selection


# ---------------------------------------------------------------------------- one cell
def run_cell(row: str, seed: int, data: Data, cfg: Config, workdir: Path) -> Cell:
    """Train (or fit) one row with one seed and evaluate it on the test pairs (mAP, both directions)."""
    from mmsocial.eval.protocols.eisr import cross_media_map

    if row not in ROWS:
        raise ConfigError(f"unknown EISR row {row!r}; choose from {list(ROWS)}")
    from threadpoolctl import threadpool_limits

    te = data.idx("test")
    history, selection = [], None
    if row in BASELINE_ROWS:
        with threadpool_limits(limits=cfg.threads):  # BLAS threads: oversubscription on a shared CPU is slow
            sx, st, history, selection = _baseline(row, data, cfg, seed)
    else:
        model, result, selection = train_eisr(data, row, cfg, Path(workdir), seed)
        sx, st = semantic_vectors(model, image_inputs(data, te, cfg), data.text[te])
        history = [{"epoch": float(h["epoch"]), "step": float(h["step"]),
                    **{k: float(v) for k, v in h.items() if k.startswith(("train_", "val_")) and v != ""}}
                   for h in result.history]
    scores = cross_media_map(sx, st, data.labels[te])
    tables = [t for t in row_tables(row) if t in (cfg.tables or TABLES)]
    diagnostics = {"embedding_variance": float(np.concatenate([sx, st]).var(0).sum())}
    if row not in ("CCA", "T-V CCA"):
        diagnostics["mean_max_posterior"] = float(np.concatenate([sx, st]).max(1).mean())
    return Cell({t: dict(scores) for t in tables}, history, selection, diagnostics)


# ---------------------------------------------------------------------------- train / demo
def train(cfg: Config) -> Path:
    """`mmsocial train eisr`: O/LE/J on cfg.corpus with the first seed; saves the model (eisr.pt), its
    settings and classes (eisr.json) and the test pairs' semantic vectors (semantic_test.npz) in cfg.workdir."""
    from mmsocial.experiment import load_corpus

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = load_corpus(cfg)
    data = prepare(corpus, cfg)
    log.info(data.describe())
    out = Path(cfg.workdir)
    model, result, kept = train_eisr(data, MAIN_ROW, cfg, out, cfg.seeds[0] if cfg.seeds else 0)
    torch.save(model.state_dict(), out / "eisr.pt")
    te = data.idx("test")
    sx, st = semantic_vectors(model, image_inputs(data, te, cfg), data.text[te])
    np.savez_compressed(out / "semantic_test.npz", post_ids=np.array([data.post_ids[i] for i in te]),
                        image=sx, text=st, labels=data.labels[te], classes=np.array(data.classes))
    (out / "eisr.json").write_text(json.dumps({"config": model.cfg.to_dict(), "classes": data.classes,
                                               "selection": kept}, indent=1))
    log.info(result.summary())
    return out


DEMO_ROWS = ["CCA", MAIN_ROW]


def demo(corpus_dir: Path, workdir: Path):
    """EISR's part of `mmsocial demo`: O/LE/J against CCA in Table 3's layout, one seed, a short schedule
    (100 iterations, LDA with 10 passes) on cached features."""
    from mmsocial.experiment import run_experiment

    return run_experiment({"system": NAME, "name": "demo", "corpus": str(corpus_dir), "workdir": str(workdir),
                           "preset": "small", "seeds": [0], "rows": DEMO_ROWS, "tables": ["table3"],
                           "model": {"iterations": 100}, "text": {"max_iter": 10}, "threads": 1}, progress=False)


# ---------------------------------------------------------------------------- extra commands
def plot_semantic_vectors(run_dir: Path, out: Path, pairs: int = 4, seed: int = 0) -> Path:
    """Fig. 3 of the paper: the semantic vectors of a few test pairs (image and text side by side),
    from the ``semantic_test.npz`` that `mmsocial train eisr` saves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(run_dir) / "semantic_test.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; train a model first with `mmsocial train eisr --out {run_dir}`")
    z = np.load(path)
    pick = np.random.default_rng(seed).choice(len(z["post_ids"]), min(pairs, len(z["post_ids"])), replace=False)
    classes = [str(c) for c in z["classes"]]
    fig, axes = plt.subplots(len(pick), 2, figsize=(10, 1.8 * len(pick)), squeeze=False, sharey=True)
    for r, i in enumerate(pick):
        truth = ", ".join(c for c, v in zip(classes, z["labels"][i]) if v > 0)
        for col, (name, vec) in enumerate((("image", z["image"][i]), ("text", z["text"][i]))):
            ax = axes[r, col]
            ax.bar(range(len(classes)), vec, color=["C3" if v > 0 else "C0" for v in z["labels"][i]])
            ax.set_title(f"{z['post_ids'][i]} {name} ({truth})", fontsize=8)
            ax.set_xticks(range(len(classes)))
            ax.set_xticklabels(classes if r == len(pick) - 1 else [], rotation=90, fontsize=6)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def add_commands(groups) -> None:
    import typer

    @groups["viz"].command("eisr-semantic")
    def viz_eisr_semantic(run_dir: Path = typer.Argument(..., help="folder of `mmsocial train eisr`"),
                          out: Path = typer.Option(Path("eisr_semantic.png"), help="PNG to write"),
                          pairs: int = typer.Option(4, help="test pairs to show"),
                          seed: int = typer.Option(0, help="which pairs (random with this seed)")):
        """EISR Fig. 3: semantic vectors of test image-text pairs (true classes in red)."""
        log.info("wrote %s", plot_semantic_vectors(run_dir, out, pairs, seed))


# ---------------------------------------------------------------------------- serving hook
def load_run(run_dir: Path):
    """`mmsocial serve` / `mmsocial index build`: a trained EISR run as a ``systems.Served``.

    Images and texts are compared in the semantic space (the class posteriors f^(I), f^(T) of §3.2) by
    Euclidean distance, as in the run's retrieval protocol. "posts" are f^(I) of the run's pairs, "texts"
    f^(T) of the same pairs (text -> images, image -> texts). A new text goes through the run's text
    features: the LDA is fitted again by ``prepare`` (batch variational Bayes with the run's seed, so the
    same model) and the run's saved test vectors (``semantic_test.npz``) are recomputed and compared to
    be sure; a run whose vectors differ is refused. An uploaded image is pooled by the run's backbone and
    standardised with the training statistics. A run trained with ``finetune: true`` is refused: its
    backbone is part of the model and the serving hook reads cached features."""
    from mmsocial.config import load_config as load
    from mmsocial.models.eisr import EISR, EISRConfig
    from mmsocial.systems import RUN_CONFIG, Collection, Served, require_run_files, served_corpus

    run_dir = Path(run_dir)
    cfg = load(run_dir / RUN_CONFIG, Config)
    if cfg.finetune:
        raise ValueError(f"{run_dir}: trained with finetune: true (the backbone is part of the model); "
                         f"serving reads cached features, so only runs with finetune: false can be served")
    require_run_files(run_dir, ("eisr.json", "eisr.pt", "semantic_test.npz"), "eisr")
    saved = json.loads((run_dir / "eisr.json").read_text())
    model = EISR(EISRConfig(**saved["config"]))
    model.load_state_dict(torch.load(run_dir / "eisr.pt", map_location="cpu", weights_only=True))
    model.eval()
    corpus = served_corpus(cfg, run_dir / RUN_CONFIG)
    data = prepare(corpus, cfg)
    if data.classes != saved["classes"]:
        raise ValueError(f"{run_dir}: the corpus's classes differ from the run's eisr.json (the corpus changed "
                         f"since training); retrain or serve the original corpus")
    z = np.load(run_dir / "semantic_test.npz")
    row = {p: i for i, p in enumerate(data.post_ids)}
    te = np.array([row.get(str(p), -1) for p in z["post_ids"]])
    if (te < 0).any():
        raise ValueError(f"{run_dir}: test pairs of semantic_test.npz are missing from the corpus (the corpus "
                         f"changed since training); retrain or serve the original corpus")
    check = semantic_vectors(model, data.image[te], data.text[te])  # as `train` computed them
    if not (np.allclose(check[0], z["image"], rtol=0, atol=1e-6) and np.allclose(check[1], z["text"], rtol=0, atol=1e-6)):
        raise ValueError(f"{run_dir}: the semantic vectors recomputed from the corpus differ from the run's "
                         f"semantic_test.npz (corpus, features or LDA changed since training); retrain the run")
    sx, st = (a.astype(np.float32) for a in semantic_vectors(model, data.image, data.text))
    from mmsocial.features.backbones import upload_regions

    regions_of_images = upload_regions(cfg.backbone, cfg.weights, cfg.image_size)

    def pooled(images) -> np.ndarray:
        return regions_of_images(images).mean(1)

    def image_vectors(pooled_vectors: np.ndarray) -> np.ndarray:
        return semantic_vectors(model, image_features(data, pooled_vectors), np.zeros((0, data.text.shape[1]),
                                                                                  np.float32))[0].astype(np.float32)

    def embed_text(text: str):
        tokens = text_tokens([text])[0]
        if not isinstance(data.text_model, list) and not any(
                w in data.text_model.vectorizer.vocabulary_ for w in tokens):
            raise ValueError(f"no word of {text!r} is in the vocabulary of this run's LDA (stop words and words "
                             f"shorter than 2 letters removed)")
        t = text_features(data, [text])
        if isinstance(data.text_model, list) and not t.any():
            raise ValueError(f"no tag of {text!r} is in this run's tag vocabulary")
        v = semantic_vectors(model, np.zeros((0, data.image.shape[1]), np.float32), t)[1][0]
        top = np.argsort(-v)[:3]
        return v.astype(np.float32), {"words": tokens, "classes": {data.classes[i]: round(float(v[i]), 4)
                                                                  for i in top}}

    def embed_posts(post_ids: list[str]) -> np.ndarray:
        out = np.empty((len(post_ids), sx.shape[1]), dtype=np.float32)
        new = [i for i, p in enumerate(post_ids) if p not in row]
        for i, p in enumerate(post_ids):
            if p in row:
                out[i] = sx[row[p]]
        if new:  # posts added to the corpus after training
            out[new] = image_vectors(pooled([corpus.open_image(post_ids[i]) for i in new]))
        return out

    return Served(NAME, run_dir, corpus, "l2",
                  {"posts": lambda: Collection(list(data.post_ids), sx),
                   "texts": lambda: Collection(list(data.post_ids), st, kind="post")},
                  embed_text=embed_text, embed_image=lambda im: image_vectors(pooled([im]))[0],
                  embed_posts=embed_posts,
                  info={"title": TITLE, "classes": data.classes, "pairs": len(data.post_ids),
                        "variant": EISRConfig(**saved["config"]).variant})
