"""Systems: one module per paper, and the registry that cli.py, demo.py and experiment.py loop over.

Adding a system = one model file (``models/<name>.py``), one module here, one line in ``REGISTRY``.

Every system module has the same small shape (``systems/dman.py`` is the reference)::

    NAME = "dman"                      # registry key, `mmsocial train NAME`, the config's `system:`
    TITLE = "DMAN"                     # how tables, logs and the demo report name it
    PAPER = "dman-social-image-embedding.md"
    ROWS: tuple[str, ...]              # every row its tables can hold: baselines, variants, the system
    TABLES: tuple[str, ...]            # its paper tables, e.g. ("table2", "table3")

    class Config(ExperimentConfig):    # typed pydantic settings (model settings typed too, no dict[str, Any]);
        system: Literal["dman"] = "dman"   # `rows` validated against ROWS, `tables` against TABLES;
        ...                            # `selection` names the validation metric that picks checkpoints

    def prepare(corpus: Corpus, cfg: Config) -> Data
        # split, vocabularies, features (extracted and cached if missing). ``Data`` is the system's own
        # dataclass; it has ``fingerprint() -> str`` (what a finished cell was computed from) and
        # ``describe() -> str`` (one log line: split sizes, vocabulary sizes, feature shapes).
    def new_tables(cfg: Config, data: Data) -> dict[str, ResultTable]
        # the empty tables of cfg.tables, titled and with the paper's metric columns
    def run_cell(row: str, seed: int, data: Data, cfg: Config, workdir: Path) -> Cell
        # train (or fit) one row with one seed under ``workdir`` and evaluate it on the test split
    def train(cfg: Config) -> Path
        # `mmsocial train NAME`: one model on cfg.corpus, saved (checkpoints, vocabularies) in cfg.workdir
    def demo(corpus_dir: Path, workdir: Path) -> ExperimentResult
        # its part of `mmsocial demo`: the main row and its strongest baseline, <= 2 min on this CPU
        # with cached features

    # optional:
    def add_commands(groups: dict[str, typer.Typer]) -> None
        # extra CLI commands of the system under the groups "viz", "predict" (e.g. `viz attention`)
    def load_run(run_dir: Path) -> Served
        # serving hook (`mmsocial serve`, `mmsocial index build`): a run that ``train`` wrote, ready to
        # answer queries; ``Served`` below says what it holds. serve/ and index/ hold no model code and
        # go through this hook only. A system without it is listed as "not servable".

What the runner (``mmsocial.experiment``) gives a system and expects of it:

    run_experiment(config, overrides=None, progress=True, data=None) -> ExperimentResult
        # config: YAML path, dict or Config object; ``system:`` picks the module; the whole config
        # (overrides included) is validated with ``module.Config`` before any corpus is read.
        # ``data``: a prepared ``Data`` (skips the corpus and ``prepare``: tests, notebooks).
        # Cells run for seed in cfg.seeds, for row in (cfg.rows or ROWS); cell (row, seed) gets
        # workdir ``cell_dir(cfg.workdir, row, seed)`` = ``<workdir>/<row>-seed<seed>`` and is kept
        # there (result.json) under a fingerprint of cfg (minus seeds/rows/name/workdir/threads) and
        # ``data.fingerprint()``. ``Cell.metrics[table]`` fills ``new_tables(...)[table]``.
    ExperimentResult: .system, .tables (name -> ResultTable), .cells ((row, seed) -> Cell),
        .timings (list of {row, seed, seconds, kept}), .config (dict), .workdir,
        .health ((row, seed) -> eval.health.Health), .flags ((row, seed) -> {flag: reason}),
        .to_markdown() / str(), .save(dir), ExperimentResult.load(dir), .compare(other) -> ResultTables
    load_corpus(cfg) -> Corpus      # cfg.corpus, or the synthetic corpus cfg.synthetic describes
        # (built only into an absent or empty folder); a system's ``train`` uses it too
    config.partial_model(Model, name)  # typed "overrides of Model" section, e.g. DMAN's ``train:``

Model selection and health: a trained row keeps the epoch with the best value of the validation
metric its system's config names (``selection``; never the test split) and reports it in
``Cell.selection``; the runner prints the rule under each table, checks every cell
(``eval.health``: collapsed / stuck / overfit / non-finite, thresholds in ``cfg.health``), writes
``curves.png`` and ``health.json`` in the cell folder and marks flagged rows with a footnote sign.
A system helps it by filling ``Cell.history`` (``epoch``, ``train_loss``, ``val_loss``, ...) and
``Cell.diagnostics`` (``embedding_variance``, ``embedding_relative_variance``, ``positive_rate``).

Empty ``rows``/``tables`` mean every row/table (a Config may also default them to all, as DMAN's
does). ``demo`` is usually ``run_experiment({...a dict...}, progress=False)``. The CLI runs
``train(cfg)`` after ``load_config(--config, Config, --set overrides + --corpus/--out)``, and
``add_commands`` gets the groups "data", "features", "viz", "predict".

Serving (``load_run``; ``mmsocial.systems.load_run(run_dir)`` picks the module from the run's
``config.yaml``, which `mmsocial train` writes into every run folder)::

    Served(system, run_dir, corpus, metric, collections, embed_text=None, embed_image=None,
           embed_posts=None, explain=None, explain_image=None, match=None, popularity=None, info={})
        # metric: "l2" (Euclidean, smaller is closer) or "ip" (inner product, larger is closer) in the
        #   system's embedding space, used for every collection below
        # collections: name -> zero-argument function returning a ``Collection(ids, vectors, kind,
        #   display)``, computed only when no saved index holds it (`mmsocial index build` saves them):
        #     "posts"  (kind "post")  image embeddings of the corpus posts   -> text/image -> images
        #     "texts"  (kind "post" = post texts, or "word" = vocabulary words) -> image -> texts
        #     "users"  (kind "user")  user embeddings                        -> post/text -> users
        # embed_text(text) -> (vector (d,), info dict): a text/tag query in the "posts" space; raises
        #   ValueError naming what is wrong (e.g. no word of the query in the vocabulary)
        # embed_image(PIL.Image) -> (d,): an uploaded image in the "posts" space
        # embed_posts(post_ids) -> (n, d): posts of ``corpus`` (also posts added after training)
        # explain(post_id, text) -> dict: attention of the query words over the image, e.g.
        #   {"word": w, "grid": [h, w], "weights": h x w nested list summing to 1, "words": [...]}
        # explain_image(PIL.Image, text) -> dict: the same for an uploaded image
        # match(image, caption, post_id=None) -> dict with "score" and the attention; popularity(image,
        #   text, user_id, post_id=None) -> dict with "popularity" and the attention weights; ``image`` is
        #   an uploaded PIL image, or None with the ``post_id`` of a corpus post
    An endpoint whose capability no loaded run has answers 404 naming the command that trains one.

Library code in a system reports through ``logging`` (``log = logging.getLogger(__name__)``); only
cli.py and demo.py print.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

# name -> module; adding a system is one line here
REGISTRY: dict[str, str] = {
    "dman": "mmsocial.systems.dman",
    "du2mce": "mmsocial.systems.du2mce",
    "eisr": "mmsocial.systems.eisr",
    "bssan": "mmsocial.systems.bssan",
    "uhan": "mmsocial.systems.uhan",
}


@dataclass
class Cell:
    """What one (row, seed) cell of an experiment produced.

    ``metrics``: table name -> metric -> value, for each table the row appears in (a row absent
    from a table simply has no entry). ``history``: one record per validation of a trained row
    (keys ``epoch``, ``train_loss``, ``val_loss`` and any ``val_<metric>``), empty for rows that
    fit in closed form. ``selection``: how the kept checkpoint was chosen, e.g. ``{"metric":
    "val_loss", "mode": "min", "best_epoch": 3, "last_epoch": 15}``. ``diagnostics``: numbers the
    runner's health flags read (``embedding_variance``, ``positive_rate`` of a classifier, ...).
    """

    metrics: dict[str, dict[str, float]]
    history: list[dict[str, float]] = field(default_factory=list)
    selection: Optional[dict[str, Any]] = None
    diagnostics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "history": self.history, "selection": self.selection,
                "diagnostics": self.diagnostics}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        return cls(d["metrics"], d.get("history", []), d.get("selection"), d.get("diagnostics", {}))


class UnknownSystemError(ValueError):
    pass


# ---------------------------------------------------------------------------- serving hook
@dataclass
class Collection:
    """Vectors that a served run searches: ``ids`` (post ids, words or user ids) aligned with the rows
    of ``vectors`` (n, d) float32; ``kind`` "post", "word" or "user"; ``display`` optional labels."""

    ids: list[str]
    vectors: Any  # np.ndarray (n, d)
    kind: str = "post"
    display: Optional[list[str]] = None


@dataclass
class Served:
    """A trained run ready to answer queries; what a system's optional ``load_run(run_dir)`` returns
    (see the module docstring for every field)."""

    system: str
    run_dir: Path
    corpus: Any  # mmsocial.data.corpus.Corpus
    metric: str
    collections: dict[str, Callable[[], Collection]] = field(default_factory=dict)
    embed_text: Optional[Callable[[str], tuple[Any, dict]]] = None
    embed_image: Optional[Callable[[Any], Any]] = None
    embed_posts: Optional[Callable[[list[str]], Any]] = None
    explain: Optional[Callable[[str, str], dict]] = None
    explain_image: Optional[Callable[[Any, str], dict]] = None
    match: Optional[Callable[..., dict]] = None
    popularity: Optional[Callable[..., dict]] = None
    info: dict[str, Any] = field(default_factory=dict)


RUN_CONFIG = "config.yaml"  # the validated config `mmsocial train` writes into every run folder


def run_system(run_dir: str | Path) -> str:
    """The system name recorded in ``run_dir/config.yaml`` (``system:``)."""
    import yaml

    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder ({RUN_CONFIG} missing); train one with "
                                f"`mmsocial train SYSTEM --config configs/SYSTEM/small.yaml --out {run_dir}`")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(cfg, dict) or "system" not in cfg:
        raise ValueError(f"{path}: no `system:` key; it is not a config written by `mmsocial train`")
    return str(cfg["system"])


def require_run_files(run_dir: Path, names: tuple[str, ...], system: str) -> None:
    """For a system's ``load_run``: a FileNotFoundError naming the first of ``names`` missing from the run."""
    for name in names:
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name}: missing; this run was not written by `mmsocial train {system}`")


