"""The one training loop every system uses: a function and a result, not a framework.

    result = train(model, dataset, loss_fn, cfg, "runs/dman", evaluate=val_fn)

``loss_fn(model, batch)`` returns a dict holding a scalar tensor "loss" and anything else to
log. ``evaluate(model)`` returns a dict of floats; ``cfg.early_stopping.metric`` names the one
that picks the best checkpoint and stops the run after ``patience`` validations without gain.

Exact resume: the epoch's data order is a pure function of (seed, epoch), the position in the
epoch is saved, the learning rate is a pure function of (step, epoch), and the torch / numpy /
python RNG states of every rank are saved; evaluation runs under a forked RNG so that it never
changes the training stream. A run killed and resumed reaches the same parameters bit for bit
(on CPU; on GPU up to the determinism of the kernels).

Under ``torchrun --nproc_per_node N`` the same call trains with DistributedDataParallel: each
rank takes a disjoint share of every global batch (batch_size per rank), rank 0 evaluates,
logs and writes checkpoints, and the stop decision is broadcast.

Throughput (docs/training.md, "Throughput"): glibc malloc is tuned once per process
(``resources.tune_malloc``); with no DataLoader workers a batch of cached features is read whole
(``FeatureDataset.read``, ``TensorDataset`` indexing, ``__getitems__``) instead of item by item;
checkpoints are written by a background thread from a copy of the weights and training state.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate
from tqdm.auto import tqdm

from mmsocial.config import ConfigError, TrainConfig, load_config, save_config
from mmsocial.train.checkpoint import (checkpoint_dir, load_training_state, prune_checkpoints, read_index,
                                       recover_checkpoints, save_checkpoint, weights_snapshot, write_index)
from mmsocial.train.data import FeatureDataset
from mmsocial.train.distributed import (DistInfo, barrier, broadcast_object, epoch_batches,
                                        gather_objects, init_distributed, shutdown_distributed)
from mmsocial.train.resources import default_workers, tune_malloc

__all__ = ["TrainResult", "train", "lr_factor", "unwrap_model", "move_to_device", "inference", "read_batches"]

log = logging.getLogger(__name__)
# settings that only say how long or how verbosely to train: changing them continues a run
RUN_LENGTH_FIELDS = ("epochs", "max_steps", "progress", "log_every", "tensorboard", "num_workers")

LossFn = Callable[[nn.Module, Any], Mapping[str, Any]]
EvalFn = Callable[[nn.Module], Mapping[str, float]]
SamplerFactory = Callable[[int, int, int], Iterable[Sequence[int]]]


@dataclass
class TrainResult:
    out_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    epochs: float = 0.0
    metric: Optional[str] = None
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    best_checkpoint: Optional[Path] = None
    last_checkpoint: Optional[Path] = None
    stopped_early: bool = False
    seconds: float = 0.0
    examples_per_second: float = 0.0
    resumed_from: Optional[int] = None  # the step this run continued from (None: from scratch)
    restart_reason: Optional[str] = None  # why checkpoints in out_dir were not resumed (resume="auto")

    def summary(self) -> str:
        lines = [f"trained {self.steps} steps ({self.epochs:.2f} epochs) in {self.seconds:.1f} s"
                 f" ({self.examples_per_second:.1f} examples/s)"
                 + (", stopped early" if self.stopped_early else "")]
        if self.metric and self.best_metric is not None:
            lines.append(f"best {self.metric} = {self.best_metric:.6g} at step {self.best_step}")
        if self.history:
            last = {k: v for k, v in self.history[-1].items() if isinstance(v, (int, float))}
            lines.append("last: " + ", ".join(f"{k}={v:.5g}" for k, v in last.items()))
        lines.append(f"best checkpoint: {self.best_checkpoint}")
        lines.append(f"last checkpoint: {self.last_checkpoint}")
        return "\n".join(lines)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def lr_factor(cfg: TrainConfig, step: int, epoch: int, total_steps: int) -> float:
    """Multiplier of the base learning rate before optimiser step ``step`` (0-based) in ``epoch``."""
    if cfg.lr_schedule == "none":
        return 1.0
    if cfg.lr_schedule == "step":
        return cfg.gamma ** (epoch // cfg.step_size)
    if cfg.lr_schedule == "halfway":  # EISR: divided by 10 at half of training
        return 0.1 if step >= total_steps // 2 else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _build_optimizer(cfg: TrainConfig, params: Iterable) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                              weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states; the numpy keys and the Python state's 625 words
    as int64 tensors: pickled as a list of ints they cost torch.save a Python call per int, a
    measurable share of every checkpoint (older checkpoints with lists still load)."""
    np_state = np.random.get_state()
    version, words, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "python": (version, torch.tensor(words, dtype=torch.int64), gauss)}


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words.tolist()) if isinstance(words, torch.Tensor) else tuple(words), gauss))


