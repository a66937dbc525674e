"""BSSAN through the generic runner: the tiny config end to end on a tiny synthetic corpus."""

from pathlib import Path

import pytest

from mmsocial import systems
from mmsocial.config import ConfigError
from mmsocial.experiment import load_experiment_config, run_experiment

CONFIGS = Path(__file__).parents[1] / "configs" / "bssan"


def test_tiny_config_runs_end_to_end(tmp_path):
    result = run_experiment(CONFIGS / "tiny.yaml", {"corpus": str(tmp_path / "corpus"),
                                                    "workdir": str(tmp_path / "run")}, progress=False)
    table = result.tables["table2"]
    assert list(table.rows) == ["CCA", "Dual encoder", "BSSAN_w2r", "BSSAN"]
    for row in table.rows:
        v = table.mean(row, "rsum")
        assert 0 <= v <= 600
        assert table.mean(row, "i2t Med r") >= 1
    cell = result.cells[("BSSAN", 0)]
    assert cell.selection["metric"] == "val_rsum" and cell.selection["best_epoch"] is not None
    assert len(cell.history) == 2 and all("val_rsum" in h and "train_loss" in h for h in cell.history)
    assert cell.diagnostics["test_images"] == cell.diagnostics["test_captions"]  # synthetic: one caption each
    assert result.cells[("CCA", 0)].history == []
    assert (tmp_path / "run" / "table2.md").is_file()
    # a second run keeps the finished cells
    again = run_experiment(CONFIGS / "tiny.yaml", {"corpus": str(tmp_path / "corpus"),
                                                   "workdir": str(tmp_path / "run")}, progress=False)
    assert all(t["kept"] for t in again.timings)


def test_registered_and_configs_validate():
    assert "bssan" in systems.names()
    module = systems.get("bssan")
    for name in ("tiny", "small", "table2", "table3", "paper"):
        m, cfg = load_experiment_config(CONFIGS / f"{name}.yaml")
        assert m is module and set(cfg.rows) <= set(module.ROWS) and set(cfg.tables) <= set(module.TABLES)
    with pytest.raises(ConfigError, match="unknown row"):
        load_experiment_config(CONFIGS / "tiny.yaml", {"rows": ["BSSAN_w2o"]})
    with pytest.raises(ConfigError, match="model.lam"):
        load_experiment_config(CONFIGS / "tiny.yaml", {"model.lam": -1})
