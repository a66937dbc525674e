"""BSSAN (Tables II/III): image-text matching with bi-directional spatial-semantic attention.

corpus -> captions (one or more per image, see ``captions_of``) -> split by image -> GloVe 50d words
(max 30) -> cached region grids and object features (CAM boxes, RoIAlign on the grid) -> for each
seed and row (CCA, DCCA, the dual encoder, BSSAN_w2r, BSSAN_o2w, BSSAN_no_reg, BSSAN, BSSAN two-stage)
train with checkpoint selection on the validation rsum, then score every test (image, caption) pair
and report R@1/5/10, Med r and rsum in both directions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch
from pydantic import Field, model_validator

from mmsocial.config import ExperimentConfig, StrictModel, TrainConfig, load_config
from mmsocial.data.corpus import Corpus, CorpusError
from mmsocial.eval.table import ResultTable
from mmsocial.systems import Cell

log = logging.getLogger(__name__)

NAME = "bssan"
TITLE = "BSSAN"
PAPER = "bssan-image-text-matching.md"
ROWS = ("CCA", "DCCA", "Dual encoder", "BSSAN_w2r", "BSSAN_o2w", "BSSAN_no_reg", "BSSAN", "BSSAN two-stage")
TABLES = ("table2", "table3")
VARIANT_OF_ROW = {"BSSAN_w2r": "w2r", "BSSAN_o2w": "o2w", "BSSAN_no_reg": "no_reg", "BSSAN": "bssan",
                  "BSSAN two-stage": "bssan"}
TABLE_TITLES = {"table2": "Table II: bi-directional image-text retrieval",
                "table3": "Table III: bi-directional image-text retrieval"}


# ---------------------------------------------------------------------------- config
class ModelSettings(StrictModel):
    """Overrides of the preset's BSSANConfig (None = the preset's value); the feature sizes come from the data."""

    max_length: Optional[int] = Field(None, ge=1)
    w2r_lstm: Optional[int] = Field(None, ge=1)
    w2r_mlp: Optional[list[int]] = None
    o2w_lstm: Optional[int] = Field(None, ge=1)
    o2w_mlp: Optional[list[int]] = None
    batch_norm: Optional[bool] = None
    margin: Optional[float] = Field(None, ge=0)
    lam: Optional[float] = Field(None, ge=0)
    delta: Optional[float] = Field(None, ge=0)
    attention_tanh: Optional[bool] = Field(None, description="Eq. 2/10's tanh on the attention logits (false: "
                                           "unbounded logits, not in the paper)")
    attention_init: Optional[Literal["bilinear", "xavier", "zero", "cross_covariance"]] = Field(
        None, description="init of W in Eq. 2/10: bilinear (unit-variance logits), xavier (saturates the tanh), "
        "zero (uniform attention at the start) or cross_covariance (from the training pairs: a word's logits "
        "start high on the regions that look like its captions' images)")
    negative_attention: Optional[Literal["uniform", "softmax", "both"]] = Field(
        None, description="the negatives' attention in training: uniform (Eq. 8), softmax (learned), or both "
        "(every negative scored each way; needs train.negatives_from: batch)")
    hinge_reduction: Optional[Literal["sum", "mean"]] = Field(None, description="Eq. 7/17: sum (paper) or mean")
    standardize: Optional[bool] = Field(None, description="regions/objects standardised with training statistics")
    lr: Optional[float] = Field(None, gt=0)
    momentum: Optional[float] = Field(None, ge=0, lt=1)
    batch_size: Optional[int] = Field(None, ge=2)
    epochs: Optional[int] = Field(None, ge=1)

    def overrides(self) -> dict[str, Any]:
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.model_dump().items() if v is not None}


class TrainSettings(StrictModel):
    """Trainer settings of the BSSAN rows beyond the model config's lr/momentum/batch/epochs."""

    max_steps: Optional[int] = Field(None, ge=1)
    optimizer: Literal["sgd", "adam"] = Field("adam", description="adam (CPU default, lr 1e-3) or sgd (the "
                                              "paper's: lr and momentum of the model settings, 0.01 / 0.9)")
    lr: Optional[float] = Field(None, gt=0, description="None: 1e-3 for adam, the model's lr (paper 0.01) for sgd")
    grad_clip: Optional[float] = Field(5.0, gt=0, description="max global gradient norm (paper: none given)")
    attention_lr: Optional[float] = Field(None, ge=0, description="learning rate of W and b of Eq. 2/10 (None: "
                                          "lr; 0 keeps the attention at its init; not in the paper)")
    eval_every: int = Field(0, ge=0, description="steps between validations; 0 = each epoch")
    negatives: Literal["caption", "both"] = Field("caption", description="caption: a negative caption per image "
                                                  "(Eq. 7/17 as printed); both: also a negative image per caption")
    negatives_from: Literal["draw", "batch"] = Field(
        "draw", description="draw: one negative per positive drawn from the training set at every step (the "
        "paper); batch: every other caption (and image, with negatives: both) of the batch, the hinge averaged "
        "over them (BSSAN.grid: every pair of the batch is scored)")
    progress: bool = True


class DualEncoderSettings(StrictModel):
    embed_dim: int = Field(256, ge=1)
    hidden: int = Field(256, ge=1, description="GRU size")
    margin: float = Field(0.2, ge=0)
    max_violation: bool = Field(True, description="VSE++ hardest negative; false = sum of hinges (the demo's and "
                                "table2.yaml's: max-violation from scratch does not learn on short schedules)")
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(128, ge=2)
    epochs: int = Field(15, ge=1)


class BaselineSettings(StrictModel):
    n_components: int = Field(32, ge=1, description="canonical components of CCA and DCCA (<= word_dim)")
    cca_reg: float = Field(1e-3, ge=0)
    dcca_hidden: list[int] = [256, 128]
    dcca_epochs: int = Field(50, ge=1)
    dcca_lr: float = Field(1e-3, gt=0)


