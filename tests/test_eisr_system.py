"""EISR system: every row of Tables 1-3 on a tiny synthetic corpus, and the config contract."""

import numpy as np
import pytest
import torch

from mmsocial.config import ConfigError, load_config
from mmsocial.systems import eisr as S


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus

    root = tmp_path_factory.mktemp("eisr")
    corpus = make_synthetic_corpus(SyntheticConfig(posts=80, seed=0, image_size=32), root / "corpus")
    cfg = load_config("configs/eisr/tiny.yaml", S.Config, {"corpus": str(root / "corpus"),
                                                            "workdir": str(root / "runs")})
    regions = np.random.default_rng(0).random((len(corpus.posts), 4, 16)).astype(np.float32)
    torch.set_num_threads(1)
    return S.prepare(corpus, cfg, features=regions), cfg, root


def test_prepare_aligns_pairs_and_standardises(tiny_data):
    data, cfg, _ = tiny_data
    n = len(data.post_ids)
    assert data.image.shape == (n, 16) and data.text.shape == (n, 8) and data.labels.shape[0] == n
    assert (data.labels.sum(1) >= 1).all() and set(data.split) == {"train", "val", "test"}
    tr = data.idx("train")
    np.testing.assert_allclose(data.text[tr].mean(0), 0, atol=1e-5)
    assert data.fingerprint() == data.fingerprint() and "classes" in data.describe()


@pytest.mark.parametrize("row", S.ROWS)
def test_every_row_runs_and_scores_a_valid_map(tiny_data, row):
    data, cfg, root = tiny_data
    cfg = cfg.model_copy(update={"tables": list(S.TABLES)})
    cell = S.run_cell(row, 0, data, cfg, root / "cells" / row.replace("/", "_"))
    assert set(cell.metrics) == set(S.row_tables(row))
    for scores in cell.metrics.values():
        assert set(scores) == {"Image query", "Text query", "Average"}
        assert all(0 < v <= 1 for v in scores.values())
        assert scores["Average"] == pytest.approx((scores["Image query"] + scores["Text query"]) / 2)
    if row in S.VARIANT_ROWS + S.SWEEP_ROWS:
        assert cell.history and all("val_map" in h for h in cell.history)
        assert cell.selection["metric"] == "val_map" and cell.selection["best_step"] <= cell.selection["last_step"]


def test_config_rejects_unknown_rows_and_tables():
    with pytest.raises(ConfigError, match="unknown row"):
        load_config({"rows": ["OURS"]}, S.Config)
    with pytest.raises(ConfigError, match="unknown table"):
        load_config({"tables": ["table4"]}, S.Config)
    cfg = load_config("configs/eisr/table1.yaml", S.Config)
    assert cfg.rows == list(S.SWEEP_ROWS)


def test_new_tables_have_the_paper_layout(tiny_data):
    data, cfg, _ = tiny_data
    tables = S.new_tables(cfg.model_copy(update={"tables": []}), data)
    assert list(tables) == ["table1", "table2", "table3"]
    assert tables["table3"].metrics == ["Image query", "Text query", "Average"]


def test_tiny_config_runs_end_to_end_through_the_runner(tmp_path):
    from mmsocial.experiment import ExperimentResult, run_experiment
    from mmsocial.systems import get

    assert get("eisr") is S
    result = run_experiment("configs/eisr/tiny.yaml", {"corpus": str(tmp_path / "corpus"),
                                                       "workdir": str(tmp_path / "run"), "synthetic.posts": 60,
                                                       "rows": ["CCA", "O/LE/J", "l=64"]}, progress=False)
    assert set(result.tables) == {"table1", "table2", "table3"}
    assert set(result.tables["table3"].rows) == {"CCA", "O/LE/J"} and set(result.tables["table1"].rows) == {"l=64"}
    assert result.cells[("O/LE/J", 0)].selection["metric"] == "val_map"
    again = ExperimentResult.load(tmp_path / "run")
    assert again.tables["table2"].mean("O/LE/J", "Average") == result.tables["table2"].mean("O/LE/J", "Average")


def test_voc2007_official_split_and_tag_features():
    from pathlib import Path

    from mmsocial.data.readers import read_voc2007

    fix = Path(__file__).parent / "fixtures" / "voc2007"
    corpus = read_voc2007(fix / "VOCdevkit" / "VOC2007", tags_dir=fix / "pascal07")
    cfg = load_config({"text": {"features": "tags", "min_count": 1}, "val_fraction": 0.0, "standardize": False},
                      S.Config)
    regions = np.ones((len(corpus.posts), 2, 3), dtype=np.float32)
    data = S.prepare(corpus, cfg, features=regions)
    official = dict(zip(corpus.posts["post_id"], corpus.posts["official_split"]))
    for pid, s in zip(data.post_ids, data.split):
        assert s == ("test" if official[pid] == "test" else "train")  # VOC val trains (trainval)
    assert set(np.unique(data.text)) <= {0.0, 1.0} and (data.text[data.idx("train")].sum(1) > 0).all()


def test_train_command_and_semantic_plot(tmp_path, tiny_data):
    from typer.testing import CliRunner

    from mmsocial.cli import app

    data, cfg, root = tiny_data
    r = CliRunner().invoke(app, ["train", "eisr", "--config", "configs/eisr/tiny.yaml", "--corpus",
                                 str(root / "corpus"), "--out", str(tmp_path / "run"), "--set", "image_size=32"])
    assert r.exit_code == 0, r.output
    z = np.load(tmp_path / "run" / "semantic_test.npz")
    np.testing.assert_allclose(z["image"].sum(1), 1.0)
    r = CliRunner().invoke(app, ["viz", "eisr-semantic", str(tmp_path / "run"), "--out", str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "f.png").stat().st_size > 1000
    r = CliRunner().invoke(app, ["viz", "eisr-semantic", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "semantic_test.npz" in r.output


def test_finetuning_trains_the_backbone_end_to_end_with_frozen_batch_norm(tiny_data):
    from mmsocial.features.backbones import PooledEncoder

    data, cfg, root = tiny_data
    cfg = cfg.model_copy(update={"finetune": True, "weights": "random", "image_size": 32,
                                 "model": cfg.model.model_copy(update={"iterations": 2, "batch_size": 8})})
    torch.manual_seed(0)
    before = S.finetuned_encoder(cfg, data)
    model, result, kept = S.train_eisr(data, "O/LE/J", cfg, root / "finetune", seed=0)
    enc = model.backbone
    assert isinstance(enc, PooledEncoder) and model.cfg.image_dim == 1280
    groups = model.param_groups()
    assert [g["lr"] for g in groups] == [model.cfg.lr_new, model.cfg.lr_pretrained]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in enc.parameters()}
    weights = [(n, p) for n, p in enc.named_parameters() if p.dim() == 4]
    assert any(not torch.equal(p, dict(before.named_parameters())[n]) for n, p in weights), "backbone never moved"
    bn = [(n, b) for n, b in enc.named_buffers() if n.endswith("running_mean")]
    assert bn and all(torch.equal(b, dict(before.named_buffers())[n]) for n, b in bn), "BN statistics changed"
    enc.train()
    assert all(not m.training for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    te = data.idx("test")
    sx, st = S.semantic_vectors(model, S.image_inputs(data, te, cfg), data.text[te])
    assert sx.shape == (len(te), len(data.classes)) and np.allclose(sx.sum(1), 1)
