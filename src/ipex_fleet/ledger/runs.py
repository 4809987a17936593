"""The fleet ledger: SQLite at .ipex-fleet/ledger.sqlite3, written as a run goes.

Runs, their waves, each host's result (previous, target and final generation, flake hash,
timings, health). Each write commits at once, so a killed controller loses nothing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ipex_fleet.domain import HostResult
from ipex_fleet.common.files import state_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, inventory TEXT, deploy TEXT, options TEXT,
    status TEXT NOT NULL, started REAL NOT NULL, finished REAL, message TEXT);
CREATE TABLE IF NOT EXISTS waves (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL, hosts TEXT NOT NULL,
    max_fail TEXT NOT NULL, status TEXT NOT NULL, started REAL, finished REAL,
    PRIMARY KEY (run_id, idx));
CREATE TABLE IF NOT EXISTS host_results (
    run_id TEXT NOT NULL, host TEXT NOT NULL, phase TEXT NOT NULL, wave INTEGER, status TEXT NOT NULL,
    previous_generation INTEGER, previous_path TEXT, target_generation INTEGER, target_path TEXT,
    final_generation INTEGER, final_path TEXT, flake_hash TEXT, health TEXT, timings TEXT, error TEXT,
    recorded REAL NOT NULL, PRIMARY KEY (run_id, host, phase));
CREATE TABLE IF NOT EXISTS failure_signatures (
    flake_hash TEXT NOT NULL, signature TEXT NOT NULL, host TEXT NOT NULL, run_id TEXT NOT NULL,
    recorded REAL NOT NULL, PRIMARY KEY (flake_hash, signature, host, run_id));
CREATE TABLE IF NOT EXISTS breakers (
    flake_hash TEXT PRIMARY KEY, signature TEXT NOT NULL, seen TEXT NOT NULL, opened REAL NOT NULL,
    reset REAL);
"""
# Columns added since the first ledger: added to an older file on open (so inserts name their columns).
WAVE_COLUMNS = "(run_id, idx, name, hosts, max_fail, status, started, finished)"
ADDED_COLUMNS = {"host_results": (("report", "TEXT"),), "waves": (("tally", "TEXT"),)}


@dataclass(frozen=True)
class RunRow:
    run_id: str
    kind: str
    inventory: str | None
    deploy: str | None
    options: dict[str, Any]
    status: str
    started: float
    finished: float | None
    message: str | None


