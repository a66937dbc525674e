"""Readers of the three Flickr benchmarks of DMAN §4.1, from the files as users download them.

Each reader takes the folder the user unpacked the downloads into (no renaming; layouts in
``NUSWIDE_LAYOUT``, ``MIRFLICKR_LAYOUT``, ``VOC2007_LAYOUT``, docs/data.md and
../shared/FORMATS.md) and returns an (unsaved) Corpus whose image paths are absolute;
``mmsocial.systems.dman.select_posts`` / ``prepare_corpus`` then apply the paper's preparation. The datasets carry tags and labels but
no sentences, so ``posts.text`` stays missing (the tag list is the text modality).

A missing or unexpected part of a dataset folder is one CorpusError naming the file that was
expected and where it was looked for; a modality left empty for most posts is logged as a
warning (and shown by ``mmsocial data info``). Text files are read as UTF-8 with an optional
byte-order mark (``utf-8-sig``), any line ending.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmsocial.data.corpus import Corpus, CorpusError, make_posts
from mmsocial.data.layouts import MIRFLICKR_LAYOUT, NUSWIDE_LAYOUT, VOC2007_LAYOUT  # noqa: F401

log = logging.getLogger(__name__)

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
MIR_RELEVANT = ("baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people",
                "portrait", "river", "sea", "tree")
BOM = "\ufeff"


def _not_found(dataset: str, expected: str, places: list, layout_cmd: str, hint: str = "") -> CorpusError:
    """The one error for a missing part of a dataset folder: what was expected and where it was looked for."""
    where = ", ".join(str(p) for p in dict.fromkeys(places))
    return CorpusError(f"{dataset}: expected {expected}; looked for it in {where} and did not find it"
                       f"{'; ' + hint if hint else ''}. Expected layout: `mmsocial data {layout_cmd} --help` "
                       f"or docs/data.md")


def _need_file(root: Path, rel: str, what: str, dataset: str, layout_cmd: str) -> Path:
    """``root/rel``, or a CorpusError naming it (and a one-level-down copy, if the user named a parent folder)."""
    path = root / rel
    if path.exists():
        return path
    hint = ""
    below = sorted(root.glob(f"*/{rel}")) if root.is_dir() else []
    if below:
        hint = f"found {below[0]}: name {below[0].parents[len(Path(rel).parts) - 1]} instead"
    raise _not_found(dataset, f"{rel} ({what})", [path], layout_cmd, hint)


def _lines(path: Path) -> list[str]:
    """The lines of a text file: UTF-8 with or without a byte-order mark, LF or CRLF."""
    try:
        return path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError as e:
        raise CorpusError(f"{path}: unreadable ({e})") from None


def _corpus(records: list[dict], name: str, provenance: dict) -> Corpus:
    posts = make_posts(records)
    return Corpus(posts, None, None, {"name": name, "provenance": provenance})


def warn_mostly_missing(corpus: Corpus, threshold: float = 0.5) -> None:
    """Log one warning naming every modality the reader left empty for more than ``threshold`` of the posts."""
    gaps = corpus.mostly_missing(threshold)
    if gaps:
        n = len(corpus)
        parts = ", ".join(f"{k} ({round(f * n)} of {n}, {f:.0%})" for k, f in gaps.items())
        log.warning("%s: empty for most posts: %s", corpus.name, parts)


# ---------------------------------------------------------------------------- NUS-WIDE
_NUS_LINE = re.compile(r"(?:^|[\\/])([^\\/]+)[\\/](\d+)_(\w+)\.jpg$", re.IGNORECASE)


def read_nuswide(root: str | Path, images: str | Path | None = None, tags: str = "auto") -> Corpus:
    """NUS-WIDE (Chua et al. 2009): 269,648 Flickr images, 81 concepts. Layout: ``NUSWIDE_LAYOUT``.

    ``root`` is the folder holding ``ImageList/``, ``Groundtruth/`` and ``NUS_WID_Tags/``.
    Image list lines are ``<concept>\\<nnnn>_<photo id>.jpg`` (a ``C:\\ImageData\\Flickr\\``
    prefix, as in NUS-WIDE-urls.txt, is accepted too).
    ``tags``: "all" (All_Tags.txt), "1k" (AllTags1k.txt + TagList1k.txt) or "auto" (All_Tags.txt
    if present, else the 1k files). Images are looked for at ``images/<concept>/<file>`` (default
    ``root/Flickr``); absent ones (many Flickr photos are gone) are a missing image, not an error.
    """
    root = Path(root)
    if tags not in ("auto", "all", "1k"):
        raise ValueError(f"tags must be 'auto', 'all' or '1k', got {tags!r}")
    images = Path(images) if images is not None else root / "Flickr"
    need = lambda rel, what: _need_file(root, rel, what, "NUS-WIDE", "nus-wide")  # noqa: E731
    listing = need("ImageList/Imagelist.txt", "the image list")
    rel, photo_ids = _nus_image_list(listing)
    n = len(rel)

    label_dir = need("Groundtruth/AllLabels", "the 81 Labels_<concept>.txt ground-truth files")
    label_files = sorted(label_dir.glob("Labels_*.txt"))
    if not label_files:
        raise _not_found("NUS-WIDE", "Labels_<concept>.txt files (one 0/1 a line)", [label_dir], "nus-wide")
    labels: list[list[str]] = [[] for _ in range(n)]
    for f in tqdm(label_files, desc="NUS-WIDE labels", unit="concept"):
        concept = f.stem[len("Labels_"):]
        for i in np.flatnonzero(_binary_column(f, n)):
            labels[i].append(concept)

    tag_dir = root / "NUS_WID_Tags"
    use_all = tags == "all" or (tags == "auto" and (tag_dir / "All_Tags.txt").is_file())
    if tags == "auto" and not use_all and not (tag_dir / "AllTags1k.txt").is_file():
        raise _not_found("NUS-WIDE", "NUS_WID_Tags/All_Tags.txt, or NUS_WID_Tags/AllTags1k.txt with TagList1k.txt "
                         "(the tags)", [tag_dir], "nus-wide")
    if use_all:
        post_tags = _nus_all_tags(need("NUS_WID_Tags/All_Tags.txt", "the tags, <photo id> <tag> ... a line"), photo_ids)
    else:
        post_tags = _nus_tags_1k(need("NUS_WID_Tags/TagList1k.txt", "the 1,000 tag words"),
                                 need("NUS_WID_Tags/AllTags1k.txt", "the 1,000-column 0/1 tag matrix"), n)

    official = {}
    for split, fname in (("train", "TrainImagelist.txt"), ("test", "TestImagelist.txt")):
        f = root / "ImageList" / fname
        if f.is_file():
            official.update({r: split for r in _nus_image_list(f)[0]})
        else:
            log.warning("NUS-WIDE: %s not found; official_split is left empty for its posts", f)

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
    corpus = _corpus(records, "nuswide", {"reader": "nuswide", "root": str(root), "images": str(images),
                                          "tags": "All_Tags.txt" if use_all else "AllTags1k.txt",
                                          "concepts": len(label_files)})
    warn_mostly_missing(corpus)
    return corpus


def _nus_image_list(path: Path) -> tuple[list[str], list[str]]:
    """(``<concept>/<file>`` paths, photo ids) of an ImageList file."""
    rel, ids = [], []
    for j, ln in enumerate(_lines(path), start=1):
        ln = ln.strip()
        if not ln:
            continue
        m = _NUS_LINE.search(ln)
        if not m:
            raise CorpusError(f"{path} line {j}: {ln!r} is not <concept>\\<nnnn>_<photo id>.jpg")
        rel.append(f"{m.group(1)}/{m.group(2)}_{m.group(3)}.jpg")
        ids.append(m.group(3))
    if not rel:
        raise CorpusError(f"{path}: empty image list")
    return rel, ids


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


def _nus_tags_1k(vocab_file: Path, path: Path, n: int) -> list[list[str]]:
    vocab = [w.strip() for w in _lines(vocab_file) if w.strip()]
    out = []
    with open(path, "rb") as fh:
        for i, ln in enumerate(tqdm(fh, desc="NUS-WIDE tags", unit="img", total=n)):
            if i == 0 and ln.startswith(BOM.encode()):
                ln = ln[len(BOM.encode()):]
            row = np.frombuffer(b"".join(ln.split()), dtype=np.uint8)
            if len(row) == 0:
                continue
            if len(row) != len(vocab) or not np.isin(row, (ord("0"), ord("1"))).all():
                raise CorpusError(f"{path}: line {i + 1} is not {len(vocab)} space-separated 0/1 columns "
                                  f"(one per tag of {vocab_file.name})")
            out.append([vocab[j] for j in np.flatnonzero(row == ord("1"))])
    if len(out) != n:
        raise CorpusError(f"{path}: {len(out)} rows, but the image list has {n}")
    return out


# ---------------------------------------------------------------------------- MIRFlickr-25K
MIR_ANNOTATIONS = "mirflickr25k_annotations_v080"


def read_mirflickr(root: str | Path, annotations: str | Path | None = None,
                   label_set: str = "relevant") -> Corpus:
    """MIRFlickr-25K (Huiskes & Lew 2008). Layout: ``MIRFLICKR_LAYOUT``.

    ``root`` is ``mirflickr/`` (``im<N>.jpg``, ``meta/tags/tags<N>.txt``, optional
    ``meta/license/license<N>.txt`` whose Flickr page URL gives the owner = user), or the folder
    holding it. The annotations (``<concept>.txt`` / ``<concept>_r1.txt``, image numbers one a
    line) are looked for in the sibling ``mirflickr25k_annotations_v080/`` as the archives
    unpack, then in ``root/mirflickr25k_annotations_v080`` and ``root/annotations``, unless
    ``annotations`` names the folder.

    ``label_set``: "relevant" (the 14 ``_r1`` concepts, strict annotations: DMAN's 14 labels),
    "potential" (the 24 concepts of the plain files) or "both" (r1 concepts named ``<c>_r1``).
    """
    root = Path(root)
    if label_set not in ("relevant", "potential", "both"):
        raise ValueError(f"label_set must be 'relevant', 'potential' or 'both', got {label_set!r}")
    if not (root / "meta").is_dir() and not any(root.glob("im*.jpg")) and (root / "mirflickr").is_dir():
        root = root / "mirflickr"  # the user named the folder the two archives were unpacked into
    if annotations is None:
        places = [root.parent / MIR_ANNOTATIONS, root / MIR_ANNOTATIONS, root / "annotations"]
        annotations = next((p for p in places if p.is_dir()), None)
        if annotations is None:
            raise _not_found("MIRFlickr-25K", f"the annotation folder {MIR_ANNOTATIONS}/ (<concept>.txt and "
                             f"<concept>_r1.txt files)", places, "mirflickr",
                             "pass annotations= (--annotations) to name another folder")
    annotations = Path(annotations)
    if not annotations.is_dir():
        raise _not_found("MIRFlickr-25K", "the annotation folder (<concept>.txt files)", [annotations], "mirflickr")
    tag_dir = _need_file(root, "meta/tags", "the tag files tags<N>.txt", "MIRFlickr-25K", "mirflickr")
    numbers = sorted(int(m.group(1)) for p in root.glob("im*.jpg") if (m := re.fullmatch(r"im(\d+)", p.stem)))
    if not numbers:
        numbers = sorted(int(m.group(1)) for p in tag_dir.glob("tags*.txt") if (m := re.fullmatch(r"tags(\d+)", p.stem)))
        log.warning("MIRFlickr-25K: no im<N>.jpg in %s; reading the %d posts of meta/tags without images",
                    root, len(numbers))
    if not numbers:
        raise _not_found("MIRFlickr-25K", "im<N>.jpg images or meta/tags/tags<N>.txt files", [root, tag_dir],
                         "mirflickr")

    labels: dict[int, list[str]] = {k: [] for k in numbers}
    used = 0
    for f in sorted(annotations.glob("*.txt")):
        if f.stem.lower() == "readme":
            continue
        relevant = f.stem.endswith("_r1")
        concept = f.stem[:-3] if relevant else f.stem
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
        raise _not_found("MIRFlickr-25K", f"annotation files for label_set={label_set!r} "
                         f"({'<concept>_r1.txt' if label_set == 'relevant' else '<concept>.txt'})",
                         [annotations], "mirflickr")

    license_dir = root / "meta" / "license"
    if not license_dir.is_dir():
        log.warning("MIRFlickr-25K: %s not found; every post's user is left missing", license_dir)
    records = []
    for k in tqdm(numbers, desc="MIRFlickr", unit="img"):
        img = root / f"im{k}.jpg"
        tag_file = tag_dir / f"tags{k}.txt"
        if not tag_file.is_file():
            raise _not_found("MIRFlickr-25K", f"tags{k}.txt, the tags of image {k} (every image has one, "
                             f"empty when the photo has no tag)", [tag_dir], "mirflickr")
        tags = list(dict.fromkeys(t.strip() for t in _lines(tag_file) if t.strip()))
        records.append({"post_id": f"im{k}", "user_id": _flickr_owner(license_dir / f"license{k}.txt"),
                        "image": str(img.resolve()) if img.is_file() else None,
                        "tags": tags, "labels": sorted(labels[k])})
    corpus = _corpus(records, "mirflickr", {"reader": "mirflickr", "root": str(root),
                                            "annotations": str(annotations), "label_set": label_set})
    users = sorted(set(corpus.posts["user_id"].dropna()))
    corpus.users = pd.DataFrame({"user_id": users, "name": users})
    warn_mostly_missing(corpus)
    return corpus


_FLICKR_PAGE = re.compile(r"flickr\.com/photos/([^/\s]+)/\d+")


def _flickr_owner(path: Path) -> str | None:
    """The owner in the photo page URL ``flickr.com/photos/<owner>/<id>`` anywhere in the licence file
    (its exact wording is not public, so no line is assumed); None without file or URL."""
    if not path.is_file():
        return None
    m = _FLICKR_PAGE.search("\n".join(_lines(path)))
    return m.group(1) if m else None


# ---------------------------------------------------------------------------- PASCAL VOC 2007
def read_voc2007(root: str | Path, tags_dir: str | Path | None = None, with_tags: bool = True,
                 tag_set: str = "pascal07", include_difficult: bool = True) -> Corpus:
    """PASCAL VOC 2007 (9,963 images, 20 classes) with the Flickr tags of Guillaumin et al. (CVPR 2010).
    Layout: ``VOC2007_LAYOUT``.

    ``root`` is ``VOCdevkit/VOC2007`` or a folder holding ``VOCdevkit/``, with
    ``Annotations/<id>.xml`` (every ``object/name`` is a label; ``difficult`` objects count
    unless ``include_difficult`` is False; ``owner/flickrid`` is the user, the placeholder ``?``
    meaning unknown), ``JPEGImages/<id>.jpg`` and ``ImageSets/Main/{train,val,test}.txt`` (the
    official split, kept in ``official_split``).

    Tags: the LEAR files ``<tag_set>_dictionary.txt``, ``<tag_set>_{train,test}_list.txt`` and
    ``<tag_set>_{train,test}_tags.hvecs`` (or dense ``.txt``) in ``tags_dir``, by default the first
    of the named folder, ``VOC2007/``, the folder holding ``VOCdevkit/`` and their direct
    sub-folders that holds ``<tag_set>_dictionary.txt``. Their train list is VOC2007 trainval and
    their test list VOC2007 test (checked against ImageSets). ``with_tags=False`` reads VOC
    without tags (every post's tags empty, with a warning).
    """
    named = Path(root)
    root = named
    if not (root / "Annotations").is_dir() and (root / "VOCdevkit" / "VOC2007").is_dir():
        root = root / "VOCdevkit" / "VOC2007"
    need = lambda rel, what: _need_file(root, rel, what, "PASCAL VOC 2007", "voc2007")  # noqa: E731
    ann_dir = need("Annotations", "the <id>.xml annotations")
    jpeg_dir = need("JPEGImages", "the <id>.jpg images")
    sets_dir = need("ImageSets/Main", "the official split lists")
    official = {}
    for split, fname in (("train", "train.txt"), ("val", "val.txt"), ("test", "test.txt")):
        f = sets_dir / fname
        if f.is_file():
            official.update({ln.split()[0]: split for ln in _lines(f) if ln.strip()})
    if not official:
        raise _not_found("PASCAL VOC 2007", "train.txt, val.txt or test.txt (the official split)", [sets_dir],
                         "voc2007")
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise _not_found("PASCAL VOC 2007", "<id>.xml annotation files", [ann_dir], "voc2007")
    ids = [x.stem for x in xmls]

    tag_of: dict[str, list[str]] = {}
    folder = None
    if with_tags:
        folder = Path(tags_dir) if tags_dir is not None else _find_lear_folder([named, root, root.parent.parent], tag_set)
        split_tags = read_lear_tags(folder, tag_set)
        tag_of = _match_voc_tags(split_tags, ids, official, folder, tag_set)
    else:
        log.warning("PASCAL VOC 2007: read without tags (with_tags=False); every post's tags are empty")

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
        img = jpeg_dir / fname
        owner = _known(tree.findtext("owner/flickrid"))
        if owner and owners.get(owner) is None:  # an owner named on any of their images keeps that name
            owners[owner] = _known(tree.findtext("owner/name"))
        records.append({"post_id": image_id, "user_id": owner,
                        "image": str(img.resolve()) if img.is_file() else None,
                        "tags": tag_of.get(image_id, []), "labels": sorted(set(labels)),
                        "official_split": official.get(image_id),
                        "flickr_id": _known(tree.findtext("source/flickrid"))})
    corpus = _corpus(records, "voc2007", {"reader": "voc2007", "root": str(root),
                                          "tags_dir": str(folder) if folder else None,
                                          "tag_set": tag_set if with_tags else None,
                                          "include_difficult": include_difficult})
    corpus.users = pd.DataFrame({"user_id": list(owners), "name": list(owners.values())}, dtype=object)
    warn_mostly_missing(corpus)
    return corpus


def _known(value: str | None) -> str | None:
    """A VOC owner/source field: the placeholder ``?`` (and an empty field) means unknown."""
    value = (value or "").strip()
    return None if value in ("", "?") else value


def _find_lear_folder(bases: list[Path], tag_set: str) -> Path:
    places = []
    for base in dict.fromkeys(bases):
        places.append(base)
        if base.is_dir():
            places.extend(sorted(p for p in base.iterdir() if p.is_dir()))
    for p in places:
        if (p / f"{tag_set}_dictionary.txt").is_file():
            return p
    raise _not_found("PASCAL VOC 2007", f"{tag_set}_dictionary.txt, the tag files of Guillaumin et al. (CVPR 2010)",
                     [*bases, "their direct sub-folders"], "voc2007", "pass tags_dir= (--tags DIR) naming their "
                     "folder, or with_tags=False (--no-tags) to read VOC without tags")


def read_lear_tags(folder: str | Path, tag_set: str = "pascal07") -> dict[str, dict[str, list[str]]]:
    """The tags of Guillaumin, Verbeek & Schmid (CVPR 2010) as LEAR distributes them:
    ``{"train": {image name: [tag, ...]}, "test": {...}}``, tags in dictionary order.

    ``folder`` holds ``<tag_set>_dictionary.txt`` (one word a line), ``<tag_set>_<split>_list.txt``
    (image names, the row order) and ``<tag_set>_<split>_tags.hvecs`` (per row: a little-endian
    uint16 d, then d uint16 values; nonzero = the word is a tag) or the dense text form
    ``<tag_set>_<split>_tags.txt`` (d whitespace-separated numbers a line); ``.hvecs`` wins when
    both are present.
    """
    folder = Path(folder)
    need = lambda rel, what: _need_file(folder, rel, what, f"LEAR tags ({tag_set})", "voc2007")  # noqa: E731
    dict_file = need(f"{tag_set}_dictionary.txt", "the tag words, one a line")
    vocab = [w.strip() for w in _lines(dict_file) if w.strip()]
    if not vocab:
        raise CorpusError(f"{dict_file}: empty dictionary")
    out = {}
    for split in ("train", "test"):
        names = [_image_name(s) for s in _lines(need(f"{tag_set}_{split}_list.txt", f"the {split} image names"))
                 if s.strip()]
        hvecs, dense = folder / f"{tag_set}_{split}_tags.hvecs", folder / f"{tag_set}_{split}_tags.txt"
        if hvecs.is_file():
            matrix, path = _read_hvecs(hvecs), hvecs
        elif dense.is_file():
            matrix, path = _read_dense(dense), dense
        else:
            raise _not_found(f"LEAR tags ({tag_set})", f"{hvecs.name} or {dense.name} (the {split} tag matrix)",
                             [folder], "voc2007")
        if len(matrix) != len(names):
            raise CorpusError(f"{path}: {len(matrix)} rows, but {tag_set}_{split}_list.txt names {len(names)} images")
        for r, row in enumerate(matrix):
            if len(row) != len(vocab):
                raise CorpusError(f"{path}: row {r + 1} has {len(row)} values, but {dict_file.name} has "
                                  f"{len(vocab)} words")
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise CorpusError(f"{folder / f'{tag_set}_{split}_list.txt'}: image {dup[0]!r} is listed twice")
        out[split] = {name: [vocab[j] for j in np.flatnonzero(row)] for name, row in zip(names, matrix)}
    return out


def _image_name(s: str) -> str:
    """An image name of a list file: any folder and ``.jpg`` extension dropped."""
    name = s.strip().replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-4] if name.lower().endswith(".jpg") else name


def _read_hvecs(path: Path) -> list[np.ndarray]:
    raw = path.read_bytes()
    if len(raw) % 2:
        raise CorpusError(f"{path}: {len(raw)} bytes, not a whole number of uint16 values (.hvecs)")
    a = np.frombuffer(raw, dtype="<u2")
    rows, pos = [], 0
    while pos < a.size:
        d = int(a[pos])
        if pos + 1 + d > a.size:
            raise CorpusError(f"{path}: row {len(rows) + 1} announces {d} values but the file ends after "
                              f"{a.size - pos - 1} (truncated .hvecs)")
        rows.append(a[pos + 1: pos + 1 + d] != 0)
        pos += 1 + d
    return rows


def _read_dense(path: Path) -> list[np.ndarray]:
    rows = []
    for j, ln in enumerate(_lines(path), start=1):
        if not ln.strip():
            continue
        try:
            rows.append(np.array(ln.split(), dtype=float) != 0)
        except ValueError:
            raise CorpusError(f"{path} line {j}: not a row of numbers ({ln[:40]!r}...)") from None
    return rows


def _match_voc_tags(split_tags: dict[str, dict[str, list[str]]], ids: list[str], official: dict[str, str],
                    folder: Path, tag_set: str) -> dict[str, list[str]]:
    """Image id -> tags, checking the LEAR lists against VOC: train = trainval, test = test."""
    tag_of: dict[str, list[str]] = {}
    for split, tags in split_tags.items():
        voc_side = ("train", "val") if split == "train" else ("test",)
        for name in tags:
            if name in official and official[name] not in voc_side:
                raise CorpusError(f"{folder / f'{tag_set}_{split}_list.txt'}: image {name} is in VOC2007 "
                                  f"{official[name]}, but the LEAR {split} list is VOC2007 "
                                  f"{'trainval' if split == 'train' else 'test'}: wrong tag files?")
            if name in tag_of:
                raise CorpusError(f"{folder}: image {name} is in both the train and the test list")
        tag_of.update(tags)
    known = set(ids)
    matched = sum(name in known for name in tag_of)
    if matched == 0:
        raise CorpusError(f"{folder}: the {tag_set} tag lists name {len(tag_of)} images, none of them an "
                          f"Annotations/<id>.xml of this VOC folder (first: {next(iter(tag_of), None)!r})")
    untagged = len(known) - sum(i in tag_of for i in ids)
    if untagged:
        log.warning("PASCAL VOC 2007: %d of %d annotated images are in neither %s list; their tags are empty",
                    untagged, len(ids), tag_set)
    return tag_of