class Config(ExperimentConfig):
    """One BSSAN experiment; see configs/bssan/*.yaml."""

    ROWS: ClassVar[tuple[str, ...]] = ROWS
    TABLES: ClassVar[tuple[str, ...]] = TABLES

    system: Literal["bssan"] = "bssan"
    name: str = "bssan"
    workdir: str = "runs/bssan"
    rows: list[str] = Field(default_factory=lambda: [r for r in ROWS if r != "BSSAN two-stage"])
    tables: list[str] = ["table2"]
    preset: Literal["paper", "default", "small", "tiny"] = "small"
    variant: Literal["bssan", "w2r", "o2w", "no_reg"] = Field("bssan", description="what `mmsocial train bssan` trains")
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    dual: DualEncoderSettings = Field(default_factory=DualEncoderSettings)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)
    backbone: str = "mobilenet_v2"
    image_size: int = Field(224, ge=32)
    weights: str = Field("imagenet", description="backbone weights: imagenet, random (tests), or a path")
    regions: Optional[str] = Field(None, description="region feature store; None = CORPUS/features/regions-...")
    objects: Optional[str] = Field(None, description="object feature store; None = CORPUS/features/objects-...")
    boxes: str = Field("cam", description="object boxes when extracting: cam | grid | PATH to an ONNX detector")
    num_objects: int = Field(10, ge=1, description="P, boxes per image when extracting")
    objects_from: Literal["extract", "regions"] = Field(
        "extract", description="objects missing: extract them (CNN again) or compute them from the cached "
        "region grid (same CAM boxes and RoIAlign, no CNN run)")
    captions: Literal["auto", "text", "captions", "openclipart"] = Field(
        "auto", description="where captions come from (see systems/bssan.captions_of)")
    split_seed: int = 0
    val_fraction: float = Field(0.1, ge=0, lt=1, description="corpora without a split: images kept for validation")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="corpora without a split: images kept for test")
    test_images: int = Field(1000, ge=1, description="test images (paper: 1K)")
    captions_per_image: int = Field(5, ge=1, description="test captions per image (paper: 5)")
    val_images: int = Field(200, ge=1, description="validation images used for checkpoint selection")
    two_stage_k: int = Field(100, ge=1, description="K of the two-stage row: each test image's top-K captions")
    two_stage_k_t2i: Optional[int] = Field(None, ge=0, description="each test caption's top images re-ranked; "
                                           "None: ceil(K / captions per test image) (the same share of the "
                                           "candidates as an image's; = K with one caption per image); "
                                           "two_stage_k for the rule before this option")
    two_stage_full: bool = Field(True, description="the two-stage row also scores every pair, to report "
                                 "its speed-up and the recall it keeps (diagnostics)")
    chunk_pairs: int = Field(8192, ge=1, description="pairs scored per batched call")
    selection: Literal["val_rsum"] = "val_rsum"

    @model_validator(mode="after")
    def _check_negatives(self) -> "Config":
        if self.model.negative_attention == "both" and self.train.negatives_from != "batch":
            raise ValueError("model.negative_attention: both scores every negative of a batch twice; it needs "
                             "train.negatives_from: batch")
        return self


