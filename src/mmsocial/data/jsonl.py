"""Generic JSONL reader: one post a line.

    {"post_id": "p1", "user_id": "u7", "user_name": "Ann", "image": "imgs/p1.jpg",
     "text": "a red bus", "tags": ["bus", "red"], "labels": ["vehicle"],
     "timestamp": "2020-05-01T12:00:00Z", "views": 120, "days": 3, "split": "train",
     "links": ["p2", "p5"], "anything_else": ...}

Only ``post_id`` is required; a missing or null field is a missing modality. ``image`` is a
path relative to ``images_root`` (default: the JSONL file's folder) and is stored absolute, so
the corpus can be saved anywhere. ``timestamp`` is unix seconds or ISO-8601 (UTC when no zone
is given). ``links`` become rows of links.parquet with kind "explicit". ``user_name`` fills
users.parquet. Other keys become extra columns of posts.parquet.

User interests (DU2MCE Table 3) come from a user-level field of the post line, ``"user_interest":
"fashion"``, or from a users file (``users_file``), one user a line:
``{"user_id": "u7", "name": "Ann", "interest": "fashion"}``; both fill users.parquet ``interest``.
Rules (docs/data.md): a ``user_interest`` on a post without ``user_id`` is an error; two different
interests for one user (two posts, or a post and the users file) are an error naming both lines; a
users-file line for a user with no post is kept in users.parquet (its ``posts`` count is 0, systems
that learn from posts skip it) and counted in ``meta["users_without_posts"]``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from mmsocial.data.corpus import Corpus, CorpusError, make_posts

log = logging.getLogger(__name__)

KNOWN_KEYS = ("post_id", "user_id", "user_name", "image", "text", "tags", "labels", "timestamp",
              "views", "days", "split", "links", "user_interest")


def read_jsonl_corpus(file: str | Path, images_root: str | Path | None = None,
                      check_images: bool = True, allow_outside_root: bool = False,
                      users_file: str | Path | None = None) -> Corpus:
    """Read a JSONL file into a Corpus (not saved; call ``.save(folder)``).

    Raises CorpusError naming the file, line and field of the first bad value. A relative image
    path that leaves ``images_root`` (``../../etc/passwd``) is an error unless
    ``allow_outside_root``; absolute paths are taken as the user wrote them.
    ``users_file``: an optional JSONL file of users (``user_id``, ``name``, ``interest``).
    """
    file = Path(file)
    if not file.is_file():
        raise CorpusError(f"{file}: no such JSONL file")
    images_root = Path(images_root) if images_root is not None else file.parent
    if not images_root.is_dir():
        raise CorpusError(f"{images_root}: images_root is not a folder")
    images_root = images_root.resolve()

    records, links, users, extras = [], [], {}, {}
    interests: dict[str, tuple[str, str]] = {}  # user -> (interest, where it was given)
    line_of: dict[str, int] = {}
    for n, where, obj in _json_objects(file):
        rec = _post(obj, where, images_root, check_images, allow_outside_root)
        pid = rec["post_id"]
        if pid in line_of:
            raise CorpusError(f"{where}: duplicate post_id {pid!r} (first on line {line_of[pid]})")
        line_of[pid] = n
        if rec["user_id"] is not None:
            name = _optional_str(obj.get("user_name"), where, "user_name")
            if name is not None or rec["user_id"] not in users:
                users[rec["user_id"]] = name
        interest = _optional_str(obj.get("user_interest"), where, "user_interest")
        if interest is not None:
            if rec["user_id"] is None:
                raise CorpusError(f"{where}: field 'user_interest' is given but the post has no user_id; "
                                  f"an interest belongs to a user")
            _set_interest(interests, rec["user_id"], interest.strip(), where)
        for dst in _id_list(obj.get("links"), where, "links"):
            links.append((pid, dst, n))
        for k, v in obj.items():
            if k not in KNOWN_KEYS:
                extras.setdefault(k, {})[pid] = v
        records.append(rec)
    if not records:
        raise CorpusError(f"{file}: no posts (the file is empty)")

    for src, dst, n in links:
        if dst not in line_of:
            raise CorpusError(f"{file} line {n}: field 'links' names unknown post {dst!r}")
    posts = make_posts(records)
    for k, values in extras.items():
        posts[k] = _extra_column([values.get(p) for p in posts["post_id"]])
    post_counts = posts["user_id"].value_counts().to_dict()
    without_posts = []
    if users_file is not None:
        without_posts = _read_users_file(Path(users_file), users, interests, post_counts)
    users_df = pd.DataFrame({"user_id": list(users), "name": list(users.values())}, dtype=object)
    if users_file is not None:
        users_df["posts"] = [int(post_counts.get(u, 0)) for u in users]
    if interests:
        users_df["interest"] = pd.Series([interests[u][0] if u in interests else None for u in users], dtype=object)
    links_df = pd.DataFrame({"src": [s for s, _, _ in links], "dst": [d for _, d, _ in links],
                             "kind": "explicit"})
    meta = {"name": file.stem, "provenance": {"source": str(file.resolve()), "reader": "jsonl",
                                              "images_root": str(images_root)}}
    if users_file is not None:
        meta["provenance"]["users_file"] = str(Path(users_file).resolve())
        meta["users_without_posts"] = len(without_posts)
    corpus = Corpus(posts, users_df, links_df, meta)
    try:
        corpus.validate(check_images="none")
    except CorpusError as e:
        raise CorpusError(f"{file}: {e}") from None
    return corpus


def _set_interest(interests: dict, user: str, interest: str, where: str) -> None:
    if not interest:
        raise CorpusError(f"{where}: the interest of user {user!r} is an empty string")
    old = interests.get(user)
    if old is not None and old[0] != interest:
        raise CorpusError(f"{where}: user {user!r} has interest {interest!r} here but {old[0]!r} at {old[1]}; "
                          f"a user has one interest")
    if old is None:
        interests[user] = (interest, where)


def _read_users_file(path: Path, users: dict, interests: dict, post_counts: dict) -> list[str]:
    """Add the users file's names and interests; returns the users it lists that have no post."""
    if not path.is_file():
        raise CorpusError(f"{path}: no such users file (JSONL, one user a line: user_id, name, interest)")
    seen: dict[str, int] = {}
    without_posts = []
    for n, where, obj in _json_objects(path):
        uid = _optional_id(obj.get("user_id"), where, "user_id")
        if uid is None:
            raise CorpusError(f"{where}: field 'user_id' is missing")
        if uid in seen:
            raise CorpusError(f"{where}: duplicate user_id {uid!r} (first on line {seen[uid]})")
        seen[uid] = n
        unknown = set(obj) - {"user_id", "name", "interest"}
        if unknown:
            raise CorpusError(f"{where}: unknown field(s) {sorted(unknown)}; a users line holds user_id, name "
                              f"and interest")
        name = _optional_str(obj.get("name"), where, "name")
        if uid not in users:
            without_posts.append(uid)
            users[uid] = name
        elif name is not None:
            users[uid] = name
        interest = _optional_str(obj.get("interest"), where, "interest")
        if interest is not None:
            _set_interest(interests, uid, interest.strip(), where)
    if without_posts:
        log.warning("%s: %d user(s) have no post in the corpus (kept in users.parquet with posts = 0): %s",
                    path, len(without_posts), ", ".join(without_posts[:5]))
    return without_posts


