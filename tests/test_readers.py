import json
import logging
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
from mmsocial.data.readers import read_lear_tags, read_mirflickr, read_nuswide, read_voc2007

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


# ---------------------------------------------------------------------------- shared helpers
BOM = "\ufeff".encode()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _add_bom(path: Path) -> None:
    path.write_bytes(BOM + path.read_bytes())


# ---------------------------------------------------------------------------- NUS-WIDE
NUS = FIXTURES / "nuswide"


def test_nuswide_reads_the_distributed_files():
    assert not (NUS / "ImageList" / "Imagelist.txt").read_text().startswith("C:")  # the real lines: no prefix
    c = read_nuswide(NUS)
    p = c.posts.set_index("post_id")
    assert list(p.index) == ["2124494179", "174174086", "2109454281", "448723920", "2125226376", "1077461283"]
    assert p.loc["448723920", "labels"] == ["person", "sky", "water"]
    assert p.loc["2125226376", "labels"] == []
    assert p.loc["2124494179", "tags"] == ["matrix", "actor", "movie"]
    assert p.loc["174174086", "image"] is None  # not downloaded: missing image
    assert p.loc["2109454281", "image"].endswith("Flickr/airport/0001_2109454281.jpg")
    assert list(p["official_split"]) == ["train"] * 4 + ["test"] * 2
    assert c.posts["text"].isna().all() and c.posts["split"].isna().all()


def test_nuswide_1k_tag_matrix_has_1000_columns():
    rows = (NUS / "NUS_WID_Tags" / "AllTags1k.txt").read_text().splitlines()
    assert {len(r.split()) for r in rows} == {1000}
    c = read_nuswide(NUS, tags="1k")
    assert c.posts["tags"].tolist() == [["actor"], ["actor"], ["sky"], ["beach", "sky", "sea"], ["beach"],
                                        ["clouds", "sky"]]
    vocab = (NUS / "NUS_WID_Tags" / "TagList1k.txt").read_text().split()
    for row, tags in zip(rows, c.posts["tags"]):  # column j set <=> word j of TagList1k.txt is a tag
        assert [vocab[j] for j, v in enumerate(row.split()) if v == "1"] == tags
    assert c.meta["provenance"]["tags"] == "AllTags1k.txt"


def test_nuswide_old_prefix_and_byte_order_marks(tmp_path):
    root = _copy(NUS, tmp_path / "nus")
    for name in ("Imagelist.txt", "TrainImagelist.txt"):
        f = root / "ImageList" / name
        f.write_text("".join(f"C:\\ImageData\\Flickr\\{ln}\n" for ln in f.read_text().splitlines()))
    for f in (root / "ImageList" / "Imagelist.txt", root / "ImageList" / "TestImagelist.txt",
              root / "NUS_WID_Tags" / "All_Tags.txt", root / "NUS_WID_Tags" / "AllTags1k.txt",
              root / "NUS_WID_Tags" / "TagList1k.txt", root / "Groundtruth" / "AllLabels" / "Labels_sky.txt"):
        _add_bom(f)
    ref = read_nuswide(NUS)
    for tags in ("all", "1k"):
        c = read_nuswide(root, tags=tags)
        assert c.posts["post_id"].tolist() == ref.posts["post_id"].tolist()
        assert c.posts["labels"].tolist() == ref.posts["labels"].tolist()
        assert c.posts["official_split"].tolist() == ref.posts["official_split"].tolist()
        assert c.posts["tags"].tolist() == read_nuswide(NUS, tags=tags).posts["tags"].tolist()


def test_nuswide_misaligned_files_are_errors(tmp_path):
    root = _copy(NUS, tmp_path / "nus")
    tags = root / "NUS_WID_Tags" / "All_Tags.txt"
    tags.write_bytes(tags.read_bytes().replace(b"174174086", b"999", 1))
    with pytest.raises(CorpusError, match="All_Tags.txt: line 2 is photo 999"):
        read_nuswide(root)
    mat = root / "NUS_WID_Tags" / "AllTags1k.txt"
    mat.write_bytes(mat.read_bytes().replace(b"0 0 0 1", b"0 0 1", 1))
    with pytest.raises(CorpusError, match="AllTags1k.txt: line 1 is not 1000 space-separated 0/1 columns"):
        read_nuswide(root, tags="1k")
    lab = root / "Groundtruth" / "AllLabels" / "Labels_sky.txt"
    lab.write_text("0\n1\n")
    with pytest.raises(CorpusError, match="Labels_sky.txt: 2 lines, but the image list has 6"):
        read_nuswide(root, tags="all")
    (root / "ImageList" / "Imagelist.txt").write_text("actor/2124494179.png\n")
    with pytest.raises(CorpusError, match="Imagelist.txt line 1: 'actor/2124494179.png' is not"):
        read_nuswide(root)


