"""The feature store: float16 arrays on disk + a manifest, written atomically, resumable, memory-mapped.

A feature set is a folder::

    FEATURES/
      manifest.json   extractor, backbone, weights identity, input size, dims, dtype, post ids, corpus
      data.npy        float16 (N, *dims)
      written.npy     uint8 (N,): 1 = the row was computed and flushed (checked on open)
      keys.json       one key a row (post id, image path, file size and mtime): what the row was
                      computed from, so that an edited image is re-extracted
      <name>.npy      extra arrays, e.g. boxes (N, P, 4) float32 or valid (N,) uint8

While it is being written everything lives in ``.FEATURES.partial/`` beside it. Rows are
flushed before they are marked in ``written.npy``, so a kill at any point loses at most the
batch in flight; calling ``write_features`` again with the same arguments resumes at the rows
not yet marked. When every row is written the folder replaces ``FEATURES`` by rename
(``mmsocial.io.replace_folder``), so a reader sees a complete feature set, never a part.

One writer at a time: ``write_features`` holds ``.FEATURES.lock`` (a ``filelock`` lock, freed
by the OS when its process dies); a second writer waits for it and then finds the work done.
Only a feature set (a folder holding manifest.json) is ever replaced, and only with
``overwrite=True`` or when the settings are the same and only rows changed; any other thing
at the output path (a file, a folder of the user's, a corpus) is an error naming the path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np

from mmsocial.io import check_writable_folder, remove_temporaries, replace_folder, restore_old, save_npy, write_json

log = logging.getLogger(__name__)

DATA_FILE = "data.npy"
MANIFEST_FILE = "manifest.json"
WRITTEN_FILE = "written.npy"
KEYS_FILE = "keys.json"
IDENTITY_FILE = "identity.json"
FORMAT = 2  # 1: no written.npy / keys.json (read as before, without those checks)
FLOAT16_MAX = float(np.finfo(np.float16).max)
# manifest fields that describe the rows, not how they were computed
ROW_FIELDS = ("post_ids", "count", "corpus", "command", "format")

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
            if list(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []:
                raise FeatureStoreError(f"{path}: a replacement was interrupted; run the extraction again "
                                        f"(the previous feature set is put back first)")
            raise FeatureStoreError(f"{path}: not a feature set (no {MANIFEST_FILE}); create one with "
                                    f"`mmsocial features extract CORPUS ...`")
        manifest = _read_manifest(path)
        repair = f"repair it with `{repair_command(path, manifest)}`"
        try:
            post_ids = list(manifest["post_ids"])
            dims = [int(d) for d in manifest["dims"]]
            extra_names = list(manifest.get("extra", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise FeatureStoreError(f"{path / MANIFEST_FILE}: field {e} is missing or malformed; {repair}") from None
        mode = "r" if mmap else None
        data = _load_array(path / DATA_FILE, mode, repair)
        extra = {name: _load_array(path / f"{name}.npy", mode, repair) for name in extra_names}
        if data.shape != (len(post_ids), *dims):
            raise FeatureStoreError(f"{path / DATA_FILE} has shape {data.shape}, the manifest says "
                                    f"({len(post_ids)}, *{dims}); {repair}")
        if int(manifest.get("format", 1)) >= 2:
            written = _load_array(path / WRITTEN_FILE, None, repair)
            if written.shape != (len(post_ids),) or not written.all():
                missing = np.flatnonzero(written == 0) if written.shape == (len(post_ids),) else [0]
                raise FeatureStoreError(f"{path}: {len(missing)} rows were never written (first: post "
                                        f"{post_ids[missing[0]]!r}, per {WRITTEN_FILE}); {repair}")
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
        rows = self.rows(post_ids)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.dims), dtype=dtype)
        out[order] = self.data[rows[order]]
        return out


def repair_command(path: "str | os.PathLike", manifest: dict) -> str:
    """The command line that writes the feature set at ``path`` again from scratch."""
    if manifest.get("command"):
        cmd = str(manifest["command"])
        return cmd if "--overwrite" in cmd else cmd + " --overwrite"
    corpus = (manifest.get("corpus") or {}).get("root") or "CORPUS"
    parts = ["mmsocial features extract", str(corpus)]
    for flag, key in (("--kind", "extractor"), ("--backbone", "backbone"), ("--size", "input_size")):
        if manifest.get(key) is not None:
            parts += [flag, str(manifest[key])]
    if manifest.get("weights") == "random":
        parts += ["--weights", "random"]
    parts += ["--out", str(path), "--overwrite"]
    return " ".join(parts)


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FeatureStoreError(f"{path / MANIFEST_FILE}: unreadable ({e}); repair it with "
                                f"`{repair_command(path, {})}`") from None
    if not isinstance(manifest, dict):
        raise FeatureStoreError(f"{path / MANIFEST_FILE}: expected a JSON object, got "
                                f"{type(manifest).__name__}; repair it with `{repair_command(path, {})}`")
    return manifest


def _load_array(file: Path, mmap_mode, repair: str) -> np.ndarray:
    """np.load with the file's size checked against its header first (a truncated .npy names itself)."""
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
        expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        actual = file.stat().st_size
        if actual < expected:
            raise FeatureStoreError(f"{file}: truncated ({actual} of {expected} bytes; the disk filled up "
                                    f"or a copy was cut short); {repair}")
        return np.load(file, mmap_mode=mmap_mode)
    except FeatureStoreError:
        raise
    except FileNotFoundError:
        raise FeatureStoreError(f"{file}: missing; {repair}") from None
    except (OSError, ValueError, EOFError) as e:
        raise FeatureStoreError(f"{file}: unreadable ({e}); {repair}") from None


