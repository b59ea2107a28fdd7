"""The results store: one SQLite file holding run manifests, cells and per-example outcomes.

Outcomes are written a batch at a time in one transaction together with the batch's marker, so a
run killed at any point (Ctrl-C, kill -9) keeps every finished batch and loses no finished example;
re-running skips the batches already marked. WAL journaling lets several writers share the file.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import UsageError
from benchmark.specs import Cell, canonical_json

# Marks a file as an rbench store, so a foreign SQLite file is refused, never overwritten.
APPLICATION_ID = 0x52424E43  # "RBNC"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    suite TEXT NOT NULL,
    started_at TEXT NOT NULL,
    manifest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    defense TEXT NOT NULL,
    attack TEXT,
    threat_id TEXT NOT NULL,
    threat_description TEXT NOT NULL,
    certificate_unit TEXT,
    spec TEXT NOT NULL,
    n_batches INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'not_run')),
    reason TEXT
);
CREATE TABLE IF NOT EXISTS batches (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    batch_index INTEGER NOT NULL,
    PRIMARY KEY (cell_id, batch_index)
);
CREATE TABLE IF NOT EXISTS outcomes (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    example_index INTEGER NOT NULL,
    batch_index INTEGER NOT NULL,
    label INTEGER NOT NULL,
    clean_prediction INTEGER NOT NULL,
    adversarial_prediction INTEGER,
    success INTEGER,
    queries INTEGER,
    perturbation REAL,
    certified INTEGER,
    radius REAL,
    abstained INTEGER,
    p_lower REAL,
    adversarial_text TEXT,
    extra TEXT,
    PRIMARY KEY (cell_id, example_index)
);
"""

# The certificate audit (benchmark/audit.py), added to existing stores when they are opened. One
# audit is a cell under one budget (config_hash); its examples are written one at a time, so an
# interrupted audit resumes.
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_cells (
    audit_id INTEGER PRIMARY KEY AUTOINCREMENT,
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    randomized INTEGER NOT NULL,
    alpha REAL NOT NULL,
    UNIQUE (cell_id, config_hash)
);
CREATE TABLE IF NOT EXISTS audit_outcomes (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    config_hash TEXT NOT NULL,
    example_index INTEGER NOT NULL,
    falsified INTEGER NOT NULL,
    evidence TEXT,
    PRIMARY KEY (cell_id, config_hash, example_index)
);
"""

# The tables whose rows belong to one cell and are copied whole by `Store.merge` (audit_cells,
# keyed by its own id, is copied without it).
CELL_TABLES = ("batches", "outcomes", "batch_seconds", "build_seconds", "training_records",
               "audit_outcomes")

OUTCOME_COLUMNS = ("example_index", "label", "clean_prediction", "adversarial_prediction", "success",
                   "queries", "perturbation", "certified", "radius", "abstained", "p_lower",
                   "adversarial_text", "extra")


@dataclass(frozen=True)
class CellRecord:
    cell_id: str
    suite: str
    task: str
    model: str
    defense: str
    attack: str | None
    threat_id: str
    threat_description: str
    certificate_unit: str | None
    spec: dict
    n_batches: int
    status: str
    reason: str | None


# Where a run's time goes (`rbench run` prints it; added to older stores when they are opened): each
# batch's compute seconds, committed with the batch, and each model build's seconds (training on
# a cache miss, else loading), one row per build, so a resumed cell's builds add up.
TIMING_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_seconds (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    batch_index INTEGER NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (cell_id, batch_index)
);
CREATE TABLE IF NOT EXISTS build_seconds (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    seconds REAL NOT NULL
);
"""

# What a model's training recorded (benchmark.evaluate.training_record: e.g. its last epoch's mean
# loss), per cell that used the model; added to older stores when they are opened.
TRAINING_SCHEMA = """
CREATE TABLE IF NOT EXISTS training_records (
    cell_id TEXT PRIMARY KEY REFERENCES cells(cell_id),
    record TEXT NOT NULL
);
"""


