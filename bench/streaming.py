"""Train one epoch over memory-mapped region features larger than the memory the run may use.

    .venv/bin/python bench/streaming.py --posts 100000 --limit-mb 1024

1. Writes a float16 feature set (posts x regions x channels) with the feature store
   (mmsocial.features.store.write_features) under --workdir, plus a regression target per post,
   then evicts the file from the page cache (posix_fadvise DONTNEED) so that the training run
   has to read it from disk.
2. Starts the training run in a child process whose memory (anonymous + page cache) is capped:
   a new memory cgroup below this process's own (cgroup v1 memory.limit_in_bytes, or v2
   memory.max); with no writable cgroup, `systemd-run --scope -p MemoryMax=`; with neither it
   runs uncapped and says so. The child trains a small attention-pooling regressor for one epoch
   with mmsocial.train.trainer.train over mmsocial.train.data.FeatureDataset.
3. Prints file size, limit and how it was set, peak RSS, the cgroup's peak usage and failcnt,
   throughput and time; deletes everything it wrote (unless --keep).
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


def _write_features(workdir: Path, posts: int, regions: int, channels: int, seed: int) -> Path:
    from mmsocial.features.store import write_features

    path = workdir / "regions"
    if (path / "manifest.json").is_file():
        return path
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(channels).astype(np.float32) / np.sqrt(channels)
    targets = np.empty(posts, dtype=np.float32)
    block = 2000

    def batches():
        for start in range(0, posts, block):
            n = min(block, posts - start)
            x = rng.standard_normal((n, regions, channels), dtype=np.float32)
            targets[start:start + n] = np.tanh(x.max(axis=1) @ w)  # depends on the strongest region
            yield start, x.astype(np.float16)

    t0 = time.perf_counter()
    write_features(path, [f"p{i}" for i in range(posts)], (regions, channels), batches(),
                   {"extractor": "bench/streaming.py random regions", "seed": seed})
    np.save(workdir / "targets.npy", targets)
    print(f"wrote {path / 'data.npy'} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


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


def _make_cgroup(limit: int) -> tuple[Path | None, str]:
    """A new memory cgroup below ours with the limit set; (folder, description) or (None, why not)."""
    name = f"mmsocial-streaming-{os.getpid()}"
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
    from torch import nn

    from mmsocial.config import TrainConfig
    from mmsocial.features.store import FeatureSet
    from mmsocial.train.data import FeatureDataset
    from mmsocial.train.trainer import train

    torch.set_num_threads(args.threads)
    baseline = _status()
    feats = FeatureSet.open(Path(args.workdir) / "regions")
    targets = np.load(Path(args.workdir) / "targets.npy")
    data = FeatureDataset({"regions": feats, "y": targets})

    class AttentionPool(nn.Module):
        def __init__(self, c: int, h: int = 64):
            super().__init__()
            self.proj, self.att, self.out = nn.Linear(c, h), nn.Linear(h, 1), nn.Linear(h, 1)

        def forward(self, r):
            z = torch.tanh(self.proj(r))
            a = torch.softmax(self.att(z), dim=1)
            return self.out((a * z).sum(1)).squeeze(-1)

    torch.manual_seed(0)
    model = AttentionPool(feats.dims[-1])

    def loss_fn(m, batch):
        return {"loss": nn.functional.mse_loss(m(batch["regions"]), batch["y"])}

    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, optimizer="adam", lr=1e-3, device="cpu",
                      num_workers=args.workers, log_every=50, progress=not args.no_progress)
    t0 = time.perf_counter()
    result = train(model, data, loss_fn, cfg, Path(args.workdir) / "run", resume=False)
    seconds = time.perf_counter() - t0
    status = _status()
    print(json.dumps({
        "steps": result.steps, "seconds": seconds, "examples_per_second": len(data) / seconds,
        "train_loss_epoch_mean": result.history[-1].get("train_loss") if result.history else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "rss_after_imports": {k: baseline[k] for k in ("VmRSS", "RssAnon", "RssFile")},
        "rss_at_end": {k: status[k] for k in ("VmRSS", "RssAnon", "RssFile")},
    }), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=100_000)
    ap.add_argument("--regions", type=int, default=49)
    ap.add_argument("--channels", type=int, default=320)
    ap.add_argument("--limit-mb", type=int, default=1024, help="memory cap of the training process")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the training run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training run")
    ap.add_argument("--workdir", default="/tmp/mmsocial-streaming")
    ap.add_argument("--keep", action="store_true", help="keep the feature file for another run")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    group = None
    try:
        path = _write_features(workdir, args.posts, args.regions, args.channels, seed=0)
        data_file = path / "data.npy"
        size = data_file.stat().st_size
        _evict(data_file)
        limit = args.limit_mb * 2**20
        group, how = _make_cgroup(limit)
        cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
        preexec = None
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
        print(f"feature file {data_file}: {size / 2**30:.2f} GiB ({args.posts} x {args.regions} x "
              f"{args.channels} float16); memory limit {args.limit_mb} MiB via {how}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, preexec_fn=preexec, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        report = {"file_gib": size / 2**30, "limit_mib": args.limit_mb, "limit_method": how,
                  "child_returncode": done.returncode, "child_wall_s": wall}
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if lines:
            report.update(json.loads(lines[-1]))
        if group is not None:
            for key in ("memory.max_usage_in_bytes", "memory.failcnt", "memory.peak"):
                if (group / key).is_file():
                    v = int((group / key).read_text())
                    report[f"cgroup_{key.split('.', 1)[1]}"] = v / 2**20 if "bytes" in key or key == "memory.peak" else v
        if done.returncode != 0:
            report["error"] = "the training run failed (killed by the memory limit if returncode is -9)"
        print(json.dumps(report, indent=1))
        if "peak_rss_mb" in report:
            print(f"peak RSS {report['peak_rss_mb']:.0f} MiB = {report['peak_rss_mb'] / 1024 / report['file_gib']:.1%} "
                  f"of the {report['file_gib']:.2f} GiB file; {report['examples_per_second']:.0f} posts/s, "
                  f"epoch {report['seconds']:.1f} s")
    finally:
        if group is not None:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
