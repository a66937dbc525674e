import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmsocial.data import openclipart as oc
from mmsocial.data.corpus import Corpus, CorpusError, make_posts
from mmsocial.data.jsonl import parse_timestamp, read_jsonl_corpus
from mmsocial.data.readers import prepare_dman, read_mirflickr, read_nuswide, read_voc2007

FIXTURES = Path(__file__).parent / "fixtures"
OC_TREE = FIXTURES / "openclipart" / "usr" / "share" / "openclipart"


# ---------------------------------------------------------------------------- openclipart
def test_parse_svg_metadata_reads_the_rdf_block():
    m = oc.parse_svg_metadata(OC_TREE / "svg/food/fruit/apple_bitten_dan_gerhard_01.svg")
    assert m == {"title": "Apple Bitten", "description": "Apple with a bite taken out.",
                 "tags": ["food", "apple", "fruit"], "author": "Dan Gerhards", "date": "September 2005"}
    pig = oc.parse_svg_metadata(OC_TREE / "svg/animals/mammals/a_simple_pig_01.svg")
    assert pig["tags"] == ["mammal", "animal", "pig"]  # the empty <rdf:li/> is dropped
    assert oc.parse_svg_metadata(OC_TREE / "svg/animals/fish/no_metadata_fish.svg") is None


def test_parse_svg_metadata_survives_broken_drawing_and_rejects_garbage(tmp_path):
    good = (OC_TREE / "svg/animals/mammals/a_simple_pig_01.svg").read_text()
    broken = tmp_path / "broken.svg"
    broken.write_text(good.replace("</svg>", "<g><unclosed></svg>"))
    assert oc.parse_svg_metadata(broken)["title"] == "A simple pig"
    garbage = tmp_path / "garbage.svg"
    garbage.write_bytes(b"\x89PNG not xml at all")
    with pytest.raises(ValueError, match="garbage.svg"):
        oc.parse_svg_metadata(garbage)


def test_openclipart_helpers():
    assert oc.normalise_tags([" Flag ", "flag", "", "United  Kingdom"]) == ["flag", "united kingdom"]
    assert oc.labels_of("plants/acorn") == ["plants"]
    assert oc.labels_of("signs_and_symbols/flags/europe/france/fr") == ["signs_and_symbols", "signs_and_symbols/flags"]
    assert oc.make_text("Apple", "") == "Apple"
    assert oc.make_text("Apple", "Red fruit.") == "Apple. Red fruit."
    assert oc.make_text("", "  ") is None
    assert oc.parse_date("2005-08-21") == oc.parse_date("2005/08/21") == oc.parse_date("08/21/2005") == 1124582400.0
    assert oc.parse_date("September 2005") == 1125532800.0
    assert math.isnan(oc.parse_date("Fco. Andrade"))
    assert oc.user_id_of("Architetto Francesco Rollandin") == "architetto_francesco_rollandin"
    assert oc.user_id_of("  ") is None


@pytest.fixture(scope="module")
def clipart(tmp_path_factory):
    out = tmp_path_factory.mktemp("oc") / "openclipart"
    return oc.build_openclipart_corpus(out, source=FIXTURES / "openclipart", max_side=32, workers=1)


def _by_source(corpus, name):
    rows = corpus.posts[corpus.posts["source"].str.contains(name, regex=False)]
    assert len(rows) == 1, name
    return rows.iloc[0]


def test_openclipart_corpus_maps_fields(clipart):
    assert len(clipart) == 8  # 9 distinct drawings, shapes/ excluded; links are not extra posts
    apple = _by_source(clipart, "apple_bitten")
    assert apple["text"] == "Apple Bitten. Apple with a bite taken out."
    assert apple["tags"] == ["food", "apple", "fruit"]
    assert apple["labels"] == ["food", "food/fruit"]  # its link under shapes/ is excluded
    assert apple["user_id"] == "dan_gerhards"
    assert apple["timestamp"] == oc.parse_date("September 2005")
    tux = _by_source(clipart, "plush_tux")
    assert tux["labels"] == ["animals", "animals/birds", "recreation", "recreation/party"]
    assert math.isnan(tux["timestamp"])
    acorn = _by_source(clipart, "acorn")
    assert acorn["labels"] == ["plants"]
    assert dict(zip(clipart.users["user_id"], clipart.users["name"]))["dan_gerhards"] == "Dan Gerhards"


def test_openclipart_bad_files_are_counted_not_fatal(clipart):
    skipped = clipart.meta["provenance"]["skipped"]
    assert skipped["png_corrupt"] == 1 and skipped["svg_without_metadata"] == 1
    carrot = _by_source(clipart, "carrot_truncated")
    assert carrot["image"] is None and carrot["text"] == "Carrot"
    fish = _by_source(clipart, "no_metadata_fish")
    assert fish["image"] is not None and fish["text"] is None and fish["user_id"] is None and fish["tags"] == []
    assert clipart.missing_modalities()["image"] == 1


