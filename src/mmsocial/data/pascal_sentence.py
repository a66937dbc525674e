"""Reader of the Pascal Sentence dataset (Rashtchian et al. 2010): 1,000 images, 20 classes x 50,
five sentences each. Both distributed forms are read (../shared/FORMATS.md, ``PASCAL_SENTENCE_LAYOUT``):

- the official page: one HTML file whose table has a row per image, ``<img src="<category>/<file>.jpg">``
  and a nested table of 5 sentences (images beside the HTML file);
- the scraped form: ``dataset/<category>/<file>.jpg`` and ``sentence/<category>/<file>txt`` (written
  without the dot; ``<file>.txt`` also accepted), 5 lines each, with an optional ``correspondence.csv``.

One post = one image, text = its 5 sentences joined, label = the category (folder) name. Split (EISR
§3.1, as MDCR [7]): ``train_per_class`` pairs of each class train, the rest test, chosen at random
with ``seed`` (the published split lists are not distributed).
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import numpy as np

from mmsocial.data.corpus import Corpus, CorpusError, make_posts

log = logging.getLogger(__name__)

PASCAL_SENTENCE_LAYOUT = """\
Official page form:
  ROOT/<page>.html                       table rows: <img src="<category>/<file>.jpg"> + 5 sentences
  ROOT/<category>/<file>.jpg             the images, as the page links them
Scraped form:
  ROOT/dataset/<category>/<file>.jpg     the images
  ROOT/sentence/<category>/<file>txt     5 sentences, one a line (also <file>.txt)
  ROOT/correspondence.csv                <1-based index>,<category>/<file>.jpg (optional)
"""

_IMG = re.compile(r"<img[^>]*\bsrc\s*=\s*[\"']?([^\"'\s>]+)", re.IGNORECASE)
_CELL = re.compile(r"<td[^>]*>(.*?)</td>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def _clean(s: str) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", s)).split())


def _from_html(page: Path) -> list[dict]:
    raw = page.read_text(encoding="utf-8", errors="replace")
    hits = list(_IMG.finditer(raw))
    records = []
    for i, m in enumerate(hits):
        src = m.group(1).replace("\\", "/")
        block = raw[m.end():hits[i + 1].start() if i + 1 < len(hits) else len(raw)]
        sentences = [c for c in (_clean(x) for x in _CELL.findall(block)) if c]
        parts = src.split("/")
        if len(parts) < 2:
            raise CorpusError(f"{page}: image {src!r} is not <category>/<file>.jpg")
        image = (page.parent / src)
        records.append({"post_id": f"{parts[-2]}/{Path(parts[-1]).stem}", "category": parts[-2],
                        "image": image, "sentences": sentences, "where": f"{page} (row {i + 1})"})
    return records


def _sentence_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}txt", f"{stem}.txt"):
        if (folder / name).is_file():
            return folder / name
    return None


def _from_folders(root: Path) -> list[dict]:
    dataset, sentence = root / "dataset", root / "sentence"
    if not sentence.is_dir():
        raise CorpusError(f"Pascal Sentence: expected sentence/<category>/<file>txt; looked for {sentence} and did "
                          f"not find it. Expected layout: `mmsocial data pascal-sentence --help` or docs/data.md")
    records = []
    for img in sorted(dataset.glob("*/*.jpg")):
        category, stem = img.parent.name, img.stem
        f = _sentence_file(sentence / category, stem)
        if f is None:
            raise CorpusError(f"Pascal Sentence: image {img} has no sentence file; looked for "
                              f"{sentence / category / (stem + 'txt')} and {sentence / category / (stem + '.txt')}")
        lines = [ln.strip() for ln in f.read_text(encoding="utf-8-sig", errors="replace").splitlines() if ln.strip()]
        records.append({"post_id": f"{category}/{stem}", "category": category, "image": img, "sentences": lines,
                        "where": str(f)})
    corr = root / "correspondence.csv"
    if corr.is_file():  # check that every listed image is there
        have = {r["post_id"] for r in records}
        for n, line in enumerate(corr.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            rel = line.split(",", 1)[-1].strip()
            key = f"{Path(rel).parent.name}/{Path(rel).stem}"
            if key not in have:
                raise CorpusError(f"{corr}: line {n} lists {rel}; looked for {dataset / rel} and did not find it")
    return records


def read_pascal_sentence(root: str | Path, train_per_class: int = 30, seed: int = 0) -> Corpus:
    """The Pascal Sentence dataset as a corpus (either form, see the module docstring)."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() in (".html", ".htm"):
        records = _from_html(root)
    elif (root / "dataset").is_dir():
        records = _from_folders(root)
    else:
        pages = sorted(root.glob("*.htm*")) if root.is_dir() else []
        if not pages:
            raise CorpusError(f"Pascal Sentence: expected dataset/ + sentence/ folders or the official HTML page; "
                              f"looked in {root} and found neither. Expected layout: "
                              f"`mmsocial data pascal-sentence --help` or docs/data.md")
        records = _from_html(pages[0])
    if not records:
        raise CorpusError(f"Pascal Sentence: no image found in {root}")
    short = [r["where"] for r in records if len(r["sentences"]) != 5]
    if short:
        log.warning("Pascal Sentence: %d images do not have exactly 5 sentences (first: %s)", len(short), short[0])
    rng = np.random.default_rng(seed)
    split: dict[str, str] = {}
    for category in sorted({r["category"] for r in records}):
        ids = sorted(r["post_id"] for r in records if r["category"] == category)
        order = rng.permutation(len(ids))
        for rank, i in enumerate(order):
            split[ids[i]] = "train" if rank < train_per_class else "test"
    missing = sum(not r["image"].is_file() for r in records)
    if missing:
        log.warning("Pascal Sentence: %d of %d images not found", missing, len(records))
    posts = make_posts([{"post_id": r["post_id"], "text": " ".join(r["sentences"]) or None,
                         "image": str(r["image"].resolve()) if r["image"].is_file() else None,
                         "labels": [r["category"]], "tags": [], "split": split[r["post_id"]]} for r in records])
    return Corpus(posts, None, None, {"name": "pascal_sentence", "provenance": {
        "reader": "pascal_sentence", "root": str(root), "train_per_class": train_per_class, "seed": seed}})