def _post(obj: dict, where: str, images_root: Path, check_images: bool, allow_outside_root: bool = False) -> dict:
    pid = obj.get("post_id")
    if pid is None or isinstance(pid, (bool, float, list, dict)) or str(pid).strip() == "":
        raise CorpusError(f"{where}: field 'post_id' is missing or not a string/integer ({pid!r})")
    return {
        "post_id": str(pid),
        "user_id": _optional_id(obj.get("user_id"), where, "user_id"),
        "image": _image(obj.get("image"), where, images_root, check_images, allow_outside_root),
        "text": _optional_str(obj.get("text"), where, "text"),
        "tags": _str_list(obj.get("tags"), where, "tags"),
        "labels": _str_list(obj.get("labels"), where, "labels"),
        "timestamp": parse_timestamp(obj.get("timestamp"), where),
        "views": _number(obj.get("views"), where, "views"),
        "days": _number(obj.get("days"), where, "days"),
        "split": _optional_str(obj.get("split"), where, "split"),
    }


def parse_timestamp(value, where: str = "timestamp") -> float:
    """Unix seconds from a number, a numeric string or an ISO-8601 string (UTC if no zone); NaN for null."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise CorpusError(f"{where}: field 'timestamp' is a boolean")
    if isinstance(value, (int, float)):
        return _finite(value, where, "timestamp")
    if isinstance(value, str):
        s = value.strip()
        try:
            number = float(s)
        except ValueError:
            pass
        else:
            return _finite(number, where, "timestamp", shown=s)
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise CorpusError(f"{where}: field 'timestamp' is {value!r}, expected unix seconds "
                              f"or ISO-8601 (e.g. 2020-05-01T12:00:00Z)") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        try:
            return dt.timestamp()
        except (OverflowError, ValueError, OSError):
            raise CorpusError(f"{where}: field 'timestamp' is {value!r}, out of the range of dates") from None
    raise CorpusError(f"{where}: field 'timestamp' is a {type(value).__name__}, expected a number or string")


def _image(value, where: str, images_root: Path, check: bool, allow_outside_root: bool = False) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field 'image' must be a path string, got {type(value).__name__}")
    if "://" in value:
        raise CorpusError(f"{where}: field 'image' is a URL ({value}); download the images and give "
                          f"paths relative to --images-root")
    path = Path(value)
    if not path.is_absolute():
        path = images_root / path
        inside = Path(os.path.normpath(path))
        if not allow_outside_root and not inside.is_relative_to(images_root):
            raise CorpusError(f"{where}: field 'image': {value!r} leads outside the images root {images_root}; "
                              f"give a path inside it, change --images-root, or pass --allow-outside-root "
                              f"if the images really are elsewhere")
        path = inside
    if check and not path.is_file():
        raise CorpusError(f"{where}: field 'image': file {path} does not exist (paths are relative to "
                          f"{images_root}; pass --images-root to change that)")
    return str(path)


def _optional_str(value, where: str, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _optional_id(value, where: str, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(f"{where}: field {field!r} must be a string or integer, got {value!r}")
    return str(value) if str(value).strip() else None


def _str_list(value, where: str, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                              for v in value):
        raise CorpusError(f"{where}: field {field!r} must be a list of strings, got {value!r}")
    return list(dict.fromkeys(s for s in (str(v).strip() for v in value) if s))


def _id_list(value, where: str, field: str) -> list[str]:
    return _str_list(value, where, field)


def _number(value, where: str, field: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CorpusError(f"{where}: field {field!r} must be a number, got {value!r}")
    return _finite(value, where, field)


def _finite(value, where: str, field: str, shown: str | None = None) -> float:
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        shown = str(value) if shown is None else shown
        shown = shown if len(shown) <= 24 else shown[:20] + "..."
        raise CorpusError(f"{where}: field {field!r} is {shown}, too large for a float (not finite)")
    return number


def _extra_column(values: list) -> list:
    """Keep a column of one JSON type as is; numbers mixed int/float become floats; anything
    else mixed (or objects) is stored as JSON text so Parquet can hold it."""
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, float} and kinds:
        return [None if v is None else float(v) for v in values]
    if len(kinds) == 1 and kinds <= {str, bool}:
        return values
    if len(kinds) == 1 and kinds == {list} and all(isinstance(x, str) for v in values if v for x in v):
        return values
    return [None if v is None else json.dumps(v, sort_keys=True) for v in values]


def _json_objects(path):
    """(n, "<path> line <n>", object) for each non-empty line of a JSONL file; a bad line is an error naming it."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            where = f"{path} line {n}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise CorpusError(f"{where}: not UTF-8 ({e})") from None
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{where}: bad JSON ({e.msg}; column {e.colno})") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield n, where, obj