# ---------------------------------------------------------------------------- data
@dataclass
class Data:
    """Images (rows of the feature arrays) and captions (rows of the word-id array) of the kept posts."""

    post_ids: list[str]
    split: np.ndarray  # per image: "train" / "val" / "test"
    regions: np.ndarray  # (N, D, M) float16
    objects: np.ndarray  # (N, P, Q) float16
    boxes: np.ndarray  # (N, P, 4) fractions of width/height
    caption_ids: np.ndarray  # (C, Lmax) int32
    lengths: np.ndarray  # (C,) int64
    caption_image: np.ndarray  # (C,) image row of each caption
    caption_text: list[str]
    vocabulary: Any  # features.text.Vocabulary
    embeddings: np.ndarray  # (V, E) float32, GloVe rows (frozen)
    glove_found: int

    def images(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def captions(self, images: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(self.caption_image, images))

    def words(self, caps: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, L, E) word vectors cut to the longest caption of ``caps`` and (n,) lengths."""
        lengths = self.lengths[caps]
        ids = self.caption_ids[caps, : int(lengths.max())]
        return torch.from_numpy(self.embeddings[ids]), torch.from_numpy(lengths)

    def image_features(self, imgs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.regions[imgs].astype(np.float32)),
                torch.from_numpy(self.objects[imgs].astype(np.float32)))

    def pooled(self, imgs: np.ndarray) -> np.ndarray:
        """Mean of the region grid: the pooled vector of the baselines."""
        return self.regions[imgs].astype(np.float32).mean(1)

    def mean_words(self, caps: np.ndarray) -> np.ndarray:
        """Mean word vector of each caption: the text view of CCA and DCCA."""
        T, lengths = self.words(caps)
        return (T.sum(1) / lengths[:, None].float()).numpy()

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.post_ids, self.split.tolist(), self.caption_text]).encode())
        h.update(np.ascontiguousarray(self.regions[:4]).tobytes())
        h.update(np.ascontiguousarray(self.objects[:4]).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        n = {s: len(self.images(s)) for s in ("train", "val", "test")}
        c = {s: len(self.captions(self.images(s))) for s in ("train", "val", "test")}
        return (f"{n['train']}/{n['val']}/{n['test']} train/val/test images with {c['train']}/{c['val']}/"
                f"{c['test']} captions, vocabulary {len(self.vocabulary)} ({self.glove_found} in GloVe), "
                f"regions {tuple(self.regions.shape[1:])}, objects {tuple(self.objects.shape[1:])}")


def captions_of(posts, rule: str = "auto") -> list[list[str]]:
    """Captions of each post (the issue's rule, see docs/bssan.md).

    "captions": a list column ``captions`` (the Karpathy reader: 5 per image); "text": the post's text
    (synthetic posts: one caption derived from the objects); "openclipart": the title, the
    description and a tag sentence (the keywords joined by spaces) as separate captions, each when
    present and distinct; "auto": "captions" if that column exists, "openclipart" if the corpus has
    a ``title`` column, else "text".
    """
    if rule == "auto":
        rule = "captions" if "captions" in posts.columns else "openclipart" if "title" in posts.columns else "text"
    out: list[list[str]] = []
    if rule == "captions":
        if "captions" not in posts.columns:
            raise CorpusError("captions='captions' needs a 'captions' column (list of sentences per post)")
        return [[str(s) for s in (c if c is not None else []) if str(s).strip()] for c in posts["captions"]]
    if rule == "text":
        return [[t] if isinstance(t, str) and t.strip() else [] for t in posts["text"]]
    titles = posts["title"] if "title" in posts.columns else [None] * len(posts)
    for title, text, tags in zip(titles, posts["text"], posts["tags"]):
        title = title.strip() if isinstance(title, str) else ""
        text = text.strip() if isinstance(text, str) else ""
        description = text[len(title):].lstrip(" .") if title and text.startswith(title) else text
        tag_sentence = " ".join(tags) if tags is not None and len(tags) else ""
        caps = [s for s in (title, description, tag_sentence) if s]
        out.append(list(dict.fromkeys(caps)))
    return out


def _feature_store(corpus: Corpus, cfg: Config, kind: str, path: Optional[str], regions=None):
    from mmsocial.features.extract import extract_features
    from mmsocial.features.store import FeatureSet

    if path is not None and Path(path).is_dir() and (Path(path) / "manifest.json").is_file():
        return FeatureSet.open(path)
    if kind == "objects" and cfg.objects_from == "regions":
        out = Path(path) if path is not None else Path(regions.path).parent / (
            f"objects-{cfg.backbone}-{cfg.image_size}-from-regions")
        return objects_from_regions(regions, out, cfg)
    return extract_features(corpus, kind, cfg.backbone, cfg.image_size, out=path, weights=cfg.weights,
                            boxes=cfg.boxes, objects=cfg.num_objects, progress=False)


def objects_from_regions(regions, out: Path, cfg: Config):
    """Objects (CAM boxes + RoIAlign) computed from a cached region grid instead of running the CNN again.

    ``features extract --kind objects`` computes exactly this from the same feature map; here the map
    is the cached grid (float16), so the boxes and features equal the extracted ones up to that rounding.
    """
    from mmsocial.features.backbones import load_backbone
    from mmsocial.features.boxes import cam_boxes, grid_boxes, roi_features
    from mmsocial.features.store import FeatureSet, is_complete, write_features

    n, d, channels = regions.data.shape
    side = int(round(d ** 0.5))
    if side * side != d:
        raise ValueError(f"{regions.path}: regions are not a square grid ({d} regions)")
    size, count = cfg.image_size, cfg.num_objects
    manifest = {"extractor": "objects", "backbone": cfg.backbone, "weights": regions.manifest.get("weights"),
                "input_size": size, "grid": [side, side], "boxes": f"{cfg.boxes} (from the cached region grid)",
                "source": str(regions.path)}
    extra = {"boxes": (count, 4)}
    if is_complete(out, regions.post_ids, (count, channels), manifest, extra):
        return FeatureSet.open(out)
    model = load_backbone(cfg.backbone, cfg.weights, torch.device("cpu")).eval() if cfg.boxes == "cam" else None

    def batches(rows: np.ndarray):
        for a in range(0, len(rows), 64):
            r = rows[a:a + 64]
            fmap = torch.from_numpy(np.asarray(regions.data[r], dtype=np.float32)).transpose(1, 2).reshape(
                len(r), channels, side, side)
            with torch.no_grad():
                if model is not None:
                    b = cam_boxes(model.class_activation_maps(fmap)[0], count, size, size)
                else:
                    b = grid_boxes(count, size, size).expand(len(r), count, 4)
                feats = roi_features(fmap, b, (size, size)).numpy()
            boxes = (b / size).numpy().astype(np.float32)
            starts = np.flatnonzero(np.diff(r, prepend=r[0] - 2) != 1)
            for s0, s1 in zip(starts, [*starts[1:], len(r)]):
                yield int(r[s0]), feats[s0:s1], {"boxes": boxes[s0:s1]}

    log.info("computing %d objects per image from the cached region grid %s -> %s", count, regions.path, out)
    return write_features(out, regions.post_ids, (count, channels), batches, manifest, extra)


def prepare(corpus: Corpus, cfg: Config) -> Data:
    """Captions, split by image, vocabulary + GloVe, cached regions and objects (extracted if missing)."""
    from mmsocial.features.text import Vocabulary, encode_texts, glove_matrix, tokenize

    from mmsocial.models.bssan import bssan_config

    max_length = bssan_config(cfg.preset, **cfg.model.overrides()).max_length  # bad settings fail here
    posts = corpus.posts
    tokens = [[tokenize(c) for c in caps] for caps in captions_of(posts, cfg.captions)]
    texts = [[c for c, t in zip(caps, toks) if t] for caps, toks in
             zip(captions_of(posts, cfg.captions), tokens)]
    tokens = [[t for t in toks if t] for toks in tokens]
    keep = posts["image"].notna().to_numpy() & np.array([len(t) > 0 for t in tokens])
    if keep.sum() < 10:
        raise CorpusError(f"{corpus.root or corpus.name}: only {int(keep.sum())} posts have an image and a "
                          f"caption; BSSAN needs image-caption pairs (captions rule {cfg.captions!r})")
    split = _split(corpus, cfg)[keep]
    ids = posts["post_id"][keep].tolist()
    kept_tokens = [t for t, k in zip(tokens, keep) if k]
    kept_texts = [t for t, k in zip(texts, keep) if k]
    caption_image = np.repeat(np.arange(len(ids)), [len(t) for t in kept_tokens])
    flat_tokens = [t for toks in kept_tokens for t in toks]
    train_caps = np.flatnonzero(split[caption_image] == "train")
    vocab = Vocabulary.build([flat_tokens[i] for i in train_caps])
    caption_ids, lengths = encode_texts(flat_tokens, vocab, max_length)
    embeddings, found = glove_matrix(vocab, seed=cfg.split_seed)
    regions = _feature_store(corpus, cfg, "regions", cfg.regions)
    objects = _feature_store(corpus, cfg, "objects", cfg.objects, regions)
    data = Data(ids, split, regions.get(ids, np.float16), objects.get(ids, np.float16),
                np.asarray(objects.extra["boxes"][objects.rows(ids)], dtype=np.float32),
                caption_ids, lengths.astype(np.int64), caption_image,
                [t for texts_ in kept_texts for t in texts_], vocab, embeddings, found)
    for s in ("train", "test"):
        if len(data.images(s)) == 0:
            raise CorpusError(f"{corpus.root or corpus.name}: no {s} image with a caption left")
    return data


def _split(corpus: Corpus, cfg: Config) -> np.ndarray:
    split = corpus.posts["split"].to_numpy(dtype=object)
    if all(s in ("train", "val", "test") for s in split):
        return split
    from mmsocial.data.splits import random_split

    rest = 1.0 - cfg.val_fraction - cfg.test_fraction
    return random_split(corpus, {"train": rest, "val": cfg.val_fraction, "test": cfg.test_fraction},
                        seed=cfg.split_seed)


def new_tables(cfg: Config, data: Data) -> dict[str, ResultTable]:
    from mmsocial.eval.protocols.bssan import retrieval_table

    n_img = min(cfg.test_images, len(data.images("test")))
    return {t: retrieval_table(f"{TABLE_TITLES[t]} ({cfg.name}, {n_img} test images)") for t in cfg.tables}


# ---------------------------------------------------------------------------- models
def _bssan_config(cfg: Config, data: Data, variant: str):
    from mmsocial.models.bssan import bssan_config

    return bssan_config(cfg.preset, variant, **{
        **cfg.model.overrides(), "word_dim": data.embeddings.shape[1],
        "num_regions": data.regions.shape[1], "region_dim": data.regions.shape[2],
        "num_objects": data.objects.shape[1], "object_dim": data.objects.shape[2]})


def bssan_scorer(model, data: Data, imgs: np.ndarray, caps: np.ndarray, chunk: int = 256):
    """A pair scorer over (imgs, caps) from per-image and per-caption caches (built once, in chunks)."""
    from mmsocial.models.bssan import CaptionCache, ImageCache

    model.eval()
    with torch.inference_mode():
        parts = [model.encode_images(*data.image_features(imgs[a:a + chunk])) for a in range(0, len(imgs), chunk)]
        images = ImageCache(*(torch.cat(x) for x in zip(*parts)))
        cparts = []
        for a in range(0, len(caps), chunk):
            T, lengths = data.words(caps[a:a + chunk])
            T = torch.nn.functional.pad(T, (0, 0, 0, data.caption_ids.shape[1] - T.shape[1]))
            cparts.append(model.encode_captions(T, lengths))
        captions = CaptionCache(*(torch.cat(x) for x in zip(*cparts)))

    def score(image_idx: torch.Tensor, caption_idx: torch.Tensor) -> torch.Tensor:
        return model.pair_scores(images, captions, image_idx, caption_idx)

    return score


def _eval_sets(data: Data, split: str, n_images: int, per_image: int, seed: int):
    from mmsocial.eval.protocols.bssan import select_test_set

    imgs, caps = select_test_set(data.caption_image, data.images(split), n_images, per_image, seed)
    caption_row = np.searchsorted(imgs, data.caption_image[caps])
    return imgs, caps, caption_row


def evaluate_bssan(model, data: Data, imgs, caps, caption_row, chunk_pairs: int) -> tuple[dict, np.ndarray, float]:
    from mmsocial.eval.protocols.bssan import image_text_retrieval, pair_score_matrix

    t = time.perf_counter()
    scorer = bssan_scorer(model, data, imgs, caps)
    scores = pair_score_matrix(scorer, len(imgs), len(caps), chunk_pairs)
    return image_text_retrieval(scores, caption_row), scores, time.perf_counter() - t


def _negatives(images: torch.Tensor, pool_images: torch.Tensor, generator: Optional[torch.Generator] = None):
    """For each image, the index (into the pool) of a random caption of another image (Eq. 7's T_i^-)."""
    n = len(pool_images)
    neg = torch.randint(0, n, (len(images),), generator=generator)
    for _ in range(10):
        same = pool_images[neg] == images
        if not same.any():
            break
        neg[same] = torch.randint(0, n, (int(same.sum()),), generator=generator)
    return neg


def _selection(result, metric: str) -> dict:
    best_epoch = next((h["epoch"] for h in result.history if h.get("step") == result.best_step), None)
    return {"metric": metric, "mode": "max", "best_epoch": best_epoch,
            "last_epoch": result.history[-1]["epoch"] if result.history else None,
            "best_value": result.best_metric}


def _history(result) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in h.items() if isinstance(v, (int, float))} for h in result.history]


def _bssan_run_config(data: Data, cfg: Config, variant: str) -> dict:
    """What a BSSAN checkpoint was trained with: enough to rebuild it (``load_trained``) and to tell
    whether a trained one can be re-used (the two-stage row)."""
    return {"bssan": _bssan_config(cfg, data, variant).to_dict(), "variant": variant,
            "train": cfg.train.model_dump(exclude={"progress"}), "data": data.fingerprint()}


def _dual_run_config(data: Data, cfg: Config) -> dict:
    return {"dual": cfg.dual.model_dump(), "image_dim": int(data.regions.shape[2]),
            "word_dim": int(data.embeddings.shape[1]), "data": data.fingerprint()}


def load_trained(run_dir: Path, which: str = "best"):
    """The BSSAN model or dual encoder of a run folder written by ``train_bssan`` / ``train_dual_encoder``
    (a cell's ``bssan`` or ``dual`` folder, or `mmsocial train bssan`'s folder), in eval mode on the CPU,
    with the run configuration it was trained with."""
    from mmsocial.models.baselines.dual_encoder import DualEncoder
    from mmsocial.models.bssan import BSSAN, BSSANConfig
    from mmsocial.train.checkpoint import find_checkpoint, load_checkpoint

    folder = find_checkpoint(run_dir, which)
    run = json.loads((folder / "config.json").read_text()).get("run") or {}
    if "bssan" in run:
        model = BSSAN(BSSANConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in run["bssan"].items()}))
    elif "dual" in run and "image_dim" in run:
        d = DualEncoderSettings(**run["dual"])
        model = DualEncoder(run["image_dim"], run["word_dim"], d.embed_dim, d.hidden)
    else:
        raise ValueError(f"{folder / 'config.json'}: no BSSAN or dual-encoder run configuration (field 'run'); "
                         f"give a folder written by train_bssan or train_dual_encoder of this version")
    load_checkpoint(folder, model)
    return model.eval(), run


