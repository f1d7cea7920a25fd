"""The inputs of the built-in ``cloud_removal`` tool (:mod:`zoomearth.tools.cloud_removal`).

Which band plays which role (:class:`_Layout`: RGB, NIR, quality and alpha bands, checked against
the image), the quality masks given by path (:class:`_Other`: opened, checked for georeferencing,
CRS, bands and overlap, and read on the map window of a region), and the other acquisitions
(:class:`_StackOther`): the dates of the scene's time stack (:func:`stack_others`, closest date
first), or the images given in ``others`` (:func:`open_other_date`: checked like a quality mask,
but in any CRS). Both are read through a time stack's windowed, warped reads
(:meth:`zoomearth.scene.stack.SceneStack.read`, bilinear), so an acquisition in another CRS,
grid or resolution lands on the image's own pixels.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Final

from zoomearth.tools.base import ToolInputError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np

    from zoomearth.geometry import PixelBox
    from zoomearth.scene import Scene
    from zoomearth.scene.stack import SceneStack
    from zoomearth.tools.cloud_removal import CloudRemoval

#: The tool's name (``CloudRemoval.name``), for the errors raised here.
TOOL_NAME: Final = "cloud_removal"

BAD_BANDS_TEMPLATE = (
    "Tool 'cloud_removal': {what} {bad} does not exist; this image has {count} band(s), "
    "numbered 1 to {count}."
)
RGB_TEMPLATE = (
    "Tool 'cloud_removal': rgb_bands must name three different bands; got {got}. "
    "Give the red, green and blue band numbers, e.g. [1, 2, 3]."
)
ROLE_CLASH_TEMPLATE = (
    "Tool 'cloud_removal': band {band} cannot be both {a} and {b}; choose different bands."
)
NO_GEOREF_TEMPLATE = (
    "Tool 'cloud_removal': '{arg}' needs a georeferenced image (CRS and geotransform) to find "
    "the same place in {path}; this image has none. Process it without '{arg}' (method "
    "'single'), or georeference it first."
)
OTHER_NO_GEOREF_TEMPLATE = (
    "Tool 'cloud_removal': {path} (in '{arg}') has no CRS or geotransform, so the same place "
    "cannot be found in it; give georeferenced acquisitions or leave it out."
)
CRS_TEMPLATE = (
    "Tool 'cloud_removal': {path} (in '{arg}') is in {other}, but the image is in {crs}. "
    "Reproject it to {crs} first (e.g. gdalwarp -t_srs {crs} IN OUT) or leave it out."
)
OVERLAP_TEMPLATE = (
    "Tool 'cloud_removal': {path} (in '{arg}') does not overlap the region {box} (its bounds "
    "{other_bounds} vs the region's {bounds} in {crs}). Give acquisitions of the same place, or "
    "choose a region inside them."
)
OTHER_BANDS_TEMPLATE = (
    "Tool 'cloud_removal': {path} (in 'others') has {got} band(s) but the image has {want}; "
    "give acquisitions with the same bands in the same order."
)
UNREADABLE_TEMPLATE = (
    "Tool 'cloud_removal': cannot read {path} (in '{arg}') as a raster ({reason}); give a "
    "GeoTIFF or another GDAL-readable image."
)
SAME_AS_INPUT_TEMPLATE = (
    "Tool 'cloud_removal': {path} in 'others' is the image being processed; give other dates."
)
STACK_BANDS_NOTE = (
    "The stack date {label} has {got} band(s) but the image has {want}; it was not used for the "
    "composite."
)
#: The most other dates a composite reads (the Args' ``others`` limit).
MAX_OTHERS: Final = 32


class _Layout:
    """Roles of the image's bands (0-based positions)."""

    def __init__(
        self,
        count: int,
        rgb: tuple[int, int, int],
        nir: int | None,
        quality: int | None,
        alpha: int | None,
    ) -> None:
        self.count = count
        self.rgb = rgb
        self.nir = nir
        self.quality = quality
        self.alpha = alpha
        #: Bands that are corrected (everything but quality and alpha bands).
        self.work = [b for b in range(count) if b not in (quality, alpha)]
        #: Positions of R, G, B and NIR within ``work``.
        red, green, blue = rgb
        self.rgb_w = (self.work.index(red), self.work.index(green), self.work.index(blue))
        self.nir_w = None if nir is None else self.work.index(nir)

    @classmethod
    def resolve(cls, scene: Scene, args: CloudRemoval.Args) -> _Layout:
        count = scene.count

        def check(what: str, bands: list[int]) -> None:
            bad = [b for b in bands if b > count]
            if bad:
                raise ToolInputError(
                    BAD_BANDS_TEMPLATE.format(what=what, bad=", ".join(map(str, bad)), count=count),
                    tool=TOOL_NAME,
                )

        from zoomearth.errors import BandLayoutError

        try:
            mapping_rgb, mapping_alpha = scene.band_mapping().rgb, scene.band_mapping().alpha
        except BandLayoutError:  # ambiguous colour interpretation: R, G, B are bands 1-3
            mapping_rgb, mapping_alpha = (1, 2, 3), None
        alpha = None if mapping_alpha is None else mapping_alpha - 1
        if args.rgb_bands is not None:
            check("rgb_bands", list(args.rgb_bands))
            if len(set(args.rgb_bands)) != 3:
                raise ToolInputError(
                    RGB_TEMPLATE.format(got=args.rgb_bands), tool=TOOL_NAME
                )
            rgb = tuple(b - 1 for b in args.rgb_bands)
        elif len(mapping_rgb) == 3:
            rgb = tuple(b - 1 for b in mapping_rgb)
        else:
            rgb = (0, 1, 2)
        quality = None
        if args.quality_band is not None:
            check("quality_band", [args.quality_band])
            quality = args.quality_band - 1
        if args.nir_band is not None:
            check("nir_band", [args.nir_band])
            nir: int | None = args.nir_band - 1
        else:
            nir = 3 if count >= 4 and 3 not in (*rgb, quality, alpha) else None
        roles: dict[str, list[int | None]] = {
            "red/green/blue": list(rgb),
            "NIR": [nir],
            "quality band": [quality],
        }
        seen: dict[int, str] = {}
        for role, bands in roles.items():
            for b in bands:
                if b is None:
                    continue
                if b in seen:
                    raise ToolInputError(
                        ROLE_CLASH_TEMPLATE.format(band=b + 1, a=seen[b], b=role),
                        tool=TOOL_NAME,
                    )
                seen[b] = role
        if alpha is not None and alpha in seen:
            alpha = None  # explicit roles win over the guessed alpha band
        return cls(count, rgb, nir, quality, alpha)  # type: ignore[arg-type]