@contextlib.contextmanager
def _preserved_rng(device: torch.device):
    state = _rng_state(device)
    try:
        yield
    finally:
        _set_rng_state(state, device)


class _CsvLog:
    """Append-only CSV whose header grows when a new column appears (the file is rewritten)."""

    def __init__(self, path: Path, keep_until_step: Optional[int]):
        self.path, self.fields, rows = path, [], []
        if keep_until_step is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                rows = [r for r in reader if r.get("step") and int(r["step"]) <= keep_until_step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        from mmsocial.io import atomic_open

        with atomic_open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields, restval="")
            if self.fields:
                w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.fields]
        if new:
            with open(self.path, newline="", encoding="utf-8") as f:
                old = list(csv.DictReader(f)) if self.fields else []
            self.fields += new
            self._rewrite(old)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.fields, restval="").writerow(row)


class _Meter:
    """Running sums of the loss dict in float64, kept on the loss's device to avoid a sync per step.
    While the keys stay the same the sums are one vector, updated in place once per step
    (``add_stacked``); the same float64 additions in the same order as one tensor per key."""

    def __init__(self, sums: Optional[dict[str, float]] = None, count: int = 0):
        self.keys: Optional[tuple[str, ...]] = tuple(sums) if sums else None
        self.vec = torch.tensor(list(sums.values()), dtype=torch.float64) if sums else None
        self.count = count

    def add(self, values: Mapping[str, torch.Tensor]) -> None:
        self.add_stacked(*_stacked(values))

    def add_stacked(self, keys: tuple[str, ...], vec: torch.Tensor) -> None:
        if self.keys is None:
            self.keys, self.vec = keys, vec.clone()
        elif keys == self.keys:
            self.vec = self.vec.to(vec.device)
            self.vec += vec
        else:  # the loss dict changed its entries: add by name, new names start at this value
            sums = dict(zip(self.keys, self.vec.to(vec.device).unbind()))
            for k, v in zip(keys, vec.unbind()):
                sums[k] = sums[k] + v if k in sums else v.clone()
            self.keys, self.vec = tuple(sums), torch.stack(list(sums.values()))
        self.count += 1

    def _sums(self) -> dict[str, float]:
        return dict(zip(self.keys, self.vec.tolist())) if self.keys else {}

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self._sums().items()}

    def state(self) -> dict[str, Any]:
        return {"sums": self._sums(), "count": self.count}


def _stacked(values: Mapping[str, torch.Tensor]) -> tuple[tuple[str, ...], torch.Tensor]:
    """The loss entries as (names, one float64 vector) on the device of the first (MPS: the CPU)."""
    first = next(iter(values.values()))
    device = "cpu" if first.device.type == "mps" else first.device
    return tuple(values), torch.stack([v.detach().to(device) for v in values.values()]).to(torch.float64)


def _loss_entries(out: Any, step: int) -> dict[str, torch.Tensor]:
    if not isinstance(out, Mapping) or "loss" not in out:
        raise TypeError(f"loss_fn must return a dict with a scalar tensor 'loss' (step {step}); "
                        f"got {type(out).__name__}{' keys ' + str(list(out)) if isinstance(out, Mapping) else ''}")
    entries = {}
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"loss_fn output {k!r} must be a scalar, got shape {tuple(v.shape)}")
            entries[k] = v.reshape(())
        elif isinstance(v, (int, float)):
            entries[k] = torch.tensor(float(v))
    if not isinstance(out["loss"], torch.Tensor) or not out["loss"].requires_grad:
        raise TypeError("loss_fn output 'loss' must be a tensor that requires grad "
                        "(is it computed from the model's outputs?)")
    return entries


