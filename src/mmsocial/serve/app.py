"""FastAPI app factory: endpoints, request validation, image files, metrics and the web page.

A capability (text -> images, image -> texts, -> users, match, popularity, explanations) is served by
the first loaded run whose ``systems.Served`` has it (or the run named by ``system=``); when no run
has it the endpoint answers 404 with the command that trains one. Collections are searched through
the run's saved index (`mmsocial index build`, memory-mapped) or, without one, an exact index built
in memory at start-up.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Path as PathParam, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from mmsocial import systems
from mmsocial.data.corpus import CorpusError
from mmsocial.index import VectorIndex, VectorIndexError, build_index, run_index_dir

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_K, MAX_OFFSET, MAX_QUERY = 100, 10_000, 500
MAX_PIXELS = 40_000_000  # larger uploads are refused as decompression bombs
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp"}
# Which systems the papers give each capability: only used to say which run to train in a 404.
SUGGESTED = {"text_to_image": "dman", "image_to_image": "dman", "image_to_text": "dman", "explain": "dman",
             "users": "du2mce", "match": "bssan", "popularity": "uhan"}


class ServiceError(ValueError):
    """A run folder cannot be served; the message names it."""


# ---------------------------------------------------------------------------- response models
class PostHit(BaseModel):
    post_id: str
    score: float = Field(description="distance (metric l2: smaller is closer) or inner product (ip)")
    image_url: Optional[str] = None
    text: Optional[str] = None
    tags: list[str] = []
    user_id: Optional[str] = None
    user_name: Optional[str] = None


class TextHit(BaseModel):
    id: str
    kind: str = Field(description="word (a vocabulary word) or post (a post's text)")
    text: Optional[str] = None
    score: float


class UserHit(BaseModel):
    user_id: str
    name: Optional[str] = None
    score: float


class Page(BaseModel):
    system: str
    metric: str
    k: int
    offset: int
    total: int = Field(description="size of the searched collection")
    next_offset: Optional[int] = None
    query: dict[str, Any] = {}


class PostPage(Page):
    results: list[PostHit]


class TextPage(Page):
    results: list[TextHit]


class UserPage(Page):
    results: list[UserHit]


class Explanation(BaseModel):
    system: str
    post_id: Optional[str] = Field(None, description="the explained post (None for an upload)")
    upload: Optional[str] = Field(None, description="the uploaded file's name (None for a post)")
    image_url: Optional[str] = None
    word: str
    words: list[str]
    grid: list[int]
    weights: list[list[float]] = Field(description="attention of `word` over the region grid, rows x cols")
    maps: dict[str, list[list[float]]] = {}
    scores: dict[str, float] = {}


class RunInfo(BaseModel):
    name: str
    system: str
    run_dir: str
    metric: str
    capabilities: list[str]
    collections: dict[str, dict[str, Any]]
    info: dict[str, Any] = {}


class UserInfo(BaseModel):
    user_id: str
    name: Optional[str]
    posts: int
    k: int
    offset: int
    results: list[PostHit]


# ---------------------------------------------------------------------------- loaded runs
@dataclass
class LoadedRun:
    name: str
    served: systems.Served
    indexes: dict[str, VectorIndex]
    kinds: dict[str, str]
    display: dict[str, dict[str, str]]
    posts: Any  # posts table indexed by post_id
    users: dict[str, str]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def capabilities(self) -> list[str]:
        s, caps = self.served, []
        if "posts" in self.indexes:
            if s.embed_text:
                caps.append("text_to_image")
            caps.append("image_to_image")
        if "texts" in self.indexes:
            caps.append("image_to_text")
        if "users" in self.indexes:
            caps.append("users")
        caps += [c for c in ("explain", "match", "popularity") if getattr(s, c) is not None]
        return caps


def _load_index(served: systems.Served, name: str) -> tuple[VectorIndex, str, Optional[list[str]]]:
    folder = run_index_dir(served.run_dir, name)
    if (folder / "index.faiss").is_file():
        index = VectorIndex.load(folder)
        if index.metric != served.metric:
            raise ServiceError(f"{folder}: built with metric {index.metric}, the run's is {served.metric}; "
                               f"rebuild with `mmsocial index build {served.run_dir}`")
        kind = index.params.get("collection_kind", "post")
        display = None
        if kind == "word":
            display = [str(x) for x in index.ids]
        log.info("%s: %s index %s (%d vectors, memory-mapped: %s)", served.run_dir, name, index.kind,
                 len(index), index.mapped)
        return index, kind, display
    c = served.collections[name]()
    log.info("%s: no saved %s index; exact index built in memory (%d vectors)", served.run_dir, name, len(c.ids))
    return build_index(c.vectors, c.ids, served.metric, kind="flat"), c.kind, c.display


def load_runs(run_dirs: Sequence[str | Path]) -> list[LoadedRun]:
    runs: list[LoadedRun] = []
    for rd in run_dirs:
        try:
            served = systems.load_run(rd)
        except systems.UnknownSystemError as e:
            raise ServiceError(str(e)) from None
        name, n = served.system, 2
        while any(r.name == name for r in runs):
            name, n = f"{served.system}-{n}", n + 1
        indexes, kinds, display = {}, {}, {}
        for cname in served.collections:
            indexes[cname], kinds[cname], disp = _load_index(served, cname)
            if disp:
                display[cname] = dict(zip([str(i) for i in indexes[cname].ids], disp))
        posts = served.corpus.posts.set_index("post_id", drop=False)
        users = dict(zip(served.corpus.users["user_id"].astype(str), served.corpus.users["name"]))
        runs.append(LoadedRun(name, served, indexes, kinds, display, posts, users))
    return runs


# ---------------------------------------------------------------------------- metrics
class Metrics:
    """Request counts and latency histograms per route, in the Prometheus text format."""

    BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str, int], int] = {}
        self.hist: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self.lock:
            key = (method, route, status)
            self.counts[key] = self.counts.get(key, 0) + 1
            h = self.hist.setdefault((method, route), [0.0] * (len(self.BUCKETS) + 2))
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += 1
            h[-1] += seconds

    def render(self, runs: list[LoadedRun]) -> str:
        out = ["# HELP mmsocial_requests_total HTTP requests by method, route and status.",
               "# TYPE mmsocial_requests_total counter"]
        with self.lock:
            for (m, r, s), c in sorted(self.counts.items()):
                out.append(f'mmsocial_requests_total{{method="{m}",route="{r}",status="{s}"}} {c}')
            out += ["# HELP mmsocial_request_seconds Request latency.", "# TYPE mmsocial_request_seconds histogram"]
            for (m, r), h in sorted(self.hist.items()):
                lab = f'method="{m}",route="{r}"'
                for b, c in zip(self.BUCKETS, h):
                    out.append(f'mmsocial_request_seconds_bucket{{{lab},le="{b}"}} {int(c)}')
                out.append(f'mmsocial_request_seconds_bucket{{{lab},le="+Inf"}} {int(h[-2])}')
                out.append(f"mmsocial_request_seconds_count{{{lab}}} {int(h[-2])}")
                out.append(f"mmsocial_request_seconds_sum{{{lab}}} {h[-1]:.6f}")
        out += ["# HELP mmsocial_index_vectors Vectors in each served index.", "# TYPE mmsocial_index_vectors gauge"]
        for run in runs:
            for cname, ix in run.indexes.items():
                out.append(f'mmsocial_index_vectors{{run="{run.name}",collection="{cname}",kind="{ix.kind}"}} {len(ix)}')
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- helpers
def _no_run(capability: str, system: Optional[str] = None) -> HTTPException:
    name = (system or SUGGESTED.get(capability, "SYSTEM")).lower()
    return HTTPException(404, f"no run for system {name.upper()} ({capability}); train one with: mmsocial train "
                              f"{name} --config configs/{name}/small.yaml --corpus CORPUS --out RUN_DIR, then "
                              f"serve it with: mmsocial serve RUN_DIR")


def _clean_query(q: str) -> str:
    q = q.strip()
    if not q:
        raise HTTPException(422, "empty query: give at least one word")
    return q


def create_app(run_dirs: Sequence[str | Path], max_upload_bytes: int = 5 * 2**20) -> FastAPI:
    """The app over the runs in ``run_dirs`` (each written by `mmsocial train`)."""
    if not run_dirs:
        raise ServiceError("give at least one run folder")
    return build_app(load_runs(run_dirs), max_upload_bytes)


def build_app(runs: list[LoadedRun], max_upload_bytes: int = 5 * 2**20) -> FastAPI:
    """The app over already loaded runs (``load_runs``; bench/serve_load.py builds them from synthetic data)."""
    metrics = Metrics()
    started = time.time()
    app = FastAPI(title="mmsocial", version="0.1.0",
                  description="Search and prediction over trained mmsocial runs (docs/serving.md).")
    app.state.runs = runs

    def pick(capability: str, system: Optional[str]) -> LoadedRun:
        for run in runs:
            if system and system.lower() not in (run.name.lower(), run.served.system.lower()):
                continue
            if capability in run.capabilities:
                return run
        raise _no_run(capability, system)

    def post_row(run: LoadedRun, post_id: str):
        if post_id not in run.posts.index:
            raise HTTPException(404, f"unknown post {post_id!r} (not in the corpus of run {run.name})")
        return run.posts.loc[post_id]

    def image_url(run: LoadedRun, post_id: str, row=None) -> Optional[str]:
        row = run.posts.loc[post_id] if row is None else row
        return f"/images/{run.name}/{post_id}" if row["image"] is not None else None

    columns = {id(r): {c: r.posts[c].to_numpy() for c in ("image", "text", "tags", "user_id")} for r in runs}

    def post_hit(run: LoadedRun, post_id: str, score: float) -> PostHit:
        try:
            i = run.posts.index.get_loc(post_id)  # hash lookup; columns read as arrays (no row Series)
        except KeyError:
            return PostHit(post_id=post_id, score=score)
        col = columns[id(run)]
        uid = col["user_id"][i]
        return PostHit(post_id=post_id, score=score,
                       image_url=f"/images/{run.name}/{post_id}" if col["image"][i] is not None else None,
                       text=col["text"][i], tags=list(col["tags"][i])[:12], user_id=uid,
                       user_name=run.users.get(uid) if uid else None)

    def search(run: LoadedRun, collection: str, vector, k: int, offset: int, exclude: Optional[str] = None):
        index = run.indexes[collection]
        want = offset + k + (1 if exclude else 0)
        dist, found = index.search(np.asarray(vector, dtype=np.float32)[None], want)
        hits = [(str(i), float(d)) for i, d in zip(found[0], dist[0]) if i != "" and i != exclude]
        page = hits[offset:offset + k]
        total = len(index) - (1 if exclude else 0)
        nxt = offset + k if offset + k < min(total, MAX_OFFSET + MAX_K) else None
        return page, total, nxt

    def page_fields(run: LoadedRun, k: int, offset: int, total: int, nxt, query: dict) -> dict:
        return dict(system=run.served.system, metric=run.served.metric, k=k, offset=offset, total=total,
                    next_offset=nxt, query=query)

    def call(fn, *args):
        """Run a system's function; its ValueError / CorpusError becomes a 422 naming the problem."""
        try:
            return fn(*args)
        except (CorpusError, VectorIndexError, ValueError) as e:
            raise HTTPException(422, str(e)) from None

    def post_vector(run: LoadedRun, post_id: str) -> np.ndarray:
        row = post_row(run, post_id)
        if row["image"] is None:
            raise HTTPException(422, f"post {post_id!r} has no image (field 'image')")
        if run.served.embed_posts is None:
            raise _no_run("image_to_image")
        return call(run.served.embed_posts, [post_id])[0]

    async def read_image(file: UploadFile):
        from PIL import Image

        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"field 'file': upload larger than {max_upload_bytes} bytes")
        if not data:
            raise HTTPException(422, "field 'file': empty upload; send an image file (PNG, JPEG, GIF, WebP or BMP)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                Image.MAX_IMAGE_PIXELS = MAX_PIXELS
                with Image.open(io.BytesIO(data)) as im:
                    im.verify()
                im = Image.open(io.BytesIO(data))
                im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise HTTPException(413, f"field 'file': image has more than {MAX_PIXELS} pixels") from None
        except Exception:  # noqa: BLE001 - PIL raises many types for non-images
            raise HTTPException(415, f"field 'file': {file.filename or 'upload'} is not an image PIL can read "
                                "(PNG, JPEG, GIF, WebP or BMP)") from None
        if im.width < 1 or im.height < 1:
            raise HTTPException(415, "field 'file': image has no pixels")
        return im

    # -------------------------------------------------------------------- service
    @app.get("/health", tags=["service"])
    def health() -> dict:
        """Liveness: the loaded runs and their sizes."""
        return {"status": "ok", "uptime_s": round(time.time() - started, 1),
                "runs": {r.name: {cn: len(ix) for cn, ix in r.indexes.items()} for r in runs}}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def prometheus() -> str:
        """Request counts, latency histograms and index sizes (Prometheus text format)."""
        return metrics.render(runs)

    @app.get("/api/runs", tags=["service"], response_model=list[RunInfo])
    def list_runs():
        """The loaded runs, what each can answer and the capabilities no run has yet."""
        return [RunInfo(name=r.name, system=r.served.system, run_dir=str(r.served.run_dir), metric=r.served.metric,
                        capabilities=r.capabilities,
                        collections={c: {"kind": ix.kind, "size": len(ix), "memory_mapped": ix.mapped,
                                         "items": r.kinds[c]} for c, ix in r.indexes.items()},
                        info={k: v for k, v in r.served.info.items() if k != "vocabulary"}) for r in runs]

    @app.get("/api/vocabulary", tags=["service"])
    def vocabulary(system: Optional[str] = Query(None, max_length=50)) -> dict:
        """Words a text query can use (a run with a fixed query vocabulary, e.g. DMAN's tags)."""
        run = pick("text_to_image", system)
        return {"system": run.served.system, "words": list(run.served.info.get("vocabulary", []))}

    # -------------------------------------------------------------------- search
    K = Query(10, ge=1, le=MAX_K, description=f"results per page (1..{MAX_K})")
    OFFSET = Query(0, ge=0, le=MAX_OFFSET, description=f"results to skip (0..{MAX_OFFSET})")
    SYSTEM = Query(None, max_length=50, description="serve from this system's run (default: the first that can)")
    Q = Query(..., min_length=1, max_length=MAX_QUERY, description="words or tags")
    POST_ID = PathParam(..., min_length=1, max_length=200)

    @app.get("/api/search/images", tags=["search"], response_model=PostPage)
    async def text_to_images(q: str = Q, k: int = K, offset: int = OFFSET, system: Optional[str] = SYSTEM):
        """Tag or text query -> images. Async: the query embedding and the index search take about a
        millisecond, less than a hop to the thread pool and back."""
        q = _clean_query(q)
        run = pick("text_to_image", system)
        vector, info = call(run.served.embed_text, q)
        page, total, nxt = search(run, "posts", vector, k, offset)
        return PostPage(results=[post_hit(run, p, s) for p, s in page],
                        **page_fields(run, k, offset, total, nxt, {"q": q, **info}))

    @app.get("/api/posts/{post_id}", tags=["posts"], response_model=PostHit)
    def get_post(post_id: str = POST_ID, system: Optional[str] = SYSTEM):
        """One post of the served corpus."""
        run = runs[0] if system is None else pick("image_to_image", system)
        post_row(run, post_id)
        return post_hit(run, post_id, 0.0)

    @app.get("/api/posts/{post_id}/similar", tags=["search"], response_model=PostPage)
    def similar_to_post(post_id: str = POST_ID, k: int = K, offset: int = OFFSET, system: Optional[str] = SYSTEM):
        """Image of a post -> similar images (the post itself left out)."""
        run = pick("image_to_image", system)
        page, total, nxt = search(run, "posts", post_vector(run, post_id), k, offset, exclude=post_id)
        return PostPage(results=[post_hit(run, p, s) for p, s in page],
                        **page_fields(run, k, offset, total, nxt, {"post_id": post_id}))

    @app.get("/api/posts/{post_id}/texts", tags=["search"], response_model=TextPage)
    def texts_of_post(post_id: str = POST_ID, k: int = K, offset: int = OFFSET, system: Optional[str] = SYSTEM):
        """Image of a post -> texts (a run's vocabulary words or post texts)."""
        run = pick("image_to_text", system)
        return _text_page(run, post_vector(run, post_id), k, offset, {"post_id": post_id})

    def _text_page(run: LoadedRun, vector, k, offset, query) -> TextPage:
        page, total, nxt = search(run, "texts", vector, k, offset)
        kind = run.kinds["texts"]
        disp = run.display.get("texts", {})
        results = [TextHit(id=i, kind=kind, score=s,
                           text=disp.get(i, i) if kind == "word" else
                           (run.posts.loc[i]["text"] if i in run.posts.index else None)) for i, s in page]
        return TextPage(results=results, **page_fields(run, k, offset, total, nxt, query))

    @app.post("/api/images/similar", tags=["search"], response_model=PostPage)
    async def similar_to_upload(file: UploadFile = File(..., description="an image file"), k: int = K,
                                offset: int = OFFSET, system: Optional[str] = SYSTEM):
        """Uploaded image -> similar images."""
        run = pick("image_to_image", system)
        if run.served.embed_image is None:
            raise _no_run("image_to_image")
        im = await read_image(file)
        vector = call(run.served.embed_image, im)
        page, total, nxt = search(run, "posts", vector, k, offset)
        return PostPage(results=[post_hit(run, p, s) for p, s in page],
                        **page_fields(run, k, offset, total, nxt, {"upload": file.filename or ""}))

    @app.post("/api/images/texts", tags=["search"], response_model=TextPage)
    async def texts_of_upload(file: UploadFile = File(..., description="an image file"), k: int = K,
                              offset: int = OFFSET, system: Optional[str] = SYSTEM):
        """Uploaded image -> texts."""
        run = pick("image_to_text", system)
        if run.served.embed_image is None:
            raise _no_run("image_to_text")
        im = await read_image(file)
        return _text_page(run, call(run.served.embed_image, im), k, offset, {"upload": file.filename or ""})

    @app.get("/api/posts/{post_id}/explain", tags=["explain"], response_model=Explanation)
    def explain(post_id: str = POST_ID, q: str = Query("", max_length=MAX_QUERY,
                                                        description="query words (empty: the top word)"),
                system: Optional[str] = SYSTEM):
        """Attention of the query words over the post's image regions (heat map)."""
        run = pick("explain", system)
        row = post_row(run, post_id)
        if row["image"] is None:
            raise HTTPException(422, f"post {post_id!r} has no image (field 'image')")
        out = call(run.served.explain, post_id, q)
        return Explanation(system=run.served.system, post_id=post_id, image_url=image_url(run, post_id, row), **out)

    @app.post("/api/images/explain", tags=["explain"], response_model=Explanation)
    async def explain_upload(file: UploadFile = File(..., description="an image file"),
                             q: str = Form("", max_length=MAX_QUERY, description="query words (empty: the top word)"),
                             system: Optional[str] = SYSTEM):
        """Attention of the query words over the regions of an uploaded image (heat map)."""
        run = pick("explain", system)
        if run.served.explain_image is None:
            raise _no_run("explain", run.served.system)
        im = await read_image(file)
        out = call(run.served.explain_image, im, q)
        return Explanation(system=run.served.system, upload=file.filename or "", **out)

    # -------------------------------------------------------------------- users
    def _user_page(run: LoadedRun, vector, k, offset, query) -> UserPage:
        page, total, nxt = search(run, "users", vector, k, offset)
        return UserPage(results=[UserHit(user_id=u, name=run.users.get(u), score=s) for u, s in page],
                        **page_fields(run, k, offset, total, nxt, query))

    @app.get("/api/posts/{post_id}/users", tags=["users"], response_model=UserPage)
    def users_of_post(post_id: str = POST_ID, k: int = K, offset: int = OFFSET, system: Optional[str] = SYSTEM):
        """Post -> nearest users (a system that embeds users, e.g. DU2MCE)."""
        run = pick("users", system)
        return _user_page(run, post_vector(run, post_id), k, offset, {"post_id": post_id})

    @app.post("/api/images/users", tags=["users"], response_model=UserPage)
    async def users_of_upload(file: UploadFile = File(..., description="an image file"), k: int = K,
                              offset: int = OFFSET, system: Optional[str] = SYSTEM):
        """Uploaded image -> nearest users (a system that embeds users and images, e.g. DU2MCE)."""
        run = pick("users", system)
        if run.served.embed_image is None:
            raise _no_run("users")
        im = await read_image(file)
        return _user_page(run, call(run.served.embed_image, im), k, offset, {"upload": file.filename or ""})

    @app.get("/api/search/users", tags=["users"], response_model=UserPage)
    def text_to_users(q: str = Q, k: int = K, offset: int = OFFSET, system: Optional[str] = SYSTEM):
        """Text -> nearest users."""
        q = _clean_query(q)
        run = pick("users", system)
        if run.served.embed_text is None:
            raise _no_run("users")
        vector, info = call(run.served.embed_text, q)
        return _user_page(run, vector, k, offset, {"q": q, **info})

    @app.get("/api/users/{user_id}", tags=["users"], response_model=UserInfo)
    def get_user(user_id: str = PathParam(..., min_length=1, max_length=200), k: int = K, offset: int = OFFSET):
        """A user of the served corpus and their posts."""
        for run in runs:
            mine = run.posts.index[run.posts["user_id"].to_numpy() == user_id]
            if user_id in run.users or len(mine):
                ids = list(mine)
                return UserInfo(user_id=user_id, name=run.users.get(user_id), posts=len(ids), k=k, offset=offset,
                                results=[post_hit(run, p, 0.0) for p in ids[offset:offset + k]])
        raise HTTPException(404, f"unknown user {user_id!r}")

    # -------------------------------------------------------------------- match / popularity
    @app.post("/api/match", tags=["predict"])
    async def match(caption: str = Form(..., min_length=1, max_length=MAX_QUERY),
                    file: Optional[UploadFile] = File(None, description="an image (or give post_id)"),
                    post_id: Optional[str] = Form(None, max_length=200), system: Optional[str] = SYSTEM) -> dict:
        """Image-caption match score with its attention (BSSAN's W2R/O2W)."""
        run = pick("match", system)
        image, post_id = await _image_or_post(run, file, post_id)
        return {"system": run.served.system, **call(run.served.match, image, _clean_query(caption), post_id)}

    @app.post("/api/popularity", tags=["predict"])
    async def popularity(file: Optional[UploadFile] = File(None, description="an image (or give post_id)"),
                         post_id: Optional[str] = Form(None, max_length=200),
                         text: str = Form("", max_length=MAX_QUERY), user_id: Optional[str] = Form(None, max_length=200),
                         system: Optional[str] = SYSTEM) -> dict:
        """Popularity prediction of a new post with its attention (UHAN)."""
        run = pick("popularity", system)
        image, post_id = await _image_or_post(run, file, post_id)
        return {"system": run.served.system, **call(run.served.popularity, image, text, user_id, post_id)}

    async def _image_or_post(run: LoadedRun, file: Optional[UploadFile], post_id: Optional[str]):
        """(uploaded image, None) or (None, post id of the corpus); the system reads a post's image or its
        cached features itself."""
        if file is not None and file.filename:
            if post_id:
                raise HTTPException(422, "give either an image file (field 'file') or a post_id, not both")
            return await read_image(file), None
        if post_id:
            row = post_row(run, post_id)
            if row["image"] is None:
                raise HTTPException(422, f"post {post_id!r} has no image (field 'post_id')")
            return None, post_id
        raise HTTPException(422, "give an image file (field 'file') or a post_id")

    # -------------------------------------------------------------------- files and page
    @app.get("/images/{run_name}/{post_id}", tags=["files"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    def image_file(run_name: str = PathParam(..., max_length=100), post_id: str = POST_ID):
        """A post's image, read from its corpus folder only."""
        run = next((r for r in runs if r.name == run_name), None)
        if run is None:
            raise HTTPException(404, f"unknown run {run_name!r}")
        corpus = run.served.corpus
        row = post_row(run, post_id)
        if row["image"] is None:
            raise HTTPException(404, f"post {post_id!r} has no image")
        path = corpus.image_path(post_id)
        if path is None:  # synthetic posts without image files are rendered
            buf = io.BytesIO()
            call(corpus.open_image, post_id).save(buf, format="PNG")
            return Response(buf.getvalue(), media_type="image/png")
        root = Path(corpus.root).resolve()
        real = path.resolve()
        if not real.is_relative_to(root):
            raise HTTPException(403, f"image of post {post_id!r} lies outside the corpus folder; not served")
        if real.suffix.lower() not in IMAGE_TYPES or not real.is_file():
            raise HTTPException(404, f"image file of post {post_id!r} is missing or not an image file")
        return FileResponse(real, media_type=IMAGE_TYPES[real.suffix.lower()])

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        if name not in files:
            raise HTTPException(404, f"no static file {name!r}")
        kind = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}.get(files[name].suffix, "text/plain")
        return FileResponse(files[name], media_type=kind)

    app.add_middleware(LimitsAndMetrics, metrics=metrics, max_body=max_upload_bytes + 65536,
                       max_upload_bytes=max_upload_bytes)
    return app


class LimitsAndMetrics:
    """Pure ASGI middleware (no BaseHTTPMiddleware task per request): refuses a body declared larger than
    the upload limit before it is read, and records each response's status and latency by route."""

    def __init__(self, app, metrics: "Metrics", max_body: int, max_upload_bytes: int):
        self.app, self.metrics, self.max_body, self.max_upload_bytes = app, metrics, max_body, max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = [500]
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status[0] = 413
            await JSONResponse({"detail": f"request body larger than {self.max_upload_bytes} bytes"}, 413)(
                scope, receive, send)
            return self.metrics.observe(scope["method"], "unmatched", 413, time.perf_counter() - t)

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")  # set by the router (it updates the shared scope)
            self.metrics.observe(scope["method"], getattr(route, "path", "unmatched"), status[0],
                                 time.perf_counter() - t)
