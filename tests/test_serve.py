"""The search service on a tiny trained DMAN run: API behaviour, validation, index build/add."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mmsocial import systems
from mmsocial.cli import app as cli
from mmsocial.index import VectorIndex, run_index_dir
from mmsocial.serve import create_app
from serve_helpers import tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def built(run):
    result = CliRunner().invoke(cli, ["index", "build", str(run)])
    assert result.exit_code == 0, result.output
    return run, result.output


@pytest.fixture(scope="module")
def client(built):
    return TestClient(create_app([built[0]], max_upload_bytes=200_000))


@pytest.fixture(scope="module")
def served(run):
    return systems.load_run(run)


def _png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_run_folder_records_its_system_and_index_build_reports(built):
    run, output = built
    assert systems.run_system(run) == "dman"
    assert "posts: flat (ip)" in output and "recall@10 vs exact 1.0000" in output and "built in" in output
    assert VectorIndex.load(run_index_dir(run, "posts")).mapped  # flat indexes load memory-mapped


def test_runs_lists_capabilities_and_memory_mapped_indexes(client):
    runs = client.get("/api/runs").json()
    assert [r["system"] for r in runs] == ["dman"]
    assert set(runs[0]["capabilities"]) == {"text_to_image", "image_to_image", "image_to_text", "explain"}
    assert runs[0]["collections"]["posts"]["memory_mapped"] is True


def test_text_query_ranks_by_inner_product_with_the_tag_vector(client, served):
    words = client.get("/api/vocabulary").json()["words"]
    q = f"{words[0]} {words[3]} notaword"
    page = client.get("/api/search/images", params={"q": q, "k": 5}).json()
    assert page["query"]["words"] == [words[0], words[3]] and page["query"]["unknown_words"] == ["notaword"]
    posts = served.collections["posts"]()
    query = np.zeros(len(words), np.float32)
    query[[0, 3]] = 1
    score = posts.vectors @ query  # Y_w0 + Y_w3
    assert [r["score"] for r in page["results"]] == pytest.approx(np.sort(score)[::-1][:5], abs=1e-4)
    assert page["total"] == len(posts.ids) and page["next_offset"] == 5


def test_pagination_pages_are_slices_of_one_ranking(client):
    word = client.get("/api/vocabulary").json()["words"][1]
    big = client.get("/api/search/images", params={"q": word, "k": 12}).json()["results"]
    p2 = client.get("/api/search/images", params={"q": word, "k": 4, "offset": 4}).json()["results"]
    assert [r["score"] for r in p2] == pytest.approx([r["score"] for r in big[4:8]])
    assert all(r["image_url"].startswith("/images/dman/") for r in big)


def test_image_to_texts_ranks_vocabulary_words_by_their_probability(client, served):
    pid = served.collections["posts"]().ids[0]
    y = served.embed_posts([pid])[0]
    page = client.get(f"/api/posts/{pid}/texts", params={"k": 30}).json()
    vocab = served.info["vocabulary"]
    assert [r["id"] for r in page["results"]][:5] == [vocab[i] for i in np.argsort(-y, kind="stable")][:5]
    assert all(r["kind"] == "word" for r in page["results"])


def test_similar_images_leave_the_post_out_and_upload_works(client, served):
    pid = served.collections["posts"]().ids[0]
    page = client.get(f"/api/posts/{pid}/similar", params={"k": 5}).json()
    assert len(page["results"]) == 5 and pid not in [r["post_id"] for r in page["results"]]
    up = client.post("/api/images/similar", params={"k": 3}, files={"file": ("red.png", _png(), "image/png")})
    assert up.status_code == 200 and len(up.json()["results"]) == 3
    texts = client.post("/api/images/texts", files={"file": ("red.png", _png(), "image/png")})
    assert texts.status_code == 200 and texts.json()["results"][0]["kind"] == "word"


def test_explanation_is_an_attention_map_over_the_region_grid(client, served):
    pid = served.collections["posts"]().ids[2]
    word = served.info["vocabulary"][4]
    ex = client.get(f"/api/posts/{pid}/explain", params={"q": word}).json()
    assert ex["word"] == word and ex["grid"] == [2, 2]  # 64 px MobileNetV2 -> 2 x 2 regions
    assert np.sum(ex["weights"]) == pytest.approx(1.0, abs=1e-5) and np.min(ex["weights"]) >= 0
    top = client.get(f"/api/posts/{pid}/explain").json()  # no word: the most probable tag
    assert top["word"] in served.info["vocabulary"]


def test_uploaded_image_is_explained_like_a_post(client, served):
    word = served.info["vocabulary"][4]
    r = client.post("/api/images/explain", data={"q": word}, files={"file": ("red.png", _png(), "image/png")})
    assert r.status_code == 200, r.text
    ex = r.json()
    assert ex["word"] == word and ex["upload"] == "red.png" and ex["post_id"] is None and ex["grid"] == [2, 2]
    assert np.sum(ex["weights"]) == pytest.approx(1.0, abs=1e-5)
    bad = client.post("/api/images/explain", files={"file": ("a.txt", b"not an image", "text/plain")})
    assert bad.status_code == 415 and "field 'file'" in bad.json()["detail"]


def test_capabilities_without_a_run_answer_404_with_the_train_command(client, served):
    pid = served.collections["posts"]().ids[0]
    for r in (client.get(f"/api/posts/{pid}/users"), client.get("/api/search/users", params={"q": "dog"}),
              client.post("/api/match", data={"caption": "a dog", "post_id": pid}),
              client.post("/api/popularity", data={"post_id": pid}),
              client.get("/api/search/images", params={"q": "dog", "system": "eisr"})):
        assert r.status_code == 404, r.text
        assert "train one with: mmsocial train" in r.json()["detail"]
    assert "mmsocial train du2mce" in client.get(f"/api/posts/{pid}/users").json()["detail"]
    assert "mmsocial train uhan" in client.post("/api/popularity", data={"post_id": pid}).json()["detail"]


@pytest.mark.parametrize("method,url,kwargs,status,says", [
    ("get", "/api/search/images", {"params": {"q": "   "}}, 422, "empty query"),
    ("get", "/api/search/images", {"params": {"q": ""}}, 422, ""),
    ("get", "/api/search/images", {"params": {"q": "dog", "k": 0}}, 422, ""),
    ("get", "/api/search/images", {"params": {"q": "dog", "k": 101}}, 422, ""),
    ("get", "/api/search/images", {"params": {"q": "dog", "offset": -1}}, 422, ""),
    ("get", "/api/search/images", {"params": {"q": "x" * 501}}, 422, ""),
    ("get", "/api/search/images", {"params": {"q": "qwertyuiop"}}, 422, "vocabulary"),
    ("get", "/api/posts/nope/similar", {}, 404, "unknown post 'nope'"),
    ("get", "/api/posts/nope/explain", {}, 404, "unknown post"),
    ("get", "/api/users/nobody", {}, 404, "unknown user 'nobody'"),
    ("get", "/images/dman/..%2F..%2F..%2Fetc%2Fpasswd", {}, 404, ""),
    ("get", "/images/dman/../../etc/passwd", {}, 404, ""),
    ("get", "/images/other/s000000", {}, 404, "unknown run"),
    ("post", "/api/images/similar", {"files": {"file": ("a.txt", b"hello, not an image", "text/plain")}}, 415,
     "not an image"),
    ("post", "/api/images/similar", {"files": {"file": ("e.png", b"", "image/png")}}, 422, "empty upload"),
    ("post", "/api/images/similar", {"files": {"file": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")}},
     413, "larger than"),
    ("post", "/api/images/similar", {}, 422, ""),
])
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(client, method, url, kwargs, status, says):
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    assert says in str(r.json()["detail"])
    assert client.get("/health").json()["status"] == "ok"


def test_images_are_served_from_the_corpus_folder_only(client, served, monkeypatch):
    pid = served.collections["posts"]().ids[0]
    r = client.get(f"/images/dman/{pid}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    corpus = client.app.state.runs[0].served.corpus
    monkeypatch.setattr(corpus, "image_path", lambda post_id: corpus.root / ".." / ".." / "etc" / "passwd")
    r = client.get(f"/images/dman/{pid}")
    assert r.status_code == 403 and "outside the corpus folder" in r.json()["detail"]


def test_user_page_lists_their_posts(client, served):
    uid = served.corpus.posts["user_id"].iloc[0]
    page = client.get(f"/api/users/{uid}", params={"k": 2}).json()
    assert page["user_id"] == uid and page["posts"] == int((served.corpus.posts["user_id"] == uid).sum())
    assert len(page["results"]) == min(2, page["posts"])


def test_health_metrics_openapi_and_page(client):
    client.get("/api/search/images", params={"q": "   "})
    text = client.get("/metrics").text
    assert 'route="/api/search/images",status="422"' in text and "mmsocial_index_vectors" in text
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/search/images", "/api/posts/{post_id}/similar", "/api/posts/{post_id}/texts",
              "/api/images/similar", "/api/images/texts", "/api/posts/{post_id}/users", "/api/search/users",
              "/api/match", "/api/popularity", "/api/posts/{post_id}/explain", "/api/images/explain",
              "/api/images/users", "/health", "/metrics"):
        assert p in paths
    page = client.get("/")
    assert page.status_code == 200 and 'id="search-form"' in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/../x").status_code == 404


def test_index_add_embeds_the_posts_the_index_lacks(built, tmp_path):
    run = built[0]
    folder = run_index_dir(run, "posts")
    index = VectorIndex.load(folder, mmap=False)
    keep = len(index) - 5
    dropped = [str(i) for i in index.ids[keep:]]
    vectors = np.stack([index.index.reconstruct(i) for i in range(keep)])
    from mmsocial.index import build_index

    build_index(vectors, [str(i) for i in index.ids[:keep]], "ip").save(folder)
    result = CliRunner().invoke(cli, ["index", "add", str(run)])
    assert result.exit_code == 0, result.output
    after = VectorIndex.load(folder)
    corpus_posts = systems.load_run(run).corpus.posts
    assert len(after) == int(corpus_posts["image"].notna().sum())  # dropped posts + posts DMAN filtered out
    assert set(dropped) <= set(after.ids.tolist())
    j = after.ids.tolist().index(dropped[0])
    assert np.allclose(after.index.reconstruct(j), index.index.reconstruct(keep), atol=1e-5)  # same embedding


def test_serving_a_folder_that_is_not_a_run_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        create_app([tmp_path])
