"""One writer per thread: a per-thread OS file lock, plus a PostgreSQL advisory lock when shared.

A run of a thread (:meth:`zoomearth.api.Agent.ask` / :meth:`~zoomearth.api.Agent.resume`) holds
the thread's lock from before it reads the checkpoint until it returns, so two processes (two
``zoomearth ask``, or the CLI and the server) never run the same step of one thread twice.

* **File lock** (always): ``DATA_DIR/locks/<sha256 of the thread id>.lock``, locked with
  ``flock(LOCK_EX | LOCK_NB)`` on a fresh open file description, so it excludes other processes
  *and* other threads of the same process. While held, the file holds one JSON object naming the
  holder (``pid``, ``host``, ``started``, ``command``, ``thread``); a clean release empties the file
  before unlocking. The kernel drops the lock of a process that dies (SIGKILL included), so a lock
  file that can be locked but still names a holder was left by a killed run: it is taken over and
  the caller is told (:attr:`ThreadLock.taken_over`). Lock files are never deleted (deleting a
  lock file races with a process that has just opened it).
* **PostgreSQL advisory lock** (when the checkpointer is a ``PostgresSaver`` on a connection pool,
  i.e. server workers on several hosts sharing one database): ``pg_try_advisory_lock(key)`` on a
  pool connection held for the run (:class:`PgAdvisoryLock`); PostgreSQL drops it when the
  holding session ends, so a killed worker frees it too.

Both are non-blocking: a second writer is refused at once with :class:`ThreadBusy`, which names
the live holder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LockHolder",
    "PgAdvisoryLock",
    "ThreadBusy",
    "ThreadLock",
    "lock_path",
    "pg_lock_key",
    "running_holder",
]

#: How long an acquirer retries when the lock is held but names no holder yet (a holder between
#: its flock and its write, or a :func:`running_holder` probe).
_EMPTY_HOLDER_RETRY_S = 1.0


@dataclass(frozen=True)
class LockHolder:
    """The process that holds (or held) a thread's lock."""

    pid: int
    host: str
    started: str
    command: str
    thread: str

    @classmethod
    def current(cls, thread: str) -> LockHolder:
        """This process, starting now."""
        now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=now.isoformat().replace("+00:00", "Z"),
            command=" ".join(sys.argv)[:500] or sys.executable,
            thread=thread,
        )

    def alive(self) -> bool | None:
        """Whether the process still exists (None when it ran on another host)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self) -> str:
        """``process 123 on host h (started ..., command: ...)``."""
        where = f"process {self.pid}"
        if self.host != socket.gethostname():
            where += f" on host {self.host}"
        return f"{where} (started {self.started}, command: {self.command})"


class ThreadBusy(Exception):
    """The thread's lock is held by a live run (``holder`` names it when known)."""

    def __init__(self, thread: str, holder: LockHolder | None, where: str = "") -> None:
        self.thread = thread
        self.holder = holder
        self.where = where
        super().__init__(thread, holder, where)


def lock_path(lock_dir: str | Path, thread: str) -> Path:
    """The lock file of ``thread`` under ``lock_dir`` (the thread id hashed: any id is safe)."""
    digest = hashlib.sha256(thread.encode("utf-8")).hexdigest()[:40]
    return Path(lock_dir) / f"{digest}.lock"


def _parse_holder(text: str) -> LockHolder | None:
    try:
        data = json.loads(text)
        return LockHolder(
            pid=int(data["pid"]),
            host=str(data.get("host", "")),
            started=str(data.get("started", "")),
            command=str(data.get("command", "")),
            thread=str(data.get("thread", "")),
        )
    except (ValueError, TypeError, KeyError):
        return None


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace").strip()


def _read_holder(path: Path) -> LockHolder | None:
    try:
        text = path.read_text("utf-8", errors="replace").strip()
    except OSError:
        return None
    return _parse_holder(text) if text else None


