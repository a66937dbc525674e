"""Train DMAN for one epoch on 100k synthetic posts whose region grids exceed the memory the run may use.

    .venv/bin/python bench/streaming.py --posts 100000 --limit-mb 1024

1. Builds a metadata-only synthetic corpus (``SyntheticConfig(write_images=False)``: tags, labels,
   links, no PNG) and writes random float16 region grids for its posts (posts x regions x channels)
   with the feature store (mmsocial.features.store.write_features) under --workdir; then evicts the
   feature file from the page cache (posix_fadvise DONTNEED) so that training reads it from disk.
2. Runs two training processes, one after the other, each in a new memory cgroup capped at
   --limit-mb (cgroup v1 memory.limit_in_bytes or v2 memory.max below this process's own group;
   with no writable cgroup, `systemd-run --scope -p MemoryMax=`; with neither, uncapped and said so):
   - ``stream``: DMAN itself, ``systems.dman.prepare`` + ``systems.dman.train_model`` for one epoch:
     every TripletBatch's region grids are read from the memory-mapped store when the batch is
     trained (train.data.TripletFeatures);
   - ``in-ram``: the old path, the same call after copying the training and validation posts' region
     grids into RAM as float32 (what ``DMANData.region_block`` over the whole train split did).
3. Prints, for each, the return code (-9: killed by the memory limit), peak RSS, the cgroup's peak
   usage and failcnt, steps, time and posts/s, then the ratio of the two peak RSS; deletes what it
   wrote (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _write_corpus_and_features(workdir: Path, posts: int, regions: int, channels: int, seed: int) -> tuple[Path, Path]:
    from mmsocial.data.corpus import Corpus
    from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus
    from mmsocial.features.store import write_features

    corpus_dir, feats = workdir / "corpus", workdir / "regions"
    if not (corpus_dir / "posts.parquet").is_file():
        t0 = time.perf_counter()
        make_synthetic_corpus(SyntheticConfig(posts=posts, seed=seed, write_images=False), corpus_dir)
        print(f"wrote the metadata-only corpus {corpus_dir} in {time.perf_counter() - t0:.1f} s", flush=True)
    if (feats / "manifest.json").is_file():
        return corpus_dir, feats
    ids = Corpus.load(corpus_dir, validate=False).posts["post_id"].tolist()
    rng = np.random.default_rng(seed)
    block = 2000
    # drawing 100k x 49 x 256 normals takes minutes on a busy CPU: one random block, each batch
    # a row permutation of it plus a random offset per channel (the numbers do not matter here)
    base = rng.standard_normal((block, regions, channels), dtype=np.float32).astype(np.float16)

    def batches():
        for start in range(0, len(ids), block):
            n = min(block, len(ids) - start)
            shift = rng.standard_normal(channels).astype(np.float16)
            yield start, base[rng.permutation(block)[:n]] + shift

    t0 = time.perf_counter()
    write_features(feats, ids, (regions, channels), batches(), {"extractor": "bench/streaming.py random regions",
                                                                "seed": seed})
    print(f"wrote {feats / 'data.npy'} in {time.perf_counter() - t0:.1f} s", flush=True)
    return corpus_dir, feats


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _own_cgroup_v1_memory() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
    return None


def _make_cgroup(limit: int, tag: str) -> tuple[Path | None, str]:
    """A new memory cgroup below ours with the limit set; (folder, description) or (None, why not)."""
    name = f"mmsocial-streaming-{os.getpid()}-{tag}"
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    try:
        if v2.is_file():
            own = Path("/sys/fs/cgroup") / Path("/proc/self/cgroup").read_text().split("::", 1)[1].strip().lstrip("/")
            group = own / name
            group.mkdir()
            (group / "memory.max").write_text(str(limit))
            (group / "memory.swap.max").write_text("0")
            return group, f"cgroup v2 {group}/memory.max = {limit}"
        own = _own_cgroup_v1_memory()
        if own is not None and own.is_dir():
            group = own / name
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(limit))
            if int((group / "memory.limit_in_bytes").read_text()) > limit:
                raise OSError("the kernel did not accept the limit")
            return group, f"cgroup v1 {group}/memory.limit_in_bytes = {limit}"
    except OSError as e:
        return None, f"no writable memory cgroup ({e})"
    return None, "no memory cgroup found"


def _status() -> dict[str, str]:
    lines = Path("/proc/self/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def _child(args) -> None:
    import torch

    from mmsocial.data.corpus import Corpus
    from mmsocial.features.store import FeatureSet
    from mmsocial.systems import dman as dman_system

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    cfg = dman_system.Config(preset="small", num_tags=args.num_tags, seeds=[0], workdir=str(workdir / args.child),
                             model={"epochs": 1, "batch_size": args.batch_size}, train={"progress": False})
    t0 = time.perf_counter()
    corpus = Corpus.load(workdir / "corpus", validate=False)
    data = dman_system.prepare(corpus, cfg, regions=FeatureSet.open(workdir / "regions"))
    del corpus
    prepared = _status()
    if args.child == "in-ram":  # the old path: the training (and validation) grids copied into RAM
        used = np.flatnonzero(data.split != "test")
        block = np.zeros((len(used), *data.regions.shape[1:]), dtype=np.float32)
        for a in range(0, len(used), 4096):
            block[a:a + 4096] = data.region_block(used[a:a + 4096])
        rows = np.zeros(len(data.post_ids), dtype=np.int64)
        rows[used] = np.arange(len(used))
        data.regions, data.region_rows = block, rows
    t1 = time.perf_counter()
    model, result = dman_system.train_model(data, "dman", cfg, workdir / args.child, seed=0)
    seconds = time.perf_counter() - t1
    status = _status()
    print(json.dumps({
        "path": args.child, "posts": len(data.post_ids), "split": data.describe(), "steps": result.steps,
        "train_seconds": seconds, "prepare_seconds": t1 - t0,
        "anchors_per_second": result.examples_per_second,
        "train_loss": result.history[-1].get("train_loss") if result.history else None,
        "val_loss": result.history[-1].get("val_loss") if result.history else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_prepare": {k: prepared[k] for k in ("VmRSS", "RssAnon", "RssFile")},
        "rss_at_end": {k: status[k] for k in ("VmRSS", "RssAnon", "RssFile")},
    }), flush=True)


def _run_capped(args, tag: str, data_file: Path) -> dict:
    limit = args.limit_mb * 2**20
    _evict(data_file)
    group, how = _make_cgroup(limit, tag)
    cmd = [sys.executable, __file__, *sys.argv[1:], "--child", tag]
    preexec = None
    try:
        if group is not None:
            procs = group / "cgroup.procs"
            preexec = lambda: procs.write_text("0")  # noqa: E731  (moves the child before exec)
        elif shutil.which("systemd-run") and subprocess.run(
                ["systemd-run", "--scope", "--quiet", "-p", f"MemoryMax={limit}", "true"],
                capture_output=True).returncode == 0:
            cmd = ["systemd-run", "--scope", "--quiet", "-p", f"MemoryMax={limit}", *cmd]
            how = f"systemd-run --scope -p MemoryMax={limit}"
        else:
            how += "; running UNCAPPED, only peak RSS is measured"
        print(f"[{tag}] memory limit {args.limit_mb} MiB via {how}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, preexec_fn=preexec, stdout=subprocess.PIPE, text=True)
        report = {"path": tag, "limit_mib": args.limit_mb, "limit_method": how,
                  "returncode": done.returncode, "wall_s": time.perf_counter() - t0}
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if lines:
            report.update(json.loads(lines[-1]))
        if group is not None:
            for key in ("memory.max_usage_in_bytes", "memory.failcnt", "memory.peak"):
                if (group / key).is_file():
                    v = int((group / key).read_text())
                    report[f"cgroup_{key.split('.', 1)[1]}"] = v / 2**20 if "bytes" in key or key == "memory.peak" else v
        if done.returncode != 0:
            report["error"] = ("killed by the memory limit" if done.returncode in (-9, 137)
                               else "the training run failed (see its stderr above)")
        print(json.dumps(report, indent=1), flush=True)
        return report
    finally:
        if group is not None:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=100_000)
    ap.add_argument("--regions", type=int, default=49)
    ap.add_argument("--channels", type=int, default=128, help="M of the random region grids (MobileNetV2: 1280)")
    ap.add_argument("--num-tags", type=int, default=20, help="L, DMAN's tag vocabulary")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--limit-mb", type=int, default=1024, help="memory cap of each training process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training runs")
    ap.add_argument("--paths", default="stream,in-ram", help="which training paths to run, in order")
    ap.add_argument("--workdir", default="/tmp/mmsocial-streaming")
    ap.add_argument("--keep", action="store_true", help="keep the corpus and feature file for another run")
    ap.add_argument("--child", choices=["stream", "in-ram"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        _, feats = _write_corpus_and_features(workdir, args.posts, args.regions, args.channels, seed=0)
        data_file = feats / "data.npy"
        size = data_file.stat().st_size
        print(f"feature file {data_file}: {size / 2**30:.2f} GiB ({args.posts} x {args.regions} x "
              f"{args.channels} float16)", flush=True)
        reports = {tag: _run_capped(args, tag, data_file) for tag in args.paths.split(",")}
        print("\npath     returncode  peak RSS MiB  cgroup peak MiB  steps  train s  anchors/s")
        for tag, r in reports.items():
            print(f"{tag:8s} {r['returncode']:10d}  {r.get('peak_rss_mb', float('nan')):12.0f}  "
                  f"{r.get('cgroup_max_usage_in_bytes', r.get('cgroup_peak', float('nan'))):15.0f}  "
                  f"{r.get('steps', 0):5d}  {r.get('train_seconds', float('nan')):7.1f}  "
                  f"{r.get('anchors_per_second', float('nan')):9.1f}  {r.get('error', '')}")
        s, m = reports.get("stream", {}), reports.get("in-ram", {})
        if "peak_rss_mb" in s:
            print(f"streaming: peak RSS {s['peak_rss_mb']:.0f} MiB for a {size / 2**30:.2f} GiB feature file "
                  f"under a {args.limit_mb} MiB cap")
            if "peak_rss_mb" in m:
                print(f"in-RAM path: peak RSS {m['peak_rss_mb']:.0f} MiB = {m['peak_rss_mb'] / s['peak_rss_mb']:.1f}x")
            elif m:
                print(f"in-RAM path under the same cap: returncode {m['returncode']} ({m.get('error')})")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
