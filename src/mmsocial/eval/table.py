"""A paper-style result table: rows (models) x metrics, one value per seed, printed as mean ± std."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


class ResultTable:
    """Rows x metrics with one value per (row, metric, seed).

    ``percent``: print values x 100 with a % sign (the papers' layout); stored values stay raw.
    Cells never filled print as "-" (like the paper's tables). ``mark(row, sign, note)`` puts a
    footnote sign after a row's name and lists the note under the table (e.g. a training-health
    flag); ``notes`` are lines printed under the table (e.g. the model-selection rule).
    """

    def __init__(self, title: str, metrics: Sequence[str], percent: bool = True, digits: int = 2,
                 row_header: str = "Model"):
        if not metrics:
            raise ValueError("a result table needs at least one metric column")
        self.title, self.metrics = title, list(metrics)
        self.percent, self.digits, self.row_header = percent, digits, row_header
        self.rows: dict[str, dict[str, dict[int, float]]] = {}  # row -> metric -> seed -> value
        self.marks: dict[str, list[str]] = {}  # row -> footnote signs
        self.footnotes: list[str] = []  # "sign note" lines, in the order they were added
        self.notes: list[str] = []

    def mark(self, row: str, sign: str, note: str) -> None:
        """Footnote ``sign`` after ``row``'s name, and ``sign note`` listed under the table."""
        signs = self.marks.setdefault(row, [])
        if sign not in signs:
            signs.append(sign)
        line = f"{sign} {note}"
        if line not in self.footnotes:
            self.footnotes.append(line)

    def add(self, row: str, values: Mapping[str, float], seed: int = 0) -> None:
        """Record the metrics of one run; unknown metric names are an error (typo guard)."""
        unknown = set(values) - set(self.metrics)
        if unknown:
            raise ValueError(f"table {self.title!r} has no column(s) {sorted(unknown)}; columns: {self.metrics}")
        cells = self.rows.setdefault(row, {m: {} for m in self.metrics})
        for m, v in values.items():
            cells[m][int(seed)] = float(v)

    def values(self, row: str, metric: str) -> np.ndarray:
        if row not in self.rows:
            raise KeyError(f"table {self.title!r} has no row {row!r}; rows: {list(self.rows)}")
        return np.array([v for _, v in sorted(self.rows[row][metric].items())], dtype=float)

    def mean(self, row: str, metric: str) -> float:
        v = self.values(row, metric)
        return float(v.mean()) if len(v) else math.nan

    def std(self, row: str, metric: str) -> float:
        v = self.values(row, metric)
        return float(v.std(ddof=1)) if len(v) > 1 else 0.0 if len(v) else math.nan

    def seeds(self) -> list[int]:
        return sorted({s for r in self.rows.values() for m in r.values() for s in m})

    def cell(self, row: str, metric: str) -> str:
        v = self.values(row, metric)
        if len(v) == 0:
            return "-"
        k = 100.0 if self.percent else 1.0
        pct = "%" if self.percent else ""
        text = f"{k * v.mean():.{self.digits}f}{pct}"
        return text + (f" ± {k * v.std(ddof=1):.{self.digits}f}" if len(v) > 1 else "")

    def to_markdown(self) -> str:
        seeds = self.seeds()
        head = f"**{self.title}**" + (f" (mean ± std over {len(seeds)} seeds)" if len(seeds) > 1 else "")
        lines = [head, "", "| " + " | ".join([self.row_header, *self.metrics]) + " |",
                 "|" + "---|" * (len(self.metrics) + 1)]
        for row in self.rows:
            name = row + "".join(self.marks.get(row, []))
            lines.append("| " + " | ".join([name, *(self.cell(row, m) for m in self.metrics)]) + " |")
        under = [*self.notes, *self.footnotes]
        if under:
            lines += ["", *(f"{line}  " for line in under)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def to_records(self) -> list[dict]:
        """Long format: one record per (row, metric, seed)."""
        return [{"row": r, "metric": m, "seed": s, "value": v}
                for r, cells in self.rows.items() for m, per_seed in cells.items() for s, v in sorted(per_seed.items())]

    def to_dict(self) -> dict:
        return {"title": self.title, "metrics": self.metrics, "percent": self.percent, "digits": self.digits,
                "row_header": self.row_header, "records": self.to_records(),
                "marks": self.marks, "footnotes": self.footnotes, "notes": self.notes,
                "summary": {r: {m: {"mean": self.mean(r, m), "std": self.std(r, m)} for m in self.metrics}
                            for r in self.rows}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ResultTable":
        t = cls(d["title"], d["metrics"], d.get("percent", True), d.get("digits", 2), d.get("row_header", "Model"))
        for rec in d["records"]:
            t.add(rec["row"], {rec["metric"]: rec["value"]}, rec["seed"])
        t.marks = {r: list(v) for r, v in d.get("marks", {}).items()}
        t.footnotes, t.notes = list(d.get("footnotes", [])), list(d.get("notes", []))
        return t

    def save(self, path: str | Path) -> Path:
        """Write ``path`` as .json (everything) or .csv (long format), atomically; .md also allowed."""
        path = Path(path)
        if path.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=1, allow_nan=True)
        elif path.suffix == ".csv":
            import io
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["row", "metric", "seed", "value"])
            w.writeheader()
            w.writerows(self.to_records())
            text = buf.getvalue()
        elif path.suffix == ".md":
            text = self.to_markdown() + "\n"
        else:
            raise ValueError(f"cannot save a table as {path.name!r}: use a .json, .csv or .md file name")
        from mmsocial.io import write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text(path, text, newline="")

    @classmethod
    def load(cls, path: str | Path) -> "ResultTable":
        path = Path(path)
        if path.suffix != ".json":
            raise ValueError(f"load a table from the .json file it was saved to, not {path.name!r}")
        return cls.from_dict(json.loads(path.read_text()))



class ResultTables(list):
    """Several tables of one experiment (e.g. DMAN's Tables 2 and 3), printed one after the other."""

    def to_markdown(self) -> str:
        return "\n\n".join(t.to_markdown() for t in self)

    def __str__(self) -> str:
        return self.to_markdown()

    def __getitem__(self, key):
        if isinstance(key, str):
            for t in self:
                if t.title == key or t.title.startswith(key):
                    return t
            raise KeyError(f"no table titled {key!r}; titles: {[t.title for t in self]}")
        return super().__getitem__(key)
