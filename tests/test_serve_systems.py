"""The service over tiny trained runs of all five systems: each system's serving hook (load_run) and the
endpoints that answer 404 until such a run is served (users, match, popularity, EISR search)."""

import io
import shutil

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from mmsocial import systems
from mmsocial.serve import create_app
from serve_helpers import tiny_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tiny_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def served(runs):
    return {name: systems.load_run(run) for name, run in runs.items()}


@pytest.fixture(scope="module")
def client(runs):
    return TestClient(create_app(list(runs.values()), max_upload_bytes=200_000))


def _file(served, post_id: str) -> bytes:
    return served.corpus.image_path(post_id).read_bytes()


def test_every_system_is_served_with_its_capabilities(client):
    caps = {r["system"]: set(r["capabilities"]) for r in client.get("/api/runs").json()}
    assert set(caps) == {"dman", "du2mce", "eisr", "bssan", "uhan"}
    assert {"text_to_image", "image_to_image", "image_to_text", "users"} <= caps["du2mce"]
    assert {"text_to_image", "image_to_image", "image_to_text"} <= caps["eisr"]
    assert caps["bssan"] == {"match"} and caps["uhan"] == {"popularity"}


def test_du2mce_text_to_users_ranks_by_cosine(client, served):
    s = served["du2mce"]
    word = s.info["vocabulary"][0]
    page = client.get("/api/search/users", params={"q": f"the {word}", "k": 5}).json()
    assert page["system"] == "du2mce" and page["metric"] == "ip" and page["query"]["words"] == [word]
    users = s.collections["users"]()
    q, _ = s.embed_text(word)
    cos = users.vectors @ q
    assert np.linalg.norm(users.vectors, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert [r["score"] for r in page["results"]] == pytest.approx(np.sort(cos)[::-1][:5], abs=1e-5)
    assert page["total"] == len(users.ids)


def test_du2mce_post_and_uploaded_image_to_users_agree(client, served):
    s = served["du2mce"]
    pid = s.collections["posts"]().ids[0]
    by_post = client.get(f"/api/posts/{pid}/users", params={"k": 3}).json()["results"]
    up = client.post("/api/images/users", params={"k": 3}, files={"file": ("p.png", _file(s, pid), "image/png")})
    assert up.status_code == 200, up.text
    # the upload goes through the backbone, the post through its cached (float16) features
    assert [r["score"] for r in up.json()["results"]] == pytest.approx([r["score"] for r in by_post], abs=2e-2)


def test_du2mce_uploaded_corpus_image_finds_itself(client, served):
    s = served["du2mce"]
    pid = s.collections["posts"]().ids[3]
    page = client.post("/api/images/similar", params={"k": 5, "system": "du2mce"},
                       files={"file": ("p.png", _file(s, pid), "image/png")}).json()
    assert page["results"][0]["score"] > 0.99
    assert pid in [r["post_id"] for r in page["results"] if r["score"] > page["results"][0]["score"] - 1e-3]


def test_eisr_text_to_images_ranks_by_euclidean_distance_in_the_semantic_space(client, served):
    s = served["eisr"]
    lda_words = s.info["classes"]
    text = "a photo of a " + " ".join(lda_words)
    page = client.get("/api/search/images", params={"q": text, "k": 4, "system": "eisr"})
    assert page.status_code == 200, page.text
    page = page.json()
    q, _ = s.embed_text(text)
    assert q.sum() == pytest.approx(1.0, abs=1e-5)  # a posterior over the classes
    posts = s.collections["posts"]()
    dist = np.linalg.norm(posts.vectors - q, axis=1)
    assert [r["score"] for r in page["results"]] == pytest.approx(np.sort(dist)[:4], abs=1e-5)
    pid = posts.ids[0]
    texts = client.get(f"/api/posts/{pid}/texts", params={"system": "eisr", "k": 3}).json()
    assert texts["results"][0]["kind"] == "post" and texts["total"] == len(posts.ids)


def test_eisr_refuses_finetuned_runs_and_changed_text_features(runs, tmp_path):
    bad = tmp_path / "ft"
    shutil.copytree(runs["eisr"], bad)
    cfg = yaml.safe_load((bad / "config.yaml").read_text())
    (bad / "config.yaml").write_text(yaml.safe_dump({**cfg, "finetune": True}))
    with pytest.raises(ValueError, match="finetune: true"):
        systems.load_run(bad)
    changed = tmp_path / "changed"
    shutil.copytree(runs["eisr"], changed)
    z = dict(np.load(changed / "semantic_test.npz"))
    z["text"] = z["text"][:, ::-1].copy()
    np.savez_compressed(changed / "semantic_test.npz", **z)
    with pytest.raises(ValueError, match="differ from the run's semantic_test.npz"):
        systems.load_run(changed)


def test_bssan_match_score_with_w2r_and_o2w_attention(client, served):
    s = served["bssan"]
    pid = s.corpus.posts["post_id"].iloc[0]
    caption = s.corpus.posts["text"].iloc[0]
    r = client.post("/api/match", data={"caption": caption, "post_id": pid})
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["system"] == "bssan" and m["score"] == pytest.approx(m["f_w2r"] + m["lam"] * m["f_o2w"], abs=1e-5)
    w2r, o2w = m["attention"]["w2r"], m["attention"]["o2w"]
    assert w2r["grid"] == [2, 2] and len(w2r["maps"]) == len(m["words"])
    assert all(np.sum(v) == pytest.approx(1.0, abs=1e-5) for v in w2r["maps"].values())  # Eq. 2: over regions
    assert np.sum(o2w["weights"], axis=1) == pytest.approx(np.ones(len(o2w["boxes"])), abs=1e-5)  # Eq. 10
    up = client.post("/api/match", data={"caption": caption},
                     files={"file": ("p.png", _file(s, pid), "image/png")}).json()
    assert up["score"] == pytest.approx(m["score"], abs=0.05 + 0.05 * abs(m["score"]))  # float16 cache vs CNN


def test_uhan_popularity_with_attention_matches_the_predictor(client, served, runs):
    from mmsocial.systems.uhan import load_predictor

    s = served["uhan"]
    row = s.corpus.posts.iloc[0]
    r = client.post("/api/popularity", data={"post_id": row["post_id"], "text": "a red car on a road",
                                             "user_id": row["user_id"]})
    assert r.status_code == 200, r.text
    p = r.json()
    direct = load_predictor(runs["uhan"]).predict("a red car on a road", row["user_id"],
                                                  s.corpus.image_path(row["post_id"]))
    assert p["popularity"] == pytest.approx(direct["popularity"], abs=1e-5) and np.isfinite(p["popularity"])
    assert sum(p["word_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert sum(p["region_weights"]) == pytest.approx(1.0, abs=1e-5) and p["region_grid"] == [2, 2]
    cold = client.post("/api/popularity", data={"text": "a cat", "user_id": "nobody"},
                       files={"file": ("p.png", _file(s, row["post_id"]), "image/png")}).json()
    assert cold["known_user"] is False


@pytest.mark.parametrize("method,url,kwargs,status,says", [
    ("post", "/api/images/users", {"files": {"file": ("a.txt", b"not an image", "text/plain")}}, 415, "field 'file'"),
    ("post", "/api/images/users", {"files": {"file": ("e.png", b"", "image/png")}}, 422, "field 'file'"),
    ("post", "/api/images/users", {"files": {"file": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")}}, 413,
     "larger than"),
    ("get", "/api/search/users", {"params": {"q": "  "}}, 422, "empty query"),
    ("get", "/api/search/users", {"params": {"q": "qwertyuiop"}}, 422, "vocabulary"),
    ("get", "/api/posts/nope/users", {}, 404, "unknown post"),
    ("post", "/api/match", {"data": {"caption": "a dog"}}, 422, "post_id"),
    ("post", "/api/match", {"data": {"post_id": "s000000"}}, 422, ""),
    ("post", "/api/match", {"data": {"caption": "a dog", "post_id": "nope"}}, 404, "unknown post"),
    ("post", "/api/match", {"data": {"caption": "qwertyuiop", "post_id": "s000000"}}, 422, "vocabulary"),
    ("post", "/api/match", {"data": {"caption": "a dog", "post_id": "s000000"},
                            "files": {"file": ("a.txt", b"x", "text/plain")}}, 422, "not both"),
    ("post", "/api/popularity", {"data": {"post_id": "s000000", "text": "  "}}, 422, "text is empty"),
    ("post", "/api/popularity", {"data": {"text": "a cat"}}, 422, "post_id"),
    ("post", "/api/popularity", {"data": {"text": "a cat"}, "files": {"file": ("a.gif", b"GIF89a", "image/gif")}},
     415, "field 'file'"),
    ("get", "/api/search/images", {"params": {"q": "zzzz qqqq", "system": "eisr"}}, 422, "vocabulary"),
])
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(client, method, url, kwargs, status, says):
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    assert says in str(r.json()["detail"])
    assert client.get("/health").json()["status"] == "ok"


def test_metrics_count_the_new_routes(client):
    client.post("/api/images/users", files={"file": ("a.txt", b"x", "text/plain")})
    text = client.get("/metrics").text
    assert 'route="/api/images/users",status="415"' in text
    assert 'mmsocial_index_vectors{run="du2mce",collection="users"' in text
