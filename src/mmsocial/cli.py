"""`mmsocial ...`: the command-line tool (also `python -m mmsocial`)."""

from __future__ import annotations

import errno
import json
import logging
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from mmsocial import systems

_STATE = {"debug": False}
# OS errors that are the user's to fix (a path, a permission, a full or read-only disk): exit 2
_USER_OS_ERRORS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT,
                   errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG}


class _OneLineErrors(TyperGroup):
    """Every failure of a command ends with one line ``error: ...`` on stderr: exit 2 for a user's
    mistake (bad input, config, path), 1 for anything else (a bug), 130 when interrupted. The
    Python traceback is shown only with ``mmsocial --debug ...``."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # usage errors: click's own message, exit 2
            raise
        except KeyboardInterrupt:
            if _STATE["debug"]:
                raise
            _error("interrupted (what was finished is kept; run the same command again to resume)", 130)
        except Exception as e:  # noqa: BLE001 - the one place that turns exceptions into messages
            if _STATE["debug"]:
                raise
            if isinstance(e, ValueError) or (isinstance(e, OSError) and e.errno in _USER_OS_ERRORS) or \
                    isinstance(e, (FileNotFoundError, PermissionError)):
                _error(_one_line(e), 2)
            if type(e).__name__ == "Timeout" and "filelock" in type(e).__module__:
                _error(_one_line(e), 2)
            _error(f"internal error: {type(e).__name__}: {_one_line(e)} (run `mmsocial --debug ...` for the "
                   f"traceback, and please report it)", 1)


def _one_line(e: BaseException) -> str:
    text = str(e) if not isinstance(e, OSError) or not e.filename else \
        f"{e.filename}: {e.strerror or e}"
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip()) or type(e).__name__


def _error(msg: str, code: int) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, cls=_OneLineErrors)
data_app = typer.Typer(no_args_is_help=True, help="Build and inspect corpora.")
features_app = typer.Typer(no_args_is_help=True, help="Extract and cache features.")
viz_app = typer.Typer(no_args_is_help=True, help="Pictures of what a trained system does.")
predict_app = typer.Typer(no_args_is_help=True, help="Run a trained system on new posts.")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(viz_app, name="viz")
app.add_typer(predict_app, name="predict")
# command groups a system may add commands to (its optional ``add_commands(GROUPS)``)
GROUPS: dict[str, typer.Typer] = {"data": data_app, "features": features_app, "viz": viz_app,
                                  "predict": predict_app}


class _EchoHandler(logging.Handler):
    """Log records as plain lines on the current stdout (resolved per record, so test runners that
    swap sys.stdout see them), written around any progress bar on the screen."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _configure_logging() -> None:
    logger = logging.getLogger("mmsocial")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        handler = _EchoHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show the Python traceback of an error")) -> None:
    """mmsocial: learning from social multimedia (see `mmsocial COMMAND --help`)."""
    _STATE["debug"] = debug
    _configure_logging()


def _fail(msg: str) -> None:
    _error(_one_line(ValueError(msg)), 2)


