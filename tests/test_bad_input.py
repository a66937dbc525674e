"""Bad input and faults (issue 8): each case fails before the fix and names what the user sees.

docs/reliability.md lists every kind with the test here that checks it.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mmsocial.config import ConfigError, StrictModel, TrainConfig, check_section, load_config
from mmsocial.data.corpus import Corpus, CorpusError, make_posts
from mmsocial.data.jsonl import read_jsonl_corpus
from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus
from mmsocial.features.backbones import load_backbone
from mmsocial.features.extract import extract_features
from mmsocial.features.store import FeatureSet, FeatureStoreError, write_features
from mmsocial.io import atomic_folder, atomic_open, check_writable_folder, write_text

SRC = str(Path(__file__).resolve().parents[1] / "src")
MANIFEST = {"extractor": "test", "weights": "random"}
torch.set_num_threads(1)  # the machine is shared; a few tiny images need no more
READ_ONLY = Path("/sys/mmsocial-read-only-test")  # root ignores file modes; /sys refuses even root


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def image_corpus(tmp_path):
    """6 posts with small PNG images of different colours, saved as a corpus."""
    root = tmp_path / "corpus"
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(6):
        Image.new("RGB", (40, 40), (40 * i, 255 - 40 * i, 100)).save(root / "images" / f"{i}.png")
        records.append({"post_id": f"p{i}", "image": f"images/{i}.png", "text": f"post {i}",
                        "tags": ["a"], "labels": ["x"]})
    Corpus(make_posts(records), meta={"name": "pics"}).save(root)
    return Corpus.load(root)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = load_backbone("mobilenet_v2", "random")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(4, 3, 32, 32))
    return model.eval()


def _extract(corpus, net, out=None, **kw):
    return extract_features(corpus, "pooled", net, 32, out=out, batch_size=2, workers=0, progress=False, **kw)


def _read_only_or_skip():
    try:
        READ_ONLY.mkdir()
    except PermissionError:
        return READ_ONLY
    pytest.skip("no read-only location on this machine")


# ------------------------------------------------------------------ io
def test_atomic_writes_leave_the_old_file_on_failure_and_no_temporaries(tmp_path):
    target = write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep").write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "run") as tmp:
            (tmp / "new").write_text("x")
            raise RuntimeError("killed")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "run"]


def test_output_path_that_is_a_file_or_read_only_names_it(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match=r"file: the run folder is a file"):
        check_writable_folder(tmp_path / "file", "run folder")
    with pytest.raises(ValueError, match=r"sub: the run folder cannot be created: .*file is a file"):
        check_writable_folder(tmp_path / "file" / "sub", "run folder")
    check_writable_folder(tmp_path / "new" / "run", "run folder", create=False)
    assert not (tmp_path / "new").exists()  # checked, nothing created
    ro = _read_only_or_skip()
    with pytest.raises(ValueError, match="not writable|cannot be"):
        check_writable_folder(ro / "run", "run folder")
    assert (tmp_path / "file").read_text() == "mine"


# ------------------------------------------------------------------ feature store: what is at --out
def test_extract_out_never_deletes_a_users_folder_the_corpus_or_a_file(image_corpus, net, tmp_path):
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(FeatureStoreError, match=r"my-folder: the output folder exists and is not a feature set"):
        _extract(image_corpus, net, out=mine)
    assert (mine / "thesis.txt").read_text() == "years of work"

    before = sorted(p.name for p in image_corpus.root.iterdir())
    with pytest.raises(FeatureStoreError, match="not a feature set"):
        _extract(image_corpus, net, out=image_corpus.root)
    assert sorted(p.name for p in image_corpus.root.iterdir()) == before
    Corpus.load(image_corpus.root)

    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FeatureStoreError, match=r"notes.txt: the output path is a file"):
        _extract(image_corpus, net, out=tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".notes.txt*")) and not list(tmp_path.glob(".my-folder*"))

    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert _extract(image_corpus, net, out=tmp_path / "empty").data.shape == (6, 1280)


def test_a_feature_set_with_other_settings_is_replaced_only_with_overwrite(tmp_path):
    ids = ["a", "b"]
    write_features(tmp_path / "f", ids, (2,), [(0, np.zeros((2, 2)))], MANIFEST)
    other = {"extractor": "test", "weights": "imagenet"}
    with pytest.raises(FeatureStoreError, match="other settings.*weights.*--overwrite"):
        write_features(tmp_path / "f", ids, (2,), [(0, np.ones((2, 2)))], other)
    assert FeatureSet.open(tmp_path / "f").manifest["weights"] == "random"
    fs = write_features(tmp_path / "f", ids, (2,), [(0, np.ones((2, 2)))], other, overwrite=True)
    assert fs.manifest["weights"] == "imagenet" and fs.data.tolist() == [[1, 1], [1, 1]]


# ------------------------------------------------------------------ feature store: rows and files
def test_a_row_never_written_is_never_reported_complete(tmp_path):
    ids = ["a", "b", "c"]
    write_features(tmp_path / "f", ids, (2,), [(0, np.ones((3, 2)))], MANIFEST)
    written = tmp_path / "f" / "written.npy"
    np.save(written, np.array([1, 0, 1], dtype=np.uint8))  # as a lost write would leave it
    with pytest.raises(FeatureStoreError, match=r"1 rows were never written \(first: post 'b'.*--overwrite"):
        FeatureSet.open(tmp_path / "f")


def test_truncated_data_npy_names_the_file_and_the_repairing_command(image_corpus, net):
    fs = _extract(image_corpus, net)
    data = fs.path / "data.npy"
    size = data.stat().st_size
    del fs
    with open(data, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(FeatureStoreError) as e:
        FeatureSet.open(image_corpus.root / "features" / "pooled-mobilenet_v2-32")
    msg = str(e.value)
    assert f"{data}: truncated ({size - 100} of {size} bytes" in msg
    assert f"mmsocial features extract {image_corpus.root}" in msg and "--overwrite" in msg
    # the repairing command works: overwrite writes it again
    assert _extract(image_corpus, net, overwrite=True).data.shape == (6, 1280)


def test_an_edited_image_is_extracted_again(image_corpus, net, tmp_path):
    first = _extract(image_corpus, net)
    old_row = np.array(first.data[2])
    again = _extract(image_corpus, net)
    assert again.stats["cached"]
    image = image_corpus.root / "images" / "2.png"
    Image.new("RGB", (40, 40), (0, 0, 0)).save(image)
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))  # mtime differs whatever the clock
    fs = _extract(image_corpus, net)
    assert not fs.stats["cached"] and fs.stats["images"] == 1 and fs.stats["resumed_from"] == 5
    fresh = _extract(image_corpus, net, out=tmp_path / "fresh")
    # a batch of one against batches of two: equal up to float16 rounding of other conv algorithms
    np.testing.assert_allclose(fs.data.astype(np.float32), fresh.data.astype(np.float32), rtol=1e-2, atol=1e-2)
    assert np.abs(fs.data[2].astype(np.float32) - old_row.astype(np.float32)).max() > 0


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from mmsocial.features.store import write_features
    out, n = sys.argv[1], 40
    def batches(rows):
        for r in rows:
            time.sleep(0.02)
            yield int(r), np.full((1, 3), r + 1, dtype=np.float32)
    fs = write_features(out, [f"p{i}" for i in range(n)], (3,), batches, {"extractor": "test"})
    print("CACHED" if fs.stats["cached"] else "WROTE", fs.stats["resumed_from"], flush=True)
""")


