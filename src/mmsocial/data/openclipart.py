"""Openclipart: a real social image collection shipped as Debian packages (public domain).

``openclipart-png`` and ``openclipart-svg`` 0.18 unpack to::

    usr/share/openclipart/png/<top>/<sub>/.../<name>.png
    usr/share/openclipart/svg/<top>/<sub>/.../<name>.svg     (same relative paths)

Each SVG carries its metadata as RDF (Dublin Core): ``dc:title``, ``dc:description``,
``dc:subject`` -> ``rdf:Bag`` -> ``rdf:li`` keywords, ``dc:creator`` -> ``cc:Agent`` ->
``dc:title`` author, and sometimes ``dc:date``. One post = one clip-art image:

- ``user_id``: the author (users.parquet keeps the author's name),
- ``text``: title + ". " + description (missing when both are empty),
- ``tags``: the keywords, lower-cased, stripped, deduplicated in order,
- ``labels``: the top-level folder ``<top>`` and, when the file sits deeper, ``<top>/<sub>``,
- ``image``: the PNG downscaled to ``max_side`` under ``images/<shard>/<post_id>.png``,
- ``timestamp``: ``dc:date`` when it holds a recognisable date, else NaN,
- links: posts by the same author (kind "author"), at most ``max_links`` drawn per post.

See docs/data.md for what is dropped.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmsocial.data.corpus import Corpus, CorpusError, check_new_folder, make_posts
from mmsocial.io import atomic_folder, atomic_open

PACKAGES = ("openclipart-png", "openclipart-svg")
TREE = Path("usr/share/openclipart")
DEFAULT_EXCLUDE = ("shapes", "special", "computer")
MAX_PNG_PIXELS = 400_000_000

NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "svg": "http://www.w3.org/2000/svg",
}
_METADATA_TAGS = {f"{{{NS['svg']}}}metadata", "metadata"}
_RDF_BLOCK = re.compile(rb"<rdf:RDF\b.*?</rdf:RDF>", re.S)
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y", "%d/%m/%Y", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S",
                 "%Y-%m-%d %H:%MZ", "%d %m %Y", "%d.%m.%Y", "%B %d, %Y", "%b %d, %Y", "%d %B %Y",
                 "%Y %B %d", "%B, %Y", "%B %Y", "%Y%m%d", "%Y-%m", "%Y")


# ---------------------------------------------------------------------------- metadata
def parse_svg_metadata(path: str | Path) -> dict | None:
    """Title, description, tags, author and date of one openclipart SVG.

    Returns None when the file has no RDF metadata; raises ValueError when it is not readable XML.
    """
    path = Path(path)
    work = _work_element(path)
    if work is None:
        return None
    title = _text(work.find("dc:title", NS))
    description = _text(work.find("dc:description", NS))
    tags = _keywords(work.find("dc:subject", NS))
    author = _text(work.find("dc:creator/cc:Agent/dc:title", NS)) or _text(work.find("dc:creator", NS))
    date = _text(work.find("dc:date", NS))
    return {"title": title, "description": description, "tags": tags, "author": author, "date": date}


def _work_element(path: Path):
    """The ``cc:Work`` element of the SVG's RDF block (None when the SVG has none)."""
    try:
        for _, el in ET.iterparse(path, events=("end",)):
            if el.tag == f"{{{NS['rdf']}}}RDF":
                return el.find("cc:Work", NS)
            if el.tag in _METADATA_TAGS:
                return None
        return None
    except ET.ParseError as xml_error:
        # Some exports are not well-formed after (or before) the metadata: parse the RDF block alone.
        raw = path.read_bytes()
        m = _RDF_BLOCK.search(raw)
        if m is None:
            raise ValueError(f"{path}: not well-formed XML ({xml_error}) and no rdf:RDF block") from None
        block = m.group(0)
        decl = b" ".join(b'xmlns:%s="%s"' % (k.encode(), v.encode()) for k, v in NS.items()
                         if b"xmlns:" + k.encode() not in block)
        try:
            root = ET.fromstring(b"<wrap " + decl + b">" + block + b"</wrap>")
        except ET.ParseError as e:
            raise ValueError(f"{path}: unreadable RDF metadata ({e})") from None
        return root.find("rdf:RDF/cc:Work", NS)


def _text(el) -> str:
    if el is None:
        return ""
    return " ".join("".join(el.itertext()).split())


def _keywords(subject) -> list[str]:
    if subject is None:
        return []
    items = [_text(li) for li in subject.iter(f"{{{NS['rdf']}}}li")]
    if not items:  # a bare <dc:subject>word, word</dc:subject>
        items = _text(subject).split(",")
    return normalise_tags(items)