# ---------------------------------------------------------------------------- data
@data_app.command("info")
def data_info(corpus: Path = typer.Argument(..., help="corpus folder"),
              as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")):
    """Summarise a corpus: posts, users, tags, labels, links, missing modalities."""
    from mmsocial.data.corpus import Corpus, CorpusError

    try:
        c = Corpus.load(corpus)
    except CorpusError as e:
        _fail(str(e))
    typer.echo(json.dumps(c.summary(), indent=1) if as_json else c.describe())


@data_app.command("validate")
def data_validate(corpus: Path, decode_images: bool = typer.Option(False, help="open every image")):
    """Check a corpus thoroughly (image files included); exit 2 naming the first problem."""
    from mmsocial.data.corpus import Corpus, CorpusError

    try:
        c = Corpus.load(corpus)
        missing = c.validate(check_images="decode" if decode_images else "exists")
    except CorpusError as e:
        _fail(str(e))
    typer.echo(f"{corpus}: valid, {len(c)} posts; missing modalities {missing}")


@data_app.command("synthetic")
def data_synthetic(out: Path = typer.Option(Path("data/synthetic"), help="corpus folder to write"),
                   posts: int = typer.Option(2000, help="number of posts"),
                   seed: int = typer.Option(0),
                   users: Optional[int] = typer.Option(None, help="number of users (default posts/20)"),
                   image_size: int = typer.Option(224, help="side of the rendered images"),
                   write_images: bool = typer.Option(True, help="write PNG files; otherwise images "
                                                     "are rendered on demand from the stored objects"),
                   captions: int = typer.Option(0, "--captions", help="N > 0: a 'captions' column with N "
                                                "different sentences per post (image-text matching); the "
                                                "other columns are the same as without it")):
    """Generate a synthetic social corpus (objects at known boxes, tags, captions, users, links)."""
    from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus

    cfg = SyntheticConfig(posts=posts, seed=seed, users=users, image_size=image_size,
                          write_images=write_images, captions_per_post=captions)
    try:
        cfg.check()
    except ValueError as e:
        _fail(f"--{str(e).removeprefix('SyntheticConfig: ').replace('captions_per_post', 'captions').replace('_', '-')}")
    t = time.perf_counter()
    c = make_synthetic_corpus(cfg, out)  # only into a new or empty folder; built beside it, then renamed
    typer.echo(c.describe())
    typer.echo(f"wrote {out} in {time.perf_counter() - t:.1f}s")


@data_app.command("openclipart")
def data_openclipart(out: Path = typer.Option(Path("data/openclipart"), help="corpus folder to write"),
                     source: Optional[Path] = typer.Option(None, help="an unpacked openclipart tree "
                                                           "(folder holding usr/share/openclipart)"),
                     cache: Path = typer.Option(Path("cache/openclipart"), help="where the Debian "
                                                "packages are downloaded and unpacked"),
                     max_side: int = typer.Option(256, help="images are downscaled to this side"),
                     limit: Optional[int] = typer.Option(None, help="keep only the first N posts"),
                     exclude: str = typer.Option("shapes,special,computer", help="comma-separated "
                                                 "top-level folders to leave out ('' keeps all)")):
    """Build a corpus from the Debian openclipart packages (fetched with apt-get if needed)."""
    from mmsocial.data.corpus import CorpusError
    from mmsocial.data.openclipart import build_openclipart_corpus

    try:
        c = build_openclipart_corpus(out, source=source, cache=cache, max_side=max_side, limit=limit,
                                     exclude=tuple(x.strip() for x in exclude.split(",") if x.strip()))
    except (CorpusError, ValueError) as e:
        _fail(str(e))
    typer.echo(c.describe())


@data_app.command("jsonl")
def data_jsonl(file: Path, out: Path = typer.Option(..., help="corpus folder to write (new or empty)"),
               images_root: Optional[Path] = typer.Option(None, help="folder image paths are relative to"),
               allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="accept relative "
                                                       "image paths that lead outside --images-root"),
               users: Optional[Path] = typer.Option(None, help="JSONL users file: user_id, name, interest")):
    """Build a corpus from a JSONL file, one post a line (see docs/data.md for the fields)."""
    from mmsocial.data.corpus import check_new_folder, save_new_corpus
    from mmsocial.data.jsonl import read_jsonl_corpus

    check_new_folder(out)  # before reading: a folder with files is never written into
    c = read_jsonl_corpus(file, images_root=images_root, allow_outside_root=allow_outside_root, users_file=users)
    save_new_corpus(c, out)
    typer.echo(c.describe())


# ---------------------------------------------------------------------------- dataset readers
def _layout_help(summary: str, layout: str) -> str:
    """A reader's --help: the summary, then the expected layout with its line breaks kept (click's \\b)."""
    return f"{summary}\n\n\b\nExpected layout:\n" + layout.replace("\n\n", "\n")


def _read_dataset(read, out: Path, **kwargs) -> None:
    from mmsocial.data.corpus import check_new_folder, save_new_corpus

    check_new_folder(out)  # before reading: a folder with files is never written into
    c = read(**kwargs)
    save_new_corpus(c, out)
    typer.echo(c.describe())