def test_two_writers_of_one_store_never_corrupt_it(tmp_path):
    """Two real processes: the second waits for the first's lock, then finds the work done."""
    env = {**os.environ, "PYTHONPATH": SRC}
    out = tmp_path / "f"
    first = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    partial = tmp_path / ".f.partial"
    deadline = time.time() + 30
    while not (partial / "written.npy").exists() and time.time() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the first writer finished before the second started"
    second = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert out1.startswith("WROTE") and out2.startswith("CACHED"), (out1, out2)
    assert "waiting for it to finish" in err2
    fs = FeatureSet.open(out)
    np.testing.assert_array_equal(fs.data[:, 0], np.arange(1, 41))
    assert np.load(out / "written.npy").all() and not partial.exists()


# ------------------------------------------------------------------ corpus
def test_corrupt_meta_json_or_a_json_list_names_meta_json(tiny_corpus, tmp_path):
    meta = tiny_corpus.root / "meta.json"
    meta.write_text("{not json")
    with pytest.raises(CorpusError, match=r"meta.json: not valid JSON"):
        Corpus.load(tiny_corpus.root)
    meta.write_text("[1, 2]")
    with pytest.raises(CorpusError, match=r"meta.json: expected a JSON object.*got a JSON list"):
        Corpus.load(tiny_corpus.root)


