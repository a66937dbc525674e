"""The experiment runner: every (seed, row) cell of a system's paper tables, from one config.

    from mmsocial.experiment import run_experiment
    result = run_experiment("configs/<system>/table2.yaml", {"seeds": [0]})   # or a dict
    print(result)                      # the tables as Markdown, mean ± std over seeds
    result.save("out/"); ExperimentResult.load("out/").compare(result)

The config's ``system:`` picks the module from ``mmsocial.systems.REGISTRY``; the whole config
(overrides included) is validated with that system's ``Config`` before any corpus is read. Then:
corpus (loaded, or built from ``synthetic:`` into an absent or empty folder) -> ``prepare`` ->
for each seed, each row: ``run_cell`` under ``workdir/<row>-seed<seed>/``. A finished cell is
kept there (``result.json``) under a fingerprint of the settings and the prepared data, so a
killed experiment resumes where it stopped and a changed setting recomputes. The tables
(json/csv/md), every cell, the timings and the config are saved in ``workdir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml
from pydantic import BaseModel

from mmsocial import systems
from mmsocial.config import ConfigError, ExperimentConfig, StrictModel, load_config
from mmsocial.data.corpus import Corpus, CorpusError
from mmsocial.eval.health import SIGNS, check_health, selected_epochs
from mmsocial.eval.table import ResultTable, ResultTables
from mmsocial.io import check_writable_folder, write_text
from mmsocial.systems import Cell

log = logging.getLogger(__name__)

__all__ = ["ExperimentResult", "run_experiment", "load_experiment_config", "load_corpus", "cell_dir"]

# Settings that do not change what a cell computes (left out of the cells' fingerprint).
_NOT_FINGERPRINTED = {"seeds", "rows", "name", "workdir", "threads", "health"}


@dataclass
class ExperimentResult:
    """What an experiment produced: its tables, every (row, seed) cell, the timings and the config.

    ``tables``: table name -> ResultTable (mean ± std over seeds). ``cells``: (row, seed) -> Cell.
    ``timings``: one record per cell (row, seed, seconds, kept = reused from an earlier run).
    ``health``: (row, seed) -> ``eval.health.Health`` (best/last epochs, flags, curves.png);
    ``flags``: (row, seed) -> {flag: reason} for the flagged cells only.
    """

    system: str
    tables: dict[str, ResultTable]
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    timings: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    workdir: Optional[Path] = None
    health: dict[tuple[str, int], Any] = field(default_factory=dict)

    @property
    def flags(self) -> dict[tuple[str, int], dict[str, str]]:
        return {key: dict(h.flags) for key, h in self.health.items() if h.flags}

    def to_markdown(self) -> str:
        return "\n\n".join(t.to_markdown() for t in self.tables.values())

    def __str__(self) -> str:
        return self.to_markdown()

    def save(self, directory: str | Path) -> Path:
        """Write ``<table>.json/.csv/.md``, ``cells.json``, ``timings.json`` and ``config.yaml``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, table in self.tables.items():
            for ext in ("json", "csv", "md"):
                table.save(directory / f"{name}.{ext}")
        cells = [{"row": r, "seed": s, **c.to_dict()} for (r, s), c in self.cells.items()]
        _write_text(directory / "cells.json", json.dumps(cells, indent=1))
        _write_text(directory / "timings.json", json.dumps(self.timings, indent=1))
        _write_text(directory / "health.json", json.dumps([h.to_dict() for h in self.health.values()], indent=1))
        _write_text(directory / "config.yaml", yaml.safe_dump(
            {**self.config, "system": self.system}, sort_keys=False))
        _write_text(directory / "tables.json", json.dumps(list(self.tables)))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ExperimentResult":
        """Read back what ``save`` wrote."""
        directory = Path(directory)
        index = directory / "tables.json"
        if not index.is_file():
            raise FileNotFoundError(f"{directory}: no saved experiment there (tables.json missing)")
        tables = {name: ResultTable.load(directory / f"{name}.json") for name in json.loads(index.read_text())}
        cells = {}
        if (directory / "cells.json").is_file():
            for d in json.loads((directory / "cells.json").read_text()):
                cells[(d["row"], int(d["seed"]))] = Cell.from_dict(d)
        timings = json.loads((directory / "timings.json").read_text()) if (directory / "timings.json").is_file() else []
        config = yaml.safe_load((directory / "config.yaml").read_text()) if (directory / "config.yaml").is_file() else {}
        health = {}
        if (directory / "health.json").is_file():
            from mmsocial.eval.health import Health

            for d in json.loads((directory / "health.json").read_text()):
                h = Health.from_dict(d)
                health[(h.row, h.seed)] = h
        return cls(str(config.get("system", "")), tables, cells, timings, config, directory, health)

    def compare(self, other: "ExperimentResult") -> ResultTables:
        """Per table, row and metric: this result's mean minus ``other``'s (rows and metrics both hold).

        Each difference table is titled "<table>: difference ..." and stored as one value (seed 0)."""
        out = ResultTables()
        for name, mine in self.tables.items():
            theirs = other.tables.get(name)
            if theirs is None:
                continue
            metrics = [m for m in mine.metrics if m in theirs.metrics]
            if not metrics:
                continue
            diff = ResultTable(f"{name}: difference (this - other), {mine.title}", metrics, mine.percent,
                               mine.digits, mine.row_header)
            for row in mine.rows:
                if row not in theirs.rows:
                    continue
                values = {m: mine.mean(row, m) - theirs.mean(row, m) for m in metrics
                          if len(mine.values(row, m)) and len(theirs.values(row, m))}
                if values:
                    diff.add(row, values, 0)
            out.append(diff)
        return out


