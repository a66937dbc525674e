"""DU2MCE as a system: settings, the §4.1 split, word2vec and token ids, pooled image features, the rows
of Tables 2-4 (λ settings, baselines), one (row, seed) cell, `mmsocial train du2mce`, the cluster view
and DU2MCE's part of the demo. The model is ``models/du2mce.py``; the protocols ``eval/protocols/du2mce.py``.

    from mmsocial.experiment import run_experiment
    result = run_experiment("configs/du2mce/table2.yaml")      # or `mmsocial experiment ...`

Recipe: corpus -> tokens (stop words removed, text + tags) -> pooled image features (mean of the cached
region grid) -> near-duplicate removal and the image-first split -> word2vec on the training texts
(min count 5) -> vocabulary (OOV words dropped, <= 20 tokens) -> users with a training post (K), their
mean-word2vec initialisation and interest labels -> for each seed and row: train (checkpoint kept on the
validation's normalised joint mean median rank over the tasks with λ > 0) or average, then the
retrieval tasks on the test split, the interest probe and the zero-shot view.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Optional

import numpy as np
import torch
from pydantic import Field, model_validator

from mmsocial.config import ExperimentConfig, StrictModel, TrainConfig, load_config, partial_model
from mmsocial.data.corpus import Corpus, CorpusError
from mmsocial.eval.table import ResultTable
from mmsocial.systems import Cell

log = logging.getLogger(__name__)

NAME = "du2mce"
TITLE = "DU2MCE"
PAPER = "du2mce-unified-user-content-embedding.md"

LAMBDA_ROWS: dict[str, tuple[float, float, float]] = {
    "DU2MCE (1, 0, 0)": (1.0, 0.0, 0.0),
    "DU2MCE (0, 1, 0)": (0.0, 1.0, 0.0),
    "DU2MCE (0, 0, 1)": (0.0, 0.0, 1.0),
    "DU2MCE (0.5, 0.5, 0)": (0.5, 0.5, 0.0),
    "DU2MCE (0.5, 0, 0.5)": (0.5, 0.0, 0.5),
    "DU2MCE (0, 0.5, 0.5)": (0.0, 0.5, 0.5),
    "DU2MCE (0.333, 0.333, 0.333)": (0.333, 0.333, 0.333),
    "DU2MCE (0.05, 0.2, 0.75)": (0.05, 0.2, 0.75),
    "DU2MCE (0.1, 0.45, 0.45)": (0.1, 0.45, 0.45),
}
MAIN_ROW = "DU2MCE (0.1, 0.45, 0.45)"  # Table 2's best (*), Table 4's DU2MCE
ROWS = ("Random", "Avg-Text", "Avg-Image", "Bridging-Modality", "Merged-Modality", *LAMBDA_ROWS)
TABLES = ("table2", "table3", "table4", "zeroshot")
TABLE_ROWS: dict[str, tuple[str, ...]] = {
    "table2": ("Random", *LAMBDA_ROWS),
    "table3": ("Random", "Avg-Text", "Avg-Image", "DU2MCE (1, 0, 0)", "DU2MCE (0, 0, 1)",
               "DU2MCE (0.333, 0.333, 0.333)"),
    "table4": ("Random", "Avg-Text", "Avg-Image", "Bridging-Modality", "Merged-Modality", MAIN_ROW),
    "zeroshot": tuple(r for r, lam in LAMBDA_ROWS.items() if 0.0 in lam),
}


# ---------------------------------------------------------------------------- settings
class ModelSettings(StrictModel):
    """Overrides of ``models.du2mce.DU2MCEConfig`` (None = the preset's value). ``image_dim``,
    ``vocab_size`` and ``num_users`` always come from the data; ``lambdas`` and ``variant`` from the row
    (in `train`: ``Config.lambdas``)."""

    word_dim: Optional[int] = Field(None, ge=1)
    max_length: Optional[int] = Field(None, ge=1)
    kernel_widths: Optional[list[int]] = None
    filters: Optional[list[int]] = None
    train_word_vectors: Optional[bool] = None
    user_dim: Optional[int] = Field(None, ge=1)
    embed_dim: Optional[int] = Field(None, ge=1)
    margin: Optional[float] = Field(None, ge=0)
    lr: Optional[float] = Field(None, gt=0)
    lr_step: Optional[int] = Field(None, ge=1)
    lr_gamma: Optional[float] = Field(None, gt=0)
    batch_size: Optional[int] = Field(None, ge=1)
    epochs: Optional[int] = Field(None, ge=1)

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None}


TrainOverrides = partial_model(TrainConfig, "TrainOverrides")


class Config(ExperimentConfig):
    """Everything one DU2MCE experiment or training run needs; see configs/du2mce/*.yaml."""

    ROWS: ClassVar[tuple[str, ...]] = ROWS
    TABLES: ClassVar[tuple[str, ...]] = TABLES

    system: Literal["du2mce"] = "du2mce"
    name: str = "du2mce"
    workdir: str = "runs/du2mce"
    backbone: str = "mobilenet_v2"
    image_size: int = 224
    weights: str = Field("imagenet", description="backbone weights: imagenet, random (tests), or a path")
    preset: Literal["default", "paper", "small", "tiny"] = "small"
    model: ModelSettings = Field(default_factory=ModelSettings, description="DU2MCEConfig overrides")
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="TrainConfig overrides; "
                                  "Adam, lr, the x0.1 step schedule, batch size and epochs default to the model config")
    lambdas: tuple[float, float, float] = Field((0.1, 0.45, 0.45), description="λ1 (T-U), λ2 (I-T), λ3 (I-U) "
                                                "of `mmsocial train du2mce`")
    split_seed: int = 0
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of the images (and of the text-only "
                                "posts) kept for validation (paper: 2%)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share kept for testing (paper: 20%)")
    image_duplicate_threshold: float = Field(0.99, gt=0, le=1, description="cosine of pooled features "
                                             "at or above which two images are near-duplicates")
    text_overlap: float = Field(0.8, gt=0, le=1, description="word-set Jaccard at or above which two "
                                "posts with near-duplicate images are duplicates")
    include_tags: bool = Field(True, description="the text modality is the text plus the tags (the paper "
                               "keeps hashtags in tweets)")
    min_count: int = Field(5, ge=1, description="vocabulary and word2vec: words seen this often in training")
    w2v_epochs: int = Field(5, ge=1)
    interest_min_users: int = Field(5, ge=2, description="interest classes with fewer users are left out "
                                    "of Table 3 (a stratified 5-fold CV needs 5 per class)")
    svm_C: float = Field(1.0, gt=0)
    probe_folds: int = Field(5, ge=2)
    random_dim: int = Field(64, ge=1, description="size of the Random row's embeddings")
    selection: Optional[Literal["val_joint"]] = Field(
        "val_joint", description="the epoch kept: the lowest normalised joint mean median rank over the "
        "tasks with λ > 0 on the validation split (§4.3); None keeps the last epoch")
    rows: list[str] = Field(default_factory=list, description="rows to run; empty = every row of the tables")
    tables: list[str] = Field(default_factory=lambda: list(TABLES))

    @model_validator(mode="after")
    def _rows_and_model(self) -> "Config":
        if not self.rows:
            wanted = {r for t in self.tables for r in TABLE_ROWS[t]}
            self.__dict__["rows"] = [r for r in ROWS if r in wanted]
        mcfg = model_config(self, self.lambdas)  # a bad model setting fails before any corpus is read
        if mcfg.user_dim != mcfg.word_dim:
            raise ValueError(f"model.user_dim ({mcfg.user_dim}) must equal model.word_dim ({mcfg.word_dim}): "
                             f"users start at the mean word2vec of their texts (§4.3)")
        train_config(self, mcfg, seed=0)
        return self


def model_config(cfg: Config, lambdas, variant: str = "du2mce", **from_data):
    from mmsocial.models.du2mce import du2mce_config

    return du2mce_config(cfg.preset, **{**cfg.model.overrides(), "lambdas": tuple(lambdas), "variant": variant,
                                        **from_data})


def train_config(cfg: Config, mcfg, seed: int) -> TrainConfig:
    """Adam, lr ×γ every ``lr_step`` epochs (§4.3), then ``cfg.train``; the kept epoch per ``cfg.selection``."""
    overrides = {k: v for k, v in cfg.train.model_dump(exclude_unset=True).items() if v is not None}
    if cfg.selection and "early_stopping" not in overrides:
        overrides["early_stopping"] = {"metric": cfg.selection, "mode": "min", "patience": mcfg.epochs}
    # checkpoints at improving validations and at the end only: an epoch here is a fraction of a second,
    # and a checkpoint per epoch cost ~5 % of the training time (docs/training.md)
    return load_config({"epochs": mcfg.epochs, "batch_size": mcfg.batch_size, "optimizer": "adam", "lr": mcfg.lr,
                        "lr_schedule": "step", "step_size": mcfg.lr_step, "gamma": mcfg.lr_gamma, "seed": seed,
                        "device": cfg.device, "progress": False, "checkpoint_every": 2 ** 62, **overrides}, TrainConfig)


# ---------------------------------------------------------------------------- data
@dataclass
class DU2MCEData:
    """Aligned arrays over the kept posts (an image or a text, not a duplicate)."""

    post_ids: list[str]
    split: np.ndarray  # "train" / "val" / "test"
    image: np.ndarray  # (N, C) float32 pooled features, zeros where has_image is False
    has_image: np.ndarray
    tokens: np.ndarray  # (N, L) int32 word ids, 0 = padding
    has_text: np.ndarray
    user: np.ndarray  # (N,) int64 index into ``users``; -1: no author, or an author with no training post
    words: list[str]  # vocabulary (0 = <pad>, 1 = <unk>, never produced: OOV words are dropped)
    word_vectors: np.ndarray  # (V, word_dim) float32 word2vec
    users: list[str]  # K users with at least one training post
    user_init: np.ndarray  # (K, word_dim) mean word2vec of each user's training texts
    post_w2v: np.ndarray  # (N, word_dim) mean word2vec of each post's text (Avg-Text)
    interest: np.ndarray  # (K,) object: interest label of each user, None = unknown or a too-small class
    interest_rule: str = ""
    duplicates: int = 0
    token_lists: list = field(default_factory=list, repr=False)  # kept words per post (word clouds)

    def idx(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.post_ids, self.split.tolist(), self.words, self.users,
                                       [None if x is None else str(x) for x in self.interest]]).encode())
        for a in (self.image[:8], self.has_image, self.tokens, self.has_text, self.user, self.word_vectors[:16]):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        s = {k: len(self.idx(k)) for k in ("train", "val", "test")}
        return (f"{s['train']} train / {s['val']} val / {s['test']} test posts ({self.duplicates} duplicates "
                f"removed), {int(self.has_image.sum())} images, {int(self.has_text.sum())} texts, "
                f"K={len(self.users)} users, V={len(self.words)} words, image features {self.image.shape[1]}, "
                f"{sum(x is not None for x in self.interest)} users with an interest label")


def post_tokens(corpus: Corpus, include_tags: bool = True) -> list[list[str]]:
    """§4.1 text cleaning: lower case, punctuation removed, English stop words removed (no lemmatiser)."""
    from mmsocial.features.text import tokenize

    posts = corpus.posts
    out = []
    for text, tags in zip(posts["text"], posts["tags"]):
        words = tokenize(text, stop_words="english")
        if include_tags and tags is not None:
            for t in tags:
                words += tokenize(str(t), stop_words="english")
        out.append(words)
    return out


def pooled_features(corpus: Corpus, cfg: Config, post_ids: list[str], regions=None) -> np.ndarray:
    """Mean of the cached region grid of each post (extracted if missing)."""
    if regions is None:
        from mmsocial.features.extract import extract_features

        regions = extract_features(corpus, "regions", cfg.backbone, cfg.image_size, weights=cfg.weights,
                                   progress=False)
    is_store = hasattr(regions, "rows") and hasattr(regions, "post_ids")  # a FeatureSet, else an array
    rows = regions.rows(post_ids) if is_store else None
    array = regions.data if is_store else np.asarray(regions)
    if rows is None:
        index = {p: i for i, p in enumerate(corpus.posts["post_id"])}
        rows = np.array([index[p] for p in post_ids], dtype=np.int64)
    out = np.empty((len(rows), array.shape[-1]), dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    for a in range(0, len(rows), 512):
        sel = order[a:a + 512]
        block = np.asarray(array[rows[sel]], dtype=np.float32)
        out[sel] = block.mean(1) if block.ndim == 3 else block
    return out


def interest_labels(corpus: Corpus, users: list[str], posts_users: np.ndarray,
                    kept_labels: list) -> tuple[np.ndarray, str]:
    """The interest label of every user, and the rule used (docs/du2mce.md):
    a ``users.interest`` column when the corpus has one; synthetic users: the superclass with the largest
    share of their interest profile; otherwise the top-level label (before '/') of most of their posts."""
    u = corpus.users
    if u is not None and "interest" in u.columns:
        m = dict(zip(u["user_id"], u["interest"]))
        return np.array([m.get(x) if isinstance(m.get(x), str) else None for x in users], dtype=object), \
            "users.interest column"
    synth = corpus.meta.get("synthetic") if isinstance(corpus.meta, dict) else None
    if synth and u is not None and "interests" in u.columns:
        supers = [c["superclass"] for c in synth["classes"]]
        names = sorted(set(supers))
        m = {}
        for uid, profile in zip(u["user_id"], u["interests"]):
            p = np.asarray(profile, dtype=float)
            mass = [p[[i for i, s in enumerate(supers) if s == n]].sum() for n in names]
            m[uid] = names[int(np.argmax(mass))]
        return np.array([m.get(x) for x in users], dtype=object), "synthetic profile: superclass of largest mass"
    counts: dict[str, Counter] = {}
    for uid, labels in zip(posts_users, kept_labels):
        if uid is None or labels is None:
            continue
        tops = {str(lab).split("/")[0] for lab in labels}
        counts.setdefault(uid, Counter()).update(tops)
    out = []
    for x in users:
        c = counts.get(x)
        out.append(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if c else None)
    return np.array(out, dtype=object), "top-level label of most of the user's posts"


def prepare(corpus: Corpus, cfg: Config, regions=None) -> DU2MCEData:
    """Tokens, pooled features, §4.1 split, word2vec, vocabulary, users and interests.
    ``regions``: a FeatureSet or array aligned with the corpus (region grids or pooled), to skip extraction."""
    from mmsocial.data.splits import du2mce_split
    from mmsocial.features.text import Vocabulary, embedding_matrix, encode_texts, train_word2vec
    from mmsocial.models.du2mce import du2mce_config

    mcfg = model_config(cfg, cfg.lambdas)
    posts = corpus.posts
    tokens_all = post_tokens(corpus, cfg.include_tags)
    has_img_all = posts["image"].notna().to_numpy()
    img_ids = posts["post_id"][has_img_all].tolist()
    img_feat = pooled_features(corpus, cfg, img_ids, regions) if img_ids else np.zeros((0, 1), np.float32)
    split_all, dup = du2mce_split(has_img_all, tokens_all, img_feat if len(img_ids) else None,
                                  cfg.val_fraction, cfg.test_fraction, cfg.split_seed,
                                  cfg.image_duplicate_threshold, cfg.text_overlap)
    train_tokens = [t for t, s in zip(tokens_all, split_all) if s == "train"]
    wv = train_word2vec(train_tokens, dim=mcfg.word_dim, min_count=cfg.min_count, epochs=cfg.w2v_epochs,
                        seed=cfg.split_seed)
    vocab = Vocabulary.build(train_tokens, min_count=cfg.min_count)
    kept_tokens = [[w for w in t if w in vocab.index] for t in tokens_all]  # §4.1: OOV words filtered out
    has_text_all = np.array([len(t) > 0 for t in kept_tokens])
    keep = ~dup & (has_img_all | has_text_all) & (split_all != None)  # noqa: E711
    if keep.sum() < 10:
        raise CorpusError(f"{corpus.root or corpus.name}: only {int(keep.sum())} posts keep an image or an "
                          f"in-vocabulary text; DU2MCE needs more")
    kept = np.flatnonzero(keep)
    tok, _ = encode_texts([kept_tokens[i] for i in kept], vocab, mcfg.max_length)
    word_vectors, found = embedding_matrix(vocab, [], wv, seed=cfg.split_seed)
    log.info("word2vec: %d of %d vocabulary words have a vector", found, len(vocab) - 2)
    feat = np.zeros((len(kept), img_feat.shape[1] if len(img_ids) else 1), dtype=np.float32)
    img_row = np.cumsum(has_img_all) - 1
    feat[has_img_all[kept]] = img_feat[img_row[kept][has_img_all[kept]]]
    split = split_all[kept]
    uid = posts["user_id"].to_numpy()[kept]
    users = sorted({u for u, s in zip(uid, split) if u is not None and s == "train"})
    uindex = {u: i for i, u in enumerate(users)}
    user = np.array([uindex.get(u, -1) if u is not None else -1 for u in uid], dtype=np.int64)
    post_w2v = (word_vectors[tok].sum(1) / np.maximum((tok > 0).sum(1, keepdims=True), 1)).astype(np.float32)
    tr = (split == "train") & (user >= 0) & has_text_all[kept]
    from mmsocial.models.baselines.averaging import average_by_user

    user_init, _ = average_by_user(post_w2v[tr], user[tr], max(len(users), 1), seed=cfg.split_seed)
    labels_col = posts["labels"].to_numpy()[kept] if "labels" in posts.columns else [None] * len(kept)
    interest, rule = interest_labels(corpus, users, uid, list(labels_col))
    counts = Counter(x for x in interest if x is not None)
    interest = np.array([x if x is not None and counts[x] >= cfg.interest_min_users else None for x in interest],
                        dtype=object)
    data = DU2MCEData(posts["post_id"].to_numpy()[kept].tolist(), split, feat, has_img_all[kept], tok,
                      has_text_all[kept], user, list(vocab.words), word_vectors, users, user_init, post_w2v,
                      interest, rule, int(dup.sum()), [kept_tokens[i] for i in kept])
    du2mce_config(cfg.preset, **{**cfg.model.overrides(), "image_dim": feat.shape[1]})
    for s in ("train", "test"):
        if len(data.idx(s)) == 0:
            raise CorpusError(f"{corpus.root or corpus.name}: no {s} post left after the DU2MCE split")
    if not users:
        raise CorpusError(f"{corpus.root or corpus.name}: no training post has an author (user_id)")
    return data


# ---------------------------------------------------------------------------- training
def _tensors(data: DU2MCEData, idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {"image": torch.from_numpy(data.image[idx]), "tokens": torch.from_numpy(data.tokens[idx]).long(),
            "user": torch.from_numpy(np.maximum(data.user[idx], 0)),
            "has_image": torch.from_numpy(data.has_image[idx]), "has_text": torch.from_numpy(data.has_text[idx]),
            "has_user": torch.from_numpy(data.user[idx] >= 0)}


def build_model(data: DU2MCEData, cfg: Config, lambdas, variant: str = "du2mce", seed: int = 0):
    from mmsocial.models.du2mce import DU2MCE

    mcfg = model_config(cfg, lambdas, variant, image_dim=data.image.shape[1], vocab_size=len(data.words),
                        num_users=len(data.users))
    torch.manual_seed(seed)
    return DU2MCE(mcfg, data.word_vectors, data.user_init)


@torch.inference_mode()
def embed(model, data: DU2MCEData, idx: np.ndarray, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """x^I and x^T of the posts ``idx`` (rows of a missing modality are meaningless) and x^U of all K users."""
    model.eval()
    xi, xt = [], []
    for a in range(0, len(idx), batch_size):
        t = _tensors(data, idx[a:a + batch_size])
        xi.append(model.encode_image(t["image"]))
        xt.append(model.encode_text(t["tokens"]))
    d = model.cfg.embed_dim
    users = model.encode_user(torch.arange(len(data.users)))
    return {"I": torch.cat(xi).numpy() if xi else np.zeros((0, d), np.float32),
            "T": torch.cat(xt).numpy() if xt else np.zeros((0, d), np.float32), "U": users.numpy()}


def tasks_of(data: DU2MCEData, split: str, x_I, x_T, x_U, which=None) -> dict:
    """The retrieval tasks on ``split`` (§4.2): text -> user and image -> user over the K users,
    image -> text over the texts of the split's posts that have both. ``x_I``/``x_T`` are rows of the
    split's posts (None: task skipped); ``x_U`` (K, E)."""
    from mmsocial.eval.protocols.du2mce import RetrievalTask

    idx = data.idx(split)
    hi, ht, u = data.has_image[idx], data.has_text[idx], data.user[idx]
    out = {}
    want = set(which or ("Text-To-User", "Image-To-Text", "Image-To-User"))
    if "Text-To-User" in want and x_T is not None and x_U is not None and (ht & (u >= 0)).any():
        q = ht & (u >= 0)
        out["Text-To-User"] = RetrievalTask(x_T[q], x_U, u[q])
    if "Image-To-Text" in want and x_I is not None and x_T is not None and (hi & ht).sum() > 1:
        q = hi & ht
        out["Image-To-Text"] = RetrievalTask(x_I[q], x_T[q], np.arange(int(q.sum())))
    if "Image-To-User" in want and x_I is not None and x_U is not None and (hi & (u >= 0)).any():
        q = hi & (u >= 0)
        out["Image-To-User"] = RetrievalTask(x_I[q], x_U, u[q])
    return out


def _selected_tasks(mcfg) -> tuple[str, ...]:
    from mmsocial.eval.protocols.du2mce import TASK_OF_PAIR

    return tuple(TASK_OF_PAIR[p] for p in mcfg.active_pairs())


def train_model(data: DU2MCEData, cfg: Config, lambdas, out_dir: Path, seed: int = 0, variant: str = "du2mce",
                model=None, selection_tasks: Optional[tuple[str, ...]] = None):
    """Train one DU2MCE model on the training posts with the shared trainer; the kept epoch has the lowest
    validation normalised joint mean median rank over ``selection_tasks`` (default: the tasks with λ > 0).
    ``model``: continue from this model (Bridging-Modality's second stage) with ``lambdas``."""
    from mmsocial.eval.protocols.du2mce import joint_rank, mean_median_ranks
    from mmsocial.models.du2mce import DU2MCELoss
    from mmsocial.train.data import FeatureDataset
    from mmsocial.train.trainer import train

    if model is None:
        model = build_model(data, cfg, lambdas, variant, seed)
    else:
        model.cfg = model_config(cfg, lambdas, variant, image_dim=data.image.shape[1], vocab_size=len(data.words),
                                 num_users=len(data.users))
    mcfg = model.cfg
    tcfg = train_config(cfg, mcfg, seed)
    tr = data.idx("train")
    loss_fn = DU2MCELoss(mcfg)
    train_t = _tensors(data, tr)

    def batch_loss(m, batch):
        rows = batch["row"].cpu()
        dev = next(m.parameters()).device
        t = {k: v[rows].to(dev) for k, v in train_t.items()}
        return loss_fn(getattr(m, "module", m), t["image"], t["tokens"], t["user"], t["has_image"],
                       t["has_text"], t["has_user"])

    sel = selection_tasks or _selected_tasks(mcfg)
    va = data.idx("val")
    evaluate = None
    if len(va) and cfg.selection:
        def evaluate(m):
            e = embed(m, data, va)
            tasks = tasks_of(data, "val", e["I"], e["T"], e["U"], sel)
            if not tasks:
                raise CorpusError("the validation split has no query for the selection tasks "
                                  f"{list(sel)}; raise val_fraction or set selection: null")
            ranks = mean_median_ranks(tasks)
            out = {"val_joint": joint_rank(ranks, {k: t.gallery_size for k, t in tasks.items()})}
            out.update({f"val_{k}": v for k, v in ranks.items()})
            m.train()
            return out
    elif cfg.selection:
        raise CorpusError("selection on validation needs a validation split: set val_fraction > 0 or selection: null")
    result = train(model, FeatureDataset({"row": np.arange(len(tr))}), batch_loss, tcfg, out_dir, evaluate=evaluate,
                   resume=False, run_config={"du2mce": mcfg.to_dict()})
    if tcfg.early_stopping.metric and result.best_checkpoint is not None:
        from mmsocial.train.checkpoint import load_checkpoint
        load_checkpoint(result.best_checkpoint, model)
    return model.to("cpu").eval(), result


def _history_and_selection(result, stage: Optional[str] = None) -> tuple[list[dict], dict]:
    history = [{k: float(v) for k, v in row.items() if isinstance(v, (int, float))} for row in result.history]
    best_epoch = next((r["epoch"] for r in history if r.get("step") == result.best_step), None)
    if result.metric:
        selection = {"metric": result.metric, "mode": "min", "best_epoch": best_epoch,
                     "last_epoch": float(result.epochs), "split": "val"}
    else:
        selection = {"metric": None, "kept": "last epoch", "last_epoch": float(result.epochs)}
    if stage:
        selection["stage"] = stage
    return history, selection


# ---------------------------------------------------------------------------- tables and cells
def new_tables(cfg: Config, data: DU2MCEData) -> dict[str, ResultTable]:
    from mmsocial.eval.protocols.du2mce import table2, table3, table4, zeroshot_table

    n_int = sum(x is not None for x in data.interest)
    classes = len({x for x in data.interest if x is not None})
    make = {"table2": lambda: table2(f"Table 2: cross-modal retrieval, mean median rank ({cfg.name})"),
            "table3": lambda: table3(f"Table 3: user interest, linear SVM F1 ({cfg.name}, {n_int} users, "
                                     f"{classes} classes)"),
            "table4": lambda: table4(f"Table 4: comparison with competing methods, mean median rank ({cfg.name})"),
            "zeroshot": lambda: zeroshot_table(f"Zero-shot retrieval: mean median rank / random rank on the "
                                               f"pairs a row was not trained on ({cfg.name}; < 1 = better than chance)")}
    return {name: make[name]() for name in TABLES if name in cfg.tables}


def _random_embeddings(data: DU2MCEData, seed: int, dim: int):
    rng = np.random.default_rng([seed, 7])
    n, k = len(data.post_ids), len(data.users)
    return rng.standard_normal((n, dim)), rng.standard_normal((n, dim)), rng.standard_normal((k, dim))


def _user_average(data: DU2MCEData, vectors: np.ndarray, present: np.ndarray, seed: int) -> np.ndarray:
    from mmsocial.models.baselines.averaging import average_by_user

    tr = (data.split == "train") & present & (data.user >= 0)
    return average_by_user(vectors[tr], data.user[tr], len(data.users), seed=seed)[0]


def embeddings_of_row(row: str, seed: int, data: DU2MCEData, cfg: Config, workdir: Path):
    """(x_I, x_T over all posts, x_U over the K users, history, selection, trained pairs) of one row."""
    history, selection, pairs = [], None, ()
    if row == "Random":
        x_I, x_T, x_U = _random_embeddings(data, seed, cfg.random_dim)
        return x_I, x_T, x_U, history, selection, ("T-U", "I-T", "I-U")
    if row == "Avg-Text":  # users: mean word2vec of their training texts; a text: its mean word2vec
        return None, data.post_w2v, _user_average(data, data.post_w2v, data.has_text, seed), history, None, ()
    if row == "Avg-Image":  # users: mean pooled feature of their training images; an image: its feature
        return data.image, None, _user_average(data, data.image, data.has_image, seed), history, None, ()
    all_idx = np.arange(len(data.post_ids))
    if row == "Bridging-Modality":  # §4.6: (text, user) first, then images fitted to the fixed text space
        model, r1 = train_model(data, cfg, (1.0, 0.0, 0.0), Path(workdir) / "stage1", seed)
        model.set_trainable(image=True, text=False, user=False)
        model, r2 = train_model(data, cfg, (0.0, 1.0, 0.0), Path(workdir) / "stage2", seed, model=model)
        h1, s1 = _history_and_selection(r1, "stage1 (1, 0, 0)")
        h2, s2 = _history_and_selection(r2, "stage2 (0, 1, 0), text and user encoders fixed")
        history = [{**h, "stage": 1.0} for h in h1] + [{**h, "stage": 2.0} for h in h2]
        selection, pairs = {"stage1": s1, "stage2": s2}, ("T-U", "I-T")
    elif row == "Merged-Modality":
        model, r = train_model(data, cfg, (1.0, 0.0, 0.0), Path(workdir), seed, variant="merged",
                               selection_tasks=("Text-To-User", "Image-To-User"))
        history, selection = _history_and_selection(r)
        pairs = ("T-U", "I-U")
    else:
        lam = LAMBDA_ROWS[row]
        model, r = train_model(data, cfg, lam, Path(workdir), seed)
        history, selection = _history_and_selection(r)
        pairs = model.cfg.active_pairs()
    e = embed(model, data, all_idx)
    return e["I"], e["T"], e["U"], history, selection, pairs


def run_cell(row: str, seed: int, data: DU2MCEData, cfg: Config, workdir: Path) -> Cell:
    """Train (or average) one row with one seed; its metrics in every table it belongs to."""
    from mmsocial.eval.protocols.du2mce import retrieval_row, table4_row, user_interest, zeroshot_row

    if row not in ROWS:
        raise ValueError(f"unknown DU2MCE row {row!r}; choose from {list(ROWS)}")
    x_I, x_T, x_U, history, selection, pairs = embeddings_of_row(row, seed, data, cfg, workdir)
    te = data.idx("test")
    tasks = tasks_of(data, "test", x_I[te] if x_I is not None else None, x_T[te] if x_T is not None else None, x_U)
    t2 = retrieval_row(tasks) if tasks else {}
    metrics: dict[str, dict[str, float]] = {}
    if "table2" in cfg.tables and row in TABLE_ROWS["table2"]:
        metrics["table2"] = t2
    if "table4" in cfg.tables and row in TABLE_ROWS["table4"]:
        metrics["table4"] = table4_row(t2)
    if "zeroshot" in cfg.tables and row in TABLE_ROWS["zeroshot"]:
        metrics["zeroshot"] = zeroshot_row(t2, {k: t.gallery_size for k, t in tasks.items()}, pairs)
    if "table3" in cfg.tables and row in TABLE_ROWS["table3"]:
        known = np.array([x is not None for x in data.interest])
        if len({x for x in data.interest[known]}) >= 2:
            xu = np.asarray(x_U, dtype=np.float64)[known]
            xu = xu / np.maximum(np.linalg.norm(xu, axis=1, keepdims=True), 1e-12)  # cosine space
            metrics["table3"] = user_interest(xu, data.interest[known].astype(str), seed=seed, C=cfg.svm_C,
                                              folds=cfg.probe_folds)
        else:
            log.warning("Table 3 skipped: fewer than 2 interest classes with >= %d users", cfg.interest_min_users)
    metrics = {t: {m: float(v) for m, v in vals.items()} for t, vals in metrics.items()}
    diagnostics = {"user_embedding_variance": float(np.var(np.asarray(x_U), axis=0).mean())}
    for name, t in tasks.items():
        diagnostics[f"gallery_{name}"] = float(t.gallery_size)
        diagnostics[f"queries_{name}"] = float(len(t.query))
    return Cell(metrics, history, selection, diagnostics)


# ---------------------------------------------------------------------------- train command, demo, viz
def train(cfg: Config) -> Path:
    """`mmsocial train du2mce`: train with ``cfg.lambdas`` on the corpus's training posts (first seed); the run
    folder gets the checkpoints, the vocabulary, the users and the embeddings (for `viz clusters`)."""
    from mmsocial.experiment import load_corpus

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = load_corpus(cfg)
    data = prepare(corpus, cfg)
    log.info("DU2MCE %s: %s", cfg.lambdas, data.describe())
    run_dir = Path(cfg.workdir)
    model, result = train_model(data, cfg, cfg.lambdas, run_dir, cfg.seeds[0] if cfg.seeds else 0)
    save_run(run_dir, data, model, corpus)
    log.info("%s", result.summary())
    return run_dir


def save_run(run_dir: Path, data: DU2MCEData, model, corpus: Corpus) -> None:
    """What `viz clusters` reads: vocabulary, users, interests, embeddings of users and images, texts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    e = embed(model, data, np.arange(len(data.post_ids)))
    img = np.flatnonzero(data.has_image)
    np.savez_compressed(run_dir / "embeddings.npz", users=e["U"], images=e["I"][img],
                        image_posts=np.array(data.post_ids, dtype=object)[img].astype(str))
    posts = {"post_id": data.post_ids, "user": data.user.tolist(), "words": data.token_lists}
    (run_dir / "du2mce_run.json").write_text(json.dumps(
        {"corpus": str(corpus.root) if corpus.root else None, "words": data.words, "users": data.users,
         "interest": [None if x is None else str(x) for x in data.interest], "interest_rule": data.interest_rule,
         "model": model.cfg.to_dict(), "posts": posts}))


DEMO_SETTINGS: Mapping[str, Any] = {
    "system": NAME, "seeds": [0], "name": "demo", "preset": "small", "tables": ["table4"],
    "rows": ["Bridging-Modality", MAIN_ROW], "model": {"epochs": 4}, "train": {"progress": False}}


def demo(corpus_dir: Path, workdir: Path):
    """DU2MCE's part of `mmsocial demo`: Table 4's DU2MCE row and its strongest trained competitor
    (Bridging-Modality) on one seed with a short schedule."""
    from mmsocial.experiment import run_experiment

    return run_experiment({**DEMO_SETTINGS, "corpus": str(corpus_dir), "workdir": str(workdir)}, progress=False)


def add_commands(groups) -> None:
    """`mmsocial viz clusters RUN_DIR`: k-means user clusters with word clouds and nearest images (§4.5.1)."""
    import typer

    viz = groups.get("viz")
    if viz is None:
        return

    @viz.command("clusters")
    def clusters_command(run_dir: Path = typer.Argument(..., help="a `mmsocial train du2mce` run folder"),
                         out: Optional[Path] = typer.Option(None, help="output folder (default RUN_DIR/clusters)"),
                         k: int = typer.Option(50, help="k-means clusters (paper: 50)"),
                         show: int = typer.Option(6, help="clusters drawn as pictures (the largest)"),
                         images: int = typer.Option(6, help="images nearest each centroid"),
                         seed: int = typer.Option(0)):
        """Cluster the users of a DU2MCE run and draw word clouds and nearest images per cluster."""
        from mmsocial.viz.clusters import user_clusters

        summary = user_clusters(run_dir, out, k=k, show=show, images=images, seed=seed)
        log.info(json.dumps({kk: v for kk, v in summary.items() if kk != "clusters"}, indent=1))




# ---------------------------------------------------------------------------- serving hook
def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def load_run(run_dir: Path):
    """`mmsocial serve` / `mmsocial index build`: a trained DU2MCE run as a ``systems.Served``.

    Everything lives in the common space R^D of §3.1 and is compared by cosine (the pair ranking loss's
    similarity): the vectors are L2-normalised and searched by inner product. "posts" are x^I of the
    run's images (``embeddings.npz``), "texts" x^T of the posts with an in-vocabulary text, "users"
    x^U = W_U U_e[k] of the K training users. A text query is cleaned as §4.1 (stop words removed, words
    outside the run's vocabulary dropped) and encoded by φ_T; an uploaded image is pooled by the run's
    backbone (``backbone``, ``weights``, ``image_size``) and encoded by W_I. No corpus preparation is
    re-run: the run folder holds the vocabulary, the users and the image embeddings."""
    from mmsocial.config import load_config
    from mmsocial.features.text import tokenize
    from mmsocial.models.du2mce import DU2MCE, DU2MCEConfig
    from mmsocial.systems import RUN_CONFIG, Collection, Served, require_run_files, served_corpus
    from mmsocial.train.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / RUN_CONFIG, Config)
    require_run_files(run_dir, ("du2mce_run.json", "embeddings.npz"), "du2mce")
    saved = json.loads((run_dir / "du2mce_run.json").read_text())
    mcfg = DU2MCEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["model"].items()})
    model = DU2MCE(mcfg)
    load_checkpoint(run_dir, model)  # safetensors
    model.eval()
    corpus = served_corpus(cfg, run_dir / RUN_CONFIG)
    words: list[str] = saved["words"]
    word_id = {w: i for i, w in enumerate(words)}
    z = np.load(run_dir / "embeddings.npz")
    image_posts = [str(p) for p in z["image_posts"]]
    image_vectors = _unit(z["images"])
    row_of_image = {p: i for i, p in enumerate(image_posts)}
    from mmsocial.features.backbones import upload_regions

    regions_of_images = upload_regions(cfg.backbone, cfg.weights, cfg.image_size)

    def tokens(word_lists: list[list[str]]) -> torch.Tensor:
        out = np.zeros((len(word_lists), mcfg.max_length), dtype=np.int64)
        for i, ws in enumerate(word_lists):
            ids = [word_id[w] for w in ws if w in word_id][: mcfg.max_length]
            out[i, : len(ids)] = ids
        return torch.from_numpy(out)

    def pooled(images) -> np.ndarray:
        return regions_of_images(images).mean(1)

    @torch.no_grad()
    def encode_images(features: np.ndarray) -> np.ndarray:
        return _unit(model.encode_image(torch.from_numpy(np.asarray(features, np.float32))).numpy())

    def posts() -> Collection:
        return Collection(image_posts, image_vectors)

    @torch.no_grad()
    def texts() -> Collection:
        ids = [p for p, ws in zip(saved["posts"]["post_id"], saved["posts"]["words"]) if ws]
        lists = [ws for ws in saved["posts"]["words"] if ws]
        vecs = [model.encode_text(tokens(lists[a:a + 1024])).numpy() for a in range(0, len(lists), 1024)]
        return Collection(ids, _unit(np.concatenate(vecs)) if vecs else np.zeros((0, mcfg.embed_dim), np.float32))

    @torch.no_grad()
    def users() -> Collection:
        return Collection(list(saved["users"]), _unit(model.encode_user(torch.arange(len(saved["users"]))).numpy()),
                          kind="user")

    @torch.no_grad()
    def embed_text(text: str):
        ws = tokenize(text, stop_words="english")
        known = [w for w in ws if w in word_id]
        if not known:
            raise ValueError(f"no word of {text!r} is in this run's vocabulary ({len(words) - 2} words, stop "
                             f"words removed, e.g. {', '.join(words[2:10])})")
        return _unit(model.encode_text(tokens([known])).numpy())[0], \
            {"words": list(dict.fromkeys(known)), "unknown_words": [w for w in ws if w not in word_id]}

    def embed_image(image) -> np.ndarray:
        return encode_images(pooled([image]))[0]

    def embed_posts(post_ids: list[str]) -> np.ndarray:
        out = np.empty((len(post_ids), mcfg.embed_dim), dtype=np.float32)
        new = []
        for i, p in enumerate(post_ids):
            if p in row_of_image:
                out[i] = image_vectors[row_of_image[p]]
            else:  # a post added to the corpus after training
                new.append(i)
        if new:
            out[new] = encode_images(pooled([corpus.open_image(post_ids[i]) for i in new]))
        return out

    return Served(NAME, run_dir, corpus, "ip", {"posts": posts, "texts": texts, "users": users},
                  embed_text=embed_text, embed_image=embed_image, embed_posts=embed_posts,
                  info={"title": TITLE, "lambdas": list(cfg.lambdas), "users": len(saved["users"]),
                        "images": len(image_posts), "vocabulary": words[2:]})
