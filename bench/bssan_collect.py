"""Assemble a BSSAN table from the finished cells of a run folder (cells run as separate processes,
e.g. one per seed sharing the workdir), mean ± std over seeds, plus each row's selection and timing.

    PYTHONPATH=src python bench/bssan_collect.py /work/runs/bssan/table2-synthetic --table table2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmsocial.eval.protocols.bssan import retrieval_table
from mmsocial.systems.bssan import ROWS


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir")
    p.add_argument("--table", default="table2")
    p.add_argument("--title", default=None)
    a = p.parse_args()
    cells = [json.loads(f.read_text()) for f in sorted(Path(a.workdir).glob("*-seed*/result.json"))]
    table = retrieval_table(a.title or f"{a.table} ({a.workdir})")
    notes = []
    for row in ROWS:
        for c in sorted((c for c in cells if c["row"] == row), key=lambda c: c["seed"]):
            cell = c["cell"]
            if a.table in cell["metrics"]:
                table.add(row, cell["metrics"][a.table], c["seed"])
            sel = cell.get("selection") or {}
            d = cell.get("diagnostics", {})
            notes.append(f"{row} seed {c['seed']}: best epoch {sel.get('best_epoch')} of {sel.get('last_epoch')} "
                         f"(val rsum {sel.get('best_value')}); test {int(d.get('test_images', 0))} images x "
                         f"{int(d.get('test_captions', 0))} captions"
                         + (f"; {d['pairs_per_second']:.0f} pairs/s" if "pairs_per_second" in d else ""))
    print(table.to_markdown())
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()
