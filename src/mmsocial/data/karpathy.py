"""Flickr30K / COCO (and Flickr8K) in Karpathy's split JSON (BSSAN §V-A), from the files as downloaded.

One post per image: ``text`` = its first sentence, ``captions`` = every sentence (usually 5; some
COCO images have more), ``split`` = the file's split (COCO's ``restval`` joins ``train``, as in
VSE++ and SCAN), ``image`` = the absolute path of the image file when it is present (else missing).
Sentences are the ``raw`` strings with surrounding whitespace removed (a ``raw`` may end with a space).
Layout in ``KARPATHY_LAYOUT`` and ../shared/FORMATS.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from mmsocial.data.corpus import Corpus, CorpusError, make_posts
from mmsocial.data.layouts import KARPATHY_LAYOUT  # noqa: F401

log = logging.getLogger(__name__)

FILES = {"flickr30k": "dataset_flickr30k.json", "coco": "dataset_coco.json", "flickr8k": "dataset_flickr8k.json"}
IMAGE_DIRS = {"flickr30k": "flickr30k-images", "flickr8k": "Flicker8k_Dataset", "coco": ""}
SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def find_split_file(root: Path, dataset: Optional[str] = None) -> tuple[str, Path]:
    """(dataset name, JSON path): ROOT may be the JSON file itself or the folder holding it."""
    root = Path(root)
    if root.is_file():
        name = next((k for k, f in FILES.items() if root.name == f), dataset)
        if name is None:
            raise CorpusError(f"{root}: not a Karpathy split file (expected one of {sorted(FILES.values())}); "
                              f"pass --dataset flickr30k|coco|flickr8k")
        return name, root
    names = [dataset] if dataset else list(FILES)
    for name in names:
        if name not in FILES:
            raise CorpusError(f"unknown Karpathy dataset {name!r}; choose one of {sorted(FILES)}")
        if (root / FILES[name]).is_file():
            return name, root / FILES[name]
    raise CorpusError(f"karpathy: expected {' or '.join(FILES[n] for n in names)} (Karpathy's split JSON); "
                      f"looked for it in {root} and did not find it. Expected layout: "
                      f"`mmsocial data karpathy --help` or docs/bssan.md")


def read_karpathy(root: "str | Path", images: "str | Path | None" = None, dataset: Optional[str] = None,
                  require_images: bool = False) -> Corpus:
    """Read a Karpathy split JSON into a Corpus (unsaved; image paths absolute).

    images: the folder holding the image files (default: ROOT/flickr30k-images for Flickr30K, ROOT for
    COCO, whose ``filepath`` names the sub-folder). require_images: a missing image file is an error
    naming it (otherwise the post keeps no image and one warning gives the count).
    """
    name, path = find_split_file(Path(root), dataset)
    base = Path(root) if Path(root).is_dir() else path.parent
    image_root = Path(images) if images is not None else base / IMAGE_DIRS[name]
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise CorpusError(f"{path}: expected an object with an 'images' list (Karpathy split format)")
    records, missing = [], []
    for n, im in enumerate(obj["images"]):
        where = f"{path}: images[{n}]"
        for field in ("filename", "split", "sentences"):
            if field not in im:
                raise CorpusError(f"{where}: field {field!r} is missing")
        if im["split"] not in SPLITS:
            raise CorpusError(f"{where} ({im['filename']}): split {im['split']!r} is not one of {sorted(SPLITS)}")
        sentences = [str(s.get("raw", " ".join(s.get("tokens", [])))).strip() for s in im["sentences"]]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise CorpusError(f"{where} ({im['filename']}): no sentence")
        file = image_root / im.get("filepath", "") / im["filename"]
        if not file.is_file():
            if require_images:
                raise CorpusError(f"{where}: image file {file} does not exist (looked in {image_root}); "
                                  f"pass --images FOLDER")
            missing.append(file)
        image_id = im.get("cocoid", im.get("imgid", n))
        records.append({"post_id": f"{name}-{image_id}", "image": str(file.resolve()) if file.is_file() else None,
                        "text": sentences[0], "captions": sentences, "split": SPLITS[im["split"]],
                        "filename": im["filename"]})
    if not records:
        raise CorpusError(f"{path}: the 'images' list is empty")
    if missing:
        log.warning("%s: %d of %d image files not found under %s (first: %s); those posts have no image",
                    name, len(missing), len(records), image_root, missing[0])
    posts = make_posts(records)
    if posts["post_id"].duplicated().any():
        raise CorpusError(f"{path}: duplicate image id {posts['post_id'][posts['post_id'].duplicated()].iloc[0]!r}")
    return Corpus(posts, None, None, {"name": name, "provenance": {"reader": "karpathy", "file": str(path)}})
