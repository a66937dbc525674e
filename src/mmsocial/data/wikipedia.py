"""Reader of the Wikipedia cross-modal dataset (Rasiwasia et al., ACM MM 2010) as distributed.

Layout (../shared/FORMATS.md, ``WIKIPEDIA_LAYOUT``): ROOT (the unpacked ``wikipedia_dataset/``) holds
``trainset_txt_img_cat.list`` (2,173 lines) and ``testset_txt_img_cat.list`` (693): tab-separated
``<text id>\\t<image id>\\t<category 1..10>``; ``categories.list`` (category k = line k);
``texts/<text id>.xml`` (the section between ``<text>`` and ``</text>``, not always valid XML) and
``images/<category name>/<image id>.jpg``. One post = one listed (text, image) pair, labelled with its
category, ``split`` = the official list it comes from.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

from mmsocial.data.corpus import Corpus, CorpusError, make_posts

log = logging.getLogger(__name__)

WIKIPEDIA_LAYOUT = """\
ROOT/                                    wikipedia_dataset/ as unpacked (or the folder holding it)
  trainset_txt_img_cat.list              <text id>\\t<image id>\\t<category 1..10> a line (2,173)
  testset_txt_img_cat.list               same format (693)
  categories.list                        the 10 category names, category k = line k
  texts/<text id>.xml                    <document>...<text>the article section</text>...
  images/<category name>/<image id>.jpg  the images
"""

LISTS = (("train", "trainset_txt_img_cat.list"), ("test", "testset_txt_img_cat.list"))
_TEXT = re.compile(r"<text>(.*?)</text>", re.DOTALL | re.IGNORECASE)


def _root(root: Path) -> Path:
    if not (root / LISTS[0][1]).is_file() and (root / "wikipedia_dataset" / LISTS[0][1]).is_file():
        return root / "wikipedia_dataset"
    return root


def _need(root: Path, rel: str, what: str) -> Path:
    path = root / rel
    if not path.exists():
        raise CorpusError(f"Wikipedia: expected {rel} ({what}); looked for {path} and did not find it. "
                          f"Expected layout: `mmsocial data wikipedia --help` or docs/data.md")
    return path


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8-sig", errors="replace").splitlines() if ln.strip()]


def read_text_file(path: Path) -> str:
    """The article section of one ``texts/<id>.xml`` file (entities unescaped, whitespace collapsed)."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    m = _TEXT.search(raw)
    if m is None:
        raise CorpusError(f"{path}: no <text>...</text> section")
    return " ".join(html.unescape(m.group(1)).split())


def read_wikipedia(root: str | Path) -> Corpus:
    """The Wikipedia dataset as a corpus: 2,866 pairs, 10 classes, the official train/test lists."""
    root = _root(Path(root))
    categories = [c.strip() for c in _lines(_need(root, "categories.list", "the 10 category names"))]
    texts_dir = _need(root, "texts", "the <text id>.xml article sections")
    images_dir = _need(root, "images", "the images/<category>/<image id>.jpg files")
    records, missing_images = [], 0
    for split, name in LISTS:
        path = _need(root, name, f"the official {split} list")
        for n, line in enumerate(_lines(path), 1):
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) != 3 or not parts[2].strip().isdigit():
                raise CorpusError(f"{path}: line {n}: expected <text id>\\t<image id>\\t<category 1..10>, got {line!r}")
            text_id, image_id, k = parts[0].strip(), parts[1].strip(), int(parts[2])
            if not 1 <= k <= len(categories):
                raise CorpusError(f"{path}: line {n}: category {k} outside 1..{len(categories)} (categories.list)")
            category = categories[k - 1]
            text_file = texts_dir / f"{text_id}.xml"
            if not text_file.is_file():
                raise CorpusError(f"Wikipedia: {path.name} line {n} names text {text_id!r}; looked for "
                                  f"{text_file} and did not find it")
            image = images_dir / category / f"{image_id}.jpg"
            missing_images += not image.is_file()
            records.append({"post_id": text_id, "text": read_text_file(text_file),
                            "image": str(image.resolve()) if image.is_file() else None,
                            "labels": [category], "tags": [], "split": split, "image_id": image_id})
    if missing_images:
        log.warning("Wikipedia: %d of %d listed images not found under %s", missing_images, len(records), images_dir)
    return Corpus(make_posts(records), None, None, {"name": "wikipedia", "provenance": {
        "reader": "wikipedia", "root": str(root), "categories": categories}})
