"""Training health flags, their marks in the printed tables, and model selection on validation."""

import numpy as np
import pytest
import torch

from mmsocial.config import HealthSettings
from mmsocial.eval.health import check_health, flag_reasons, selected_epochs
from mmsocial.eval.protocols.dman import label_queries, label_word, singular
from mmsocial.eval.table import ResultTable
from mmsocial.experiment import ExperimentResult, run_experiment, selection_note
from mmsocial.systems import Cell
from mmsocial.systems import dman as dman_system

from test_experiment import TOY, _toy_dman_data


def _history(train, val):
    return [{"epoch": float(i + 1), "train_loss": t, "val_loss": v} for i, (t, v) in enumerate(zip(train, val))]


def test_stuck_history_is_flagged_stuck_only():
    cell = Cell({}, _history([0.300, 0.2995, 0.2990, 0.2985], [0.30, 0.2999, 0.2998, 0.2997]))
    assert list(flag_reasons(cell)) == ["stuck"]  # fell 0.5 % < 1 %
    moving = Cell({}, _history([0.300, 0.29, 0.28, 0.27], [0.30, 0.29, 0.28, 0.27]))
    assert flag_reasons(moving) == {}


def test_overfitting_history_is_flagged_overfit_only():
    cell = Cell({}, _history([80, 40, 20, 9], [60, 45, 60, 85]),
                selection={"metric": "val_loss", "mode": "min", "best_epoch": 2.0, "last_epoch": 4.0})
    flags = flag_reasons(cell)
    assert list(flags) == ["overfit"] and "best epoch is the one kept" in flags["overfit"]
    # within the margin (10 % by default) it is not flagged; a larger margin lets it through too
    assert flag_reasons(Cell({}, _history([80, 40, 20, 9], [60, 45, 47, 49]))) == {}
    assert flag_reasons(cell, HealthSettings(overfit_margin=1.0)) == {}
    health = check_health("DMAN", 0, cell)
    assert (health.best_epoch, health.last_epoch, health.metric) == (2.0, 4.0, "val_loss")
    zero = Cell({}, _history([80, 40, 20], [1, 0, 0.27]), selection=cell.selection)  # a hinge loss can reach 0
    assert "0.27 is above its best of 0 (> 10%)" in flag_reasons(zero)["overfit"]


def test_non_finite_and_constant_embeddings_are_flagged():
    cell = Cell({}, _history([1.0, float("nan")], [1.0, 0.5]))
    assert "non-finite" in flag_reasons(cell)
    assert "non-finite" in flag_reasons(Cell({}, diagnostics={"non_finite": 1.0}))
    collapsed = Cell({}, diagnostics={"embedding_variance": 0.0, "embedding_relative_variance": 0.0,
                                      "positive_rate": 0.12})
    assert list(flag_reasons(collapsed)) == ["collapsed"]
    assert "no positive" in flag_reasons(Cell({}, diagnostics={"positive_rate": 0.0}))["collapsed"]
    healthy = Cell({}, diagnostics={"embedding_variance": 0.02, "embedding_relative_variance": 0.3,
                                    "positive_rate": 0.05})
    assert flag_reasons(healthy) == {}


def test_health_writes_curves_png_and_json(tmp_path):
    cell = Cell({}, [{"epoch": 1.0, "train_loss": 3.0, "train_hinge": 0.3, "val_loss": 2.0, "val_hinge": 0.2},
                     {"epoch": 2.0, "train_loss": 2.0, "train_hinge": 0.2, "val_loss": 2.5, "val_hinge": 0.25}],
                selection={"metric": "val_loss", "mode": "min", "best_epoch": 1.0, "last_epoch": 2.0})
    health = check_health("X", 1, cell, where=tmp_path)
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and health.curves.endswith("curves.png")
    assert (tmp_path / "health.json").is_file() and "overfit" in health.flags


def test_a_row_with_constant_output_is_flagged_collapsed_and_marked(rng, tmp_path, monkeypatch):
    """A DMAN_Triplet whose last layer is zeroed outputs sigmoid(bias) for every post: constant."""
    real_train_model = dman_system.train_model

    def constant_train_model(*args, **kwargs):
        model, result = real_train_model(*args, **kwargs)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(-2.0)  # every output 0.12: the classifier sees one point
        return model, result

    monkeypatch.setattr(dman_system, "train_model", constant_train_model)
    data = _toy_dman_data(rng)
    result = run_experiment({**TOY, "workdir": str(tmp_path / "run"), "rows": ["CCA", "DMAN_Triplet"]},
                            progress=False, data=data)
    assert ("DMAN_Triplet", 0) in result.flags and "collapsed" in result.flags[("DMAN_Triplet", 0)]
    assert ("CCA", 0) not in result.flags
    cell = result.cells[("DMAN_Triplet", 0)]
    assert cell.diagnostics["embedding_relative_variance"] < 1e-12 and cell.diagnostics["positive_rate"] == 0
    text = result.tables["table2"].to_markdown()
    assert "| DMAN_Triplet†" in text and "† collapsed: DMAN_Triplet seed 0" in text
    assert "Model selection: every trained row keeps the epoch with the lowest validation `val_loss`" in text
    assert (tmp_path / "run" / "DMAN_Triplet-seed0" / "curves.png").is_file()
    back = ExperimentResult.load(tmp_path / "run")  # flags and marks survive save/load
    assert back.flags == result.flags and back.to_markdown() == result.to_markdown()


