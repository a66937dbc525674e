"""Nearest-neighbour indexes over embeddings (FAISS), saved next to a run and memory-mapped on load.

    from mmsocial.index import build_index, VectorIndex
    index = build_index(vectors, ids, metric="l2")          # exact up to EXACT_MAX rows, IVF-Flat above
    distances, found = index.search(queries, k=10)          # found: (n, k) ids, "" where fewer than k
    index.add(new_vectors, new_ids)                         # new posts, no rebuild
    index.save("runs/x/index/posts"); VectorIndex.load("runs/x/index/posts")   # mmap by default

Kinds:
  ``flat``   exact search (``IndexFlatL2`` / ``IndexFlatIP``); the default for small collections.
  ``ivfflat`` ``IndexIVFFlat``: a k-means coarse quantiser with nlist ≈ 2√n lists holding the exact
             vectors; a query scans the ``nprobe`` nearest lists (default 8). The default above
             ``EXACT_MAX`` rows: no compression, so the distances it returns are exact and recall
             depends on nprobe only. Adding vectors files them in their nearest list (no retraining).
  ``hnsw``   ``IndexHNSWFlat`` (M links per node, efConstruction, efSearch). Adding vectors extends
             the graph (no rebuild).
  ``ivfpq``  ``IndexIVFPQ`` (k-means coarse quantiser + product quantisation) wrapped in
             ``IndexRefineFlat``: the PQ candidates are re-ranked with the exact vectors. Adding
             vectors encodes them with the trained quantisers (no retraining).

Memory mapping (``load(mmap=True)``): ``flat`` and ``hnsw`` are read with ``faiss.IO_FLAG_MMAP_IFC``:
the stored vectors (the bulk of the file) stay in the file and are paged in on demand; the HNSW
graph itself is read into memory. ``ivfflat`` is read with ``faiss.IO_FLAG_MMAP``: its inverted lists
(the vectors) stay in the file, the centroids are read into memory. ``ivfpq`` is read whole: FAISS has no memory map for a refine
index's stored vectors, and ``IO_FLAG_MMAP`` maps only plain IVF inverted lists. A mapped index is
read-only (FAISS aborts the process when a mapped vector store is resized), so ``add`` on a mapped
index first reads the file into memory, then adds.

Ids are strings (post ids), saved as a NumPy array (``ids.npy``, memory-mapped too).
``metric="l2"`` returns Euclidean distances (smaller is closer); ``"ip"`` inner products (larger
is closer); ``VectorIndex.closer_first`` says which.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["EXACT_MAX", "KINDS", "METRICS", "VectorIndexError", "VectorIndex", "build_index", "exact_search",
           "set_search_threads",
           "recall_at_k", "tie_aware_recall", "probe_queries", "run_index_dir", "build_run_indexes", "add_new_posts"]

EXACT_MAX = 100_000  # collections up to this size get exact search by default
KINDS = ("flat", "ivfflat", "hnsw", "ivfpq")
MAPPED = {"flat": "IO_FLAG_MMAP_IFC", "hnsw": "IO_FLAG_MMAP_IFC", "ivfflat": "IO_FLAG_MMAP"}  # kind -> faiss flag
METRICS = ("l2", "ip")
INDEX_FILE, IDS_FILE, MANIFEST = "index.faiss", "ids.npy", "index.json"


_SEARCH_THREADS: list[Optional[int]] = [None]


def set_search_threads(n: Optional[int]) -> None:
    """FAISS (OpenMP) threads per search, applied in whichever thread searches (OpenMP's setting is per
    thread: one set in the main thread does not reach a server's worker threads). None: FAISS's default."""
    _SEARCH_THREADS[0] = n


class VectorIndexError(ValueError):
    """An index file is missing, or a vector does not fit an index; the message names the path or field."""


def _faiss():
    import faiss

    return faiss


def _as_matrix(x, name: str, dim: Optional[int] = None) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise VectorIndexError(f"{name}: expected a (n, d) matrix, got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise VectorIndexError(f"{name}: vectors have {a.shape[1]} dimensions, the index has {dim}")
    if not np.isfinite(a).all():
        raise VectorIndexError(f"{name}: contains NaN or infinite values")
    return a


@dataclass
class VectorIndex:
    """A FAISS index plus the string id of each stored row and how it was built."""

    index: object  # faiss.Index
    ids: np.ndarray  # (ntotal,) str
    metric: str
    kind: str
    params: dict = field(default_factory=dict)
    path: Optional[Path] = None
    mapped: bool = False

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def closer_first(self) -> str:
        """'smaller' (l2 distances) or 'larger' (inner products)."""
        return "smaller" if self.metric == "l2" else "larger"

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def set_search_params(self, ef_search: Optional[int] = None, nprobe: Optional[int] = None) -> None:
        f = _faiss()
        if ef_search is not None and self.kind == "hnsw":
            self.index.hnsw.efSearch = int(ef_search)
            self.params["ef_search"] = int(ef_search)
        if nprobe is not None and self.kind in ("ivfpq", "ivfflat"):
            f.extract_index_ivf(self.index).nprobe = int(nprobe)
            self.params["nprobe"] = int(nprobe)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances or scores (n, k), ids (n, k)); rows found fewer than k times end in ("", nan)."""
        if k < 1:
            raise VectorIndexError(f"k must be >= 1, got {k}")
        q = _as_matrix(queries, "queries", self.dim)
        if _SEARCH_THREADS[0] is not None:
            _faiss().omp_set_num_threads(_SEARCH_THREADS[0])
        kk = min(int(k), len(self))
        if kk == 0:
            return np.full((len(q), k), np.nan, np.float32), np.full((len(q), k), "", dtype=object)
        d, i = self.index.search(q, kk)
        if self.metric == "l2":
            d = np.sqrt(np.maximum(d, 0))
        found = np.full((len(q), k), "", dtype=object)
        dist = np.full((len(q), k), np.nan, np.float32)
        ok = i >= 0
        found[:, :kk][ok] = self.ids[i[ok]]
        dist[:, :kk][ok] = d[ok]
        return dist, found

    def add(self, vectors, ids: Sequence[str]) -> None:
        """Add new rows (e.g. new posts) without rebuilding; ids must be new."""
        v = _as_matrix(vectors, "vectors", self.dim)
        ids = np.asarray([str(x) for x in ids])
        if len(ids) != len(v):
            raise VectorIndexError(f"{len(v)} vectors but {len(ids)} ids")
        clash = set(ids.tolist()) & set(self.ids.tolist())
        if clash or len(set(ids.tolist())) != len(ids):
            raise VectorIndexError(f"ids already in the index or repeated: {sorted(clash)[:5] or 'repeated ids'}")
        if self.mapped:  # a memory-mapped vector store cannot grow: read the file into memory first
            self.index = _faiss().read_index(str(self.path / INDEX_FILE))
            self.mapped = False
        self.index.add(v)
        self.ids = np.concatenate([np.asarray(self.ids), ids])

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``index.faiss``, ``ids.npy`` and ``index.json`` into ``folder`` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        f = _faiss()
        tmp = folder / f".{INDEX_FILE}.tmp"
        f.write_index(self.index, str(tmp))
        ids_tmp = folder / ".ids.tmp.npy"
        np.save(ids_tmp, np.asarray(self.ids).astype(str))
        manifest = {"kind": self.kind, "metric": self.metric, "dim": self.dim, "ntotal": len(self),
                    "params": self.params}
        man_tmp = folder / f".{MANIFEST}.tmp"
        man_tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, folder / INDEX_FILE)
        os.replace(ids_tmp, folder / IDS_FILE)
        os.replace(man_tmp, folder / MANIFEST)
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = True) -> "VectorIndex":
        folder = Path(folder)
        for name in (INDEX_FILE, IDS_FILE, MANIFEST):
            if not (folder / name).is_file():
                raise VectorIndexError(f"{folder}: no {name}; build the index with `mmsocial index build RUN_DIR`")
        f = _faiss()
        manifest = json.loads((folder / MANIFEST).read_text())
        mapped = mmap and manifest["kind"] in MAPPED
        index = f.read_index(str(folder / INDEX_FILE), getattr(f, MAPPED[manifest["kind"]]) if mapped else 0)
        ids = np.load(folder / IDS_FILE, mmap_mode="r" if mmap else None)
        if len(ids) != index.ntotal:
            raise VectorIndexError(f"{folder}: {IDS_FILE} holds {len(ids)} ids but the index {index.ntotal} vectors")
        out = cls(index, ids, manifest["metric"], manifest["kind"], manifest.get("params", {}), folder, mapped)
        out.set_search_params(out.params.get("ef_search"), out.params.get("nprobe"))
        return out


