"""How an unexpected exception of a tool call becomes a :class:`ToolFailure` message.

:func:`_failure` is the runner's one translation (:func:`~zoomearth.tools.runner.run_tool`, step
6): a writer's :class:`~zoomearth.errors.OutputWriteError` keeps its own message; a full disk (or
quota) is named as such, with the run directory and the finished tiles kept for a resume;
anything else reads ``Tool 'name' failed: Kind: reason``. Internal temporary file names are
replaced by the names of the files they become. :func:`_contract_failure` reports a tool that
broke the contract (a bad result, a changed input, an artifact outside the run directory).
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

from zoomearth.tools.context import _box_size
from zoomearth.tools.errors import (
    FAILURE_TEMPLATE,
    NO_SPACE_TEMPLATE,
    TILES_KEPT_TEMPLATE,
    ToolFailure,
)

if TYPE_CHECKING:
    from zoomearth.tools.context import ToolContext
    from zoomearth.tools.contract import Tool

# -- failure messages ---------------------------------------------------------------------------
# GDAL reports a full disk as text only (libtiff's "No space left on device" reaches stderr, the
# exception says "Write failed" or "writing a dirty block"), so the text is a signal as well as
# the errno of Python's own writes.
_NO_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_WORDS: Final = (
    "no space left on device",
    "disk quota exceeded",
    "free disk space available is",
    "disk full",
)
_WRITE_FAILED_WORDS: Final = (
    "write failed",
    "writing a dirty block",
    "iwriteblock failed",
    "write error",
    "_tiffwriteproc",
    "tiffappendtostrip",
    "error in writing",
)


def _scrub_temporaries(text: str, limit: int = 4000) -> str:
    """Internal temporary names in a message replaced by the file they become.

    Messages are short; a longer one is cut at ``limit`` characters first, which bounds the work
    of the (linear-time) pattern of :func:`zoomearth.scene.writing.mask_temporary_names`.
    """
    from zoomearth.scene.writing import mask_temporary_names

    return mask_temporary_names(text[:limit])


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes/contexts (also a context hidden by ``raise ... from None``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _disk_full(ctx: ToolContext, exc: BaseException) -> bool:
    """Whether a failure was caused by a full disk (or quota).

    Certain when an ``OSError`` in the chain has errno ENOSPC/EDQUOT or a message says so. A
    GDAL write failure without a reason counts when the device holding the run directory has
    less free space than the region's uncompressed size (the partial output was removed by now,
    so "free == 0" cannot be asked).
    """
    write_failed = False
    for item in _exception_chain(exc):
        if isinstance(item, OSError) and item.errno in _NO_SPACE_ERRNOS:
            return True
        text = str(item).lower()
        if any(words in text for words in _NO_SPACE_WORDS):
            return True
        write_failed = write_failed or any(words in text for words in _WRITE_FAILED_WORDS)
    if not write_failed:
        return False
    free = _free_bytes(ctx.run_dir)
    if free is None or ctx.region is None:
        return False
    import numpy as np

    width, height = _box_size(ctx.region)
    try:
        itemsize = np.dtype(str(ctx.scene.dtype)).itemsize
    except TypeError:
        itemsize = 1
    return free < width * height * max(1, int(ctx.scene.count)) * itemsize + (1 << 20)


def _failure(tool: Tool, ctx: ToolContext, exc: BaseException) -> ToolFailure:
    """The ToolFailure for an unexpected exception of a call (the caller chains ``exc``)."""
    from zoomearth.errors import OutputWriteError

    for item in _exception_chain(exc):
        if isinstance(item, OutputWriteError):
            # The writer's own message already says what failed and what to do.
            return ToolFailure(_scrub_temporaries(str(item)), tool=tool.name)
    if _disk_full(ctx, exc):
        kept = sum(cache.tile_count() for cache in ctx._tile_caches)
        return ToolFailure(
            NO_SPACE_TEMPLATE.format(
                tool=tool.name,
                run_dir=ctx.run_dir,
                kept=TILES_KEPT_TEMPLATE.format(count=kept) if kept else "",
            ),
            tool=tool.name,
        )
    reason = _scrub_temporaries(" ".join(str(exc).split())[:500]) or "(no message)"
    return ToolFailure(
        FAILURE_TEMPLATE.format(tool=tool.name, kind=type(exc).__name__, reason=reason),
        tool=tool.name,
    )


def _contract_failure(tool: Tool, problem: str) -> ToolFailure:
    return ToolFailure(
        FAILURE_TEMPLATE.format(tool=tool.name, kind="ContractViolation", reason=problem),
        tool=tool.name,
    )