from mmsocial.data.layouts import KARPATHY_LAYOUT, MIRFLICKR_LAYOUT, NUSWIDE_LAYOUT, VOC2007_LAYOUT  # noqa: E402


@data_app.command("nus-wide", help=_layout_help("Build a corpus from NUS-WIDE as downloaded (ROOT = the folder "
                                                "holding ImageList/, Groundtruth/, NUS_WID_Tags/).", NUSWIDE_LAYOUT))
def data_nuswide(root: Path = typer.Argument(..., help="the unpacked NUS-WIDE folder"),
                 out: Path = typer.Option(..., help="corpus folder to write"),
                 images: Optional[Path] = typer.Option(None, help="image folder (default ROOT/Flickr)"),
                 tags: str = typer.Option("auto", help="all (All_Tags.txt) | 1k (AllTags1k.txt) | auto")):
    from mmsocial.data.readers import read_nuswide

    _read_dataset(read_nuswide, out, root=root, images=images, tags=tags)


@data_app.command("mirflickr", help=_layout_help("Build a corpus from MIRFlickr-25K as downloaded (ROOT = "
                                                 "mirflickr/ or the folder holding it).", MIRFLICKR_LAYOUT))
def data_mirflickr(root: Path = typer.Argument(..., help="mirflickr/, or the folder both archives were unpacked in"),
                   out: Path = typer.Option(..., help="corpus folder to write"),
                   annotations: Optional[Path] = typer.Option(None, help="annotation folder (default: the "
                                                              "sibling mirflickr25k_annotations_v080/)"),
                   label_set: str = typer.Option("relevant", help="relevant (14 _r1 concepts) | potential (24) | both")):
    from mmsocial.data.readers import read_mirflickr

    _read_dataset(read_mirflickr, out, root=root, annotations=annotations, label_set=label_set)


@data_app.command("voc2007", help=_layout_help("Build a corpus from PASCAL VOC 2007 and the LEAR Flickr tags as "
                                               "downloaded (ROOT = VOCdevkit/VOC2007 or a folder holding "
                                               "VOCdevkit/).", VOC2007_LAYOUT))
def data_voc2007(root: Path = typer.Argument(..., help="VOCdevkit/VOC2007, or the folder holding VOCdevkit/"),
                 out: Path = typer.Option(..., help="corpus folder to write"),
                 tags: Optional[Path] = typer.Option(None, help="folder of the pascal07_* tag files (default: "
                                                     "searched in ROOT, VOC2007/, the VOCdevkit parent, sub-folders)"),
                 no_tags: bool = typer.Option(False, "--no-tags", help="read VOC without tags"),
                 tag_set: str = typer.Option("pascal07", help="prefix of the LEAR tag files"),
                 include_difficult: bool = typer.Option(True, help="count objects marked difficult as labels")):
    from mmsocial.data.readers import read_voc2007

    _read_dataset(read_voc2007, out, root=root, tags_dir=tags, with_tags=not no_tags, tag_set=tag_set,
                  include_difficult=include_difficult)


from mmsocial.data.pascal_sentence import PASCAL_SENTENCE_LAYOUT  # noqa: E402
from mmsocial.data.wikipedia import WIKIPEDIA_LAYOUT  # noqa: E402


@data_app.command("wikipedia", help=_layout_help("Build a corpus from the Wikipedia cross-modal dataset "
                                                 "(ROOT = wikipedia_dataset/ or its parent).", WIKIPEDIA_LAYOUT))
def data_wikipedia(root: Path = typer.Argument(..., help="the unpacked wikipedia_dataset folder"),
                   out: Path = typer.Option(..., help="corpus folder to write")):
    from mmsocial.data.wikipedia import read_wikipedia

    _read_dataset(read_wikipedia, out, root=root)


@data_app.command("pascal-sentence", help=_layout_help("Build a corpus from Pascal Sentence (ROOT = the folder "
                                                       "of either form, or the HTML page).", PASCAL_SENTENCE_LAYOUT))
