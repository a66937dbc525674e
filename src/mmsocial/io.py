"""Atomic writes: the one way mmsocial puts a file or a folder in place.

A file is written under a temporary name in the same folder (``.NAME.tmp-PID-RANDOM``), flushed
and fsync'ed, renamed over ``NAME`` with ``os.replace`` and then the folder is fsync'ed, so that
the rename itself survives a power cut. A reader sees the old file or the new one, never a part
of either. A kill at any point leaves at most a hidden ``.NAME.tmp-*`` file or folder, which
``remove_temporaries`` deletes and nothing ever reads.

    write_text(path, text)                   # also write_bytes, write_json, save_npy
    with atomic_open(path, "wb") as f:       # anything that writes to a file object
        image.save(f, format="PNG")
    with atomic_folder(path) as tmp:         # a folder: fill tmp, it becomes path when complete
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

__all__ = ["temporary_name", "fsync_folder", "atomic_open", "write_text", "write_bytes", "write_json",
           "save_npy", "atomic_folder", "replace_folder", "restore_old", "remove_temporaries",
           "remove_stale_temporaries", "check_writable_folder"]

TMP_MARK = ".tmp-"


def temporary_name(path: "str | os.PathLike") -> Path:
    """The temporary sibling of ``path``: hidden, unique per process and call, same folder."""
    path = Path(path)
    return path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_folder(folder: "str | os.PathLike") -> None:
    """Make the renames and creations in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in sorted({p.parent for p in folder.rglob("*")} | {folder}):
        fsync_folder(d)


@contextlib.contextmanager
def atomic_open(path: "str | os.PathLike", mode: str = "w", **kwargs) -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` (durably).

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open writes a new file: mode must contain 'w', got {mode!r}")
    path = Path(path)
    tmp = temporary_name(path)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    f = open(tmp, mode.replace("x", "w"), **kwargs)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)


def write_bytes(path: "str | os.PathLike", data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: "str | os.PathLike", text: str, newline: "str | None" = None) -> Path:
    with atomic_open(path, "w", newline=newline) as f:
        f.write(text)
    return Path(path)


def write_json(path: "str | os.PathLike", obj: Any, **dumps_kwargs) -> Path:
    dumps_kwargs.setdefault("default", str)
    return write_text(path, json.dumps(obj, **dumps_kwargs))


def save_npy(path: "str | os.PathLike", array) -> Path:
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.save(f, array)
    return Path(path)


def replace_folder(tmp: "str | os.PathLike", final: "str | os.PathLike") -> Path:
    """Put the complete folder ``tmp`` at ``final`` (an existing ``final`` folder is replaced).

    Everything in ``tmp`` is fsync'ed first. Replacing an existing folder takes two renames
    (final -> hidden old name, tmp -> final); a kill between them leaves ``final`` absent and the
    old folder under ``.NAME.old-*`` beside it, which ``restore_old`` puts back.
    """
    tmp, final = Path(tmp), Path(final)
    _fsync_tree(tmp)
    if final.is_dir() and not final.is_symlink():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        fsync_folder(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_folder(final.parent)
    return final


def restore_old(final: "str | os.PathLike") -> bool:
    """After a kill inside ``replace_folder``: put the previous folder back if ``final`` is absent;
    delete leftovers when it is present. True when something was restored."""
    final = Path(final)
    olds = sorted(final.parent.glob(f".{final.name}.old-*")) if final.parent.is_dir() else []
    restored = False
    for old in olds:
        if not final.exists():
            os.replace(old, final)
            fsync_folder(final.parent)
            restored = True
        else:
            shutil.rmtree(old, ignore_errors=True)
    return restored


@contextlib.contextmanager
def atomic_folder(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without an exception it
    replaces ``path`` (see ``replace_folder``); on an exception it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temporaries(folder: "str | os.PathLike") -> None:
    """Delete what killed atomic writes left in ``folder`` (hidden ``.NAME.tmp-*`` entries)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.glob(f".*{TMP_MARK}*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def remove_stale_temporaries(path: "str | os.PathLike") -> None:
    """Delete the temporary siblings of ``path`` (``.NAME.tmp-PID-*``) whose process is gone: what a
    killed ``atomic_folder`` or ``atomic_open`` of ``path`` left behind."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        pid = p.name[len(f".{path.name}{TMP_MARK}"):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable_folder(path: "str | os.PathLike", what: str = "output folder", create: bool = True) -> Path:
    """Check that files can be created in the folder ``path`` (created when ``create``; otherwise
    nothing is left behind: the nearest existing folder on the way is probed). A ValueError that
    names the path otherwise (it is a file, a part of it is a file, or it is read-only)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: the {what} is a file, not a folder; choose another path")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{path}: the {what} cannot be created: {existing} is a file")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            existing = path
        probe = temporary_name(existing / "write-test")
        probe.touch()
        probe.unlink()
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{path}: the {what} cannot be created: a part of the path is a file") from None
    except PermissionError:
        raise ValueError(f"{path}: the {what} is not writable (permission denied); choose another "
                         f"path or fix its permissions") from None
    except OSError as e:
        raise ValueError(f"{path}: the {what} cannot be written ({e.strerror or e})") from None
    return path
