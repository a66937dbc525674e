"""Readers of the three Flickr benchmarks of DMAN §4.1, from their distributed on-disk formats.

Each reader returns an (unsaved) Corpus whose image paths are absolute; ``prepare_dman`` then
applies the paper's preparation. The datasets carry tags and labels but no sentences, so
``posts.text`` stays missing (the tag list is the text modality). Layouts: docs/data.md.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmsocial.data.corpus import Corpus, CorpusError, make_posts
from mmsocial.data.splits import dman_split

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
MIR_RELEVANT = ("baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people",
                "portrait", "river", "sea", "tree")


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise CorpusError(f"{path}: missing ({what}); see docs/data.md for the expected layout")
    return path


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise CorpusError(f"{path}: unreadable ({e})") from None


def _corpus(records: list[dict], name: str, provenance: dict) -> Corpus:
    posts = make_posts(records)
    return Corpus(posts, None, None, {"name": name, "provenance": provenance})


# ---------------------------------------------------------------------------- NUS-WIDE
def read_nuswide(root: str | Path, images: str | Path | None = None, tags: str = "auto") -> Corpus:
    """NUS-WIDE (Chua et al. 2009): 269,648 Flickr images, 81 concepts.

    ``root`` holds ``ImageList/Imagelist.txt`` (``C:\\ImageData\\Flickr\\<dir>\\<nnnn>_<photo id>.jpg``
    a line), ``Groundtruth/AllLabels/Labels_<concept>.txt`` (one 0/1 a line, aligned with the
    image list) and ``NUS_WID_Tags/`` with either ``All_Tags.txt`` (``<photo id> tag tag ...``
    a line) or ``AllTags1k.txt`` (a 0/1 row of 1,000 columns a line) + ``TagList1k.txt``.
    ``tags``: "all" (All_Tags.txt), "1k" (AllTags1k.txt) or "auto" (All_Tags.txt if present).
    Images are looked for at ``images/<dir>/<file>`` (default ``root/Flickr``); absent ones
    (many Flickr photos are gone) are a missing image, not an error.
    """
    root = Path(root)
    images = Path(images) if images is not None else root / "Flickr"
    if tags not in ("auto", "all", "1k"):
        raise ValueError(f"tags must be 'auto', 'all' or '1k', got {tags!r}")
    listing = _need(root / "ImageList" / "Imagelist.txt", "the NUS-WIDE image list")
    entries = [ln.strip() for ln in _lines(listing) if ln.strip()]
    n = len(entries)
    rel = [e.replace("\\", "/").split("Flickr/", 1)[-1] for e in entries]
    photo_ids = [Path(r).stem.split("_", 1)[-1] for r in rel]

    label_files = sorted(_need(root / "Groundtruth" / "AllLabels", "the NUS-WIDE ground truth").glob("Labels_*.txt"))
    if not label_files:
        raise CorpusError(f"{root / 'Groundtruth' / 'AllLabels'}: no Labels_<concept>.txt files")
    labels: list[list[str]] = [[] for _ in range(n)]
    for f in tqdm(label_files, desc="NUS-WIDE labels", unit="concept"):
        concept = f.stem[len("Labels_"):]
        col = _binary_column(f, n)
        for i in np.flatnonzero(col):
            labels[i].append(concept)

    tag_dir = root / "NUS_WID_Tags"
    use_all = tags == "all" or (tags == "auto" and (tag_dir / "All_Tags.txt").is_file())
    post_tags = _nus_all_tags(tag_dir / "All_Tags.txt", photo_ids) if use_all else _nus_tags_1k(tag_dir, n)

    official = {}
    for split, fname in (("train", "TrainImagelist.txt"), ("test", "TestImagelist.txt")):
        f = root / "ImageList" / fname
        if f.is_file():
            for ln in _lines(f):
                if ln.strip():
                    official[ln.strip().replace("\\", "/").split("Flickr/", 1)[-1]] = split

    records, seen = [], Counter()
    for i in range(n):
        pid = photo_ids[i]
        seen[pid] += 1
        img = images / rel[i]
        records.append({
            "post_id": pid if seen[pid] == 1 else f"{pid}-{i + 1}",
            "image": str(img.resolve()) if img.is_file() else None,
            "tags": post_tags[i], "labels": labels[i],
            "flickr_id": pid, "official_split": official.get(rel[i]),
        })
    return _corpus(records, "nuswide", {"reader": "nuswide", "root": str(root), "images": str(images),
                                        "tags": "All_Tags.txt" if use_all else "AllTags1k.txt",
                                        "concepts": len(label_files)})


def _binary_column(path: Path, n: int) -> np.ndarray:
    values = [ln.strip() for ln in _lines(path) if ln.strip()]
    if len(values) != n:
        raise CorpusError(f"{path}: {len(values)} lines, but the image list has {n}")
    bad = [v for v in values if v not in ("0", "1")]
    if bad:
        raise CorpusError(f"{path}: line {values.index(bad[0]) + 1} is {bad[0]!r}, expected 0 or 1")
    return np.array(values) == "1"


def _nus_all_tags(path: Path, photo_ids: list[str]) -> list[list[str]]:
    lines = [ln for ln in _lines(path) if ln.strip()]
    if len(lines) != len(photo_ids):
        raise CorpusError(f"{path}: {len(lines)} lines, but the image list has {len(photo_ids)}")
    out = []
    for i, ln in enumerate(lines):
        parts = ln.split()
        if parts[0] != photo_ids[i]:
            raise CorpusError(f"{path}: line {i + 1} is photo {parts[0]}, but line {i + 1} of the image "
                              f"list is photo {photo_ids[i]}")
        out.append(list(dict.fromkeys(parts[1:])))
    return out


def _nus_tags_1k(tag_dir: Path, n: int) -> list[list[str]]:
    vocab = [w.strip() for w in _lines(_need(tag_dir / "TagList1k.txt", "the NUS-WIDE 1k tag list")) if w.strip()]
    path = _need(tag_dir / "AllTags1k.txt", "the NUS-WIDE 1k tag matrix (or give All_Tags.txt)")
    out = []
    with open(path, "rb") as fh:
        for i, ln in enumerate(tqdm(fh, desc="NUS-WIDE tags", unit="img", total=n)):
            row = np.frombuffer(b"".join(ln.split()), dtype=np.uint8)
            if len(row) == 0:
                continue
            if len(row) != len(vocab):
                raise CorpusError(f"{path}: line {i + 1} has {len(row)} columns, TagList1k.txt has {len(vocab)} tags")
            out.append([vocab[j] for j in np.flatnonzero(row == ord("1"))])
    if len(out) != n:
        raise CorpusError(f"{path}: {len(out)} rows, but the image list has {n}")
    return out


# ---------------------------------------------------------------------------- MIRFlickr-25K
def read_mirflickr(root: str | Path, annotations: str | Path | None = None,
                   label_set: str = "relevant") -> Corpus:
    """MIRFlickr-25K (Huiskes & Lew 2008): ``root/im<N>.jpg`` (N = 1..25000),
    ``root/meta/tags/tags<N>.txt`` (one processed tag a line), optional
    ``root/meta/license/license<N>.txt`` (the photo's Flickr page URL gives the owner = user),
    and the annotation folder (``root/annotations`` or ``root/mirflickr25k_annotations_v080``)
    with ``<concept>.txt`` and ``<concept>_r1.txt`` (image numbers, one a line).

    ``label_set``: "relevant" (the 14 ``_r1`` concepts, strict annotations: DMAN's 14 labels),
    "potential" (the 24 concepts of the plain files) or "both" (r1 concepts named ``<c>_r1``).
    """
    root = Path(root)
    if label_set not in ("relevant", "potential", "both"):
        raise ValueError(f"label_set must be 'relevant', 'potential' or 'both', got {label_set!r}")
    if annotations is None:
        cands = [root / "annotations", root / "mirflickr25k_annotations_v080", root.parent / "annotations"]
        annotations = next((c for c in cands if c.is_dir()), cands[0])
    annotations = _need(Path(annotations), "the MIRFlickr annotation files <concept>.txt")
    numbers = sorted(int(m.group(1)) for p in root.glob("im*.jpg") if (m := re.fullmatch(r"im(\d+)", p.stem)))
    tag_dir = root / "meta" / "tags"
    if not numbers:
        numbers = sorted(int(m.group(1)) for p in _need(tag_dir, "the MIRFlickr tag files").glob("tags*.txt")
                         if (m := re.fullmatch(r"tags(\d+)", p.stem)))
    if not numbers:
        raise CorpusError(f"{root}: no im<N>.jpg images and no meta/tags/tags<N>.txt files")

    labels: dict[int, list[str]] = {k: [] for k in numbers}
    files = sorted(annotations.glob("*.txt"))
    used = 0
    for f in files:
        relevant = f.stem.endswith("_r1")
        concept = f.stem[:-3] if relevant else f.stem
        if f.stem.lower() == "readme":
            continue
        if label_set == "relevant" and not relevant or label_set == "potential" and relevant:
            continue
        name = f.stem if label_set == "both" else concept
        used += 1
        for j, ln in enumerate(_lines(f), start=1):
            if not ln.strip():
                continue
            if not ln.strip().isdigit():
                raise CorpusError(f"{f} line {j}: {ln.strip()!r} is not an image number")
            k = int(ln)
            if k in labels:
                labels[k].append(name)
    if not used:
        raise CorpusError(f"{annotations}: no annotation files for label_set={label_set!r} "
                          f"({'<concept>_r1.txt' if label_set == 'relevant' else '<concept>.txt'})")

    records = []
    for k in tqdm(numbers, desc="MIRFlickr", unit="img"):
        img = root / f"im{k}.jpg"
        tag_file = tag_dir / f"tags{k}.txt"
        tags = list(dict.fromkeys(t.strip() for t in _lines(tag_file) if t.strip())) if tag_file.is_file() else []
        records.append({"post_id": f"im{k}", "user_id": _flickr_owner(root / "meta" / "license" / f"license{k}.txt"),
                        "image": str(img.resolve()) if img.is_file() else None,
                        "tags": tags, "labels": sorted(labels[k])})
    corpus = _corpus(records, "mirflickr", {"reader": "mirflickr", "root": str(root),
                                            "annotations": str(annotations), "label_set": label_set})
    users = sorted(set(corpus.posts["user_id"].dropna()))
    corpus.users = pd.DataFrame({"user_id": users, "name": users})
    return corpus


_FLICKR_PAGE = re.compile(r"flickr\.com/photos/([^/\s]+)/\d+")


def _flickr_owner(path: Path) -> str | None:
    if not path.is_file():
        return None
    m = _FLICKR_PAGE.search(path.read_text(encoding="utf-8", errors="replace"))
    return m.group(1) if m else None


# ---------------------------------------------------------------------------- PASCAL VOC 2007
def read_voc2007(root: str | Path, tags_dir: str | Path | None = None, include_difficult: bool = True) -> Corpus:
    """PASCAL VOC 2007 (9,963 images, 20 classes) with the Flickr tags of Guillaumin et al. (CVPR 2010).

    ``root`` is ``VOCdevkit/VOC2007`` (or a folder holding it) with ``JPEGImages/<id>.jpg``,
    ``Annotations/<id>.xml`` (every ``object/name`` is a label; ``difficult`` objects count
    unless ``include_difficult`` is False) and ``ImageSets/Main/{trainval,test}.txt`` (the
    official split, kept in the ``official_split`` column); ``owner/flickrid`` is the user. Tags: one file per image,
    ``tags_dir/<id>.txt`` with one tag a line (default ``root/tags``); no file = no tags.
    """
    root = Path(root)
    if not (root / "Annotations").is_dir() and (root / "VOCdevkit" / "VOC2007").is_dir():
        root = root / "VOCdevkit" / "VOC2007"
    ann_dir = _need(root / "Annotations", "the VOC 2007 XML annotations")
    tags_dir = Path(tags_dir) if tags_dir is not None else root / "tags"
    official = {}
    for split, fname in (("train", "train.txt"), ("val", "val.txt"), ("test", "test.txt")):
        f = root / "ImageSets" / "Main" / fname
        if f.is_file():
            official.update({ln.split()[0]: split for ln in _lines(f) if ln.strip()})
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise CorpusError(f"{ann_dir}: no <id>.xml annotation files")
    records, owners = [], {}
    for x in tqdm(xmls, desc="VOC2007", unit="img"):
        try:
            tree = ET.parse(x).getroot()
        except ET.ParseError as e:
            raise CorpusError(f"{x}: malformed XML ({e})") from None
        image_id = x.stem
        fname = (tree.findtext("filename") or f"{image_id}.jpg").strip()
        labels = []
        for obj in tree.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise CorpusError(f"{x}: an <object> without <name>")
            if not include_difficult and (obj.findtext("difficult") or "0").strip() == "1":
                continue
            labels.append(name)
        img = root / "JPEGImages" / fname
        tag_file = tags_dir / f"{image_id}.txt"
        tags = list(dict.fromkeys(t.strip() for t in _lines(tag_file) if t.strip())) if tag_file.is_file() else []
        owner = (tree.findtext("owner/flickrid") or "").strip() or None
        if owner:
            owners.setdefault(owner, (tree.findtext("owner/name") or "").strip() or None)
        records.append({"post_id": image_id, "user_id": owner,
                        "image": str(img.resolve()) if img.is_file() else None,
                        "tags": tags, "labels": sorted(set(labels)), "official_split": official.get(image_id),
                        "flickr_id": (tree.findtext("source/flickrid") or "").strip() or None})
    corpus = _corpus(records, "voc2007", {"reader": "voc2007", "root": str(root), "tags_dir": str(tags_dir),
                                          "include_difficult": include_difficult})
    corpus.users = pd.DataFrame({"user_id": list(owners), "name": list(owners.values())}, dtype=object)
    return corpus


# ---------------------------------------------------------------------------- DMAN preparation
def prepare_dman(corpus: Corpus, n_tags: int = 1000, seed: int = 0, require_image: bool = True) -> Corpus:
    """DMAN §4.1 (after [3]): drop posts without a label (and, with ``require_image``, without an
    image file: the paper keeps only photos still on Flickr), keep the ``n_tags`` most frequent
    tags (ties broken alphabetically), drop posts left with none of them, split 4:1 at random.

    The tag vocabulary is stored in ``meta["vocabularies"]["tags"]`` in frequency order; label links
    are built separately (mmsocial.data.graph).
    """
    if n_tags < 1:
        raise ValueError(f"n_tags must be >= 1, got {n_tags}")
    keep = corpus.posts["labels"].map(len) > 0
    if require_image:
        keep &= corpus.posts["image"].notna()
    c = corpus.filter(keep.to_numpy())
    counts = Counter(t for tags in c.posts["tags"] for t in tags)
    vocab = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_tags]]
    in_vocab = set(vocab)
    posts = c.posts.copy()
    posts["tags"] = posts["tags"].map(lambda ts: [t for t in ts if t in in_vocab])
    c = Corpus(posts, c.users, c.links, c.meta, c.root).filter((posts["tags"].map(len) > 0).to_numpy())
    if len(c) == 0:
        raise CorpusError(f"{corpus.name}: no post left after the DMAN preparation (labels, images, top tags)")
    c = c.with_split(dman_split(c, seed=seed))
    labels = sorted(set().union(*c.posts["labels"]))
    meta = dict(c.meta)
    meta["vocabularies"] = {"tags": vocab, "labels": labels}
    meta["preparation"] = {"recipe": "dman", "n_tags": n_tags, "seed": seed, "require_image": require_image,
                           "posts_before": len(corpus), "posts_after": len(c)}
    c.meta = meta
    return c