def build_index(vectors, ids: Sequence[str], metric: str = "l2", kind: str = "auto", *,
                exact_max: int = EXACT_MAX, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 128,
                nlist: Optional[int] = None, pq_m: Optional[int] = None, nprobe: Optional[int] = None,
                seed: int = 0) -> VectorIndex:
    """An index over ``vectors`` (n, d) named by ``ids``. ``kind="auto"``: flat up to ``exact_max`` rows,
    ivfflat above. ``nlist``: lists of the IVF kinds (default 2√n for ivfflat, 4√n for ivfpq); ``nprobe``:
    lists a query scans (default 8 for ivfflat, 32 for ivfpq). ``params`` of the result record the
    settings and the build time in seconds."""
    if metric not in METRICS:
        raise VectorIndexError(f"metric must be one of {METRICS}, got {metric!r}")
    if kind not in (*KINDS, "auto"):
        raise VectorIndexError(f"kind must be 'auto' or one of {KINDS}, got {kind!r}")
    v = _as_matrix(vectors, "vectors")
    ids = np.asarray([str(x) for x in ids])
    if len(ids) != len(v):
        raise VectorIndexError(f"{len(v)} vectors but {len(ids)} ids")
    if len(set(ids.tolist())) != len(ids):
        raise VectorIndexError("ids are not unique")
    if kind == "auto":
        kind = "flat" if len(v) <= exact_max else "ivfflat"
    f = _faiss()
    d = v.shape[1]
    fmetric = f.METRIC_L2 if metric == "l2" else f.METRIC_INNER_PRODUCT
    t = time.perf_counter()
    params: dict = {}
    if kind == "flat":
        index = f.IndexFlatL2(d) if metric == "l2" else f.IndexFlatIP(d)
    elif kind == "hnsw":
        index = f.IndexHNSWFlat(d, hnsw_m, fmetric)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        params.update(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
    elif kind == "ivfflat":
        nlist = nlist or max(1, min(len(v) // 39 or 1, int(round(2 * np.sqrt(len(v))))))
        nprobe = nprobe or 8
        quantizer = f.IndexFlatL2(d) if metric == "l2" else f.IndexFlatIP(d)
        index = f.IndexIVFFlat(quantizer, d, nlist, fmetric)
        rng = np.random.default_rng(seed)
        sample = v[rng.choice(len(v), min(len(v), 64 * nlist), replace=False)]
        index.cp.seed = seed
        index.train(sample)
        index.nprobe = nprobe
        params.update(nlist=nlist, nprobe=nprobe, train_sample=len(sample))
    else:
        nlist = nlist or max(1, min(4096, int(4 * np.sqrt(len(v)))))
        nprobe = nprobe or 32
        pq_m = pq_m or next(m for m in (32, 16, 8, 4, 2, 1) if d % m == 0)
        quantizer = f.IndexFlatL2(d) if metric == "l2" else f.IndexFlatIP(d)
        ivf = f.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, fmetric)
        rng = np.random.default_rng(seed)
        sample = v[rng.choice(len(v), min(len(v), 256 * nlist), replace=False)]
        ivf.cp.seed = seed
        ivf.train(sample)
        ivf.nprobe = nprobe
        index = f.IndexRefineFlat(ivf)  # the Python wrapper keeps ``ivf`` alive; a loaded one owns it
        index.k_factor = 4
        params.update(nlist=nlist, pq_m=pq_m, nprobe=nprobe, k_factor=4)
    index.add(v)
    params["build_seconds"] = round(time.perf_counter() - t, 3)
    log.info("built %s index (%s) over %d x %d in %.2fs", kind, metric, len(v), d, params["build_seconds"])
    return VectorIndex(index, ids, metric, kind, params)


def exact_search(vectors, queries, k: int, metric: str = "l2") -> np.ndarray:
    """Row numbers (n_queries, k) of the exact nearest neighbours, by brute force in chunks of queries
    (float64 up to 50M stored numbers, float32 above, to bound memory)."""
    dtype = np.float64 if np.size(vectors) <= 50_000_000 else np.float32
    v = np.asarray(vectors, dtype=dtype)
    q = np.asarray(queries, dtype=dtype)
    k = min(k, len(v))
    chunk = max(1, (1 << 25) // max(len(v), 1))
    out = np.empty((len(q), k), dtype=np.int64)
    vn = (v * v).sum(1)
    for a in range(0, len(q), chunk):
        s = q[a:a + chunk] @ v.T
        score = s if metric == "ip" else -(vn[None] - 2 * s)  # larger is closer
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(score, top, 1), axis=1, kind="stable")
        out[a:a + chunk] = np.take_along_axis(top, order, 1)
    return out


def recall_at_k(found, truth, k: int = 10) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k (ids or row numbers, same kind in both)."""
    found, truth = np.asarray(found), np.asarray(truth)
    if len(found) != len(truth):
        raise ValueError(f"{len(found)} result rows but {len(truth)} truth rows")
    if len(found) == 0:
        return float("nan")
    k = min(k, truth.shape[1])
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def tie_aware_recall(vectors, ids: Sequence[str], queries, found, k: int = 10, metric: str = "l2") -> float:
    """recall@k where a returned id counts when its exact distance is within the exact k-th distance
    (so that equally distant vectors, common with duplicates or one-hot vocabularies, are not misses)."""
    v = np.asarray(vectors, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    row = {str(i): r for r, i in enumerate(ids)}
    truth = exact_search(v, q, k, metric)

    def score(qi, rows):  # larger is closer
        s = v[rows] @ q[qi]
        return s if metric == "ip" else -np.linalg.norm(v[rows] - q[qi], axis=1)

    hits = 0
    for qi in range(len(q)):
        kth = score(qi, truth[qi, -1:])[0]
        rows = [row[str(f)] for f in found[qi][:k] if str(f) in row]
        hits += int((score(qi, rows) >= kth - 1e-6 * (1 + abs(kth))).sum()) if rows else 0
    return hits / (len(q) * min(k, len(v))) if len(q) else float("nan")


def probe_queries(vectors, n: int = 200, seed: int = 0) -> np.ndarray:
    """Queries for measuring recall: midpoints of random pairs of stored vectors (a stored vector
    itself would be its own first neighbour and flatter the approximate index)."""
    v = np.asarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(v), (2, min(n, max(len(v), 1))))
    return (v[a] + v[b]) / 2


# ---------------------------------------------------------------------------- indexes of a run
def run_index_dir(run_dir: str | os.PathLike, collection: str) -> Path:
    """Where `mmsocial index build` saves a run's index of ``collection``: RUN_DIR/index/<collection>."""
    return Path(run_dir) / "index" / collection


def build_run_indexes(served, kind: str = "auto", exact_max: int = EXACT_MAX, probes: int = 200,
                      **params) -> list[dict]:
    """Build, check and save an index for each collection of a served run (``systems.Served``).

    Each report: collection, kind, metric, size, dim, build_seconds, recall_at_10 (against exact search,
    on ``probes`` midpoint queries), path."""
    reports = []
    for name, make in served.collections.items():
        c = make()
        vectors = np.asarray(c.vectors, dtype=np.float32)
        index = build_index(vectors, c.ids, served.metric, kind, exact_max=exact_max, **params)
        queries = probe_queries(vectors, probes)
        recall = tie_aware_recall(vectors, c.ids, queries, index.search(queries, 10)[1], 10, served.metric)
        index.params.update(recall_at_10=round(recall, 4), collection_kind=c.kind)
        path = index.save(run_index_dir(served.run_dir, name))
        reports.append({"collection": name, "kind": index.kind, "metric": index.metric, "size": len(index),
                        "dim": index.dim, "build_seconds": index.params["build_seconds"],
                        "recall_at_10": recall, "path": str(path)})
    return reports


def add_new_posts(served, limit: Optional[int] = None) -> tuple[int, Path]:
    """Embed the posts of the run's corpus (with an image) that its saved "posts" index lacks, and add
    them to it without a rebuild; returns (number added, index folder)."""
    if served.embed_posts is None:
        raise VectorIndexError(f"system {served.system} cannot embed new posts (no embed_posts)")
    folder = run_index_dir(served.run_dir, "posts")
    index = VectorIndex.load(folder)
    have = set(np.asarray(index.ids).tolist())
    posts = served.corpus.posts
    new = [p for p, img in zip(posts["post_id"], posts["image"]) if img is not None and p not in have]
    new = new[:limit] if limit is not None else new
    if new:
        index.add(served.embed_posts(new), new)
        index.save(folder)
    return len(new), folder
