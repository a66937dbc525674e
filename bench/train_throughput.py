"""Training throughput of every registered system against the machine's own peak (issue #15).

For each system, on its cached features of a corpus (default /work/data/synthetic; features are
extracted through the feature store when missing), in a child process of its own:

- the trainer's overhead against a bare PyTorch loop, in ``--runs`` runs (below) -> samples/s of
  each arm and the overhead in % of the bare arm's CPU time (and wall time);
- the step's arithmetic counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward and
  backward) -> GFLOP/s of the trainer step, and its share of a 2048x2048 float32 matmul's GFLOP/s
  measured in the same run with the same threads;
- peak RSS of the child, user and system CPU time of the trainer arm (sys in % of user);
- one validation pass (the system's ``evaluate``) and the embedding of every post in inference mode
  (systems with an embedding function) -> posts/s.

The two arms, with the system's own model, dataset, loss, sampler, optimiser settings and
checkpoint cadence, captured from ``run_cell`` of its main row (the trainer call is intercepted):

- trainer arm: one ``train.trainer.train`` call from a fresh copy of the model, ``resume=False``,
  validation and early stopping off (``evaluate`` is timed on its own), for whole epochs of about
  ``--gflop`` GFLOP as FlopCounterMode counts the step (at least one epoch, at most ``--steps``
  steps and the system's schedule; so every run of the bench takes the same steps). It includes everything the trainer adds to the arithmetic: the run folder, config and
  CSV logs, the sampler's epochs, reading every batch (the "loader"; "read %" is its CPU share
  measured on its own), moving it to the device, the loss-dict checks and meters, logging every
  ``log_every``, the per-validation bookkeeping and every checkpoint the cadence asks for (the
  writer thread's CPU included), and the final checkpoint of the run;
- bare arm: the same steps with no trainer, logger, loader or checkpoint: a second fresh copy of
  the model, the same optimiser (``trainer._build_optimizer``, the same param groups), the
  trainer's seeding, the same batches already in memory (read before the run, outside both arms'
  clocks), and per step the same learning-rate factor, forward + loss, ``zero_grad``, backward,
  gradient clipping and optimiser step. The same arithmetic: after the first run the bench checks
  that both copies end with bit-identical weights ("same weights").

Measurement (robust to a shared, loaded machine): the arms are interleaved step by step inside one
``train`` call: the trainer's loss function first runs one step of the bare loop (on its own model,
batch and saved RNG state, swapped in and out), so the arms alternate B T B T ... at the scale of
one step and a change of the machine's speed hits both alike. The bare arm's time is the sum of its
steps; the trainer's is the call's minus everything spent inside those bare steps and RNG swaps.
CPU time, not wall time, is the main figure: with ``--threads 1`` every op runs in the calling
thread, so the bare steps are timed with that thread's CPU clock (``time.thread_time``; the process
clock with more threads or on a GPU), and the trainer's call with the process's (its checkpoint
writer thread included). Each run gives one ratio; the overhead is the median over ``--runs`` runs,
with the interquartile range and a percentile-bootstrap 95 % interval of the median (fixed seed).
Wall time is reported the same way. A run is short (seconds here), so the run's fixed costs (folder,
config, final checkpoint) weigh more than in a full schedule: the figure is an upper bound there.

    PYTHONPATH=src .venv/bin/python bench/train_throughput.py                      # every system, CPU
    PYTHONPATH=src .venv/bin/python bench/train_throughput.py --systems dman --device cuda
    PYTHONPATH=src .venv/bin/python bench/train_throughput.py --cli --baseline-src /tmp/shipped/src

``--cli`` times ``mmsocial train dman --config configs/dman/small.yaml --corpus CORPUS --set threads=1
--set model.epochs=2`` as a subprocess: the default, with ``MMSOCIAL_TUNE_MALLOC=0`` (glibc's
allocator as shipped), and with ``--baseline-src`` (another source tree, e.g. the shipped code) on the
PYTHONPATH, alternating over ``--reps`` repetitions; wall, user, sys and minor page faults come from
``resource.getrusage(RUSAGE_CHILDREN)`` deltas, and the speed-up is the baseline's mean wall over the
default's.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MAIN_ROWS = {"dman": "DMAN", "bssan": "BSSAN", "uhan": "UHAN"}  # others: the module's MAIN_ROW


class Captured(Exception):
    """Raised by the intercepted trainer once it has the system's training pieces."""