def _partial_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.partial"


def lock_path(path: "str | os.PathLike") -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def store_lock(path: "str | os.PathLike"):
    """The inter-process lock of the feature set at ``path`` (one object per path in a process, so
    that taking it again inside a holder does not deadlock)."""
    from filelock import FileLock

    return FileLock(str(lock_path(path).absolute()), is_singleton=True)


class _Locked:
    """Hold the store lock; a second writer is told that it waits, then waits (or times out)."""

    def __init__(self, path: Path, timeout: Optional[float]):
        self.path, self.timeout, self.lock = path, timeout, store_lock(path)

    def __enter__(self):
        from filelock import Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            log.warning("%s: another process is writing this feature set; waiting for it to finish "
                        "(lock %s)", self.path, lock_path(self.path))
            try:
                self.lock.acquire(timeout=-1 if self.timeout is None else self.timeout)
            except Timeout:
                raise FeatureStoreError(f"{self.path}: another process has been writing this feature set "
                                        f"for over {self.timeout:g} s (lock {lock_path(self.path)}); "
                                        f"wait for it or stop it") from None
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _identity(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _settings(manifest: dict) -> dict:
    """What decides how a row is computed (extractor, backbone, weights, size, dims, extras)."""
    return {k: v for k, v in manifest.items() if k not in ROW_FIELDS}


def _extra_spec(spec) -> tuple[tuple[int, ...], np.dtype]:
    """Extra array spec: a dims tuple (stored float32) or (dims, dtype)."""
    if len(spec) == 2 and isinstance(spec[0], (tuple, list)):
        return tuple(int(d) for d in spec[0]), np.dtype(spec[1])
    return tuple(int(d) for d in spec), np.dtype(np.float32)


def _full_manifest(post_ids, dims, manifest, extra_dims) -> dict:
    full = dict(manifest)
    full["format"] = FORMAT
    full["dims"] = [int(d) for d in dims]
    full["dtype"] = "float16"
    full["count"] = len(post_ids)
    full["post_ids"] = [str(p) for p in post_ids]
    full["extra"] = {k: {"dims": list(_extra_spec(v)[0]), "dtype": str(_extra_spec(v)[1])}
                     for k, v in (extra_dims or {}).items()}
    return full


def _row_keys(post_ids: list[str], row_keys) -> list[str]:
    if row_keys is None:
        return list(post_ids)
    keys = [str(k) for k in row_keys]
    if len(keys) != len(post_ids):
        raise FeatureStoreError(f"row_keys has {len(keys)} entries for {len(post_ids)} posts")
    return keys


def _write_identity(full: dict) -> str:
    return _identity([_settings(full), full["post_ids"]])


def _resumable_progress(partial: Path, identity: str, keys: list[str]) -> Optional[np.ndarray]:
    """The written mask of an unfinished write with the same settings and posts (rows whose key
    changed since, e.g. an image edited meanwhile, count as not written); None if there is none."""
    try:
        if json.loads((partial / IDENTITY_FILE).read_text())["identity"] != identity:
            return None
        done = np.load(partial / WRITTEN_FILE)
        old_keys = json.loads((partial / KEYS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(done) != len(keys) or not isinstance(old_keys, list) or len(old_keys) != len(keys):
        return None
    return done * np.fromiter((a == b for a, b in zip(old_keys, keys)), dtype=np.uint8, count=len(keys))


def _stored_keys(path: Path, manifest: dict) -> Optional[list[str]]:
    try:
        keys = json.loads((path / KEYS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return keys if isinstance(keys, list) and len(keys) == len(manifest.get("post_ids", ())) else None


def _existing(path: Path) -> tuple[str, Optional[dict]]:
    """What is at ``path``: ("none"|"empty"|"features"|"other"|"file", manifest or None)."""
    if path.is_symlink() and not path.exists():
        return "file", None
    if not path.exists():
        return "none", None
    if not path.is_dir():
        return "file", None
    if (path / MANIFEST_FILE).is_file():
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
        return "features", manifest if isinstance(manifest, dict) else None
    if not any(path.iterdir()):
        return "empty", None
    return "other", None


def check_output(path: "str | os.PathLike", manifest: Optional[dict] = None, overwrite: bool = False) -> str:
    """Refuse an output path that is not ours to replace; returns what is there.

    A file, or a folder that is not empty and holds no manifest.json (a folder of the user's,
    a corpus), is never replaced. A feature set made with other settings (``manifest`` given)
    is replaced only with ``overwrite``.
    """
    path = Path(path)
    what, stored = _existing(path)
    if what == "file":
        raise FeatureStoreError(f"{path}: the output path is a file, not a feature set folder; it is left "
                                f"as it is; choose another --out")
    if what == "other":
        raise FeatureStoreError(f"{path}: the output folder exists and is not a feature set (no "
                                f"{MANIFEST_FILE}); it is left as it is; choose another --out (a new or "
                                f"empty folder, or an existing feature set)")
    if what == "features" and manifest is not None and not overwrite:
        if stored is None:
            raise FeatureStoreError(f"{path}: holds a feature set whose {MANIFEST_FILE} is unreadable; "
                                    f"pass --overwrite (overwrite=True) to replace it")
        if _settings(stored) != _settings(manifest):
            diff = sorted(k for k in set(_settings(stored)) | set(_settings(manifest))
                          if _settings(stored).get(k) != _settings(manifest).get(k))
            raise FeatureStoreError(f"{path}: holds features made with other settings (differing: "
                                    f"{', '.join(diff)}); pass --overwrite (overwrite=True) to replace "
                                    f"them or choose another --out")
    return what


def _reusable(path: Path, full: dict, keys: list[str]) -> tuple[Optional[dict], np.ndarray]:
    """For each wanted row, the row of the complete set at ``path`` that holds it (same settings and
    key, written), else -1. A format-1 set (no keys) matches on post id."""
    none = np.full(len(keys), -1, dtype=np.int64)
    what, stored = _existing(path)
    if what != "features" or stored is None or _settings(stored) != _settings(full):
        return None, none
    old_keys = _stored_keys(path, stored)
    if old_keys is None:
        if int(stored.get("format", 1)) >= 2:
            return None, none
        old_keys, keys = list(stored.get("post_ids", [])), full["post_ids"]
    try:
        written = (np.load(path / WRITTEN_FILE) if int(stored.get("format", 1)) >= 2
                   else np.ones(len(old_keys), dtype=np.uint8))
    except (OSError, ValueError):
        return None, none
    old_index = {(p, k): i for i, (p, k) in enumerate(zip(stored.get("post_ids", []), old_keys))
                 if i < len(written) and written[i]}
    rows = np.fromiter((old_index.get((p, k), -1) for p, k in zip(full["post_ids"], keys)),
                       dtype=np.int64, count=len(keys))
    return stored, rows


def is_complete(path: "str | os.PathLike", post_ids: list[str], dims, manifest: dict,
                extra_dims: dict | None = None, row_keys=None) -> bool:
    """True when ``path`` holds a complete feature set written with exactly these arguments (rows
    included: a row whose key changed, e.g. an edited image, makes it incomplete)."""
    full = _full_manifest(post_ids, dims, manifest, extra_dims)
    stored, rows = _reusable(Path(path), full, _row_keys(full["post_ids"], row_keys))
    return stored is not None and bool((rows == np.arange(len(rows))).all()) and \
        stored.get("post_ids") == full["post_ids"]


def pending_rows(path: "str | os.PathLike", post_ids: list[str], dims, manifest: dict,
                 extra_dims: dict | None = None, row_keys=None) -> np.ndarray:
    """Rows that a ``write_features`` call with these arguments still has to compute."""
    path = Path(path)
    full = _full_manifest(post_ids, dims, manifest, extra_dims)
    keys = _row_keys(full["post_ids"], row_keys)
    done = _resumable_progress(_partial_dir(path), _write_identity(full), keys)
    if done is not None:
        return np.flatnonzero(done == 0)
    _, rows = _reusable(path, full, keys)
    return np.flatnonzero(rows < 0)


def write_features(path: "str | os.PathLike", post_ids: list[str], dims, batches: Batches,
                   manifest: dict, extra_dims: dict | None = None, row_keys=None,
                   overwrite: bool = False, lock_timeout: Optional[float] = None) -> FeatureSet:
    """Write a feature set (locked, resumable, atomic) and open it.

    batches: an iterable of ``(start_row, data[, extras])`` with data of shape (B, *dims) and
    extras a dict name -> (B, *extra_dims[name]); or a callable that receives the array of rows
    still to do and returns such an iterable (so that a resumed extraction computes only those).
    With a plain iterable, batches whose rows are all done already are skipped without writing.
    extra_dims: name -> dims tuple (stored float32) or (dims, dtype). row_keys: one string a row
    saying what it is computed from (default the post id); a complete set at ``path`` with the
    same settings gives the rows whose key is unchanged, the others are computed. overwrite:
    compute every row, and replace a feature set made with other settings. A second writer of
    the same path waits for the first (``lock_timeout`` seconds at most; None = no limit).
    The returned set has ``stats["resumed_from"]``: rows that did not need computing.
    """
    path = Path(path)
    post_ids = [str(p) for p in post_ids]
    if len(set(post_ids)) != len(post_ids):
        raise FeatureStoreError(f"{path}: duplicate post ids given to write_features")
    full = _full_manifest(post_ids, dims, manifest, extra_dims)
    keys = _row_keys(post_ids, row_keys)
    shape = (len(post_ids), *full["dims"])
    extras = {k: _extra_spec(v) for k, v in (extra_dims or {}).items()}
    if DATA_FILE[:-4] in extras or WRITTEN_FILE[:-4] in extras:
        raise FeatureStoreError("'data' and 'written' are reserved; give the extra array another name")
    check_output(path, full, overwrite)
    try:
        check_writable_folder(path.parent, "folder of the feature set")
    except ValueError as e:
        raise FeatureStoreError(str(e)) from None
    with _Locked(path, lock_timeout):
        restore_old(path)
        check_output(path, full, overwrite)  # again: another writer may have finished meanwhile
        if not overwrite and is_complete(path, post_ids, dims, manifest, extra_dims, keys):
            fs = FeatureSet.open(path)
            fs.stats = {"resumed_from": len(fs), "cached": True}
            return fs
        return _write_locked(path, post_ids, keys, full, shape, extras, batches, overwrite)


def _write_locked(path, post_ids, keys, full, shape, extras, batches, overwrite) -> FeatureSet:
    partial = _partial_dir(path)
    identity = _write_identity(full)
    progress = None if overwrite else _resumable_progress(partial, identity, keys)
    if progress is not None:
        remove_temporaries(partial)  # what a kill inside an atomic write left
        save_npy(partial / WRITTEN_FILE, progress)  # rows whose key changed are marked first...
        write_json(partial / KEYS_FILE, keys)  # ...then the keys they will be computed from
    else:
        if partial.exists():
            if (partial / IDENTITY_FILE).is_file() and not overwrite:
                warnings.warn(f"{partial}: an unfinished extraction with different settings is discarded")
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        data = np.lib.format.open_memmap(partial / DATA_FILE, mode="w+", dtype=np.float16, shape=shape)
        extra_arrays = {name: np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=edtype,
                                                        shape=(len(post_ids), *edims))
                        for name, (edims, edtype) in extras.items()}
        done = np.zeros(len(post_ids), dtype=np.uint8)
        if not overwrite:  # rows of the existing set with the same settings and key are kept
            _, old_rows = _reusable(path, full, keys)
            have = np.flatnonzero(old_rows >= 0)
            if len(have):
                old = FeatureSet.open(path)
                for a in range(0, len(have), 4096):
                    new, src = have[a:a + 4096], old_rows[have[a:a + 4096]]
                    data[new] = old.data[src]
                    for name in extras:
                        extra_arrays[name][new] = old.extra[name][src]
                done[have] = 1
                del old
        data.flush()
        for arr in extra_arrays.values():
            arr.flush()
        del data, extra_arrays
        save_npy(partial / WRITTEN_FILE, done)
        write_json(partial / KEYS_FILE, keys)
        write_json(partial / IDENTITY_FILE, {"identity": identity})

    data = np.load(partial / DATA_FILE, mmap_mode="r+")
    extra_arrays = {name: np.load(partial / f"{name}.npy", mmap_mode="r+") for name in extras}
    done = np.load(partial / WRITTEN_FILE)
    todo = np.flatnonzero(done == 0)
    resumed_from = len(post_ids) - len(todo)
    source = batches(todo) if callable(batches) else batches
    warned_underflow = False
    for item in (source if len(todo) or not callable(batches) else ()):
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
        save_npy(partial / WRITTEN_FILE, done)

    if not done.all():
        missing = np.flatnonzero(done == 0)
        raise FeatureStoreError(f"{path}: {len(missing)} rows were never written (first: post "
                                f"{post_ids[missing[0]]!r}); the batches must cover every row")
    del data, extra_arrays
    write_json(partial / MANIFEST_FILE, full, indent=1)
    (partial / IDENTITY_FILE).unlink()
    replace_folder(partial, path)
    fs = FeatureSet.open(path)
    fs.stats = {"resumed_from": resumed_from, "cached": False}
    return fs
