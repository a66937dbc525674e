import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddp_worker import make_data, make_model, mse_loss, worker_config
from mmsocial.config import ConfigError, TrainConfig
from mmsocial.train.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, read_index
from mmsocial.train.data import FeatureDataset
from mmsocial.train.distributed import epoch_batches
from mmsocial.train.trainer import lr_factor, train

torch.set_num_threads(1)


def cfg(**kw):
    base = dict(epochs=3, batch_size=8, optimizer="sgd", lr=0.05, device="cpu", progress=False,
                log_every=2, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def val_mse(data):
    x, y = data.tensors

    def evaluate(model):
        return {"mse": float(torch.mean((model(x) - y) ** 2)), "neg_mse": -float(torch.mean((model(x) - y) ** 2))}
    return evaluate


def test_loss_decreases_and_writes_logs_and_checkpoints(tmp_path):
    data = make_data(128)
    model = make_model()
    res = train(model, data, mse_loss, cfg(epochs=6, optimizer="adam", lr=0.02, tensorboard=True,
                                          early_stopping={"metric": "mse", "mode": "min", "patience": 50}),
                tmp_path, evaluate=val_mse(data), run_config={"hidden": 16})
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert res.steps == 6 * 16 and res.best_metric == min(h["mse"] for h in res.history)
    assert {"step", "epoch", "lr", "loss", "mae"} <= set(next(csv.DictReader(open(tmp_path / "train_log.csv"))))
    assert len(list(csv.DictReader(open(tmp_path / "history.csv")))) == 6
    assert any((tmp_path / "tensorboard").iterdir())
    fresh = make_model(seed=5)
    conf = load_checkpoint(tmp_path, fresh, which="last")
    assert conf["run"] == {"hidden": 16} and conf["train"]["lr"] == 0.02
    assert_same(params(fresh), params(model))
    assert "best mse" in res.summary()


def test_early_stopping_keeps_best_checkpoint(tmp_path):
    data = make_data(64)
    scores = iter([0.5, 0.9, 0.8, 0.85, 0.7, 0.95, 0.99])
    seen = {}

    def evaluate(model):
        seen[len(seen)] = params(model)
        return {"acc": next(scores)}
    res = train(make_model(), data, mse_loss, cfg(epochs=50, eval_every=3, early_stopping={"metric": "acc", "patience": 3}),
                tmp_path, evaluate=evaluate)
    assert res.stopped_early and res.steps == 15 and len(res.history) == 5
    assert res.best_metric == 0.9 and res.best_step == 6
    assert res.best_checkpoint != res.last_checkpoint
    best = make_model(seed=9)
    load_checkpoint(res.best_checkpoint, best)
    assert_same(params(best), seen[1])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["index.json", "step_00000006", "step_00000015"]
    again = train(make_model(), data, mse_loss, cfg(epochs=50, eval_every=3, early_stopping={"metric": "acc", "patience": 3}),
                  tmp_path, evaluate=evaluate)
    assert again.steps == 15 and again.stopped_early  # a finished run resumes to its end at once


def test_explicit_checkpoint_every_saves_only_improving_validations(tmp_path, monkeypatch):
    import mmsocial.train.trainer as trainer_module

    written = []
    save = trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint",
                        lambda root, step, *a, **k: written.append(step) or save(root, step, *a, **k))
    scores = iter([0.5, 0.9, 0.8, 0.85, 0.7])
    conf = dict(epochs=50, max_steps=15, eval_every=3, early_stopping={"metric": "acc", "patience": 100})
    res = train(make_model(), make_data(64), mse_loss, cfg(**conf, checkpoint_every=100), tmp_path / "sparse",
                evaluate=lambda m: {"acc": next(scores)})
    assert written == [3, 6, 15] and res.best_step == 6  # steps 9 and 12 validated without gain
    scores, written[:] = iter([0.5, 0.9, 0.8, 0.85, 0.7]), []
    train(make_model(), make_data(64), mse_loss, cfg(**conf), tmp_path / "every",
          evaluate=lambda m: {"acc": next(scores)})
    assert written == [3, 6, 8, 9, 12, 15]  # checkpoint_every 0: every validation and epoch end (8 steps)


def test_resume_after_max_steps_is_bit_identical(tmp_path):
    data = make_data(60)  # 8 batches an epoch, the last one short
    conf = dict(epochs=3, momentum=0.9, nesterov=True, lr_schedule="step", step_size=1, gamma=0.5,
                grad_clip=1.0, weight_decay=1e-3)
    full = make_model(dropout=0.3)
    train(full, data, mse_loss, cfg(**conf), tmp_path / "full")
    first = train(make_model(dropout=0.3), data, mse_loss, cfg(**conf, max_steps=11), tmp_path / "part")
    assert first.steps == 11  # mid-epoch; lr_schedule="step" does not depend on the total steps
    resumed = make_model(seed=7, dropout=0.3)
    res = train(resumed, data, mse_loss, cfg(**conf), tmp_path / "part")
    assert res.steps == 24
    assert_same(params(resumed), params(full))