def test_model_selection_keeps_the_best_validation_checkpoint_not_the_last(rng, tmp_path, monkeypatch):
    """The trainer is given a validation curve whose minimum is at epoch 2 of 4: the model that
    train_model returns (and that run_cell embeds with) has epoch 2's weights."""
    import mmsocial.train.trainer as trainer

    real_train, snapshots = trainer.train, []
    scripted = iter([3.0, 1.0, 2.0, 4.0])

    def train_with_scripted_validation(model, *args, evaluate=None, **kwargs):
        def evaluate_scripted(m):
            snapshots.append({k: v.detach().clone() for k, v in m.state_dict().items()})
            v = next(scripted)
            return {"val_loss": v, "val_hinge": v, "val_bce": 0.0}
        return real_train(model, *args, evaluate=evaluate_scripted, **kwargs)

    monkeypatch.setattr(trainer, "train", train_with_scripted_validation)
    data = _toy_dman_data(rng)
    cfg = dman_system.Config(**{**TOY, "model": {"epochs": 4, "batch_size": 16}})
    model, result = dman_system.train_model(data, "triplet", cfg, tmp_path / "cell", seed=0)
    assert len(snapshots) == 4
    kept = model.state_dict()
    assert all(torch.equal(kept[k], snapshots[1][k]) for k in kept)  # epoch 2
    assert not all(torch.equal(kept[k], snapshots[3][k]) for k in kept)  # not the last
    history, selection = dman_system._history_and_selection(result)
    assert selection["best_epoch"] == 2.0 and selection["last_epoch"] == 4.0


def test_dcca_keeps_its_best_validation_epoch(rng):
    from mmsocial.models.baselines import DCCA

    X, Y = rng.normal(size=(300, 6)), rng.normal(size=(300, 5))
    Y[:, 0] += X[:, 0]
    m = DCCA(2, hidden=(8,), epochs=6, batch_size=100, lr=1e-2).fit(X[:200], Y[:200], X[200:], Y[200:])
    vals = [r["val_loss"] for r in m.history_]
    assert len(vals) == 6 and m.best_epoch_ == int(np.argmin(vals)) + 1


def test_table_marks_and_notes_print_and_round_trip():
    t = ResultTable("T", ["a"])
    t.add("r", {"a": 0.5}, 0)
    t.mark("r", "†", "collapsed: r seed 0")
    t.notes = ["Model selection: x"]
    text = t.to_markdown()
    assert "| r† | 50.00% |" in text and text.endswith("Model selection: x  \n† collapsed: r seed 0  ")
    assert ResultTable.from_dict(t.to_dict()).to_markdown() == text


def test_label_words_match_tags_after_lower_casing_and_singularising():
    assert [singular(w) for w in ("birds", "flies", "boxes", "glasses", "fish", "bus", "dinosaurs")] == \
        ["bird", "fly", "box", "glass", "fish", "bus", "dinosaur"]
    assert label_word("animals/Birds") == "bird" and label_word("food") == "food"
    labels = ["animals", "animals/birds", "plants/trees", "signs_and_symbols/hazard"]
    tags = ["tree", "Bird", "animal", "trees"]
    assert label_queries(labels, tags) == [(0, 2), (1, 1), (2, 0)]


def test_selection_counted_in_steps_is_reported_in_epochs():
    history = [{"step": 100.0, "epoch": 0.5, "val_map": 0.4}, {"step": 200.0, "epoch": 1.0, "val_map": 0.6},
               {"step": 300.0, "epoch": 1.5, "val_map": 0.5}]
    cell = Cell({"t": {"m": 1.0}}, history, {"metric": "val_map", "mode": "max", "best_step": 200, "last_step": 300})
    assert selected_epochs(cell) == (1.0, 1.5)
    assert "O/LE/J s0 1/1.5" in selection_note({("O/LE/J", 0): cell})
    last_only = Cell({"t": {"m": 1.0}}, history, {"metric": None, "best_step": 300, "last_step": 300})
    assert selected_epochs(last_only) == (1.5, 1.5) and "the last epoch" in selection_note({("O", 1): last_only})
    per_modality = Cell({"t": {"m": 1.0}}, [], {"metric": "val_loss", "best_epoch": {"image": 3, "text": 5},
                                                "last_epoch": 20})
    assert "DEEP-SM s0 (image 3, text 5)/20" in selection_note({("DEEP-SM", 0): per_modality})
