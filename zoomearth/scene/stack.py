"""Scenes as time stacks: several dates of one place, read on one reference pixel grid.

A :class:`SceneStack` holds the dates of a place (:class:`StackDate`: a label such as ``"2009"``
or ``"2014-06-03"``, the parsed date and the raster's path or URL) and one *reference* scene whose
pixel grid (width, height, transform, CRS) every read uses. Boxes are always full-resolution
pixels of the reference grid (xyxy, half-open), so a zoom box means the same ground on every date.

The reference is the scene the user named (``SCENE`` on the command line, the first image of a
chat message); for a folder of dated files it is the newest date -- the date a planner sees by
default, so that its views and the single-date tools (which run on the reference) agree. ``dates``
is sorted oldest -> newest and ``reference_index`` says where the reference sits.

Dates may differ in grid, resolution and CRS. A date on another grid is read through a windowed
warp: the box's footprint is transformed into the date's CRS, only that source window (plus a
margin of a few pixels for the resampling kernel) is read -- through the date's overviews when
the view is downsampled -- and reprojected onto the requested part of the reference grid with
:func:`rasterio.warp.reproject`. No read ever decodes a whole image. Pixels a date does not cover
(outside its footprint, or its nodata) are masked.

Dates come from file names (:func:`parse_date_label`: ``20090818``, ``2014-06-03``,
``2014_06``, a bare year such as ``2009``), else from the raster's ``ACQUISITIONDATETIME`` or
``TIFFTAG_DATETIME`` metadata, else the source is labelled by its position (``"image 2"``, with
``when`` None). A stack whose sources all have dates is sorted by date; otherwise it keeps the
given order.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoomearth.errors import SceneError, SceneNotFoundError
from zoomearth.geometry import PixelBox, ViewSpec
from zoomearth.scene.scene import Scene
from zoomearth.scene.view import View

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "RASTER_SUFFIXES",
    "SceneStack",
    "StackDate",
    "StackError",
    "date_from_metadata",
    "is_url",
    "open_stack",
    "parse_date_label",
]

#: File extensions :meth:`SceneStack.from_folder` takes as dates of a stack (lower case).
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".png", ".jpg", ".jpeg", ".vrt", ".img")

#: Source pixels added around the warped footprint so that bilinear/cubic kernels at the edge of
#: the requested box see real neighbours instead of the window's border.
WARP_MARGIN_PX = 3

NO_DATES_TEMPLATE = (
    "No dated rasters in {folder}: a stack folder holds one raster per date with the date in "
    "each file name (e.g. scene_20090818.tif, 2014-06-03.tif, 2020.tif)."
)
UNDATED_IN_FOLDER_TEMPLATE = (
    "{name} in stack folder {folder} has no date in its name; rename it with its date "
    "(e.g. {stem}_2020-06-01{suffix}) or move it out of the folder."
)
UNKNOWN_DATE_TEMPLATE = "The stack has no date {name!r}; dates available: {labels}."
AMBIGUOUS_DATE_TEMPLATE = (
    "{name!r} matches several dates of the stack ({matches}); name the full date, e.g. {first!r}."
)
INDEX_TEMPLATE = "Stack date index {index} is out of range: the stack has {count} dates (0-{last})."
UNGEOREFERENCED_TEMPLATE = (
    "Cannot align {source} with the reference {reference}: {which} no georeference, and their "
    "pixel sizes differ ({size} vs {ref_size}). Give georeferenced rasters, or dates of the same "
    "pixel size."
)
LABELS_COUNT_TEMPLATE = (
    "Got {labels} labels for {sources} stack sources; give at most one label per source."
)

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Dates in names: not touching other digits, so that tile numbers (m_4709963) never match.
_FULL_DATE_RE = re.compile(
    r"(?<!\d)((?:19|20)\d\d)([-_.]?)(0[1-9]|1[0-2])\2(0[1-9]|[12]\d|3[01])(?!\d)"
)
_YEAR_MONTH_RE = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_.](0[1-9]|1[0-2])(?![\d])")
_YEAR_RE = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")
# TIFFTAG_DATETIME is "YYYY:MM:DD HH:MM:SS"; ACQUISITIONDATETIME is ISO 8601.
_META_DATE_RE = re.compile(r"((?:19|20)\d\d)[-:](\d\d)[-:](\d\d)")


class StackError(SceneError, ValueError):
    """A time stack cannot be built or a date of it cannot be found (the message says why)."""


def is_url(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(source, str) and bool(_URL_RE.match(source))


def _source_name(source: str) -> str:
    """The last path segment of a path or URL (query string dropped): what dates are read from."""
    if is_url(source):
        return source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(source).name


def parse_date_label(name: str) -> tuple[str, datetime.date] | None:
    """Find a date in a file name or a string; returns ``(label, date)`` or None.

    Tried in order, leftmost match first: a full date (``20090818``, ``2014-06-03``,
    ``2014_06_03``, ``2014.06.03`` -> label ``"2014-06-03"``), a year and month (``2014-06`` ->
    ``"2014-06"``, dated the 1st), a bare year (``2009`` -> ``"2009"``, dated 1 January). Years
    1900-2099 only; digits touching other digits never match (tile numbers such as ``4709963``).

    Args:
        name: A file name, a path (only its last segment is looked at) or a label.

    Returns:
        The label users and planners see and the parsed date, or None without a date.
    """
    text = _source_name(name) if ("/" in name or "\\" in name) else name
    for match in _FULL_DATE_RE.finditer(text):
        year, _sep, month, day = match.groups()
        try:
            when = datetime.date(int(year), int(month), int(day))
        except ValueError:  # 20090231: looks like a date, is not one
            continue
        return when.isoformat(), when
    year_month = _YEAR_MONTH_RE.search(text)
    if year_month:
        y, m = int(year_month.group(1)), int(year_month.group(2))
        return f"{y:04d}-{m:02d}", datetime.date(y, m, 1)
    year_only = _YEAR_RE.search(text)
    if year_only:
        y = int(year_only.group(1))
        return f"{y:04d}", datetime.date(y, 1, 1)
    return None


def date_from_metadata(scene: Scene) -> tuple[str, datetime.date] | None:
    """The acquisition date a raster declares in its metadata, or None.

    Looks at ``ACQUISITIONDATETIME`` (GDAL's IMAGERY domain, or the default domain) first, then
    ``TIFFTAG_DATETIME``. Header-only.
    """
    try:
        ds = scene._dataset()  # noqa: SLF001 - same package; headers only
        tags: dict[str, str] = {}
        for domain in (None, "IMAGERY"):
            try:
                tags.update(ds.tags(ns=domain) if domain else ds.tags())
            except Exception:  # noqa: BLE001 - a domain the driver lacks
                continue
    except Exception:  # noqa: BLE001 - metadata is optional; the caller falls back to order
        return None
    for key in ("ACQUISITIONDATETIME", "TIFFTAG_DATETIME"):
        value = tags.get(key)
        match = _META_DATE_RE.search(value or "")
        if match:
            try:
                when = datetime.date(*(int(g) for g in match.groups()))
            except ValueError:
                continue
            return when.isoformat(), when
    return None


@dataclass(frozen=True)
class StackDate:
    """One date of a stack.

    Attributes:
        label: What users and the planner see, e.g. ``"2009"`` or ``"2014-06-03"``; unique
            within a stack (``"image 2"`` for a source without a known date).
        when: The parsed date (a year-only name is 1 January of that year; the label keeps
            ``"2009"``); None when no date is known.
        source: Absolute path or URL of that date's raster.
    """

    label: str
    when: datetime.date | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``{"label", "when" (ISO date or None), "source"}``."""
        return {
            "label": self.label,
            "when": self.when.isoformat() if self.when else None,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackDate:
        """The inverse of :meth:`to_dict`."""
        when = data.get("when")
        return cls(
            label=str(data["label"]),
            when=datetime.date.fromisoformat(when) if when else None,
            source=str(data["source"]),
        )


def _normalise_source(source: str | os.PathLike[str]) -> str:
    """A URL unchanged, a local path made absolute (``~`` expanded)."""
    if is_url(source):
        return str(source)
    return str(Path(source).expanduser().resolve())


class SceneStack:
    """Co-registered dates of one place, read on the reference scene's grid.

    ``reference`` is the :class:`~zoomearth.scene.scene.Scene` whose pixel grid (width, height,
    transform, crs) every read uses (SCENE, i.e. the first image given -- not necessarily the
    oldest date; for :meth:`from_folder` the newest). ``dates`` is sorted oldest -> newest when
    every date is known (else the given order); ``reference_index`` is the reference's index.
    Thread-safe for reads (each date's Scene is, and the scene cache is locked).
    """

    def __init__(
        self,
        reference: Scene,
        dates: Sequence[StackDate],
        reference_index: int,
        *,
        settings: Settings | None = None,
        bands: Sequence[int] | None = None,
    ) -> None:
        """Wrap already resolved dates; use :meth:`from_sources`, :meth:`from_folder`.

        Args:
            reference: The open reference scene (the date at ``reference_index``).
            dates: The dates, in stack order.
            reference_index: Index of the reference in ``dates``.
            settings: Settings the other dates are opened with (the reference's when None).
            bands: Explicit 1-based band mapping the other dates are opened with (None: each
                date's automatic mapping; the reference keeps its own).
        """
        if not dates:
            raise StackError("A stack needs at least one date.")
        if not 0 <= reference_index < len(dates):
            raise StackError(
                INDEX_TEMPLATE.format(index=reference_index, count=len(dates), last=len(dates) - 1)
            )
        self.reference = reference
        self.dates: tuple[StackDate, ...] = tuple(dates)
        self.reference_index = int(reference_index)
        self.settings = settings if settings is not None else reference.settings
        self.bands = tuple(bands) if bands else None
        self._scenes: dict[int, Scene] = {self.reference_index: reference}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_sources(
        cls,
        reference: str | Path,
        others: Sequence[str | Path],
        *,
        settings: Settings | None = None,
        labels: Sequence[str] | None = None,
    ) -> SceneStack:
        """A stack of ``reference`` (whose grid every read uses) and ``others``.

        Each source's date comes from its name (:func:`parse_date_label`) -- its entry in
        ``labels`` when given (e.g. an uploaded file's name; ``""`` for a source without a
        meaningful name, such as an image sent as data), else its own file name -- else from its
        metadata (:func:`date_from_metadata`), else from its position (label ``"image k"``, k
        counted from 1 in the given order, reference first; ``when`` None).

        Args:
            reference: Path or URL of the reference date.
            others: Paths or URLs of the other dates (any order).
            settings: Effective settings (defaults when None).
            labels: Optional names to read the dates from instead of the sources' own names,
                reference first (e.g. the names of files uploaded to the server, or a STAC
                search's item dates); sources past the end of the list use their own names.

        Raises:
            StackError: Wrong number of labels. SceneNotFoundError, SceneReadError: A source
                cannot be opened.
        """
        if settings is None:
            from zoomearth.config import load_settings

            settings = load_settings()
        sources = [_normalise_source(s) for s in (reference, *others)]
        if labels is not None and len(labels) > len(sources):
            raise StackError(LABELS_COUNT_TEMPLATE.format(labels=len(labels), sources=len(sources)))
        for source in sources:
            if not is_url(source) and not Path(source).exists():
                raise SceneNotFoundError(
                    f"No such image: {source}. Check the path of each --stack date "
                    f"(relative paths are from {Path.cwd()})."
                )
        ref_scene = Scene.open(sources[0], settings=settings)
        scenes: dict[int, Scene] = {0: ref_scene}
        found: list[tuple[str, datetime.date] | None] = []
        for k, source in enumerate(sources):
            name = (
                str(labels[k]) if labels is not None and k < len(labels) else _source_name(source)
            )
            parsed = parse_date_label(name) if name.strip() else None
            if parsed is None:
                scene = scenes.get(k)
                if scene is None:
                    scene = scenes[k] = Scene.open(source, settings=settings)
                parsed = date_from_metadata(scene)
            found.append(parsed)
        order = list(range(len(sources)))
        known = [p for p in found if p is not None]
        if len(known) == len(found):
            # Stable: equal dates keep the given order.
            order.sort(key=lambda k: known[k][1])
        rows: list[tuple[str, datetime.date | None, str]] = []
        for k in order:
            date = found[k]
            label, when = date if date is not None else (f"image {k + 1}", None)
            rows.append((label, when, sources[k]))
        dates = _unique_dates(rows)
        stack = cls(ref_scene, dates, order.index(0), settings=settings)
        for k, scene in scenes.items():
            stack._scenes[order.index(k)] = scene
        return stack

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike[str], *, settings: Settings | None = None
    ) -> SceneStack:
        """A stack of the dated rasters in ``folder`` (not recursive), referenced on the newest.

        Every raster (:data:`RASTER_SUFFIXES`; hidden files and GDAL side-cars ignored) must have
        a date in its name (:func:`parse_date_label`, e.g. NAIP's ``m_..._20090818.tif``).
        The reference grid is the newest date's (the last file by date): the date the planner
        sees by default, and the one single-date tools run on.

        Raises:
            StackError: No dated raster, or a raster without a date in its name.
            SceneNotFoundError: ``folder`` does not exist.
        """
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise SceneNotFoundError(
                f"No such stack folder: {root} (relative paths are from {Path.cwd()})."
            )
        dated: list[tuple[datetime.date, Path]] = []
        for path in sorted(root.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() not in RASTER_SUFFIXES:
                continue
            parsed = parse_date_label(path.name)
            if parsed is None:
                raise StackError(
                    UNDATED_IN_FOLDER_TEMPLATE.format(
                        name=path.name, folder=root, stem=path.stem, suffix=path.suffix
                    )
                )
            dated.append((parsed[1], path))
        if not dated:
            raise StackError(NO_DATES_TEMPLATE.format(folder=root))
        dated.sort(key=lambda item: (item[0], item[1].name))
        *rest, newest = (path for _when, path in dated)
        return cls.from_sources(newest, rest, settings=settings)

    @classmethod
    def from_dates(
        cls,
        dates: Sequence[StackDate | dict[str, Any]],
        reference_index: int,
        *,
        settings: Settings | None = None,
    ) -> SceneStack:
        """Reopen a stack recorded with :meth:`describe` (e.g. in a graph's state)."""
        resolved = [d if isinstance(d, StackDate) else StackDate.from_dict(d) for d in dates]
        if not 0 <= reference_index < len(resolved):
            raise StackError(
                INDEX_TEMPLATE.format(
                    index=reference_index, count=len(resolved), last=len(resolved) - 1
                )
            )
        if settings is None:
            from zoomearth.config import load_settings

            settings = load_settings()
        reference = Scene.open(resolved[reference_index].source, settings=settings)
        return cls(reference, resolved, reference_index, settings=settings)

    # ------------------------------------------------------------------------------------------
    # dates
    # ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of dates."""
        return len(self.dates)

    def __repr__(self) -> str:
        labels = ", ".join(d.label for d in self.dates)
        return f"SceneStack([{labels}], reference={self.dates[self.reference_index].label!r})"

    @property
    def labels(self) -> tuple[str, ...]:
        """The dates' labels, oldest first."""
        return tuple(d.label for d in self.dates)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly record: ``{"dates": [{label, when, source}], "reference_index": int}``."""
        return {
            "dates": [d.to_dict() for d in self.dates],
            "reference_index": self.reference_index,
        }

    def newest_index(self) -> int:
        """Index of the newest date (the last one: dates are sorted oldest -> newest)."""
        return len(self.dates) - 1

    def index_of(self, name: str | int | datetime.date) -> int:
        """Index of the date ``name`` names.

        Accepted: an exact label (``"2014-07-20"``, ``"image 2"``), a year (``"2014"`` or
        ``2014``), a year and month (``"2014-07"``), any full date spelling
        (``"20140720"``), a :class:`datetime.date`. A year or month must match exactly one date.

        Raises:
            StackError: No date matches (the message lists the dates), or several do.
        """
        if isinstance(name, bool):
            raise StackError(UNKNOWN_DATE_TEMPLATE.format(name=name, labels=self._label_list()))
        if isinstance(name, datetime.date):
            matches = [i for i, d in enumerate(self.dates) if d.when == name]
            if not matches:
                matches = [i for i, d in enumerate(self.dates) if d.label == name.isoformat()]
            return self._one(name.isoformat(), matches)
        text = str(name).strip()
        exact = [i for i, d in enumerate(self.dates) if d.label.lower() == text.lower()]
        if exact:
            return exact[0]
        parsed = parse_date_label(text)
        if parsed is None:
            raise StackError(UNKNOWN_DATE_TEMPLATE.format(name=name, labels=self._label_list()))
        label, when = parsed
        if len(label) == 10:  # a full date
            matches = [i for i, d in enumerate(self.dates) if d.when == when]
        else:  # "2014" or "2014-07": every date in that year / month
            matches = [
                i
                for i, d in enumerate(self.dates)
                if (d.when is not None and d.when.isoformat().startswith(label))
                or d.label.startswith(label)
            ]
        return self._one(text, matches)

    def _one(self, name: str, matches: list[int]) -> int:
        if not matches:
            raise StackError(UNKNOWN_DATE_TEMPLATE.format(name=name, labels=self._label_list()))
        if len(matches) > 1:
            found = [self.dates[i].label for i in matches]
            raise StackError(
                AMBIGUOUS_DATE_TEMPLATE.format(name=name, matches=", ".join(found), first=found[0])
            )
        return matches[0]

    def _label_list(self) -> str:
        return ", ".join(self.labels)

    def _check_index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise StackError(f"A stack date index must be an integer; got {index!r}.")
        if not 0 <= int(index) < len(self.dates):
            raise StackError(
                INDEX_TEMPLATE.format(index=index, count=len(self.dates), last=len(self.dates) - 1)
            )
        return int(index)

    def scene(self, index: int) -> Scene:
        """That date's own :class:`Scene` in its own grid (opened on first use, then cached)."""
        index = self._check_index(index)
        scene = self._scenes.get(index)
        if scene is not None:
            return scene
        with self._lock:
            scene = self._scenes.get(index)
            if scene is None:
                scene = Scene.open(
                    self.dates[index].source, bands=self.bands, settings=self.settings
                )
                self._scenes[index] = scene
        return scene

    def close(self) -> None:
        """Close this thread's GDAL handles of every opened date."""
        for scene in list(self._scenes.values()):
            scene.close()

    def on_reference_grid(self, index: int) -> bool:
        """Whether date ``index`` shares the reference's pixel grid (reads need no warp)."""
        index = self._check_index(index)
        if index == self.reference_index:
            return True
        scene, ref = self.scene(index), self.reference
        same_size = (scene.width, scene.height) == (ref.width, ref.height)
        if not (scene.georeferenced and ref.georeferenced):
            return same_size
        return (
            same_size
            and scene.crs == ref.crs
            and all(
                math.isclose(a, b, rel_tol=0.0, abs_tol=1e-9 * max(1.0, abs(b)))
                for a, b in zip(tuple(scene.transform)[:6], tuple(ref.transform)[:6], strict=True)
            )
        )

    # ------------------------------------------------------------------------------------------
    # pixels
    # ------------------------------------------------------------------------------------------
    def read(
        self,
        index: int,
        box: PixelBox,
        *,
        out_shape: tuple[int, int] | None = None,
        bands: Sequence[int] | None = None,
        resampling: str = "bilinear",
    ) -> np.ma.MaskedArray:
        """Read date ``index`` in a region of the REFERENCE grid.

        Args:
            index: Date index (see :meth:`index_of`).
            box: Full-resolution box of the reference grid (xyxy, half-open); clipped to the
                reference image and snapped outwards to whole pixels like :meth:`Scene.read`.
            out_shape: ``(height, width)`` of the result; None = the box's full resolution.
                Smaller shapes are read through the date's overviews.
            bands: 1-based band indexes of that date; None = all its bands.
            resampling: Resampling of the warp onto the reference grid (a
                :class:`rasterio.enums.Resampling` name: ``nearest``, ``bilinear``, ``cubic``,
                ``average`` ...). Dates on the reference grid use it only to downsample.

        Returns:
            Masked array ``(bands, height, width)`` in the date's native dtype; masked where the
            date has no data (its nodata, NaN, transparency) or does not reach (outside its
            footprint). Pixel ``(r, c)`` shows the reference-grid cell of the (snapped) box at
            that position.

        Raises:
            BoxError: The box is unusable for the reference image. StackError: A bad index, or a
                date that cannot be aligned (no georeference and a different pixel size).
            SceneReadError: A date's pixels cannot be decoded.
        """
        from rasterio.enums import Resampling

        index = self._check_index(index)
        getattr(Resampling, resampling)  # unknown names fail here, before any read
        region, _notes = self.reference.check_box(box)
        region = region.snap_out()
        rw, rh = int(region.width), int(region.height)
        if out_shape is None:
            oh, ow = rh, rw
        else:
            oh, ow = (int(v) for v in out_shape)
            if oh <= 0 or ow <= 0:
                raise StackError(f"out_shape must be positive (height, width); got {out_shape}.")
        scene = self.scene(index)
        read_resampling = resampling if resampling in ("nearest", "average", "mode") else "average"
        if self.on_reference_grid(index):
            return scene.read(
                region,
                out_size=(ow, oh),
                bands=list(bands) if bands else None,
                resampling=read_resampling if (ow, oh) != (rw, rh) else "nearest",
            )
        if not (scene.georeferenced and self.reference.georeferenced):
            which = "it has" if not scene.georeferenced else "the reference has"
            raise StackError(
                UNGEOREFERENCED_TEMPLATE.format(
                    source=self.dates[index].source,
                    reference=self.dates[self.reference_index].source,
                    which=which,
                    size=f"{scene.width}x{scene.height}",
                    ref_size=f"{self.reference.width}x{self.reference.height}",
                )
            )
        return self._warped_read(scene, region, (oh, ow), bands, resampling, read_resampling)

    def _warped_read(
        self,
        scene: Scene,
        region: PixelBox,
        out_shape: tuple[int, int],
        bands: Sequence[int] | None,
        resampling: str,
        read_resampling: str,
    ) -> np.ma.MaskedArray:
        """Read the source window under ``region`` of ``scene`` and warp it onto the grid."""
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.warp import reproject, transform_bounds

        oh, ow = out_shape
        ref = self.reference
        indexes = list(bands) if bands else list(range(1, scene.count + 1))
        dtype = np.dtype(scene.dtype)
        dst_transform = (
            ref.transform
            @ Affine.translation(region.x1, region.y1)
            @ Affine.scale(region.width / ow, region.height / oh)
        )
        empty = np.ma.MaskedArray(
            np.zeros((len(indexes), oh, ow), dtype), mask=np.ones((len(indexes), oh, ow), bool)
        )
        # The box's footprint in the date's CRS, then in its pixels (densified edges: a box in
        # UTM is curved in degrees).
        left, bottom, right, top = _bounds_of(ref.transform, region)
        try:
            sx1, sy1, sx2, sy2 = transform_bounds(
                ref.crs, scene.crs, left, bottom, right, top, densify_pts=21
            )
        except Exception:  # noqa: BLE001 - a footprint the projection cannot express
            return empty
        src_box = _map_to_pixel_box(scene.transform, sx1, sy1, sx2, sy2)
        pad = WARP_MARGIN_PX
        c0 = max(0, math.floor(src_box.x1) - pad)
        r0 = max(0, math.floor(src_box.y1) - pad)
        c1 = min(scene.width, math.ceil(src_box.x2) + pad)
        r1 = min(scene.height, math.ceil(src_box.y2) + pad)
        if c1 <= c0 or r1 <= r0:
            return empty
        window = PixelBox(float(c0), float(r0), float(c1), float(r1))
        # Read no finer than the output needs (keeping a margin of 2 for the resampling): the
        # date's overviews serve the decimation, as for any Scene.read.
        sw, sh = c1 - c0, r1 - r0
        src_px = max(
            (src_box.x2 - src_box.x1) / ow if ow else 1.0,
            (src_box.y2 - src_box.y1) / oh if oh else 1.0,
        )
        factor = max(1.0, src_px / 2.0)
        rw_out, rh_out = max(1, math.ceil(sw / factor)), max(1, math.ceil(sh / factor))
        source = scene.read(
            window,
            out_size=(rw_out, rh_out),
            bands=indexes,
            resampling=read_resampling if (rw_out, rh_out) != (sw, sh) else "nearest",
        )
        src_transform = (
            scene.transform @ Affine.translation(c0, r0) @ Affine.scale(sw / rw_out, sh / rh_out)
        )
        src_valid = ~np.ma.getmaskarray(source)
        # Invalid source pixels are filled with 0 (NaN would spread through the kernel); the
        # destination pixels they influence are masked by the warped validity below.
        src_data = np.ascontiguousarray(np.ma.getdata(source.filled(0)))
        out = np.zeros((len(indexes), oh, ow), dtype)
        valid = np.zeros((len(indexes), oh, ow), np.float32)
        method = getattr(Resampling, resampling)
        from zoomearth.scene.gdal import quiet_gdal

        with quiet_gdal():
            # The pixels, then their validity with the same kernel.
            pairs: tuple[tuple[Any, np.ndarray], ...] = (
                (src_data, out),
                (src_valid.astype(np.float32), valid),
            )
            for source, destination in pairs:
                reproject(
                    source,
                    destination,
                    src_transform=src_transform,
                    src_crs=scene.crs,
                    dst_transform=dst_transform,
                    dst_crs=ref.crs,
                    resampling=method,
                    src_nodata=None,
                    dst_nodata=None,
                    init_dest_nodata=False,
                )
        # A destination pixel is valid only when every source pixel its kernel used was valid
        # (and the warp reached it at all: outside the footprint it stays 0).
        mask = valid < 0.999
        return np.ma.MaskedArray(out, mask=mask)

    def render(
        self, index: int, box: PixelBox | None, max_side: int | None = 512, *, view_id: int = 0
    ) -> View:
        """Render date ``index`` as an RGB uint8 view of a region of the reference grid.

        The view's frame (:class:`~zoomearth.geometry.ViewSpec`) is the reference grid's, exactly
        as :meth:`Scene.render` of the reference would give it, so boxes drawn on a view of any
        date mean the same ground. Bands and display stretch are that date's own.

        Args:
            index: Date index.
            box: Full-resolution reference-grid region; None = the whole reference image.
            max_side: Long side of the view in pixels (never upsampled).
            view_id: Id recorded in the view's spec.

        Returns:
            The :class:`View`; invalid pixels (nodata, outside the date's footprint) are black.
        """
        index = self._check_index(index)
        if index == self.reference_index:
            return self.reference.render(box, max_side, view_id=view_id)
        ref = self.reference
        if max_side is not None and (
            isinstance(max_side, bool) or not isinstance(max_side, int | float) or max_side < 1
        ):
            ref.render(box, max_side)  # raises the reference's own, tested message
        region, notes = ref.check_box(box)
        region = region.snap_out()
        ow, oh = Scene.output_size(region, None if max_side is None else int(max_side))
        scene = self.scene(index)
        mapping = scene.band_mapping()
        data = self.read(index, region, out_shape=(oh, ow), bands=mapping.rgb)
        valid = ~np.ma.getmaskarray(data).any(axis=0)
        rgb = scene._to_uint8(data, mapping)  # noqa: SLF001 - the date's own stretch/palette
        if rgb.shape[0] == 1:
            rgb = np.repeat(rgb, 3, axis=0)
        rgb = np.ascontiguousarray(np.moveaxis(rgb, 0, -1))
        rgb[~valid] = 0
        spec = ViewSpec(view_id=view_id, region=region, width=ow, height=oh)
        return View(spec=spec, rgb=rgb, valid=np.asarray(valid, bool), warnings=notes)

    def info(self) -> dict[str, Any]:
        """The stack as a JSON-friendly dict: dates (label, date, source, size, CRS), reference.

        Opens each date's header (no pixels).
        """
        rows = []
        for i, date in enumerate(self.dates):
            scene = self.scene(i)
            rows.append(
                {
                    **date.to_dict(),
                    "width": scene.width,
                    "height": scene.height,
                    "count": scene.count,
                    "dtype": scene.dtype,
                    "crs": scene.crs_string,
                    "pixel_size": list(scene.pixel_size_m) if scene.pixel_size_m else None,
                    "reference": i == self.reference_index,
                    "on_reference_grid": self.on_reference_grid(i),
                }
            )
        return {
            "dates": rows,
            "reference_index": self.reference_index,
            "reference": self.dates[self.reference_index].label,
            "newest": self.dates[self.newest_index()].label,
        }


def open_stack(
    scene: str | os.PathLike[str],
    others: Sequence[str | os.PathLike[str]] = (),
    *,
    settings: Settings | None = None,
    labels: Sequence[str] | None = None,
) -> SceneStack | None:
    """The time stack a user named, or None for a plain one-date scene.

    * ``scene`` a folder: :meth:`SceneStack.from_folder` (``others`` must be empty);
    * ``scene`` plus ``others`` (``--stack``): :meth:`SceneStack.from_sources`, ``scene`` the
      reference;
    * ``scene`` a saved STAC search of several items (:func:`zoomearth.scene.stac.stack_sources`):
      their assets, dated by the items, on the newest item's grid;
    * ``scene`` alone, a raster file or URL (or a one-item STAC source): None (not a stack).

    Raises:
        StackError: A folder together with ``others``. See the constructors for the rest.
    """
    if not is_url(scene) and Path(scene).expanduser().is_dir():
        if others:
            raise StackError(
                f"{scene} is a folder of dates (a stack already); give --stack dates only with "
                "a single image as SCENE, or put the other dates into the folder."
            )
        return SceneStack.from_folder(scene, settings=settings)
    if not others:
        from zoomearth.scene.stac import is_stac_source, stack_sources

        if is_stac_source(scene):
            items = stack_sources(scene)
            if len(items) > 1:
                # A saved STAC search: referenced on its newest item, like a folder.
                *rest, newest = items
                return SceneStack.from_sources(
                    newest.href,
                    [r.href for r in rest],
                    settings=settings,
                    labels=[newest.label, *(r.label for r in rest)],
                )
        return None
    return SceneStack.from_sources(
        str(scene) if is_url(scene) else Path(scene),
        [str(o) if is_url(o) else Path(o) for o in others],
        settings=settings,
        labels=labels,
    )


def _unique_dates(rows: list[tuple[str, datetime.date | None, str]]) -> list[StackDate]:
    """StackDates with unique labels: a repeated label gets `` #2``, `` #3`` ... (given order)."""
    seen: dict[str, int] = {}
    out = []
    for label, when, source in rows:
        n = seen.get(label, 0) + 1
        seen[label] = n
        out.append(StackDate(label if n == 1 else f"{label} #{n}", when, source))
    return out


def _bounds_of(transform: Any, box: PixelBox) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` in map units of a full-resolution box (any rotation)."""
    xs, ys = [], []
    for px, py in ((box.x1, box.y1), (box.x2, box.y1), (box.x1, box.y2), (box.x2, box.y2)):
        x, y = transform @ (px, py)
        xs.append(x)
        ys.append(y)
    return min(xs), min(ys), max(xs), max(ys)


def _map_to_pixel_box(transform: Any, x1: float, y1: float, x2: float, y2: float) -> PixelBox:
    """The pixel box (of ``transform``'s grid) enclosing map bounds ``x1, y1, x2, y2``."""
    inverse = ~transform
    cols, rows = [], []
    for x, y in ((x1, y1), (x2, y1), (x1, y2), (x2, y2)):
        c, r = inverse @ (x, y)
        cols.append(c)
        rows.append(r)
    return PixelBox(min(cols), min(rows), max(cols), max(rows))