def served_corpus(cfg: Any, config_path: Path):
    """For a system's ``load_run``: the corpus the run's config names (its ``threads`` applied), or a
    FileNotFoundError naming the config when it names none."""
    import torch

    from mmsocial.data.corpus import Corpus

    if getattr(cfg, "threads", None):
        torch.set_num_threads(cfg.threads)
    if not cfg.corpus:
        raise FileNotFoundError(f"{config_path}: no `corpus:`; the served run needs its corpus")
    return Corpus.load(cfg.corpus)


def load_run(run_dir: str | Path) -> Served:
    """The run in ``run_dir`` through its system's ``load_run`` hook."""
    name = run_system(run_dir)
    module = get(name)
    if not hasattr(module, "load_run"):
        raise UnknownSystemError(f"{run_dir}: system {name!r} has no serving hook (load_run) yet")
    return module.load_run(Path(run_dir))


def names() -> list[str]:
    """Registered system names, in registry order."""
    return list(REGISTRY)


def get(name: str) -> ModuleType:
    """The system module registered as ``name`` (case-insensitive)."""
    key = str(name).lower()
    if key not in REGISTRY:
        raise UnknownSystemError(f"unknown system {name!r}; registered: {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[key])


def all_systems() -> list[ModuleType]:
    return [get(n) for n in REGISTRY]
