"""The feature store: float16 arrays on disk + a manifest, written atomically, resumable, memory-mapped.

A feature set is a folder::

    FEATURES/
      manifest.json   extractor, backbone, weights identity, input size, dims, dtype, post ids, corpus
      data.npy        float16 (N, *dims)
      <name>.npy      extra arrays, e.g. boxes (N, P, 4) float32 or valid (N,) uint8

While it is being written everything lives in ``.FEATURES.partial/`` beside it, with
``progress.npy`` (one byte a row: 1 = written and flushed). Rows are flushed before they are
marked, so an interruption at any point loses at most the batch in flight; calling
``write_features`` again with the same manifest resumes at the rows not yet marked. When
every row is written the folder is renamed to ``FEATURES`` in one step, so a reader sees
either no feature set or a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Union

import numpy as np

DATA_FILE = "data.npy"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.npy"
FLOAT16_MAX = float(np.finfo(np.float16).max)

Batch = tuple  # (start_row, data) or (start_row, data, {extra name: array})
Batches = Union[Iterable[Batch], Callable[[np.ndarray], Iterable[Batch]]]


class FeatureStoreError(ValueError):
    """A feature set is missing, incomplete or does not match what is asked; the message says what to do."""


@dataclass
class FeatureSet:
    path: Path
    data: np.ndarray
    post_ids: list[str]
    manifest: dict
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # filled by extract_features: throughput of the run

    def __post_init__(self):
        self._index: dict[str, int] | None = None

    @classmethod
    def open(cls, path: "str | os.PathLike", mmap: bool = True) -> "FeatureSet":
        """Open a complete feature set; arrays are memory-mapped read-only (``mmap=False``: loaded)."""
        path = Path(path)
        if not (path / MANIFEST_FILE).is_file():
            partial = _partial_dir(path)
            if partial.is_dir():
                raise FeatureStoreError(f"{path}: extraction is incomplete ({partial} holds the rows "
                                        f"written so far); run the same extraction again to resume it")
            raise FeatureStoreError(f"{path}: not a feature set (no {MANIFEST_FILE}); create one with "
                                    f"`mmsocial features extract CORPUS ...`")
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        mode = "r" if mmap else None
        data = np.load(path / DATA_FILE, mmap_mode=mode)
        extra = {name: np.load(path / f"{name}.npy", mmap_mode=mode) for name in manifest.get("extra", {})}
        post_ids = list(manifest["post_ids"])
        if data.shape != (len(post_ids), *manifest["dims"]):
            raise FeatureStoreError(f"{path}: {DATA_FILE} has shape {data.shape}, the manifest says "
                                    f"({len(post_ids)}, *{manifest['dims']}); extract the features again")
        return cls(path, data, post_ids, manifest, extra)

    def __len__(self) -> int:
        return len(self.post_ids)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {p: i for i, p in enumerate(self.post_ids)}
        return self._index

    def rows(self, post_ids: Iterable[str]) -> np.ndarray:
        """Row numbers of ``post_ids`` (int64); a KeyError names the first post without features."""
        index = self.index
        try:
            return np.fromiter((index[p] for p in post_ids), dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"{self.path}: post {e.args[0]!r} has no features here (posts without an "
                           f"image are not extracted; filter them out first)") from None

    def get(self, post_ids: Iterable[str], dtype=np.float32) -> np.ndarray:
        """Features of ``post_ids`` as an in-memory array (rows read in sorted order from the memmap)."""
        return read_rows(self.data, self.rows(post_ids), dtype)


def read_rows(array, rows, dtype=None, read_sorted: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """``array[rows]`` as an in-memory array of ``dtype``, with the rows read in ascending order
    (one forward pass over a memory-mapped file) and put back in the order asked for.

    ``read_sorted(sorted_rows)`` reads the rows (default ``array[sorted_rows]``); the streaming
    dataset passes a ``pread`` reader (mmsocial.train.data). The one copy of this idiom.
    """
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    block = read_sorted(rows[order]) if read_sorted is not None else np.asarray(array[rows[order]])
    out = np.empty(block.shape, dtype=dtype or block.dtype)
    out[order] = block
    return out


def _partial_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.partial"


def _identity(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


def _extra_spec(spec) -> tuple[tuple[int, ...], np.dtype]:
    """Extra array spec: a dims tuple (stored float32) or (dims, dtype)."""
    if len(spec) == 2 and isinstance(spec[0], (tuple, list)):
        return tuple(int(d) for d in spec[0]), np.dtype(spec[1])
    return tuple(int(d) for d in spec), np.dtype(np.float32)


def pending_rows(path: "str | os.PathLike", post_ids: list[str], dims, manifest: dict,
                 extra_dims: dict | None = None) -> np.ndarray:
    """Rows that a ``write_features`` call with these arguments still has to compute (all, if nothing resumes)."""
    partial = _partial_dir(Path(path))
    full = _full_manifest(post_ids, dims, manifest, extra_dims)
    try:
        stored = json.loads((partial / "identity.json").read_text())["identity"]
        done = np.load(partial / PROGRESS_FILE)
    except (OSError, ValueError, KeyError):
        return np.arange(len(post_ids))
    if stored != _identity(full) or len(done) != len(post_ids):
        return np.arange(len(post_ids))
    return np.flatnonzero(done == 0)


def is_complete(path: "str | os.PathLike", post_ids: list[str], dims, manifest: dict,
                extra_dims: dict | None = None) -> bool:
    """True when ``path`` holds a complete feature set written with exactly these arguments."""
    try:
        stored = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return _identity(stored) == _identity(_full_manifest(post_ids, dims, manifest, extra_dims))


def _full_manifest(post_ids, dims, manifest, extra_dims) -> dict:
    full = dict(manifest)
    full["dims"] = [int(d) for d in dims]
    full["dtype"] = "float16"
    full["count"] = len(post_ids)
    full["post_ids"] = [str(p) for p in post_ids]
    full["extra"] = {k: {"dims": list(_extra_spec(v)[0]), "dtype": str(_extra_spec(v)[1])}
                     for k, v in (extra_dims or {}).items()}
    return full


def write_features(path: "str | os.PathLike", post_ids: list[str], dims, batches: Batches,
                   manifest: dict, extra_dims: dict | None = None) -> FeatureSet:
    """Write a feature set (resumable; atomic rename at the end) and open it.

    batches: an iterable of ``(start_row, data[, extras])`` with data of shape (B, *dims) and
    extras a dict name -> (B, *extra_dims[name]); or a callable that receives the array of rows
    still to do and returns such an iterable (so that a resumed extraction computes only those).
    With a plain iterable, batches whose rows are all done already are skipped without writing.
    extra_dims: name -> dims tuple (stored float32) or (dims, dtype).
    """
    path = Path(path)
    post_ids = [str(p) for p in post_ids]
    if len(set(post_ids)) != len(post_ids):
        raise FeatureStoreError(f"{path}: duplicate post ids given to write_features")
    full = _full_manifest(post_ids, dims, manifest, extra_dims)
    shape = (len(post_ids), *full["dims"])
    extras = {k: _extra_spec(v) for k, v in (extra_dims or {}).items()}
    if DATA_FILE[:-4] in extras:
        raise FeatureStoreError("'data' is reserved; give the extra array another name")

    partial = _partial_dir(path)
    todo = pending_rows(path, post_ids, dims, manifest, extra_dims)
    if len(todo) == len(post_ids):
        if partial.exists():
            if (partial / "identity.json").is_file():
                warnings.warn(f"{partial}: an unfinished extraction with different settings is discarded")
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        np.lib.format.open_memmap(partial / DATA_FILE, mode="w+", dtype=np.float16, shape=shape).flush()
        for name, (edims, edtype) in extras.items():
            np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=edtype,
                                      shape=(len(post_ids), *edims)).flush()
        _save_atomic(partial / PROGRESS_FILE, np.zeros(len(post_ids), dtype=np.uint8))
        (partial / "identity.json").write_text(json.dumps({"identity": _identity(full)}))

    data = np.load(partial / DATA_FILE, mmap_mode="r+")
    extra_arrays = {name: np.load(partial / f"{name}.npy", mmap_mode="r+") for name in extras}
    done = np.load(partial / PROGRESS_FILE)
    source = batches(todo) if callable(batches) else batches
    warned_underflow = False
    for item in source:
        start, block = int(item[0]), np.asarray(item[1])
        more = item[2] if len(item) > 2 else {}
        stop = start + len(block)
        if block.shape[1:] != shape[1:] or start < 0 or stop > len(post_ids):
            raise FeatureStoreError(f"{path}: batch at row {start} has shape {block.shape}; expected "
                                    f"(B, *{shape[1:]}) within {len(post_ids)} rows")
        if done[start:stop].all():
            continue
        if not np.isfinite(block).all() or np.abs(block).max(initial=0) > FLOAT16_MAX:
            bad = post_ids[start + int(np.flatnonzero(~(np.abs(block.reshape(len(block), -1)) <= FLOAT16_MAX).all(1))[0])]
            raise FeatureStoreError(f"{path}: features of post {bad!r} are not finite or exceed the "
                                    f"float16 range ({FLOAT16_MAX:g})")
        if set(more) != set(extras):
            raise FeatureStoreError(f"{path}: batch at row {start} has extras {sorted(more)}, "
                                    f"expected {sorted(extras)}")
        half = block.astype(np.float16)
        if not warned_underflow and np.count_nonzero(half) < 0.5 * np.count_nonzero(block):
            warned_underflow = True
            warnings.warn(f"{path}: most non-zero features of rows {start}-{stop - 1} underflow to 0 in "
                          f"float16 (|x| < 6e-8); random weights with untrained batch norm do this")
        data[start:stop] = half
        for name, arr in more.items():
            extra_arrays[name][start:stop] = arr
        data.flush()
        for arr in extra_arrays.values():
            arr.flush()
        done[start:stop] = 1
        _save_atomic(partial / PROGRESS_FILE, done)

    if not done.all():
        missing = np.flatnonzero(done == 0)
        raise FeatureStoreError(f"{path}: {len(missing)} rows were never written (first: post "
                                f"{post_ids[missing[0]]!r}); the batches must cover every row")
    del data, extra_arrays
    (partial / MANIFEST_FILE).write_text(json.dumps(full, indent=1))
    (partial / PROGRESS_FILE).unlink()
    (partial / "identity.json").unlink()
    old = path.parent / f".{path.name}.old"
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(partial, path)
    shutil.rmtree(old, ignore_errors=True)
    return FeatureSet.open(path)


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