class Killed(Exception):
    pass


def test_resume_after_kill_mid_epoch_is_bit_identical(tmp_path):
    data = make_data(60)
    conf = cfg(epochs=3, optimizer="adamw", lr=0.01, lr_schedule="cosine", checkpoint_every=5, eval_every=4,
               early_stopping={"metric": "mse", "mode": "min", "patience": 100})
    full = make_model(dropout=0.3)
    ref = train(full, data, mse_loss, conf, tmp_path / "full", evaluate=val_mse(data))

    calls = {"n": 0}

    def dying_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 14:  # killed during step 14; the last checkpoint is step 12 (an evaluation)
            raise Killed
        return mse_loss(model, batch)
    with pytest.raises(Killed):
        train(make_model(dropout=0.3), data, dying_loss, conf, tmp_path / "kill", evaluate=val_mse(data))
    assert read_index(tmp_path / "kill" / "checkpoints")["last"] == "step_00000012"
    resumed = make_model(seed=3, dropout=0.3)
    res = train(resumed, data, mse_loss, conf, tmp_path / "kill", evaluate=val_mse(data))
    assert_same(params(resumed), params(full))
    assert [h["mse"] for h in res.history] == [h["mse"] for h in ref.history]
    assert res.best_step == ref.best_step
    rows = list(csv.DictReader(open(tmp_path / "kill" / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(2, 25, 2))


def test_evaluation_does_not_change_the_training_stream(tmp_path):
    data = make_data(40)

    def noisy_evaluate(model):
        return {"score": float(torch.rand(1)) + float(np.random.rand())}
    plain, evaluated = make_model(dropout=0.5), make_model(dropout=0.5)
    train(plain, data, mse_loss, cfg(), tmp_path / "plain")
    train(evaluated, data, mse_loss, cfg(eval_every=2), tmp_path / "eval", evaluate=noisy_evaluate)
    assert_same(params(plain), params(evaluated))


def test_resume_refuses_a_changed_batch_size(tmp_path):
    data = make_data(32)
    train(make_model(), data, mse_loss, cfg(max_steps=2), tmp_path)
    with pytest.raises(ConfigError, match="batch_size"):
        train(make_model(), data, mse_loss, cfg(batch_size=4), tmp_path)
    res = train(make_model(), data, mse_loss, cfg(batch_size=4, max_steps=1), tmp_path, resume=False)
    assert res.steps == 1


def test_bad_inputs_are_named(tmp_path):
    data = make_data(16)
    with pytest.raises(ConfigError, match="needs an evaluate"):
        train(make_model(), data, mse_loss, cfg(early_stopping={"metric": "acc"}), tmp_path)
    with pytest.raises(KeyError, match="'acc' is not among"):
        train(make_model(), data, mse_loss, cfg(early_stopping={"metric": "acc"}), tmp_path / "a",
              evaluate=lambda m: {"f1": 1.0})
    with pytest.raises(TypeError, match="'loss'"):
        train(make_model(), data, lambda m, b: {"mse": mse_loss(m, b)["loss"]}, cfg(), tmp_path / "b")
    with pytest.raises(FloatingPointError, match="step 2"):
        train(make_model(), data, lambda m, b: {"loss": mse_loss(m, b)["loss"] * float("nan")}, cfg(), tmp_path / "c")
    with pytest.raises(ConfigError, match="lr: Input should be a valid number"):
        train(make_model(), data, mse_loss, {"lr": "fast"}, tmp_path / "d")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing", make_model())


def test_epoch_batches_shard_the_global_batch():
    one = epoch_batches(40, 8, seed=3, epoch=2)
    assert one == epoch_batches(40, 8, seed=3, epoch=2) and one != epoch_batches(40, 8, seed=3, epoch=1)
    ranks = [epoch_batches(40, 4, seed=3, epoch=2, rank=r, world_size=2) for r in range(2)]
    for step, batch in enumerate(one):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
        assert not set(ranks[0][step]) & set(ranks[1][step])
    padded = [epoch_batches(8, 2, seed=0, epoch=0, rank=r, world_size=3) for r in range(3)]
    assert {len(p) for p in padded} == {2} and {len(p[-1]) for p in padded} == {1}
    assert len(epoch_batches(11, 4, seed=0, epoch=0, drop_last=True)) == 2


def test_lr_factor():
    c = cfg(lr_schedule="halfway")
    assert [lr_factor(c, s, 0, 10) for s in (0, 4, 5, 9)] == [1.0, 1.0, 0.1, 0.1]
    c = cfg(lr_schedule="step", step_size=2, gamma=0.1)
    assert [lr_factor(c, 0, e, 10) for e in (0, 1, 2, 4)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    c = cfg(lr_schedule="cosine")
    assert lr_factor(c, 0, 0, 10) == 1.0 and lr_factor(c, 5, 0, 10) == pytest.approx(0.5)


def test_feature_dataset_reads_memmap_rows(tmp_path):
    arr = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(10, 3, 2))
    arr[:] = np.arange(60, dtype=np.float16).reshape(10, 3, 2)
    arr.flush()
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    ds = FeatureDataset({"regions": mm, "y": np.arange(10.0)}, rows=np.array([9, 2, 5]))
    assert len(ds) == 3
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    batch = next(iter(loader))
    assert batch["regions"].dtype == torch.float32 and batch["regions"].shape == (3, 3, 2)
    assert batch["y"].tolist() == [9.0, 2.0, 5.0]
    assert torch.equal(batch["regions"], torch.from_numpy(np.asarray(mm[[9, 2, 5]], dtype=np.float32)))
    assert torch.equal(ds[1]["regions"], batch["regions"][1])
    rows = np.array([4, 5, 6, 0, 9, 8, 2, 3])  # runs of consecutive rows are read in one pread
    from_file = FeatureDataset({"r": mm}, rows=rows).__getitems__(range(8))
    for source in (np.asarray(mm).copy(), mm[:]):  # in memory; a view of the memmap (fancy indexing)
        again = FeatureDataset({"r": source}, rows=rows).__getitems__(range(8))
        assert all(torch.equal(a["r"], b["r"]) for a, b in zip(from_file, again))
    with pytest.raises(IndexError, match="'y'"):
        FeatureDataset({"y": np.arange(3.0)}, rows=np.array([3]))


def test_meter_sums_match_float64_sums_by_name_when_the_entries_change():
    from mmsocial.train.trainer import _Meter

    g = torch.Generator().manual_seed(0)
    meter, expected = _Meter({"loss": 1.25, "a": 3.0}, count=2), {"loss": 1.25, "a": 3.0}
    for i in range(60):
        names = ["loss", "a"] if i < 20 or i >= 40 else ["loss", "b", "a"]  # a new entry, then gone again
        entries = {k: torch.rand((), generator=g) * 1e3 for k in names}
        meter.add(entries)
        for k, v in entries.items():
            expected[k] = float(torch.tensor(expected[k], dtype=torch.float64) + v.double()) if k in expected \
                else float(v.double())
    assert meter.state() == {"sums": expected, "count": 62}
    assert meter.means() == {k: v / 62 for k, v in expected.items()}


def test_rng_state_round_trip_in_the_compact_and_the_older_list_form():
    import random

    from mmsocial.train.trainer import _rng_state, _set_rng_state

    cpu = torch.device("cpu")
    random.seed(5), np.random.seed(7), torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    state = _rng_state(cpu)
    draws = (random.random(), np.random.normal(), torch.rand(3))
    older = {**state, "numpy": [state["numpy"][0], state["numpy"][1].tolist(), *state["numpy"][2:]],
             "python": (state["python"][0], tuple(state["python"][1].tolist()), state["python"][2])}
    for form in (state, older):
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        _set_rng_state(form, cpu)
        again = (random.random(), np.random.normal(), torch.rand(3))
        assert again[:2] == draws[:2] and torch.equal(again[2], draws[2])


def test_feature_rows_read_into_place_with_repeats_and_short_reads(tmp_path, monkeypatch):
    from mmsocial.train import data as train_data

    arr = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(50, 3, 2))
    arr[:] = np.random.default_rng(0).normal(size=arr.shape).astype(np.float16)
    arr.flush()
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    rows = np.array([7, 8, 9, 3, 3, 49, 0, 1, 10, 8])  # runs, a repeat, both ends of the file
    real = os.preadv

    def short(fd, buffers, offset):  # at most 5 bytes per call: a row is split across calls
        first = memoryview(buffers[0])[:5]
        return real(fd, [first], offset)
    monkeypatch.setattr(train_data.os, "preadv", short)
    got = FeatureDataset({"r": mm}).read(rows)["r"]
    monkeypatch.setattr(train_data.os, "preadv", real)
    assert torch.equal(got, torch.from_numpy(np.asarray(mm)[rows].astype(np.float32)))
    assert torch.equal(FeatureDataset({"r": mm}).read(rows)["r"], got)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(worker.parent)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", "2", "--master_port", str(_free_port()), str(worker), str(tmp_path / "ddp"), "6", "8"]
    cmd = [c for c in cmd if c != "--standalone"]  # --standalone picks its own port; we give a free one
    (tmp_path / "ddp").mkdir()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    one = make_model()  # the same run in this process, one rank with the same global batch
    train(one, make_data(), mse_loss, worker_config(6, 16), tmp_path / "one")
    ddp, one = torch.load(tmp_path / "ddp" / "params.pt"), params(one)
    start = make_model().state_dict()
    for k in one:
        assert not torch.allclose(one[k], start[k])
        torch.testing.assert_close(ddp[k], one[k], atol=1e-5, rtol=0)
    assert find_checkpoint(tmp_path / "ddp" / "run").name == "step_00000006"
