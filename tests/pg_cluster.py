"""A throwaway PostgreSQL cluster for tests (the server's checkpointer, the local STAC API).

The cluster is created in a temporary folder with ``initdb`` + ``pg_ctl`` (run as the
``postgres`` user when the tests run as root), listens on a free loopback port, and is removed
afterwards. Debian's ``postgresql`` package provides the binaries; ``make test`` installs it when
missing. Without it the test fails with what to install (CI allows no unexpected skips).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MISSING_PG = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's 'postgresql' "
    "package (make test installs it when run as root)."
)


def pg_bin(name: str) -> str:
    """The path of a PostgreSQL server binary (PATH, else Debian's versioned folder)."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        pytest.fail(MISSING_PG)
    return found


def as_pg_user(cmd: list[str]) -> list[str]:
    """``cmd`` run as the ``postgres`` user when this process is root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_cluster(prefix: str = "zoomearth-pg-") -> Iterator[str]:
    """Start a cluster; yields its URL ``postgresql://postgres@127.0.0.1:PORT/postgres``."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    data = root / "data"
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    try:
        subprocess.run(as_pg_user([initdb, "-D", str(data), "-A", "trust", "-U", "postgres",
                                   "-E", "UTF8", "--no-sync"]), **run)
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(as_pg_user([pg_ctl, "-D", str(data), "-o", opts, "-l",
                                   str(root / "log"), "-w", "-t", "60", "start"]), **run)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start a PostgreSQL cluster: {exc.stderr or exc.stdout}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_pg_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
