"""Do two results stores hold the same outcomes? For a change meant to make the engine faster
without changing what it computes: run the suite before and after into two stores, then

    python benchmarks/same_outcomes.py results/before.sqlite results/after.sqlite

Cells are matched by id (the hash of their specs) and examples by index; every outcome column is
compared exactly (NaN equal to NaN). Prints the counts, and each cell that differs with the columns
that do; exits 1 when any shared outcome differs, 2 when the stores share no finished cell.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.store import OUTCOME_COLUMNS, Store  # noqa: E402


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(before: Store, after: Store) -> tuple[int, int, list[str]]:
    """(cells compared, outcomes compared, a line for each cell whose outcomes differ)."""
    finished = {c["cell_id"]: c for c in before.db.execute(
        "SELECT cell_id, task, defense, attack FROM cells WHERE status = 'done'")}
    shared = [row for row in after.db.execute(
        "SELECT cell_id FROM cells WHERE status = 'done'") if row[0] in finished]
    outcomes, differing = 0, []
    for (cell_id,) in shared:
        old = {o["example_index"]: o for o in before.outcomes(cell_id)}
        new = {o["example_index"]: o for o in after.outcomes(cell_id)}
        columns, examples = set(), 0
        for index in old.keys() & new.keys():
            outcomes += 1
            changed = [c for c in OUTCOME_COLUMNS if not same(old[index][c], new[index][c])]
            columns.update(changed)
            examples += bool(changed)
        if examples or old.keys() != new.keys():
            cell = finished[cell_id]
            differing.append(f"{cell['task']} / {cell['defense']} / {cell['attack'] or 'clean'}: "
                             f"{examples} of {len(old.keys() & new.keys())} examples differ "
                             f"({', '.join(sorted(columns)) or 'examples sampled differ'})")
    return len(shared), outcomes, differing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = Store(args.before, read_only=True), Store(args.after, read_only=True)
    cells, outcomes, differing = compare(before, after)
    if not cells:
        print("the two stores share no finished cell: nothing to compare", file=sys.stderr)
        return 2
    print(f"{cells} cells and {outcomes} outcomes in both; {len(differing)} cells differ")
    for line in differing:
        print(f"  {line}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
