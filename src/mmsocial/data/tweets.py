"""Real tweets with popularity: ``trump_tweets`` of the Debian package ``r-cran-dslabs`` (0.7.4).

The package unpacks (``apt-get download r-cran-dslabs && dpkg-deb -x FILE.deb DIR``) to::

    usr/lib/R/site-library/dslabs/data/Rdata.rdx   gzip-compressed R serialisation: the index
    usr/lib/R/site-library/dslabs/data/Rdata.rdb   R lazy-load database: per object 4-byte length + zlib

The index's ``variables["trump_tweets"]`` is (offset, length) into Rdata.rdb; the object is a data
frame of 20,761 tweets (2009-2018): source, id_str, text, created_at (unix seconds), retweet_count,
in_reply_to_user_id_str, favorite_count, is_retweet. It is read with the ``rdata`` package (pure Python).

``tweets_corpus`` turns that data frame into a text-only corpus (the choices, docs/uhan.md):

- post_id ``t<id_str>``; text = the tweet; image = None (no tweet carries one here);
- user_id = the posting client (``source``, e.g. "Twitter for Android"): the only author-like field of a
  one-account collection, and the clients differ in popularity and period;
- timestamp = created_at; views = retweet_count; days = 1, so the UHAN target log2(views/days + 1)
  (Eq. 24) is log2(retweets + 1): retweets accrue within days of posting, so dividing by the years
  since posting (Eq. 24's d) would measure the post's age rather than its popularity;
- retweets (``is_retweet``) and tweets without a retweet count are dropped;
- extra columns ``favorites`` (favorite_count) and ``reply`` (a reply to someone).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from mmsocial.data.corpus import Corpus, CorpusError, make_posts

log = logging.getLogger(__name__)

PACKAGE = "r-cran-dslabs"
DATA_DIR = Path("usr/lib/R/site-library/dslabs/data")
OBJECT = "trump_tweets"
COLUMNS = ("source", "id_str", "text", "created_at", "retweet_count", "favorite_count", "is_retweet")


def find_data_dir(path: str | Path) -> Path:
    """The folder holding Rdata.rdx/.rdb: ``path`` itself, or ``path/usr/lib/R/site-library/dslabs/data``."""
    path = Path(path)
    for cand in (path, path / DATA_DIR, path / "dslabs" / DATA_DIR):
        if (cand / "Rdata.rdx").is_file() and (cand / "Rdata.rdb").is_file():
            return cand
    raise CorpusError(f"{path}: no Rdata.rdx/Rdata.rdb found (looked in {path}, {path / DATA_DIR}); unpack the "
                      f"Debian package first: `apt-get download {PACKAGE} && dpkg-deb -x "
                      f"{PACKAGE}_*.deb {path}`")


def read_dslabs_object(path: str | Path, name: str = OBJECT) -> pd.DataFrame:
    """One data set of the dslabs lazy-load database as a pandas DataFrame (OFFLINE.md recipe)."""
    import warnings

    data_dir = find_data_dir(path)  # a missing file is named before a missing package
    try:
        import rdata
    except ImportError:
        raise CorpusError("reading R data needs the package rdata: pip install 'mmsocial[tweets]' "
                          "(or pip install rdata)") from None
    rdx = gzip.decompress((data_dir / "Rdata.rdx").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rdata warns about R classes it maps to plain values
        index = rdata.conversion.convert(rdata.parser.parse_data(rdx))
        variables = index["variables"]
        if name not in variables:
            raise CorpusError(f"{data_dir / 'Rdata.rdx'}: no object {name!r}; it holds {sorted(variables)[:20]}")
        offset, length = map(int, variables[name])
        with open(data_dir / "Rdata.rdb", "rb") as f:
            f.seek(offset)
            blob = f.read(length)
        if len(blob) != length:
            raise CorpusError(f"{data_dir / 'Rdata.rdb'}: truncated (object {name!r} needs bytes "
                              f"{offset}..{offset + length})")
        df = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
    if not isinstance(df, pd.DataFrame):
        raise CorpusError(f"{data_dir}: object {name!r} is a {type(df).__name__}, not a data frame")
    return df


def tweets_corpus(df: pd.DataFrame, name: str = "trump_tweets") -> Corpus:
    """The tweets data frame -> a text-only corpus whose popularity is the retweet count (module docstring)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CorpusError(f"tweets data frame: missing column(s) {missing}; has {list(df.columns)}")
    df = df.reset_index(drop=True)
    retweet = df["is_retweet"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    count = pd.to_numeric(df["retweet_count"], errors="coerce").astype("float64").to_numpy()
    ts = pd.to_numeric(df["created_at"], errors="coerce").astype("float64").to_numpy()
    keep = ~retweet & np.isfinite(count) & np.isfinite(ts) & df["id_str"].notna().to_numpy()
    dropped = int((~keep).sum())
    if dropped:
        log.info("tweets: dropped %d of %d rows (retweets, or no id / retweet count / time)", dropped, len(df))
    df, count, ts = df[keep], count[keep], ts[keep]
    if len(df) == 0:
        raise CorpusError("tweets data frame: no tweet left (all are retweets or lack a retweet count)")
    if (count < 0).any():
        raise CorpusError(f"tweets data frame: negative retweet_count on id_str "
                          f"{df['id_str'].iloc[int(np.flatnonzero(count < 0)[0])]!r}")
    ids = "t" + df["id_str"].astype(str)
    if ids.duplicated().any():
        raise CorpusError(f"tweets data frame: duplicate id_str {ids[ids.duplicated()].iloc[0][1:]!r}")
    source = df["source"].astype("string").fillna("unknown client").astype(str).tolist()
    favorites = pd.to_numeric(df["favorite_count"], errors="coerce").astype("float64").to_numpy()
    reply = (df["in_reply_to_user_id_str"].notna().to_numpy() if "in_reply_to_user_id_str" in df.columns
             else np.zeros(len(df), dtype=bool))
    texts = [None if (t is None or t is pd.NA or (isinstance(t, float) and np.isnan(t)) or not str(t).strip())
             else str(t) for t in df["text"].tolist()]
    posts = make_posts({"post_id": pid, "user_id": src, "image": None, "text": text, "tags": [], "labels": [],
                        "timestamp": float(t), "views": float(c), "days": 1.0}
                       for pid, src, text, t, c in zip(ids, source, texts, ts, count))
    posts["favorites"] = favorites
    posts["reply"] = reply
    clients = sorted(set(source))
    users = pd.DataFrame({"user_id": clients, "name": clients})
    links = pd.DataFrame({"src": pd.Series([], dtype=object), "dst": pd.Series([], dtype=object),
                          "kind": pd.Series([], dtype=object)})
    meta = {"name": name, "provenance": f"Debian {PACKAGE} 0.7.4, R object {OBJECT} (read with rdata)",
            "popularity": {"target": "log2(retweet_count + 1)", "views": "retweet_count", "days": 1,
                           "user": "posting client (source)"}}
    return Corpus(posts, users, links, meta)


def fetch_dslabs(cache: str | Path) -> Path:
    """``apt-get download r-cran-dslabs`` into ``cache`` and unpack it there (``dpkg-deb -x``); returns the folder."""
    import shutil
    import subprocess

    cache = Path(cache)
    root = cache / "root"
    if (root / DATA_DIR / "Rdata.rdx").is_file():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CorpusError(f"fetching {PACKAGE} needs apt-get and dpkg-deb; elsewhere run `apt-get download {PACKAGE} "
                          f"&& dpkg-deb -x {PACKAGE}_*.deb DIR` and pass --source DIR")
    cache.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["apt-get", "download", PACKAGE], cwd=cache, capture_output=True, text=True)
    if run.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        run = subprocess.run(["apt-get", "download", PACKAGE], cwd=cache, capture_output=True, text=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if run.returncode != 0 or not debs:
        raise CorpusError(f"`apt-get download {PACKAGE}` failed in {cache}: {run.stderr.strip()[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    return root


def read_tweets_corpus(path: str | Path, name: str = "trump_tweets") -> Corpus:
    """Read ``trump_tweets`` from an unpacked r-cran-dslabs package and convert it (``tweets_corpus``)."""
    return tweets_corpus(read_dslabs_object(path, OBJECT), name)
