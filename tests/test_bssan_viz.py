"""BSSAN: `mmsocial train bssan` then `mmsocial viz attention RUN_DIR` on a tiny synthetic corpus."""

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from mmsocial.cli import app
from mmsocial.viz.bssan_attention import upsampled_attention

CONFIGS = Path(__file__).parents[1] / "configs" / "bssan"


def test_upsampled_attention_peaks_in_the_attended_cell():
    a = np.zeros(16)
    a[5] = 1.0  # row 1, column 1 of a 4x4 grid
    m = upsampled_attention(a, 64)
    y, x = np.unravel_index(m.argmax(), m.shape)
    assert 16 <= y < 32 and 16 <= x < 32 and m.max() == 1.0 and m.min() == 0.0


def test_train_then_viz_attention_writes_pngs(tmp_path):
    r = CliRunner().invoke(app, ["train", "bssan", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "run"),
                                 "--set", f"corpus={tmp_path / 'corpus'}", "--set", "model.epochs=1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["viz", "attention", str(tmp_path / "run"), "--count", "2"])
    assert r.exit_code == 0, r.output
    pngs = sorted((tmp_path / "run" / "attention").glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    r = CliRunner().invoke(app, ["viz", "attention", str(tmp_path)])
    assert r.exit_code == 2 and "mmsocial train bssan" in r.output


def test_viz_attention_of_an_experiment_cell(tmp_path):
    from mmsocial.experiment import cell_dir, run_experiment

    over = {"corpus": str(tmp_path / "corpus"), "workdir": str(tmp_path / "run"), "rows": ["BSSAN_w2r"]}
    run_experiment(CONFIGS / "tiny.yaml", over, progress=False)
    cell = cell_dir(tmp_path / "run", "BSSAN_w2r", 0)
    r = CliRunner().invoke(app, ["viz", "attention", str(cell), "--count", "2"])
    assert r.exit_code == 0, r.output
    pngs = sorted((cell / "attention").glob("*.png"))
    assert len(pngs) == 2 and all(p.name.endswith("-w2r.png") for p in pngs)  # W2R only: no O2W network
    r = CliRunner().invoke(app, ["viz", "attention", str(cell / "bssan"), "--out", str(tmp_path / "pics"), "--count", "1"])
    assert r.exit_code == 0 and len(list((tmp_path / "pics").glob("*.png"))) == 1