def normalise_tags(items) -> list[str]:
    """Lower-case, strip, drop empties, deduplicate keeping first occurrence."""
    seen: dict[str, None] = {}
    for t in items:
        t = " ".join(str(t).lower().split())
        if t:
            seen.setdefault(t, None)
    return list(seen)


def parse_date(value: str) -> float:
    """Unix seconds (UTC) of a ``dc:date`` string in one of the formats the collection uses; NaN otherwise."""
    value = value.strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    return float("nan")


def make_text(title: str, description: str) -> str | None:
    parts = [p.strip() for p in (title, description) if p and p.strip()]
    if not parts:
        return None
    if len(parts) == 2 and parts[0].rstrip()[-1:] in ".!?":
        return parts[0] + " " + parts[1]
    return ". ".join(parts)


def user_id_of(author: str) -> str | None:
    slug = re.sub(r"[^0-9a-z]+", "_", author.lower()).strip("_")
    return slug or None


def post_id_of(relative: str) -> str:
    """Stable id of a clip-art file from its path under png/ without suffix (file names repeat across folders)."""
    return "oc" + hashlib.sha1(relative.encode("utf-8")).hexdigest()[:12]


def labels_of(relative: str) -> list[str]:
    folders = relative.split("/")[:-1]
    if not folders:
        return []
    if len(folders) == 1:
        return [folders[0]]
    return [folders[0], f"{folders[0]}/{folders[1]}"]


# ---------------------------------------------------------------------------- source tree
def find_openclipart_tree(source: str | Path | None = None, cache: str | Path | None = None,
                          download: bool = True) -> Path:
    """The folder holding ``png/`` and ``svg/``: under ``source``, else under ``cache`` (fetched there if absent)."""
    if source is not None:
        tree = _tree_under(Path(source))
        if tree is None:
            raise CorpusError(f"{source}: no openclipart tree found (expected {TREE}/png and {TREE}/svg, "
                              f"or png/ and svg/ directly). Point --source at the folder where "
                              f"`dpkg-deb -x openclipart-png_*.deb DIR` unpacked the packages.")
        return tree
    if cache is None:
        raise CorpusError("openclipart: give --source (an unpacked tree) or --cache (where to fetch it)")
    cache = Path(cache)
    tree = _tree_under(cache / "root")
    if tree is not None:
        return tree
    if not download:
        raise CorpusError(f"{cache}: no unpacked openclipart tree under {cache / 'root'}")
    return fetch_openclipart(cache)


def _tree_under(folder: Path) -> Path | None:
    for cand in (folder / TREE, folder):
        if (cand / "png").is_dir() and (cand / "svg").is_dir():
            return cand
    return None


def fetch_openclipart(cache: str | Path) -> Path:
    """``apt-get download`` the two packages into ``cache`` and unpack them into ``cache/root``."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    if shutil.which("dpkg-deb") is None or shutil.which("apt-get") is None:
        raise CorpusError("openclipart: apt-get and dpkg-deb are needed to fetch the Debian packages "
                          f"{' and '.join(PACKAGES)}. On another machine run `apt-get download "
                          f"{' '.join(PACKAGES)}` and `dpkg-deb -x FILE.deb DIR`, then pass --source DIR.")
    debs = _debs(cache)
    if len(debs) < len(PACKAGES):
        result = _apt_download(cache)
        if result.returncode != 0 and "Unable to locate" in result.stderr + result.stdout:
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            result = _apt_download(cache)
        debs = _debs(cache)
        if len(debs) < len(PACKAGES):
            raise CorpusError(f"openclipart: `apt-get download {' '.join(PACKAGES)}` failed in {cache} "
                              f"({(result.stderr or result.stdout).strip()[-400:]}). Install the packages "
                              f"(apt-get install {' '.join(PACKAGES)}) and pass --source /, or unpack "
                              f"the .deb files yourself and pass --source DIR.")
    root = cache / "root"
    partial = cache / "root.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for deb in debs.values():
        r = subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], capture_output=True, text=True)
        if r.returncode != 0:
            raise CorpusError(f"openclipart: `dpkg-deb -x {deb}` failed ({r.stderr.strip()}); delete the file "
                              f"and run again to download it anew")
    partial.rename(root)
    return root / TREE


def _debs(cache: Path) -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        files = sorted(cache.glob(f"{pkg}_*.deb"))
        if files:
            found[pkg] = files[-1]
    return found


def _apt_download(cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", *PACKAGES], cwd=cache, capture_output=True, text=True)


def collect_clipart(tree: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Distinct PNG files under ``tree/png`` -> every path where they appear (paths without suffix).

    The packages file one drawing under several categories with symbolic links; a drawing is
    one post whose labels come from all its locations. Broken links are reported, not read.
    """
    png_root = (tree / "png").resolve()
    locations: dict[str, list[str]] = {}
    problems: list[str] = []
    for p in sorted((tree / "png").rglob("*.png")):
        loc = p.relative_to(tree / "png").with_suffix("").as_posix()
        real = p.resolve()
        if not real.is_file():
            problems.append(f"png/{loc}.png: broken link or not a file; skipped")
            continue
        try:
            r = real.relative_to(png_root).with_suffix("").as_posix()
        except ValueError:
            r = loc  # a link leaving the tree: read it where it stands
        locations.setdefault(r, []).append(loc)
    for r, locs in locations.items():
        locs.sort(key=lambda loc: (loc != r, loc))  # the file's own folder first
    return dict(sorted(locations.items())), problems


