from pathlib import Path

import numpy as np
import pytest

from mmsocial.data.corpus import CorpusError
from mmsocial.data.uhan_flickr import read_uhan_flickr, write_uhan_flickr_regions
from mmsocial.features.store import FeatureSet

FIXTURE = Path(__file__).parent / "fixtures" / "uhan_flickr"


def test_reads_official_layout_joined_by_url_and_filtered():
    c = read_uhan_flickr(FIXTURE)
    p = c.posts.set_index("post_id")
    # 9002: < 5 tokens, 9004: non-ASCII, 9005: in err_img.txt
    assert sorted(p.index) == ["9001", "9003", "9006"]
    assert p.loc["9001", "user_id"] == "12345678@N00"
    assert p.loc["9001", "text"] == "Red sports bike #desc: Yamaha R1 parked by the road in the sun"
    assert p.loc["9003", "timestamp"] == 1262476800.0
    # the label is the popularity score: log2(views/days + 1) gives it back
    np.testing.assert_allclose(np.log2(p["views"] / p["days"] + 1), [7.2, 7.36, 8.6])
    np.testing.assert_allclose(p["popularity"], [7.2, 7.36, 8.6])
    assert p.loc["9006", "image"] is None  # no photo in the fixture


def test_region_files_become_a_feature_store(tmp_path):
    c = read_uhan_flickr(FIXTURE)
    with pytest.raises(CorpusError, match="9006.jpg.vgg16_196_512.npy"):
        write_uhan_flickr_regions(FIXTURE, c, tmp_path / "regions")
    kept = c.filter(c.posts["post_id"].isin(["9001", "9003"]).to_numpy())
    fs = write_uhan_flickr_regions(FIXTURE, kept, tmp_path / "regions")
    assert fs.dims == (196, 512)
    ref = np.load(FIXTURE / "img/train/98765432@N01/9003.jpg.vgg16_196_512.npy")
    np.testing.assert_allclose(FeatureSet.open(tmp_path / "regions").get(["9003"])[0], ref, atol=1e-3)


def test_missing_file_names_file_and_folder(tmp_path):
    (tmp_path / "data.json").write_text((FIXTURE / "data.json").read_text())
    with pytest.raises(CorpusError) as e:
        read_uhan_flickr(tmp_path)
    assert "train_data.txt" in str(e.value) and str(tmp_path) in str(e.value)
    for name in ("train_data.txt", "train_label.txt", "train_url.txt"):
        (tmp_path / name).write_text((FIXTURE / name).read_text())
    (tmp_path / "train_label.txt").write_text("7.2\n")
    with pytest.raises(CorpusError, match="aligned line by line"):
        read_uhan_flickr(tmp_path)


def test_data_commands_build_corpus_or_name_the_problem(tmp_path):
    from typer.testing import CliRunner

    from mmsocial.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["data", "uhan-flickr", str(FIXTURE), "--out", str(tmp_path / "c")])
    assert ok.exit_code == 0, ok.output
    assert len(__import__("mmsocial.data.corpus", fromlist=["Corpus"]).Corpus.load(tmp_path / "c")) == 3
    regions = runner.invoke(app, ["data", "uhan-flickr", str(FIXTURE), "--out", str(tmp_path / "c2"),
                                  "--regions", str(tmp_path / "r")])
    assert regions.exit_code == 2 and "9006.jpg.vgg16_196_512.npy" in regions.output
    tweets = runner.invoke(app, ["data", "tweets", "--out", str(tmp_path / "t"), "--source", str(tmp_path)])
    assert tweets.exit_code == 2 and "Rdata.rdx" in tweets.output and str(tmp_path) in tweets.output
