"""The Postgres checkpointer, so several server workers share conversations.

``langgraph-checkpoint-postgres`` (extra ``server``) keeps threads in one PostgreSQL database: a
conversation started on one worker continues on any other. The saver runs on a psycopg connection
pool; its tables are created once (``setup()``), under a Postgres advisory lock (polled) so
workers starting together do not race on the migrations.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["open_postgres_checkpointer"]

CONNECT_TEMPLATE = "Cannot use the Postgres checkpointer at {url}: {reason}"
_SETUP_LOCK_KEY = 0x5A4F4F4D  # "ZOOM": advisory lock id for the one-time setup


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _try_lock(conn: Any) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_SETUP_LOCK_KEY,)).fetchone()
    return bool(row and row["ok"])


def open_postgres_checkpointer(url: str, *, max_size: int = 8) -> Any:
    """A :class:`langgraph.checkpoint.postgres.PostgresSaver` on a connection pool.

    Args:
        url: ``postgresql://user:password@host:port/database``.
        max_size: Largest pool size (runs executing at once plus a few).

    Returns:
        The saver, set up; ``saver.zoomearth_close()`` closes its pool.

    Raises:
        MissingExtraError: The extra is not installed.
        ConfigError: The database cannot be reached or set up.
    """
    from zoomearth.errors import ConfigError, MissingExtraError

    try:
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool
    except ImportError as exc:
        raise MissingExtraError(exc.name or "langgraph-checkpoint-postgres", "server",
                                "The Postgres checkpointer (postgres_url)") from None
    import psycopg

    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=max(2, max_size),
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=False,
    )
    try:
        pool.open(wait=True, timeout=30)
        saver = PostgresSaver(pool)  # type: ignore[arg-type]
        with pool.connection() as conn:
            # Poll with try-lock: a session blocked in pg_advisory_lock holds a transaction open,
            # and the migrations' CREATE INDEX CONCURRENTLY would wait for it (a deadlock).
            deadline = time.monotonic() + 120
            while not _try_lock(conn):
                if time.monotonic() > deadline:
                    raise TimeoutError("another worker holds the checkpointer setup lock")
                time.sleep(0.2)
            try:
                saver.setup()
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_KEY,))
    except (psycopg.Error, OSError, TimeoutError) as exc:
        pool.close()
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ConfigError(CONNECT_TEMPLATE.format(url=_redact(url), reason=reason)) from None
    except Exception:
        pool.close()
        raise
    saver.zoomearth_close = pool.close  # type: ignore[attr-defined]
    return saver