@pytest.mark.parametrize("remove, expected", [
    ("ImageList/Imagelist.txt", "ImageList/Imagelist.txt"),
    ("Groundtruth/AllLabels", "Groundtruth/AllLabels"),
    ("NUS_WID_Tags", "NUS_WID_Tags/All_Tags.txt, or NUS_WID_Tags/AllTags1k.txt"),
])
def test_nuswide_missing_part_names_file_and_place(tmp_path, remove, expected):
    root = _copy(NUS, tmp_path / "nus")
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CorpusError) as e:
        read_nuswide(root)
    msg = str(e.value)
    assert msg.startswith(f"NUS-WIDE: expected {expected}") and str(root) in msg and "--help" in msg


def test_nuswide_missing_1k_file_and_parent_folder_hint(tmp_path):
    root = _copy(NUS, tmp_path / "dl" / "NUS-WIDE")
    (root / "NUS_WID_Tags" / "TagList1k.txt").unlink()
    with pytest.raises(CorpusError, match=r"expected NUS_WID_Tags/TagList1k.txt .*looked for it in .*TagList1k.txt"):
        read_nuswide(root, tags="1k")
    with pytest.raises(CorpusError, match=r"found .*NUS-WIDE/ImageList/Imagelist.txt: name .*NUS-WIDE instead"):
        read_nuswide(tmp_path / "dl")


# ---------------------------------------------------------------------------- MIRFlickr
MIR = FIXTURES / "mirflickr"


def test_mirflickr_side_by_side_folders():
    assert not (MIR / "mirflickr" / "annotations").exists()  # the real layout: a sibling folder
    for root in (MIR / "mirflickr", MIR):  # the image folder, or the folder both archives were unpacked in
        c = read_mirflickr(root)
        assert c.meta["provenance"]["annotations"].endswith("mirflickr25k_annotations_v080")
        p = c.posts.set_index("post_id")
        assert list(p.index) == [f"im{k}" for k in range(1, 7)]
        assert p.loc["im2", "labels"] == ["people", "portrait"]
        assert p.loc["im1", "labels"] == ["clouds"] and p.loc["im5", "labels"] == []
        assert p.loc["im1", "tags"] == ["sky", "clouds", "sunset"] and p.loc["im5", "tags"] == []
        assert p.loc["im1", "user_id"] == "ann_photos" and p.loc["im3", "user_id"] is None
        assert p.loc["im1", "image"] == str((MIR / "mirflickr" / "im1.jpg").resolve())
        assert sorted(c.users["user_id"]) == ["ann_photos", "bob"]


def test_mirflickr_relevant_and_potential_labels():
    root = MIR / "mirflickr"
    pot = read_mirflickr(root, label_set="potential").posts.set_index("post_id")
    assert pot.loc["im4", "labels"] == ["people", "sea", "sky"] and pot.loc["im6", "labels"] == ["night", "structures"]
    both = read_mirflickr(root, label_set="both").posts.set_index("post_id")
    assert both.loc["im1", "labels"] == ["clouds", "clouds_r1", "sky"]


def test_mirflickr_byte_order_marks(tmp_path):
    root = _copy(MIR, tmp_path / "mir")
    _add_bom(root / "mirflickr25k_annotations_v080" / "people_r1.txt")
    _add_bom(root / "mirflickr" / "meta" / "tags" / "tags1.txt")
    _add_bom(root / "mirflickr" / "meta" / "license" / "license1.txt")
    p = read_mirflickr(root / "mirflickr").posts.set_index("post_id")
    assert p.loc["im2", "labels"] == ["people", "portrait"]
    assert p.loc["im1", "tags"] == ["sky", "clouds", "sunset"] and p.loc["im1", "user_id"] == "ann_photos"


@pytest.mark.parametrize("remove, expected", [
    ("mirflickr25k_annotations_v080", "the annotation folder mirflickr25k_annotations_v080/"),
    ("mirflickr/meta/tags", "meta/tags (the tag files tags<N>.txt)"),
    ("mirflickr/meta/tags/tags3.txt", "tags3.txt, the tags of image 3"),
])
def test_mirflickr_missing_part_names_file_and_place(tmp_path, remove, expected):
    root = _copy(MIR, tmp_path / "mir")
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CorpusError) as e:
        read_mirflickr(root / "mirflickr")
    msg = str(e.value)
    assert msg.startswith(f"MIRFlickr-25K: expected {expected}") and "looked for it in" in msg
    assert str(root / Path(remove).parent) in msg