def _reuse(cell_dir: Optional[Path], run_config: dict):
    """The model trained in ``cell_dir`` (a finished cell of the same seed) when it was trained with exactly
    ``run_config``; None otherwise."""
    if cell_dir is None or not (cell_dir.parent / "result.json").is_file():
        return None
    try:
        model, run = load_trained(cell_dir)
    except Exception as e:  # no checkpoint, or one of another version: train anew
        log.info("not re-using %s: %s", cell_dir, e)
        return None
    same = json.loads(json.dumps(run, default=str)) == json.loads(json.dumps(run_config, default=str))
    return model if same else None


def matched_pairs(data: Data, caps: np.ndarray, most: int = 20_000, chunk: int = 256):
    """(R, O, T, lengths) of (image, caption) training pairs in chunks, at most ``most`` captions spread
    evenly over ``caps`` (for ``attention_init: cross_covariance``)."""
    caps = caps[np.linspace(0, len(caps) - 1, most).astype(np.int64)] if len(caps) > most else caps
    for a in range(0, len(caps), chunk):
        part = caps[a:a + chunk]
        yield (*data.image_features(data.caption_image[part]), *data.words(part))


def train_bssan(data: Data, cfg: Config, variant: str, seed: int, out_dir: Path):
    """Train one BSSAN variant on the training captions; the checkpoint kept is the best validation rsum."""
    from mmsocial.models.bssan import BSSAN, BSSANLoss
    from mmsocial.train.checkpoint import load_checkpoint
    from mmsocial.train.data import FeatureDataset
    from mmsocial.train.trainer import train, unwrap_model

    mcfg = _bssan_config(cfg, data, variant)
    torch.manual_seed(seed)
    model = BSSAN(mcfg)
    if mcfg.standardize:  # statistics of the training images only, kept in the model's state dict
        model.set_input_statistics(*data.image_features(data.images("train")))
    loss_fn = BSSANLoss(mcfg)
    tr_caps = data.captions(data.images("train"))
    if mcfg.attention_init == "cross_covariance":
        model.init_attention_from_pairs(matched_pairs(data, tr_caps))
    pool_images = torch.from_numpy(data.caption_image[tr_caps])

    both = cfg.train.negatives == "both"

    def batch_loss(m, batch):
        rows = batch["row"].cpu()
        caps = tr_caps[rows.numpy()]
        imgs = torch.from_numpy(data.caption_image[caps])
        if cfg.train.negatives_from == "batch":
            device = next(m.parameters()).device
            R, O = data.image_features(imgs.numpy())
            T, lengths = data.words(caps)
            negative = imgs[:, None] != imgs[None, :]
            R, O, T = R.to(device), O.to(device), T.to(device)
            grid = m(R, O, T, lengths, uniform=negative.to(device), all_pairs=True)
            if mcfg.negative_attention == "both":  # the same negatives with their learned attention too
                grid = [grid, m(R, O, T, lengths, all_pairs=True)]
            return loss_fn.in_batch(unwrap_model(m), grid, imgs.to(device), both=both)
        neg = tr_caps[_negatives(imgs, pool_images).numpy()]
        neg_imgs = data.caption_image[tr_caps[_negatives(imgs, pool_images).numpy()]] if both else None
        return pair_loss(m, imgs.numpy(), caps, neg, neg_imgs)

    def pair_loss(m, imgs, caps, neg, neg_imgs=None):
        """Eq. 7/17 with a negative caption T_i^- per image; with ``neg_imgs`` also a negative image per
        caption (train.negatives: both), the hinges of both summed as one batch."""
        device = next(m.parameters()).device
        b = len(caps)
        all_imgs = np.concatenate([imgs, imgs] + ([neg_imgs] if neg_imgs is not None else []))
        all_caps = np.concatenate([caps, neg] + ([caps] if neg_imgs is not None else []))
        R, O = data.image_features(all_imgs)
        T, lengths = data.words(all_caps)
        uniform = torch.arange(len(all_caps)) >= b  # Eq. 8: the negative pairs get uniform attention
        out = m(R.to(device), O.to(device), T.to(device), lengths, uniform=uniform.to(device))
        keys = ("f_w2r", "f_o2w", "score")
        reps = (len(all_caps) - b) // b
        pos = {k: out[k][:b].repeat(reps) for k in keys}
        negs = {k: out[k][b:] for k in keys}
        return loss_fn(unwrap_model(m), pos, negs)

    v_imgs, v_caps, v_row = _eval_sets(data, "val", cfg.val_images, 1 << 30, seed)
    rng = torch.Generator().manual_seed(seed)
    v_pool = torch.from_numpy(data.caption_image[v_caps])
    v_neg = v_caps[_negatives(v_pool, v_pool, rng).numpy()]

    def evaluate(m):
        metrics, _, _ = evaluate_bssan(unwrap_model(m), data, v_imgs, v_caps, v_row, cfg.chunk_pairs)
        with torch.no_grad():
            losses = [pair_loss(m, data.caption_image[v_caps[a:a + 256]], v_caps[a:a + 256], v_neg[a:a + 256])
                      for a in range(0, len(v_caps), 256)]
        return {"val_loss": float(np.mean([x["loss"].item() for x in losses])), "val_rsum": metrics["rsum"],
                "val_i2t_R@1": metrics["i2t R@1"], "val_t2i_R@1": metrics["t2i R@1"]}

    t = cfg.train
    lr = t.lr if t.lr is not None else (1e-3 if t.optimizer == "adam" else mcfg.lr)
    tcfg = load_config({"epochs": mcfg.epochs, "batch_size": mcfg.batch_size, "optimizer": t.optimizer, "lr": lr,
                        "momentum": mcfg.momentum if t.optimizer == "sgd" else 0.0, "seed": seed, "device": cfg.device if cfg.device != "cpu" else "cpu",
                        "progress": t.progress, "grad_clip": t.grad_clip, "max_steps": t.max_steps,
                        "eval_every": t.eval_every, "drop_last": len(tr_caps) > mcfg.batch_size,
                        "early_stopping": {"metric": "val_rsum", "mode": "max", "patience": 1000}}, TrainConfig)
    groups = None
    if t.attention_lr is not None:
        attention = [p for name, p in model.named_parameters() if ".attention." in name]
        rest = [p for name, p in model.named_parameters() if ".attention." not in name]
        groups = [{"params": rest}, {"params": attention, "lr": t.attention_lr}]
    result = train(model, FeatureDataset({"row": np.arange(len(tr_caps))}), batch_loss, tcfg, out_dir,
                   evaluate=evaluate, resume=False, param_groups=groups,
                   run_config=_bssan_run_config(data, cfg, variant))
    if result.best_checkpoint is not None:
        load_checkpoint(result.best_checkpoint, model)
    return model.to("cpu").eval(), result