# ---------------------------------------------------------------------------- images
def downscale_png(job: tuple[str, str, int]) -> tuple[str, str | None]:
    """Worker: write ``src`` downscaled to ``max_side`` at ``dst``; returns (dst, error or None)."""
    from PIL import Image

    src, dst, max_side = job
    pil_cap, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PNG_PIXELS  # restored below
    try:
        with Image.open(src) as im:
            if im.width * im.height > MAX_PNG_PIXELS:
                return dst, f"{im.width}x{im.height} pixels exceeds the cap of {MAX_PNG_PIXELS}"
            factor = max(1, max(im.width, im.height) // (2 * max_side))  # cheap box reduction first
            if im.mode not in ("RGB", "RGBA", "L", "LA"):
                im = im.convert("RGBA")
            if factor > 1:
                im = im.reduce(factor)
            im.thumbnail((max_side, max_side), Image.LANCZOS)
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(dst, "wb") as f:
                im.save(f, format="PNG", optimize=False)
        return dst, None
    except Exception as e:  # corrupt or truncated file: reported, not fatal
        return dst, f"{type(e).__name__}: {e}"
    finally:
        Image.MAX_IMAGE_PIXELS = pil_cap


def _downscale_all(jobs: list[tuple[str, str, int]], workers: int) -> dict[str, str]:
    errors: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc="openclipart images", unit="img")
    if workers <= 1 or len(jobs) < 32:
        results = map(downscale_png, jobs)
        for dst, err in results:
            if err:
                errors[dst] = err
            bar.update()
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for dst, err in pool.imap_unordered(downscale_png, jobs, chunksize=8):
                if err:
                    errors[dst] = err
                bar.update()
    bar.close()
    return errors


# ---------------------------------------------------------------------------- links
def author_links(posts: pd.DataFrame, max_links: int = 50, seed: int = 0) -> pd.DataFrame:
    """Per post, up to ``max_links`` other posts by the same author drawn at random (kind "author").

    Rows are directed (src drew dst): every post has at most ``max_links`` outgoing author links.
    """
    rng = np.random.default_rng(seed)
    src, dst = [], []
    for _, ids in posts.dropna(subset=["user_id"]).groupby("user_id", sort=True)["post_id"]:
        ids = ids.to_numpy()
        n = len(ids)
        if n < 2:
            continue
        for i in range(n):
            k = min(max_links, n - 1)
            picks = rng.choice(n - 1, size=k, replace=False)
            picks = picks + (picks >= i)  # skip the post itself
            src.extend([ids[i]] * k)
            dst.extend(ids[picks])
    return pd.DataFrame({"src": src, "dst": dst, "kind": "author"})