def test_mirflickr_annotations_without_relevant_files(tmp_path):
    root = _copy(MIR, tmp_path / "mir")
    for f in (root / "mirflickr25k_annotations_v080").glob("*_r1.txt"):
        f.unlink()
    with pytest.raises(CorpusError, match=r"expected annotation files for label_set='relevant' \(<concept>_r1.txt\)"):
        read_mirflickr(root)
    assert len(read_mirflickr(root, label_set="potential")) == 6


# ---------------------------------------------------------------------------- VOC 2007
VOC = FIXTURES / "voc2007"
LEAR = VOC / "pascal07"


def _write_hvecs(dense: Path, out: Path) -> None:
    """The binary LEAR form of a dense tag file: per row a little-endian uint16 d, then d uint16 values."""
    with open(out, "wb") as fh:
        for line in dense.read_text().splitlines():
            values = np.array(line.split(), dtype="<u2")
            fh.write(np.array([len(values)], dtype="<u2").tobytes() + values.tobytes())


@pytest.fixture
def voc_hvecs(tmp_path):
    """The VOC fixture with its LEAR tags in the binary .hvecs form only."""
    root = _copy(VOC, tmp_path / "voc")
    for split in ("train", "test"):
        dense = root / "pascal07" / f"pascal07_{split}_tags.txt"
        _write_hvecs(dense, dense.with_suffix(".hvecs"))
        dense.unlink()
    return root


def _tags_from_files(folder: Path, split: str, image: str) -> list[str]:
    """A post's tags read independently of the reader: the row of its list position, word by word."""
    words = (folder / "pascal07_dictionary.txt").read_text().split()
    names = (folder / f"pascal07_{split}_list.txt").read_text().split()
    hvecs = folder / f"pascal07_{split}_tags.hvecs"
    if hvecs.is_file():
        raw = np.fromfile(hvecs, dtype="<u2")
        d = int(raw[0])
        row = raw.reshape(-1, d + 1)[names.index(image), 1:]
    else:
        row = np.array((folder / f"pascal07_{split}_tags.txt").read_text().splitlines()[names.index(image)].split(),
                       dtype=int)
    assert len(row) == len(words)
    return [w for w, v in zip(words, row) if v == 1]


def _check_voc(c, lear: Path):
    p = c.posts.set_index("post_id")
    assert list(p.index) == ["000001", "000002", "000004", "000005", "000007"]
    for image, split in (("000001", "test"), ("000002", "test"), ("000004", "train"), ("000005", "train"),
                         ("000007", "train")):
        assert p.loc[image, "tags"] == _tags_from_files(lear, split, image)
    assert p.loc["000001", "tags"] == ["dog", "jinky", "pet"]  # dictionary order
    assert p.loc["000007", "tags"] == ["car", "red"] and p.loc["000005", "tags"] == []
    assert p.loc["000001", "labels"] == ["dog", "person"] and p.loc["000005", "labels"] == ["chair"]
    assert p["official_split"].to_dict() == {"000001": "test", "000002": "test", "000004": "val",
                                             "000005": "train", "000007": "train"}


def test_voc2007_dense_text_tags():
    assert not list(LEAR.glob("*.hvecs"))  # the binary form is written by the tests only
    c = read_voc2007(VOC)
    _check_voc(c, LEAR)
    assert Path(c.meta["provenance"]["tags_dir"]) == LEAR
    p = c.posts.set_index("post_id")
    assert p.loc["000001", "user_id"] == "Fried Camels" and p.loc["000001", "flickr_id"] == "341012865"
    assert dict(zip(c.users["user_id"], c.users["name"]))["Fried Camels"] == "Jinky the Fruit Bat"
    strict = read_voc2007(VOC / "VOCdevkit" / "VOC2007", tags_dir=LEAR, include_difficult=False)
    assert strict.posts.set_index("post_id").loc["000005", "labels"] == []
    Corpus(c.posts, c.users).validate(check_images="decode")


def test_voc2007_hvecs_tags(voc_hvecs):
    lear = voc_hvecs / "pascal07"
    raw = (lear / "pascal07_train_tags.hvecs").read_bytes()
    assert raw[:2] == (12).to_bytes(2, "little") and len(raw) == 3 * 2 * (1 + 12)
    c = read_voc2007(voc_hvecs)
    _check_voc(c, lear)
    assert c.posts["tags"].tolist() == read_voc2007(VOC).posts["tags"].tolist()
    assert read_lear_tags(lear)["test"] == {"000002": ["railway", "station", "train"],
                                           "000001": ["dog", "jinky", "pet"]}


