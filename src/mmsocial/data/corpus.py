"""The corpus: a folder of Parquet tables that every reader writes and every system reads.

Layout (DESIGN.md, data model)::

    CORPUS/
      posts.parquet   post_id, user_id, image, text, tags, labels, timestamp, views, days, split, ...
      users.parquet   user_id, name, ...
      links.parquet   src, dst, kind
      meta.json       name, version, vocabularies, provenance, missing-modality counts
      images/         image files referenced by posts.image (relative paths)

A missing modality is a null (None / NaN) in its column and is counted in ``meta["missing"]``;
nothing is ever filled in silently. Extra columns (e.g. the synthetic generator's ground-truth
``objects``) are kept as they are.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmsocial.io import atomic_folder, atomic_open, check_writable_folder, write_text

FORMAT_VERSION = 1

POST_COLUMNS = ["post_id", "user_id", "image", "text", "tags", "labels",
                "timestamp", "views", "days", "split"]
USER_COLUMNS = ["user_id", "name"]
LINK_COLUMNS = ["src", "dst", "kind"]
SPLITS = ("train", "val", "test")
SYNTHETIC_IMAGE_SCHEME = "synth:"


class CorpusError(ValueError):
    """A corpus is malformed; the message names the file, post and field at fault."""


def make_posts(records: Iterable[dict]) -> pd.DataFrame:
    """Build a posts table from dicts, filling absent columns with nulls and normalising types."""
    df = pd.DataFrame.from_records(list(records))
    return normalise_posts(df)


def normalise_posts(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in POST_COLUMNS:
        if c not in df.columns:
            df[c] = None
    for c in ("post_id", "user_id", "image", "text", "split"):
        df[c] = _str_or_none(df[c])
    # An empty or whitespace-only text is a missing text, recorded as such.
    df["text"] = df["text"].where(df["text"].str.strip().astype(bool) | df["text"].isna(), None)
    for c in ("tags", "labels"):
        df[c] = df[c].map(_as_str_list)
    for c in ("timestamp", "views", "days"):
        df[c] = _numbers(df, c)
    ordered = POST_COLUMNS + [c for c in df.columns if c not in POST_COLUMNS]
    return df[ordered].reset_index(drop=True)


def _numbers(df: pd.DataFrame, column: str) -> pd.Series:
    """A float column; a value that is present but not a number is an error naming the post."""
    try:
        values = pd.to_numeric(df[column], errors="coerce").astype("float64")
    except (OverflowError, TypeError, ValueError):  # a Python int beyond float range, ...
        values = pd.Series([_float_or_nan(v) for v in df[column]], index=df.index, dtype="float64")
    bad = values.isna() & df[column].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise CorpusError(f"post {df['post_id'].iloc[i]!r}: field {column!r} is {df[column].iloc[i]!r}, "
                          f"not a number")
    return values


def _float_or_nan(v) -> float:
    try:
        return float(v)
    except (OverflowError, TypeError, ValueError):
        return math.nan


def _isin(column: pd.Series, values) -> pd.Series:
    """``column.isin(values)`` through Arrow (pandas' own loops in Python over Arrow-backed strings)."""
    import pyarrow.compute as pc

    hit = pc.is_in(pa.array(column.astype(object), type=pa.string(), from_pandas=True),
                   value_set=pa.array(np.asarray(values, dtype=object), type=pa.string()))
    return pd.Series(hit.fill_null(False).to_numpy(zero_copy_only=False), index=column.index)


def _str_or_none(column: pd.Series) -> pd.Series:
    """Strings as Python objects, missing values as None (whatever dtype pandas chose on reading)."""
    values = column.astype("string").to_numpy(dtype=object, na_value=None)
    return pd.Series(values, dtype=object, index=column.index)


def _as_str_list(v) -> list[str]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    if isinstance(v, str):
        return [v]
    return [str(x) for x in v]


@dataclass
class Corpus:
    posts: pd.DataFrame
    users: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=USER_COLUMNS))
    links: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LINK_COLUMNS))
    meta: dict = field(default_factory=dict)
    root: Path | None = None

    def __post_init__(self):
        self.posts = normalise_posts(self.posts)
        if self.users is None or len(self.users.columns) == 0:
            self.users = pd.DataFrame(columns=USER_COLUMNS)
        for c in USER_COLUMNS:
            if c not in self.users.columns:
                self.users[c] = None
        self.users["user_id"] = self.users["user_id"].astype(str)
        if self.links is None or len(self.links.columns) == 0:
            self.links = pd.DataFrame(columns=LINK_COLUMNS)
        self.links = self.links.astype({"src": str, "dst": str, "kind": str}).reset_index(drop=True)
        self.meta = copy.deepcopy(dict(self.meta))  # derived corpora never share nested vocabularies
        self._index: dict[str, int] | None = None

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.posts)

    @property
    def name(self) -> str:
        return self.meta.get("name", "corpus")

    @property
    def post_index(self) -> dict[str, int]:
        """post_id -> row position in ``posts``."""
        if self._index is None or len(self._index) != len(self.posts):
            self._index = {p: i for i, p in enumerate(self.posts["post_id"])}
        return self._index

    def row(self, post_id: str) -> pd.Series:
        try:
            return self.posts.iloc[self.post_index[post_id]]
        except KeyError:
            raise CorpusError(f"{self._where()}: unknown post {post_id!r}") from None

    def tag_vocabulary(self) -> list[str]:
        return list(self.meta.get("vocabularies", {}).get("tags") or _by_frequency(self.posts["tags"]))

    def label_vocabulary(self) -> list[str]:
        return list(self.meta.get("vocabularies", {}).get("labels") or _by_frequency(self.posts["labels"]))

    def _where(self) -> str:
        return str(self.root) if self.root else f"corpus {self.name!r}"

    # ------------------------------------------------------------------ images
    def image_path(self, post_id: str) -> Path | None:
        img = self.row(post_id)["image"]
        if img is None or str(img).startswith(SYNTHETIC_IMAGE_SCHEME):
            return None
        p = Path(img)
        return p if p.is_absolute() or self.root is None else self.root / p

    def open_image(self, post_id: str):
        """The post's image as an RGB PIL image; a clear CorpusError if it is missing or corrupt."""
        from PIL import Image

        row = self.row(post_id)
        img = row["image"]
        if img is None:
            raise CorpusError(f"{self._where()}: post {post_id!r} has no image (field 'image' is missing)")
        if str(img).startswith(SYNTHETIC_IMAGE_SCHEME):
            from mmsocial.data.synthetic import render_post_image

            return render_post_image(row, self.meta)
        path = self.image_path(post_id)
        try:
            with Image.open(path) as im:
                im.draft("RGB", (1024, 1024))  # JPEG: decode at reduced size when the file is huge
                return to_rgb(im)
        except FileNotFoundError:
            raise CorpusError(f"{self._where()}: post {post_id!r}: image file {path} does not exist") from None
        except Exception as e:  # PIL raises many types for corrupt files
            raise CorpusError(f"{self._where()}: post {post_id!r}: image file {path} is unreadable ({e})") from None

    # ------------------------------------------------------------------ validation
    def validate(self, check_images: str = "exists") -> dict:
        """Check the corpus; raise CorpusError naming the culprit, else return missing-modality counts.

        check_images: "none", "exists" (each image file is present) or "decode" (each one opens).
        """
        where = self._where()
        p = self.posts
        dup = p["post_id"][p["post_id"].duplicated()]
        if len(dup):
            raise CorpusError(f"{where}: duplicate post id {dup.iloc[0]!r} (field 'post_id')")
        missing_id = p["post_id"].isna()
        if missing_id.any():
            raise CorpusError(f"{where}: row {int(np.flatnonzero(missing_id.to_numpy())[0])} of posts has no "
                              f"post id (field 'post_id' is null)")
        for c in ("views", "days", "timestamp"):
            bad = ~np.isfinite(p[c].to_numpy()) & p[c].notna().to_numpy()
            if bad.any():
                raise CorpusError(f"{where}: post {p['post_id'][bad].iloc[0]!r}: field {c!r} is not finite "
                                  f"(too large for a float, or infinite)")
        # Popularity is recorded by views and days together: one without the other is NaN popularity.
        half = p["views"].isna() != p["days"].isna()
        if half.any():
            i = int(np.flatnonzero(half.to_numpy())[0])
            missing = "views" if pd.isna(p["views"].iloc[i]) else "days"
            raise CorpusError(f"{where}: post {p['post_id'].iloc[i]!r}: field {missing!r} is NaN "
                              f"while the other popularity field is set (NaN popularity)")
        neg = (p["views"] < 0) | (p["days"] <= 0)
        if neg.any():
            raise CorpusError(f"{where}: post {p['post_id'][neg].iloc[0]!r}: views must be >= 0 and days > 0")
        if "popularity" in p.columns:
            nan = p["popularity"].isna() & p["split"].notna()
            if nan.any():
                raise CorpusError(f"{where}: post {p['post_id'][nan].iloc[0]!r}: field 'popularity' is NaN")
        bad_split = p["split"].notna() & ~p["split"].isin(SPLITS)
        if bad_split.any():
            i = int(np.flatnonzero(bad_split.to_numpy())[0])
            raise CorpusError(f"{where}: post {p['post_id'].iloc[i]!r}: field 'split' is "
                              f"{p['split'].iloc[i]!r}, expected one of {SPLITS}")
        ids = p["post_id"].to_numpy()
        for end in ("src", "dst"):
            unknown = ~_isin(self.links[end], ids)
            if unknown.any():
                r = self.links[unknown].iloc[0]
                raise CorpusError(f"{where}: link {r['src']!r} -> {r['dst']!r} ({r['kind']}) "
                                  f"points to unknown post {r[end]!r} (field {end!r} of links.parquet)")
        known_users = self.users["user_id"].to_numpy()
        if len(known_users):
            unknown = p["user_id"].notna() & ~_isin(p["user_id"], known_users)
            if unknown.any():
                r = p[unknown].iloc[0]
                raise CorpusError(f"{where}: post {r['post_id']!r}: unknown user {r['user_id']!r} "
                                  f"(field 'user_id' not in users.parquet)")
        if check_images != "none":
            for pid, img in zip(p["post_id"], p["image"]):
                if img is None or str(img).startswith(SYNTHETIC_IMAGE_SCHEME):
                    continue
                if check_images == "decode":
                    self.open_image(pid)
                elif not self.image_path(pid).is_file():
                    raise CorpusError(f"{where}: post {pid!r}: image file {self.image_path(pid)} "
                                      f"does not exist or is not a file (field 'image')")
        return self.missing_modalities()

    def missing_modalities(self) -> dict[str, int]:
        p = self.posts
        return {
            "image": int(p["image"].isna().sum()),
            "text": int(p["text"].isna().sum()),
            "user": int(p["user_id"].isna().sum()),
            "tags": int((p["tags"].map(len) == 0).sum()),
            "labels": int((p["labels"].map(len) == 0).sum()),
            "popularity": int(p["views"].isna().sum()),
        }

    def mostly_missing(self, threshold: float = 0.5) -> dict[str, float]:
        """Modality -> fraction of posts without it, for the modalities missing on more than ``threshold``."""
        n = len(self.posts)
        return {k: v / n for k, v in self.missing_modalities().items() if n and v / n > threshold}

    # ------------------------------------------------------------------ derived corpora
    def filter(self, keep: "np.ndarray | pd.Series | Callable[[pd.DataFrame], pd.Series]") -> "Corpus":
        """The posts where ``keep`` is true, with links between kept posts only and their users."""
        mask = keep(self.posts) if callable(keep) else keep
        mask = np.asarray(mask, dtype=bool)
        posts = self.posts[mask].reset_index(drop=True)
        ids = set(posts["post_id"])
        links = self.links[self.links["src"].isin(ids) & self.links["dst"].isin(ids)]
        users = self.users[self.users["user_id"].isin(set(posts["user_id"].dropna()))]
        return Corpus(posts, users.reset_index(drop=True), links, self.meta, self.root)

    def subset(self, split: str) -> "Corpus":
        return self.filter(self.posts["split"] == split)

    def with_split(self, split: "pd.Series | np.ndarray | list") -> "Corpus":
        posts = self.posts.copy()
        posts["split"] = list(split)
        return Corpus(posts, self.users, self.links, self.meta, self.root)

    def with_links(self, links: pd.DataFrame) -> "Corpus":
        return Corpus(self.posts, self.users, links, self.meta, self.root)

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict:
        p = self.posts
        n_tags = p["tags"].map(len)
        return {
            "name": self.name,
            "posts": len(p),
            "users": int(p["user_id"].nunique()),
            "distinct_tags": int(len(set().union(*p["tags"])) if len(p) else 0),
            "mean_tags_per_post": float(n_tags.mean()) if len(p) else 0.0,
            "distinct_labels": int(len(set().union(*p["labels"])) if len(p) else 0),
            "links": int(len(self.links)),
            "links_by_kind": {k: int(v) for k, v in self.links["kind"].value_counts().items()},
            "splits": {str(k): int(v) for k, v in p["split"].value_counts(dropna=False).items()},
            "missing": self.missing_modalities(),
            "mostly_missing": {k: round(f, 4) for k, f in self.mostly_missing().items()},
        }

    def describe(self) -> str:
        s = self.summary()
        lines = [f"corpus {s['name']}" + (f" at {self.root}" if self.root else "")]
        for k in ("posts", "users", "distinct_tags", "mean_tags_per_post", "distinct_labels", "links"):
            v = s[k]
            lines.append(f"  {k:<20} {v:.2f}" if isinstance(v, float) else f"  {k:<20} {v}")
        lines.append(f"  {'links by kind':<20} {s['links_by_kind']}")
        lines.append(f"  {'splits':<20} {s['splits']}")
        lines.append(f"  {'missing modalities':<20} {s['missing']}")
        if s["mostly_missing"]:
            lines.append(f"  {'empty for most posts':<20} " + ", ".join(
                f"{k} ({s['missing'][k]} of {s['posts']}, {f:.0%})" for k, f in s["mostly_missing"].items()))
        return "\n".join(lines)

    # ------------------------------------------------------------------ disk
    def save(self, path: str | os.PathLike) -> Path:
        """Write the tables, each atomically (``mmsocial.io``), into ``path`` (created if needed).

        Image files already under ``path`` (e.g. written there by a reader) are kept. To write a
        new corpus as a whole, all or nothing, use :func:`save_new_corpus`.
        """
        path = Path(path)
        check_writable_folder(path, "corpus folder")
        meta = dict(self.meta)
        meta.setdefault("name", path.name)
        meta["format_version"] = FORMAT_VERSION
        meta["missing"] = self.missing_modalities()
        meta.setdefault("vocabularies", {})
        meta["vocabularies"].setdefault("tags", _by_frequency(self.posts["tags"]))
        meta["vocabularies"].setdefault("labels", _by_frequency(self.posts["labels"]))
        for name, table in (("posts.parquet", _posts_to_arrow(self.posts)),
                            ("users.parquet", pa.Table.from_pandas(self.users, preserve_index=False)),
                            ("links.parquet", pa.Table.from_pandas(self.links[LINK_COLUMNS], preserve_index=False))):
            with atomic_open(path / name, "wb") as f:
                pq.write_table(table, f)
        write_text(path / "meta.json", json.dumps(meta, indent=1, default=str))
        self.root, self.meta = path, meta
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, validate: bool = True) -> "Corpus":
        path = Path(path)
        if not (path / "posts.parquet").is_file():
            raise CorpusError(f"{path}: not a corpus folder (no posts.parquet). Build one with "
                              f"`mmsocial data synthetic --out {path}` or another `mmsocial data` reader.")
        posts = _read_table(path / "posts.parquet")
        if "post_id" not in posts.columns:
            raise CorpusError(f"{path / 'posts.parquet'}: no 'post_id' column (columns: "
                              f"{', '.join(map(str, posts.columns[:12]))}); a corpus needs one id per post")
        users = _read_table(path / "users.parquet") if (path / "users.parquet").is_file() else None
        links = _read_table(path / "links.parquet") if (path / "links.parquet").is_file() else None
        if links is not None and len(links) and not set(LINK_COLUMNS[:2]) <= set(links.columns):
            raise CorpusError(f"{path / 'links.parquet'}: needs the columns 'src' and 'dst'")
        meta = {}
        if (path / "meta.json").is_file():
            try:
                meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise CorpusError(f"{path / 'meta.json'}: not valid JSON ({e}); restore it, or delete it "
                                  f"(the vocabularies are then recomputed from the posts)") from None
            if not isinstance(meta, dict):
                raise CorpusError(f"{path / 'meta.json'}: expected a JSON object (name, vocabularies, ...), "
                                  f"got a JSON {type(meta).__name__}")
            if not isinstance(meta.get("vocabularies", {}), dict):
                raise CorpusError(f"{path / 'meta.json'}: field 'vocabularies' must be an object")
        try:
            corpus = cls(posts, users, links, meta, path)
        except CorpusError as e:
            raise CorpusError(f"{path / 'posts.parquet'}: {e}") from None
        except (TypeError, ValueError, OverflowError) as e:
            raise CorpusError(f"{path}: cannot read the corpus tables ({type(e).__name__}: {e})") from None
        if validate:
            corpus.validate(check_images="none")
        return corpus