class _Other:
    """Another raster read at the same map window as the image (other date or quality mask)."""

    def __init__(self, ds: Any, path: str, arg: str) -> None:
        self.ds = ds
        self.path = path
        self.arg = arg
        self.label: str | None = None  # a path, not a stack date (see _StackOther)
        self.gain: np.ndarray | None = None
        self.offset: np.ndarray | None = None

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        path: str,
        scene: Scene,
        region: PixelBox,
        arg: str,
        layout: _Layout | None,
        *,
        any_crs: bool = False,
    ) -> Any:
        import rasterio
        from rasterio.errors import RasterioError

        if not scene.georeferenced:
            raise ToolInputError(
                NO_GEOREF_TEMPLATE.format(arg=arg, path=path), tool=TOOL_NAME
            )
        if arg == "others" and _same_file(path, scene.path):
            raise ToolInputError(SAME_AS_INPUT_TEMPLATE.format(path=path), tool=TOOL_NAME)
        try:
            ds = rasterio.open(path)
        except (RasterioError, OSError) as exc:
            raise ToolInputError(
                UNREADABLE_TEMPLATE.format(path=path, arg=arg, reason=exc),
                tool=TOOL_NAME,
            ) from None
        try:
            other = cls(ds, path, arg)
            other.validate(scene, region, layout, any_crs=any_crs)
            yield other
        finally:
            ds.close()

    def validate(
        self, scene: Scene, region: PixelBox, layout: _Layout | None, *, any_crs: bool = False
    ) -> None:
        """Check georeference, CRS (unless ``any_crs``: it is read warped), bands and overlap."""
        ds = self.ds
        if ds.crs is None or ds.transform.is_identity:
            raise ToolInputError(
                OTHER_NO_GEOREF_TEMPLATE.format(path=self.path, arg=self.arg),
                tool=TOOL_NAME,
            )
        crs = scene.crs_string
        if ds.crs != scene.crs and not any_crs:
            epsg = ds.crs.to_epsg()
            raise ToolInputError(
                CRS_TEMPLATE.format(
                    path=self.path,
                    arg=self.arg,
                    other=f"EPSG:{epsg}" if epsg else ds.crs.to_wkt()[:80],
                    crs=crs,
                ),
                tool=TOOL_NAME,
            )
        if layout is not None and ds.count != layout.count:
            raise ToolInputError(
                OTHER_BANDS_TEMPLATE.format(path=self.path, got=ds.count, want=layout.count),
                tool=TOOL_NAME,
            )
        left, bottom, right, top = _map_bounds(scene, region)
        ob = ds.bounds
        if ds.crs != scene.crs:
            from rasterio.coords import BoundingBox
            from rasterio.warp import transform_bounds

            ob = BoundingBox(*transform_bounds(ds.crs, scene.crs, *ob, densify_pts=21))
        if min(right, ob.right) <= max(left, ob.left) or min(top, ob.top) <= max(bottom, ob.bottom):
            raise ToolInputError(
                OVERLAP_TEMPLATE.format(
                    path=self.path,
                    arg=self.arg,
                    box=region,
                    other_bounds=[round(v, 2) for v in (ob.left, ob.bottom, ob.right, ob.top)],
                    bounds=[round(v, 2) for v in (left, bottom, right, top)],
                    crs=crs,
                ),
                tool=TOOL_NAME,
            )

    def read(
        self, scene: Scene, box: PixelBox, shape: tuple[int, int], bands: list[int] | None = None
    ) -> np.ma.MaskedArray:
        """Read ``bands`` (0-based; None = all) over the map footprint of ``box`` of the scene.

        Co-registered rasters with the scene's pixel size are read pixel for pixel (window
        offsets rounded to whole pixels); other pixel sizes are resampled bilinearly to
        ``shape`` ``(h, w)``. Pixels outside the raster are masked.
        """
        import numpy as np
        from rasterio.enums import Resampling
        from rasterio.windows import Window, from_bounds

        h, w = shape
        indexes = [b + 1 for b in bands] if bands is not None else list(range(1, self.ds.count + 1))
        left, bottom, right, top = _map_bounds(scene, box)
        win = from_bounds(left, bottom, right, top, transform=self.ds.transform)
        same_grid = math.isclose(win.width, w, rel_tol=1e-6, abs_tol=1e-3) and math.isclose(
            win.height, h, rel_tol=1e-6, abs_tol=1e-3
        )
        if same_grid:
            c0, r0 = round(win.col_off), round(win.row_off)
            out = np.ma.masked_all((len(indexes), h, w), dtype=self.ds.dtypes[0])
            cs, rs = max(c0, 0), max(r0, 0)
            ce, re = min(c0 + w, self.ds.width), min(r0 + h, self.ds.height)
            if ce > cs and re > rs:
                part = self.ds.read(indexes, window=Window(cs, rs, ce - cs, re - rs), masked=True)
                out[:, rs - r0 : re - r0, cs - c0 : ce - c0] = part
            data = out
        else:
            data = self.ds.read(
                indexes,
                window=win,
                out_shape=(len(indexes), h, w),
                boundless=True,
                masked=True,
                resampling=Resampling.bilinear,
            )
        if np.issubdtype(data.dtype, np.floating):
            data.mask = np.ma.getmaskarray(data) | ~np.isfinite(np.ma.getdata(data))
        return data


