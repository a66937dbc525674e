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
    for name in ("tiny", "small", "table2", "table3", "paper", "pointing"):
        m, cfg = load_experiment_config(CONFIGS / f"{name}.yaml")
        assert m is module and set(cfg.rows) <= set(module.ROWS) and set(cfg.tables) <= set(module.TABLES)
    with pytest.raises(ConfigError, match="unknown row"):
        load_experiment_config(CONFIGS / "tiny.yaml", {"rows": ["BSSAN_w2o"]})
    with pytest.raises(ConfigError, match="model.lam"):
        load_experiment_config(CONFIGS / "tiny.yaml", {"model.lam": -1})


def test_two_stage_reuses_trained_cells_and_load_trained_rebuilds(tmp_path):
    import numpy as np
    import torch

    from mmsocial.experiment import cell_dir, load_corpus
    from mmsocial.systems import bssan as S

    over = {"corpus": str(tmp_path / "corpus"), "workdir": str(tmp_path / "run"),
            "rows": ["Dual encoder", "BSSAN", "BSSAN two-stage"]}
    result = run_experiment(CONFIGS / "tiny.yaml", over, progress=False)
    two = result.cells[("BSSAN two-stage", 0)]
    assert two.diagnostics["reused_dual_encoder"] == 1.0 and two.diagnostics["reused_bssan"] == 1.0
    assert two.history == []  # nothing trained again
    from mmsocial.eval.protocols.bssan import default_k_t2i

    d = two.diagnostics  # K_t2i by the default rule: ceil(K / captions per test image)
    assert d["k_t2i"] == default_k_t2i(int(d["k"]), int(d["test_images"]), int(d["test_captions"]))
    _, cfg = load_experiment_config(CONFIGS / "tiny.yaml", over)
    data = S.prepare(load_corpus(cfg), cfg)
    model, run = S.load_trained(cell_dir(tmp_path / "run", "BSSAN", 0) / "bssan")
    assert run["variant"] == "bssan" and run["data"] == data.fingerprint()
    # the input statistics come from the training images only and were saved with the weights
    R, O = data.image_features(data.images("train"))
    torch.testing.assert_close(model.region_mean, R.reshape(-1, R.shape[-1]).mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.object_std, O.reshape(-1, O.shape[-1]).std(0, correction=1), atol=1e-3, rtol=1e-3)
    imgs, caps, row = S._eval_sets(data, "test", cfg.test_images, cfg.captions_per_image, 0)
    metrics, scores, _ = S.evaluate_bssan(model, data, imgs, caps, row, cfg.chunk_pairs)
    assert metrics["rsum"] == pytest.approx(result.tables["table2"].mean("BSSAN", "rsum"), abs=1e-6)
    dual, _ = S.load_trained(cell_dir(tmp_path / "run", "Dual encoder", 0) / "dual")
    assert np.isfinite(S.dual_scores(dual, data, imgs, caps)).all()
    # the override of K_t2i, with the trained cells re-used
    over_cfg = cfg.model_copy(update={"two_stage_k_t2i": 1, "two_stage_full": False})
    cell = S.run_cell("BSSAN two-stage", 0, data, over_cfg, cell_dir(tmp_path / "run", "BSSAN two-stage", 0))
    assert cell.diagnostics["k_t2i"] == 1 and cell.diagnostics["reused_bssan"] == 1.0
    assert cell.diagnostics["pairs_scored"] <= d["pairs_scored"]
    with pytest.raises(Exception, match="checkpoint"):
        S.load_trained(tmp_path)


def test_negatives_both_trains_and_bad_value_is_an_error(tmp_path):
    over = {"corpus": str(tmp_path / "corpus"), "workdir": str(tmp_path / "run"), "rows": ["BSSAN_w2r"],
            "train.negatives": "both", "train.optimizer": "sgd"}
    result = run_experiment(CONFIGS / "tiny.yaml", over, progress=False)
    cell = result.cells[("BSSAN_w2r", 0)]
    assert len(cell.history) == 2 and all(h["train_loss"] > 0 for h in cell.history)
    with pytest.raises(ConfigError, match="negatives"):
        load_experiment_config(CONFIGS / "tiny.yaml", {"train.negatives": "images"})


@pytest.mark.parametrize("negative_attention, attention_init", [("softmax", "xavier"), ("both", "cross_covariance")])
def test_negatives_from_the_batch_trains_through_the_all_pairs_grid(tmp_path, negative_attention, attention_init):
    over = {"corpus": str(tmp_path / "corpus"), "workdir": str(tmp_path / "run"), "rows": ["BSSAN"],
            "train.negatives_from": "batch", "train.negatives": "both",
            "model.negative_attention": negative_attention, "model.attention_init": attention_init}
    result = run_experiment(CONFIGS / "tiny.yaml", over, progress=False)
    cell = result.cells[("BSSAN", 0)]
    assert len(cell.history) == 2 and all(h["train_loss"] > 0 for h in cell.history)
    assert 0 <= result.tables["table2"].mean("BSSAN", "rsum") <= 600
    with pytest.raises(ConfigError, match="negatives_from"):
        load_experiment_config(CONFIGS / "tiny.yaml", {"train.negatives_from": "everything"})
    with pytest.raises(ConfigError, match="negatives_from: batch"):
        load_experiment_config(CONFIGS / "tiny.yaml", {"model.negative_attention": "both",
                                                       "train.negatives_from": "draw"})


def test_cross_covariance_init_and_frozen_attention_through_training(tmp_path):
    """attention_init: cross_covariance is computed from the training pairs before training; with
    train.attention_lr: 0 the trained W of Eq. 2 / 10 is that init, while the rest of the model trained."""
    import torch

    from mmsocial.experiment import cell_dir, load_corpus
    from mmsocial.models.bssan import BSSAN
    from mmsocial.systems import bssan as S

    over = {"corpus": str(tmp_path / "corpus"), "workdir": str(tmp_path / "run"), "rows": ["BSSAN"],
            "model.attention_init": "cross_covariance", "model.attention_tanh": False, "train.attention_lr": 0}
    run_experiment(CONFIGS / "tiny.yaml", over, progress=False)
    _, cfg = load_experiment_config(CONFIGS / "tiny.yaml", over)
    data = S.prepare(load_corpus(cfg), cfg)
    trained, run = S.load_trained(cell_dir(tmp_path / "run", "BSSAN", 0) / "bssan")
    assert run["train"]["attention_lr"] == 0
    torch.manual_seed(0)  # the cell's seed: the same BiLSTM (O2W's word states) as the cell started from
    fresh = BSSAN(trained.cfg)
    fresh.set_input_statistics(*data.image_features(data.images("train")))
    fresh.init_attention_from_pairs(S.matched_pairs(data, data.captions(data.images("train"))))
    for net in ("w2r", "o2w"):
        W = getattr(trained, net).attention.W
        assert W.abs().max() > 0
        torch.testing.assert_close(W, getattr(fresh, net).attention.W, rtol=1e-5, atol=1e-7)
    assert not torch.equal(trained.w2r.lstm.weight_ih_l0, fresh.w2r.lstm.weight_ih_l0)
    with pytest.raises(ConfigError, match="attention_lr"):
        load_experiment_config(CONFIGS / "tiny.yaml", {"train.attention_lr": -1})
