"""Training throughput of every registered system against the machine's own peak (issue #15).

For each system, on its cached features of a corpus (default /work/data/synthetic; features are
extracted through the feature store when missing), in a child process of its own:

- the real training step through ``train.trainer.train``: the system's own model, dataset, loss,
  sampler, optimiser and checkpoint cadence, captured from ``run_cell`` of its main row (the
  trainer call is intercepted, nothing else is replaced), run for one epoch's worth of steps
  (at most ``--steps``) with validation off -> samples/s;
- the same model, optimiser and batches in a bare PyTorch loop (batches read into memory first; no
  trainer, logging, loader or checkpoint) -> the trainer's overhead in % of the bare time; the time
  to read the batches is shown too ("read %": part of the overhead);
- the step's arithmetic counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward and
  backward) -> GFLOP/s of the trainer step, and its share of a 2048x2048 float32 matmul's GFLOP/s
  measured in the same run with the same threads;
- peak RSS of the child, user and system CPU time of the trainer runs (sys in % of user);
- one validation pass (the system's ``evaluate``) and the embedding of every post in inference mode
  (systems with an embedding function) -> posts/s.

Each arm runs ``--reps`` times, alternating, and the fastest run counts. Single thread by default.

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
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

    def trainer_run(name: str, steps: int) -> tuple[float, float, float, float]:
        """(wall s, process CPU s, user s, sys s) of one trainer call from a fresh model."""
        m, groups = fresh()
        u0, s0 = cpu_times()
        sync(args.device)
        t, c = time.perf_counter(), time.process_time()
        trainer.train(m, got["train_data"], got["loss_fn"], tcfg.model_copy(update={"max_steps": steps}),
                      work / name, collate_fn=got["collate_fn"], sampler_factory=got["sampler_factory"],
                      resume=False, param_groups=groups)
        sync(args.device)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        u1, s1 = cpu_times()
        return wall, cpu, u1 - u0, s1 - s0

    def bare_run(batches: list) -> tuple[float, float, float]:
        """(wall s, CPU s) of the steps alone, and the CPU s of reading the batches (not in the first two)."""
        m, groups = fresh()
        m.train()
        opt = trainer._build_optimizer(tcfg, groups if groups is not None
                                       else [p for p in m.parameters() if p.requires_grad])
        wall = cpu = read = 0.0
        reader = trainer.read_batches(got["train_data"], batches, got["collate_fn"])
        for _ in batches:
            c = time.process_time()
            batch = trainer.move_to_device(next(reader), device)
            sync(args.device)
            read += time.process_time() - c
            t, c = time.perf_counter(), time.process_time()
            loss = got["loss_fn"](m, batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(m.parameters(), tcfg.grad_clip)
            opt.step()
            sync(args.device)
            wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
        return wall, cpu, read

    warm = min(3, tcfg.max_steps or 3, len(epoch(0)))
    step_s = trainer_run("warm-up", warm)[1] / warm  # also warms libraries, caches and the allocator
    schedule = tcfg.max_steps or tcfg.epochs * len(epoch(0))
    steps = int(max(1, min(args.steps, schedule, round(args.seconds / max(step_s, 1e-6)))))
    per_epoch = len(epoch(0))
    if steps >= per_epoch and schedule >= per_epoch:  # whole epochs: per-epoch costs (sampler, checkpoint) as in a run
        steps = min(schedule, per_epoch * max(1, round(steps / per_epoch)))
    batches, e = [], 0
    while len(batches) < steps:
        batches += epoch(e)
        e += 1
    batches = batches[:steps]
    examples = sum(trainer._examples(b) for b in batches)
    bare, runs = [], []
    for i in range(args.reps):  # alternating, so that a change of the machine's load hits both arms
        bare.append(bare_run(batches))
        runs.append(trainer_run(f"trainer{i}", steps))
    t_wall, t_cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    b_wall, b_cpu, read = min(r[0] for r in bare), min(r[1] for r in bare), min(r[2] for r in bare)
    user, system = sum(r[2] for r in runs), sum(r[3] for r in runs)

    m, _ = fresh()
    m.train()
    counted = batches[:min(3, len(batches))]
    with FlopCounterMode(display=False) as fc:
        for batch in trainer.read_batches(got["train_data"], counted, got["collate_fn"]):
            got["loss_fn"](m, trainer.move_to_device(batch, device))["loss"].backward()
    flops_per_example = fc.get_total_flops() / sum(trainer._examples(b) for b in counted)

    out = {"system": module.TITLE, "row": row, "steps": steps, "epochs": e, "examples": examples,
           "malloc_tuned": malloc, "threads": torch.get_num_threads(), "device": args.device,
           "trainer_wall_s": t_wall, "trainer_cpu_s": t_cpu, "bare_wall_s": b_wall, "bare_cpu_s": b_cpu,
           "read_cpu_s": read, "samples_per_s": examples / t_wall, "bare_samples_per_s": examples / b_wall,
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


def table(results: list[dict], peak: dict[str, float], device: str, threads: int) -> str:
    head = ["system (row)", "steps", "samples/s trainer", "samples/s bare", "overhead (CPU)", "overhead (wall)",
            "read % (CPU)", "GFLOP/step", "GFLOP/CPU-s", "of matmul peak", "peak RSS", "sys % of user",
            "validation s", "embed posts/s"]
    lines = [f"matmul 2048² float32: {peak['cpu']:.1f} GFLOP per CPU-second, {peak['wall']:.1f} GFLOP/s wall "
             f"({device}, {threads} thread(s))", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['system']} | error: {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [f"{r['system']} ({r['row']})", str(r["steps"]), f"{r['samples_per_s']:.0f}",
                 f"{r['bare_samples_per_s']:.0f}", f"{100 * (r['trainer_cpu_s'] / r['bare_cpu_s'] - 1):+.1f}%",
                 f"{100 * (r['trainer_wall_s'] / r['bare_wall_s'] - 1):+.1f}%",
                 f"{100 * r['read_cpu_s'] / r['bare_cpu_s']:.1f}%", f"{r['gflop_per_step']:.2f}",
                 f"{r['gflop_per_cpu_s']:.1f}", f"{100 * r['gflop_per_cpu_s'] / peak['cpu']:.0f}%",
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


def main() -> None:
    import torch

    from mmsocial import systems

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="/work/data/synthetic")
    p.add_argument("--systems", nargs="*", default=None, help="default: every registered system")
    p.add_argument("--steps", type=int, default=400, help="at most this many steps per run")
    p.add_argument("--seconds", type=float, default=8.0, help="aim at runs of about this many CPU seconds")
    p.add_argument("--reps", type=int, default=3)
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
    peak = matmul_peak(args.device)
    results = []
    for name in args.systems or systems.names():
        cmd = [sys.executable, __file__, "--child", name, "--corpus", args.corpus, "--steps", str(args.steps),
               "--seconds", str(args.seconds), "--reps", str(args.reps), "--threads", str(args.threads), "--device", args.device]
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
            print(f"{name}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    peak_after = matmul_peak(args.device)
    print(table(results, peak, args.device, args.threads))
    print(f"\nmatmul again after the systems: {peak_after['cpu']:.1f} GFLOP per CPU-second, {peak_after['wall']:.1f} "
          f"GFLOP/s wall; load average {os.getloadavg()}; "
          f"malloc tuned in the children: {sorted({r.get('malloc_tuned') for r in results if 'error' not in r})}")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak": peak, "peak_after": peak_after, "results": results}, indent=1))


if __name__ == "__main__":
    main()
