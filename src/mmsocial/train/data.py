"""A dataset over memory-mapped feature arrays, read lazily one batch at a time.

Nothing is loaded at construction: each batch reads only its rows, in sorted order, converts
float16 to float32 and hands the rows to the collate function. Corpora whose features exceed
RAM therefore train by streaming; see docs/training.md and bench/streaming.py.

Rows of a whole file-backed np.memmap (a FeatureSet, or ``np.load(path, mmap_mode="r")``)
are read with ``pread`` (runs of consecutive rows in one call) on a descriptor advised
POSIX_FADV_RANDOM, not through page faults on the mapping: a fault on a mapping reads the
device's whole read-ahead window around it (8 MiB here), which under a memory limit evicts
the rows before they are copied and thrashes (measured: under 60 posts/s against thousands).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import mmap
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from mmsocial.features.store import read_rows

__all__ = ["FeatureDataset", "TripletFeatures", "as_is", "sorted_row_reader"]


def _array(a: Any) -> np.ndarray:
    return a.data if hasattr(a, "data") and hasattr(a, "post_ids") else a  # a FeatureSet


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") and "SC_IOV_MAX" in os.sysconf_names else 1024


class _NpyRows:
    """Reads rows of a C-ordered array file with pread; the descriptor is opened per process."""

    def __init__(self, path: str, offset: int, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.offset, self.dtype, self.shape = path, offset, dtype, shape
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._fd, self._pid = None, None

    @classmethod
    def of(cls, a: Any) -> Optional["_NpyRows"]:
        """A reader for a whole file-backed np.memmap (not a slice or view of one); else None."""
        if not isinstance(a, np.memmap) or not isinstance(a.base, mmap.mmap) or not a.filename \
                or not a.flags.c_contiguous or a.ndim < 1:
            return None
        return cls(str(a.filename), int(a.offset), a.dtype, tuple(a.shape))

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        return self._fd

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as one array in that order. The file is read in
        ascending row order, each run of consecutive rows with one ``preadv`` straight into the
        rows' places in the output, so no second copy puts them back in the order asked for."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        fd = self._descriptor()
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if not len(rows) or not self.row_bytes:
            return out
        flat = out.reshape(len(rows), -1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            for a in range(start, stop, _IOV_MAX):
                views = [memoryview(flat[j]) for j in order[a:min(a + _IOV_MAX, stop)]]
                self._preadv_all(fd, views, self.offset + int(ordered[a]) * self.row_bytes, int(ordered[a]))
        return out

    def _preadv_all(self, fd: int, views: list, pos: int, first_row: int) -> None:
        while views:
            n = os.preadv(fd, views, pos)
            if n == 0:
                raise EOFError(f"{self.path}: file ends before row {first_row}")
            pos += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views = views[1:]
            if views and n:
                views[0] = views[0][n:]

    def read_sorted(self, rows: np.ndarray) -> np.ndarray:
        fd = self._descriptor()
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            view = memoryview(flat[start:stop]).cast("B")
            pos, done = self.offset + int(rows[start]) * self.row_bytes, 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], pos + done)
                if n == 0:
                    raise EOFError(f"{self.path}: file ends before row {rows[start]}")
                done += n
        return out


class FeatureDataset(Dataset):
    """Item ``i`` = ``{name: arrays[name][rows[name][i]]}`` as tensors (floats as ``float_dtype``).

    arrays: name -> array-like with rows first (np.memmap, np.ndarray, or a
        mmsocial.features.store.FeatureSet); features and targets alike.
    rows: which rows make the dataset, one index array for all arrays or one per name
        (default: every row of equally long arrays).
    """

    def __init__(self, arrays: Mapping[str, Any], rows: Optional[np.ndarray | Mapping[str, np.ndarray]] = None,
                 float_dtype: torch.dtype = torch.float32):
        if not arrays:
            raise ValueError("FeatureDataset needs at least one array")
        self.arrays = {name: _array(a) for name, a in arrays.items()}
        if rows is None:
            lengths = {name: len(a) for name, a in self.arrays.items()}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"arrays have different lengths {lengths}; pass rows=... to align them")
            rows = np.arange(next(iter(lengths.values())))
        if not isinstance(rows, Mapping):
            rows = {name: rows for name in self.arrays}
        missing = set(self.arrays) - set(rows)
        if missing:
            raise ValueError(f"rows given for {sorted(rows)} but not for {sorted(missing)}")
        self.rows = {name: np.asarray(rows[name], dtype=np.int64) for name in self.arrays}
        sizes = {name: len(r) for name, r in self.rows.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"row index arrays have different lengths {sizes}")
        for name, r in self.rows.items():
            if len(r) and (r.min() < 0 or r.max() >= len(self.arrays[name])):
                raise IndexError(f"rows of {name!r} go outside its {len(self.arrays[name])} rows")
        self.float_dtype = float_dtype
        self._files = {name: _NpyRows.of(a) for name, a in self.arrays.items()}
        self._len = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self._len

    def _read(self, name: str, indices: np.ndarray) -> torch.Tensor:
        file, array, rows = self._files[name], self.arrays[name], self.rows[name][indices]
        if file is not None:
            out = file.read(rows)
        elif type(array) is np.ndarray:  # in memory: one gather in the order asked for
            out = array[rows]
        else:  # a view of a memmap, or another array-like: read forward through it
            out = read_rows(array, rows)
        t = torch.from_numpy(out)
        return t.to(self.float_dtype) if t.is_floating_point() else t

    def read(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Items ``indices`` as one batch: name -> tensor with ``len(indices)`` rows."""
        idx = np.asarray(indices, dtype=np.int64)
        return {name: self._read(name, idx) for name in self.arrays}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {name: t[0] for name, t in self.read([i]).items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        cols = self.read(indices)
        return [{name: t[j] for name, t in cols.items()} for j in range(len(indices))]


def sorted_row_reader(array: Any):
    """A function reading sorted rows of ``array``: ``pread`` for a whole file-backed np.memmap
    (see the module docstring), plain indexing otherwise; for ``store.read_rows``."""
    file = _NpyRows.of(_array(array))
    return file.read_sorted if file is not None else None


def as_is(batch: Any) -> Any:
    """Collate function for datasets whose ``__getitems__`` already returns a whole batch."""
    return batch


class TripletFeatures(Dataset):
    """The rows of a ``TripletBatch`` (mmsocial.data.graph) read from a FeatureDataset, one batch at a time.

    Give it to ``train(..., sampler_factory=<yields TripletBatch>, collate_fn=as_is)``: the DataLoader
    hands each TripletBatch as it is to ``__getitems__``, which returns one dict: every array of
    ``features`` for the anchors then the positives (2B rows; a positive that is also an anchor is
    read twice, as the model embeds it twice), and ``slots`` (B, K), the negatives' positions among
    the anchors (``TripletBatch.negative_slots``): negatives are anchors of the same batch (DMAN
    §3.2), so their rows are not read again and their embeddings are the anchors'.
    """

    def __init__(self, features: FeatureDataset):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        raise TypeError("TripletFeatures reads whole TripletBatches; use it with a triplet sampler and "
                        "collate_fn=as_is")

    def __getitems__(self, batch) -> dict[str, torch.Tensor]:
        if len(batch.anchors) == 0:
            raise ValueError("empty TripletBatch: the sampler must not yield batches without triplets")
        out = self.features.read(np.concatenate([batch.anchors, batch.positives]))
        out["slots"] = torch.from_numpy(batch.negative_slots())
        return out
