"""`mmsocial demo`, the main job, end to end on a small synthetic corpus (real MobileNetV2 weights)."""

from pathlib import Path

from typer.testing import CliRunner

from mmsocial import systems
from mmsocial.cli import app

TINY = str(Path(__file__).parents[1] / "configs" / "dman" / "tiny.yaml")


def test_demo_runs_end_to_end_and_reports_every_system(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--posts", "100"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    assert "posts                100" in report
    table2 = report[report.index("Table 2"):report.index("Table 3")]
    for row in ("| KCCA |", "| DMAN |"):  # DMAN's demo: the system and its strongest baseline
        assert row in table2
    for module in systems.all_systems():  # every registered system reports; unregistered ones are absent
        assert f"## {module.TITLE}\n" in report
    assert (tmp_path / "corpus" / "posts.parquet").is_file()


def test_train_and_experiment_commands_name_bad_settings(tmp_path):
    runner = CliRunner()
    bad_key = runner.invoke(app, ["train", "dman", "--config", TINY,
                                  "--corpus", str(tmp_path), "--set", "model.epochz=3"])
    assert bad_key.exit_code == 2 and "epochz" in bad_key.output
    no_corpus = runner.invoke(app, ["train", "dman", "--config", TINY,
                                    "--corpus", str(tmp_path / "missing")])
    assert no_corpus.exit_code == 2 and "missing" in no_corpus.output and "posts.parquet" in no_corpus.output
    assert not (tmp_path / "missing").exists()  # a corpus named on the command line is never generated
    bad_type = runner.invoke(app, ["experiment", TINY, "--set", "seeds=many"])
    assert bad_type.exit_code == 2 and "seeds" in bad_type.output
    unknown = runner.invoke(app, ["train", "nosuchsystem", "--config", TINY])
    assert unknown.exit_code == 2 and "nosuchsystem" in unknown.output
    assert "lfc_dims" in runner.invoke(app, ["train", "dman", "--config", TINY, "--corpus", str(tmp_path),
                                             "--set", "model.lfc_dims=wide"]).output


def test_cli_has_the_system_command_groups():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("data", "features", "train", "experiment", "demo", "viz", "predict"):
        assert group in result.output