def data_pascal_sentence(root: Path = typer.Argument(..., help="dataset/ + sentence/ parent, or the HTML page"),
                         out: Path = typer.Option(..., help="corpus folder to write"),
                         train_per_class: int = typer.Option(30, help="training pairs per class (rest: test)"),
                         seed: int = typer.Option(0, help="seed of the per-class split")):
    from mmsocial.data.pascal_sentence import read_pascal_sentence

    _read_dataset(read_pascal_sentence, out, root=root, train_per_class=train_per_class, seed=seed)


@data_app.command("karpathy", help=_layout_help("Build a corpus from Flickr30K or COCO in Karpathy's split JSON "
                                                "(one post per image, its sentences as captions).", KARPATHY_LAYOUT))
def data_karpathy(root: Path = typer.Argument(..., help="the folder holding dataset_*.json, or the file itself"),
                  out: Path = typer.Option(..., help="corpus folder to write"),
                  images: Optional[Path] = typer.Option(None, help="image folder (default ROOT/flickr30k-images; "
                                                        "COCO: ROOT, holding train2014/ and val2014/)"),
                  dataset: Optional[str] = typer.Option(None, help="flickr30k | coco | flickr8k (default: by file name)")):
    from mmsocial.data.karpathy import read_karpathy

    _read_dataset(read_karpathy, out, root=root, images=images, dataset=dataset)


@data_app.command("tweets")
def data_tweets(out: Path = typer.Option(..., help="corpus folder to write"),
                source: Optional[Path] = typer.Option(None, help="an unpacked r-cran-dslabs package (default: "
                                                      "apt-get download + dpkg-deb -x into --cache)"),
                cache: Path = typer.Option(Path("cache/dslabs"), help="where the Debian package is unpacked")):
    """The real tweets of Debian r-cran-dslabs (trump_tweets) as a text-only popularity corpus (docs/uhan.md)."""
    from mmsocial.data.tweets import fetch_dslabs, read_tweets_corpus

    _read_dataset(lambda: read_tweets_corpus(source if source is not None else fetch_dslabs(cache)), out)


@data_app.command("uhan-flickr")
def data_uhan_flickr(root: Path = typer.Argument(..., help="folder holding data.json, train_data.txt, "
                                                 "train_label.txt, train_url.txt and img/train/"),
                     out: Path = typer.Option(..., help="corpus folder to write"),
                     regions: Optional[Path] = typer.Option(None, help="also copy the 196x512 region files "
                                                            "into a feature store here")):
    """The UHAN/Flickr popularity data in the official layout (docs/uhan.md)."""
    from mmsocial.data.uhan_flickr import read_uhan_flickr, write_uhan_flickr_regions

    _read_dataset(read_uhan_flickr, out, root=root)
    if regions is not None:
        from mmsocial.data.corpus import Corpus, CorpusError

        try:
            write_uhan_flickr_regions(root, Corpus.load(out), regions)
        except CorpusError as e:
            _fail(str(e))
        typer.echo(f"region store: {regions}")


