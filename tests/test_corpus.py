"""The corpus folder: round trip, validation naming the culprit, missing modalities, filters, splits."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmsocial.data.corpus import Corpus, CorpusError, make_posts
from mmsocial.data.splits import chronological_split, dman_split, random_split


def _with_images(tmp_path, n=4):
    root = tmp_path / "c"
    (root / "images").mkdir(parents=True)
    recs = []
    for i in range(n):
        Image.new("RGB", (16, 12), (i * 40, 10, 10)).save(root / "images" / f"{i}.png")
        recs.append({"post_id": f"p{i}", "user_id": "u0", "image": f"images/{i}.png",
                     "text": "red thing", "tags": ["red"], "labels": ["thing"]})
    c = Corpus(make_posts(recs), pd.DataFrame({"user_id": ["u0"], "name": ["ann"]}))
    c.save(root)
    return Corpus.load(root)


def test_round_trip_keeps_tables_and_extra_columns(tiny_corpus, tmp_path):
    tiny_corpus.posts["objects"] = [[{"label": "cat", "box": [0.0, 1.0, 2.0, 3.0]}]] * len(tiny_corpus)
    tiny_corpus.save(tmp_path / "rt")
    back = Corpus.load(tmp_path / "rt")
    assert list(back.posts["post_id"]) == list(tiny_corpus.posts["post_id"])
    assert list(back.posts["tags"].map(list)) == list(tiny_corpus.posts["tags"])
    assert back.posts["objects"][0][0]["label"] == "cat"
    assert list(back.posts["objects"][0][0]["box"]) == [0.0, 1.0, 2.0, 3.0]
    assert back.links.equals(tiny_corpus.links)
    assert back.meta["vocabularies"]["tags"][0] in {"cat", "tree"}
    assert back.meta["missing"] == back.missing_modalities()


def test_missing_modalities_are_recorded_not_filled():
    c = Corpus(make_posts([
        {"post_id": "a", "text": "  ", "tags": None},
        {"post_id": "b", "text": "hello", "user_id": "u", "image": "x.png", "views": 1, "days": 1},
    ]))
    m = c.missing_modalities()
    assert m == {"image": 1, "text": 1, "user": 1, "tags": 2, "labels": 2, "popularity": 1}
    assert c.posts["text"][0] is None


@pytest.mark.parametrize("corrupt, culprit", [
    (lambda c: c.posts.__setitem__("post_id", ["p0", "p0"] + list(c.posts["post_id"][2:])), ["p0", "post_id"]),
    (lambda c: c.posts.__setitem__("views", [np.nan] + list(c.posts["views"][1:])), ["p0", "views", "NaN"]),
    (lambda c: c.posts.__setitem__("days", [np.inf] + list(c.posts["days"][1:])), ["p0", "days"]),
    (lambda c: c.posts.__setitem__("split", ["dev"] + list(c.posts["split"][1:])), ["p0", "split", "dev"]),
    (lambda c: setattr(c, "links", pd.concat([c.links, pd.DataFrame(
        {"src": ["p1"], "dst": ["ghost"], "kind": ["label"]})])), ["ghost", "links.parquet"]),
    (lambda c: c.posts.__setitem__("user_id", ["nobody"] + list(c.posts["user_id"][1:])), ["p0", "nobody", "user_id"]),
])
def test_validation_names_the_culprit(tiny_corpus, corrupt, culprit):
    corrupt(tiny_corpus)
    with pytest.raises(CorpusError) as e:
        tiny_corpus.validate(check_images="none")
    for word in culprit:
        assert word in str(e.value)


def test_corrupt_saved_corpus_is_caught_on_load(tiny_corpus, tmp_path):
    tiny_corpus.posts.loc[2, "views"] = np.nan
    tiny_corpus.save(tmp_path / "bad")
    with pytest.raises(CorpusError, match="p2.*views"):
        Corpus.load(tmp_path / "bad")


def test_missing_and_unreadable_images_are_named(tmp_path):
    c = _with_images(tmp_path)
    c.validate(check_images="decode")
    (c.root / "images" / "1.png").unlink()
    with pytest.raises(CorpusError, match=r"p1.*1\.png.*does not exist"):
        c.validate(check_images="exists")
    (c.root / "images" / "2.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CorpusError, match=r"p2.*2\.png.*unreadable"):
        c.open_image("p2")
    assert c.open_image("p3").size == (16, 12)


def test_not_a_corpus_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(CorpusError, match="mmsocial data synthetic"):
        Corpus.load(tmp_path)


def test_filter_drops_links_to_removed_posts(tiny_corpus):
    kept = tiny_corpus.filter(tiny_corpus.posts["post_id"] != "p2")
    assert "p2" not in set(kept.links["src"]) | set(kept.links["dst"])
    assert len(kept.links) == 1 and len(kept) == 5
    kept.validate(check_images="none")


def test_random_split_proportions_and_determinism(tiny_corpus):
    a = random_split(tiny_corpus, {"train": 0.5, "test": 0.5}, seed=3)
    b = random_split(tiny_corpus, {"train": 0.5, "test": 0.5}, seed=3)
    assert list(a) == list(b) and (a == "train").sum() == 3
    with pytest.raises(ValueError, match="sum to 1"):
        random_split(tiny_corpus, {"train": 0.5, "test": 0.6})
    assert (dman_split(tiny_corpus) == "test").sum() == 1


def test_chronological_split_trains_on_the_past(tiny_corpus):
    s = chronological_split(tiny_corpus, train=0.5)
    ts = tiny_corpus.posts["timestamp"].to_numpy()
    assert ts[s == "train"].max() < ts[s != "train"].min()
    assert set(s[s != "train"]) <= {"val", "test"}
    tiny_corpus.posts.loc[0, "timestamp"] = np.nan
    with pytest.raises(CorpusError, match="p0.*timestamp"):
        chronological_split(tiny_corpus)


def test_saving_a_derived_corpus_leaves_the_parent_vocabulary_alone(tmp_path):
    parent = Corpus(make_posts([{"post_id": "a", "tags": ["cat"]}, {"post_id": "b", "tags": ["tree", "cat"]}]),
                    meta={"vocabularies": {}})
    cats = parent.filter(parent.posts["post_id"] == "a")
    cats.save(tmp_path / "cats")
    assert Corpus.load(tmp_path / "cats").tag_vocabulary() == ["cat"]
    assert parent.meta["vocabularies"] == {} and parent.tag_vocabulary() == ["cat", "tree"]


def test_a_number_field_that_is_not_a_number_is_named():
    with pytest.raises(CorpusError, match=r"'b'.*'views'.*'lots'"):
        make_posts([{"post_id": "a", "views": 3, "days": 1}, {"post_id": "b", "views": "lots", "days": 1}])