def test_voc2007_question_mark_owner_is_missing():
    c = read_voc2007(VOC)
    p = c.posts.set_index("post_id")
    assert p.loc["000005", "user_id"] is None  # <flickrid>?</flickrid>
    assert p.loc["000002", "user_id"] == "KevBow"
    users = dict(zip(c.users["user_id"], c.users["name"]))
    assert "?" not in users and "?" not in users.values()
    assert users["KevBow"] is None  # <name>?</name>
    assert c.missing_modalities()["user"] == 1


def test_voc2007_list_files_with_byte_order_marks(tmp_path):
    root = _copy(VOC, tmp_path / "voc")
    for f in [root / "pascal07" / "pascal07_dictionary.txt", root / "pascal07" / "pascal07_train_list.txt",
              root / "pascal07" / "pascal07_test_tags.txt",
              *(root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main").glob("*.txt")]:
        _add_bom(f)
    c = read_voc2007(root)
    _check_voc(c, LEAR)


def test_voc2007_lear_files_checked_against_voc(tmp_path, voc_hvecs):
    lear = voc_hvecs / "pascal07"
    (lear / "pascal07_train_list.txt").write_text("000007\n000001\n000005\n")
    with pytest.raises(CorpusError, match="pascal07_train_list.txt: image 000001 is in VOC2007 test"):
        read_voc2007(voc_hvecs)
    (lear / "pascal07_train_list.txt").write_text("000007\n000004\n")
    with pytest.raises(CorpusError, match="pascal07_train_tags.hvecs: 3 rows, but pascal07_train_list.txt names 2"):
        read_voc2007(voc_hvecs)
    (lear / "pascal07_train_list.txt").write_text("000007\n000004\n000005\n")
    raw = (lear / "pascal07_test_tags.hvecs").read_bytes()
    (lear / "pascal07_test_tags.hvecs").write_bytes(raw[:-4])
    with pytest.raises(CorpusError, match="pascal07_test_tags.hvecs: row 2 announces 12 values"):
        read_voc2007(voc_hvecs)
    (lear / "pascal07_test_tags.hvecs").write_bytes(raw)
    (lear / "pascal07_dictionary.txt").write_text("car\ncity\n")
    with pytest.raises(CorpusError, match="row 1 has 12 values, but pascal07_dictionary.txt has 2 words"):
        read_voc2007(voc_hvecs)


@pytest.mark.parametrize("remove, expected", [
    ("VOCdevkit/VOC2007/Annotations", "Annotations (the <id>.xml annotations)"),
    ("VOCdevkit/VOC2007/JPEGImages", "JPEGImages"),
    ("VOCdevkit/VOC2007/ImageSets", "ImageSets/Main"),
    ("pascal07/pascal07_dictionary.txt", "pascal07_dictionary.txt"),
    ("pascal07/pascal07_test_list.txt", "pascal07_test_list.txt"),
    ("pascal07/pascal07_train_tags.txt", "pascal07_train_tags.hvecs or pascal07_train_tags.txt"),
])
def test_voc2007_missing_part_names_file_and_place(tmp_path, remove, expected):
    root = _copy(VOC, tmp_path / "voc")
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CorpusError) as e:
        read_voc2007(root)
    msg = str(e.value)
    assert f"expected {expected}" in msg and "looked for it in" in msg and "--help" in msg
    assert str(root) in msg


def test_voc2007_without_tags_says_so(tmp_path, caplog):
    root = _copy(VOC, tmp_path / "voc")
    shutil.rmtree(root / "pascal07")
    with pytest.raises(CorpusError, match="--no-tags"):
        read_voc2007(root)
    with caplog.at_level(logging.WARNING, logger="mmsocial.data.readers"):
        c = read_voc2007(root, with_tags=False)
    assert (c.posts["tags"].map(len) == 0).all()
    assert "tags (5 of 5, 100%)" in caplog.text
    assert "tags" in c.summary()["mostly_missing"] and "empty for most posts" in c.describe()


def test_mostly_empty_modalities_in_info_and_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mmsocial.data.readers"):
        c = read_mirflickr(MIR)
    assert "mirflickr: empty for most posts: text (6 of 6, 100%), popularity (6 of 6, 100%)" in caplog.text
    assert c.missing_modalities()["user"] == 3 and "user" not in c.mostly_missing()  # half is not most
    c = c.filter(c.posts["post_id"] != "im1")
    c.save(tmp_path / "mir")
    back = Corpus.load(tmp_path / "mir")
    assert back.summary()["mostly_missing"] == {"text": 1.0, "user": 0.6, "popularity": 1.0}
    assert "user (3 of 5, 60%)" in back.describe()


# ---------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("command, lines", [
    ("nus-wide", ["ImageList/Imagelist.txt", "Groundtruth/AllLabels/Labels_<c>.txt", "NUS_WID_Tags/AllTags1k.txt"]),
    ("mirflickr", ["mirflickr25k_annotations_v080/", "meta/tags/tags<N>.txt", "<concept>_r1.txt"]),
    ("voc2007", ["Annotations/<id>.xml", "pascal07_dictionary.txt", "pascal07_train_tags.hvecs"]),
])
def test_cli_reader_help_lists_the_layout(command, lines):
    from typer.testing import CliRunner

    from mmsocial.cli import app

    r = CliRunner().invoke(app, ["data", command, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    for line in lines:
        assert line in r.output


def test_cli_readers_build_corpora(tmp_path, voc_hvecs):
    from typer.testing import CliRunner

    from mmsocial.cli import app

    runner = CliRunner()
    for args, n in ((["nus-wide", str(NUS), "--tags", "1k"], 6), (["mirflickr", str(MIR)], 6),
                    (["voc2007", str(voc_hvecs)], 5)):
        out = tmp_path / args[0]
        r = runner.invoke(app, ["data", *args, "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert len(Corpus.load(out)) == n and "empty for most posts" in r.output
    r = runner.invoke(app, ["data", "mirflickr", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "expected the annotation folder" in r.output


# ---------------------------------------------------------------------------- DMAN preparation
def _dman_cfg(num_tags, split_seed=0):
    from mmsocial.systems.dman import Config

    return Config(num_tags=num_tags, split_seed=split_seed)


def test_dman_preparation_on_fixtures():
    from mmsocial.systems.dman import prepare_corpus, select_posts

    voc = read_voc2007(VOC)
    c = prepare_corpus(voc, _dman_cfg(2))
    sel = select_posts(voc, 2)
    vocab = c.meta["vocabularies"]["tags"]
    assert vocab == sel.tag_vocabulary and len(vocab) <= 2
    assert (c.posts["labels"].map(len) > 0).all() and c.posts["image"].notna().all()
    assert (c.posts["tags"].map(len) > 0).all() and set().union(*c.posts["tags"]) <= set(vocab)
    assert "000005" not in set(c.posts["post_id"])  # no tag at all
    train = voc.posts["post_id"].isin(c.posts["post_id"][c.posts["split"] == "train"])
    assert set(vocab) <= set().union(*voc.posts["tags"][train])  # training tags only
    nus = prepare_corpus(read_nuswide(NUS), _dman_cfg(1000))
    assert "174174086" not in set(nus.posts["post_id"])  # no image
    assert "2125226376" not in set(nus.posts["post_id"])  # no label


def test_dman_preparation_split_and_vocabulary(rng):
    from mmsocial.systems.dman import prepare_corpus, select_posts

    words = [f"w{i}" for i in range(30)]
    posts = make_posts([{"post_id": f"p{i}", "labels": [] if i % 10 == 0 else [f"l{i % 3}"],
                         "image": f"x/{i}.jpg",
                         "tags": list(rng.choice(words, size=3, replace=False, p=np.linspace(2, 1, 30) / 45))
                         + (["w29"] * 5 if i < 50 else [])}  # repeated in a post: counts once
                        for i in range(1000)])
    corpus = Corpus(posts)
    c = prepare_corpus(corpus, _dman_cfg(10, split_seed=3))
    assert (c.posts["labels"].map(len) > 0).all() and (c.posts["tags"].map(len) > 0).all()
    vocab = c.meta["vocabularies"]["tags"]
    assert len(vocab) == 10 and set().union(*c.posts["tags"]) <= set(vocab)
    # the vocabulary: document frequency over the training posts only
    from mmsocial.data.splits import dman_split
    sel = select_posts(corpus, 10, split_seed=3)
    assert (dman_split(corpus, 3)[sel.keep] == "test").sum() == (sel.split == "test").sum()  # split kept
    train_ids = set(c.posts["post_id"][c.posts["split"] == "train"])
    df = pd.Series([t for ts in posts["tags"][posts["post_id"].isin(train_ids)] for t in set(ts)]).value_counts()
    assert df[vocab].min() >= df.drop(vocab).max()
    shares = c.posts["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.72) < 0.05 and abs(shares["val"] - 0.08) < 0.03 and abs(shares["test"] - 0.2) < 0.05
    again = prepare_corpus(corpus, _dman_cfg(10, split_seed=3))
    assert again.posts["split"].tolist() == c.posts["split"].tolist()
    with pytest.raises(ValueError, match="num_tags"):
        select_posts(corpus, 0)