def _batch(b: Any) -> Any:
    """A batch from a sampler_factory: a list of dataset indices, or an object with ``num_examples``
    (e.g. data.graph.TripletBatch) handed as it is to the dataset's ``__getitems__``."""
    return b if hasattr(b, "num_examples") else [int(i) for i in b]


def _examples(b: Any) -> int:
    return int(b.num_examples) if hasattr(b, "num_examples") else len(b)


def _check_finite(values: Mapping[str, float], step: int, epoch: int) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"non-finite training values {bad} around step {step} (epoch {epoch}); "
                                 "lower train.lr, set train.grad_clip, or check the inputs for NaN")


def read_batches(dataset: Dataset, batches: Sequence[Any], collate_fn: Optional[Callable] = None) -> Iterable[Any]:
    """The batches a DataLoader without workers would give, each read whole: ``FeatureDataset.read``
    and tensor indexing of a ``TensorDataset`` (with the default collation: the same tensors as
    stacking the items), else ``__getitems__`` or the items, then ``collate_fn``."""
    if collate_fn is None and isinstance(dataset, FeatureDataset):
        return (dataset.read(b) for b in batches)
    if collate_fn is None and isinstance(dataset, TensorDataset):
        return ([t[i] for t in dataset.tensors] for i in (torch.as_tensor(b, dtype=torch.long) for b in batches))
    collate = collate_fn or default_collate
    if getattr(dataset, "__getitems__", None):
        return (collate(dataset.__getitems__(b)) for b in batches)
    return (collate([dataset[i] for i in b]) for b in batches)


def _rows(data: Any, a: int, b: int) -> Any:
    if isinstance(data, FeatureDataset):
        return data.read(np.arange(a, b))
    if isinstance(data, TensorDataset):
        return [t[a:b] for t in data.tensors]
    return data[a:b]


def _as_tensor(x: Any) -> Any:
    if isinstance(x, np.ndarray) or (not isinstance(x, (torch.Tensor, Mapping, list, tuple)) and hasattr(x, "__array__")):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) if np.asarray(x).dtype.kind == "f"
                             else np.ascontiguousarray(x))
    return x


