"""The local allocation table's SQLite schema, and bringing a home made by an earlier version
up to it, so that every process opening ``state.db`` sees the same columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from meadowrun_core.local.sqlite_db import SqliteDb

# Resource columns beyond CPU and memory (added to tables made by earlier versions).
_INSTANCE_RESOURCE_COLUMNS = {
    "gpus_total": "REAL NOT NULL DEFAULT 0",
    "gpus_free": "REAL NOT NULL DEFAULT 0",
    "gpu_memory_gb": "REAL NOT NULL DEFAULT 0",
    "flags": "TEXT NOT NULL DEFAULT '[]'",
    "arch": "TEXT NOT NULL DEFAULT ''",
    "is_spot": "INTEGER NOT NULL DEFAULT 0",
    "interruption_probability": "REAL NOT NULL DEFAULT 0",
    "custom_total": "TEXT NOT NULL DEFAULT '{}'",
    "custom_free": "TEXT NOT NULL DEFAULT '{}'",
}
_ALLOCATION_RESOURCE_COLUMNS = {
    "gpus": "REAL NOT NULL DEFAULT 0",
    "custom": "TEXT NOT NULL DEFAULT '{}'",
}
_ADDED_COLUMNS = {
    "job_keys": {"submitter": "TEXT NOT NULL DEFAULT ''"},
    "instances": _INSTANCE_RESOURCE_COLUMNS,
    "allocations": _ALLOCATION_RESOURCE_COLUMNS,
}


_BASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    instance_type TEXT NOT NULL,
    cpu_total REAL NOT NULL,
    memory_total REAL NOT NULL,
    cpu_free REAL NOT NULL,
    memory_free REAL NOT NULL,
    address TEXT,
    agent_pid INTEGER,
    price_per_hour REAL NOT NULL,
    prevent_further_allocation INTEGER NOT NULL DEFAULT 0,
    interruption_at REAL,
    created REAL NOT NULL,
    last_heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS allocations (
    job_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    cpu REAL NOT NULL,
    memory_gb REAL NOT NULL,
    worker_pid INTEGER,
    created REAL NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS allocations_by_instance ON allocations(instance_id);
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    lease_expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_history (
    job_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    client_id TEXT NOT NULL,
    description TEXT NOT NULL,
    cpu REAL NOT NULL,
    memory_gb REAL NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    outcome TEXT NOT NULL,
    price_per_hour REAL NOT NULL,
    instance_cpu REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS job_history_by_job ON job_history(job_id);
CREATE TABLE IF NOT EXISTS raffle (
    ticket TEXT PRIMARY KEY,
    priority REAL NOT NULL,
    client_id TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_keys (
    job_key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    instance_id TEXT,
    status TEXT NOT NULL,
    final TEXT,
    payload_key TEXT,
    created REAL NOT NULL,
    ended REAL,
    submitter TEXT NOT NULL DEFAULT ''
);
"""


def _full_schema() -> str:
    """The base tables with every added column, so a database created now (or recreated
    after its file was deleted or damaged, local/sqlite_db.py) has all of them at once."""
    schema = _BASE_SCHEMA
    for table, columns in _ADDED_COLUMNS.items():
        head = f"CREATE TABLE IF NOT EXISTS {table} ("
        start = schema.index(head)
        end = schema.index("\n);", start)
        have = schema[start:end]
        added = "".join(
            f",\n    {name} {kind}"
            for name, kind in columns.items()
            if f"\n    {name} " not in have
        )
        schema = schema[:end] + added + schema[end:]
    return schema


SCHEMA = _full_schema()


def open_allocation_db(path: Path) -> SqliteDb:
    """``state.db`` at ``path``, created or brought up to this schema."""
    db = SqliteDb(path, SCHEMA)
    _add_missing_columns(db)
    return db


def _add_missing_columns(db: SqliteDb) -> None:
    """Bring a state directory made by an earlier version up to this schema. Checked and
    changed in one write transaction: processes opening a new home at the same time would
    otherwise both add the same column (``duplicate column name``)."""
    if not _missing_columns(db.connection()):
        return  # the common case: no write lock taken
    with db.transaction() as conn:
        for table, name, kind in _missing_columns(conn):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    found = []
    for table, columns in _ADDED_COLUMNS.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        found += [(table, n, kind) for n, kind in columns.items() if n not in have]
    return found