def _write_text(path: Path, text: str) -> None:
    write_text(path, text)


# ---------------------------------------------------------------------------- config and corpus
class _SystemOnly(StrictModel):
    model_config = StrictModel.model_config | {"extra": "ignore"}
    system: Optional[str] = None


def load_experiment_config(config: str | Path | Mapping[str, Any] | BaseModel,
                           overrides: Mapping[str, Any] | Sequence[str] | None = None):
    """(system module, validated ``system.Config``) of a YAML path, dict or config object plus overrides.

    Raises ConfigError naming the source and every bad key; nothing is read but the config."""
    source = str(config) if isinstance(config, (str, Path)) else type(config).__name__
    name = load_config(config, _SystemOnly, overrides).system
    if not name:
        raise ConfigError(f"{source}: no `system:` key; set it to one of {', '.join(systems.names())}")
    try:
        module = systems.get(name)
    except systems.UnknownSystemError as e:
        raise ConfigError(f"{source}: system: {e}") from None
    return module, load_config(config, module.Config, overrides)


def load_corpus(cfg: ExperimentConfig) -> Corpus:
    """The config's corpus; built from ``cfg.synthetic`` when its folder does not hold one yet.

    A synthetic corpus is only written into a folder that does not exist or is empty."""
    if cfg.corpus and (Path(cfg.corpus) / "posts.parquet").is_file():
        return Corpus.load(cfg.corpus)
    if cfg.synthetic is None:
        raise CorpusError(f"{cfg.corpus}: no corpus there (posts.parquet missing); build one with "
                          f"`mmsocial data ...` or add a `synthetic:` section to the config")
    from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus

    out = Path(cfg.corpus or Path(cfg.workdir) / "corpus")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CorpusError(f"{out}: not a corpus (posts.parquet missing) and not empty, so the synthetic corpus "
                          f"the config describes is not built there; point `corpus:` at an empty or new "
                          f"folder, or at a corpus")
    log.info("no corpus at %s: building the synthetic corpus the config describes (%d posts, seed %d) there",
             out, cfg.synthetic.posts, cfg.synthetic.seed)
    return make_synthetic_corpus(SyntheticConfig(posts=cfg.synthetic.posts, seed=cfg.synthetic.seed), out)


def cell_dir(workdir: str | Path, row: str, seed: int) -> Path:
    """Where the (row, seed) cell trains and is kept: ``workdir/<row>-seed<seed>``."""
    return Path(workdir) / f"{re.sub(r'[^A-Za-z0-9_.+=-]', '_', row)}-seed{seed}"


