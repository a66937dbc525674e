"""Wikipedia and Pascal Sentence readers on fixtures in the distributed on-disk formats."""

import shutil
from pathlib import Path

import pytest

from mmsocial.data.corpus import CorpusError
from mmsocial.data.pascal_sentence import read_pascal_sentence
from mmsocial.data.wikipedia import read_wikipedia

FIX = Path(__file__).parent / "fixtures"


def test_wikipedia_reads_pairs_classes_and_official_split():
    c = read_wikipedia(FIX / "wikipedia")  # the folder holding wikipedia_dataset/
    p = c.posts.set_index("post_id")
    assert len(p) == 3
    assert list(p["split"]) == ["train", "train", "test"]
    assert p.loc["f1e2d3c4b5a69788796a5b4c3d2e1f00-3.11", "labels"] == ["biology"]
    assert p.loc["aa11bb22cc33dd44ee55ff6677889900-2", "labels"] == ["warfare"]
    assert p.loc["e3b5c3a1b1a9f1c7e4a8d2f6b0c9e1a2-1", "text"].startswith("The painting was completed in 1503 & shows")
    assert "nucleus" in p.loc["f1e2d3c4b5a69788796a5b4c3d2e1f00-3.11", "text"]
    assert all(Path(i).is_file() for i in p["image"])
    assert Path(p.loc["aa11bb22cc33dd44ee55ff6677889900-2", "image"]).parent.name == "warfare"


def test_wikipedia_missing_text_names_the_file(tmp_path):
    shutil.copytree(FIX / "wikipedia" / "wikipedia_dataset", tmp_path / "w")
    (tmp_path / "w" / "texts" / "aa11bb22cc33dd44ee55ff6677889900-2.xml").unlink()
    with pytest.raises(CorpusError, match="aa11bb22cc33dd44ee55ff6677889900-2.xml"):
        read_wikipedia(tmp_path / "w")
    (tmp_path / "w" / "categories.list").unlink()
    with pytest.raises(CorpusError, match="categories.list"):
        read_wikipedia(tmp_path / "w")


@pytest.mark.parametrize("form", ["official", "scraped", "official/index.html"])
def test_pascal_sentence_both_forms_agree(form):
    c = read_pascal_sentence(FIX / "pascal_sentence" / form, train_per_class=2)
    p = c.posts.set_index("post_id").sort_index()
    assert list(p.index) == ["aeroplane/2008_000716", "aeroplane/2008_000951", "aeroplane/2008_001137",
                             "cat/2008_000096", "cat/2008_000112"]
    assert p.loc["cat/2008_000096", "labels"] == ["cat"]
    assert p.loc["aeroplane/2008_001137", "text"].startswith("A small propeller plane. A single engine")
    assert p.loc["aeroplane/2008_001137", "text"].count(".") == 5
    assert all(Path(i).is_file() for i in p["image"])
    # train_per_class of each class train, the rest test
    assert (p[p["labels"].map(tuple) == ("aeroplane",)]["split"] == "train").sum() == 2
    assert (p[p["labels"].map(tuple) == ("cat",)]["split"] == "train").sum() == 2


def test_pascal_sentence_split_is_deterministic_and_forms_match():
    a = read_pascal_sentence(FIX / "pascal_sentence" / "official", train_per_class=1, seed=3).posts
    b = read_pascal_sentence(FIX / "pascal_sentence" / "scraped", train_per_class=1, seed=3).posts
    key = lambda d: dict(zip(d["post_id"], d["split"]))  # noqa: E731
    assert key(a) == key(b)
    assert dict(zip(a["post_id"], a["text"])) == dict(zip(b["post_id"], b["text"]))


def test_pascal_sentence_missing_sentence_file_names_it(tmp_path):
    shutil.copytree(FIX / "pascal_sentence" / "scraped", tmp_path / "p")
    (tmp_path / "p" / "sentence" / "cat" / "2008_000112txt").unlink()
    with pytest.raises(CorpusError, match="2008_000112txt"):
        read_pascal_sentence(tmp_path / "p")
    with pytest.raises(CorpusError, match="looked in"):
        read_pascal_sentence(tmp_path / "nowhere")


def test_data_commands_write_corpora(tmp_path):
    from typer.testing import CliRunner

    from mmsocial.cli import app
    from mmsocial.data.corpus import Corpus

    r = CliRunner().invoke(app, ["data", "wikipedia", str(FIX / "wikipedia"), "--out", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    assert len(Corpus.load(tmp_path / "w")) == 3
    r = CliRunner().invoke(app, ["data", "pascal-sentence", str(FIX / "pascal_sentence" / "scraped"), "--out",
                                 str(tmp_path / "p"), "--train-per-class", "1"])
    assert r.exit_code == 0, r.output
    assert (Corpus.load(tmp_path / "p").posts["split"] == "train").sum() == 2
    r = CliRunner().invoke(app, ["data", "wikipedia", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "categories.list" in r.output
