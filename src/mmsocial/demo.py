"""`mmsocial demo`: the main job, end to end on a synthetic social corpus.

corpus -> summary -> each registered system's ``demo(corpus_dir, workdir)`` (extracting and caching
the features it needs) -> one report (report.md) with every system's tables.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mmsocial import systems
from mmsocial.data.corpus import Corpus


def run_demo(workdir: Path, posts: int = 2000, seed: int = 0) -> Path:
    from mmsocial.data.synthetic import SyntheticConfig, make_synthetic_corpus

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = ["# mmsocial demo report", ""]
    t0 = time.perf_counter()

    corpus_dir = workdir / "corpus"
    typer.secho(f"[1] synthetic corpus ({posts} posts) -> {corpus_dir}", bold=True)
    if (corpus_dir / "posts.parquet").is_file() and len(Corpus.load(corpus_dir)) == posts:
        corpus = Corpus.load(corpus_dir)
        typer.echo("    already built, reusing it")
    else:
        corpus = make_synthetic_corpus(SyntheticConfig(posts=posts, seed=seed), corpus_dir)
    corpus.validate(check_images="exists")
    typer.echo(corpus.describe())
    report += ["## Corpus", "", "```", corpus.describe(), "```", ""]

    modules = systems.all_systems()
    typer.secho(f"[2] systems: {', '.join(m.TITLE for m in modules)}", bold=True)
    for module in modules:
        typer.secho(f"    {module.TITLE}: running", bold=True)
        t = time.perf_counter()
        result = module.demo(corpus_dir, workdir / module.NAME)
        text = result.to_markdown()
        seconds = time.perf_counter() - t
        typer.echo(f"    {module.TITLE}: done in {seconds:.0f} s")
        report += [f"## {module.TITLE}", "", text, "", f"({seconds:.0f} s)", ""]

    report.append(f"Total time: {time.perf_counter() - t0:.0f} s")
    from mmsocial.io import write_text

    out = write_text(workdir / "report.md", "\n".join(report))
    typer.secho(f"report written to {out}", bold=True)
    return out
