"""`mmsocial ...`: the command-line tool (also `python -m mmsocial`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Build and inspect corpora.")
features_app = typer.Typer(no_args_is_help=True, help="Extract and cache features.")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")

SYSTEMS = ("dman", "du2mce", "eisr", "bssan", "uhan")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


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
                                                     "are rendered on demand from the stored objects")):
    """Generate a synthetic social corpus (objects at known boxes, tags, captions, users, links)."""
    from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus

    cfg = SyntheticConfig(posts=posts, seed=seed, users=users, image_size=image_size,
                          write_images=write_images)
    t = time.perf_counter()
    c = make_synthetic_corpus(cfg, out)
    typer.echo(c.describe())
    typer.echo(f"wrote {out} in {time.perf_counter() - t:.1f}s")


@data_app.command("openclipart")
def data_openclipart(out: Path = typer.Option(Path("data/openclipart"), help="corpus folder to write"),
                     source: Optional[Path] = typer.Option(None, help="an unpacked openclipart tree "
                                                           "(folder holding usr/share/openclipart)"),
                     cache: Path = typer.Option(Path("cache/openclipart"), help="where the Debian "
                                                "packages are downloaded and unpacked"),
                     max_side: int = typer.Option(256, help="images are downscaled to this side"),
                     limit: Optional[int] = typer.Option(None, help="keep only the first N posts")):
    """Build a corpus from the Debian openclipart packages (fetched with apt-get if needed)."""
    from mmsocial.data.openclipart import build_openclipart_corpus

    c = build_openclipart_corpus(out, source=source, cache=cache, max_side=max_side, limit=limit)
    typer.echo(c.describe())


@data_app.command("jsonl")
def data_jsonl(file: Path, out: Path = typer.Option(..., help="corpus folder to write"),
               images_root: Optional[Path] = typer.Option(None, help="folder image paths are relative to")):
    """Build a corpus from a JSONL file, one post a line (see docs/data.md for the fields)."""
    from mmsocial.data.jsonl import read_jsonl_corpus

    c = read_jsonl_corpus(file, images_root=images_root)
    c.save(out)
    typer.echo(c.describe())


# ---------------------------------------------------------------------------- demo
@app.command()
def demo(workdir: Path = typer.Option(Path("runs/demo"), help="where the demo writes everything"),
         posts: int = typer.Option(2000, help="synthetic corpus size")):
    """The main job: corpus -> features -> every system that exists -> report."""
    from mmsocial.demo import run_demo

    run_demo(workdir, posts=posts)


def main() -> None:  # pragma: no cover
    app()
