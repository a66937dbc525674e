import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mmsocial.cli import app
from mmsocial.data.corpus import Corpus, CorpusError, make_posts
from mmsocial.features.backbones import load_backbone
from mmsocial.features.extract import extract_features
from mmsocial.features.store import FeatureSet, FeatureStoreError, pending_rows, write_features

FIXTURES = Path(__file__).parent / "fixtures" / "images"
MANIFEST = {"extractor": "test", "weights": "random"}


def _batches(data, size, extra=None, fail_at=None):
    for start in range(0, len(data), size):
        if fail_at is not None and start >= fail_at:
            raise KeyboardInterrupt("simulated kill")
        more = {k: v[start:start + size] for k, v in (extra or {}).items()}
        yield (start, data[start:start + size], more) if extra else (start, data[start:start + size])


def test_round_trip_and_memory_mapped_read(tmp_path, rng):
    data = rng.normal(size=(10, 3, 4)).astype(np.float32)
    boxes = rng.uniform(size=(10, 2, 4)).astype(np.float32)
    ids = [f"p{i}" for i in range(10)]
    fs = write_features(tmp_path / "f", ids, (3, 4), _batches(data, 4, {"boxes": boxes}), MANIFEST,
                        extra_dims={"boxes": (2, 4)})
    fs = FeatureSet.open(tmp_path / "f")
    assert isinstance(fs.data, np.memmap) and fs.data.dtype == np.float16 and fs.data.shape == (10, 3, 4)
    np.testing.assert_array_equal(fs.data, data.astype(np.float16))
    np.testing.assert_array_equal(fs.extra["boxes"], boxes)
    assert fs.post_ids == ids and len(fs) == 10 and fs.dims == (3, 4)
    assert fs.manifest["extractor"] == "test" and fs.manifest["dims"] == [3, 4]
    assert fs.rows(["p7", "p2"]).tolist() == [7, 2]
    np.testing.assert_array_equal(fs.get(["p7", "p2"]), data.astype(np.float16)[[7, 2]].astype(np.float32))
    with pytest.raises(KeyError, match="'nope' has no features"):
        fs.rows(["nope"])
    with pytest.raises(ValueError):
        fs.data[0] = 1  # read-only map
    loaded = FeatureSet.open(tmp_path / "f", mmap=False)
    assert not isinstance(loaded.data, np.memmap)
    np.testing.assert_array_equal(loaded.data, fs.data)
    assert [p.name for p in tmp_path.glob(".f.*")] == [".f.lock"]  # no partial folder left behind (the lock file stays)