def test_posts_parquet_without_post_id_is_named(tmp_path):
    root = tmp_path / "other-tool"
    root.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "caption": ["x", "y"]}), root / "posts.parquet")
    with pytest.raises(CorpusError, match=r"posts.parquet: no 'post_id' column \(columns: id, caption\)"):
        Corpus.load(root)
    (root / "posts.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(CorpusError, match=r"posts.parquet: cannot be read as Parquet"):
        Corpus.load(root)


def test_overflowing_views_and_timestamps_name_the_post_and_field(tmp_path):
    lines = [{"post_id": "ok", "views": 3, "days": 1},
             {"post_id": "big", "views": 10 ** 400, "days": 1}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(CorpusError, match=r"a.jsonl line 2: field 'views' is 1000.*too large for a float"):
        read_jsonl_corpus(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"post_id": "t", "timestamp": "1e400"}\n')
    with pytest.raises(CorpusError, match=r"b.jsonl line 1: field 'timestamp' is 1e400"):
        read_jsonl_corpus(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text('{"post_id": "t", "timestamp": 1e999}\n')
    with pytest.raises(CorpusError, match=r"c.jsonl line 1: field 'timestamp' is inf"):
        read_jsonl_corpus(tmp_path / "c.jsonl")
    # the same from another tool's table: a float that overflowed to infinity, an int beyond float
    with pytest.raises(CorpusError, match=r"post 'x': field 'views' is .*not a number"):
        make_posts([{"post_id": "x", "views": 10 ** 400, "days": 1}])
    root = tmp_path / "inf"
    Corpus(make_posts([{"post_id": "x", "timestamp": float("inf")}])).save(root)
    with pytest.raises(CorpusError, match=r"post 'x': field 'timestamp' is not finite"):
        Corpus.load(root)


def test_images_outside_the_images_root_are_refused(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "in.png")
    (tmp_path / "posts.jsonl").write_text('{"post_id": "a", "image": "in.png"}\n'
                                          '{"post_id": "b", "image": "../../../../etc/passwd"}\n')
    with pytest.raises(CorpusError, match=r"line 2: field 'image': '../../../../etc/passwd' leads outside "
                                          r"the images root .*--allow-outside-root"):
        read_jsonl_corpus(tmp_path / "posts.jsonl", images_root=root)
    (tmp_path / "posts.jsonl").write_text('{"post_id": "b", "image": "' + "../" * 40 + 'etc/passwd"}\n')
    c = read_jsonl_corpus(tmp_path / "posts.jsonl", images_root=root, allow_outside_root=True)
    assert c.posts["image"][0] == "/etc/passwd"  # normalised, as the user asked


def test_validate_finds_a_missing_image_without_decoding(image_corpus):
    (image_corpus.root / "images" / "4.png").unlink()
    with pytest.raises(CorpusError, match=r"post 'p4': image file .*4.png does not exist"):
        Corpus.load(image_corpus.root).validate()  # check_images="exists", the CLI's default


def test_a_generated_corpus_never_goes_into_a_folder_with_files(tiny_corpus, tmp_path):
    before = {p.name: p.read_bytes() for p in tiny_corpus.root.iterdir() if p.is_file()}
    (tiny_corpus.root / "posts.parquet").unlink()  # a damaged corpus
    with pytest.raises(CorpusError, match=r"tiny: the folder exists and is not empty \(links.parquet, meta.json"):
        make_synthetic_corpus(SyntheticConfig(posts=20, write_images=False), tiny_corpus.root)
    after = {p.name: p.read_bytes() for p in tiny_corpus.root.iterdir() if p.is_file()}
    assert after == {k: v for k, v in before.items() if k != "posts.parquet"}
    (tmp_path / "file").write_text("x")
    with pytest.raises(CorpusError, match="is a file"):
        make_synthetic_corpus(SyntheticConfig(posts=20, write_images=False), tmp_path / "file")


def test_a_killed_corpus_build_leaves_nothing_at_out(tmp_path, monkeypatch):
    from mmsocial.data import synthetic

    def killed(*a, **k):
        raise KeyboardInterrupt("killed while rendering")

    monkeypatch.setattr(synthetic, "write_images", killed)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_corpus(SyntheticConfig(posts=20, image_size=32, workers=1), tmp_path / "c")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    c = make_synthetic_corpus(SyntheticConfig(posts=20, image_size=32, workers=1), tmp_path / "c")
    assert Corpus.load(tmp_path / "c").validate() is not None and c.root == tmp_path / "c"
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


@pytest.mark.parametrize("posts", [0, -5, 3])
def test_too_few_synthetic_posts(posts):
    with pytest.raises(ValueError, match=rf"posts must be at least 10.*got {posts}"):
        make_synthetic_corpus(SyntheticConfig(posts=posts, write_images=False))


# ------------------------------------------------------------------ config
class _Section(StrictModel):
    train: TrainConfig = TrainConfig()


def test_config_errors_name_the_dotted_key_and_the_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: -0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train.lr: Input should be greater than 0 \(got -0.1\)"):
        load_config(cfg, _Section)
    cfg.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train.lrr: unknown key"):
        load_config(cfg, _Section)
    cfg.write_text("train: {}\n")
    with pytest.raises(ConfigError, match=r"c.yaml --set train.epochs=two: train.epochs: Input should be a valid "
                                          r"integer.*\(got 'two'\)"):
        load_config(cfg, _Section, ["train.epochs=two"])
    with pytest.raises(ConfigError, match=r"c.yaml: train.lr: .*greater than 0"):
        check_section({"lr": -1}, TrainConfig, "train", "c.yaml")


# ------------------------------------------------------------------ training: resume="auto"
def test_train_resumes_a_killed_run_and_starts_over_when_the_config_changed(tmp_path):
    from mmsocial.train.trainer import train

    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_worker import make_data, make_model, mse_loss

    data = make_data(32)
    base = dict(epochs=2, batch_size=8, lr=0.05, device="cpu", progress=False, seed=1)
    full = train(make_model(), data, mse_loss, TrainConfig(**base), tmp_path / "full")
    part = train(make_model(), data, mse_loss, TrainConfig(**base, max_steps=3), tmp_path / "run", resume="auto")
    assert part.steps == 3  # "killed" after its step-3 checkpoint...
    step = tmp_path / "run" / "checkpoints" / "step_00000003"
    step.rename(step.parent / ".step_00000003.old-1-dead")  # ...while that folder was being replaced
    model = make_model()
    again = train(model, data, mse_loss, TrainConfig(**base), tmp_path / "run", resume="auto")
    assert again.resumed_from == 3 and again.restart_reason is None and again.steps == full.steps
    changed = train(make_model(), data, mse_loss, TrainConfig(**{**base, "lr": 0.01}), tmp_path / "run",
                    resume="auto", run_config={"hidden": 4})
    assert changed.resumed_from is None and changed.steps == full.steps
    assert "configuration changed" in changed.restart_reason and "train.lr" in changed.restart_reason
    assert "run.hidden" in changed.restart_reason


# ------------------------------------------------------------------ the command line
from typer.testing import CliRunner  # noqa: E402

from mmsocial.cli import app  # noqa: E402

TINY = """system: dman
weights: random
image_size: 64
num_tags: 10
preset: tiny
model: {epochs: 2}
seeds: [0]
train: {progress: false}
threads: 1
"""


def _cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r, r.output


def _one_error_line(r, code=2):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]  # progress bars may come first
    assert r.exit_code == code, r.output
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in r.output, r.output
    assert sum(ln.startswith("error: ") for ln in r.output.splitlines()) == 1
    return lines[-1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "c"
    make_synthetic_corpus(SyntheticConfig(posts=200, write_images=False), root)
    return root


def test_cli_user_mistakes_end_with_one_error_line_and_exit_2(tmp_path, tiny_corpus, synth):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    (tmp_path / "file").write_text("mine")
    for posts in (0, -5):
        line = _one_error_line(_cli("data", "synthetic", "--out", tmp_path / "s", "--posts", posts)[0])
        assert f"--posts must be at least 10" in line and f"got {posts}" in line
    assert "is a file" in _one_error_line(_cli("data", "synthetic", "--out", tmp_path / "file", "--posts", 20)[0])
    assert (tmp_path / "file").read_text() == "mine"

    (tiny_corpus.root / "meta.json").write_text("[1, 2]")
    assert "meta.json: expected a JSON object" in _one_error_line(_cli("data", "info", tiny_corpus.root)[0])

    line = _one_error_line(_cli("train", "dman", "--config", cfg, "--corpus", synth, "--set", "model.epochs=two")[0])
    assert "--set model.epochs=two: model.epochs: Input should be a valid integer" in line
    cfg.write_text(TINY.replace("train: {progress: false}", "train: {progress: false, lr: -0.5}"))
    assert "train.lr" in _one_error_line(_cli("train", "dman", "--config", cfg, "--corpus", synth)[0])
    cfg.write_text(TINY.replace("train: {progress: false}", "train: {progress: false, lrr: 0.5}"))
    assert "train.lrr: unknown key" in _one_error_line(_cli("train", "dman", "--config", cfg, "--corpus", synth)[0])
    cfg.write_text(TINY)
    # the run folder is checked before the corpus is read (this corpus does not even exist)
    line = _one_error_line(_cli("train", "dman", "--config", cfg, "--corpus", tmp_path / "nope", "--out",
                                tmp_path / "file")[0])
    assert "file: the run folder is a file" in line
    ro = _read_only_or_skip()
    assert str(ro) in _one_error_line(_cli("train", "dman", "--config", cfg, "--corpus", synth, "--out", ro / "run")[0])


def test_cli_internal_errors_say_so_and_debug_shows_the_traceback(monkeypatch, tiny_corpus):
    from mmsocial.data import corpus as corpus_module

    def bug(self):
        raise TypeError("an unexpected bug")

    monkeypatch.setattr(corpus_module.Corpus, "describe", bug)
    line = _one_error_line(_cli("data", "info", tiny_corpus.root)[0], code=1)
    assert "internal error: TypeError: an unexpected bug" in line and "--debug" in line
    r, _ = _cli("--debug", "data", "info", tiny_corpus.root)
    assert isinstance(r.exception, TypeError)  # not turned into a message: the traceback is shown


def test_cli_experiment_never_overwrites_a_damaged_corpus(tmp_path, tiny_corpus):
    files = {p.name: p.read_bytes() for p in tiny_corpus.root.iterdir()}
    (tiny_corpus.root / "posts.parquet").unlink()
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(TINY + f"synthetic: {{posts: 50, seed: 0}}\nworkdir: {tmp_path / 'run'}\n")
    line = _one_error_line(_cli("experiment", cfg, "--set", f"corpus={tiny_corpus.root}")[0])
    assert "not a corpus (posts.parquet missing) and not empty" in line
    assert {p.name: p.read_bytes() for p in tiny_corpus.root.iterdir()} == \
        {k: v for k, v in files.items() if k != "posts.parquet"}


def test_cli_data_jsonl_refuses_images_outside_the_root_and_a_folder_with_files(tmp_path):
    (tmp_path / "posts.jsonl").write_text('{"post_id": "b", "image": "../../../../etc/passwd"}\n')
    line = _one_error_line(_cli("data", "jsonl", tmp_path / "posts.jsonl", "--out", tmp_path / "c")[0])
    assert "leads outside the images root" in line and not (tmp_path / "c").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    line = _one_error_line(_cli("data", "jsonl", tmp_path / "posts.jsonl", "--out", tmp_path / "mine")[0])
    assert "not empty (notes.txt)" in line


def test_cli_train_resumes_a_killed_run_and_starts_over_when_the_config_changed(tmp_path, synth, monkeypatch):
    from mmsocial.train import trainer

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    real = trainer.write_index

    def killed_after_first_checkpoint(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "write_index", killed_after_first_checkpoint)
    r, out = _cli("train", "dman", "--config", cfg, "--corpus", synth, "--out", run)
    assert "interrupted" in _one_error_line(r, code=130)
    monkeypatch.undo()
    r, out = _cli("train", "dman", "--config", cfg, "--corpus", synth, "--out", run)
    assert r.exit_code == 0, out
    assert "resuming from its last checkpoint (step" in out and "trained DMAN" in out
    r, out = _cli("train", "dman", "--config", cfg, "--corpus", synth, "--out", run, "--set", "train.lr=0.5")
    assert r.exit_code == 0, out
    assert "configuration changed since the last checkpoint (train.lr" in out and "starting over" in out
    assert "resuming" not in out


def test_two_cli_extractions_into_one_store(tmp_path, image_corpus, net):
    """The issue's case: the same `features extract` twice, 0.5 s apart, as two real processes."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "f"
    cmd = [sys.executable, "-m", "mmsocial", "features", "extract", str(image_corpus.root), "--kind", "pooled",
           "--weights", "random", "--size", "32", "--batch-size", "1", "--workers", "0", "--out", str(out)]
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(0.5)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("wrote" in o for o in outputs) == 1 and sum("exist already" in o for o in outputs) == 1, outputs
    fs = FeatureSet.open(out)
    assert np.load(out / "written.npy").all()
    same = extract_features(Corpus.load(image_corpus.root), "pooled", "mobilenet_v2", 32, weights="random",
                            out=tmp_path / "one", batch_size=1, workers=0, progress=False)
    assert same.manifest["random_parameters"] == fs.manifest["random_parameters"]
    np.testing.assert_allclose(fs.data.astype(np.float32), same.data.astype(np.float32), rtol=1e-2, atol=1e-3)


def test_an_empty_batch_from_a_sampler_is_named(tmp_path):
    from mmsocial.train.trainer import train

    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_worker import make_data, make_model, mse_loss

    with pytest.raises(ValueError, match=r"empty batch \(batch 1 of 2 in epoch 0\) for 32 training examples"):
        train(make_model(), make_data(32), mse_loss, TrainConfig(epochs=1, batch_size=8, device="cpu", progress=False),
              tmp_path, sampler_factory=lambda epoch, rank, world: [list(range(8)), []])