def test_openclipart_images_downscaled_and_corpus_reloads(clipart):
    c = Corpus.load(clipart.root)
    c.validate(check_images="decode")
    apple = _by_source(c, "apple_bitten")
    with Image.open(c.image_path(apple["post_id"])) as im:
        assert im.size[0] == 32 and abs(im.size[1] - 32 * 400 / 600) <= 1  # 600x400 source
    assert str(apple["image"]).startswith(f"images/{apple['post_id'][2:4]}/")
    assert c.summary()["links_by_kind"] == {"author": 4}


def test_openclipart_author_links(clipart):
    links = clipart.links
    user = dict(zip(clipart.posts["post_id"], clipart.posts["user_id"]))
    assert (links["src"] != links["dst"]).all()
    assert all(user[s] == user[d] for s, d in zip(links["src"], links["dst"]))
    posts = make_posts([{"post_id": f"p{i}", "user_id": "u" if i < 60 else f"solo{i}"} for i in range(65)])
    a = oc.author_links(posts, max_links=50, seed=1)
    assert a["src"].value_counts().max() == 50 and set(a["src"]) == {f"p{i}" for i in range(60)}
    assert not a.duplicated().any() and (a["src"] != a["dst"]).all()
    pd.testing.assert_frame_equal(a, oc.author_links(posts, max_links=50, seed=1))
    assert not a.equals(oc.author_links(posts, max_links=50, seed=2))


def test_openclipart_exclude_and_limit(tmp_path):
    c = oc.build_openclipart_corpus(tmp_path / "all", source=FIXTURES / "openclipart", max_side=16,
                                    exclude=(), workers=1)
    assert len(c) == 9
    assert _by_source(c, "apple_bitten")["labels"] == ["food", "food/fruit", "shapes", "shapes/arrows"]
    c = oc.build_openclipart_corpus(tmp_path / "lim", source=FIXTURES / "openclipart", max_side=16,
                                    limit=3, workers=1)
    assert len(c) == 3


def test_openclipart_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(CorpusError, match="--source"):
        oc.build_openclipart_corpus(tmp_path / "x", source=tmp_path)
    with pytest.raises(CorpusError, match="no unpacked openclipart tree"):
        oc.find_openclipart_tree(None, tmp_path / "cache", download=False)
    monkeypatch.setattr(oc.shutil, "which", lambda name: None)
    with pytest.raises(CorpusError, match="apt-get download"):
        oc.fetch_openclipart(tmp_path / "cache")
    with pytest.raises(ValueError, match="max_side"):
        oc.build_openclipart_corpus(tmp_path / "x", source=FIXTURES / "openclipart", max_side=2)


def test_downscale_png_caps_huge_images(tmp_path, monkeypatch):
    src = tmp_path / "big.png"
    Image.new("RGB", (300, 200), (1, 2, 3)).save(src)
    monkeypatch.setattr(oc, "MAX_PNG_PIXELS", 1000)
    dst, err = oc.downscale_png((str(src), str(tmp_path / "o.png"), 64))
    assert err is not None and "exceeds" in err and not Path(dst).exists()


# ---------------------------------------------------------------------------- JSONL
def test_jsonl_reads_every_field():
    c = read_jsonl_corpus(FIXTURES / "jsonl" / "posts.jsonl")
    p = c.posts.set_index("post_id")
    assert list(p.index) == ["p1", "p2", "3", "p4"]
    assert p.loc["p1", "tags"] == ["bus", "Red"] and p.loc["p2", "tags"] == ["field"]
    assert p.loc["p2", "timestamp"] == 1588334400.0 == p.loc["p1", "timestamp"]
    assert p.loc["3", "timestamp"] == 1588377600.0 and math.isnan(p.loc["p4", "timestamp"])
    assert p.loc["3", "text"] is None and p.loc["3", "image"] is None
    assert Path(p.loc["p1", "image"]) == (FIXTURES / "jsonl" / "imgs" / "p1.jpg").resolve()
    assert p.loc["p4", "split"] == "test" and p.loc["p1", "views"] == 120.0
    assert p.loc["p1", "score"] == 3.0 and p.loc["p1", "lang"] == "en"
    assert json.loads(p.loc["p2", "geo"]) == {"lat": 48.1, "lon": 11.6}
    assert sorted(zip(c.links["src"], c.links["dst"])) == [("3", "p1"), ("p1", "3"), ("p1", "p2")]
    assert set(c.links["kind"]) == {"explicit"}
    assert dict(zip(c.users["user_id"], c.users["name"])) == {"u1": "Ann", "u2": None}