def test_killed_write_resumes_and_gives_identical_files(tmp_path, rng):
    data = rng.normal(size=(11, 5)).astype(np.float32)
    ids = [f"p{i}" for i in range(11)]
    reference = write_features(tmp_path / "ref", ids, (5,), _batches(data, 3), MANIFEST)

    with pytest.raises(KeyboardInterrupt):
        write_features(tmp_path / "f", ids, (5,), _batches(data, 3, fail_at=6), MANIFEST)
    with pytest.raises(FeatureStoreError, match="incomplete.*resume"):
        FeatureSet.open(tmp_path / "f")
    todo = pending_rows(tmp_path / "f", ids, (5,), MANIFEST)
    assert todo.tolist() == list(range(6, 11))

    asked = []

    def remaining(rows):
        asked.extend(rows.tolist())
        yield int(rows[0]), data[rows]

    fs = write_features(tmp_path / "f", ids, (5,), remaining, MANIFEST)
    assert asked == list(range(6, 11))
    for name in ("data.npy", "manifest.json"):
        assert (tmp_path / "f" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    np.testing.assert_array_equal(fs.data, reference.data)


def test_changed_settings_start_over(tmp_path, rng):
    data = rng.normal(size=(6, 2)).astype(np.float32)
    ids = [f"p{i}" for i in range(6)]
    with pytest.raises(KeyboardInterrupt):
        write_features(tmp_path / "f", ids, (2,), _batches(data, 2, fail_at=2), MANIFEST)
    other = {"extractor": "test", "weights": "other"}
    assert len(pending_rows(tmp_path / "f", ids, (2,), other)) == 6
    with pytest.warns(UserWarning, match="different settings"):
        fs = write_features(tmp_path / "f", ids, (2,), _batches(data, 2), other)
    assert fs.manifest["weights"] == "other"


def test_overwrite_replaces_a_complete_set(tmp_path, rng):
    ids = ["a", "b"]
    write_features(tmp_path / "f", ids, (2,), [(0, np.zeros((2, 2)))], MANIFEST)
    same = write_features(tmp_path / "f", ids, (2,), [(0, np.ones((2, 2)))], MANIFEST)
    assert same.stats["cached"] and same.data.tolist() == [[0, 0], [0, 0]]  # same settings, same rows
    fs = write_features(tmp_path / "f", ids, (2,), [(0, np.ones((2, 2)))], MANIFEST, overwrite=True)
    assert fs.data.tolist() == [[1, 1], [1, 1]]


def test_bad_batches_are_refused_naming_the_post(tmp_path):
    ids = ["a", "b", "c"]
    with pytest.raises(FeatureStoreError, match=r"shape \(3, 3\)"):
        write_features(tmp_path / "f", ids, (2,), [(0, np.zeros((3, 3)))], MANIFEST)
    with pytest.raises(FeatureStoreError, match="post 'b'.*float16 range"):
        write_features(tmp_path / "g", ids, (2,), [(0, np.array([[0, 0], [1e6, 0], [0, 0]]))], MANIFEST)
    with pytest.raises(FeatureStoreError, match="never written.*'c'"):
        write_features(tmp_path / "h", ids, (2,), [(0, np.zeros((2, 2)))], MANIFEST)
    with pytest.raises(FeatureStoreError, match="duplicate"):
        write_features(tmp_path / "i", ["a", "a"], (2,), [], MANIFEST)
    with pytest.raises(FeatureStoreError, match="not a feature set"):
        FeatureSet.open(tmp_path / "nothing")


# ------------------------------------------------------------------------- extraction
@pytest.fixture
def image_corpus(tmp_path):
    """7 posts with JPEG images (the two fixture photos, flipped and cropped) and one post without."""
    root = tmp_path / "corpus"
    (root / "images").mkdir(parents=True)
    photos = [Image.open(FIXTURES / f).convert("RGB") for f in ("chelsea.jpg", "coffee.jpg")]
    records = []
    for i in range(7):
        im = photos[i % 2].rotate(90 * (i // 2), expand=True).crop((0, 0, 100 + 5 * i, 90))
        im.save(root / "images" / f"{i}.jpg")
        records.append({"post_id": f"p{i}", "image": f"images/{i}.jpg", "text": f"post {i}"})
    records.append({"post_id": "text-only", "text": "no image"})
    Corpus(make_posts(records)).save(root)
    return Corpus.load(root)


@pytest.fixture(scope="module")
def tiny_net():
    """Random MobileNetV2 whose batch-norm statistics are set on random images (else features vanish)."""
    torch.manual_seed(0)
    model = load_backbone("mobilenet_v2", "random")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 64, 64))
    return model.eval()


@pytest.mark.parametrize("kind, dims", [("regions", (4, 1280)), ("pooled", (1280,)), ("objects", (3, 1280))])
def test_extract_kinds(image_corpus, tiny_net, kind, dims):
    fs = extract_features(image_corpus, kind, tiny_net, 64, batch_size=3, workers=0, objects=3, progress=False)
    assert fs.path == image_corpus.root / "features" / f"{kind}-mobilenet_v2-64"
    assert fs.post_ids == [f"p{i}" for i in range(7)] and fs.data.shape == (7, *dims)
    assert fs.manifest["weights"] == "random" and fs.manifest["input_size"] == 64
    assert np.abs(fs.data).sum() > 0
    if kind == "objects":
        b = fs.extra["boxes"]
        assert b.shape == (7, 3, 4) and (b >= 0).all() and (b <= 1).all() and (b[..., 2:] > b[..., :2]).all()


def test_extraction_matches_the_model_and_runs_decoding_workers(image_corpus, tiny_net):
    fs = extract_features(image_corpus, "pooled", tiny_net, 64, batch_size=4, workers=2, progress=False)
    from mmsocial.features.backbones import images_to_tensor

    with torch.no_grad():
        expected = tiny_net.pooled(images_to_tensor([image_corpus.open_image("p3")], 64))[0].numpy()
    np.testing.assert_allclose(fs.data[3].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert fs.stats["images"] == 7 and fs.stats["images_per_s"] > 0 and not fs.stats["cached"]
    again = extract_features(image_corpus, "pooled", tiny_net, 64, batch_size=4, workers=0, progress=False)
    assert again.stats["cached"] and again.stats["images"] == 0
    torch.manual_seed(1)
    other = load_backbone("mobilenet_v2", "random")  # other random weights: not the same features
    with pytest.raises(FeatureStoreError, match="other settings.*random_parameters.*--overwrite"):
        extract_features(image_corpus, "pooled", other, 64, batch_size=4, workers=0, progress=False)
    with pytest.warns(UserWarning, match="underflow"):
        redo = extract_features(image_corpus, "pooled", other, 64, batch_size=4, workers=0, progress=False,
                                overwrite=True)
    assert redo.stats["images"] == 7
    assert redo.manifest["random_parameters"] != fs.manifest["random_parameters"]


def test_unreadable_image_stops_naming_the_post_then_resumes(image_corpus, tiny_net, tmp_path):
    reference = extract_features(image_corpus, "regions", tiny_net, 64, out=tmp_path / "ref", batch_size=2,
                                 workers=0, progress=False)
    image = image_corpus.root / "images" / "5.jpg"
    good = image.read_bytes()
    for out in (tmp_path / "same", tmp_path / "holes"):
        image.write_bytes(b"not a jpeg")
        with pytest.raises(CorpusError, match="post 'p5'.*unreadable"):
            extract_features(image_corpus, "regions", tiny_net, 64, out=out, batch_size=2, workers=0, progress=False)
        image.write_bytes(good)
    fs = extract_features(image_corpus, "regions", tiny_net, 64, out=tmp_path / "same", batch_size=2, workers=0,
                          progress=False)
    assert fs.stats["resumed_from"] == 4 and fs.stats["images"] == 3
    assert (fs.path / "data.npy").read_bytes() == (reference.path / "data.npy").read_bytes()
    assert (fs.path / "manifest.json").read_bytes() == (reference.path / "manifest.json").read_bytes()

    # a hole in the progress record: the resumed batch holds rows 1, 4, 5, 6 (two runs of rows)
    progress = tmp_path / ".holes.partial" / "written.npy"
    done = np.load(progress)
    assert done.tolist() == [1, 1, 1, 1, 0, 0, 0]
    done[1] = 0
    np.save(progress, done)
    fs = extract_features(image_corpus, "regions", tiny_net, 64, out=tmp_path / "holes", batch_size=4, workers=0,
                          progress=False)
    assert fs.stats["resumed_from"] == 3 and fs.stats["images"] == 4
    # other batch sizes change the convolution algorithm: equal up to float16 rounding
    np.testing.assert_allclose(fs.data.astype(np.float32), reference.data.astype(np.float32), rtol=1e-2, atol=1e-3)


def test_unreadable_image_as_zeros_with_a_valid_mask(image_corpus, tiny_net):
    (image_corpus.root / "images" / "2.jpg").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="1 images could not be decoded.*'p2'"):
        fs = extract_features(image_corpus, "pooled", tiny_net, 64, batch_size=4, workers=0,
                              on_error="zeros", progress=False)
    assert fs.extra["valid"].tolist() == [1, 1, 0, 1, 1, 1, 1]
    assert not fs.data[2].any() and fs.data[3].any()


def test_cli_features_extract(image_corpus, tmp_path):
    out = tmp_path / "cli"
    with pytest.warns(UserWarning, match="underflow to 0 in float16"):  # untrained batch norm
        r = CliRunner().invoke(app, ["features", "extract", str(image_corpus.root), "--kind", "pooled",
                                     "--weights", "random", "--size", "64", "--batch-size", "4",
                                     "--workers", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "images/s" in r.output and FeatureSet.open(out).data.shape == (7, 1280)
    r = CliRunner().invoke(app, ["features", "extract", str(image_corpus.root), "--kind", "shapes",
                                 "--weights", "random"])
    assert r.exit_code == 2 and "kind must be one of" in r.output


def test_cli_missing_weights_stops_with_the_file_to_fetch(image_corpus, tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        r = CliRunner().invoke(app, ["features", "extract", str(image_corpus.root), "--backbone", "vgg16"])
    finally:
        torch.hub.set_dir(old)
    assert r.exit_code == 2 and "vgg16-397923af.pth" in r.output
    assert not (image_corpus.root / "features").exists()
