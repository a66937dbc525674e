"""Karpathy split reader (Flickr30K / COCO) on fixtures in the real JSON structure."""

import json
from pathlib import Path

import pytest

from mmsocial.data.corpus import Corpus, CorpusError
from mmsocial.data.karpathy import read_karpathy

FIX = Path(__file__).parent / "fixtures" / "karpathy"


def test_flickr30k_reads_images_captions_and_split(tmp_path):
    c = read_karpathy(FIX / "flickr30k")
    p = c.posts
    assert list(p["post_id"]) == ["flickr30k-0", "flickr30k-1", "flickr30k-2"]
    assert list(p["split"]) == ["train", "val", "test"]
    assert [len(x) for x in p["captions"]] == [5, 5, 5]
    assert p["captions"][0][4] == "Two friends enjoy time spent together."  # the raw's trailing space is gone
    assert p["text"][1] == "Several men in hard hats are operating a giant pulley system."
    assert all(Path(i).is_file() for i in p["image"])
    c.save(tmp_path / "f30k")
    back = Corpus.load(tmp_path / "f30k")
    assert [list(x) for x in back.posts["captions"]] == [list(x) for x in p["captions"]]


def test_coco_filepath_cocoid_restval_and_six_sentences():
    c = read_karpathy(FIX / "coco" / "dataset_coco.json")
    p = c.posts
    assert list(p["post_id"]) == ["coco-391895", "coco-57870"]
    assert list(p["split"]) == ["train", "test"]  # restval joins train
    assert len(p["captions"][0]) == 6
    assert p["image"][0].endswith("val2014/COCO_val2014_000000391895.jpg")


def test_missing_file_names_it_and_where_it_looked(tmp_path):
    with pytest.raises(CorpusError, match=r"dataset_flickr30k.json or dataset_coco.json.*looked for it in"):
        read_karpathy(tmp_path)


def test_missing_images_are_counted_or_an_error(tmp_path, caplog):
    (tmp_path / "dataset_flickr30k.json").write_text((FIX / "flickr30k" / "dataset_flickr30k.json").read_text())
    c = read_karpathy(tmp_path)
    assert c.posts["image"].isna().all()
    assert "3 of 3 image files not found" in caplog.text
    with pytest.raises(CorpusError, match="1000092795.jpg does not exist"):
        read_karpathy(tmp_path, require_images=True)


def test_bad_split_and_no_sentence_name_the_image(tmp_path):
    obj = json.loads((FIX / "flickr30k" / "dataset_flickr30k.json").read_text())
    obj["images"][1]["split"] = "holdout"
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(obj))
    with pytest.raises(CorpusError, match=r"images\[1\] \(10002456.jpg\): split 'holdout'"):
        read_karpathy(tmp_path)
    obj["images"][1]["split"] = "val"
    obj["images"][2]["sentences"] = []
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(obj))
    with pytest.raises(CorpusError, match=r"images\[2\] \(1000268201.jpg\): no sentence"):
        read_karpathy(tmp_path)


def test_cli_data_karpathy(tmp_path):
    from typer.testing import CliRunner

    from mmsocial.cli import app

    r = CliRunner().invoke(app, ["data", "karpathy", str(FIX / "coco"), "--out", str(tmp_path / "coco")])
    assert r.exit_code == 0, r.output
    assert len(Corpus.load(tmp_path / "coco")) == 2
    r = CliRunner().invoke(app, ["data", "karpathy", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "looked for it in" in r.output
