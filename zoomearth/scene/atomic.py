"""Atomic output paths: temporaries renamed onto the output, protected inputs, stale litter.

:func:`atomic_path` yields a hidden temporary beside the output, named for its owner, and renames
it (with the sidecars GDAL wrote beside it) onto the output only when everything succeeded; on
any exception it removes them. :func:`check_not_protected` refuses an output that is the same file
as a protected input; :func:`sweep_stale_siblings` removes the temporaries a killed process left.
See :mod:`zoomearth.scene.writing` for the whole policy.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from zoomearth.errors import OutputWriteError, ProtectedPathError
from zoomearth.scene.write_failures import _NO_ROOM_ERRNOS, write_failure
from zoomearth.temporaries import stale_temporaries, temporary_sibling

PROTECTED_TEMPLATE = (
    "Refusing to write {output}: it is the same file as the input {protected}. Tools never "
    "overwrite their input; choose another output path (for example in the run directory)."
)
NOTHING_WRITTEN_TEMPLATE = "Nothing was written to {output}; the writer produced no file."

#: Files GDAL may create beside a raster; moved with it on success and removed on failure.
SIDECAR_SUFFIXES: tuple[str, ...] = (".aux.xml", ".ovr", ".msk", ".aux")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (symlinks resolved, hard links via samefile)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: then they cannot be the same file
        return False


def check_not_protected(output: str | os.PathLike[str], protect: Iterable[Any] = ()) -> None:
    """Refuse an output path that is the same file as any protected input.

    Args:
        output: The path about to be written.
        protect: Input paths that must never be overwritten. ``None`` entries and non-path
            values (e.g. ``/vsimem/`` names) are ignored.

    Raises:
        ProtectedPathError: ``output`` is (resolves to, or is a hard link of) a protected path.
    """
    out = Path(output)
    for p in protect:
        if p is None:
            continue
        prot = Path(p)
        if str(prot).startswith("/vsi"):
            continue
        if _same_file(out, prot):
            raise ProtectedPathError(PROTECTED_TEMPLATE.format(output=out, protected=prot))


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _with_suffix_appended(path: Path, suffix: str) -> Path:
    # GDAL names sidecars by appending to the full file name: a.tif -> a.tif.aux.xml.
    return path.with_name(path.name + suffix)


def _remove_temporary(tmp: Path) -> None:
    _remove_quietly(tmp)
    for suffix in SIDECAR_SUFFIXES:
        _remove_quietly(_with_suffix_appended(tmp, suffix))


def sweep_stale_siblings(final: str | os.PathLike[str]) -> int:
    """Remove the temporaries of ``final`` left by processes that are gone; never raises.

    Only names that start with ``.NAME.tmp`` (this output's temporaries and their GDAL sidecars)
    are looked at, so a user's folder is never swept as a whole; owners are judged by
    :func:`zoomearth.temporaries.stale_temporaries` (same host, process gone).

    Args:
        final: The output path.

    Returns:
        How many files were removed.
    """
    final = Path(final)
    prefix = f".{final.name}.tmp"
    try:
        # A listing by name only; the whole folder is judged only when a candidate exists.
        if not any(final.parent.glob(glob.escape(prefix) + "*")):
            return 0
        stale = [p for p in stale_temporaries(final.parent) if p.name.startswith(prefix)]
    except OSError:
        return 0
    removed = 0
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def _output_error(exc: OSError, final: Path, tmp: Path) -> OSError:
    """``exc`` restated for ``final``: no-room errors diagnosed, temporary names replaced."""
    if isinstance(exc, OutputWriteError) or exc.errno not in _NO_ROOM_ERRNOS:
        if type(exc).__module__ != "builtins":
            return exc  # our own errors, rasterio's ...: they name what they mean
        names = [exc.filename, exc.filename2]
        if exc.errno is None or not any(n is not None and tmp.name in str(n) for n in names):
            return exc
        # e.g. os.replace(tmp, final) onto a folder: say it about the output.
        return type(exc)(exc.errno, exc.strerror, str(final))
    return write_failure(final, reason=str(exc.strerror or exc), error_number=exc.errno, temp=tmp)


def _missing_parents(directory: Path) -> list[Path]:
    """The folders of ``directory`` that do not exist yet, deepest first."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    return missing


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], *, protect: Iterable[Any] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    The temporary name is hidden, unique and names its owner (``.NAME.tmp-HOST-PID-RANDOM.EXT``,
    :func:`zoomearth.temporaries.temporary_sibling`; the extension is kept so format-sniffing
    writers still work). Temporaries of ``final`` left by a killed process are removed first
    (:func:`sweep_stale_siblings`). The parent directory is created if needed. On success the
    temporary file replaces ``final`` with :func:`os.replace` (atomic on one filesystem), together
    with any GDAL sidecar written beside it; stale sidecars of an older ``final`` are removed so
    they cannot describe the new file. On any exception the temporary file and its sidecars are
    removed, as are the folders this call created if they are empty, and the exception
    propagates; ``final`` is left as it was. An ``OSError`` of a full disk, quota or file size
    limit becomes an :class:`OutputWriteError` (:func:`write_failure`), and one that names the
    temporary file is restated for ``final``.

    Args:
        final: Destination path.
        protect: Input paths ``final`` must not be (see :func:`check_not_protected`).

    Yields:
        The temporary path to write to (it does not exist yet).

    Raises:
        ProtectedPathError: ``final`` is a protected input; nothing is created.
        OutputWriteError: The body finished without creating the temporary file, or the device
            is full, over quota or the file too large.
    """
    final = Path(final)
    check_not_protected(final, protect)
    created = _missing_parents(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(final)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputWriteError(NOTHING_WRITTEN_TEMPLATE.format(output=final))
        # Checked again: a protected input may have been created at that path meanwhile.
        check_not_protected(final, protect)
        for suffix in SIDECAR_SUFFIXES:
            side_tmp = _with_suffix_appended(tmp, suffix)
            side_final = _with_suffix_appended(final, suffix)
            if side_tmp.exists():
                os.replace(side_tmp, side_final)
            else:
                _remove_quietly(side_final)
        os.replace(tmp, final)
    except OSError as exc:
        # Also when the rename fails (final is a directory, another filesystem ...).
        restated = _output_error(exc, final, tmp)
        _remove_temporary(tmp)
        _remove_empty(created)
        if restated is exc:
            raise
        raise restated from exc
    except BaseException:
        _remove_temporary(tmp)
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    # Deepest first; a folder something else wrote into meanwhile stays.
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