def train_dual_encoder(data: Data, cfg: Config, seed: int, out_dir: Path):
    """The dual-encoder baseline (VSE++ loss), checkpoint kept on the validation rsum."""
    from mmsocial.eval.protocols.bssan import image_text_retrieval
    from mmsocial.models.baselines.dual_encoder import DualEncoder
    from mmsocial.train.checkpoint import load_checkpoint
    from mmsocial.train.data import FeatureDataset
    from mmsocial.train.losses import contrastive_hinge_loss
    from mmsocial.train.trainer import train, unwrap_model

    d = cfg.dual
    torch.manual_seed(seed)
    tr_imgs = data.images("train")
    pooled = torch.from_numpy(data.pooled(np.arange(len(data.post_ids))))
    model = DualEncoder(data.regions.shape[2], data.embeddings.shape[1], d.embed_dim, d.hidden,
                        pooled[tr_imgs].mean(0), pooled[tr_imgs].std(0).clamp_min(1e-6))
    tr_caps = data.captions(tr_imgs)

    def batch_loss(m, batch):
        caps = tr_caps[batch["row"].cpu().numpy()]
        # one caption per image in a batch, so that the in-batch negatives are other images
        _, first = np.unique(data.caption_image[caps], return_index=True)
        caps = caps[np.sort(first)]
        T, lengths = data.words(caps)
        device = next(m.parameters()).device
        s = m(pooled[data.caption_image[caps]].to(device), T.to(device), lengths)
        return {"loss": contrastive_hinge_loss(s, d.margin, d.max_violation)}

    v_imgs, v_caps, v_row = _eval_sets(data, "val", cfg.val_images, 1 << 30, seed)

    def evaluate(m):
        m = unwrap_model(m)
        metrics = image_text_retrieval(dual_scores(m, data, v_imgs, v_caps), v_row)
        return {"val_rsum": metrics["rsum"], "val_i2t_R@1": metrics["i2t R@1"], "val_t2i_R@1": metrics["t2i R@1"]}

    tcfg = load_config({"epochs": d.epochs, "batch_size": d.batch_size, "optimizer": "adam", "lr": d.lr,
                        "seed": seed, "progress": cfg.train.progress, "grad_clip": 2.0,
                        "drop_last": len(tr_caps) > d.batch_size,
                        "early_stopping": {"metric": "val_rsum", "mode": "max", "patience": 1000}}, TrainConfig)
    result = train(model, FeatureDataset({"row": np.arange(len(tr_caps))}), batch_loss, tcfg, out_dir,
                   evaluate=evaluate, resume=False, run_config=_dual_run_config(data, cfg))
    if result.best_checkpoint is not None:
        load_checkpoint(result.best_checkpoint, model)
    return model.to("cpu").eval(), result


