import json
import logging
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ddp_worker import make_data, make_model, mse_loss
from mmsocial.config import TrainConfig
from mmsocial.train import resources
from mmsocial.train.checkpoint import (WEIGHTS, load_training_state, read_index, save_checkpoint,
                                       weights_snapshot)
from mmsocial.train.data import FeatureDataset, as_is
from mmsocial.train.trainer import inference, read_batches, train

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_malloc_state(monkeypatch):
    monkeypatch.delenv(resources.TUNE_MALLOC_ENV, raising=False)
    resources._reset_for_tests()
    yield
    resources._reset_for_tests()


class FakeLibc:
    def __init__(self, answer=1):
        self.calls, self.answer = [], answer

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


def test_mallopt_is_called_once_per_process_with_the_settings():
    libc = FakeLibc()
    assert resources.tune_malloc(lambda: libc) is True
    assert resources.tune_malloc(lambda: libc) is True
    assert libc.calls == [(resources.M_MMAP_MAX, 0), (resources.M_TRIM_THRESHOLD, 1 << 30),
                          (resources.M_TOP_PAD, 64 << 20)]


def test_mallopt_is_off_with_the_environment_variable(monkeypatch, caplog):
    monkeypatch.setenv(resources.TUNE_MALLOC_ENV, "0")
    libc = FakeLibc()
    with caplog.at_level(logging.DEBUG, logger="mmsocial.train.resources"):
        assert resources.tune_malloc(lambda: libc) is False
    assert libc.calls == []
    assert resources.TUNE_MALLOC_ENV in caplog.text


def test_no_glibc_is_a_logged_no_op(caplog):
    with caplog.at_level(logging.DEBUG, logger="mmsocial.train.resources"):
        assert resources.tune_malloc(lambda: None) is False
    assert "no glibc" in caplog.text


def test_a_refused_parameter_is_reported(caplog):
    with caplog.at_level(logging.DEBUG, logger="mmsocial.train.resources"):
        assert resources.tune_malloc(lambda: FakeLibc(answer=0)) is False
    assert "refused" in caplog.text


@pytest.mark.skipif(resources._glibc() is None, reason="needs glibc")
def test_real_glibc_accepts_the_settings():
    assert resources.tune_malloc() is True


def test_thread_rule(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 1.0, 0.5))
    assert resources.choose_threads() == 5  # 8 usable CPUs - 2.6 busy, rounded
    assert resources.choose_threads(3) == 3  # an explicit `threads:` wins
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert resources.choose_threads() == 1  # never below one
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.1, 1.0, 1.0))
    assert resources.choose_threads() == 1  # this machine: 2 cores, the other one busy
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert resources.choose_threads() == 2
    with pytest.raises(ValueError, match="threads"):
        resources.choose_threads(0)


def test_configure_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert resources.configure_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class Items(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i))}


def test_workers_rule(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    features = FeatureDataset({"x": np.zeros((4, 3), np.float32)})
    assert resources.default_workers(Items(), "cpu") == 0
    assert resources.default_workers(features, "cpu") == 0
    assert resources.default_workers(features, "cuda") == 0  # cached features: read whole batches
    assert resources.default_workers(make_data(8), "cuda") == 0
    assert resources.default_workers(Items(), "cuda") == 4  # items decoded one by one on a GPU machine
    assert TrainConfig().num_workers is None


def _same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


def test_whole_batch_reads_equal_the_data_loader(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(20, 3, 2)).astype(np.float16))
    features = FeatureDataset({"x": np.load(tmp_path / "x.npy", mmap_mode="r"), "row": np.arange(20)})
    batches = [[3, 1, 7], [19, 0], [5]]
    for data, collate in ((features, None), (make_data(20), None), (Items(), None),
                          (features, lambda items: {"n": len(items)})):
        ours = list(read_batches(data, batches, collate))
        theirs = list(DataLoader(data, batch_sampler=batches, collate_fn=collate))
        _same(ours, theirs)


def test_inference_batches_in_eval_mode_and_restores_the_mode():
    model = make_model(dropout=0.5)
    x = make_data(70).tensors[0]
    model.train()
    out = inference(model, x, batch_size=16)
    assert model.training
    model.eval()
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(out, ref)
    assert not out.requires_grad
    np.testing.assert_array_equal(inference(model, x.numpy(), batch_size=32).numpy(), ref.numpy())
    with pytest.raises(ValueError, match="no rows"):
        inference(model, x[:0])


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight


def test_weights_snapshot_writes_the_same_file(tmp_path):
    torch.manual_seed(0)
    for model in (make_model(), Tied()):
        save_checkpoint(tmp_path / "live", 1, model, {"x": 1}, {})
        snap = weights_snapshot(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # the snapshot is a copy: later steps do not reach it
        save_checkpoint(tmp_path / "snap", 1, snap, {"x": 1}, {})
        assert (tmp_path / "live/step_00000001" / WEIGHTS).read_bytes() == \
            (tmp_path / "snap/step_00000001" / WEIGHTS).read_bytes()


def _train_cfg(**kw):
    base = dict(epochs=3, batch_size=8, optimizer="adam", lr=0.01, device="cpu", progress=False, log_every=2,
                seed=1, checkpoint_every=3, eval_every=4, early_stopping={"metric": "mse", "mode": "min",
                                                                          "patience": 100})
    base.update(kw)
    return TrainConfig(**base)


def _val(data):
    x, y = data.tensors
    return lambda m: {"mse": float(torch.mean((m(x) - y) ** 2))}


def test_background_checkpoint_equals_a_synchronous_one(tmp_path):
    data = make_data(60)
    runs = {}
    for background in (True, False):
        out = tmp_path / f"bg{background}"
        torch.manual_seed(0)
        runs[background] = train(make_model(dropout=0.3), data, mse_loss, _train_cfg(), out, evaluate=_val(data),
                                 background_checkpoints=background)
    a, b = (tmp_path / "bgTrue" / "checkpoints"), (tmp_path / "bgFalse" / "checkpoints")
    assert read_index(a) == read_index(b)
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for name in {read_index(a)["last"], read_index(a)["best"]}:
        assert (a / name / WEIGHTS).read_bytes() == (b / name / WEIGHTS).read_bytes()
        assert json.loads((a / name / "config.json").read_text()) == json.loads((b / name / "config.json").read_text())
        _same(load_training_state(a / name), load_training_state(b / name))
    assert runs[True].best_step == runs[False].best_step


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [13, 16])  # right after the checkpoint of step 12 / of step 15
def test_kill_while_a_checkpoint_is_written_resumes_exactly(tmp_path, kill_at):
    data = make_data(60)
    full = make_model(dropout=0.3)
    train(full, data, mse_loss, _train_cfg(), tmp_path / "full", evaluate=_val(data))
    calls = {"n": 0}

    def dying_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed
        return mse_loss(model, batch)
    with pytest.raises(Killed):
        train(make_model(dropout=0.3), data, dying_loss, _train_cfg(), tmp_path / "kill", evaluate=_val(data))
    assert read_index(tmp_path / "kill" / "checkpoints")["last"] == f"step_{kill_at - 1:08d}"
    resumed = make_model(seed=3, dropout=0.3)
    train(resumed, data, mse_loss, _train_cfg(), tmp_path / "kill", evaluate=_val(data))
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_a_failed_background_write_is_raised(tmp_path, monkeypatch):
    import mmsocial.train.trainer as trainer

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(trainer, "save_checkpoint", broken)
    with pytest.raises(OSError, match="disk full"):
        train(make_model(), make_data(40), mse_loss, _train_cfg(early_stopping={}), tmp_path / "run")
