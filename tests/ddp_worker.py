"""A tiny regression problem shared by tests/test_trainer.py and its torchrun workers.

Run as a script (``torchrun --nproc_per_node 2 tests/ddp_worker.py OUT STEPS BATCH``) it trains
the problem and rank 0 saves the final parameters to OUT/params.pt.
"""

import sys

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset


def make_data(n: int = 64, d: int = 5, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.sin(x @ torch.linspace(-1, 1, d)) + 0.05 * torch.randn(n, generator=g)
    return TensorDataset(x, y)


class TinyNet(nn.Module):
    def __init__(self, d: int = 5, hidden: int = 16, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(d, hidden), nn.Linear(hidden, 1), nn.Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x)))).squeeze(-1)


def mse_loss(model, batch):
    x, y = batch
    pred = model(x)
    return {"loss": F.mse_loss(pred, y), "mae": (pred - y).abs().mean()}


def worker_config(steps: int, batch_size: int):
    from mmsocial.config import TrainConfig
    return TrainConfig(epochs=100, max_steps=steps, batch_size=batch_size, optimizer="sgd", lr=0.1,
                       momentum=0.9, device="cpu", progress=False, log_every=1, seed=3)


def make_model(seed: int = 0, dropout: float = 0.0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(dropout=dropout)


if __name__ == "__main__":
    from pathlib import Path

    from mmsocial.train.trainer import train

    out, steps, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    model = make_model()
    result = train(model, make_data(), mse_loss, worker_config(steps, batch), out / "run")
    if torch.distributed.is_initialized():
        raise SystemExit("the trainer left the process group it created open")
    import os
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "params.pt")
        print(result.summary())
