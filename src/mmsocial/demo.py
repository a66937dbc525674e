"""`mmsocial demo`: the main job, end to end on a synthetic social corpus.

corpus -> summary -> each system that exists (extracting and caching the features it needs)
-> one report (report.md). Systems not implemented yet are listed as such, never faked.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import typer

from mmsocial.data.corpus import Corpus

# system -> (module holding its demo function, function name)
SYSTEM_DEMOS = {
    "DMAN": ("mmsocial.experiment", "dman_demo"),
    "DU2MCE": ("mmsocial.models.du2mce", "demo"),
    "EISR": ("mmsocial.models.eisr", "demo"),
    "BSSAN": ("mmsocial.models.bssan", "demo"),
    "UHAN": ("mmsocial.models.uhan", "demo"),
}


def _find_demo(module: str, name: str):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module or module.startswith(str(e.name) + "."):
            return None  # the system's module does not exist yet
        raise
    if not hasattr(mod, name):
        raise AttributeError(f"{module} exists but has no demo function {name!r} (see SYSTEM_DEMOS in {__name__})")
    return getattr(mod, name)


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

    typer.secho("[2] systems", bold=True)
    for system, (module, name) in SYSTEM_DEMOS.items():
        fn = _find_demo(module, name)
        if fn is None:
            typer.echo(f"    {system}: not implemented yet")
            report += [f"## {system}", "", "not implemented yet", ""]
            continue
        typer.secho(f"    {system}: running", bold=True)
        t = time.perf_counter()
        result = fn(corpus_dir, workdir / system.lower())
        # A system's demo prints its own progress and tables; the report collects them.
        text = result.to_markdown() if hasattr(result, "to_markdown") else str(result)
        seconds = time.perf_counter() - t
        typer.echo(f"    {system}: done in {seconds:.0f} s")
        report += [f"## {system}", "", text, "", f"({seconds:.0f} s)", ""]

    report.append(f"Total time: {time.perf_counter() - t0:.0f} s")
    out = workdir / "report.md"
    out.write_text("\n".join(report))
    typer.secho(f"report written to {out}", bold=True)
    return out
