"""DU2MCE as a system: config validation, the §4.1 data preparation, and the tiny config end to end
through the generic runner on a tiny synthetic corpus (random pooled features stand in for the CNN)."""

from pathlib import Path

import numpy as np
import pytest

from mmsocial.config import ConfigError, load_config
from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus
from mmsocial.systems import du2mce as S
from mmsocial.systems import get

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "du2mce"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("du2mce") / "corpus"
    return make_synthetic_corpus(SyntheticConfig(posts=240, users=24, seed=0, write_images=False,
                                                 missing_text=0.1), out)


def _features(corpus, dim=16):
    """Pooled features that carry the post's first object class (so training has something to learn)."""
    rng = np.random.default_rng(0)
    classes = {c: i for i, c in enumerate(sorted({lab for labs in corpus.posts["labels"] for lab in labs}))}
    centres = rng.normal(size=(len(classes), dim))
    first = [classes[labs[0]] for labs in corpus.posts["labels"]]
    return (centres[first] + 0.3 * rng.normal(size=(len(first), dim))).astype(np.float32)


def _cfg(tmp_path, **extra):
    # text without the tags, so that the corpus's posts without text stay without text
    return load_config(CONFIGS / "tiny.yaml", S.Config, {"workdir": str(tmp_path / "run"), "corpus": None,
                                                         "synthetic": None, "include_tags": False, **extra})


def test_registered_and_config_checks(tmp_path):
    assert get("du2mce") is S
    cfg = _cfg(tmp_path)
    assert set(cfg.rows) == set(S.ROWS)
    assert _cfg(tmp_path, tables=["table3"]).rows == list(S.TABLE_ROWS["table3"])
    with pytest.raises(ConfigError, match="unknown row"):
        _cfg(tmp_path, rows=["DU2MCE (0.2, 0.2, 0.6)"])
    with pytest.raises(ConfigError, match="user_dim .* must equal model.word_dim"):
        _cfg(tmp_path, **{"model.user_dim": 4})
    with pytest.raises(ConfigError, match="unknown DU2MCE config field|Extra inputs|unknown key"):
        _cfg(tmp_path, **{"model.lambda1": 0.3})


def test_prepare_splits_images_first_and_keeps_missing_modalities(corpus, tmp_path):
    cfg = _cfg(tmp_path)
    data = S.prepare(corpus, cfg, regions=_features(corpus))
    assert set(data.split) == {"train", "val", "test"}
    assert data.has_text.sum() < len(data.post_ids) == data.has_image.sum()  # some posts have no text
    assert data.tokens.shape[1] == 6 and (data.tokens[~data.has_text] == 0).all()
    assert data.user_init.shape == (len(data.users), 8) and data.word_vectors.shape == (len(data.words), 8)
    assert data.interest_rule.startswith("synthetic profile")
    train_users = {data.users[u] for u in data.user[data.split == "train"] if u >= 0}
    assert train_users == set(data.users)  # K = the users with a training post
    assert data.fingerprint() == S.prepare(corpus, cfg, regions=_features(corpus)).fingerprint()


def test_tiny_config_end_to_end_through_the_runner(corpus, tmp_path):
    from mmsocial.experiment import run_experiment

    cfg = _cfg(tmp_path)
    data = S.prepare(corpus, cfg, regions=_features(corpus))
    result = run_experiment(cfg, progress=False, data=data)
    t2, t3, t4, z = (result.tables[k] for k in ("table2", "table3", "table4", "zeroshot"))
    assert set(t2.rows) == set(S.TABLE_ROWS["table2"]) and set(t4.rows) == set(S.TABLE_ROWS["table4"])
    assert set(t3.rows) == set(S.TABLE_ROWS["table3"]) and set(z.rows) == set(S.TABLE_ROWS["zeroshot"])
    te = data.idx("test")
    n_it = int((data.has_image[te] & data.has_text[te]).sum())
    for row in t2.rows:  # mean median ranks lie in [1, gallery]
        assert 1 <= t2.mean(row, "Image-To-Text") <= n_it
        assert 1 <= t2.mean(row, "Text-To-User") <= len(data.users)
    assert np.isnan(t4.mean("Avg-Text", "Image-Text")) and not np.isnan(t4.mean("Avg-Text", "Text-User"))
    assert np.isnan(z.mean("DU2MCE (1, 0, 0)", "Text-To-User")) and z.mean("DU2MCE (1, 0, 0)", "Image-To-User") > 0
    cell = result.cells[("DU2MCE (0.1, 0.45, 0.45)", 0)]
    assert cell.selection["metric"] == "val_joint" and cell.selection["split"] == "val"
    assert len(cell.history) == 2 and all("val_joint" in h for h in cell.history)
    bridging = result.cells[("Bridging-Modality", 0)]
    assert set(bridging.selection) == {"stage1", "stage2"}
    assert 0 <= t3.mean("DU2MCE (0.333, 0.333, 0.333)", "F1") <= 1
    assert (Path(cfg.workdir) / "table2.md").is_file() or any(Path(cfg.workdir).glob("*table2*"))


def test_train_command_and_cluster_view(corpus, tmp_path, monkeypatch):
    from mmsocial.viz.clusters import user_clusters

    cfg = _cfg(tmp_path)
    data = S.prepare(corpus, cfg, regions=_features(corpus))
    model, _ = S.train_model(data, cfg, cfg.lambdas, tmp_path / "train", 0)
    S.save_run(tmp_path / "train", data, model, corpus)
    summary = user_clusters(tmp_path / "train", k=4, show=2, images=3)
    assert summary["clusters_k"] == 4 and len(summary["pictures"]) == 2
    assert all(Path(p).is_file() for p in summary["pictures"])
    assert -1 <= summary["adjusted_rand_index"] <= 1 and 0 < summary["purity"] <= 1
    assert sum(c["size"] for c in summary["clusters"]) == len(data.users)
