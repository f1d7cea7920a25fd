"""The allowed-roots check for paths that come from planners, API clients or tool arguments.

A path given by a model or a remote client (for example other acquisitions for cloud removal, or a
``file://`` image URL sent to the server) may only name a file inside one of the directories of the
setting ``allowed_roots``. The same function serves the tool runner and the HTTP server, so the
rule is identical everywhere:

* the text must not contain a ``..`` component (explicit traversal is refused even when it would
  land inside a root) nor a NUL byte;
* the path is resolved with symlinks followed (relative paths against the current directory), and
  the *resolved* path must lie inside a *resolved* root -- a symlink inside a root that points
  outside it is refused;
* an empty ``allowed_roots`` allows nothing.

Errors name the allowed roots and the setting, so the user knows what to change.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from zoomearth.errors import ZoomEarthError

__all__ = [
    "PathNotAllowedError",
    "check_allowed_path",
    "is_within",
    "path_from_file_url",
]

NO_ROOTS_TEMPLATE = (
    "{purpose} {path!r} is not allowed: no directories are allowed for paths (the setting "
    "allowed_roots is empty). Add the directory holding the file, e.g. "
    "ZOOMEARTH_ALLOWED_ROOTS='[\"/data/imagery\"]' or --set allowed_roots='[\"/data/imagery\"]'."
)
OUTSIDE_ROOTS_TEMPLATE = (
    "{purpose} {path!r} is outside the allowed directories ({roots}). Use a file inside one of "
    "them, or add its directory to the setting allowed_roots."
)
TRAVERSAL_TEMPLATE = (
    "{purpose} {path!r} contains a '..' component; give a path without '..' inside one of the "
    "allowed directories ({roots})."
)
SYMLINK_ESCAPE_TEMPLATE = (
    "{purpose} {path!r} resolves to {resolved}, outside the allowed directories ({roots}) "
    "(a symbolic link leads out of them)."
)
BAD_PATH_TEMPLATE = "{purpose} {path!r} is not a usable path ({reason})."
MISSING_TEMPLATE = "{purpose} {path!r} does not exist (inside the allowed directories {roots})."
NOT_FILE_TEMPLATE = "{purpose} {path!r} is a directory; give a file."
BAD_URL_TEMPLATE = "Only local file:// URLs name files; got {url!r}."


class PathNotAllowedError(ZoomEarthError, PermissionError):
    """A path lies outside the allowed roots (or is not a usable path at all)."""


def path_from_file_url(url: str) -> str:
    """The local path of a ``file://`` URL (``file:///data/a.tif`` -> ``/data/a.tif``).

    Raises:
        PathNotAllowedError: For a URL naming another host or another scheme.
    """
    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise PathNotAllowedError(BAD_URL_TEMPLATE.format(url=url))
    return unquote(parsed.path)


def is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it (both already resolved)."""
    return path == root or root in path.parents


def _fmt_roots(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def check_allowed_path(
    path: str | os.PathLike[str],
    allowed_roots: Iterable[str | os.PathLike[str]],
    *,
    must_exist: bool = True,
    allow_dir: bool = False,
    purpose: str = "Path",
) -> Path:
    """Check that a path from an untrusted source lies inside an allowed root.

    Args:
        path: The path as given (a ``file://`` URL is accepted too). ``~`` is not expanded.
        allowed_roots: Directories (the setting ``allowed_roots``); resolved here.
        must_exist: Refuse paths that do not exist.
        allow_dir: Accept a directory (otherwise only files).
        purpose: How the path is named in messages (e.g. ``"Argument 'others'"``).

    Returns:
        The resolved path (symlinks followed), inside one of the roots.

    Raises:
        PathNotAllowedError: Empty roots, ``..`` traversal, a path outside every root (also
            through a symlink), a missing file (``must_exist``) or a directory (``allow_dir``
            False). Messages name the allowed roots and the setting ``allowed_roots``.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):  # pragma: no cover - bytes paths are not part of the API
        text = os.fsdecode(text)
    if text.startswith("file:"):
        text = path_from_file_url(text)
    raw_roots = [Path(r).expanduser() for r in allowed_roots]
    roots = [r.resolve() for r in raw_roots]
    shown = _fmt_roots(roots)
    if not text or "\x00" in text:
        reason = "empty" if not text else "contains a NUL byte"
        raise PathNotAllowedError(
            BAD_PATH_TEMPLATE.format(purpose=purpose, path=text, reason=reason)
        )
    if not roots:
        raise PathNotAllowedError(NO_ROOTS_TEMPLATE.format(purpose=purpose, path=text))
    given = Path(text)
    if ".." in given.parts:
        raise PathNotAllowedError(
            TRAVERSAL_TEMPLATE.format(purpose=purpose, path=text, roots=shown)
        )
    absolute = given if given.is_absolute() else Path.cwd() / given
    try:
        resolved = absolute.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise PathNotAllowedError(
            BAD_PATH_TEMPLATE.format(purpose=purpose, path=text, reason=exc)
        ) from None
    if not any(is_within(resolved, root) for root in roots):
        # Distinguish "the text names a place inside a root but a link leads out" for the message.
        lexical = Path(os.path.abspath(absolute))
        lexically_inside = any(
            is_within(lexical, r) or is_within(lexical, Path(os.path.abspath(raw)))
            for r, raw in zip(roots, raw_roots, strict=True)
        )
        template = SYMLINK_ESCAPE_TEMPLATE if lexically_inside else OUTSIDE_ROOTS_TEMPLATE
        raise PathNotAllowedError(
            template.format(purpose=purpose, path=text, resolved=resolved, roots=shown)
        )
    if must_exist and not resolved.exists():
        raise PathNotAllowedError(MISSING_TEMPLATE.format(purpose=purpose, path=text, roots=shown))
    if resolved.is_dir() and not allow_dir:
        raise PathNotAllowedError(NOT_FILE_TEMPLATE.format(purpose=purpose, path=text))
    return resolved
