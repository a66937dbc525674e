"""The generic experiment runner and the system registry, exercised with DMAN on toy data."""

import logging

import numpy as np
import pytest

from mmsocial import systems
from mmsocial.config import ConfigError
from mmsocial.experiment import ExperimentResult, load_experiment_config, run_experiment
from mmsocial.systems import dman as dman_system

TOY = {"system": "dman", "preset": "tiny", "seeds": [0], "num_tags": 8,
       "model": {"epochs": 3, "batch_size": 16},
       "baselines": {"n_components": 3, "kcca_features": 50, "dcca_epochs": 5, "dcca_hidden": [16]},
       "classifier": {"hidden": [16, 16], "epochs": 30, "patience": 5, "batch_size": 16, "lr": 1e-2},
       "train": {"progress": False}}


def _toy_dman_data(rng, n=160, d=4, m=16):
    cls = rng.integers(0, 4, n)
    regions = 0.3 * rng.normal(size=(n, d, m)).astype(np.float32)
    regions[np.arange(n), cls, cls] += 3.0
    vocab = ["a", "b", "c", "d", "x", "y", "z", "w"]
    tags = np.zeros((n, len(vocab)), dtype=np.float32)
    tags[np.arange(n), cls] = 1
    tags[np.arange(n), 4 + rng.integers(0, 4, n)] = 1  # noise tags
    labels = np.zeros((n, 4), dtype=np.float32)
    labels[np.arange(n), cls] = 1
    split = np.array(["train"] * 100 + ["val"] * 20 + ["test"] * 40)
    return dman_system.DMANData([f"p{i}" for i in range(n)], split, regions, np.arange(n), tags, labels, vocab,
                                ["a", "b", "c", "d"])


def test_registry_modules_have_the_documented_shape():
    assert "dman" in systems.names()
    for module in systems.all_systems():
        for attr in ("NAME", "TITLE", "PAPER", "ROWS", "TABLES", "Config", "prepare", "new_tables", "run_cell",
                     "train", "demo"):
            assert hasattr(module, attr), f"{module.__name__} lacks {attr}"
        assert module.Config.model_fields["system"].default == module.NAME
    with pytest.raises(systems.UnknownSystemError, match="registered"):
        systems.get("nope")


def test_dman_experiment_end_to_end_on_toy_data(rng, tmp_path, caplog):
    data = _toy_dman_data(rng)
    config = {**TOY, "workdir": str(tmp_path / "run")}
    result = run_experiment(config, progress=False, data=data)
    t2, t3 = result.tables["table2"], result.tables["table3"]
    assert list(t2.rows) == ["CCA", "KCCA", "DCCA", "DMAN_Triplet", "DMAN_Triplet+Text", "DMAN"]
    assert "DMAN_Triplet" not in t3.rows and "DMAN" in t3.rows  # image-only variant has no query
    assert t3.metrics == ["P@1", "P@5", "P@10", "P@20", "P@50"] and len(t3.values("DMAN", "P@50")) == 0
    # the pooled image feature alone separates the toy classes, so CCA's Table 2 must be high
    assert t2.mean("CCA", "Micro-F1") > 0.9
    for name in ("table2.json", "table2.csv", "table2.md", "table3.md", "cells.json", "timings.json",
                 "config.yaml", "DMAN-seed0/train_config.yaml", "DMAN-seed0/result.json"):
        assert (tmp_path / "run" / name).exists(), name
    # trained rows record their history (one record per epoch) and how the checkpoint was chosen
    cell = result.cells[("DMAN", 0)]
    assert len(cell.history) == 3 and "val_loss" in cell.history[-1] and "train_loss" in cell.history[-1]
    assert cell.selection["metric"] == "val_loss" and cell.selection["last_epoch"] == 3.0
    best = min(cell.history, key=lambda r: r["val_loss"])["epoch"]
    assert cell.selection["best_epoch"] == best  # the kept checkpoint is the best on validation
    assert result.cells[("DCCA", 0)].selection["metric"] == "val_loss"
    assert result.cells[("CCA", 0)].history == [] and cell.diagnostics["embedding_variance"] > 0
    # a rerun (e.g. after a kill) keeps every finished (row, seed) cell instead of training it again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmsocial"):
        again = run_experiment(config, progress=False, data=data)
    assert caplog.text.count("kept from an earlier run") == 6 and all(t["kept"] for t in again.timings)
    assert again.to_markdown() == result.to_markdown()
    # a changed setting invalidates the kept cells
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmsocial"):
        run_experiment(config, {"classifier.epochs": 31, "rows": ["CCA"]}, progress=False, data=data)
    assert "kept from an earlier run" not in caplog.text


def test_result_saves_loads_and_compares(rng, tmp_path):
    data = _toy_dman_data(rng)
    result = run_experiment({**TOY, "workdir": str(tmp_path / "a"), "rows": ["CCA", "KCCA"]}, progress=False,
                            data=data)
    back = ExperimentResult.load(tmp_path / "a")
    assert back.system == "dman" and back.to_markdown() == result.to_markdown() == str(result)
    assert back.cells[("KCCA", 0)].metrics == result.cells[("KCCA", 0)].metrics
    assert [t["row"] for t in back.timings] == ["CCA", "KCCA"]
    other = run_experiment({**TOY, "workdir": str(tmp_path / "b"), "rows": ["CCA"],
                            "baselines": {**TOY["baselines"], "n_components": 2}}, progress=False, data=data)
    diff = result.compare(other)
    d2 = diff["table2"]
    assert list(d2.rows) == ["CCA"]  # KCCA is in only one of the two
    expected = result.tables["table2"].mean("CCA", "mAP") - other.tables["table2"].mean("CCA", "mAP")
    assert d2.mean("CCA", "mAP") == pytest.approx(expected)
    same = result.compare(result)
    assert all(same["table2"].mean("CCA", m) == 0 for m in same["table2"].metrics)
    assert len(same["table3"].values("CCA", "P@50")) == 0  # 40 test images: no P@50 in either


def test_config_is_validated_before_any_corpus_is_read(tmp_path):
    corpus = tmp_path / "corpus"
    cfg = {"system": "dman", "corpus": str(corpus), "synthetic": {"posts": 20}, "workdir": str(tmp_path / "w")}
    with pytest.raises(ConfigError, match="model.epochz"):
        run_experiment(cfg, {"model.epochz": 3})
    with pytest.raises(ConfigError, match="train.lr"):
        run_experiment(cfg, ["train.lr=-1"])
    with pytest.raises(ConfigError, match="unknown row"):
        run_experiment(cfg, {"rows": ["CCA", "HNE"]})
    with pytest.raises(ConfigError, match="lfc_dims"):
        run_experiment(cfg, {"model.lfc_dims": "wide"})
    with pytest.raises(ConfigError, match="registered: dman"):
        run_experiment({"system": "nope"})
    with pytest.raises(ConfigError, match="no `system:` key"):
        run_experiment({"seeds": [0]})
    assert not corpus.exists() and not (tmp_path / "w").exists()
    module, c = load_experiment_config(cfg, {"model.epochs": 4, "train.momentum": 0.5})
    assert module is dman_system and c.model.overrides() == {"epochs": 4}
    assert c.train.model_dump(exclude_unset=True) == {"momentum": 0.5}


def test_synthetic_corpus_is_never_built_into_a_non_empty_folder(tmp_path):
    from mmsocial.data.corpus import CorpusError

    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty"):
        run_experiment({"system": "dman", "corpus": str(folder), "synthetic": {"posts": 20},
                        "workdir": str(tmp_path / "w")})
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
