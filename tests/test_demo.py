"""`mmsocial demo`, the main job, end to end on a small synthetic corpus (real MobileNetV2 weights)."""

from typer.testing import CliRunner

from mmsocial.cli import app


def test_demo_runs_end_to_end_and_reports_every_system(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--posts", "100"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    assert "posts                100" in report
    table2 = report[report.index("Table 2"):report.index("Table 3")]
    for row in ("| CCA |", "| KCCA |", "| DCCA |", "| DMAN_Triplet |", "| DMAN_Triplet+Text |", "| DMAN |"):
        assert row in table2
    for system in ("DU2MCE", "EISR", "BSSAN", "UHAN"):
        assert f"## {system}\n\nnot implemented yet" in report
    assert (tmp_path / "corpus" / "posts.parquet").is_file()