class _StackOther:
    """Another acquisition read on the image's grid through a time stack (warped, bilinear).

    Has :class:`_Other`'s reading interface (``read``, ``path``, ``gain``, ``offset``), so the
    composite treats a stack date and an ``others`` path alike.

    Attributes:
        stack: The stack whose reference is the image being processed.
        index: The date's index in the stack.
        path: Its source (path or URL).
        label: Its date label (``"2014-07-20"``), or None for an ``others`` path.
    """

    def __init__(self, stack: SceneStack, index: int, label: str | None) -> None:
        self.stack = stack
        self.index = index
        self.path = stack.dates[index].source
        self.label = label
        self.arg = "others" if label is None else "stack"
        self.gain: np.ndarray | None = None
        self.offset: np.ndarray | None = None

    def read(
        self, scene: Scene, box: PixelBox, shape: tuple[int, int], bands: list[int] | None = None
    ) -> np.ma.MaskedArray:
        """Read ``bands`` (0-based; None = all) on the image's grid under ``box``, ``shape (h, w)``.

        Pixels the acquisition does not cover, its nodata and non-finite values are masked.
        """
        import numpy as np

        indexes = [b + 1 for b in bands] if bands is not None else None
        h, w = shape
        data = self.stack.read(self.index, box, out_shape=(h, w), bands=indexes)
        if np.issubdtype(data.dtype, np.floating):
            data.mask = np.ma.getmaskarray(data) | ~np.isfinite(np.ma.getdata(data))
        return data


