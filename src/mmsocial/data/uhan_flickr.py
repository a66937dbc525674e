"""The UHAN/Flickr popularity data as the official code lays it out (OFFLINE.md; UHAN paper §4.1.1).

The user unpacks the SMP challenge files (MM17PredictionChallenge) and UHAN's ``data.zip`` into one
folder ``ROOT``::

    ROOT/data.json          one JSON object a line: title, desc, url, img_url, img_name
    ROOT/train_data.txt     space-separated, no header: raw_pid raw_uid postdate commentcount haspeople
                            titlelen deslen tagcount avgview groupcount avgmembercount
    ROOT/train_label.txt    one float a line: the popularity score log2(views/days + 1), aligned with
                            train_data.txt
    ROOT/train_url.txt      one photo URL a line, aligned with train_data.txt (the join key of data.json)
    ROOT/err_img.txt        optional: image paths (``.../img/train/<user>/<post>.jpg``) to leave out
    ROOT/img/train/<user>/<post>.jpg                     the photo (optional)
    ROOT/img/train/<user>/<post>.jpg.vgg16_196_512.npy   VGG16 pool5 at 448 px, (196, 512) float32

``<user>`` and ``<post>`` are the last two segments of the URL (``.../photos/<user>/<post>``). A post is
kept when its text (``title + " #desc: " + desc``) is ASCII and has at least 5 tokens (the official
filter; the vocabulary's 5-occurrence rule is applied later, by the system, to the training words). The label is the popularity score itself, so the corpus
stores ``views = 2**label - 1`` and ``days = 1`` (then log2(views/days + 1) gives the label back) and the
label in the extra column ``popularity``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mmsocial.data.corpus import Corpus, CorpusError, make_posts

log = logging.getLogger(__name__)

META_COLUMNS = ("raw_pid", "raw_uid", "postdate", "commentcount", "haspeople", "titlelen", "deslen", "tagcount",
                "avgview", "groupcount", "avgmembercount")
REGION_SUFFIX = ".vgg16_196_512.npy"
REGION_SHAPE = (196, 512)


def _need(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise CorpusError(f"UHAN/Flickr: {name} not found in {root} (looked for {path}); point at the folder "
                          f"holding data.json, train_data.txt, train_label.txt and train_url.txt")
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def read_uhan_flickr(root: str | Path, min_tokens: int = 5, name: str = "uhan-flickr") -> Corpus:
    """Read the official layout under ``root`` into a corpus (images referenced when present)."""
    from sklearn.feature_extraction.text import CountVectorizer

    root = Path(root)
    records = []
    for n, line in enumerate(_lines(_need(root, "data.json")), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{root / 'data.json'}: line {n} is not JSON ({e})") from None
        if "url" not in obj:
            raise CorpusError(f"{root / 'data.json'}: line {n} has no 'url' field")
        records.append({"url": str(obj["url"]), "title": obj.get("title") or "", "desc": obj.get("desc") or ""})
    texts = pd.DataFrame(records).drop_duplicates("url")
    meta_lines = [ln for ln in _lines(_need(root, "train_data.txt")) if ln.strip()]
    labels = [ln for ln in _lines(_need(root, "train_label.txt")) if ln.strip()]
    urls = [ln.strip() for ln in _lines(_need(root, "train_url.txt")) if ln.strip()]
    if not len(meta_lines) == len(labels) == len(urls):
        raise CorpusError(f"{root}: train_data.txt ({len(meta_lines)} lines), train_label.txt ({len(labels)}) and "
                          f"train_url.txt ({len(urls)}) must be aligned line by line")
    rows = []
    for n, (ln, lab) in enumerate(zip(meta_lines, labels), 1):
        parts = ln.split()
        if len(parts) != len(META_COLUMNS):
            raise CorpusError(f"{root / 'train_data.txt'}: line {n} has {len(parts)} fields, expected "
                              f"{len(META_COLUMNS)} ({' '.join(META_COLUMNS)})")
        try:
            score = float(lab)
            postdate = float(parts[2])
        except ValueError:
            raise CorpusError(f"{root}: line {n}: label {lab!r} or postdate {parts[2]!r} is not a number") from None
        if not np.isfinite(score):
            raise CorpusError(f"{root / 'train_label.txt'}: line {n}: the label is {lab!r}")
        rows.append({"raw_pid": parts[0], "raw_uid": parts[1], "postdate": postdate, "label": score})
    meta = pd.DataFrame(rows)
    meta["url"] = urls
    data = texts.merge(meta, on="url", how="inner")
    if data.empty:
        raise CorpusError(f"{root}: no URL of data.json appears in train_url.txt; are they from the same release?")
    seg = data["url"].str.rstrip("/").str.split("/")
    data["user"], data["post"] = seg.str[-2], seg.str[-1]
    data["img"] = "img/train/" + data["user"] + "/" + data["post"] + ".jpg"
    err = root / "err_img.txt"
    if err.is_file():
        bad = {ln.strip().split("img/train/", 1)[-1] for ln in _lines(err) if ln.strip()}
        data = data[~data["img"].str.split("img/train/", n=1).str[-1].isin(bad)]
    data["text"] = data["title"].astype(str) + " #desc: " + data["desc"].astype(str).str.strip()
    analyzer = CountVectorizer().build_analyzer()  # the official tokenizer (scikit-learn's default)
    ok = [t.isascii() and len(analyzer(t)) >= min_tokens for t in data["text"]]
    log.info("UHAN/Flickr: %d of %d posts kept (ASCII, >= %d frequent tokens)", sum(ok), len(data), min_tokens)
    data = data[ok]
    if data.empty:
        raise CorpusError(f"{root}: no post passes the official text filter (ASCII, >= {min_tokens} tokens)")
    posts = make_posts({
        "post_id": r.post, "user_id": r.user,
        "image": r.img if (root / r.img).is_file() else None,
        "text": r.text, "tags": [], "labels": [], "timestamp": r.postdate,
        "views": float(2.0 ** r.label - 1.0), "days": 1.0} for r in data.itertuples())
    posts["popularity"] = data["label"].to_numpy(dtype=float)
    posts["raw_pid"] = data["raw_pid"].astype(str).to_numpy()
    users = pd.DataFrame({"user_id": sorted(set(data["user"])), "name": sorted(set(data["user"]))})
    links = pd.DataFrame({"src": pd.Series([], dtype=object), "dst": pd.Series([], dtype=object),
                          "kind": pd.Series([], dtype=object)})
    return Corpus(posts, users, links, {"name": name, "provenance": f"UHAN/Flickr official layout at {root}"},
                  root)


def region_file(root: str | Path, user: str, post: str) -> Path:
    return Path(root) / "img" / "train" / user / f"{post}.jpg{REGION_SUFFIX}"


def write_uhan_flickr_regions(root: str | Path, corpus: Corpus, out: str | Path):
    """Copy the precomputed (196, 512) region files of the corpus's posts into a feature store at ``out``."""
    from mmsocial.features.store import write_features

    root = Path(root)
    posts = corpus.posts
    files = [region_file(root, u, p) for u, p in zip(posts["user_id"], posts["post_id"])]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise CorpusError(f"UHAN/Flickr: {len(missing)} region file(s) missing, e.g. {missing[0]} "
                          f"(expected <post>.jpg{REGION_SUFFIX} beside each image)")

    def batches(todo):
        for start in todo:
            arr = np.load(files[start])
            if arr.shape != REGION_SHAPE:
                raise CorpusError(f"{files[start]}: region array has shape {arr.shape}, expected {REGION_SHAPE}")
            yield int(start), arr[None].astype(np.float32)

    manifest = {"extractor": "regions", "backbone": "vgg16", "weights": "uhan-official", "input_size": 448,
                "grid": [14, 14], "preprocess": "official UHAN files (VGG16 last pooling layer at 448 px)"}
    return write_features(out, posts["post_id"].tolist(), REGION_SHAPE, batches, manifest)