# ---------------------------------------------------------------------------- features
@features_app.command("extract")
def features_extract(corpus: Path = typer.Argument(..., help="corpus folder"),
                     kind: str = typer.Option("regions", help="regions | pooled | objects"),
                     backbone: str = typer.Option("mobilenet_v2", help="mobilenet_v2 | vgg16 | vgg19 | "
                                                  "resnet152 | alexnet"),
                     size: int = typer.Option(224, help="input side in pixels (images resized, no crop)"),
                     weights: str = typer.Option("imagenet", help="imagenet | random | PATH to a state dict"),
                     batch_size: int = typer.Option(32, "--batch-size"),
                     workers: int = typer.Option(2, help="image-decoding worker processes"),
                     out: Optional[Path] = typer.Option(None, help="default CORPUS/features/KIND-BACKBONE-SIZE"),
                     boxes: str = typer.Option("cam", help="objects: cam | grid | PATH to an ONNX detector"),
                     objects: int = typer.Option(10, help="objects: boxes per image"),
                     on_error: str = typer.Option("raise", help="undecodable image: raise | zeros "
                                                  "(zeros + valid mask)"),
                     device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)"),
                     seed: int = typer.Option(0, help="--weights random: the seed of the random weights"),
                     overwrite: bool = typer.Option(False, help="extract again even if complete features exist, "
                                                    "and replace a feature set made with other settings")):
    """Extract image features into the feature store (resumes an interrupted run)."""
    from mmsocial.data.corpus import Corpus, CorpusError
    from mmsocial.features.backbones import MissingWeightsError
    from mmsocial.features.extract import extract_features
    from mmsocial.features.store import FeatureStoreError

    try:
        c = Corpus.load(corpus)
        fs = extract_features(c, kind, backbone, size, out=out, batch_size=batch_size, workers=workers,
                              weights=weights, boxes=boxes, objects=objects, on_error=on_error,
                              device=device, overwrite=overwrite, seed=seed)
    except (CorpusError, MissingWeightsError, FeatureStoreError, ValueError) as e:
        _fail(str(e))
    s = fs.stats
    if s["cached"]:
        typer.echo(f"{fs.path}: complete features with these settings exist already (--overwrite to redo)")
        return
    typer.echo(f"wrote {fs.path}: {len(fs)} posts x {fs.dims} float16 ({fs.manifest['weights']})")
    resumed = f", resumed after {s['resumed_from']} done" if s["resumed_from"] else ""
    typer.echo(f"throughput: {s['images']} images in {s['seconds']:.1f}s = {s['images_per_s']:.1f} images/s{resumed}")


# ---------------------------------------------------------------------------- train / experiment
SystemName = Enum("SystemName", {name: name for name in systems.names()}, type=str)


@app.command("train")
def train_cmd(system: SystemName = typer.Argument(..., help="a registered system"),
              config: Path = typer.Option(..., help="YAML preset, e.g. configs/<system>/small.yaml"),
              corpus: Optional[Path] = typer.Option(None, help="corpus folder (overrides the config's; "
                                                    "never generated)"),
              out: Optional[Path] = typer.Option(None, help="run folder (default: the config's workdir)"),
              override: list[str] = typer.Option([], "--set", help="dotted override, e.g. --set train.epochs=5")):
    """Train one model of SYSTEM on a corpus; writes checkpoints, logs and vocabularies to the run folder."""
    from mmsocial.config import ConfigError, load_config, parse_overrides
    from mmsocial.data.corpus import CorpusError

    module = systems.get(system.value)
    try:
        ov = parse_overrides(override)
        if corpus is not None:
            ov["corpus"] = str(corpus)
            ov["synthetic"] = None  # a corpus named on the command line is used as it is, never generated
        if out is not None:
            ov["workdir"] = str(out)
        cfg = load_config(config, module.Config, ov)  # a bad key or value fails before anything runs
        from mmsocial.io import check_writable_folder

        check_writable_folder(cfg.workdir, "run folder", create=False)
        from mmsocial.train.resources import configure_threads, tune_malloc

        tune_malloc()
        configure_threads(cfg.threads)  # an explicit `threads:` wins; else usable CPUs minus the load
        run_dir = module.train(cfg)  # resumes a killed run with the same config (and says so)
        _save_run_config(cfg, Path(run_dir))
    except (ConfigError, CorpusError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"trained {module.TITLE}: {run_dir}")


@app.command("experiment")
def experiment_cmd(config: Path = typer.Argument(..., help="experiment YAML, e.g. configs/<system>/table2.yaml"),
                   override: list[str] = typer.Option([], "--set", help="dotted override, e.g. --set seeds=[0]")):
    """Train every row of a paper table over its seeds and print the table(s) (mean ± std)."""
    from mmsocial.config import ConfigError
    from mmsocial.data.corpus import CorpusError
    from mmsocial.experiment import run_experiment

    try:
        run_experiment(config, override)
    except (ConfigError, CorpusError, ValueError) as e:
        _fail(str(e))


