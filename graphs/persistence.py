"""Checkpointers: SQLite by default (a file in the data directory).

Runs are invoked with ``durability="sync"``: each node's checkpoint is written before the next node
starts, so a process killed inside a tool node resumes at that node without re-running the nodes
that finished (LangGraph's default ``async`` durability lost the previous checkpoint in that case).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final

__all__ = ["DURABILITY", "open_sqlite_checkpointer"]

DURABILITY: Final = "sync"


def open_sqlite_checkpointer(path: str | Path) -> Any:
    """A :class:`langgraph.checkpoint.sqlite.SqliteSaver` on ``path`` (created when missing).

    The connection allows use from LangGraph's worker threads (``Send`` branches run in a thread
    pool); SQLite serialises writes itself, and WAL mode lets readers proceed meanwhile.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    saver = SqliteSaver(conn)
    saver.setup()
    return saver