# ---------------------------------------------------------------------------- corpus
def build_openclipart_corpus(out: str | Path, source: str | Path | None = None,
                             cache: str | Path = Path("cache/openclipart"), max_side: int = 256,
                             limit: int | None = None, exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
                             max_links: int = 50, seed: int = 0, workers: int = 2) -> Corpus:
    """Build (and save at ``out``) a corpus from the openclipart packages; see the module docstring.

    ``exclude`` lists top-level folders to leave out (default: the mostly boilerplate
    ``shapes``, ``special`` and ``computer``). ``limit`` keeps the first N files in path order.
    Corrupt PNGs and unreadable SVGs never stop the build: they are counted in
    ``meta["provenance"]["skipped"]`` and listed in ``meta["provenance"]["problems"]``.
    """
    if max_side < 8:
        raise ValueError(f"max_side must be at least 8 pixels, got {max_side}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of posts, got {limit}")
    if max_links < 0:
        raise ValueError(f"max_links must be >= 0, got {max_links}")
    t0 = time.perf_counter()
    out = check_new_folder(out)  # a generated corpus never goes into a folder with files
    tree = find_openclipart_tree(source, cache)
    exclude = tuple(exclude or ())

    locations, problems = collect_clipart(tree)
    n_broken = len(problems)
    kept = []
    for r, locs in locations.items():
        locs = [loc for loc in locs if loc.split("/")[0] not in exclude]
        if locs:
            kept.append((r, locs))
    n_excluded = len(locations) - len(kept)
    if limit is not None:
        kept = kept[:limit]
    if not kept:
        raise CorpusError(f"{tree / 'png'}: no PNG files to read (excluded folders: {list(exclude)})")

    records, jobs = [], []
    authors: dict[str, Counter] = {}
    n_no_svg = n_bad_svg = n_no_meta = 0
    for r, locs in tqdm(kept, desc="openclipart metadata", unit="svg"):
        pid = post_id_of(r)
        svg = tree / "svg" / (r + ".svg")
        meta = None
        if not svg.is_file():
            n_no_svg += 1
            problems.append(f"png/{r}.png: no SVG (text, tags and author missing)")
        else:
            try:
                meta = parse_svg_metadata(svg)
                if meta is None:
                    n_no_meta += 1
                    problems.append(f"svg/{r}.svg: no RDF metadata (text, tags and author missing)")
            except (ValueError, OSError) as e:
                n_bad_svg += 1
                problems.append(f"svg/{r}.svg: {e} (text, tags and author missing)")
        meta = meta or {"title": "", "description": "", "tags": [], "author": "", "date": ""}
        uid = user_id_of(meta["author"])
        if uid:
            authors.setdefault(uid, Counter())[meta["author"]] += 1
        image = f"images/{pid[2:4]}/{pid}.png"
        jobs.append((str(tree / "png" / (r + ".png")), str(out / image), max_side))
        records.append({
            "post_id": pid, "user_id": uid, "image": image,
            "text": make_text(meta["title"], meta["description"]),
            "tags": meta["tags"], "labels": list(dict.fromkeys(lab for loc in locs for lab in labels_of(loc))),
            "timestamp": parse_date(meta["date"]) if meta["date"] else float("nan"),
            "views": float("nan"), "days": float("nan"), "split": None,
            "title": meta["title"] or None, "source": f"png/{r}.png",
            "folders": ["/".join(loc.split("/")[:-1]) for loc in locs],
        })

    with atomic_folder(out) as tmp:  # built beside ``out`` and renamed when complete
        jobs = [(src, str(tmp / Path(dst).relative_to(out)), side) for src, dst, side in jobs]
        corpus = _finish(tmp, out, jobs, records, authors, problems, locations, tree, t0, workers, max_side,
                         exclude, limit, n_excluded, n_broken, n_no_svg, n_bad_svg, n_no_meta, max_links, seed)
    corpus.root = out
    if problems:
        tqdm.write(f"openclipart: {len(problems)} files with problems (first: {problems[0]}); "
                   f"see meta.json provenance.problems")
    return corpus


def _finish(tmp, out, jobs, records, authors, problems, locations, tree, t0, workers, max_side, exclude, limit,
            n_excluded, n_broken, n_no_svg, n_bad_svg, n_no_meta, max_links, seed) -> Corpus:
    errors = _downscale_all(jobs, workers)
    n_oversize = sum("exceeds the cap" in e for e in errors.values())
    n_corrupt = len(errors) - n_oversize
    for rec, job in zip(records, jobs):
        if job[1] in errors:
            problems.append(f"{rec['source']}: PNG not read ({errors[job[1]]}); image missing")
            rec["image"] = None
            Path(job[1]).unlink(missing_ok=True)

    posts = make_posts(records)
    users = pd.DataFrame({"user_id": sorted(authors),
                          "name": [authors[u].most_common(1)[0][0] for u in sorted(authors)]})
    links = author_links(posts, max_links=max_links, seed=seed) if max_links else None
    meta = {
        "name": out.name,
        "provenance": {
            "source": "Debian packages openclipart-png, openclipart-svg 0.18 (public domain)",
            "tree": str(tree), "max_side": max_side, "exclude": list(exclude), "limit": limit,
            "distinct_pngs": len(locations), "excluded": n_excluded, "posts": len(posts),
            "skipped": {"png_corrupt": n_corrupt, "png_oversize": n_oversize, "broken_links": n_broken, "svg_missing": n_no_svg,
                        "svg_unreadable": n_bad_svg, "svg_without_metadata": n_no_meta},
            "problems": problems[:200],
            "author_links_per_post": max_links, "seed": seed,
            "build_seconds": round(time.perf_counter() - t0, 1),
        },
    }
    corpus = Corpus(posts, users, links, meta)
    corpus.save(tmp)
    return corpus
