"""Temporary files that name their owner, so a later process can tell litter from work in flight.

Every partial file the project writes (atomic outputs, prepared scene copies, uploads, synthetic
scenes) lives beside its destination under a hidden name that records who writes it::

    .NAME.tmp-HOST-PID-RANDOM.EXT      e.g.  .mask.tif.tmp-3fa9c2d1-48211-9b1c0e.tif

``HOST`` is a short hash of the host name and ``PID`` the writing process. A process killed with
SIGKILL (or a power cut) cannot remove its temporaries; the next process that starts on the same
directory calls :func:`sweep_stale_temporaries`, which removes exactly the temporaries whose owner
is gone: same host and no live process with that PID. Temporaries of another host (a shared
network disk) and of live processes are never touched. A PID reused by an unrelated live process
keeps its file until that process ends: the sweep errs on the side of keeping data.

GDAL sidecars of a temporary (``.x.tif.tmp-…tif.aux.xml``) carry the same prefix and are swept
with it. Temporaries written by older versions (no owner in the name) are swept once they are
more than :data:`LEGACY_STALE_AFTER_S` old.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LEGACY_STALE_AFTER_S",
    "Swept",
    "is_temporary_name",
    "owner_alive",
    "stale_temporaries",
    "sweep_stale_temporaries",
    "temporary_sibling",
]

LEGACY_STALE_AFTER_S = 24 * 3600.0

# .NAME.tmp-HOST-PID-RANDOM... (anything may follow: the kept extension, GDAL sidecar suffixes).
_OWNED_RE = re.compile(r"^\..+?\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d{1,10})-[0-9a-f]{6,}")
# Names of earlier versions: .NAME.tmp-RANDOM.EXT (outputs), .NAME.tmpPID (scene cache),
# NAME.json.tmp (cache metadata), .part-*.EXT / *.part (server uploads).
_LEGACY_RE = re.compile(
    r"^(\..+\.tmp-?[0-9a-f]+.*|.+\.json\.tmp|\.part-.+|tmp[a-z0-9_]+\.part)$"
)


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


HOST_TAG = _host_tag()


def temporary_sibling(final: str | os.PathLike[str], *, keep_suffix: bool = True) -> Path:
    """A fresh hidden temporary path beside ``final`` that records this host and process.

    Args:
        final: The destination the temporary will be renamed onto.
        keep_suffix: Keep ``final``'s extension at the end (format-sniffing writers need it).

    Returns:
        ``final.parent / ".NAME.tmp-HOST-PID-RANDOM[.EXT]"``; the file does not exist yet.
    """
    final = Path(final)
    suffix = final.suffix if keep_suffix else ""
    return final.with_name(
        f".{final.name}.tmp-{HOST_TAG}-{os.getpid()}-{secrets.token_hex(6)}{suffix}"
    )


def is_temporary_name(name: str) -> bool:
    """Whether a file name is one of our temporaries (current or legacy naming)."""
    return bool(_OWNED_RE.match(name) or _LEGACY_RE.match(name))


def owner_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (True when unsure)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return True
    return True


def _is_stale(path: Path, now: float) -> bool:
    match = _OWNED_RE.match(path.name)
    if match is not None:
        return match["host"] == HOST_TAG and not owner_alive(int(match["pid"]))
    if _LEGACY_RE.match(path.name):
        try:
            return now - path.lstat().st_mtime > LEGACY_STALE_AFTER_S
        except OSError:
            return False
    return False


def _candidates(directory: Path, recursive: bool) -> Iterator[Path]:
    if not directory.is_dir():
        return
    walker = directory.rglob("*") if recursive else directory.iterdir()
    with contextlib.suppress(OSError):
        for path in walker:
            if path.is_file() and not path.is_symlink() and is_temporary_name(path.name):
                yield path


def stale_temporaries(directory: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Temporaries in ``directory`` whose owner is gone (see the module docstring)."""
    now = time.time()
    return sorted(p for p in _candidates(Path(directory), recursive) if _is_stale(p, now))


@dataclass(frozen=True)
class Swept:
    """What :func:`sweep_stale_temporaries` removed."""

    files: int = 0
    bytes: int = 0

    def __add__(self, other: Swept) -> Swept:
        return Swept(self.files + other.files, self.bytes + other.bytes)


def sweep_stale_temporaries(
    directory: str | os.PathLike[str], *, recursive: bool = False
) -> Swept:
    """Remove the temporaries in ``directory`` whose owner is gone; never raises.

    Args:
        directory: Folder to sweep (missing folders are fine).
        recursive: Also sweep sub-folders (e.g. every run folder under ``runs_dir``).

    Returns:
        How many files and bytes were removed.
    """
    files = size = 0
    for path in stale_temporaries(directory, recursive=recursive):
        try:
            n = path.lstat().st_size
            path.unlink()
        except OSError:
            continue
        files += 1
        size += n
    return Swept(files, size)