def _save_run_config(cfg, run_dir: Path) -> None:
    """RUN_DIR/config.yaml: the settings given (validated) with an absolute corpus path (read by `mmsocial serve`)."""
    import yaml

    corpus = Path(cfg.corpus) if cfg.corpus else Path(cfg.workdir) / "corpus"
    given = {**cfg.model_dump(mode="json", exclude_unset=True), "system": cfg.system,
             "corpus": str(corpus.resolve()), "workdir": str(run_dir.resolve())}
    (run_dir / systems.RUN_CONFIG).write_text(yaml.safe_dump(given, sort_keys=False), encoding="utf-8")


# ---------------------------------------------------------------------------- index / serve
index_app = typer.Typer(no_args_is_help=True, help="Nearest-neighbour indexes (FAISS) over a run's embeddings.")
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(run_dir: Path = typer.Argument(..., help="a run folder written by `mmsocial train`"),
                kind: str = typer.Option("auto", help="auto (flat up to --exact-max vectors, ivfflat above) | "
                                         "flat | ivfflat | hnsw | ivfpq"),
                exact_max: int = typer.Option(100_000, help="largest collection searched exactly by --kind auto"),
                nprobe: Optional[int] = typer.Option(None, help="IVF lists a query scans (ivfflat: 8, ivfpq: 32)")):
    """Index every collection of a run (posts, texts, users) into RUN_DIR/index/; prints build time and
    recall@10 against exact search."""
    from mmsocial.data.corpus import CorpusError
    from mmsocial.index import VectorIndexError, build_run_indexes

    try:
        reports = build_run_indexes(systems.load_run(run_dir), kind=kind, exact_max=exact_max, nprobe=nprobe)
    except (CorpusError, VectorIndexError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    for r in reports:
        typer.echo(f"{r['collection']}: {r['kind']} ({r['metric']}) over {r['size']} x {r['dim']}, built in "
                   f"{r['build_seconds']:.2f}s, recall@10 vs exact {r['recall_at_10']:.4f} -> {r['path']}")


@index_app.command("add")
def index_add(run_dir: Path = typer.Argument(..., help="a run folder with a built index"),
              limit: Optional[int] = typer.Option(None, help="add at most this many posts")):
    """Add the posts of the run's corpus that its posts index lacks (e.g. posts added since), no rebuild."""
    from mmsocial.data.corpus import CorpusError
    from mmsocial.index import VectorIndexError, add_new_posts

    try:
        added, folder = add_new_posts(systems.load_run(run_dir), limit)
    except (CorpusError, VectorIndexError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"added {added} posts to {folder}")


@app.command("serve")
def serve_cmd(run_dirs: list[Path] = typer.Argument(..., help="run folders written by `mmsocial train`"),
              host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
              max_upload_mb: float = typer.Option(5.0, help="largest accepted image upload"),
              search_threads: int = typer.Option(1, help="FAISS threads per search (one query per request: "
                                                 "requests run side by side instead)")):
    """HTTP API + web page over trained runs: search, explanations, users, matching, popularity."""
    import uvicorn

    from mmsocial.data.corpus import CorpusError
    from mmsocial.index import set_search_threads
    from mmsocial.serve import create_app

    set_search_threads(search_threads)
    try:
        api = create_app(run_dirs, max_upload_bytes=int(max_upload_mb * 2**20))
    except (CorpusError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"serving {len(run_dirs)} run(s) on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(api, host=host, port=port, log_level="warning", access_log=False)  # one worker, no access log


# ---------------------------------------------------------------------------- demo
@app.command()
def demo(workdir: Path = typer.Option(Path("runs/demo"), help="where the demo writes everything"),
         posts: int = typer.Option(2000, help="synthetic corpus size")):
    """The main job: corpus -> features -> every registered system -> report."""
    from mmsocial.demo import run_demo

    run_demo(workdir, posts=posts)


# ---------------------------------------------------------------------------- systems' own commands
for _module in systems.all_systems():
    if hasattr(_module, "add_commands"):
        _module.add_commands(GROUPS)


def main() -> None:  # pragma: no cover
    app()
