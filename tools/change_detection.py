"""Built-in tool ``change_detection``: what changed in a region between two dates of a time stack.

Inputs
------
Two dates of the same place on one pixel grid: the scene's time stack (``ToolContext.stack``:
``zoomearth ask SCENE ... --stack PATH``, or a folder of dated images as SCENE), or the scene and
one other image given by path (``other``; path rules as ``cloud_removal``'s ``others``). Every
date is read on the **reference grid** (the scene's) through the stack's windowed, warped reads
(:meth:`zoomearth.scene.stack.SceneStack.read`), so dates in another CRS, grid or resolution
work. ``before`` and ``after`` name dates by label or year (``"2009"``, ``"2014-07-20"``);
by default the oldest and the newest date. With ``other`` and no stack, the two images are
ordered by their dates (file names or metadata); when a date is unknown, ``other`` is *before*.

The region is the call's region (``--box`` of ``zoomearth tool``, the graph's ``bbox_2d`` or
zoom); the whole scene is streamed in tiles of the setting ``tool_tile_side`` when it is larger
than 2048 px.

Algorithm (arrays in :mod:`zoomearth.tools._change`)
-----------------------------------------------------
Per date: invalid pixels filled with the date's band medians, a Gaussian smoothing of 1 px, and
NDVI as an extra channel when the image has a NIR band (a band described as NIR, or band 4 of a
4+-band image with R, G, B in bands 1-3 and no alpha). Every channel of every date is turned into a
robust z-score with that date's median and MAD over the region (fitted once, on the region's
overview of at most 1024 px), which cancels a global gain/offset between dates. The magnitude
combines the RMS of the band differences and the NDVI difference with equal weights
(``method``: ``auto`` both, ``spectral`` bands only, ``ndvi`` NDVI only). The threshold is Otsu's
on the magnitude histogram of the region's valid pixels at full resolution (first pass over the
tiles; the histograms of tiles add up exactly), never below :data:`MIN_OTSU_THRESHOLD` (one robust
standard deviation: without it, a pair of dates with no change at all would have half its noise
called change), or the number given in ``threshold``. The binary map is cleaned with a 3 x 3
opening and closing, and connected regions smaller than ``min_area_m2`` are dropped.

Outputs
-------
* ``change.tif``: uint8 change mask, 1 = changed, 0 = unchanged, 255 = nodata (where either date
  has no data), aligned to the reference grid's window of the region (same CRS, window
  transform); tiled, compressed, overviewed (nearest).
* ``change.geojson``: one polygon per 4-connected changed region with ``area_m2`` (the scene's
  CRS; :mod:`zoomearth.tools._polygons`, as ``segmentation``), ``area_px``, ``before`` and
  ``after``. Regions cut by tile edges of a streamed region are merged back into one polygon.
* ``change.png``: before | after | change (the after image greyed, changes red), long side 512 px
  per panel.

The result text states the changed area in m² (hectares) and in % of the region's valid area.

Tiles are independent (``Capabilities(independent_tiles=True)``): each depends only on its pixels
and on what was fixed before the tiles (dates, per-date statistics, threshold), which is part of
the tile key, with the sources of both dates, so a stopped call resumes from its finished tiles.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from zoomearth.artifacts import ArtifactKind
from zoomearth.tools.base import (
    BackendStatus,
    Capabilities,
    Tool,
    ToolContext,
    ToolInputError,
    ToolResult,
    input_path,
    output_name,
)

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.geometry import PixelBox
    from zoomearth.scene import Scene
    from zoomearth.scene.stack import SceneStack
    from zoomearth.tools._change import ChannelStats
    from zoomearth.tools._polygons import RegionPolygon
    from zoomearth.tools.base import Tile

__all__ = ["ChangeDetection"]

#: Context pixels around each streamed tile (Gaussian smoothing radius 4 + morphology 2, padded).
TILE_OVERLAP: Final = 16
MAX_SIDE: Final = 2048
#: Long side of the overview the per-date statistics are fitted on.
STATS_SIDE: Final = 1024
#: Long side of each preview panel.
PREVIEW_SIDE: Final = 512
#: Least Otsu threshold, in robust z-units of the magnitude.
MIN_OTSU_THRESHOLD: Final = 1.0
#: Value of nodata pixels in the change mask.
MASK_NODATA: Final = 255
SUPPORTED_DTYPES: Final = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")

NEEDS_DATES_TEMPLATE = (
    "Tool 'change_detection' compares two dates, but this scene is a single image. Run it on a "
    "time stack (zoomearth ask SCENE QUESTION --stack OTHER_DATE, or a folder of dated images "
    "as SCENE), or give the other date's image in 'other'."
)
ONE_DATE_TEMPLATE = (
    "Tool 'change_detection' compares two dates, but the stack holds only {label}. Add another "
    "date (--stack PATH) or give one in 'other'."
)
SAME_DATE_TEMPLATE = (
    "Tool 'change_detection': 'before' and 'after' both name {label}; name two different dates "
    "(available: {labels})."
)
BAD_DATE_TEMPLATE = "Tool 'change_detection': {reason}"
NO_NIR_TEMPLATE = (
    "Tool 'change_detection': method 'ndvi' needs a red and a near-infrared band, and this image "
    "has none recognised ({count} band(s)). Use method 'spectral' or 'auto'."
)
FEW_BANDS_TEMPLATE = (
    "Tool 'change_detection': the date {label} ({source}) has {got} band(s), but the comparison "
    "uses bands {bands} of the scene. Give dates with the same bands."
)
SAME_AS_INPUT_TEMPLATE = (
    "Tool 'change_detection': 'other' ({path}) is the scene itself; give an image of another "
    "date."
)
OTHER_UNREADABLE_TEMPLATE = (
    "Tool 'change_detection': cannot use 'other' ({path}) as a second date: {reason}"
)
NO_VALID_TEMPLATE = (
    "Tool 'change_detection': the region {box} has no pixel valid on both {before} and {after} "
    "(nodata, or outside one date's footprint); choose a region both dates cover."
)
OTHER_WINS_NOTE = (
    "'other' was given, so the scene is compared with {path}; the stack's other dates are not "
    "used."
)
NO_GEOREF_AREA_NOTE = (
    "The image has no projected georeference, so areas are in pixels and min_area_m2 was taken "
    "as square pixels."
)
NO_PREVIEW_TEMPLATE = "No preview was written: {reason}"


class ChangeDetection(Tool):
    """Change mask, polygons and preview between two dates of a region."""

    name = "change_detection"
    description = (
        "Find what changed in the region between two dates of a time stack (default: the oldest "
        "and the newest; name them in 'before'/'after', e.g. '2009' and '2020'): a radiometrically "
        "normalised difference of the bands (and NDVI when there is a NIR band), thresholded "
        "(Otsu). Writes a change mask GeoTIFF, GeoJSON polygons of the changed areas with their "
        "area in m², a before/after/change preview, and says how much area changed. Use it for "
        "'what changed', 'new buildings since 2014', 'changes between 2009 and 2020'."
    )

    class Args(BaseModel):
        """Arguments of ``change_detection``."""

        model_config = ConfigDict(extra="forbid")

        before: str | None = Field(
            None,
            max_length=64,
            description="Earlier date: a stack date label or year, e.g. '2009' (default: the "
            "oldest date)",
        )
        after: str | None = Field(
            None,
            max_length=64,
            description="Later date: a stack date label or year, e.g. '2020' (default: the "
            "newest date)",
        )
        other: input_path() | None = Field(  # type: ignore[valid-type]
            None,
            description="Path of another image of the same place to compare the scene with, "
            "when the scene is not a time stack",
        )
        method: Literal["auto", "spectral", "ndvi"] = Field(
            "auto",
            description="'spectral': normalised band differences; 'ndvi': NDVI difference "
            "(needs a NIR band); 'auto': both when there is a NIR band",
        )
        threshold: Literal["otsu"] | Annotated[float, Field(gt=0, le=100)] = Field(
            "otsu",
            description="'otsu' (automatic) or a change magnitude in robust standard "
            "deviations (e.g. 2.5); pixels above it changed",
        )
        min_area_m2: float = Field(
            0.0, ge=0, description="Drop changed areas smaller than this (square metres)"
        )
        name: str = output_name("change")
        preview: bool = Field(True, description="Also write a before/after/change PNG preview")

    capabilities: ClassVar[Capabilities] = Capabilities(
        bands=None,
        dtypes=SUPPORTED_DTYPES,
        max_side=MAX_SIDE,
        streaming=True,
        tile_overlap=TILE_OVERLAP,
        device_memory_mb=0,
        independent_tiles=True,
    )

    @classmethod
    def backend_status(cls) -> list[BackendStatus]:
        """NumPy/OpenCV arrays, Otsu threshold, polygons through shapely."""
        return [
            BackendStatus.of_package(
                "normalised-difference", "opencv-python-headless", "OpenCV + NumPy, Otsu"
            )
        ]

    # ------------------------------------------------------------------------------------------
    def run(self, ctx: ToolContext, args: Args) -> ToolResult:  # type: ignore[override]
        """Fit the statistics, histogram the magnitude, threshold and write the outputs."""
        with _date_pair(ctx, args) as pair:
            return _Job(ctx, args, pair).run()


# ----------------------------------------------------------------------------------------------
# The two dates
# ----------------------------------------------------------------------------------------------
class _Pair:
    """The stack and the indexes of the two dates compared."""

    def __init__(self, stack: SceneStack, before: int, after: int) -> None:
        self.stack = stack
        self.before = before
        self.after = after

    def label(self, index: int) -> str:
        return self.stack.dates[index].label

    def source(self, index: int) -> str:
        return self.stack.dates[index].source


def _stack_error(exc: Exception) -> ToolInputError:
    return ToolInputError(
        BAD_DATE_TEMPLATE.format(reason=str(exc)), code="bad_date", tool=ChangeDetection.name
    )


@contextlib.contextmanager
def _date_pair(ctx: ToolContext, args: ChangeDetection.Args) -> Iterator[_Pair]:
    """The stack to read and the two dates; a stack built for ``other`` is closed afterwards."""
    from zoomearth.errors import ZoomEarthError
    from zoomearth.scene.stack import SceneStack, StackError

    scene = ctx.scene
    stack: SceneStack | None = getattr(ctx, "stack", None)
    owned = False
    if args.other is not None:
        if _same_file(args.other, scene.path):
            raise ToolInputError(
                SAME_AS_INPUT_TEMPLATE.format(path=args.other), tool=ChangeDetection.name
            )
        if stack is not None and len(stack) > 1:
            ctx.note(OTHER_WINS_NOTE.format(path=args.other))
        try:
            stack = SceneStack.from_sources(scene.path, [args.other], settings=ctx.settings)
        except ZoomEarthError as exc:
            raise ToolInputError(
                OTHER_UNREADABLE_TEMPLATE.format(path=args.other, reason=exc),
                tool=ChangeDetection.name,
            ) from None
        owned = True
    if stack is None:
        raise ToolInputError(NEEDS_DATES_TEMPLATE, code="needs_stack", tool=ChangeDetection.name)
    try:
        if len(stack) < 2:
            raise ToolInputError(
                ONE_DATE_TEMPLATE.format(label=stack.dates[0].label),
                code="needs_stack",
                tool=ChangeDetection.name,
            )
        dated = all(d.when is not None for d in stack.dates)
        if owned and not dated:
            # Unknown dates: the scene is the later image, 'other' the earlier one.
            ref = stack.reference_index
            default_before, default_after = 1 - ref, ref
        else:
            default_before, default_after = 0, stack.newest_index()
        try:
            before = stack.index_of(args.before) if args.before else default_before
            after = stack.index_of(args.after) if args.after else default_after
        except StackError as exc:
            raise _stack_error(exc) from None
        if before == after:
            raise ToolInputError(
                SAME_DATE_TEMPLATE.format(
                    label=stack.dates[before].label, labels=", ".join(stack.labels)
                ),
                code="bad_date",
                tool=ChangeDetection.name,
            )
        yield _Pair(stack, before, after)
    finally:
        if owned:
            stack.close()


def _same_file(a: Any, b: Any) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _source_stamp(source: str) -> list[Any]:
    """``[source, size, mtime_ns]`` of a date (a replaced file changes the tile key)."""
    try:
        st = Path(source).stat()
    except (OSError, ValueError):
        return [source, None, None]
    return [source, st.st_size, st.st_mtime_ns]


# ----------------------------------------------------------------------------------------------
# Bands
# ----------------------------------------------------------------------------------------------
def _band_roles(scene: Scene) -> tuple[list[int], int | None, int | None]:
    """The bands compared and the positions of red and NIR among them.

    Returns:
        ``(bands, red, nir)``: 1-based bands compared (alpha excluded), and the 0-based
        positions of red and NIR within ``bands`` (None when unknown).
    """
    from zoomearth.errors import BandLayoutError

    try:
        mapping = scene.band_mapping()
        rgb, alpha = mapping.rgb, mapping.alpha
    except BandLayoutError:
        rgb, alpha = ((1, 2, 3) if scene.count >= 3 else (1,)), None
    bands = [
        b
        for b in range(1, scene.count + 1)
        if b != alpha and scene.colorinterp[b - 1] != "alpha"
    ]
    red = rgb[0] if len(rgb) == 3 else None
    nir: int | None = None
    for b in bands:
        desc = (scene.descriptions[b - 1] or "").lower() if b - 1 < len(scene.descriptions) else ""
        if desc in ("nir", "near infrared", "near-infrared") or desc.startswith(("nir", "near")):
            nir = b
            break
    if nir is None and red is not None and tuple(rgb) == (1, 2, 3) and 4 in bands:
        nir = 4  # NAIP, PlanetScope, most 4-band aerial imagery: R, G, B, NIR
    pos = {b: i for i, b in enumerate(bands)}
    return (
        bands,
        pos.get(red) if red is not None else None,
        pos.get(nir) if nir is not None and nir != red else None,
    )


# ----------------------------------------------------------------------------------------------
# The call
# ----------------------------------------------------------------------------------------------
class _Job:
    """One call: statistics, threshold, tiles, outputs."""

    def __init__(self, ctx: ToolContext, args: ChangeDetection.Args, pair: _Pair) -> None:
        self.ctx = ctx
        self.args = args
        self.pair = pair
        self.stack = pair.stack
        scene = ctx.scene
        self.bands, self.red, self.nir = _band_roles(scene)
        if args.method == "ndvi" and (self.nir is None or self.red is None):
            raise ToolInputError(
                NO_NIR_TEMPLATE.format(count=scene.count), tool=ChangeDetection.name
            )
        self.use_ndvi = args.method in ("auto", "ndvi") and self.nir is not None
        self.use_spectral = args.method in ("auto", "spectral")
        for index in (pair.before, pair.after):
            count = self.stack.scene(index).count
            if count < max(self.bands):
                raise ToolInputError(
                    FEW_BANDS_TEMPLATE.format(
                        label=pair.label(index),
                        source=pair.source(index),
                        got=count,
                        bands=", ".join(map(str, self.bands)),
                    ),
                    tool=ChangeDetection.name,
                )
        self.fill: dict[int, list[float]] = {}
        self.stats: dict[int, ChannelStats] = {}
        self.kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # -- pixels --------------------------------------------------------------------------------
    def _read(
        self, index: int, box: PixelBox, out_shape: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(pixels (bands, h, w) float32, valid (h, w) bool)`` of a date on the reference grid."""
        import numpy as np

        from zoomearth.errors import ZoomEarthError

        try:
            data = self.stack.read(index, box, out_shape=out_shape, bands=self.bands)
        except ZoomEarthError as exc:
            raise _stack_error(exc) from None
        raw = np.ma.getdata(data).astype(np.float32)
        mask = np.ma.getmaskarray(data) | ~np.isfinite(raw)
        return raw, np.asarray(~mask.any(axis=0), dtype=bool)

    def _channels(self, index: int, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Filled, smoothed channels of one date (NDVI appended when used)."""
        from zoomearth.tools._change import smooth, with_ndvi

        x = raw.copy()
        if not valid.all():
            for b, value in enumerate(self.fill[index]):
                x[b][~valid] = value
        x = smooth(x)
        return with_ndvi(x, self.red, self.nir) if self.use_ndvi else x

    def _magnitude(self, box: PixelBox) -> tuple[np.ndarray, np.ndarray]:
        """``(magnitude (h, w) float32, valid (h, w) bool)`` over a full-resolution box."""
        from zoomearth.tools._change import change_magnitude

        p = self.pair
        raw_b, valid_b = self._read(p.before, box)
        raw_a, valid_a = self._read(p.after, box)
        valid = valid_b & valid_a
        xb = self._channels(p.before, raw_b, valid_b)
        xa = self._channels(p.after, raw_a, valid_a)
        mag = change_magnitude(
            xb,
            xa,
            self.stats[p.before],
            self.stats[p.after],
            bands=len(self.bands),
            use_spectral=self.use_spectral,
            use_ndvi=self.use_ndvi,
        )
        return mag, valid

    # -- steps ---------------------------------------------------------------------------------
    def fit_statistics(self, region: PixelBox) -> bool:
        """Band medians and per-channel robust statistics of both dates on the region's overview.

        Returns:
            Whether the overview has a pixel valid on both dates.
        """
        import numpy as np

        from zoomearth.tools._change import channel_stats

        ow, oh = self.ctx.scene.output_size(region, STATS_SIDE)
        p = self.pair
        reads = {i: self._read(i, region, (oh, ow)) for i in (p.before, p.after)}
        both = reads[p.before][1] & reads[p.after][1]
        for index, (raw, valid) in reads.items():
            self.fill[index] = [
                float(np.median(raw[b][valid])) if valid.any() else 0.0
                for b in range(raw.shape[0])
            ]
            x = self._channels(index, raw, valid)
            self.stats[index] = channel_stats(x, both if both.any() else valid)
        return bool(both.any())

    def histogram(self, tiles: list[Tile]) -> np.ndarray:
        """First pass: the magnitude histogram of the region (full resolution, tile by tile)."""
        import numpy as np

        from zoomearth.tools._change import HIST_BINS, magnitude_histogram

        hist = np.zeros(HIST_BINS, np.int64)
        for tile in tiles:
            self.ctx.check_cancelled()
            mag, valid = self._magnitude(tile.read_box)
            hist += magnitude_histogram(tile.crop(mag), tile.crop(valid))
            if len(tiles) == 1:
                self.kept[tile.index] = (mag, valid)  # one tile: the second pass reuses it
        return hist

    def run(self) -> ToolResult:
        import numpy as np

        from zoomearth.scene.writing import SourceGeoref, TiledRasterWriter
        from zoomearth.tools._change import HIST_MAX, clean_mask, otsu_threshold

        ctx, args, p = self.ctx, self.args, self.pair
        scene = ctx.scene
        region = ctx.box
        col, row, width, height = region.to_window()
        before_label, after_label = p.label(p.before), p.label(p.after)
        if not self.fit_statistics(region) and (
            scene.output_size(region, STATS_SIDE) == (width, height)
        ):
            raise ToolInputError(
                NO_VALID_TEMPLATE.format(box=region, before=before_label, after=after_label),
                code="no_valid_pixels",
                tool=ChangeDetection.name,
            )
        side = int(getattr(ctx.settings, "tool_tile_side", 1024) or 1024) if ctx.streamed else None
        tiles = ctx.tiles(side=side, overlap=TILE_OVERLAP)
        hist = self.histogram(tiles)
        if int(hist.sum()) == 0:
            raise ToolInputError(
                NO_VALID_TEMPLATE.format(box=region, before=before_label, after=after_label),
                code="no_valid_pixels",
                tool=ChangeDetection.name,
            )
        if args.threshold == "otsu":
            otsu = otsu_threshold(hist, hi=HIST_MAX)
            threshold = max(otsu, MIN_OTSU_THRESHOLD)
            how = f"Otsu {otsu:.2f}" + (
                f", raised to the floor {MIN_OTSU_THRESHOLD:g}" if otsu < MIN_OTSU_THRESHOLD else ""
            )
        else:
            threshold = float(args.threshold)
            how = "given"

        pixel_m2 = _pixel_area_m2(scene, region)
        if pixel_m2 is None and args.min_area_m2 > 0:
            ctx.note(NO_GEOREF_AREA_NOTE)
        min_area_px = (
            int(math.ceil(args.min_area_m2 / pixel_m2)) if pixel_m2 else int(args.min_area_m2)
        )
        streamed_tiles = len(tiles) > 1

        def change_tile(tile: Tile) -> dict[str, Any]:
            """The tile's own part of the mask (uint8 0/1/255) and its pixel counts."""
            kept = self.kept.pop(tile.index, None)
            mag, valid = kept if kept is not None else self._magnitude(tile.read_box)
            changed = clean_mask(
                mag > threshold, valid, min_area_px=min_area_px, keep_edge=streamed_tiles
            )
            own_valid, own_changed = tile.crop(valid), tile.crop(changed)
            out = np.where(own_valid, own_changed.astype(np.uint8), np.uint8(MASK_NODATA))
            return {
                "mask": out.astype(np.uint8),
                "n_valid": int(own_valid.sum()),
                "n_changed": int(own_changed.sum()),
            }

        source = SourceGeoref.coerce(scene)
        window = (col, row, width, height)
        mask_path = ctx.output_path(f"{args.name}.tif")
        writer = TiledRasterWriter.for_window(
            mask_path,
            source,
            window,
            count=1,
            dtype="uint8",
            nodata=MASK_NODATA,
            overview_resampling="nearest",
            tags={
                "ZOOMEARTH_TOOL": ChangeDetection.name,
                "ZOOMEARTH_CLASSES": "0=unchanged,1=changed,255=nodata",
                "ZOOMEARTH_BEFORE": before_label,
                "ZOOMEARTH_AFTER": after_label,
            },
            protect=ctx.protected_paths,
            progress=ctx.streamed,
            progress_desc="change_detection",
        )
        key = {
            "dates": [_source_stamp(p.source(p.before)), _source_stamp(p.source(p.after))],
            "labels": [before_label, after_label],
            "stats": {str(i): s.as_lists() for i, s in self.stats.items()},
            "fill": {str(i): [round(v, 6) for v in f] for i, f in self.fill.items()},
            "threshold": round(threshold, 6),
            "min_area_px": min_area_px,
            "channels": [self.use_spectral, self.use_ndvi, self.red, self.nir],
        }
        polygons: list[tuple[Tile, list[RegionPolygon]]] = []
        n_valid = n_changed = 0
        from zoomearth.tools._polygons import mask_to_polygons

        with writer:
            for tile, done in ctx.map_tiles(
                change_tile, tiles, key=key, message="change_detection: tiles"
            ):
                mask = np.asarray(done["mask"])
                writer.write(mask, tile.window)
                n_valid += int(done["n_valid"])
                n_changed += int(done["n_changed"])
                x0, y0 = int(tile.box.x1), int(tile.box.y1)
                traced = mask_to_polygons(mask, offset=(x0, y0), simplify_px=0.0, valid=mask == 1)
                polygons.append((tile, traced))
        regions = _merge_polygons(polygons, region)
        gj_path, geo = self._write_geojson(regions, before_label, after_label)
        areas = [a for a in geo.areas_m2 if a is not None]

        artifacts = [
            ctx.artifact(
                mask_path,
                ArtifactKind.MASK,
                f"change mask {before_label} -> {after_label} of region {region}: "
                "1 changed, 0 unchanged, 255 nodata",
                classes="0=unchanged,1=changed,255=nodata",
                before=before_label,
                after=after_label,
            ),
            ctx.artifact(
                gj_path,
                ArtifactKind.VECTOR,
                f"{len(regions)} changed area polygon(s) {before_label} -> {after_label}"
                + (f", {sum(areas):,.0f} m² in all" if areas else ""),
                features=len(regions),
            ),
        ]
        preview = None
        if args.preview:
            from zoomearth.errors import BandLayoutError

            try:
                preview = self._preview(region, mask_path)
            except (BandLayoutError, ValueError, OSError) as exc:
                ctx.note(NO_PREVIEW_TEMPLATE.format(reason=exc))

        fraction = n_changed / n_valid if n_valid else 0.0
        changed_m2 = n_changed * pixel_m2 if pixel_m2 else None
        valid_m2 = n_valid * pixel_m2 if pixel_m2 else None
        channels = f"{len(self.bands)} band(s)" if self.use_spectral else ""
        if self.use_ndvi:
            channels = f"{channels} + NDVI" if channels else "NDVI"
        amount = (
            f"{_area_text(changed_m2)} changed, {100 * fraction:.1f} % of the region's "
            f"{valid_m2:,.0f} m² of valid pixels"
            if changed_m2 is not None and valid_m2 is not None
            else f"{n_changed:,} px changed, {100 * fraction:.1f} % of the region's "
            f"{n_valid:,} valid px"
        )
        text = (
            f"Change between {before_label} and {after_label} in region {region} "
            f"({width} x {height} px"
            + (f", streamed in {len(tiles)} tiles" if len(tiles) > 1 else "")
            + f"): {amount}, in {len(regions)} polygon(s)"
        )
        if areas:
            text += f"; the largest is {_area_text(max(areas))}"
        text += (
            f". Magnitude from {channels}, normalised per date; threshold {threshold:.2f} "
            f"({how}). Wrote a change mask GeoTIFF, GeoJSON polygons"
            + (" and a before | after | change preview" if preview else "")
            + "."
        )
        if n_changed == 0:
            text += " No change was found."
        data: dict[str, Any] = {
            "before": before_label,
            "after": after_label,
            "window": [col, row, width, height],
            "tiles": len(tiles),
            "method": args.method,
            "channels": channels,
            "threshold": round(threshold, 4),
            "threshold_method": "otsu" if args.threshold == "otsu" else "given",
            "valid_pixels": n_valid,
            "changed_pixels": n_changed,
            "changed_fraction": round(fraction, 6),
            "changed_area_m2": None if changed_m2 is None else round(changed_m2, 1),
            "valid_area_m2": None if valid_m2 is None else round(valid_m2, 1),
            "polygons": len(regions),
            "min_area_px": min_area_px,
        }
        return ToolResult(text=text, artifacts=artifacts, preview=preview, data=data)

    # -- outputs -------------------------------------------------------------------------------
    def _write_geojson(
        self, regions: list[RegionPolygon], before: str, after: str
    ) -> tuple[Path, Any]:
        import json

        from zoomearth.scene.writing import atomic_path
        from zoomearth.tools._polygons import polygons_to_geojson

        scene = self.ctx.scene
        geo = polygons_to_geojson(
            regions,
            transform=scene.transform if scene.georeferenced else None,
            crs=scene.crs if scene.georeferenced else None,
            properties={"change": "changed", "before": before, "after": after},
        )
        path = self.ctx.output_path(f"{self.args.name}.geojson")
        with atomic_path(path, protect=self.ctx.protected_paths) as tmp:
            Path(tmp).write_text(json.dumps(geo.collection), encoding="utf-8")
        return path, geo

    def _preview(self, region: PixelBox, mask_path: Path) -> Any:
        """Before | after | change (after greyed, changed pixels red), one PNG artifact draft."""
        import warnings

        import cv2
        import numpy as np
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.errors import NotGeoreferencedWarning

        from zoomearth.scene.writing import write_png

        p = self.pair
        before = self.stack.render(p.before, region, PREVIEW_SIDE)
        after = self.stack.render(p.after, region, PREVIEW_SIDE)
        oh, ow = after.rgb.shape[:2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(mask_path) as ds:
                # Read at up to 4x the panel (nearest), then any changed pixel under a panel
                # pixel marks it: changes smaller than a panel pixel stay visible.
                rh, rw = min(ds.height, 4 * oh), min(ds.width, 4 * ow)
                mask = ds.read(1, out_shape=(rh, rw), resampling=Resampling.nearest)
        hit = (mask == 1).astype(np.float32)
        changed = cv2.resize(hit, (ow, oh), interpolation=cv2.INTER_AREA) > 0
        grey = after.rgb.astype(np.float32).mean(axis=2, keepdims=True)
        panel = np.repeat(grey * 0.6 + 40.0, 3, axis=2).clip(0, 255).astype(np.uint8)
        panel[changed] = (255, 32, 32)
        panel[~after.valid | ~before.valid] = 0
        gap = np.full((oh, 4, 3), 255, np.uint8)
        h = min(before.rgb.shape[0], oh)
        img = np.concatenate([before.rgb[:h], gap[:h], after.rgb[:h], gap[:h], panel[:h]], axis=1)
        png = write_png(
            self.ctx.output_path(f"{self.args.name}.png"), img, protect=self.ctx.protected_paths
        )
        return self.ctx.artifact(
            png,
            ArtifactKind.PREVIEW,
            f"before ({p.label(p.before)}) | after ({p.label(p.after)}) | change (red), "
            f"region {region}",
        )


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _area_text(m2: float | None) -> str:
    if m2 is None:
        return "?"
    if m2 >= 10_000:
        return f"{m2:,.0f} m² ({m2 / 10_000:,.1f} ha)"
    return f"{m2:,.0f} m²"


def _pixel_area_m2(scene: Scene, region: PixelBox) -> float | None:
    """Ground area of one reference-grid pixel in m² (at the region's centre for lon/lat grids).

    Measured the way the GeoJSON areas are (:func:`polygons_to_geojson`), so the mask's area and
    the polygons' areas agree. None for images without georeference.
    """
    from shapely.geometry import box as shapely_box

    from zoomearth.tools._polygons import RegionPolygon, polygons_to_geojson

    if not scene.georeferenced or scene.crs is None:
        return None
    cx, cy = (region.x1 + region.x2) / 2.0, (region.y1 + region.y2) / 2.0
    x, y = math.floor(cx), math.floor(cy)
    cell = RegionPolygon(1, shapely_box(x, y, x + 1, y + 1), 1)
    try:
        area = polygons_to_geojson([cell], transform=scene.transform, crs=scene.crs).areas_m2[0]
    except Exception:  # noqa: BLE001 - a CRS GDAL cannot reproject: areas in pixels
        return None
    return float(area) if area else None


def _merge_polygons(
    per_tile: list[tuple[Tile, list[RegionPolygon]]], region: PixelBox
) -> list[RegionPolygon]:
    """Polygons of all tiles, regions cut by inner tile edges merged, simplified (1 px).

    Tiles trace their own part of the mask with the pixel staircase kept (no simplification), so
    the two halves of a region cut by a tile edge share that edge exactly and their union is one
    polygon; simplification (topology preserved, as :func:`mask_to_polygons` does) comes after.
    """
    import shapely
    from shapely.ops import unary_union

    from zoomearth.tools._polygons import RegionPolygon

    xs = {float(t.box.x1) for t, _ in per_tile} | {float(t.box.x2) for t, _ in per_tile}
    ys = {float(t.box.y1) for t, _ in per_tile} | {float(t.box.y2) for t, _ in per_tile}
    inner_x = xs - {float(region.x1), float(region.x2)}
    inner_y = ys - {float(region.y1), float(region.y2)}
    whole: list[RegionPolygon] = []
    cut: list[RegionPolygon] = []
    for _tile, polys in per_tile:
        for poly in polys:
            x1, y1, x2, y2 = poly.geometry.bounds
            if (x1 in inner_x or x2 in inner_x or y1 in inner_y or y2 in inner_y) and (
                inner_x or inner_y
            ):
                cut.append(poly)
            else:
                whole.append(poly)
    if cut:
        merged = unary_union([p.geometry for p in cut])
        parts = list(getattr(merged, "geoms", [merged]))
        for part in parts:
            if part.geom_type != "Polygon" or part.is_empty:
                continue
            whole.append(RegionPolygon(1, part, int(round(part.area))))
    out = []
    for poly in whole:
        geom = poly.geometry
        simple = geom.simplify(1.0, preserve_topology=True)
        if not simple.is_empty and simple.area > 0:
            geom = simple
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            if geom.geom_type != "Polygon":
                pieces = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon"]
                if not pieces:
                    continue
                geom = max(pieces, key=lambda g: g.area)
        out.append(RegionPolygon(poly.label, geom, poly.area_px))
    out.sort(key=lambda r: -r.area_px)
    return out
