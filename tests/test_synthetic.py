"""The synthetic social corpus: determinism, ground-truth objects, round trip, missing modalities,
the popularity model, images on disk and on demand, scale."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmsocial.data.corpus import Corpus
from mmsocial.data.graph import LinkGraph
from mmsocial.data.synthetic import (CLASSES, SyntheticConfig, make_synthetic_corpus, render_array,
                                     render_post_image)


@pytest.fixture(scope="module")
def corpus():
    return make_synthetic_corpus(SyntheticConfig(posts=1500, seed=3, write_images=False))


def _objects(c):
    return [json.loads(o) for o in c.posts["objects"]]


def test_deterministic_by_seed():
    cfg = dict(posts=300, write_images=False)
    a = make_synthetic_corpus(SyntheticConfig(seed=1, **cfg))
    b = make_synthetic_corpus(SyntheticConfig(seed=1, **cfg))
    c = make_synthetic_corpus(SyntheticConfig(seed=2, **cfg))
    cols = ["post_id", "user_id", "text", "timestamp", "views", "split", "objects"]
    assert a.posts[cols].equals(b.posts[cols])
    assert list(a.posts["tags"]) == list(b.posts["tags"])
    assert a.links.equals(b.links)
    assert not a.posts["objects"].equals(c.posts["objects"])
    pid, obj = a.posts["post_id"][0], a.posts["objects"][0]
    spec = a.meta["synthetic"]
    assert (render_array(pid, obj, spec) == render_array(pid, obj, spec)).all()


def test_objects_boxes_inside_and_drawn_over_the_background(corpus):
    size = corpus.meta["synthetic"]["image_size"]
    spec = corpus.meta["synthetic"]
    for i, objs in enumerate(_objects(corpus)[:150]):
        assert 1 <= len(objs) <= 4
        pid = corpus.posts["post_id"][i]
        img = render_array(pid, objs, spec).astype(int)
        background = render_array(pid, [], spec).astype(int)
        boxes = np.array([o["box"] for o in objs])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= size).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            assert np.abs(img[cy, cx] - background[cy, cx]).max() > 40
            for x0b, y0b, x1b, y1b in boxes[k + 1:]:  # boxes never overlap
                assert min(x1, x1b) <= max(x0, x0b) or min(y1, y1b) <= max(y0, y0b)
        outside = np.ones((size, size), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            outside[y0:y1, x0:x1] = False
        assert (img[outside] == background[outside]).all()


def test_labels_tags_and_captions_derive_from_the_objects(corpus):
    names = {c[0] for c in CLASSES}
    hits, total = 0, 0
    for objs, labels, tags, text in zip(_objects(corpus), corpus.posts["labels"], corpus.posts["tags"],
                                        corpus.posts["text"]):
        object_names = {o["label"] for o in objs}
        assert set(labels) == object_names
        if text is not None:
            assert all(n in text for n in object_names)
            assert all(f"{o['color']} {o['label']}" in text for o in objs)
        hits += len(object_names & set(tags))
        total += len(object_names)
    assert 0.8 < hits / total < 0.97  # object names are tags, with some dropped (noise)
    vocab = set().union(*corpus.posts["tags"])
    assert vocab - names  # related, colour and noise tags too


def test_users_have_interest_profiles_that_drive_the_content(corpus):
    users = corpus.users.set_index("user_id")
    assert len(users) == 1500 // 20
    profiles = np.stack(users["interests"].to_numpy())
    assert np.allclose(profiles.sum(1), 1.0)
    names = [c["name"] for c in corpus.meta["synthetic"]["classes"]]
    counts = pd.DataFrame(0.0, index=users.index, columns=names)
    for uid, objs in zip(corpus.posts["user_id"], _objects(corpus)):
        if uid is not None:
            for o in objs:
                counts.loc[uid, o["label"]] += 1
    active = counts.sum(axis=1) >= 30
    observed = counts[active].div(counts[active].sum(axis=1), axis=0).to_numpy()
    expected = np.stack(users.loc[active[active].index, "interests"].to_numpy())
    assert np.abs(observed - expected).sum(1).mean() < 0.35  # L1 between empirical and true profile


def test_missing_modalities_are_recorded_not_filled():
    c = make_synthetic_corpus(SyntheticConfig(posts=2000, missing_text=0.2, missing_user=0.1,
                                              write_images=False))
    m = c.missing_modalities()
    assert 300 < m["text"] < 500 and 120 < m["user"] < 280
    assert m["image"] == 0 and m["labels"] == 0 and m["popularity"] == 0
    no_text = c.posts["text"].isna()
    assert c.posts["text"][no_text].map(lambda t: t is None).all()
    assert c.posts["objects"][no_text].map(len).min() > 2  # the content is there, only the text is missing
    none = make_synthetic_corpus(SyntheticConfig(posts=200, missing_text=0, missing_user=0, write_images=False))
    assert none.missing_modalities()["text"] == 0 and none.missing_modalities()["user"] == 0


def test_popularity_follows_the_stored_model(corpus):
    p = corpus.posts
    pop = corpus.meta["synthetic"]["popularity"]
    keep = p["user_id"].notna() & p["text"].notna()
    p = p[keep]
    y = np.log2(p["views"] / p["days"] + 1).to_numpy()
    base = corpus.users.set_index("user_id").loc[p["user_id"], "base_popularity"].to_numpy()
    class_pop = {c["name"]: c["popularity"] for c in corpus.meta["synthetic"]["classes"]}
    content = np.array([np.mean([class_pop[o["label"]] for o in json.loads(s)]) for s in p["objects"]])
    words = p["text"].str.split().map(len).to_numpy()
    hot = p["text"].map(lambda t: any(w in t for w in pop["hot_words"])).to_numpy()
    X = np.column_stack([np.ones(len(y)), base, content, words, hot])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    r2 = 1 - resid.var() / y.var()
    assert r2 > 0.6
    assert abs(coef[1] - 1.0) < 0.15
    assert abs(coef[2] - pop["content_weight"]) < 0.25
    assert abs(coef[3] - pop["word_weight"]) < 0.03
    assert abs(coef[4] - pop["hot_word_bonus"]) < 0.15
    assert 0.25 < resid.std() < 0.6  # the noise is there, of about the stored size
    assert np.corrcoef(base, y)[0, 1] > 0.5 and np.corrcoef(content, y)[0, 1] > 0.1


def test_splits_timestamps_and_links(corpus):
    s = corpus.posts["split"].value_counts()
    assert s["train"] == 1050 and s["val"] == 150 and s["test"] == 300
    ts = corpus.posts["timestamp"].to_numpy()
    assert (np.diff(ts) >= 0).all() and (ts[-1] - ts[0]) / 86400 > 360
    assert (corpus.posts["days"] > 0).all() and (corpus.posts["views"] >= 0).all()
    assert (corpus.links["kind"] == "label").all()
    g = LinkGraph.from_corpus(corpus)
    assert g.degree.max() <= 50 and g.degree.mean() > 25
    labels = corpus.posts["labels"]
    idx = corpus.post_index
    for s_, d_ in zip(corpus.links["src"][:2000], corpus.links["dst"][:2000]):
        assert set(labels[idx[s_]]) & set(labels[idx[d_]])


def test_parquet_round_trip(tmp_path, corpus):
    corpus.save(tmp_path / "syn")
    back = Corpus.load(tmp_path / "syn")
    cols = ["post_id", "user_id", "image", "text", "timestamp", "views", "days", "split"]
    assert back.posts[cols].equals(corpus.posts[cols])
    assert list(back.posts["objects"]) == list(corpus.posts["objects"])  # JSON strings
    assert list(back.posts["tags"].map(list)) == list(corpus.posts["tags"])
    assert list(back.posts["labels"].map(list)) == list(corpus.posts["labels"])
    assert _objects(back) == _objects(corpus)
    assert back.links.equals(corpus.links)
    assert np.allclose(np.stack(back.users["interests"]), np.stack(corpus.users["interests"]))
    assert back.meta["synthetic"]["classes"] == corpus.meta["synthetic"]["classes"]
    pid = back.posts["post_id"][7]
    im = back.open_image(pid)
    assert im.mode == "RGB" and im.size == (224, 224)
    assert (np.asarray(im) == np.asarray(render_post_image(corpus.row(pid), corpus.meta))).all()


def test_written_images_match_on_demand_rendering(tmp_path):
    cfg = SyntheticConfig(posts=40, seed=4, image_size=64, write_images=True, workers=1)
    c = make_synthetic_corpus(cfg, tmp_path / "img")
    back = Corpus.load(tmp_path / "img")
    assert back.validate(check_images="decode")["image"] == 0
    assert back.posts["image"][0] == f"images/0000/{back.posts['post_id'][0]}.png"
    for i in (0, 17, 39):
        pid = back.posts["post_id"][i]
        with Image.open(tmp_path / "img" / back.posts["image"][i]) as im:
            assert (np.asarray(im.convert("RGB")) == render_array(pid, c.posts["objects"][i], c.meta["synthetic"])).all()


def test_config_is_checked():
    for bad, field in [(dict(posts=0), "posts"), (dict(n_classes=30), "n_classes"),
                       (dict(max_objects=5), "max_objects"), (dict(missing_text=1.0), "missing_text"),
                       (dict(image_size=8), "image_size"), (dict(captions_per_post=-1), "captions_per_post")]:
        with pytest.raises(ValueError, match=field):
            make_synthetic_corpus(SyntheticConfig(write_images=False, **bad))
    with pytest.raises(ValueError, match="out"):
        make_synthetic_corpus(SyntheticConfig(posts=10))
    assert SyntheticConfig(posts=10).n_users() == 2 and SyntheticConfig(posts=1000).n_users() == 50


def test_captions_option_adds_a_column_and_changes_nothing_else(tmp_path):
    base = make_synthetic_corpus(SyntheticConfig(posts=400, seed=5, write_images=False))
    with_caps = make_synthetic_corpus(SyntheticConfig(posts=400, seed=5, write_images=False, captions_per_post=5))
    assert "captions" not in base.posts.columns
    assert list(with_caps.posts.columns) == list(base.posts.columns) + ["captions"]
    for col in base.posts.columns:  # every existing column, lists included, is the same
        assert list(with_caps.posts[col].map(lambda v: list(v) if isinstance(v, list) else v)) == \
            list(base.posts[col].map(lambda v: list(v) if isinstance(v, list) else v)), col
    assert with_caps.links.equals(base.links)
    assert with_caps.users.drop(columns="interests").equals(base.users.drop(columns="interests"))
    assert np.array_equal(np.stack(with_caps.users["interests"]), np.stack(base.users["interests"]))
    again = make_synthetic_corpus(SyntheticConfig(posts=400, seed=5, write_images=False, captions_per_post=5))
    assert list(again.posts["captions"]) == list(with_caps.posts["captions"])  # deterministic by seed
    other = make_synthetic_corpus(SyntheticConfig(posts=400, seed=6, write_images=False, captions_per_post=5))
    assert list(other.posts["captions"]) != list(with_caps.posts["captions"])
    reordered = 0
    for objs, caps in zip(_objects(with_caps), with_caps.posts["captions"]):
        assert len(caps) == 5 and len(set(caps)) == 5  # five different sentences
        for cap in caps:  # each names every object with its colour, in one of the phrasings
            assert all(f"{o['color']} {o['label']}" in cap or f"{o['label']} in {o['color']}" in cap for o in objs)
        if len({o["label"] for o in objs}) > 1:  # which object is named first varies between the captions
            reordered += len({min(objs, key=lambda o: cap.index(o["label"]))["label"] for cap in caps}) > 1
    assert reordered > 50
    with_caps.save(tmp_path / "syn")
    from mmsocial.systems.bssan import captions_of

    back = Corpus.load(tmp_path / "syn")
    assert captions_of(back.posts) == [list(c) for c in with_caps.posts["captions"]]


def test_render_rejects_foreign_labels_and_boxes(corpus):
    spec = corpus.meta["synthetic"]
    with pytest.raises(ValueError, match="'objects'"):
        render_array("x", [{"label": "unicorn", "box": [0, 0, 5, 5]}], spec)
    with pytest.raises(ValueError, match="outside"):
        render_array("x", [{"label": "cat", "box": [0, 0, 500, 5]}], spec)
    with pytest.raises(ValueError, match="synthetic"):
        render_post_image({"post_id": "x", "objects": "[]"}, {})


def test_metadata_scale_smoke_20k():
    c = make_synthetic_corpus(SyntheticConfig(posts=20_000, write_images=False, n_classes=12))
    assert len(c) == 20_000 and len(c.users) == 1000
    assert c.posts["image"].str.startswith("synth:").all()
    assert len(set().union(*c.posts["labels"])) == 12
    g = LinkGraph.from_corpus(c)
    assert g.degree.max() <= 50 and g.degree.min() > 0


def test_cli_builds_a_corpus(tmp_path):
    from typer.testing import CliRunner

    from mmsocial.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["data", "synthetic", "--out", str(out), "--posts", "60", "--no-write-images"])
    assert r.exit_code == 0, r.output
    assert len(Corpus.load(out)) == 60
    assert "captions" not in Corpus.load(out).posts.columns
    r = CliRunner().invoke(app, ["data", "synthetic", "--out", str(tmp_path / "caps"), "--posts", "60",
                                 "--no-write-images", "--captions", "3"])
    assert r.exit_code == 0, r.output
    assert Corpus.load(tmp_path / "caps").posts["captions"].map(len).tolist() == [3] * 60
    r = CliRunner().invoke(app, ["data", "synthetic", "--out", str(tmp_path / "bad"), "--posts", "60",
                                 "--no-write-images", "--captions", "-1"])
    assert r.exit_code == 2 and "--captions must be in [0, 20], got -1" in r.output, r.output
