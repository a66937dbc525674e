"""A tiny trained DMAN run for the service tests (random-weight MobileNetV2 features, asked for by name)."""

from pathlib import Path

import yaml

TINY = {"system": "dman", "name": "serve-tiny", "image_size": 64, "weights": "random", "num_tags": 30,
        "preset": "tiny", "model": {"region_dim": 1280, "epochs": 2}, "seeds": [0], "threads": 1,
        "train": {"progress": False}}


_TRAINED: dict[str, Path] = {}


def tiny_run(tmp_path_factory) -> Path:
    """One tiny DMAN run per test session, shared by the service test files."""
    if "run" not in _TRAINED:
        _TRAINED["run"] = train_tiny_dman(tmp_path_factory.mktemp("serve"))
    return _TRAINED["run"]


def train_tiny_dman(folder: Path, posts: int = 300) -> Path:
    """Synthetic corpus + `mmsocial train dman` through the CLI (which writes RUN_DIR/config.yaml)."""
    import torch
    from typer.testing import CliRunner

    from mmsocial.cli import app
    from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus

    torch.manual_seed(0)
    corpus = folder / "corpus"
    make_synthetic_corpus(SyntheticConfig(posts=posts, seed=0, image_size=64), corpus)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    run = folder / "run"
    result = CliRunner().invoke(app, ["train", "dman", "--config", str(folder / "tiny.yaml"), "--corpus",
                                      str(corpus), "--out", str(run)])
    assert result.exit_code == 0, (result.output, repr(result.exception))
    return run


# The other systems' tiny configs (configs/<system>/tiny.yaml: ImageNet MobileNetV2 at 64 px) on one
# shared synthetic corpus, each trained through `mmsocial train`.
SYSTEMS = ("du2mce", "eisr", "bssan", "uhan")
# EISR's tiny schedule (6 iterations) leaves its posteriors uniform to 1e-6; 150 iterations separate them
EXTRA = {"eisr": ["--set", "model.iterations=150", "--set", "eval_every=50"]}


def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny run of every system per test session: {"dman": ..., "du2mce": ..., ...}."""
    if "all" not in _TRAINED:
        import torch
        from typer.testing import CliRunner

        from mmsocial.cli import app
        from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus

        runs = {"dman": tiny_run(tmp_path_factory)}
        folder = tmp_path_factory.mktemp("serve-systems")
        corpus = folder / "corpus"
        make_synthetic_corpus(SyntheticConfig(posts=240, seed=0, image_size=64), corpus)
        for name in SYSTEMS:
            torch.manual_seed(0)
            run = folder / name
            result = CliRunner().invoke(app, ["train", name, "--config", f"configs/{name}/tiny.yaml", "--corpus",
                                              str(corpus), "--out", str(run), "--set", "threads=1", *EXTRA.get(name, [])])
            assert result.exit_code == 0, (name, result.output, repr(result.exception))
            runs[name] = run
        _TRAINED["all"] = runs
    return _TRAINED["all"]