def matmul_peak(device: str, size: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP per wall second and per process CPU second of a size x size float32 matmul (best of
    ``reps``) with the current torch threads (on a GPU both are wall)."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    wall = cpu = float("inf")
    for _ in range(reps + 1):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        a @ b
        sync(device)
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    flops = 2 * size ** 3 / 1e9
    return {"wall": flops / wall, "cpu": flops / (wall if device == "cuda" else cpu)}


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def spread(ratios: list[float], resamples: int = 2000) -> dict[str, float]:
    """Median of the per-pair overheads, their interquartile range, and a percentile-bootstrap 95 %
    interval of the median (fixed seed, so the same runs give the same interval)."""
    x = np.asarray(ratios, dtype=float)
    boot = np.median(np.random.default_rng(0).choice(x, size=(resamples, len(x))), axis=1)
    return {"median": float(np.median(x)), "q1": float(np.quantile(x, 0.25)), "q3": float(np.quantile(x, 0.75)),
            "lo95": float(np.quantile(boot, 0.025)), "hi95": float(np.quantile(boot, 0.975)),
            "min": float(x.min()), "max": float(x.max())}


def cpu_times() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def capture(module, cfg, data, row: str, workdir: Path) -> dict[str, Any]:
    """The arguments of the system's first trainer call in ``run_cell(row, ...)``, model copied untrained."""
    import mmsocial.train.trainer as trainer

    real, got = trainer.train, {}

    def intercept(model, train_data, loss_fn, tcfg, out_dir, evaluate=None, collate_fn=None, sampler_factory=None,
                  resume=True, param_groups=None, run_config=None, **kw):
        got.update(model=copy.deepcopy(model), train_data=train_data, loss_fn=loss_fn, cfg=tcfg, evaluate=evaluate,
                   collate_fn=collate_fn, sampler_factory=sampler_factory,
                   groups=_group_names(model, param_groups))
        raise Captured
    trainer.train = intercept
    try:
        module.run_cell(row, 0, data, cfg, workdir)
    except Captured:
        pass
    finally:
        trainer.train = real
    if not got:
        raise RuntimeError(f"{module.NAME} row {row!r}: run_cell never called the trainer")
    return got


def _group_names(model, groups):
    """Optimiser groups by parameter name, to rebuild them on a copy of the model."""
    if groups is None:
        return None
    name = {id(p): n for n, p in model.named_parameters()}
    return [{**{k: v for k, v in g.items() if k != "params"}, "params": [name[id(p)] for p in g["params"]]}
            for g in groups]


def _groups_of(model, groups):
    if groups is None:
        return None
    params = dict(model.named_parameters())
    return [{**g, "params": [params[n] for n in g["params"]]} for g in groups]


def child(args) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mmsocial import systems
    from mmsocial.config import EarlyStoppingConfig, TrainConfig, load_config
    from mmsocial.experiment import load_corpus
    from mmsocial.train import trainer
    from mmsocial.train.distributed import epoch_batches
    from mmsocial.train.resources import tune_malloc

    malloc = tune_malloc()
    torch.set_num_threads(args.threads)
    module = systems.get(args.child)
    row = MAIN_ROWS.get(module.NAME) or getattr(module, "MAIN_ROW")
    overrides = {"corpus": args.corpus, "synthetic": None, "seeds": [0], "threads": args.threads,
                 "device": args.device}
    cfg = load_config(REPO / "configs" / module.NAME / "small.yaml", module.Config, overrides)
    data = module.prepare(load_corpus(cfg), cfg)
    work = Path(tempfile.mkdtemp(prefix=f"throughput-{module.NAME}-", dir=args.workdir))
    got = capture(module, cfg, data, row, work / "capture")
    tcfg = got["cfg"] if isinstance(got["cfg"], TrainConfig) else load_config(got["cfg"], TrainConfig)
    tcfg = tcfg.model_copy(update={"progress": False, "early_stopping": EarlyStoppingConfig(), "device": args.device})
    n = len(got["train_data"])
    device = torch.device(args.device)

    def epoch(e: int) -> list:
        if got["sampler_factory"] is not None:
            return [trainer._batch(b) for b in got["sampler_factory"](e, 0, 1)]
        return epoch_batches(n, tcfg.batch_size, tcfg.seed, e, 0, 1, tcfg.shuffle, tcfg.drop_last)

    def fresh():
        m = copy.deepcopy(got["model"]).to(device)
        return m, _groups_of(m, got["groups"])

    # the arms' CPU clock: with one torch thread every op of a step runs in the calling thread, so the
    # bare steps are timed with that thread's clock and the trainer's checkpoint writer thread (running
    # meanwhile on the other core) is not charged to them; with more threads, or on a GPU, the process's
    one_thread = args.device == "cpu" and torch.get_num_threads() == 1
    clock = time.thread_time if one_thread else time.process_time
    usage = resource.RUSAGE_THREAD if one_thread else resource.RUSAGE_SELF

    def read_all(batches: list) -> tuple[list, float]:
        """The batches read into memory (on the device) the way the trainer reads them, and the CPU s it took."""
        c = time.process_time()
        out = [trainer.move_to_device(b, device)
               for b in trainer.read_batches(got["train_data"], [b for _, b in batches], got["collate_fn"])]
        sync(args.device)
        return out, time.process_time() - c

    def interleaved_run(name: str, batches: list, steps: int) -> dict[str, Any]:
        """One ``trainer.train`` call of ``steps`` steps from a fresh copy of the model whose loss
        function first runs one step of the bare loop, on a second fresh copy and the next batch
        already in memory, with the bare loop's own RNG state: trainer and bare steps alternate
        (B T B T ...), so that a change of the machine's speed hits both arms alike. The bare arm's
        time is the sum of its steps; the trainer's is the call's minus everything spent in the bare
        steps and their RNG swaps."""
        data, read = read_all(batches)  # outside both arms' clocks; re-read for every run
        bm, bgroups = fresh()
        bm.train()
        total = int(min(steps, tcfg.epochs * per_epoch))
        acc = {"bare_cpu": 0.0, "bare_wall": 0.0, "hidden_cpu": 0.0, "hidden_wall": 0.0, "hidden_user": 0.0,
               "hidden_sys": 0.0, "step": 0, "opt": None}
        random.seed(tcfg.seed)  # the trainer's seeding before its first step (rank 0)
        np.random.seed(tcfg.seed % 2**32)
        torch.manual_seed(tcfg.seed)
        acc["rng"] = trainer._rng_state(device)

        def bare_step() -> None:
            step = acc["step"]
            if acc["opt"] is None:
                acc["opt"] = trainer._build_optimizer(tcfg, bgroups if bgroups is not None
                                                      else [p for p in bm.parameters() if p.requires_grad])
            opt, (e, _), batch = acc["opt"], batches[step], data[step]
            factor = trainer.lr_factor(tcfg, step, e, total)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * factor
            loss = got["loss_fn"](bm, batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(bm.parameters(), tcfg.grad_clip)
            opt.step()
            sync(args.device)
            data[step] = None
            acc["step"] = step + 1

        def loss_fn(model, batch):
            r0, c0, t0 = resource.getrusage(usage), clock(), time.perf_counter()
            own = trainer._rng_state(device)
            trainer._set_rng_state(acc["rng"], device)
            c1, t1 = clock(), time.perf_counter()
            bare_step()
            c2, t2 = clock(), time.perf_counter()
            acc["rng"] = trainer._rng_state(device)
            trainer._set_rng_state(own, device)
            c3, t3, r3 = clock(), time.perf_counter(), resource.getrusage(usage)
            acc["bare_cpu"] += c2 - c1
            acc["bare_wall"] += t2 - t1
            acc["hidden_cpu"] += c3 - c0
            acc["hidden_wall"] += t3 - t0
            acc["hidden_user"] += r3.ru_utime - r0.ru_utime
            acc["hidden_sys"] += r3.ru_stime - r0.ru_stime
            return got["loss_fn"](model, batch)

        m, groups = fresh()
        gc.collect()
        u0, s0 = cpu_times()
        sync(args.device)
        t, c = time.perf_counter(), time.process_time()
        trainer.train(m, got["train_data"], loss_fn, tcfg.model_copy(update={"max_steps": steps}),
                      work / name, collate_fn=got["collate_fn"], sampler_factory=got["sampler_factory"],
                      resume=False, param_groups=groups)
        sync(args.device)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        u1, s1 = cpu_times()
        if acc["step"] != steps:
            raise RuntimeError(f"the trainer took {acc['step']} steps, {steps} asked for")
        shutil.rmtree(work / name, ignore_errors=True)
        return {"trainer_model": m, "bare_model": bm, "read_cpu": read,
                "trainer_cpu": cpu - acc["hidden_cpu"], "trainer_wall": wall - acc["hidden_wall"],
                "bare_cpu": acc["bare_cpu"], "bare_wall": acc["bare_wall"],
                "user": u1 - u0 - acc["hidden_user"], "sys": s1 - s0 - acc["hidden_sys"]}

    per_epoch = len(epoch(0))

    def first_batches(steps: int) -> tuple[list, int]:
        out, e = [], 0
        while len(out) < steps:
            out += [(e, b) for b in epoch(e)]
            e += 1
        return out[:steps], e

    warm_steps = min(3, tcfg.max_steps or 3, per_epoch)
    warm_batches = first_batches(warm_steps)[0]
    interleaved_run("warm-up", warm_batches, warm_steps)  # libraries, caches, allocator
    m, _ = fresh()
    m.train()
    counted = [b for _, b in warm_batches]
    with FlopCounterMode(display=False) as fc:
        for batch in trainer.read_batches(got["train_data"], counted, got["collate_fn"]):
            got["loss_fn"](m, trainer.move_to_device(batch, device))["loss"].backward()
    flops_per_example = fc.get_total_flops() / sum(trainer._examples(b) for b in counted)
    flops_per_step = fc.get_total_flops() / len(counted)
    # the run's length from the arithmetic, not from a timing: the same steps in every run of the bench
    schedule = tcfg.max_steps or tcfg.epochs * per_epoch
    steps = int(max(1, min(args.steps, schedule, round(args.gflop * 1e9 / max(flops_per_step, 1.0)))))
    if schedule >= per_epoch:  # whole epochs: per-epoch costs (sampler, checkpoint) as in a run
        steps = min(schedule, per_epoch * max(1, round(steps / per_epoch)))
    batches, e = first_batches(steps)
    examples = sum(trainer._examples(b) for _, b in batches)
    runs = []
    for i in range(args.runs):
        rec = interleaved_run(f"run{i}", batches, steps)
        if i == 0:  # the same seed, batches and schedule: the two arms must end with the same weights
            a, b = rec["trainer_model"].state_dict(), rec["bare_model"].state_dict()
            identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        del rec["trainer_model"], rec["bare_model"]
        runs.append(rec)
    cpu_ratio = [p["trainer_cpu"] / p["bare_cpu"] - 1 for p in runs]
    wall_ratio = [p["trainer_wall"] / p["bare_wall"] - 1 for p in runs]
    t_wall, t_cpu = median([p["trainer_wall"] for p in runs]), median([p["trainer_cpu"] for p in runs])
    b_wall, b_cpu = median([p["bare_wall"] for p in runs]), median([p["bare_cpu"] for p in runs])
    user, system = sum(p["user"] for p in runs), sum(p["sys"] for p in runs)

    out = {"system": module.TITLE, "row": row, "steps": steps, "epochs": e, "examples": examples,
           "malloc_tuned": malloc, "threads": torch.get_num_threads(), "device": args.device,
           "trainer_wall_s": t_wall, "trainer_cpu_s": t_cpu, "bare_wall_s": b_wall, "bare_cpu_s": b_cpu,
           "read_cpu_s": median([p["read_cpu"] for p in runs]), "runs": len(runs),
           "overhead_cpu": spread(cpu_ratio), "overhead_wall": spread(wall_ratio),
           "read_share": median([p["read_cpu"] / p["bare_cpu"] for p in runs]), "identical": identical,
           "per_run": [{k: v for k, v in p.items()} for p in runs], "samples_per_s": examples / t_wall, "bare_samples_per_s": examples / b_wall,
           "gflop_per_step": flops_per_example * examples / steps / 1e9,
           # on a GPU the host's CPU time says nothing of the arithmetic: GFLOP per wall second there
           "gflop_per_cpu_s": flops_per_example * examples / (t_wall if args.device == "cuda" else t_cpu) / 1e9,
           "bare_gflop_per_cpu_s": flops_per_example * examples / (b_wall if args.device == "cuda" else b_cpu) / 1e9,
           "user_s": user, "sys_s": system}
    if got["evaluate"] is not None:
        m.eval()
        sync(args.device)
        t = time.perf_counter()
        with torch.no_grad():
            got["evaluate"](m)
        sync(args.device)
        out["eval_s"] = time.perf_counter() - t
    embedded = embedding(module.NAME, m, data)
    if embedded is not None:
        t = time.perf_counter()
        rows = embedded()
        sync(args.device)
        out["embed_per_s"] = rows / (time.perf_counter() - t)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def embedding(name: str, model, data):
    """A function embedding every post in inference mode and returning how many, or None."""
    import numpy as np

    if name == "dman":
        from mmsocial.systems.dman import _RegionView, embed
        return lambda: len(embed(model, _RegionView(data, np.arange(len(data.post_ids))),
                                 device=str(next(model.parameters()).device)))
    if name == "du2mce":
        from mmsocial.systems.du2mce import embed
        model.cpu()
        return lambda: len(embed(model, data, np.arange(len(data.split)))["I"])
    if name == "uhan":
        from mmsocial.systems.uhan import _Inputs, predict
        return lambda: len(predict(model, _Inputs(data), np.arange(len(data.y))))
    if name == "eisr":
        from mmsocial.systems.eisr import semantic_vectors
        model.cpu()
        return lambda: len(semantic_vectors(model, data.image, data.text)[0])
    return None


def _pct(s: dict[str, float]) -> str:
    return (f"{100 * s['median']:+.1f}% [{100 * s['q1']:+.1f}, {100 * s['q3']:+.1f}] "
            f"({100 * s['lo95']:+.1f} to {100 * s['hi95']:+.1f})")


def table(results: list[dict], peak: dict[str, float], device: str, threads: int) -> str:
    head = ["system (row)", "steps per run", "runs", "samples/s trainer", "samples/s bare",
            "overhead, CPU: median [IQR] (95% CI)", "overhead, wall: median [IQR] (95% CI)", "read % (CPU)",
            "same weights", "GFLOP/step", "GFLOP/CPU-s", "of matmul peak", "peak RSS", "sys % of user",
            "validation s", "embed posts/s"]
    lines = [f"matmul 2048² float32: {peak['cpu']:.1f} GFLOP per CPU-second, {peak['wall']:.1f} GFLOP/s wall "
             f"({device}, {threads} thread(s))", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['system']} | error: {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [f"{r['system']} ({r['row']})", str(r["steps"]), str(r["runs"]), f"{r['samples_per_s']:.0f}",
                 f"{r['bare_samples_per_s']:.0f}", _pct(r["overhead_cpu"]), _pct(r["overhead_wall"]),
                 f"{100 * r['read_share']:.1f}%", "yes" if r["identical"] else "NO",
                 f"{r['gflop_per_step']:.2f}", f"{r['gflop_per_cpu_s']:.1f}",
                 f"{100 * r['gflop_per_cpu_s'] / peak['cpu']:.0f}%",
                 f"{r['peak_rss_mib']:.0f} MiB", f"{100 * r['sys_s'] / max(r['user_s'], 1e-9):.1f}%",
                 f"{r['eval_s']:.2f}" if "eval_s" in r else "–",
                 f"{r['embed_per_s']:.0f}" if "embed_per_s" in r else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_cli(args) -> None:
    """`mmsocial train dman` as a subprocess, arms alternating; getrusage(RUSAGE_CHILDREN) deltas."""
    arms = [("default", {}, None), ("MMSOCIAL_TUNE_MALLOC=0", {"MMSOCIAL_TUNE_MALLOC": "0"}, None)]
    if args.baseline_src:
        arms.append((f"code of {args.baseline_src}", {}, args.baseline_src))
    stats: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name, _, _ in arms}
    work = Path(tempfile.mkdtemp(prefix="throughput-cli-", dir=args.workdir))
    for rep in range(args.reps):
        order = arms if rep % 2 == 0 else arms[::-1]
        for name, env_add, src in order:
            env = {**os.environ, **env_add, "PYTHONPATH": str(src or REPO / "src")}
            cmd = [sys.executable, "-m", "mmsocial", "train", "dman", "--config", str(REPO / "configs/dman/small.yaml"),
                   "--corpus", args.corpus, "--out", str(work / f"{len(stats[name])}-{name.split()[0][:20]}"),
                   "--set", f"threads={args.threads}", "--set", "model.epochs=2", "--set", "train.progress=false"]
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            stats[name].append((wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))
            print(f"  rep {rep} {name}: wall {wall:.1f} s, user {stats[name][-1][1]:.1f} s, "
                  f"sys {stats[name][-1][2]:.1f} s, minor faults {stats[name][-1][3]:,}", flush=True)
    print(f"\n`mmsocial train dman --config configs/dman/small.yaml --corpus {args.corpus} --set threads={args.threads} "
          f"--set model.epochs=2`, {args.reps} runs per arm, alternating; load average {os.getloadavg()}\n")
    print("| arm | wall s (runs) | mean wall s | mean user s | mean sys s | sys % of user | mean minor faults "
          "| speed-up of default (wall) | (user + sys) |")
    print("|---|---|---|---|---|---|---|---|---|")
    mean = {name: [sum(x[i] for x in v) / len(v) for i in range(4)] for name, v in stats.items()}
    for name, v in stats.items():
        w, u, s, f = mean[name]
        print(f"| {name} | {', '.join(f'{x[0]:.1f}' for x in v)} | {w:.1f} | {u:.1f} | {s:.1f} | {100 * s / u:.1f}% "
              f"| {f:,.0f} | {w / mean['default'][0]:.2f}× | {(u + s) / sum(mean['default'][1:3]):.2f}× |")


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in avg)


def main() -> None:
    import torch

    from mmsocial import systems

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="/work/data/synthetic")
    p.add_argument("--systems", nargs="*", default=None, help="default: every registered system")
    p.add_argument("--steps", type=int, default=400, help="at most this many steps per run")
    p.add_argument("--gflop", type=float, default=200.0,
                   help="runs of about this much arithmetic (whole epochs, at least one; FlopCounterMode's count)")
    p.add_argument("--runs", type=int, default=9, help="interleaved trainer/bare runs per system")
    p.add_argument("--reps", type=int, default=3, help="--cli: runs per arm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--workdir", default=None, help="temporary run folders (default: the system's temp dir)")
    p.add_argument("--cli", action="store_true", help="time `mmsocial train dman` with and without the malloc tuning")
    p.add_argument("--baseline-src", default=None, help="--cli: also time the source tree at this path (PYTHONPATH)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    if args.cli:
        run_cli(args)
        return
    torch.set_num_threads(args.threads)
    started, load_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    peak = matmul_peak(args.device)
    results = []
    for name in args.systems or systems.names():
        cmd = [sys.executable, __file__, "--child", name, "--corpus", args.corpus, "--steps", str(args.steps),
               "--gflop", str(args.gflop), "--runs", str(args.runs), "--threads", str(args.threads), "--device", args.device]
        if args.workdir:
            cmd += ["--workdir", args.workdir]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results.append({"system": name, "error": tail[:200]})
            print(f"{name}: failed ({tail})", file=sys.stderr, flush=True)
        else:
            results.append(json.loads(line[len("RESULT "):]))
            print(f"{name}: done in {time.perf_counter() - t:.0f} s, load average {_load(os.getloadavg())}",
                  file=sys.stderr, flush=True)
    peak_after = matmul_peak(args.device)
    print(table(results, peak, args.device, args.threads))
    print(f"\nmatmul again after the systems: {peak_after['cpu']:.1f} GFLOP per CPU-second, {peak_after['wall']:.1f} "
          f"GFLOP/s wall; started {started}, load average at the start {_load(load_start)}, at the end "
          f"{_load(os.getloadavg())}; "
          f"malloc tuned in the children: {sorted({r.get('malloc_tuned') for r in results if 'error' not in r})}")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak": peak, "peak_after": peak_after, "results": results}, indent=1))


if __name__ == "__main__":
    main()