@contextlib.contextmanager
def open_other_date(
    path: str, scene: Scene, region: PixelBox, layout: _Layout
) -> Iterator[_StackOther]:
    """An image of ``others``, checked like a quality mask (any CRS), read warped onto the image.

    Raises:
        ToolInputError: The scene or the image has no georeference, it is the scene itself, it
            cannot be read, has other bands or does not overlap the region.
    """
    from zoomearth.scene.stack import SceneStack, StackDate

    with _Other.open(path, scene, region, "others", layout, any_crs=True):
        pass  # the checks; the pixels come through the stack below
    stack = SceneStack(
        scene,
        [StackDate("image", None, str(scene.path)), StackDate("other", None, str(path))],
        0,
        settings=scene.settings,
    )
    try:
        yield _StackOther(stack, 1, None)
    finally:
        scene_1 = stack._scenes.get(1)  # noqa: SLF001 - close only the date opened here
        if scene_1 is not None:
            scene_1.close()


def stack_others(
    stack: SceneStack, layout: _Layout, note: Callable[[str], None]
) -> list[_StackOther]:
    """The stack's dates other than the image (its reference), closest in time first.

    Dates whose band count differs from the image's are left out with a note; at most
    :data:`MAX_OTHERS` dates are used. Undated stacks keep their order.
    """
    ref = stack.reference_index
    when = stack.dates[ref].when
    order = [i for i in range(len(stack)) if i != ref]
    if when is not None and all(stack.dates[i].when is not None for i in order):
        order.sort(key=lambda i: abs((stack.dates[i].when - when).days))  # type: ignore[operator]
    out = []
    for i in order:
        count = stack.scene(i).count
        if count != layout.count:
            note(STACK_BANDS_NOTE.format(label=stack.dates[i].label, got=count, want=layout.count))
            continue
        out.append(_StackOther(stack, i, stack.dates[i].label))
    return out[:MAX_OTHERS]


def _same_file(a: Any, b: Any) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _map_bounds(scene: Scene, box: PixelBox) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of a full-resolution box in the scene's CRS."""
    x0, y0, x1, y1 = (float(v) for v in box.as_list())
    tr = scene.transform
    xs, ys = zip(*(tr @ (x, y) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))), strict=True)
    return min(xs), min(ys), max(xs), max(ys)
