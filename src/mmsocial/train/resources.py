"""Process resources for training: the allocator, torch's threads and DataLoader workers.

    from mmsocial.train.resources import tune_malloc, configure_threads
    tune_malloc()                    # once per process, before training (the trainer calls it)
    configure_threads(cfg.threads)   # explicit threads win; otherwise the rule below

The allocator: glibc's default malloc serves every block over M_MMAP_THRESHOLD (128 KiB, raised
dynamically up to 32 MiB) with its own mmap and returns it with munmap on free, and trims the heap
top beyond M_TRIM_THRESHOLD. A training step allocates and frees the same large activations and
gradients every step, so the kernel maps, zero-fills (one minor page fault per 4 KiB page) and
unmaps them again each step: about 2 million minor faults and a quarter of the CPU time in the
kernel for `mmsocial train dman` on the synthetic corpus (issue #15). ``tune_malloc`` keeps the
freed memory in the heap for reuse instead (docs/training.md, "Throughput").

The thread rule (``choose_threads``): an explicit ``threads:`` wins; otherwise the CPUs this
process may run on (``os.sched_getaffinity``) minus the 1-minute load average, rounded, at least 1.
Oversubscribed intra-op threads on a busy machine were seen up to 10x slower than one thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any, Callable, Optional

__all__ = ["tune_malloc", "malloc_settings", "choose_threads", "configure_threads", "default_workers",
           "TUNE_MALLOC_ENV"]

log = logging.getLogger(__name__)

TUNE_MALLOC_ENV = "MMSOCIAL_TUNE_MALLOC"
# glibc malloc.h parameter numbers
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
GIB, MIB = 1 << 30, 1 << 20


def malloc_settings() -> dict[int, int]:
    """mallopt parameter -> value: no mmap'ed blocks (every block comes from the heap and is reused
    after free), the heap top trimmed only beyond 1 GiB free, and grown 64 MiB at a time."""
    return {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: GIB, M_TOP_PAD: 64 * MIB}


_tuned: Optional[bool] = None  # None: not tried yet in this process


def _glibc() -> Optional[Any]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl, macOS, Windows: mallopt absent or a stub
    return libc


def tune_malloc(libc_loader: Callable[[], Optional[Any]] = _glibc) -> bool:
    """Apply ``malloc_settings`` with glibc's ``mallopt``, once per process; True when applied.

    A no-op (logged at debug level) without glibc, and when ``MMSOCIAL_TUNE_MALLOC=0`` (only for
    measuring the as-shipped allocator). Later calls return the first call's answer."""
    global _tuned
    if _tuned is not None:
        return _tuned
    if os.environ.get(TUNE_MALLOC_ENV, "1").strip() == "0":
        log.debug("%s=0: glibc malloc left at its defaults", TUNE_MALLOC_ENV)
        _tuned = False
        return _tuned
    libc = libc_loader()
    if libc is None:
        log.debug("no glibc mallopt in this process: the allocator is left as it is")
        _tuned = False
        return _tuned
    failed = [param for param, value in malloc_settings().items() if libc.mallopt(param, value) != 1]
    if failed:
        log.debug("mallopt refused parameters %s; the allocator may still return memory every step", failed)
    _tuned = not failed
    return _tuned


def _reset_for_tests() -> None:
    global _tuned
    _tuned = None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(requested: Optional[int] = None, cpus: Optional[int] = None,
                   load: Optional[float] = None) -> int:
    """Intra-op threads: ``requested`` when given; else usable CPUs minus the 1-minute load, rounded, >= 1."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        return int(requested)
    cpus = usable_cpus() if cpus is None else cpus
    load = load_average() if load is None else load
    return max(1, int(round(cpus - load)))


def configure_threads(requested: Optional[int] = None) -> int:
    """``torch.set_num_threads(choose_threads(requested))``; returns the count."""
    import torch

    n = choose_threads(requested)
    if requested is None:
        log.info("torch threads: %d (%d usable CPUs, 1-minute load %.2f; set threads: to choose)",
                 n, usable_cpus(), load_average())
    torch.set_num_threads(n)
    return n


def default_workers(dataset: Any, device_type: str) -> int:
    """DataLoader workers when ``num_workers`` is not set: none on CPU, where workers would only
    compete with the step for the same cores, and none for cached features (FeatureDataset,
    TripletFeatures, TensorDataset), which the trainer reads a whole batch at a time; on a GPU, for
    datasets that decode per item (images), up to 4 and one core left for the step."""
    from torch.utils.data import TensorDataset

    from mmsocial.train.data import FeatureDataset, TripletFeatures

    if device_type == "cpu" or isinstance(dataset, (FeatureDataset, TripletFeatures, TensorDataset)):
        return 0
    return max(0, min(4, usable_cpus() - 1))
