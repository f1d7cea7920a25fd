"""Artifacts: the files tools write, referenced by small JSON records instead of pixels.

A tool never returns pixels to the graph. It writes files (GeoTIFF, GeoJSON, CSV, PNG preview)
atomically into the run directory and returns :class:`ArtifactDraft` records; the tool runner
(:func:`zoomearth.tools.run_tool`) checks them and registers them in the run's
:class:`ArtifactStore`, which gives each one an integer id unique within the run directory. The
resulting :class:`Artifact` is a frozen, JSON-serialisable record of a few hundred bytes: graph
state and checkpoints hold these, and a later step names one as ``"artifact:3"`` (for example an
edit masked by an earlier segmentation).

The store keeps an append-only index ``artifacts.jsonl`` in the run directory, so ids continue
where they stopped when a run is resumed or when ``zoomearth tool ... --out DIR`` is called again
with the same directory. Nothing is written until the first artifact is registered.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from zoomearth.errors import ZoomEarthError

__all__ = [
    "ARTIFACT_REF_PATTERN",
    "Artifact",
    "ArtifactDraft",
    "ArtifactError",
    "ArtifactKind",
    "ArtifactStore",
    "INDEX_NAME",
    "format_artifact_ref",
    "guess_media_type",
    "parse_artifact_ref",
]

#: Name of the index file the store keeps in the run directory.
INDEX_NAME: Final = "artifacts.jsonl"

#: A reference to an earlier artifact as the planner writes it: ``artifact:<id>``.
ARTIFACT_REF_PATTERN: Final = r"^artifact:[1-9][0-9]*$"
_REF_RE = re.compile(ARTIFACT_REF_PATTERN)

_KIND_RE = r"^[a-z][a-z0-9_]{0,31}$"
MAX_SUMMARY_CHARS: Final = 300
MAX_META_KEYS: Final = 32

BAD_REF_TEMPLATE = (
    "{value!r} is not an artifact reference; write 'artifact:N' with N the id shown in an "
    "earlier tool result (for example 'artifact:3')."
)
TOO_MANY_META_TEMPLATE = "Artifact meta may hold at most {limit} keys; got {count}."
INDEX_CORRUPT_TEMPLATE = (
    "The artifact index {path} is corrupt at line {line} ({reason}); move it away to start "
    "a new index (existing files stay where they are)."
)


class ArtifactError(ZoomEarthError, ValueError):
    """An artifact record or reference is invalid, or the run's index cannot be read."""


class ArtifactKind:
    """Well-known artifact kinds (plain strings; plugins may use other lowercase identifiers).

    Attributes:
        RASTER: A georeferenced (or pixel-only) raster, e.g. a GeoTIFF of the region.
        MASK: A single-band raster mask/label map (``uint8``: 0 background, >0 foreground/class).
        VECTOR: Features, e.g. GeoJSON polygons.
        PREVIEW: A small image for people and planners (PNG, RGB uint8).
        TABLE: Tabular data (CSV or JSON).
        TEXT: Free text (reports, logs).
    """

    RASTER: Final = "raster"
    MASK: Final = "mask"
    VECTOR: Final = "vector"
    PREVIEW: Final = "preview"
    TABLE: Final = "table"
    TEXT: Final = "text"


_EXTRA_TYPES = {
    ".tif": "image/tiff; application=geotiff",
    ".tiff": "image/tiff; application=geotiff",
    ".geojson": "application/geo+json",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".csv": "text/csv",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".txt": "text/plain",
    ".md": "text/markdown",
}


def guess_media_type(path: str | os.PathLike[str]) -> str:
    """Media (MIME) type of a file from its suffix; ``application/octet-stream`` when unknown."""
    suffix = Path(path).suffix.lower()
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(str(path))
    return guessed or "application/octet-stream"


def parse_artifact_ref(value: str | int) -> int:
    """Return the id named by ``"artifact:N"`` (or a bare positive int).

    Raises:
        ArtifactError: For anything else (message written for the planner).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and _REF_RE.match(value.strip()):
        return int(value.strip().split(":", 1)[1])
    raise ArtifactError(BAD_REF_TEMPLATE.format(value=value))


def format_artifact_ref(artifact_id: int) -> str:
    """``"artifact:N"`` for an id."""
    return f"artifact:{int(artifact_id)}"


MetaValue = str | int | float | bool | None


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    if len(line) > MAX_SUMMARY_CHARS:
        line = line[: MAX_SUMMARY_CHARS - 1] + "…"
    return line


class _ArtifactFields(BaseModel):
    """Fields shared by drafts and registered artifacts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Annotated[str, Field(pattern=_KIND_RE)] = Field(
        description="What the file holds: raster, mask, vector, preview, table, text or a "
        "plugin-defined lowercase identifier"
    )
    summary: str = Field("", description="One line for the planner and people")
    media_type: str = Field("", description="MIME type; guessed from the suffix when empty")
    crs: str | None = Field(None, description="CRS of a geospatial artifact (EPSG:n or WKT)")
    region_xyxy: tuple[float, float, float, float] | None = Field(
        None, description="Full-resolution pixel region of the source scene the artifact covers"
    )
    meta: dict[str, MetaValue] = Field(
        default_factory=dict, description="Small extra facts (band count, dtype, pixel counts ...)"
    )

    @field_validator("summary")
    @classmethod
    def _summary_one_line(cls, v: str) -> str:
        return _one_line(v)

    @field_validator("meta")
    @classmethod
    def _meta_small(cls, v: dict[str, MetaValue]) -> dict[str, MetaValue]:
        if len(v) > MAX_META_KEYS:
            raise ValueError(TOO_MANY_META_TEMPLATE.format(limit=MAX_META_KEYS, count=len(v)))
        return v