def _read_table(file: Path) -> pd.DataFrame:
    try:
        return pq.read_table(file).to_pandas()
    except Exception as e:  # Arrow raises several types for a damaged file
        raise CorpusError(f"{file}: cannot be read as Parquet ({type(e).__name__}: {e})") from None


def check_new_folder(path: str | os.PathLike, what: str = "corpus") -> Path:
    """A generated corpus goes only into a new or empty folder: anything else is an error naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CorpusError(f"{path}: is a file; a new {what} needs a new or empty folder (choose another --out)")
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        if entries:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise CorpusError(f"{path}: the folder exists and is not empty ({shown}); a new {what} is written "
                              f"only into a new or empty folder, so that nothing there is overwritten; "
                              f"choose another --out or remove the folder")
    try:
        check_writable_folder(path, "output folder", create=False)
    except ValueError as e:
        raise CorpusError(str(e)) from None
    return path


def save_new_corpus(corpus: "Corpus", path: str | os.PathLike,
                    fill: Callable[[Path], None] | None = None) -> "Corpus":
    """Write ``corpus`` as a new folder ``path``, all or nothing.

    ``path`` must be new or empty (:func:`check_new_folder`). Everything is written into a
    hidden temporary folder beside it (``fill(tmp)`` first, e.g. to write image files) and renamed
    to ``path`` when complete, so a kill leaves no half-built corpus at ``path``.
    """
    path = check_new_folder(path)
    corpus.meta.setdefault("name", path.name)
    with atomic_folder(path) as tmp:
        if fill is not None:
            fill(tmp)
        corpus.save(tmp)
    corpus.root = path
    return corpus


def _posts_to_arrow(posts: pd.DataFrame) -> pa.Table:
    fields = [
        pa.field("post_id", pa.string()), pa.field("user_id", pa.string()),
        pa.field("image", pa.string()), pa.field("text", pa.string()),
        pa.field("tags", pa.list_(pa.string())), pa.field("labels", pa.list_(pa.string())),
        pa.field("timestamp", pa.float64()), pa.field("views", pa.float64()),
        pa.field("days", pa.float64()), pa.field("split", pa.string()),
    ]
    base = pa.Table.from_pandas(posts[POST_COLUMNS], schema=pa.schema(fields), preserve_index=False)
    extra = [c for c in posts.columns if c not in POST_COLUMNS]
    for c in extra:
        base = base.append_column(c, pa.array(posts[c].tolist(), from_pandas=True))  # NaN -> null
    return base


def _by_frequency(lists: pd.Series) -> list[str]:
    counts: dict[str, int] = {}
    for lst in lists:
        for t in lst:
            counts[t] = counts.get(t, 0) + 1
    return sorted(counts, key=lambda t: (-counts[t], t))


def to_rgb(im):
    """RGB copy of a PIL image; transparency is composed onto white (clip art is mostly RGBA)."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.split()[-1])
        return bg
    return im.convert("RGB")