def test_jsonl_round_trip(tmp_path):
    c = read_jsonl_corpus(FIXTURES / "jsonl" / "posts.jsonl")
    c.save(tmp_path / "c")
    back = Corpus.load(tmp_path / "c")
    back.validate(check_images="decode")
    assert back.open_image("p1").size == (16, 12)
    assert back.summary()["links_by_kind"] == {"explicit": 3}


@pytest.mark.parametrize("lines, message", [
    (['{"post_id": "a"}', '{"post_id": "b", "text": "x'], "bad.jsonl line 2: bad JSON"),
    (['{"post_id": "a"}', '["not", "an", "object"]'], "line 2: expected a JSON object"),
    (['{"text": "no id"}'], "line 1: field 'post_id'"),
    (['{"post_id": "a"}', '', '{"post_id": "a"}'], "line 3: duplicate post_id 'a' \\(first on line 1\\)"),
    (['{"post_id": "a", "links": ["zz"]}'], "line 1: field 'links' names unknown post 'zz'"),
    (['{"post_id": "a", "timestamp": "yesterday"}'], "line 1: field 'timestamp'"),
    (['{"post_id": "a", "views": "many"}'], "line 1: field 'views'"),
    (['{"post_id": "a", "tags": [1.5]}'], "line 1: field 'tags'"),
    (['{"post_id": "a", "image": "nope.jpg"}'], "line 1: field 'image': file .*nope.jpg does not exist"),
    (['{"post_id": "a", "image": "http://x/y.jpg"}'], "line 1: field 'image' is a URL"),
    (['{"post_id": "a", "views": 3}'], "field 'days' is NaN"),
    (['{"post_id": "a", "split": "dev"}'], "field 'split'"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=message):
        read_jsonl_corpus(f)


def test_jsonl_fixture_with_bad_json_and_images_root(tmp_path):
    with pytest.raises(CorpusError, match="bad_json.jsonl line 2"):
        read_jsonl_corpus(FIXTURES / "jsonl" / "bad_json.jsonl")
    f = tmp_path / "p.jsonl"
    f.write_text('{"post_id": "x", "image": "p4.png"}\n')
    c = read_jsonl_corpus(f, images_root=FIXTURES / "jsonl" / "imgs")
    assert c.posts["image"][0].endswith("imgs/p4.png")
    assert parse_timestamp("2020-05-01T14:00:00+02:00") == 1588334400.0 == parse_timestamp("1588334400")


def test_cli_jsonl(tmp_path):
    from typer.testing import CliRunner

    from mmsocial.cli import app

    r = CliRunner().invoke(app, ["data", "jsonl", str(FIXTURES / "jsonl" / "posts.jsonl"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert len(Corpus.load(tmp_path / "c")) == 4


# ---------------------------------------------------------------------------- NUS-WIDE
def test_nuswide_reads_the_distributed_files():
    c = read_nuswide(FIXTURES / "nuswide")
    p = c.posts.set_index("post_id")
    assert list(p.index) == ["2124494179", "174174086", "2109454281", "448723920", "2125226376", "1077461283"]
    assert p.loc["448723920", "labels"] == ["person", "sky", "water"]
    assert p.loc["2125226376", "labels"] == []
    assert p.loc["2124494179", "tags"] == ["matrix", "actor", "movie"]
    assert p.loc["174174086", "image"] is None  # not downloaded: missing image
    assert p.loc["2109454281", "image"].endswith("Flickr/airport/0001_2109454281.jpg")
    assert list(p["official_split"]) == ["train"] * 4 + ["test"] * 2
    assert c.posts["text"].isna().all() and c.posts["split"].isna().all()


def test_nuswide_1k_tag_matrix():
    c = read_nuswide(FIXTURES / "nuswide", tags="1k")
    assert c.posts["tags"].tolist() == [["actor"], ["actor"], ["sky"], ["beach", "sky", "sea"], ["beach"],
                                        ["clouds", "sky"]]
    assert c.meta["provenance"]["tags"] == "AllTags1k.txt"


def test_nuswide_misaligned_files_are_errors(tmp_path):
    root = tmp_path / "nus"
    shutil.copytree(FIXTURES / "nuswide", root)
    tags = root / "NUS_WID_Tags" / "All_Tags.txt"
    tags.write_bytes(tags.read_bytes().replace(b"174174086", b"999", 1))
    with pytest.raises(CorpusError, match="All_Tags.txt: line 2 is photo 999"):
        read_nuswide(root)
    lab = root / "Groundtruth" / "AllLabels" / "Labels_sky.txt"
    lab.write_text("0\n1\n")
    with pytest.raises(CorpusError, match="Labels_sky.txt: 2 lines, but the image list has 6"):
        read_nuswide(root, tags="1k")
    with pytest.raises(CorpusError, match="Imagelist.txt: missing"):
        read_nuswide(tmp_path)


# ---------------------------------------------------------------------------- MIRFlickr
def test_mirflickr_relevant_and_potential_labels():
    root = FIXTURES / "mirflickr" / "mirflickr"
    c = read_mirflickr(root)
    p = c.posts.set_index("post_id")
    assert p.loc["im2", "labels"] == ["people", "portrait"]
    assert p.loc["im1", "labels"] == ["clouds"] and p.loc["im5", "labels"] == []
    assert p.loc["im1", "tags"] == ["sky", "clouds", "sunset"]
    assert p.loc["im1", "user_id"] == "ann_photos" and p.loc["im3", "user_id"] is None
    assert sorted(c.users["user_id"]) == ["ann_photos", "bob"]
    pot = read_mirflickr(root, label_set="potential").posts.set_index("post_id")
    assert pot.loc["im4", "labels"] == ["people", "sea", "sky"] and pot.loc["im6", "labels"] == ["night", "structures"]
    both = read_mirflickr(root, label_set="both").posts.set_index("post_id")
    assert both.loc["im1", "labels"] == ["clouds", "clouds_r1", "sky"]


# ---------------------------------------------------------------------------- VOC 2007
def test_voc2007_objects_owners_tags_and_split():
    c = read_voc2007(FIXTURES / "voc2007")
    p = c.posts.set_index("post_id")
    assert p.loc["000001", "labels"] == ["dog", "person"] and p.loc["000005", "labels"] == ["chair"]
    assert p.loc["000001", "tags"] == ["dog", "pet", "Jinky"] and p.loc["000005", "tags"] == []
    assert p.loc["000001", "user_id"] == "Fried Camels" and p.loc["000001", "flickr_id"] == "341012865"
    assert dict(zip(c.users["user_id"], c.users["name"]))["Fried Camels"] == "Jinky the Fruit Bat"
    assert p["official_split"].to_dict() == {"000001": "test", "000002": "test", "000004": "val",
                                             "000005": "train", "000007": "train"}
    strict = read_voc2007(FIXTURES / "voc2007" / "VOCdevkit" / "VOC2007", include_difficult=False)
    assert strict.posts.set_index("post_id").loc["000005", "labels"] == []
    Corpus(c.posts, c.users).validate(check_images="decode")


# ---------------------------------------------------------------------------- DMAN preparation
def test_prepare_dman_on_fixtures():
    c = prepare_dman(read_voc2007(FIXTURES / "voc2007"), n_tags=2)
    assert c.meta["vocabularies"]["tags"] == ["car", "Jinky"]  # car x2, then ties alphabetically
    assert list(c.posts["post_id"]) == ["000001", "000004", "000007"]  # 000002: no top tag, 000005: no tag
    assert c.posts["tags"].tolist() == [["Jinky"], ["car"], ["car"]]
    nus = prepare_dman(read_nuswide(FIXTURES / "nuswide"), n_tags=1000)
    assert "174174086" not in set(nus.posts["post_id"])  # no image
    assert "2125226376" not in set(nus.posts["post_id"])  # no label
    assert len(prepare_dman(read_nuswide(FIXTURES / "nuswide"), require_image=False)) == 5


def test_prepare_dman_split_and_vocabulary(rng):
    words = [f"w{i}" for i in range(30)]
    posts = make_posts([{"post_id": f"p{i}", "labels": [] if i % 10 == 0 else [f"l{i % 3}"],
                         "image": f"x/{i}.jpg",
                         "tags": list(rng.choice(words, size=3, replace=False, p=np.linspace(2, 1, 30) / 45))}
                        for i in range(500)])
    c = prepare_dman(Corpus(posts), n_tags=10, seed=3)
    assert (c.posts["labels"].map(len) > 0).all() and (c.posts["tags"].map(len) > 0).all()
    vocab = c.meta["vocabularies"]["tags"]
    assert len(vocab) == 10 and set().union(*c.posts["tags"]) <= set(vocab)
    labelled = posts[posts["labels"].map(len) > 0]
    counts = pd.Series([t for ts in labelled["tags"] for t in ts]).value_counts()
    assert set(vocab) == set(counts.index[:10]) or counts.iloc[9] == counts.iloc[10]
    n = len(c)
    assert c.posts["split"].value_counts().to_dict() == {"train": round(0.8 * n), "test": n - round(0.8 * n)}
    assert prepare_dman(Corpus(posts), n_tags=10, seed=3).posts["split"].tolist() == c.posts["split"].tolist()
    with pytest.raises(ValueError, match="n_tags"):
        prepare_dman(Corpus(posts), n_tags=0)