class ArtifactDraft(_ArtifactFields):
    """A file a tool wrote, before the runner checked and registered it (no id yet).

    Tools build drafts with :meth:`zoomearth.tools.ToolContext.artifact`, which fills in the
    media type, the scene's CRS and the region.

    Attributes:
        path: The written file; must lie inside the run directory.
    """

    path: Path


class Artifact(_ArtifactFields):
    """A registered artifact: a small, frozen, JSON-serialisable reference to a file.

    Attributes:
        id: Integer id, unique within the run directory (1, 2, 3 ...).
        path: Absolute path of the file (a string, so the record dumps to JSON as is).
        tool: Name of the tool that wrote it (None for files registered by other code).
    """

    id: int = Field(ge=1)
    path: str
    tool: str | None = None

    @property
    def ref(self) -> str:
        """The reference a planner writes to use this artifact: ``"artifact:<id>"``."""
        return format_artifact_ref(self.id)

    def describe(self) -> str:
        """One line for the planner: ``artifact:3 (mask, image/tiff): summary``."""
        text = f"{self.ref} ({self.kind}, {Path(self.path).name})"
        return f"{text}: {self.summary}" if self.summary else text


class ArtifactStore:
    """Allocates artifact ids and keeps the index of one run directory.

    Thread-safe; across processes, id allocation is serialised with an advisory ``flock`` on the
    index file (POSIX), so two ``zoomearth tool`` commands writing into the same directory still get
    distinct ids.

    Args:
        run_dir: The run directory (created on the first registration).
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.index_path = self.run_dir / INDEX_NAME
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.run_dir)!r})"

    # -- reading ------------------------------------------------------------------------------
    def _read_index(self) -> dict[int, Artifact]:
        out: dict[int, Artifact] = {}
        try:
            text = self.index_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return out
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                art = Artifact.model_validate_json(line)
            except ValueError as exc:
                raise ArtifactError(
                    INDEX_CORRUPT_TEMPLATE.format(
                        path=self.index_path, line=lineno, reason=str(exc).splitlines()[0]
                    )
                ) from None
            out[art.id] = art
        return out

    def all(self) -> dict[int, Artifact]:
        """Every registered artifact of the run, by id (read from the index)."""
        with self._lock:
            return self._read_index()

    def get(self, artifact_id: int) -> Artifact | None:
        """The artifact with this id, or None."""
        return self.all().get(int(artifact_id))

    def __iter__(self) -> Iterator[Artifact]:
        return iter(sorted(self.all().values(), key=lambda a: a.id))

    def __len__(self) -> int:
        return len(self.all())

    # -- writing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked_index(self) -> Iterator[Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.index_path, "a+", encoding="utf-8") as fh:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - non-POSIX: the thread lock is all we have
                yield fh
                return
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def register(self, drafts: list[ArtifactDraft], *, tool: str | None = None) -> list[Artifact]:
        """Give ids to drafts (in order) and append them to the index.

        Args:
            drafts: Checked drafts whose files exist.
            tool: Name of the producing tool.

        Returns:
            The registered artifacts, ids increasing.
        """
        if not drafts:
            return []
        with self._locked_index() as fh:
            fh.seek(0)
            existing = [json.loads(line)["id"] for line in fh.read().splitlines() if line.strip()]
            next_id = max(existing, default=0) + 1
            out: list[Artifact] = []
            for offset, draft in enumerate(drafts):
                data = draft.model_dump()
                data["path"] = str(Path(draft.path).resolve())
                data["media_type"] = draft.media_type or guess_media_type(draft.path)
                art = Artifact(id=next_id + offset, tool=tool, **data)
                out.append(art)
            fh.seek(0, os.SEEK_END)
            for art in out:
                fh.write(art.model_dump_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return out


def artifacts_by_id(artifacts: Mapping[int, Artifact] | list[Artifact]) -> dict[int, Artifact]:
    """Normalise a list or mapping of artifacts to ``{id: artifact}``."""
    if isinstance(artifacts, Mapping):
        return {int(k): v for k, v in artifacts.items()}
    return {a.id: a for a in artifacts}