@torch.inference_mode()
def inference(model: nn.Module, data: Any, batch_size: int = 256, fn: Optional[Callable] = None,
              device: Optional[str | torch.device] = None) -> torch.Tensor:
    """``fn(model, batch)`` (default ``model(batch)``) over consecutive batches of ``data`` in eval
    mode under ``torch.inference_mode``, concatenated on the CPU. ``data``: anything sliceable by
    rows (array, tensor, memmap, a row view) or a FeatureDataset / TensorDataset (read a whole
    batch at a time, as in training); numpy floats become float32 tensors. The model's train/eval
    mode is restored afterwards."""
    n = len(data)
    if n == 0:
        raise ValueError("inference: no rows to run the model on")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        out = []
        for a in range(0, n, batch_size):
            batch = move_to_device(_as_tensor(_rows(data, a, min(a + batch_size, n))), torch.device(device))
            y = fn(model, batch) if fn is not None else model(batch)
            out.append(y.float().cpu() if y.dtype != torch.float64 else y.cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def _snapshot(obj: Any) -> Any:
    """A copy of nested dicts, lists and tuples whose tensors are cloned (a state dict, for a checkpoint
    written in the background). Exact type checks: ``isinstance(x, Mapping)`` on every leaf of a
    large state cost a measurable share of short steps (EISR)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    kind = type(obj)
    if kind is dict:
        return {k: _snapshot(v) for k, v in obj.items()}
    if kind is list or kind is tuple:
        return kind(_snapshot(v) for v in obj)
    return obj


class _CheckpointWriter:
    """Writes one checkpoint at a time in a background thread, so the step loop does not wait on the
    disk. ``submit`` joins the previous write first (and re-raises its error), so checkpoints are
    written and indexed in step order; ``join`` at the end and on any exit. Kill safety is the
    checkpoint module's: a folder is renamed into place when complete, then the index is replaced."""

    def __init__(self, background: bool = True):
        self.background, self._thread, self._error = background, None, None

    def submit(self, work: Callable[[], None]) -> None:
        self.join()
        if not self.background:
            work()
            return

        def run():
            try:
                work()
            except BaseException as e:  # handed to the training thread at its next join
                self._error = e
        self._thread = threading.Thread(target=run, name="mmsocial-checkpoint", daemon=False)
        self._thread.start()

    def join(self, raise_error: bool = True) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None and raise_error:
            e, self._error = self._error, None
            raise e


def train(model: nn.Module, train_data: Dataset, loss_fn: LossFn, cfg: TrainConfig | Mapping | str | Path,
          out_dir: str | Path, evaluate: Optional[EvalFn] = None, collate_fn: Optional[Callable] = None,
          sampler_factory: Optional[SamplerFactory] = None, resume: "bool | str" = True,
          param_groups: Optional[Sequence[dict]] = None,
          run_config: Optional[Mapping[str, Any]] = None, background_checkpoints: bool = True) -> TrainResult:
    """Train ``model`` on ``train_data``; see the module docstring and docs/training.md.

    sampler_factory(epoch, rank, world_size) -> this rank's batches of dataset indices, for
    samplers that must build whole batches (triplets); it must be deterministic in its arguments
    and give every rank the same number of batches. A batch may also be an object with
    ``num_examples`` (a data.graph.TripletBatch): the DataLoader hands it as it is to the dataset's
    ``__getitems__`` (train.data.TripletFeatures; use ``collate_fn=train.data.as_is``). param_groups: optimiser groups (each may
    set its own "lr"); default all parameters. run_config: saved in each checkpoint's config.json
    (e.g. the model's hyper-parameters, to rebuild it later). resume: True continues from the
    last checkpoint in ``out_dir`` (a ConfigError when it cannot be continued exactly); "auto"
    continues when the configuration (train settings other than RUN_LENGTH_FIELDS, run_config,
    data) is the one of the checkpoint and otherwise starts over, giving the reason in
    ``TrainResult.restart_reason``; False starts over. background_checkpoints: write each checkpoint
    in a background thread from a copy of the weights and state (False: in the step loop; the
    files are the same).
    """
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    if not isinstance(cfg, TrainConfig):
        cfg = load_config(cfg, TrainConfig)
    if cfg.early_stopping.metric and evaluate is None:
        raise ConfigError(f"early_stopping.metric={cfg.early_stopping.metric!r} needs an evaluate function; "
                          "pass evaluate=... or set early_stopping.metric to null")
    if len(train_data) == 0:
        raise ValueError("train_data is empty: nothing to train on")
    from mmsocial.io import check_writable_folder

    check_writable_folder(out_dir, "run folder")  # a file or a read-only path: a ValueError naming it
    tune_malloc()
    info = init_distributed(cfg.device)
    try:
        result = _train(model, train_data, loss_fn, cfg, Path(out_dir), evaluate, collate_fn,
                        sampler_factory, resume, param_groups, dict(run_config or {}), info,
                        background_checkpoints)
        barrier(info)  # no rank tears gloo down while another still has a collective in flight
        return result
    finally:
        shutdown_distributed(info)


def _train(model, train_data, loss_fn, cfg: TrainConfig, out_dir: Path, evaluate, collate_fn,
           sampler_factory, resume, param_groups, run_config, info: DistInfo,
           background_checkpoints: bool = True) -> TrainResult:
    t0 = time.perf_counter()
    device, es = info.device, cfg.early_stopping
    ckpt_root = out_dir / "checkpoints"
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "train_config.yaml")
    n = len(train_data)

    def batches_for(epoch: int) -> list[list[int]]:
        if sampler_factory is None:
            return epoch_batches(n, cfg.batch_size, cfg.seed, epoch, info.rank, info.world_size,
                                 cfg.shuffle, cfg.drop_last)
        batches = [_batch(b) for b in sampler_factory(epoch, info.rank, info.world_size)]
        empty = [i for i, b in enumerate(batches) if not _examples(b)]
        if empty:
            raise ValueError(f"sampler_factory gave an empty batch (batch {empty[0]} of {len(batches)} in epoch "
                             f"{epoch}) for {n} training examples; the training set is probably too small for "
                             f"this sampler (use a bigger corpus or a smaller batch_size)")
        counts = gather_objects(len(batches), info)
        if not batches or len(set(counts)) > 1:
            raise ValueError(f"sampler_factory gave {counts} batches per rank in epoch {epoch}; "
                             "every rank needs the same, non-zero number")
        return batches

    first_epoch = batches_for(0)  # kept for epoch 0: a triplet sampler's epoch costs a measurable share
    steps_per_epoch = len(first_epoch)
    # the schedule's length; a triplet sampler may give an epoch a batch more or less than epoch 0
    # (it skips batches without any triplet), so the loop itself stops on epochs or max_steps
    total_steps = min(cfg.max_steps or math.inf, cfg.epochs * steps_per_epoch)
    max_steps = cfg.max_steps or math.inf

    random.seed(cfg.seed + info.rank)
    np.random.seed((cfg.seed + info.rank) % 2**32)
    torch.manual_seed(cfg.seed + info.rank)

    model.to(device)
    optimizer = _build_optimizer(cfg, param_groups if param_groups is not None
                                 else [p for p in model.parameters() if p.requires_grad])
    use_amp = cfg.amp and device.type == "cuda"
    # autocast(enabled=False) only matters inside a caller's own autocast; building it costs every step
    amp_context = (lambda: torch.autocast(device.type, dtype=torch.float16, enabled=use_amp)) \
        if use_amp or torch.is_autocast_enabled(device.type) else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    step, epoch, pos, examples = 0, 0, 0, 0
    best, best_step, best_dir, bad_evals, last_eval_step, stopped = None, None, None, 0, -1, False
    history: list[dict[str, Any]] = []
    log_meter, eval_meter = _Meter(), _Meter()
    last_dir: Optional[Path] = None
    data_key = [cfg.seed, cfg.batch_size, cfg.shuffle, cfg.drop_last, n, sampler_factory is not None]

    if resume and info.is_main:
        recover_checkpoints(ckpt_root)
    barrier(info)
    index = read_index(ckpt_root) if resume else {}
    restart_reason = None
    if resume == "auto" and index.get("last"):
        restart_reason = _why_not_resumable(ckpt_root / index["last"], cfg, run_config, data_key, info)
        if restart_reason:
            log.warning("%s: %s; starting over", ckpt_root / index["last"], restart_reason)
            index = {}
    if not index and info.is_main and (ckpt_root / "index.json").is_file():
        (ckpt_root / "index.json").unlink()  # a fresh run: the old checkpoints go at its first save
    resumed_from, resumed_examples = None, 0
    if index.get("last"):
        last_dir = ckpt_root / index["last"]
        state = load_training_state(last_dir)
        if state["world_size"] != info.world_size or state["data_key"] != data_key:
            raise ConfigError(
                f"{last_dir}: cannot resume exactly: it was written with world_size={state['world_size']}, "
                f"[seed, batch_size, shuffle, drop_last, n, custom sampler]={state['data_key']}; now "
                f"world_size={info.world_size}, {data_key}. Use resume=False or a new out_dir")
        from safetensors.torch import load_model
        load_model(model, str(last_dir / "model.safetensors"), strict=True, device=str(device))
        optimizer.load_state_dict(state["optimizer"])
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, pos, examples = state["step"], state["epoch"], state["pos"], state["examples"]
        best, best_step, bad_evals = state["best_metric"], state["best_step"], state["bad_evals"]
        last_eval_step, stopped, history = state["last_eval_step"], state["stopped_early"], state["history"]
        best_dir = ckpt_root / index["best"] if index.get("best") else None
        log_meter, eval_meter = _Meter(**state["log_meter"]), _Meter(**state["eval_meter"])
        _set_rng_state(state["rng"][info.rank], device)
        resumed_from, resumed_examples = step, examples
        log.info("%s: resuming from its last checkpoint (step %d, epoch %d)", last_dir, step, epoch)

    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.ddp_find_unused_parameters)

    train_log = history_log = writer = None
    if info.is_main:
        train_log = _CsvLog(out_dir / "train_log.csv", resumed_from)
        history_log = _CsvLog(out_dir / "history.csv", resumed_from)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out_dir / "tensorboard"),
                                   purge_step=resumed_from + 1 if resumed_from is not None else None)

    writer_thread = _CheckpointWriter(background=background_checkpoints)

    def checkpoint(improved: bool) -> None:
        nonlocal last_dir, best_dir
        rng = gather_objects(_rng_state(device), info)
        if not info.is_main:
            return
        # everything the write needs is copied now (the RNG states and meter states are new objects
        # already); the step loop goes on while a thread writes it
        state = {"step": step, "epoch": epoch, "pos": pos, "examples": examples,
                 "world_size": info.world_size, "data_key": list(data_key),
                 "optimizer": _snapshot(optimizer.state_dict()),
                 "scaler": _snapshot(scaler.state_dict()) if scaler is not None else None, "rng": rng,
                 "best_metric": best, "best_step": best_step, "bad_evals": bad_evals,
                 "last_eval_step": last_eval_step, "stopped_early": stopped,
                 "history": [dict(row) for row in history],
                 "log_meter": log_meter.state(), "eval_meter": eval_meter.state()}
        config = {"train": cfg.model_dump(mode="json"), "run": _snapshot(run_config), "step": step, "epoch": epoch,
                  "metric": es.metric, "value": history[-1].get(es.metric) if history and es.metric else None}
        weights = weights_snapshot(model)
        last_dir = checkpoint_dir(ckpt_root, step)
        if improved:
            best_dir = last_dir
        at, last, best_now = step, last_dir, best_dir

        def write() -> None:
            save_checkpoint(ckpt_root, at, weights, state, config)
            write_index(ckpt_root, last, best_now)
            prune_checkpoints(ckpt_root, {p.name for p in (last, best_now) if p is not None})
        writer_thread.submit(write)

    def validate() -> tuple[dict[str, Any], bool]:
        nonlocal best, best_step, bad_evals, stopped
        row: dict[str, Any] = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                               "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in eval_meter.means().items()})
        improved = False
        if evaluate is not None:
            model.eval()
            with torch.no_grad(), _preserved_rng(device):
                metrics = evaluate(model)
            model.train()
            if not isinstance(metrics, Mapping):
                raise TypeError(f"evaluate must return a dict of floats, got {type(metrics).__name__}")
            metrics = {k: float(v) for k, v in metrics.items()}
            if es.metric and es.metric not in metrics:
                raise KeyError(f"early_stopping.metric={es.metric!r} is not among the evaluate() results "
                               f"{sorted(metrics)}; fix train.early_stopping.metric")
            row.update(metrics)
            if es.metric:
                value = metrics[es.metric]
                gain = (value - best if es.mode == "max" else best - value) if best is not None else math.inf
                if math.isfinite(value) and gain > es.min_delta:
                    best, best_step, bad_evals, improved = value, step, 0, True
                else:
                    bad_evals += 1
                    stopped = bad_evals >= es.patience
        history.append(row)
        history_log.write(row)
        if writer is not None:
            for k, v in row.items():
                if k not in ("step", "epoch"):
                    writer.add_scalar(k if k.startswith("train_") else f"val/{k}", v, step)
        return row, improved

    pbar = tqdm(total=int(total_steps), initial=step,
                disable=not (info.is_main and cfg.progress), desc="train", dynamic_ncols=True)
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers(train_data, device.type)
    model.train()
    try:
        while not stopped and step < max_steps and epoch < cfg.epochs:
            batches, first_epoch = (first_epoch if epoch == 0 and first_epoch is not None
                                    else batches_for(epoch)), None
            if workers == 0:
                loader = read_batches(train_data, batches[pos:], collate_fn)
            else:
                loader_seed = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + info.rank)
                loader = DataLoader(train_data, batch_sampler=batches[pos:], collate_fn=collate_fn,
                                    num_workers=workers, pin_memory=device.type == "cuda",
                                    generator=loader_seed)
            for batch_indices_len, batch in zip((_examples(b) for b in batches[pos:]), loader):
                batch = move_to_device(batch, device)
                factor = lr_factor(cfg, step, epoch, int(total_steps))
                for g in optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * factor
                with amp_context():
                    entries = _loss_entries(loss_fn(train_model, batch), step)
                loss = entries["loss"]
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                step, pos, examples = step + 1, pos + 1, examples + batch_indices_len * info.world_size
                stacked = _stacked(entries)
                log_meter.add_stacked(*stacked)
                eval_meter.add_stacked(*stacked)
                pbar.update(1)

                if step % cfg.log_every == 0:
                    means = log_meter.means()
                    _check_finite(means, step, epoch)
                    if info.is_main:
                        train_log.write({"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **means})
                        pbar.set_postfix(loss=f"{means['loss']:.4g}")
                        if writer is not None:
                            for k, v in means.items():
                                writer.add_scalar(f"train/{k}", v, step)
                    log_meter = _Meter()

                end_of_epoch = pos == len(batches)
                if end_of_epoch:
                    epoch, pos = epoch + 1, 0
                at_limit = step >= max_steps or epoch >= cfg.epochs
                do_eval = (cfg.eval_every > 0 and step % cfg.eval_every == 0) or \
                          (cfg.eval_every == 0 and end_of_epoch) or at_limit
                improved = False
                if do_eval and step != last_eval_step:
                    _check_finite(eval_meter.means(), step, epoch)
                    if info.is_main:
                        _, improved = validate()
                    last_eval_step = step
                    eval_meter = _Meter()
                    stopped = broadcast_object(stopped, info)
                # with an explicit checkpoint_every, a validation writes a checkpoint only when it improved
                # (the best one is kept); a resume from an earlier checkpoint replays the steps exactly
                save = (do_eval and (improved or cfg.checkpoint_every == 0)) or at_limit or stopped or (
                    cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0) or (
                    cfg.checkpoint_every == 0 and end_of_epoch)
                if save:
                    checkpoint(improved)
                if stopped or at_limit:
                    break
    except BaseException:
        writer_thread.join(raise_error=False)  # a checkpoint of a completed step is finished, not cut
        raise
    writer_thread.join()
    pbar.close()
    if writer is not None:
        writer.close()

    seconds = time.perf_counter() - t0
    result = TrainResult(
        out_dir=out_dir, history=history, steps=step, epochs=step / steps_per_epoch, metric=es.metric,
        best_metric=best, best_step=best_step,
        best_checkpoint=best_dir if best_dir is not None else last_dir, last_checkpoint=last_dir,
        stopped_early=stopped, seconds=seconds,
        examples_per_second=(examples - resumed_examples) / seconds if seconds > 0 else 0.0,
        resumed_from=resumed_from, restart_reason=restart_reason)
    return broadcast_object(result, info)


def _why_not_resumable(last_dir: Path, cfg: TrainConfig, run_config: dict, data_key: list,
                       info: DistInfo) -> Optional[str]:
    """None when the checkpoint at ``last_dir`` continues this run; else the reason, naming keys."""
    try:
        stored = json.loads((last_dir / "config.json").read_text(encoding="utf-8"))
        state = load_training_state(last_dir)
    except Exception as e:  # a damaged checkpoint: torch and json raise several types
        return f"the last checkpoint is unreadable ({type(e).__name__}: {e})"
    now = {"train": cfg.model_dump(mode="json"), "run": json.loads(json.dumps(run_config, default=str))}
    changed = [f"train.{k}" for k in sorted(set(now["train"]) | set(stored.get("train", {})))
               if k not in RUN_LENGTH_FIELDS and now["train"].get(k) != stored.get("train", {}).get(k)]
    changed += _changed_keys(stored.get("run", {}), now["run"], "run")
    if changed:
        return f"the configuration changed since the last checkpoint ({', '.join(changed[:6])}" + \
            (", ..." if len(changed) > 6 else "") + ")"
    if state.get("world_size") != info.world_size:
        return f"it was written by {state.get('world_size')} processes, this run has {info.world_size}"
    if state.get("data_key") != data_key:
        return "the training data changed since the last checkpoint (number of examples or sampler)"
    return None


def _changed_keys(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [k for key in sorted(set(old) | set(new), key=str)
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}.{key}")]
    return [] if old == new else [prefix]