class Store:
    """A results store; `read_only` (the leaderboard) opens an existing store without writing to
    it, so a store on a read-only file is read without leaving -wal or -shm files next to it."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        try:
            if read_only:
                self.db = sqlite3.connect(self._read_only_uri(), uri=True, timeout=60,
                                          isolation_level=None)
            else:
                self._check_writable()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if not self.path.exists():
                    self._create()
                self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self._check()
        except sqlite3.DatabaseError as error:
            raise UsageError(f"{self.path} is not a readable rbench results store ({error}); "
                             f"move it away or pass another --store path") from error

    def _check_writable(self) -> None:
        """Refuse a store this process cannot write before SQLite opens it (which would leave -wal
        and -shm files behind and fail at the first write)."""
        folder = self.path.parent
        while not folder.exists():
            folder = folder.parent
        for what, target in (("file", self.path), ("folder", folder)):
            if target.exists() and not os.access(target, os.W_OK, effective_ids=True):
                raise UsageError(f"results store {self.path}: its {what} {target} is read-only; "
                                 f"make it writable (chmod u+w {target}) or pass another --store "
                                 f"path")

    def _read_only_uri(self) -> str:
        # A file nobody may write has no writer to coordinate with: `immutable` reads it without
        # the -shm file WAL readers otherwise create (unless a -wal file holds commits to read).
        wal = self.path.with_name(f"{self.path.name}-wal")
        immutable = not os.access(self.path, os.W_OK, effective_ids=True) and not wal.exists()
        return f"{self.path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")

    def _create(self) -> None:
        """Build the schema in a side file and rename it into place, so a run killed while
        creating the store never leaves a half-made file that a resume would refuse."""
        partial = self.path.with_name(f"{self.path.name}.partial{os.getpid()}")
        db = sqlite3.connect(partial, isolation_level=None)
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.executescript(SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")
        db.close()
        try:  # link, not rename: of two processes creating the store at once, the first one wins
            os.link(partial, self.path)
        except FileExistsError:
            pass
        finally:
            partial.unlink()

    def _check(self) -> None:
        application_id = self.db.execute("PRAGMA application_id").fetchone()[0]
        if application_id != APPLICATION_ID:
            raise UsageError(f"{self.path} is an SQLite file but not an rbench results store; "
                             f"it was left untouched: pass another --store path")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise UsageError(f"{self.path} has store schema {version}, this rbench reads "
                             f"{SCHEMA_VERSION}; use a new --store path")
        if self.read_only:
            return
        self.db.execute("PRAGMA journal_mode=WAL")
        # No fsync per commit (it cost ~6 ms a batch, a third of a small model's clean cell): in WAL
        # mode a commit still survives the process being killed and stays atomic; only an OS crash
        # or power loss can roll back the last batches, which a re-run then recomputes.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(AUDIT_SCHEMA)
        self.db.executescript(TIMING_SCHEMA)
        self.db.executescript(TRAINING_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # Runs ------------------------------------------------------------------------------------
    def add_run(self, suite: str, started_at: str, manifest: dict) -> int:
        cursor = self.db.execute("INSERT INTO runs (suite, started_at, manifest) VALUES (?, ?, ?)",
                                 (suite, started_at, canonical_json(manifest)))
        return cursor.lastrowid

    def runs(self, suite: str) -> list[dict]:
        rows = self.db.execute("SELECT * FROM runs WHERE suite = ? ORDER BY run_id", (suite,))
        return [{**dict(row), "manifest": json.loads(row["manifest"])} for row in rows]

    # Cells -----------------------------------------------------------------------------------
    def open_cell(self, suite: str, cell: Cell, n_batches: int, threat_description: str,
                  certificate_unit: str | None) -> None:
        """Register a cell (idempotent); a failed cell is retried, a finished one is left alone.
        A cell already running or done is only read: a resumed suite writes nothing for it here."""
        if self.cell_status(cell.id) in ("running", "done"):
            return
        self.db.execute(
            "INSERT INTO cells (cell_id, suite, task, model, defense, attack, threat_id, "
            "threat_description, certificate_unit, spec, n_batches, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running') "
            "ON CONFLICT(cell_id) DO UPDATE SET status = 'running', reason = NULL "
            "WHERE status IN ('failed', 'not_run')",
            (cell.id, suite, cell.task_label, cell.model.name, cell.defense_label, cell.attack_label,
             cell.threat_id, threat_description, certificate_unit, canonical_json(cell.to_dict()),
             n_batches))

    def cell_status(self, cell_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
        return row["status"] if row else None

    def finish_cell(self, cell_id: str) -> None:
        self.db.execute("UPDATE cells SET status = 'done' WHERE cell_id = ? AND status != 'done'",
                        (cell_id,))

    def fail_cell(self, cell_id: str, reason: str, status: str = "failed") -> None:
        self.db.execute("UPDATE cells SET status = ?, reason = ? WHERE cell_id = ?",
                        (status, reason, cell_id))

    def cells(self, suite: str, status: str | None = None) -> list[CellRecord]:
        query = "SELECT * FROM cells WHERE suite = ?"
        args: tuple = (suite,)
        if status is not None:
            query += " AND status = ?"
            args += (status,)
        rows = self.db.execute(query + " ORDER BY task, defense, attack", args).fetchall()
        return [CellRecord(**{**dict(row), "spec": json.loads(row["spec"])}) for row in rows]

    # Outcomes --------------------------------------------------------------------------------
    def done_batches(self, cell_id: str) -> set[int]:
        rows = self.db.execute("SELECT batch_index FROM batches WHERE cell_id = ?", (cell_id,))
        return {row[0] for row in rows}

    def write_batch(self, cell_id: str, batch_index: int, outcomes: list[dict],
                    seconds: float | None = None) -> bool:
        """Write a batch's outcomes and its marker (with the `seconds` it took to compute, when
        given) atomically: all of them or none. Returns False, writing nothing, when another writer
        committed the batch first (two runs sharing a store compute the same seeded outcomes, so
        the first copy stands)."""
        placeholders = ", ".join("?" for _ in range(len(OUTCOME_COLUMNS) + 2))
        rows = [(cell_id, batch_index, *map(_sql_value, map(o.get, OUTCOME_COLUMNS)))
                for o in outcomes]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self.db.execute("SELECT 1 FROM batches WHERE cell_id = ? AND batch_index = ?",
                               (cell_id, batch_index)).fetchone():
                self.db.execute("ROLLBACK")
                return False
            self.db.executemany(
                f"INSERT INTO outcomes (cell_id, batch_index, {', '.join(OUTCOME_COLUMNS)}) "
                f"VALUES ({placeholders})", rows)
            self.db.execute("INSERT INTO batches (cell_id, batch_index) VALUES (?, ?)",
                            (cell_id, batch_index))
            if seconds is not None:
                self.db.execute("INSERT INTO batch_seconds (cell_id, batch_index, seconds) "
                                "VALUES (?, ?, ?)", (cell_id, batch_index, seconds))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return True

    def add_build_seconds(self, cell_id: str, seconds: float) -> None:
        self.db.execute("INSERT INTO build_seconds (cell_id, seconds) VALUES (?, ?)",
                        (cell_id, seconds))

    def add_training_record(self, cell_id: str, record: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO training_records (cell_id, record) VALUES (?, ?)",
                        (cell_id, canonical_json(record)))

    def training_record(self, cell_id: str) -> dict | None:
        """The training record of the cell's model, or None (none recorded, or a store opened
        read-only from before the table existed)."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                               "name = 'training_records'").fetchone():
            return None
        row = self.db.execute("SELECT record FROM training_records WHERE cell_id = ?",
                              (cell_id,)).fetchone()
        return json.loads(row["record"]) if row else None

    def cell_seconds(self, suite: str) -> list[dict]:
        """Each cell's recorded build and batch seconds (summed over the runs that did its work),
        slowest first; cells with no recorded time are left out."""
        rows = self.db.execute(
            "SELECT c.task, c.model, c.defense, c.attack, c.status, "
            "COALESCE((SELECT SUM(seconds) FROM build_seconds b WHERE b.cell_id = c.cell_id), 0) "
            "AS build, "
            "COALESCE((SELECT SUM(seconds) FROM batch_seconds t WHERE t.cell_id = c.cell_id), 0) "
            "AS batches FROM cells c WHERE c.suite = ?", (suite,)).fetchall()
        cells = [dict(row) for row in rows if row["build"] or row["batches"]]
        return sorted(cells, key=lambda cell: -(cell["build"] + cell["batches"]))

    def outcomes(self, cell_id: str) -> list[dict]:
        rows = self.db.execute(
            f"SELECT batch_index, {', '.join(OUTCOME_COLUMNS)} FROM outcomes WHERE cell_id = ? "
            "ORDER BY example_index", (cell_id,))
        result = []
        for row in rows:
            record = dict(row)
            record["extra"] = json.loads(record["extra"]) if record["extra"] else {}
            result.append(record)
        return result

    def merge(self, suite: str, source: str | Path) -> dict:
        """Copy from another store every cell of `suite` that is finished there (done or not run)
        and not done here, with its outcomes, timings, training record and audits, and the
        suite's runs not already here; one transaction, so an interrupted merge copies nothing.
        Cells are keyed by their specs, so stores of one suite's tasks run on different machines
        (`rbench run --task`) complete each other. A cell done here is kept as it is."""
        Store(source, read_only=True).close()  # refuse a file that is not a readable store
        source_uri = f"{Path(source).resolve().as_uri()}?mode=ro"
        self.db.execute("ATTACH DATABASE ? AS source", (source_uri,))
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                counts = self._merge_attached(suite)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        finally:
            self.db.execute("DETACH DATABASE source")
        return counts

    def _merge_attached(self, suite: str) -> dict:
        source_tables = {row[0] for row in self.db.execute(
            "SELECT name FROM source.sqlite_master WHERE type = 'table'")}
        self.db.execute("CREATE TEMP TABLE merged AS SELECT cell_id FROM source.cells s WHERE "
                        "s.suite = ? AND s.status IN ('done', 'not_run') AND NOT EXISTS (SELECT 1 "
                        "FROM main.cells c WHERE c.cell_id = s.cell_id AND c.status = 'done')",
                        (suite,))
        try:
            merged = "cell_id IN (SELECT cell_id FROM temp.merged)"
            # A cell here that is unfinished loses its partial batches to the finished copy.
            for table in (*CELL_TABLES, "audit_cells"):
                self.db.execute(f"DELETE FROM main.{table} WHERE {merged}")
            self.db.execute(f"INSERT OR REPLACE INTO main.cells SELECT * FROM source.cells "
                            f"WHERE {merged}")
            for table in CELL_TABLES:
                if table in source_tables:
                    self.db.execute(f"INSERT INTO main.{table} SELECT * FROM source.{table} "
                                    f"WHERE {merged}")
            if "audit_cells" in source_tables:
                self.db.execute("INSERT INTO main.audit_cells (cell_id, config_hash, config, "
                                "randomized, alpha) SELECT cell_id, config_hash, config, "
                                f"randomized, alpha FROM source.audit_cells WHERE {merged} "
                                "ORDER BY audit_id")
            runs = self.db.execute(
                "INSERT INTO main.runs (suite, started_at, manifest) SELECT suite, started_at, "
                "manifest FROM source.runs s WHERE s.suite = ? AND NOT EXISTS (SELECT 1 FROM "
                "main.runs r WHERE r.suite = s.suite AND r.started_at = s.started_at AND "
                "r.manifest = s.manifest) ORDER BY run_id", (suite,)).rowcount
            statuses = self.db.execute("SELECT status, COUNT(*) FROM main.cells WHERE cell_id IN "
                                       "(SELECT cell_id FROM temp.merged) GROUP BY status")
            return {**{status: count for status, count in statuses}, "runs": runs}
        finally:
            self.db.execute("DROP TABLE temp.merged")

    # Certificate audits ----------------------------------------------------------------------
    def open_audit(self, cell_id: str, config_hash: str, config: dict, randomized: bool,
                   alpha: float) -> None:
        self.db.execute("INSERT OR IGNORE INTO audit_cells (cell_id, config_hash, config, "
                        "randomized, alpha) VALUES (?, ?, ?, ?, ?)",
                        (cell_id, config_hash, canonical_json(config), int(randomized), alpha))

    def audit_opened(self, cell_id: str, config_hash: str) -> bool:
        return self.db.execute("SELECT 1 FROM audit_cells WHERE cell_id = ? AND config_hash = ?",
                               (cell_id, config_hash)).fetchone() is not None

    def audited_examples(self, cell_id: str, config_hash: str) -> set[int]:
        rows = self.db.execute("SELECT example_index FROM audit_outcomes WHERE cell_id = ? AND "
                               "config_hash = ?", (cell_id, config_hash))
        return {row[0] for row in rows}

    def write_audit(self, cell_id: str, config_hash: str, example_index: int, falsified: bool,
                    evidence: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO audit_outcomes (cell_id, config_hash, example_index, "
                        "falsified, evidence) VALUES (?, ?, ?, ?, ?)",
                        (cell_id, config_hash, int(example_index), int(falsified),
                         canonical_json(evidence)))

    def latest_audit(self, cell_id: str) -> dict | None:
        """The cell's most recently started audit with its examples, or None."""
        audit = self.db.execute("SELECT * FROM audit_cells WHERE cell_id = ? ORDER BY audit_id DESC "
                                "LIMIT 1", (cell_id,)).fetchone()
        if audit is None:
            return None
        rows = self.db.execute("SELECT example_index, falsified, evidence FROM audit_outcomes WHERE "
                               "cell_id = ? AND config_hash = ? ORDER BY example_index",
                               (cell_id, audit["config_hash"])).fetchall()
        examples = [{"example_index": r["example_index"], "falsified": bool(r["falsified"]),
                     "evidence": json.loads(r["evidence"]) if r["evidence"] else {}} for r in rows]
        return {"config_hash": audit["config_hash"], "config": json.loads(audit["config"]),
                "randomized": bool(audit["randomized"]), "alpha": audit["alpha"],
                "checked": len(examples), "falsified": sum(e["falsified"] for e in examples),
                "examples": examples}


def _sql_value(value):
    if value is None or type(value) in (int, float, str):  # most values, first
        return value
    if isinstance(value, dict):
        return canonical_json(value) if value else None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value
