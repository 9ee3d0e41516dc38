"""Shared SQLite plumbing: one private database file, WAL mode, one connection per thread.

Damage is survived, not propagated as a raw ``sqlite3.DatabaseError``: a file that is not a
database or fails its integrity check is moved aside (``<name>.damaged-<time>``) and an empty
one started, with a warning naming both files; damage found mid-operation does the same and
raises ``StateDamagedError`` naming the file and what to do. A file deleted or replaced while in
use is noticed (every ``IDENTITY_CHECK_SECONDS``) and reopened, so every process of this home
converges on the same file; instances missing from a fresh table stop by themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meadowrun_core.exceptions import StateDamagedError, StateGoneError

log = logging.getLogger(__name__)

IDENTITY_CHECK_SECONDS = 1.0


def is_damage(exc: BaseException) -> bool:
    """SQLITE_CORRUPT / SQLITE_NOTADB, as opposed to a busy or locked database."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.OperationalError | sqlite3.IntegrityError | sqlite3.ProgrammingError
    )


class _Connection(sqlite3.Connection):
    """Turns damage found by a statement into a recovery and a clear error."""

    owner: SqliteDb

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.DatabaseError as exc:
            raise self.owner.damaged(exc) from exc

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.DatabaseError as exc:
            raise self.owner.damaged(exc) from exc


class SqliteDb:
    """A SQLite file usable from many threads and processes at once.

    ``transaction()`` takes the write lock up front (BEGIN IMMEDIATE), which is what makes
    check-then-update sequences atomic across processes.
    """

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._schema = schema
        self._local = threading.local()
        self._create_file()
        try:
            conn = self.connection()
            conn.executescript(schema)
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {result}")
        except StateDamagedError:
            self.connection().executescript(schema)  # moved aside: start the empty one
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            self._recover(exc, self._local.ino)
            self.connection().executescript(schema)

    def _create_file(self) -> None:
        if not self.path.parent.is_dir():
            raise StateGoneError(
                f"the state directory {self.path.parent} was removed while in use; start "
                "again (a new client or `meadowrun install` creates it)"
            )
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    def connection(self) -> sqlite3.Connection:
        local = self._local
        conn: _Connection | None = getattr(local, "conn", None)
        now = time.monotonic()
        if conn is not None and local.pid == os.getpid():
            if now - local.checked < IDENTITY_CHECK_SECONDS:
                return conn
            local.checked = now
            if self._identity() == local.ino:
                return conn
            log.warning("%s was deleted or replaced while in use; reopening it", self.path)
            self._close_local()
            self._create_file()
            conn = self._connect()
            conn.executescript(self._schema)
            return conn
        return self._connect()

    def _identity(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except FileNotFoundError:
            return None

    def _connect(self) -> _Connection:
        local = self._local
        ino = self._identity()
        created = ino is None
        if created:
            self._create_file()
            ino = self._identity()
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, factory=_Connection)
        conn.owner = self
        local.conn, local.pid, local.ino, local.checked = conn, os.getpid(), ino, time.monotonic()
        _set_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.row_factory = sqlite3.Row
        if created:
            conn.executescript(self._schema)
        return conn

    def _close_local(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def damaged(self, exc: sqlite3.DatabaseError) -> Exception:
        """What a statement that failed with ``exc`` raises: ``exc`` itself unless the file is
        damaged; then the file is moved aside and a StateDamagedError says so."""
        if not is_damage(exc):
            return exc
        return self._recover(exc, getattr(self._local, "ino", None))

    def _recover(self, exc: BaseException, damaged_ino: int | None) -> StateDamagedError:
        self._close_local()
        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        lock_fd = os.open(
            self.path.with_name(f".{self.path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o600
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if self._identity() == damaged_ino and damaged_ino is not None:  # not yet moved
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
                self._create_file()
                log.warning(
                    "%s was damaged (%s); moved it aside to %s and started an empty one. "
                    "Instances it listed stop by themselves; `meadowrun clean` stops any left.",
                    self.path,
                    exc,
                    aside,
                )
        finally:
            os.close(lock_fd)
        return StateDamagedError(
            f"the state database {self.path} was damaged ({exc}); it was moved aside and an "
            "empty one started, and the instances it listed stop by themselves. Run the job "
            "(or command) again; `meadowrun clean` stops anything left over."
        )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")


def _set_wal(conn: sqlite3.Connection) -> None:
    """Put the connection in WAL mode. SQLite can answer "database is locked" here at once,
    without its busy handler (another process switching the file to WAL, or recovering the
    WAL of a process that was killed): wait for that as the busy timeout would (seen once in
    a chaos test that SIGKILLs agents mid-map)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            sqlite3.Connection.execute(conn, "PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
