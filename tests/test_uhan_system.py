"""UHAN through the generic runner and the CLI, on a tiny synthetic corpus (real MobileNetV2 weights at 64 px)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmsocial import systems
from mmsocial.config import ConfigError, load_config
from mmsocial.data.corpus import Corpus
from mmsocial.experiment import run_experiment

TINY = str(Path(__file__).parents[1] / "configs" / "uhan" / "tiny.yaml")
ROWS = ["HisAve", "SVR", "DMF", "DualAtt", "UHAN", "UHAN (w/o V)"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus

    out = tmp_path_factory.mktemp("uhan") / "corpus"
    make_synthetic_corpus(SyntheticConfig(posts=150, seed=0, workers=1), out)
    return out


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_registered_with_the_contract():
    m = systems.get("uhan")
    assert m.NAME == "uhan" and m.TITLE == "UHAN" and set(m.TABLES) == {"table2", "table3", "table4", "text"}
    for fn in ("prepare", "new_tables", "run_cell", "train", "demo", "add_commands"):
        assert callable(getattr(m, fn))
    cfg = load_config({"tables": ["table4"]}, m.Config)
    assert cfg.rows == ["HisAve", "UHAN (w/o intra+inter)", "UHAN (w/o intra)", "UHAN (w/o inter)",
                        "UHAN (w/o sc)", "UHAN"]  # Table 4's rows in the paper's order
    with pytest.raises(ConfigError, match="unknown row"):
        load_config({"rows": ["UHAN (w/o x)"]}, m.Config)
    with pytest.raises(ConfigError, match="unknown table"):
        load_config({"tables": ["table9"]}, m.Config)


def test_tiny_experiment_end_to_end_through_the_runner(corpus_dir, tmp_path):
    ov = {"corpus": str(corpus_dir), "workdir": str(tmp_path / "run"), "rows": ROWS, "tables": ["table2", "table3"]}
    result = run_experiment(TINY, ov, progress=False)
    t2, t3 = result.tables["table2"], result.tables["table3"]
    assert list(t2.rows) == ["HisAve", "SVR", "DMF", "DualAtt", "UHAN"]
    assert list(t3.rows) == ["HisAve", "SVR", "UHAN (w/o V)", "UHAN"]
    for row in t2.rows:
        for metric in ("MSE", "MAE"):
            assert math.isfinite(t2.mean(row, metric)) and t2.mean(row, metric) >= 0
    assert t2.mean("UHAN", "MSE") == t3.mean("UHAN", "MSE")  # one cell fills both tables
    cell = result.cells[("UHAN", 0)]
    assert cell.history and all("val_mse" in h for h in cell.history)
    sel = cell.selection
    assert sel["metric"] == "val_mse" and sel["best_step"] <= sel["last_step"]
    # the kept checkpoint is the one of the lowest validation MSE, not the last one
    assert sel["best_val_mse"] == min(h["val_mse"] for h in cell.history)
    assert "chosen_features" in result.cells[("SVR", 0)].selection
    # HisAve = the user's training mean: recompute it independently
    from mmsocial.data.splits import uhan_split

    c = Corpus.load(corpus_dir)
    split = uhan_split(c, 0)
    y = np.log2(c.posts["views"] / c.posts["days"] + 1).to_numpy()
    users = c.posts["user_id"].to_numpy()
    means = {u: y[(split == "train") & (users == u)].mean() for u in set(users[split == "train"])}
    pred = np.array([means.get(u, y[split == "train"].mean()) for u in users[split == "test"]])
    assert t2.mean("HisAve", "MSE") == pytest.approx(np.mean((pred - y[split == "test"]) ** 2), rel=1e-5)
    again = run_experiment(TINY, ov, progress=False)  # every cell is kept from the first run
    assert all(t["kept"] for t in again.timings)


def test_text_only_corpus_rejects_image_rows(corpus_dir, tmp_path):
    c = Corpus.load(corpus_dir)
    c.posts["image"] = None
    c.save(tmp_path / "noimg")
    with pytest.raises(ConfigError, match="no post has an image"):
        run_experiment(TINY, {"corpus": str(tmp_path / "noimg"), "workdir": str(tmp_path / "r"), "rows": ["UHAN"]},
                       progress=False)


def test_train_then_predict_popularity_cli(corpus_dir, tmp_path):
    from mmsocial.cli import app

    runner = CliRunner()
    run = tmp_path / "trained"
    res = runner.invoke(app, ["train", "uhan", "--config", TINY, "--corpus", str(corpus_dir), "--out", str(run)])
    assert res.exit_code == 0, res.output
    c = Corpus.load(corpus_dir)
    row = c.posts.iloc[0]
    image = str(c.image_path(row["post_id"]))
    ok = runner.invoke(app, ["predict", "popularity", str(run), "--text", "a cute red car", "--user",
                             row["user_id"], "--image", image, "--views", "10", "--days", "2"])
    assert ok.exit_code == 0, ok.output
    assert "predicted popularity" in ok.output and "error" in ok.output and "word weights" in ok.output
    cold = runner.invoke(app, ["predict", "popularity", str(run), "--text", "a cat", "--user", "nobody",
                               "--image", image])
    assert cold.exit_code == 0 and "cold-start" in cold.output
    for args, message in ((["--text", "a cat", "--image", str(tmp_path / "none.png")], "does not exist"),
                          (["--text", "  ", "--image", image], "text is empty"),
                          (["--text", "a cat", "--image", image, "--views", "nan", "--days", "1"], "finite")):
        bad = runner.invoke(app, ["predict", "popularity", str(run), *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