class ThreadLock:
    """The exclusive, non-blocking file lock of one thread (a context manager).

    Args:
        lock_dir: Folder of the lock files (created when missing).
        thread: The thread id.
    """

    def __init__(self, lock_dir: str | Path, thread: str) -> None:
        self.thread = thread
        self.path = lock_path(lock_dir, thread)
        self.holder: LockHolder | None = None
        #: The holder recorded by a run that died without releasing the lock (after acquire).
        self.taken_over: LockHolder | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> ThreadLock:
        """Take the lock now or raise.

        Raises:
            ThreadBusy: Another process (or another thread of this process) holds it.
            RuntimeError: This object already holds it.
        """
        import fcntl

        if self._fd is not None:
            raise RuntimeError(f"the lock of thread {self.thread!r} is already held")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + _EMPTY_HOLDER_RETRY_S
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = _read_holder(self.path)
                    # Nobody named yet, or a dead holder (a probe, or a run starting): retry.
                    settling = holder is None or holder.alive() is False
                    if settling and time.monotonic() < deadline:
                        time.sleep(0.02)
                        continue
                    raise ThreadBusy(self.thread, holder) from None
            left = _read_fd(fd)
            self.taken_over = _parse_holder(left) if left else None
            me = LockHolder.current(self.thread)
            data = json.dumps(asdict(me)).encode("utf-8")
            os.ftruncate(fd, 0)
            os.pwrite(fd, data + b"\n", 0)
        except BaseException:
            os.close(fd)  # closing drops the flock too
            raise
        self._fd = fd
        self.holder = me
        return self

    def release(self) -> None:
        """Empty the file (a clean end) and unlock; a no-op when not held."""
        import fcntl

        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> ThreadLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def running_holder(lock_dir: str | Path, thread: str) -> LockHolder | None:
    """The live run of ``thread``, or None when no process holds its lock.

    The probe takes a shared lock for an instant (it never blocks, and an acquirer that meets it
    retries), so it does not disturb a run starting at the same time.
    """
    import fcntl

    path = lock_path(lock_dir, thread)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            return holder or LockHolder(pid=0, host="", started="?", command="?", thread=thread)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
def pg_lock_key(thread: str) -> int:
    """A signed 64-bit advisory-lock key for ``thread`` (stable across processes and hosts)."""
    digest = hashlib.sha256(b"zoomearth-thread:" + thread.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PgAdvisoryLock:
    """``pg_try_advisory_lock`` of one thread, on a pool connection held for the run.

    Args:
        pool: A ``psycopg_pool.ConnectionPool`` (``PostgresSaver.conn``) whose connections use
            autocommit (a session-level advisory lock outlives transactions).
        thread: The thread id.
    """

    def __init__(self, pool: Any, thread: str) -> None:
        self.pool = pool
        self.thread = thread
        self.key = pg_lock_key(thread)
        self._conn: Any = None

    def acquire(self) -> PgAdvisoryLock:
        """Take the lock now or raise :class:`ThreadBusy` (naming the database session)."""
        conn = self.pool.getconn()
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (self.key,)).fetchone()
            if not _first(row, "ok"):
                holder = conn.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objsubid = 1 AND classid = %s AND objid = %s LIMIT 1",
                    ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
                ).fetchone()
                pid = _first(holder, "pid")
                where = "another server worker sharing the PostgreSQL checkpointer" + (
                    f" (database session {pid})" if pid else ""
                )
                raise ThreadBusy(self.thread, None, where)
        except BaseException:
            self.pool.putconn(conn)
            raise
        self._conn = conn
        return self

    def release(self) -> None:
        """Unlock and give the connection back (closed first when the unlock fails)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except Exception:  # noqa: BLE001 - a closed session holds no lock any more
            with contextlib.suppress(Exception):
                conn.close()
        finally:
            self.pool.putconn(conn)

    def __enter__(self) -> PgAdvisoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _first(row: Any, name: str) -> Any:
    if row is None:
        return None
    if isinstance(row, dict):
        return row.get(name)
    return row[0]