def _fingerprint(cfg: ExperimentConfig, data: Any) -> str:
    settings = cfg.model_dump(mode="json", exclude=_NOT_FINGERPRINTED)
    return hashlib.sha256(json.dumps([settings, data.fingerprint()], sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- selection and health notes
def selection_note(cells: Mapping[tuple[str, int], Cell]) -> Optional[str]:
    """One line: how every trained row's kept checkpoint was chosen, and its best/last epochs per seed."""
    rules: dict[str, list[str]] = {}
    for (row, seed), cell in sorted(cells.items(), key=lambda kv: (kv[0][1])):
        sel = cell.selection
        if not sel:
            continue
        if sel.get("metric"):
            rule = (f"the epoch with the {'lowest' if sel.get('mode', 'min') == 'min' else 'highest'} "
                    f"validation `{sel['metric']}`")
        else:
            rule = "the last epoch (no validation selection)"
        best, last = selected_epochs(cell)
        epochs = f"{_epoch(best)}/{_epoch(last)}"
        rules.setdefault(rule, []).append(f"{row} s{seed} {epochs}")
    if not rules:
        return None
    parts = []
    for rule, where in rules.items():
        rows = sorted({w.split(" s")[0] for w in where})
        parts.append(f"{rule} for {', '.join(rows)} (kept/last epoch: {'; '.join(where)})")
    return ("Model selection: every trained row keeps " + "; ".join(parts)
            + ". The test split is never used for it; closed-form rows have no epochs.")


def _epoch(x: Any) -> str:
    if isinstance(x, Mapping):  # chosen per modality
        return "(" + ", ".join(f"{k} {_epoch(v)}" for k, v in x.items()) + ")"
    return "-" if x is None else f"{round(float(x), 2):g}"  # iteration-counted systems validate mid-epoch


def annotate_tables(result: ExperimentResult) -> None:
    """Print the selection rule under each table and mark every flagged cell's row with a footnote."""
    note = selection_note(result.cells)
    for name, table in result.tables.items():
        table.notes = [note] if note else []
        table.marks, table.footnotes = {}, []
        for (row, seed), health in result.health.items():
            cell = result.cells.get((row, seed))
            if row not in table.rows and (cell is None or cell.metrics):
                continue  # a row this table does not hold (a cell with no metrics at all is listed everywhere)
            for flag, reason in health.flags.items():
                table.mark(row, SIGNS[flag], f"{flag}: {row} seed {seed}: {reason}")


# ---------------------------------------------------------------------------- the runner
def run_experiment(config: str | Path | Mapping[str, Any] | BaseModel,
                   overrides: Mapping[str, Any] | Sequence[str] | None = None, progress: bool = True,
                   data: Any = None) -> ExperimentResult:
    """Run every (seed, row) cell of the experiment a YAML file, dict or config object describes.

    ``overrides``: dotted keys (``{"seeds": [0]}`` or ``["seeds=[0]"]``). ``progress``: a bar over
    the cells. ``data``: what the system's ``prepare`` returns, to skip the corpus and preparation
    (tests, notebooks). Returns the result, also saved in the config's ``workdir``.
    """
    from tqdm.auto import tqdm

    system, cfg = load_experiment_config(config, overrides)
    workdir = check_writable_folder(cfg.workdir, "experiment workdir", create=False)  # a file or read-only: fails now
    from mmsocial.train.resources import configure_threads, tune_malloc

    tune_malloc()
    configure_threads(cfg.threads)  # an explicit `threads:` wins; else usable CPUs minus the load
    if data is None:
        data = system.prepare(load_corpus(cfg), cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    log.info("%s experiment %r: %s", system.TITLE, cfg.name, data.describe())
    tables = system.new_tables(cfg, data)
    rows = list(cfg.rows) or list(system.ROWS)
    seeds = list(cfg.seeds)
    fingerprint = _fingerprint(cfg, data)
    result = ExperimentResult(system.NAME, tables, config=cfg.model_dump(mode="json"), workdir=workdir)
    cells = [(seed, row) for seed in seeds for row in rows]
    bar = tqdm(total=len(cells), desc=f"{system.TITLE} cells", disable=not progress)
    for seed, row in cells:
        t0 = time.perf_counter()
        where = cell_dir(workdir, row, seed)
        kept = where / "result.json"
        try:
            done = json.loads(kept.read_text()) if kept.is_file() else None
        except (OSError, ValueError):  # damaged (not by mmsocial: it writes atomically): computed again
            done = None
        if isinstance(done, dict) and done.get("fingerprint") == fingerprint and "cell" in done:
            cell, how = Cell.from_dict(done["cell"]), "kept from an earlier run"
        else:
            try:
                cell, how = system.run_cell(row, seed, data, cfg, where), "computed"
            except FloatingPointError as e:  # the trainer met a NaN/Inf: the cell is kept, flagged non-finite
                log.error("%s seed %d: %s", row, seed, e)
                cell, how = Cell({}, diagnostics={"non_finite": 1.0}), "stopped on a non-finite value"
            where.mkdir(parents=True, exist_ok=True)
            _write_text(kept, json.dumps({"fingerprint": fingerprint, "row": row, "seed": seed,
                                          "cell": cell.to_dict()}))
        for name, values in cell.metrics.items():
            if name in tables and values:
                tables[name].add(row, values, seed)
        health = check_health(row, seed, cell, cfg.health, where)
        result.health[(row, seed)] = health
        seconds = time.perf_counter() - t0
        result.cells[(row, seed)] = cell
        result.timings.append({"row": row, "seed": seed, "seconds": round(seconds, 1), "kept": how != "computed"})
        log.info("  %s seed %d: %.0f s (%s)", row, seed, seconds, how)
        bar.update()
    bar.close()
    annotate_tables(result)
    result.save(workdir)
    for table in tables.values():
        log.info("%s\n", table.to_markdown())
    return result