def dual_scores(model, data: Data, imgs: np.ndarray, caps: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        model.eval()
        img = model.encode_images(torch.from_numpy(data.pooled(imgs)))
        cap = torch.cat([model.encode_captions(*data.words(caps[a:a + 1024])) for a in range(0, len(caps), 1024)])
        return (img @ cap.T).numpy()


# ---------------------------------------------------------------------------- one cell
def run_cell(row: str, seed: int, data: Data, cfg: Config, workdir: Path) -> Cell:
    """Train (or fit) one row with one seed under ``workdir`` and evaluate it on the test images."""
    from mmsocial.eval.protocols.bssan import (default_k_t2i, embedding_scores, image_text_retrieval,
                                               recall_kept, two_stage_scores)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    workdir = Path(workdir)
    imgs, caps, caption_row = _eval_sets(data, "test", cfg.test_images, cfg.captions_per_image, 0)
    history: list[dict[str, float]] = []
    selection = None
    diagnostics: dict[str, float] = {"test_images": len(imgs), "test_captions": len(caps)}
    if row in ("CCA", "DCCA"):
        from mmsocial.models.baselines import CCA, DCCA

        b = cfg.baselines
        tr_caps = data.captions(data.images("train"))
        X, Y = data.pooled(data.caption_image[tr_caps]), data.mean_words(tr_caps)
        model = CCA(b.n_components, reg=b.cca_reg) if row == "CCA" else DCCA(
            b.n_components, hidden=tuple(b.dcca_hidden), epochs=b.dcca_epochs, lr=b.dcca_lr, random_state=seed)
        model.fit(X, Y)
        scores = embedding_scores(model.transform_x(data.pooled(imgs)), model.transform_y(data.mean_words(caps)))
        metrics = image_text_retrieval(scores, caption_row)
    elif row == "Dual encoder":
        model, result = train_dual_encoder(data, cfg, seed, workdir / "dual")
        history, selection = _history(result), _selection(result, "val_rsum")
        metrics = image_text_retrieval(dual_scores(model, data, imgs, caps), caption_row)
    elif row == "BSSAN two-stage":
        # the Dual encoder and BSSAN cells of this seed, when finished with the same settings, are re-used
        from mmsocial.experiment import cell_dir

        root = workdir.parent
        dual = _reuse(cell_dir(root, "Dual encoder", seed) / "dual", _dual_run_config(data, cfg))
        diagnostics["reused_dual_encoder"] = float(dual is not None)
        if dual is None:
            dual, _ = train_dual_encoder(data, cfg, seed, workdir / "dual")
        model = _reuse(cell_dir(root, "BSSAN", seed) / "bssan", _bssan_run_config(data, cfg, "bssan"))
        diagnostics["reused_bssan"] = float(model is not None)
        if model is None:
            model, result = train_bssan(data, cfg, "bssan", seed, workdir / "bssan")
            history, selection = _history(result), _selection(result, "val_rsum")
        t = time.perf_counter()
        first = dual_scores(dual, data, imgs, caps)
        k_t2i = cfg.two_stage_k_t2i if cfg.two_stage_k_t2i is not None else default_k_t2i(
            cfg.two_stage_k, len(imgs), len(caps))
        scores, n_pairs = two_stage_scores(first, bssan_scorer(model, data, imgs, caps), cfg.two_stage_k, k_t2i)
        seconds = time.perf_counter() - t
        metrics = image_text_retrieval(scores, caption_row)
        diagnostics.update(two_stage_seconds=seconds, pairs_scored=n_pairs, k=cfg.two_stage_k, k_t2i=k_t2i)
        if cfg.two_stage_full:
            full, _, full_seconds = evaluate_bssan(model, data, imgs, caps, caption_row, cfg.chunk_pairs)
            diagnostics.update(full_seconds=full_seconds, speedup=full_seconds / max(seconds, 1e-9),
                               **{f"kept {k}": v for k, v in recall_kept(full, metrics).items()})
    else:
        model, result = train_bssan(data, cfg, VARIANT_OF_ROW[row], seed, workdir / "bssan")
        history, selection = _history(result), _selection(result, "val_rsum")
        metrics, _, seconds = evaluate_bssan(model, data, imgs, caps, caption_row, cfg.chunk_pairs)
        diagnostics.update(scoring_seconds=seconds, pairs_per_second=len(imgs) * len(caps) / max(seconds, 1e-9))
    return Cell({t: {k: float(v) for k, v in metrics.items()} for t in cfg.tables}, history, selection,
                {k: float(v) for k, v in diagnostics.items()})


# ---------------------------------------------------------------------------- train / demo
def train(cfg: Config) -> Path:
    """`mmsocial train bssan`: train ``cfg.variant`` on cfg.corpus with the first seed; the run folder
    gets the checkpoints, the config and the vocabulary (what `mmsocial viz attention` reads)."""
    from mmsocial.config import save_config
    from mmsocial.experiment import load_corpus

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = prepare(load_corpus(cfg), cfg)
    log.info("BSSAN data: %s", data.describe())
    run_dir = Path(cfg.workdir)
    model, result = train_bssan(data, cfg, cfg.variant, cfg.seeds[0] if cfg.seeds else 0, run_dir)
    save_config(cfg, run_dir / "config.yaml")
    data.vocabulary.save(run_dir / "vocabulary.json")
    (run_dir / "model.json").write_text(json.dumps({"variant": cfg.variant, "model": model.cfg.to_dict(),
                                                    "best_checkpoint": str(result.best_checkpoint)}, indent=1))
    return run_dir


DEMO_ROWS = ["Dual encoder", "BSSAN two-stage"]


def demo(corpus_dir: Path, workdir: Path):
    """BSSAN's part of `mmsocial demo`: the dual encoder and BSSAN in two-stage mode, one seed, a short schedule."""
    from mmsocial.experiment import run_experiment

    cfg = Config(name="demo", corpus=str(corpus_dir), workdir=str(workdir), seeds=[0], rows=DEMO_ROWS,
                 tables=["table2"], threads=1, two_stage_k=50, two_stage_full=False, val_images=100,
                 objects_from="regions",
                 model=ModelSettings(epochs=3, batch_size=32, negative_attention="softmax",  # as pointing.yaml
                                     attention_init="cross_covariance"),
                 dual=DualEncoderSettings(epochs=8, max_violation=False),
                 train=TrainSettings(progress=False, negatives_from="batch", negatives="both", attention_lr=1e-5))
    return run_experiment(cfg, progress=False)


# ---------------------------------------------------------------------------- viz
def _trained_run(run_dir: Path) -> tuple[Path, Path]:
    """(checkpoint folder, the config it was trained with) of a folder written by `mmsocial train bssan`, or of
    an experiment cell (WORKDIR/ROW-seedN, or its ``bssan`` folder; the config is WORKDIR/config.yaml)."""
    if (run_dir / "config.yaml").is_file() and (run_dir / "model.json").is_file():
        return run_dir, run_dir / "config.yaml"
    cell = run_dir / "bssan" if (run_dir / "bssan").is_dir() else run_dir
    if cell.name == "bssan" and (cell.parent.parent / "config.yaml").is_file():
        return cell, cell.parent.parent / "config.yaml"
    raise ValueError(f"{run_dir}: not a BSSAN run; give a run folder written by `mmsocial train bssan` or a cell "
                     f"folder of a BSSAN experiment (WORKDIR/ROW-seedN with a bssan folder)")


def attention_pictures(run_dir: Path, out: Optional[Path] = None, count: int = 4) -> list[Path]:
    """W2R heat maps and O2W line charts of the first ``count`` test images (with their first caption)
    of a run folder written by `mmsocial train bssan` or an experiment cell (default output: its
    ``attention`` folder)."""
    from mmsocial.experiment import load_corpus
    from mmsocial.viz.bssan_attention import o2w_figure, w2r_figure

    checkpoints, config = _trained_run(Path(run_dir))
    cfg = load_config(config, Config)
    corpus = load_corpus(cfg)
    data = prepare(corpus, cfg)
    model, _ = load_trained(checkpoints)
    out = Path(out) if out is not None else Path(run_dir) / "attention"
    written = []
    for i in data.images("test")[:count]:
        cap = data.captions(np.array([i]))[:1]
        R, O = data.image_features(np.array([i]))
        T, lengths = data.words(cap)
        with torch.no_grad():
            res = model(R, O, T, lengths)
        words = [data.vocabulary.words[t] for t in data.caption_ids[cap[0], : int(lengths[0])]]
        image = corpus.open_image(data.post_ids[i])
        pid = data.post_ids[i]
        if res["alpha"] is not None:
            written.append(w2r_figure(image, words, res["alpha"][0].numpy(), out / f"{pid}-w2r.png"))
        if res["beta"] is not None:
            written.append(o2w_figure(image, words, res["beta"][0].numpy(), data.boxes[i], out / f"{pid}-o2w.png"))
    return written


def add_commands(groups) -> None:
    import typer

    @groups["viz"].command("attention")
    def viz_attention(run_dir: Path = typer.Argument(..., help="a run folder of `mmsocial train bssan`, or an "
                                                     "experiment cell folder (WORKDIR/ROW-seedN)"),
                      out: Optional[Path] = typer.Option(None, help="folder for the PNG files (default RUN_DIR/attention)"),
                      count: int = typer.Option(4, help="test images to draw")):
        """BSSAN attention as PNG: W2R heat maps per word (Fig. 7) and O2W word weights per object (Fig. 8)."""
        for p in attention_pictures(run_dir, out, count):  # bad input: the CLI's one-line error, exit 2
            log.info("wrote %s", p)


# ---------------------------------------------------------------------------- serving hook
def load_run(run_dir: Path):
    """`mmsocial serve`: a trained BSSAN run as a ``systems.Served`` answering image-caption match scores.

    ``match(image, caption, post_id=None)``: MS(V, T) of Eq. 19 with its parts f_w2r and f_o2w and the
    attention behind them: W2R's α (each caption word over the region grid, Eq. 1-2) and O2W's β (each
    object box over the caption words, Eq. 9-10). A post of the corpus is scored from the run's cached
    regions and objects (``prepare``, the same data the run was trained on); an uploaded image goes
    through the run's backbone, and its objects are boxed and pooled as when the features were extracted
    (CAM or grid boxes, RoIAlign). Caption words outside the run's vocabulary are <unk>, as in training."""
    from mmsocial.experiment import load_corpus
    from mmsocial.features.text import Vocabulary, tokenize
    from mmsocial.models.bssan import BSSAN, BSSANConfig
    from mmsocial.systems import RUN_CONFIG, Served, require_run_files
    from mmsocial.train.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    require_run_files(run_dir, (RUN_CONFIG, "model.json", "vocabulary.json"), "bssan")
    cfg = load_config(run_dir / RUN_CONFIG, Config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = load_corpus(cfg)
    data = prepare(corpus, cfg)
    if Vocabulary.load(run_dir / "vocabulary.json").words != data.vocabulary.words:
        raise ValueError(f"{run_dir}: the corpus's caption vocabulary differs from the run's vocabulary.json "
                         f"(the corpus changed since training); retrain or serve the original corpus")
    saved = json.loads((run_dir / "model.json").read_text())
    mcfg = BSSANConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["model"].items()})
    model = BSSAN(mcfg)
    load_checkpoint(run_dir, model)  # safetensors
    model.eval()
    row = {p: i for i, p in enumerate(data.post_ids)}
    side = int(round(data.regions.shape[1] ** 0.5))
    backbone: dict = {}

    @torch.no_grad()
    def features_of(image) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        from mmsocial.features.backbones import image_to_tensor, load_backbone
        from mmsocial.features.boxes import cam_boxes, grid_boxes, roi_features

        if cfg.boxes not in ("cam", "grid"):
            raise ValueError(f"this run's objects come from the detector {cfg.boxes}; uploads are scored with "
                             f"cam or grid boxes only: give a post_id of the corpus instead")
        if "net" not in backbone:
            backbone["net"] = load_backbone(cfg.backbone, cfg.weights)
        net, size, count = backbone["net"], cfg.image_size, data.objects.shape[1]
        fmap = net.feature_map(image_to_tensor(image, size)[None]).float()
        b = (cam_boxes(net.class_activation_maps(fmap)[0], count, size, size) if cfg.boxes == "cam"
             else grid_boxes(count, size, size).expand(1, count, 4))
        R = fmap.flatten(2).transpose(1, 2)
        return R, roi_features(fmap, b, (size, size)), (b / size).numpy()[0]

    @torch.no_grad()
    def match(image, caption: str, post_id: Optional[str] = None) -> dict:
        words = tokenize(caption)[: mcfg.max_length]
        if not words:
            raise ValueError(f"the caption {caption!r} has no word")
        ids = data.vocabulary.encode(words)
        if all(i == 1 for i in ids):
            raise ValueError(f"no word of {caption!r} is in this run's vocabulary ({len(data.vocabulary) - 2} "
                             f"words, e.g. {', '.join(data.vocabulary.words[2:10])})")
        if post_id is not None and post_id in row:
            R, O = data.image_features(np.array([row[post_id]]))
            boxes = data.boxes[row[post_id]]
        else:
            R, O, boxes = features_of(image if image is not None else corpus.open_image(post_id))
        T = torch.from_numpy(data.embeddings[np.array(ids)])[None]
        out = model(R, O, T, torch.tensor([len(ids)]))
        res = {"score": float(out["score"][0]), "f_w2r": float(out["f_w2r"][0]), "f_o2w": float(out["f_o2w"][0]),
               "lam": mcfg.lam, "words": words, "unknown_words": [w for w, i in zip(words, ids) if i == 1],
               "attention": {}}
        if out["alpha"] is not None:  # (1, L, D): each word over the region grid
            res["attention"]["w2r"] = {"grid": [side, side], "maps": {
                f"{k}:{w}": out["alpha"][0, k].reshape(side, side).tolist() for k, w in enumerate(words)}}
        if out["beta"] is not None:  # (1, P, L): each object over the words
            res["attention"]["o2w"] = {"boxes": np.asarray(boxes, dtype=float).round(4).tolist(),
                                       "weights": out["beta"][0, :, : len(words)].tolist()}
        return res

    return Served(NAME, run_dir, corpus, "ip", {}, match=match,
                  info={"title": TITLE, "variant": saved.get("variant"), "images": len(data.post_ids),
                        "vocabulary_size": len(data.vocabulary)})