class Ledger:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / "ledger.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)
            for table, columns in ADDED_COLUMNS.items():
                have = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns:
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit: each write lands
        db.row_factory = sqlite3.Row
        return closing(db)  # type: ignore[return-value]

    def _execute(self, sql: str, args: tuple = ()) -> None:
        with self._db() as db:
            db.execute(sql, args)

    def _rows(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._db() as db:
            return db.execute(sql, args).fetchall()

    def start_run(self, run_id: str, kind: str, inventory: str | None, deploy: str | None,
                  options: dict[str, Any], status: str = "running") -> None:
        self._execute(*_start_row(run_id, kind, inventory, deploy, options, status))

    def finish_run(self, run_id: str, status: str, message: str | None = None) -> None:
        self._execute("UPDATE runs SET status=?, finished=?, message=? WHERE run_id=?",
                      (status, time.time(), message, run_id))

    def set_run_status(self, run_id: str, status: str, message: str | None = None) -> None:
        """A run that goes on (a paused run resumed): no end time."""
        self._execute("UPDATE runs SET status=?, finished=NULL, message=? WHERE run_id=?", (status, message, run_id))

    def plan_wave(self, run_id: str, idx: int, name: str, hosts: tuple[str, ...], max_fail: str) -> None:
        """Journal a wave once; a resumed rollout keeps the states already reached."""
        self._execute(f"INSERT OR IGNORE INTO waves {WAVE_COLUMNS} VALUES (?,?,?,?,?,?,?,?)",
                      (run_id, idx, name, json.dumps(list(hosts)), max_fail, "planned", None, None))

    def set_wave(self, run_id: str, idx: int, name: str, hosts: tuple[str, ...], max_fail: str, status: str) -> None:
        now = time.time()
        self._execute(
            f"INSERT INTO waves {WAVE_COLUMNS} VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(run_id, idx) DO UPDATE SET status=excluded.status,"
            " started=COALESCE(waves.started, excluded.started),"
            " finished=CASE WHEN excluded.status IN ('done','halted') THEN excluded.finished ELSE NULL END",
            (run_id, idx, name, json.dumps(list(hosts)), max_fail, status, now, now))

    def set_tally(self, run_id: str, idx: int, counts: dict[str, Any]) -> None:
        """Each kind of trouble the wave counted (rollout.tally), as judged at its end."""
        self._execute("UPDATE waves SET tally=? WHERE run_id=? AND idx=?", (json.dumps(counts), run_id, idx))

    def record(self, result: HostResult, phase: str = "deploy", wave: int | None = None,
               run_id: str | None = None) -> None:
        self.record_all([result], phase, wave, run_id)

    def record_all(self, results: list[HostResult], phase: str = "deploy", wave: int | None = None,
                   run_id: str | None = None) -> None:
        """record for each result, in one transaction: a wave's hosts in one commit (and its fsyncs),
        not one each (40 hosts: 40 ms of a run's end here)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for result in results:
                    db.execute(*_result_row(result, phase, wave, run_id))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def record_plain(self, result: HostResult, phase: str) -> None:
        """A host result of a pyinfra run, as start_run (status "pyinfra"), record and settle_plain_run
        do it, in one transaction: one commit (and its fsyncs) a host instead of three, all or nothing."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(*_start_row(result.run_id, phase, None, None, {}, "pyinfra"))
                db.execute(*_result_row(result, phase, None, None))
                db.execute(*_settle_row(result.run_id))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- the circuit breaker (rollout.breaker) ---------------------------------------------------

    def add_failure_signature(self, flake_hash: str, signature: str, host: str, run_id: str) -> None:
        self._execute("INSERT OR IGNORE INTO failure_signatures VALUES (?,?,?,?,?)",
                      (flake_hash, signature, host, run_id, time.time()))

    def failure_signatures(self, flake_hash: str, signature: str) -> list[tuple[str, str]]:
        """(host, run id) of each failure with this signature since the flake's breaker was last reset."""
        rows = self._rows(
            "SELECT host, run_id FROM failure_signatures WHERE flake_hash=? AND signature=? AND recorded >"
            " COALESCE((SELECT reset FROM breakers WHERE flake_hash=?), 0) ORDER BY recorded",
            (flake_hash, signature, flake_hash))
        return [(r["host"], r["run_id"]) for r in rows]

    def set_breaker(self, flake_hash: str, signature: str, seen: list[tuple[str, str]]) -> None:
        self._execute("INSERT OR REPLACE INTO breakers VALUES (?,?,?,?,NULL)",
                      (flake_hash, signature, json.dumps(seen), time.time()))

    def open_breaker(self, flake_hash: str) -> sqlite3.Row | None:
        rows = self._rows("SELECT * FROM breakers WHERE flake_hash=? AND reset IS NULL", (flake_hash,))
        return rows[0] if rows else None

    def open_breakers(self) -> list[sqlite3.Row]:
        return self._rows("SELECT * FROM breakers WHERE reset IS NULL ORDER BY opened")

    def reset_breakers(self, flake_hash: str | None = None) -> int:
        """Close the breaker of one flake (a hash prefix will do), or all; the count closed."""
        with self._db() as db:
            cursor = db.execute("UPDATE breakers SET reset=? WHERE reset IS NULL AND flake_hash LIKE ?",
                                (time.time(), (flake_hash or "") + "%"))
            return cursor.rowcount

    def run(self, run_id: str) -> RunRow | None:
        rows = self._rows("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return _run_row(rows[0]) if rows else None

    def runs(self, limit: int = 20) -> list[RunRow]:
        return [_run_row(r) for r in self._rows("SELECT * FROM runs ORDER BY started DESC LIMIT ?", (limit,))]

    def waves(self, run_id: str) -> list[sqlite3.Row]:
        return self._rows("SELECT * FROM waves WHERE run_id=? ORDER BY idx", (run_id,))

    def results(self, run_id: str, phase: str | None = None) -> list[sqlite3.Row]:
        if phase:
            return self._rows("SELECT * FROM host_results WHERE run_id=? AND phase=? ORDER BY wave, host",
                              (run_id, phase))
        return self._rows("SELECT * FROM host_results WHERE run_id=? ORDER BY recorded", (run_id,))

    def last_good(self, host: str) -> sqlite3.Row | None:
        """The host's newest deploy that ended ok or unchanged."""
        rows = self._rows("SELECT * FROM host_results WHERE host=? AND phase='deploy' AND status IN ('ok','unchanged')"
                          " ORDER BY recorded DESC LIMIT 1", (host,))
        return rows[0] if rows else None

    # The phases that move a host to a generation (a soak re-probe, "check", moves nothing; a plan
    # or a status read neither): what `last` reports as where a host was left.
    MOVING_PHASES = ("deploy", "rollback", "recover")

    def last(self, host: str) -> sqlite3.Row | None:
        marks = ",".join("?" * len(self.MOVING_PHASES))
        rows = self._rows(f"SELECT * FROM host_results WHERE host=? AND phase IN ({marks})"
                          " ORDER BY recorded DESC LIMIT 1", (host, *self.MOVING_PHASES))
        return rows[0] if rows else None

    def settle_plain_run(self, run_id: str) -> None:
        """A plain pyinfra run (no rollout drives it) is finished by each host result it records: done
        while every host succeeded, failed from the first that did not. A rollout's own row is left alone."""
        self._execute(*_settle_row(run_id))

    def iter_final_generations(self, run_id: str) -> Iterator[tuple[str, int, str]]:
        """(host, generation, path) each host was left on by a run: its last phase's final generation."""
        latest: dict[str, sqlite3.Row] = {}
        for row in self.results(run_id):
            if row["final_generation"] is not None:
                latest[row["host"]] = row
        for host, row in latest.items():
            yield host, row["final_generation"], row["final_path"]


def _start_row(run_id: str, kind: str, inventory: str | None, deploy: str | None, options: dict[str, Any],
               status: str) -> tuple[str, tuple]:
    return ("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?)",
            (run_id, kind, inventory, deploy, json.dumps(options), status, time.time(), None, None))


def _result_row(result: HostResult, phase: str, wave: int | None, run_id: str | None) -> tuple[str, tuple]:
    return ("INSERT OR REPLACE INTO host_results (run_id, host, phase, wave, status, previous_generation,"
            " previous_path, target_generation, target_path, final_generation, final_path, flake_hash, health,"
            " timings, error, recorded, report) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id or result.run_id, result.host, phase, wave, result.status.value,
             result.previous.number, result.previous.path, result.target.number, result.target.path,
             result.final.number, result.final.path, result.flake_hash,
             json.dumps(result.health) if result.health is not None else None,
             json.dumps(result.timings), result.error, time.time(),
             json.dumps(result.report) if result.report is not None else None))


def _settle_row(run_id: str) -> tuple[str, tuple]:
    return ("UPDATE runs SET finished=?, status=CASE WHEN EXISTS (SELECT 1 FROM host_results r WHERE r.run_id=runs.run_id"
            " AND r.status NOT IN ('ok','unchanged')) THEN 'failed' ELSE 'done' END"
            " WHERE run_id=? AND status IN ('pyinfra','done','failed') AND kind NOT IN ('rollout')",
            (time.time(), run_id))


def _run_row(row: sqlite3.Row) -> RunRow:
    return RunRow(row["run_id"], row["kind"], row["inventory"], row["deploy"], json.loads(row["options"] or "{}"),
                  row["status"], row["started"], row["finished"], row["message"])
