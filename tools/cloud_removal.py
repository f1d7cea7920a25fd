"""Built-in tool ``cloud_removal``: find clouds and haze, then fill them from other dates.

Without other dates (or where none sees the ground) thin cloud is dehazed and thick cloud is
inpainted; invented pixels are flagged.

What it does, per tile of the region (one tile up to 2048 px a side; larger regions and whole
scenes stream in tiles of the setting ``tool_tile_side`` with 64 px of overlap, written with
:class:`~zoomearth.scene.writing.TiledRasterWriter`):

1. **Mask** (:mod:`zoomearth.tools._cloudmask`): thick cloud and haze from brightness, whiteness,
   saturation (and NIR for 4-band images) thresholds plus morphology. Quality information plugs
   in here: ``quality_band`` (a band of the image, e.g. a QA band; the other dates' same band
   masks them too) or ``quality_mask`` (a co-registered mask file, e.g. a Sentinel-2 cloud
   mask); pixels they flag (non-zero, or one of ``quality_values``) are cloud.
2. **Multi-temporal composite** (``others``: paths of co-registered acquisitions of the same
   place, same CRS; sizes and grids may differ). The same map window is read from each, each is
   masked the same way, radiometrically matched to the image (per band gain/offset matching the
   mean and standard deviation of the pixels clear in both, fitted once on the region's
   overview), and every cloud/haze pixel is replaced by the **median of the clear observations**
   -- the composite analysts trust. Edges are feathered over 2 px.
3. **Single image** (no others, or pixels no other date sees clear): haze is removed with the
   dark channel prior and a guided filter (:mod:`zoomearth.tools._haze`; atmospheric light from
   the region's overview, shared by all tiles), blended in where the mask finds haze; thick
   cloud is **inpainted** -- classical Telea inpainting by default, diffusion inpainting
   (``StableDiffusionInpaintPipeline`` through the model pool) when the setting
   ``inpaint_model`` names a checkpoint. Inpainted pixels are invented: they are flagged in the
   synthetic-pixels mask and their share is given in the result.

Outputs (all aligned to the source window: same CRS, window transform; tiled, compressed,
overviewed): the cleaned raster (source bands, dtype and nodata; alpha and quality bands copied
unchanged), the cloud mask (uint8: 0 clear, 1 cloud, 2 haze, 255 nodata), the synthetic-pixels
mask (uint8: 1 = invented by inpainting, 0 = observed, 255 nodata) and a PNG preview (before with
the mask outlined | after, long side 512 px per panel). Memory is bounded by one tile (plus one
tile per other date) whatever the region size.

Tiles are independent: each tile depends only on its pixels and on what :meth:`_Job.prepare`
fixed for the call (atmospheric light, radiometric matching), which is part of the tile key, so a
stopped call resumes from its finished tiles (:meth:`~zoomearth.tools.base.ToolContext.map_tiles`).
A region without a valid pixel (all nodata, NaN or +-Inf) is refused (``no_valid_pixels``).

Reflectance scale: pixel values are divided by a white level before the thresholds apply --
255 for ``uint8``, 10000 for 16-bit (the reflectance x 10,000 convention of Sentinel-2 and
Landsat surface reflectance), 1.0 for floats; set ``white_level`` for other scalings.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from importlib import util
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoomearth.artifacts import ArtifactKind
from zoomearth.tools._cloudmask import CLOUD, HAZE, MASK_NODATA, MaskThresholds, cloud_mask
from zoomearth.tools.base import (
    BackendStatus,
    Capabilities,
    Tool,
    ToolContext,
    ToolFailure,
    ToolInputError,
    ToolResult,
    input_path,
)

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.geometry import PixelBox
    from zoomearth.scene import Scene
    from zoomearth.tools.base import Tile

__all__ = ["CloudRemoval"]

#: Context pixels around each streamed tile (morphology, haze search, guided filter, inpainting).
TILE_OVERLAP: Final = 64
#: Long side of the overview used for the atmospheric light and the radiometric matching.
OVERVIEW_SIDE: Final = 1024
#: Long side of each preview panel.
PREVIEW_SIDE: Final = 512
#: Telea inpainting radius (pixels).
INPAINT_RADIUS: Final = 5
#: Scale of the uint16 image Telea inpainting works on (reflectance 1.0 -> 16000).
TELEA_SCALE: Final = 16000.0
#: Feathering of composite and dehazing edges (Gaussian sigma, pixels).
FEATHER_SIGMA: Final = 2.0
#: Least number of pixels clear in both images to fit a radiometric match.
MIN_MATCH_PIXELS: Final = 200

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
COMPOSITE_NEEDS_OTHERS_TEMPLATE = (
    "Tool 'cloud_removal': method 'composite' needs other acquisitions of the same place in "
    "'others' (paths of co-registered images); give them, or use method 'single'."
)
SINGLE_WITH_OTHERS_TEMPLATE = (
    "method 'single' ignores the {n} image(s) in 'others'; use method 'auto' or 'composite' "
    "to fill clouds from them."
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
THRESHOLDS_TEMPLATE = (
    "haze_brightness ({haze}) must not exceed brightness ({thick}): haze is thinner, hence "
    "darker, than thick cloud"
)
MODEL_LOAD_TEMPLATE = (
    "the diffusion inpainting model {model!r} (setting inpaint_model) could not be loaded or "
    "run: {reason}. Fix the setting (a directory written by save_pretrained, or a hub id in "
    "the local cache), or unset it to use classical inpainting."
)
FALLBACK_NOTE_TEMPLATE = (
    "Diffusion inpainting ran out of memory ({reason}); thick cloud was filled with classical "
    "(Telea) inpainting instead."
)
NO_PREVIEW_TEMPLATE = "No preview was written: {reason}"
NO_VALID_TEMPLATE = (
    "Tool 'cloud_removal': the region {box} has no valid pixels (all nodata/NaN/Inf); choose "
    "another region."
)


class CloudRemoval(Tool):
    """Detect clouds and haze, and replace them from other dates or by dehazing/inpainting."""

    name = "cloud_removal"
    description = (
        "Remove clouds and haze from the region: computes a cloud/haze mask, then fills cloudy "
        "pixels with the median of other co-registered dates of the same place when 'others' "
        "lists them (the trusted method), else dehazes thin cloud and inpaints thick cloud "
        "(invented pixels are flagged). Writes a cleaned GeoTIFF, the cloud mask, the "
        "synthetic-pixels mask and a before/after preview."
    )

    class Args(BaseModel):
        """Arguments of ``cloud_removal``."""

        model_config = ConfigDict(extra="forbid")

        others: list[input_path()] = Field(  # type: ignore[valid-type]
            default_factory=list,
            max_length=32,
            description=(
                "Paths of other acquisitions of the same place (same CRS, co-registered; grids "
                "may differ) to composite from"
            ),
        )
        method: Literal["auto", "composite", "single"] = Field(
            "auto",
            description=(
                "'composite': fill from 'others'; 'single': dehaze + inpaint this image only; "
                "'auto': composite when 'others' are given"
            ),
        )
        brightness: float = Field(
            0.7, gt=0, le=1, description="Least mean RGB brightness of thick cloud (0-1 of white)"
        )
        haze_brightness: float = Field(
            0.45, gt=0, le=1, description="Least mean RGB brightness of haze (0-1 of white)"
        )
        saturation: float = Field(
            0.2, ge=0, le=1, description="Largest colour saturation of cloud and haze (0-1)"
        )
        whiteness: float = Field(
            0.15, ge=0, le=2, description="Largest whiteness (spread of R, G, B over their mean)"
        )
        nir_min: float | None = Field(
            0.4,
            ge=0,
            le=1,
            description="Least NIR brightness of cloud (images with a NIR band; null: no test)",
        )
        dilate_px: int = Field(
            2, ge=0, le=16, description="Grow the cloud mask by this many pixels (soft edges)"
        )
        haze_px: int | None = Field(
            32,
            ge=0,
            le=32,
            description="Look for haze within this distance (px) of thick cloud; null: anywhere",
        )
        dehaze: Literal["mask", "all", "off"] = Field(
            "mask",
            description=(
                "Dark-channel dehazing where the mask finds haze ('mask'), on the whole region "
                "('all', for hazy scenes), or never ('off')"
            ),
        )
        quality_band: Annotated[int, Field(ge=1)] | None = Field(
            None, description="1-based band holding a quality/cloud flag (non-zero = cloud)"
        )
        quality_mask: input_path() | None = Field(  # type: ignore[valid-type]
            None, description="Path of a co-registered cloud mask raster (non-zero = cloud)"
        )
        quality_values: list[int] | None = Field(
            None,
            max_length=64,
            description="Flag values meaning cloud in the quality band/mask (default: non-zero)",
        )
        rgb_bands: list[Annotated[int, Field(ge=1)]] | None = Field(
            None,
            min_length=3,
            max_length=3,
            description="1-based red, green, blue bands (default: from the image's layout)",
        )
        nir_band: Annotated[int, Field(ge=1)] | None = Field(
            None, description="1-based NIR band (default: band 4 of a 4-band image)"
        )
        white_level: float | None = Field(
            None,
            gt=0,
            description="Pixel value of white (default 255 for 8-bit, 10000 for 16-bit, 1 float)",
        )
        normalize: bool = Field(
            True, description="Match the other dates' radiometry to this image before compositing"
        )
        inpaint_steps: int = Field(
            20, ge=1, le=200, description="Denoising steps of diffusion inpainting (if configured)"
        )
        prompt: str = Field(
            "aerial photograph of the ground, clear sky, no clouds",
            max_length=300,
            description="Prompt of diffusion inpainting (if configured)",
        )
        seed: int = Field(0, ge=0, description="Seed of diffusion inpainting")
        name: str = Field(
            "cloudfree",
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
            description="Output file name stem (letters, digits, '_' and '-')",
        )
        preview: bool = Field(True, description="Also write a before/after PNG preview")

        @model_validator(mode="after")
        def _check_thresholds(self) -> CloudRemoval.Args:
            if self.haze_brightness > self.brightness:
                raise ValueError(
                    THRESHOLDS_TEMPLATE.format(haze=self.haze_brightness, thick=self.brightness)
                )
            return self

    capabilities: ClassVar[Capabilities] = Capabilities(
        bands=(3, 4, 5, 6),  # R, G, B [, NIR] plus up to two extra bands (QA, alpha, ...)
        dtypes=("uint8", "uint16", "int16", "float32"),
        max_side=2048,
        streaming=True,
        tile_overlap=TILE_OVERLAP,
        device_memory_mb=2600,
        independent_tiles=True,
    )

    @classmethod
    def backend_status(cls) -> list[BackendStatus]:
        """OpenCV (classical, always) and diffusers (when installed; needs ``inpaint_model``)."""
        out = [
            BackendStatus(
                "classical",
                util.find_spec("cv2") is not None,
                "mask thresholds + morphology, median composite, dark channel prior, Telea",
            )
        ]
        has_diffusers = util.find_spec("diffusers") is not None
        out.append(
            BackendStatus(
                "diffusion-inpaint",
                has_diffusers,
                "used when the setting inpaint_model names a checkpoint"
                if has_diffusers
                else "install diffusers",
            )
        )
        return out

    # ------------------------------------------------------------------------------------------
    def run(self, ctx: ToolContext, args: Args) -> ToolResult:  # type: ignore[override]
        """Mask, composite/dehaze/inpaint tile by tile; write the outputs and a preview."""
        from zoomearth.scene.writing import SourceGeoref, TiledRasterWriter

        scene = ctx.scene
        layout = _Layout.resolve(scene, args)
        white = _white_level(scene.dtype, args.white_level)
        method = args.method
        if method == "auto":
            method = "composite" if args.others else "single"
        if method == "composite" and not args.others:
            raise ToolInputError(COMPOSITE_NEEDS_OTHERS_TEMPLATE, tool=self.name)
        if method == "single" and args.others:
            ctx.note(SINGLE_WITH_OTHERS_TEMPLATE.format(n=len(args.others)))
        thresholds = MaskThresholds(
            brightness=args.brightness,
            haze_brightness=args.haze_brightness,
            saturation=args.saturation,
            whiteness=args.whiteness,
            nir_min=args.nir_min,
            dilate_px=args.dilate_px,
            haze_px=args.haze_px,
        )
        region = ctx.box
        col, row, width, height = region.to_window()

        with contextlib.ExitStack() as stack:
            others = (
                [
                    stack.enter_context(_Other.open(p, scene, region, "others", layout))
                    for p in args.others
                ]
                if method == "composite"
                else []
            )
            qmask = (
                stack.enter_context(
                    _Other.open(args.quality_mask, scene, region, "quality_mask", None)
                )
                if args.quality_mask
                else None
            )
            job = _Job(
                ctx=ctx,
                args=args,
                layout=layout,
                white=white,
                thresholds=thresholds,
                others=others,
                qmask=qmask,
            )
            job.prepare(region)
            if job.certainly_empty:
                raise ToolInputError(
                    NO_VALID_TEMPLATE.format(box=region), code="no_valid_pixels", tool=self.name
                )

            source = SourceGeoref.coerce(scene)
            window = (col, row, width, height)
            tag = {"ZOOMEARTH_TOOL": self.name}
            clean_path = ctx.output_path(f"{args.name}.tif")
            mask_path = ctx.output_path(f"{args.name}_cloudmask.tif")
            synth_path = ctx.output_path(f"{args.name}_synthetic.tif")
            w_clean = TiledRasterWriter.for_window(
                clean_path,
                source,
                window,
                tags=tag,
                protect=ctx.protected_paths,
                progress=ctx.streamed,
                progress_desc="cloud_removal",
            )
            w_mask = TiledRasterWriter.for_window(
                mask_path,
                source,
                window,
                count=1,
                dtype="uint8",
                nodata=MASK_NODATA,
                overview_resampling="nearest",
                tags={**tag, "ZOOMEARTH_CLASSES": "0=clear,1=cloud,2=haze,255=nodata"},
                protect=ctx.protected_paths,
            )
            w_synth = TiledRasterWriter.for_window(
                synth_path,
                source,
                window,
                count=1,
                dtype="uint8",
                nodata=MASK_NODATA,
                overview_resampling="nearest",
                tags={**tag, "ZOOMEARTH_CLASSES": "0=observed,1=synthetic,255=nodata"},
                protect=ctx.protected_paths,
            )
            side = None
            if ctx.streamed:
                side = int(getattr(ctx.settings, "tool_tile_side", 1024) or 1024)
            tiles = ctx.tiles(side=side, overlap=TILE_OVERLAP)
            with w_clean, w_mask, w_synth:
                for tile, done in ctx.map_tiles(
                    job.clean_tile, tiles, key=job.tile_key(), message="cloud_removal: tiles"
                ):
                    w_clean.write(done["cleaned"], tile.window)
                    w_mask.write(done["mask"], tile.window)
                    w_synth.write(done["synthetic"], tile.window)
                    job.merge(done)
        if job.stats["valid"] == 0:
            # A decimated overview can miss a few valid pixels; the tiles cannot.
            raise ToolInputError(
                NO_VALID_TEMPLATE.format(box=region), code="no_valid_pixels", tool=self.name
            )

        artifacts = [
            ctx.artifact(
                clean_path,
                ArtifactKind.RASTER,
                f"cloud-free GeoTIFF of region {region} ({width} x {height} px, "
                f"{scene.count} band(s) {scene.dtype})",
                width=width,
                height=height,
                bands=scene.count,
                dtype=scene.dtype,
            ),
            ctx.artifact(
                mask_path,
                ArtifactKind.MASK,
                "cloud mask: 0 clear, 1 cloud, 2 haze, 255 nodata",
                classes="0=clear,1=cloud,2=haze,255=nodata",
            ),
            ctx.artifact(
                synth_path,
                ArtifactKind.MASK,
                "synthetic-pixels mask: 1 = invented by inpainting, 0 = observed",
                classes="0=observed,1=synthetic,255=nodata",
            ),
        ]
        preview = None
        if args.preview:
            try:
                preview = job.preview(region, clean_path, mask_path)
            except (ValueError, OSError) as exc:
                ctx.note(NO_PREVIEW_TEMPLATE.format(reason=exc))
        stats = job.stats
        text = job.summary(region, len(tiles), method)
        data: dict[str, Any] = {
            "method": method,
            "window": [col, row, width, height],
            "tiles": len(tiles),
            "valid_pixels": stats["valid"],
            "cloud_fraction": _ratio(stats["cloud"], stats["valid"]),
            "haze_fraction": _ratio(stats["haze"], stats["valid"]),
            "replaced_fraction": _ratio(stats["replaced"], stats["valid"]),
            "synthetic_fraction": _ratio(stats["synthetic"], stats["valid"]),
            "dates_composited": len(others),
            "inpainting": job.inpaint_backend,
            "diffusion_windows": job.diffusion_windows,
            "white_level": white,
            "atmospheric_light": None
            if job.light is None
            else [round(float(v), 4) for v in job.light],
        }
        return ToolResult(text=text, artifacts=artifacts, preview=preview, data=data)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _white_level(dtype: str, given: float | None) -> float:
    if given is not None:
        return float(given)
    if dtype == "uint8":
        return 255.0
    if dtype in ("uint16", "int16"):
        return 10000.0
    return 1.0


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
                    tool=CloudRemoval.name,
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
                    RGB_TEMPLATE.format(got=args.rgb_bands), tool=CloudRemoval.name
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
                        tool=CloudRemoval.name,
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
        self.gain: np.ndarray | None = None
        self.offset: np.ndarray | None = None

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, path: str, scene: Scene, region: PixelBox, arg: str, layout: _Layout | None
    ) -> Any:
        import rasterio
        from rasterio.errors import RasterioError

        if not scene.georeferenced:
            raise ToolInputError(
                NO_GEOREF_TEMPLATE.format(arg=arg, path=path), tool=CloudRemoval.name
            )
        if arg == "others" and _same_file(path, scene.path):
            raise ToolInputError(SAME_AS_INPUT_TEMPLATE.format(path=path), tool=CloudRemoval.name)
        try:
            ds = rasterio.open(path)
        except (RasterioError, OSError) as exc:
            raise ToolInputError(
                UNREADABLE_TEMPLATE.format(path=path, arg=arg, reason=exc),
                tool=CloudRemoval.name,
            ) from None
        try:
            other = cls(ds, path, arg)
            other.validate(scene, region, layout)
            yield other
        finally:
            ds.close()

    def validate(self, scene: Scene, region: PixelBox, layout: _Layout | None) -> None:
        ds = self.ds
        if ds.crs is None or ds.transform.is_identity:
            raise ToolInputError(
                OTHER_NO_GEOREF_TEMPLATE.format(path=self.path, arg=self.arg),
                tool=CloudRemoval.name,
            )
        crs = scene.crs_string
        if ds.crs != scene.crs:
            epsg = ds.crs.to_epsg()
            raise ToolInputError(
                CRS_TEMPLATE.format(
                    path=self.path,
                    arg=self.arg,
                    other=f"EPSG:{epsg}" if epsg else ds.crs.to_wkt()[:80],
                    crs=crs,
                ),
                tool=CloudRemoval.name,
            )
        if layout is not None and ds.count != layout.count:
            raise ToolInputError(
                OTHER_BANDS_TEMPLATE.format(path=self.path, got=ds.count, want=layout.count),
                tool=CloudRemoval.name,
            )
        left, bottom, right, top = _map_bounds(scene, region)
        ob = ds.bounds
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
                tool=CloudRemoval.name,
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


def _valid(data: np.ma.MaskedArray, bands: list[int]) -> np.ndarray:
    """``(h, w)`` bool: True where no band in ``bands`` of a ``(bands, h, w)`` read is masked."""
    import numpy as np

    return np.asarray(~np.ma.getmaskarray(data)[bands].any(axis=0), dtype=bool)


def _feather(sel: np.ndarray) -> np.ndarray:
    """Blend weight in [0, 1]: 1 on ``sel``, fading to 0 over about two sigmas outside it."""
    import cv2
    import numpy as np

    soft = cv2.GaussianBlur(sel.astype(np.float32), (0, 0), FEATHER_SIGMA)
    return np.maximum(soft * np.float32(2.0), sel.astype(np.float32)).clip(0, 1)


class _Job:
    """State of one call: settings derived once, then :meth:`process` per tile."""

    def __init__(
        self,
        *,
        ctx: ToolContext,
        args: CloudRemoval.Args,
        layout: _Layout,
        white: float,
        thresholds: MaskThresholds,
        others: list[_Other],
        qmask: _Other | None,
    ) -> None:
        import numpy as np

        self.ctx = ctx
        self.args = args
        self.layout = layout
        self.white = np.float32(white)
        self.thresholds = thresholds
        self.others = others
        self.qmask = qmask
        self.light: np.ndarray | None = None
        self.inpaint_backend = "none"
        self.model = getattr(ctx.settings, "inpaint_model", None) or None
        self.stats = {"valid": 0, "cloud": 0, "haze": 0, "replaced": 0, "synthetic": 0}
        self.dehazed = 0
        self.diffusion_windows = 0
        #: True when the region is known to hold no valid pixel (its overview is full resolution).
        self.certainly_empty = False
        # Per tile (reset by process): inpainting backend used, diffusion windows, notes.
        self.last_inpaint = "none"
        self.last_windows = 0
        self.last_notes: list[str] = []
        empty = np.zeros((0, 0), dtype=bool)
        self.last_replaced = self.last_dehazed = empty
        self.last_mask = self.last_synthetic = empty.astype(np.uint8)

    # -- per call ------------------------------------------------------------------------------
    def _scaled(self, raw: np.ndarray) -> np.ndarray:
        import numpy as np

        return raw[self.layout.work].astype(np.float32) / self.white

    def _mask_of(
        self, x: np.ndarray, valid: np.ndarray, quality: np.ndarray | None = None
    ) -> np.ndarray:
        lay = self.layout
        return cloud_mask(
            x[list(lay.rgb_w)],
            valid,
            self.thresholds,
            nir=None if lay.nir_w is None else x[lay.nir_w],
            quality=quality,
        )

    def prepare(self, region: PixelBox) -> None:
        """Atmospheric light and radiometric matching, once, from the region's overview."""
        import numpy as np

        from zoomearth.tools._haze import atmospheric_light, fill_invalid

        scene = self.ctx.scene
        ow, oh = scene.output_size(region, OVERVIEW_SIDE)
        data = self.ctx.read(region, out_size=(ow, oh))
        raw = np.ma.getdata(data)
        valid = _valid(data, self.layout.work)
        x = fill_invalid(self._scaled(raw), valid)  # NaN nodata would spread through filters
        if valid.any():
            self.light = atmospheric_light(x, self.layout.rgb_w, valid)
        elif (ow, oh) == (int(region.width), int(region.height)):
            self.certainly_empty = True
            return
        if not self.others or not self.args.normalize:
            return
        clear = valid & (self._mask_of(x, valid, self._quality(raw, region, (oh, ow))) == 0)
        for other in self.others:
            od = other.read(scene, region, (oh, ow))
            ovalid = _valid(od, self.layout.work)
            oraw = np.ma.getdata(od)
            ox = self._scaled(oraw)
            both = clear & ovalid & (self._mask_of(ox, ovalid, self._band_flags(oraw)) == 0)
            if int(both.sum()) < MIN_MATCH_PIXELS:
                continue
            gain = np.ones(len(self.layout.work), np.float32)
            offset = np.zeros(len(self.layout.work), np.float32)
            for i in range(len(self.layout.work)):
                t, o = x[i][both], ox[i][both]
                so = float(o.std())
                g = float(t.std()) / so if so > 1e-6 else 1.0
                gain[i] = min(max(g, 0.5), 2.0)
                offset[i] = float(t.mean()) - gain[i] * float(o.mean())
            other.gain, other.offset = gain, offset

    def _flagged(self, band: np.ndarray) -> np.ndarray:
        import numpy as np

        values = self.args.quality_values
        return np.isin(band, values) if values else band != 0

    def _band_flags(self, raw: np.ndarray) -> np.ndarray | None:
        """``(h, w)`` cloud flags of the quality band of a read, or None without one."""
        q = self.layout.quality
        return None if q is None else self._flagged(raw[q])

    def _quality(self, raw: np.ndarray, box: PixelBox, shape: tuple[int, int]) -> np.ndarray | None:
        import numpy as np

        flags = self._band_flags(raw)
        if self.qmask is not None:
            q = self.qmask.read(self.ctx.scene, box, shape, bands=[0])
            f = self._flagged(np.ma.getdata(q)[0]) & ~np.ma.getmaskarray(q)[0]
            flags = f if flags is None else flags | f
        return flags

    # -- per tile ------------------------------------------------------------------------------
    def process(self, tile: Tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clean one tile (read with its overlap).

        Args:
            tile: The tile; its ``read_box`` is read and processed, its own part is kept.

        Returns:
            ``(cleaned, mask, synthetic)``: ``(bands, h, w)`` in the source dtype, and two
            ``(h, w)`` uint8 masks (see the module docstring). ``last_replaced`` holds the
            ``(h, w)`` bool map of pixels whose values were changed.
        """
        import numpy as np

        from zoomearth.tools._haze import dehaze, fill_invalid

        lay = self.layout
        box = tile.read_box
        self.last_inpaint, self.last_windows, self.last_notes = "none", 0, []
        data = self.ctx.read(box)
        raw = np.ma.getdata(data)
        self.last_dehazed = np.zeros(raw.shape[1:], dtype=bool)
        nodata = np.ma.getmaskarray(data)
        valid = _valid(data, lay.work)
        h, w = valid.shape
        # Nodata pixels get a neutral value (band median): NaN would spread through OpenCV's
        # erosion and box filters over valid pixels. _to_source writes valid pixels only.
        x = fill_invalid(self._scaled(raw), valid)
        mask = self._mask_of(x, valid, self._quality(raw, box, (h, w)))
        target = (mask == CLOUD) | (mask == HAZE)
        out = x.copy()
        remaining = target
        if self.others and target.any():
            fill, have = self._composite(box, (h, w))
            sel = target & have
            if sel.any():
                weight = _feather(sel)
                weight[~(have & valid)] = 0.0
                filled = np.where(have[None], fill, out)
                out = np.where(weight[None] > 0, out + (filled - out) * weight[None], out)
            remaining = target & ~have
        if self.args.dehaze != "off" and self.light is not None:
            hazy = (
                valid & (mask != CLOUD) if self.args.dehaze == "all" else remaining & (mask == HAZE)
            )
            if hazy.any():
                clear_j, _ = dehaze(out, lay.rgb_w, self.light)
                weight = _feather(hazy)
                weight[~valid] = 0.0
                if self.args.dehaze == "all":
                    weight[mask == CLOUD] = 1.0
                    weight[~valid] = 0.0
                clear_j = np.clip(clear_j, 0.0, None)
                out = np.where(weight[None] > 0, out + (clear_j - out) * weight[None], out)
                self.last_dehazed = hazy
        thick = remaining & (mask == CLOUD)
        if thick.any():
            out = self._inpaint(out, thick, valid, tile.inner)
        synthetic = np.where(valid, thick.astype(np.uint8), np.uint8(MASK_NODATA))
        cleaned = self._to_source(raw, out, nodata, valid)
        self.last_mask, self.last_synthetic = mask, synthetic.astype(np.uint8)
        self.last_replaced = (target | self.last_dehazed) & valid
        return cleaned, mask, self.last_synthetic

    def _composite(self, box: PixelBox, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Median of the other dates' clear, radiometrically matched observations."""
        import numpy as np

        lay = self.layout
        stack = []
        for other in self.others:
            od = other.read(self.ctx.scene, box, shape)
            ovalid = _valid(od, lay.work)
            oraw = np.ma.getdata(od)
            ox = self._scaled(oraw)
            ok = ovalid & (self._mask_of(ox, ovalid, self._band_flags(oraw)) == 0)
            if other.gain is not None and other.offset is not None:
                ox = ox * other.gain[:, None, None] + other.offset[:, None, None]
            ox[:, ~ok] = np.nan
            stack.append(ox)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: nobody saw them
            med = np.nanmedian(np.stack(stack), axis=0)
        have = ~np.isnan(med).any(axis=0)
        return np.nan_to_num(med, nan=0.0).astype(np.float32), have

    def _inpaint(
        self,
        x: np.ndarray,
        thick: np.ndarray,
        valid: np.ndarray,
        inner: tuple[slice, slice],
    ) -> np.ndarray:
        """Fill ``thick`` pixels: Telea on every band, then diffusion on RGB when configured.

        Diffusion only runs on windows covering the tile's own part ``inner`` (the overlap is
        discarded anyway); Telea's fill outside them gives those windows their context.
        """
        import cv2
        import numpy as np

        lay = self.layout
        out = x.copy()
        unknown = (thick | ~valid).astype(np.uint8)
        for b in range(out.shape[0]):
            # OpenCV's Telea is only reliable on 8/16-bit input (float32 gives garbage), so the
            # band goes through uint16 with 1/16000 steps of white (values up to 4x white).
            u16 = np.clip(np.rint(out[b] * TELEA_SCALE), 0, 65535).astype(np.uint16)
            filled = cv2.inpaint(u16, unknown, INPAINT_RADIUS, cv2.INPAINT_TELEA)
            out[b][thick] = filled[thick].astype(np.float32) / TELEA_SCALE
        if self.last_inpaint == "none":
            self.last_inpaint = "telea"
        if self.model:
            own = np.zeros_like(thick)
            own[inner] = thick[inner]
            if own.any():
                rgb = self._diffusion(out, own)
                if rgb is not None:
                    for i, b in enumerate(lay.rgb_w):
                        out[b][own] = rgb[i][own]
        return out

    def _diffusion(self, x: np.ndarray, thick: np.ndarray) -> np.ndarray | None:
        """RGB filled by the diffusion pipeline (float, scaled), or None after an OOM fallback."""
        import numpy as np

        from zoomearth.errors import ModelFallbackRequired
        from zoomearth.tools._sd_inpaint import diffusion_fill, inpaint_spec

        lay = self.layout
        rgb8 = np.clip(np.rint(np.moveaxis(x[list(lay.rgb_w)], 0, -1) * 255.0), 0, 255)
        rgb8 = rgb8.astype(np.uint8)
        pool = self.ctx.require_pool()
        device = str(getattr(self.ctx.settings, "tool_device", "auto") or "auto")
        spec = inpaint_spec(str(self.model))

        def work(pipe: Any, _device: str) -> tuple[np.ndarray, int]:
            return diffusion_fill(
                pipe,
                rgb8,
                thick,
                prompt=self.args.prompt,
                negative_prompt="clouds, haze, fog, blur",
                steps=self.args.inpaint_steps,
                seed=self.args.seed,
                check=self.ctx.check_cancelled,
            )

        try:
            filled, windows = pool.run(spec, work, device=device)
        except ModelFallbackRequired as exc:
            self.last_notes.append(FALLBACK_NOTE_TEMPLATE.format(reason=exc))
            self.last_inpaint = "telea (diffusion ran out of memory)"
            return None
        except (OSError, ValueError, ImportError) as exc:
            # A missing or malformed checkpoint: say which setting to fix (errors while running
            # the model reach run_tool, which reports them as a ToolFailure with the cause).
            raise ToolFailure(
                MODEL_LOAD_TEMPLATE.format(model=self.model, reason=exc), tool=CloudRemoval.name
            ) from exc
        self.last_windows += windows
        self.last_inpaint = f"diffusion ({self.model})"
        return np.moveaxis(filled.astype(np.float32) / 255.0, -1, 0)

    def _to_source(
        self, raw: np.ndarray, out: np.ndarray, nodata: np.ndarray, valid: np.ndarray
    ) -> np.ndarray:
        """Back to the source's values: scale, round, clip; nodata and extra bands untouched."""
        import numpy as np

        lay = self.layout
        dt = raw.dtype
        res = raw.copy()
        vals = out * self.white
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            vals = np.clip(np.rint(vals), info.min, info.max)
        vals = vals.astype(dt)
        nd = self.ctx.scene.nodata
        if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
            # A corrected pixel must not become the nodata value (it would read as missing).
            hit = vals == np.asarray(nd).astype(dt)
            if hit.any():
                step = 1 if np.issubdtype(dt, np.integer) else np.finfo(dt).eps * max(1.0, abs(nd))
                bumped = np.asarray(nd + step if nd < _dtype_max(dt) else nd - step).astype(dt)
                vals[hit] = bumped
        for i, b in enumerate(lay.work):
            band = res[b]
            keep = valid & ~nodata[b]
            band[keep] = vals[i][keep]
        return res

    # -- bookkeeping ---------------------------------------------------------------------------
    def clean_tile(self, tile: Tile) -> dict[str, Any]:
        """Process one tile for :meth:`ToolContext.map_tiles`: its own part and its counts.

        Returns:
            ``cleaned`` ``(bands, h, w)`` source dtype, ``mask`` and ``synthetic`` ``(h, w)``
            uint8 (the tile's own part), the pixel counts of the statistics (``n_valid``,
            ``n_cloud``, ``n_haze``, ``n_synthetic``, ``n_replaced``, ``n_dehazed``), the
            inpainting backend used (``inpaint``), diffusion windows run and notes.
        """
        import numpy as np

        cleaned, mask, synthetic = self.process(tile)
        own_mask, own_synth = tile.crop(mask), tile.crop(synthetic)
        return {
            "cleaned": tile.crop(cleaned),
            "mask": own_mask,
            "synthetic": own_synth,
            "n_valid": int(np.count_nonzero(own_mask != MASK_NODATA)),
            "n_cloud": int(np.count_nonzero(own_mask == CLOUD)),
            "n_haze": int(np.count_nonzero(own_mask == HAZE)),
            "n_synthetic": int(np.count_nonzero(own_synth == 1)),
            "n_replaced": int(np.count_nonzero(tile.crop(self.last_replaced))),
            "n_dehazed": int(np.count_nonzero(tile.crop(self.last_dehazed))),
            "inpaint": self.last_inpaint,
            "windows": self.last_windows,
            "notes": "\n".join(self.last_notes),
        }

    def tile_key(self) -> dict[str, Any]:
        """What every tile depends on besides the arguments, region and input files."""
        return {
            "white": float(self.white),
            "light": None if self.light is None else [float(v) for v in self.light],
            "match": [
                None if o.gain is None or o.offset is None else [o.gain.tolist(), o.offset.tolist()]
                for o in self.others
            ],
            "model": self.model,
            "device": str(getattr(self.ctx.settings, "tool_device", "auto") or "auto")
            if self.model
            else None,
        }

    def merge(self, done: dict[str, Any]) -> None:
        """Add a finished tile (computed or reused) to the call's statistics."""
        for name in ("valid", "cloud", "haze", "synthetic", "replaced"):
            self.stats[name] += int(done[f"n_{name}"])
        self.dehazed += int(done["n_dehazed"])
        self.diffusion_windows += int(done["windows"])
        inpaint = str(done["inpaint"])
        if inpaint == "telea":
            if self.inpaint_backend == "none":
                self.inpaint_backend = inpaint
        elif inpaint != "none":
            self.inpaint_backend = inpaint
        for note in str(done["notes"]).splitlines():
            if note and note not in self.ctx.warnings:
                self.ctx.note(note)

    def summary(self, region: PixelBox, n_tiles: int, method: str) -> str:
        s = self.stats
        valid = s["valid"]
        pct = lambda n: f"{100.0 * n / valid:.1f} %" if valid else "0 %"  # noqa: E731
        head = f"Cloud removal on region {region}" + (
            f" (streamed in {n_tiles} tiles)" if n_tiles > 1 else ""
        )
        if valid == 0:
            return head + ": the region holds only nodata pixels; nothing to do."
        mask_how = "brightness/whiteness/saturation thresholds + morphology"
        if self.layout.quality is not None or self.qmask is not None:
            mask_how += " + quality flags"
        parts = [
            f"{head}: cloud {pct(s['cloud'])} and haze {pct(s['haze'])} of the valid pixels "
            f"(mask: {mask_how})."
        ]
        if method == "composite":
            parts.append(
                f"{len(self.others)} other date(s) composited (median of clear observations"
                + (", radiometrically matched" if self.args.normalize else "")
                + ")."
            )
        if self.dehazed:
            parts.append(f"Haze reduced with the dark channel prior on {pct(self.dehazed)}.")
        if s["synthetic"]:
            parts.append(
                f"{pct(s['synthetic'])} filled synthetically by inpainting ({self.inpaint_backend})"
                " -- invented pixels, flagged in the synthetic-pixels mask."
            )
        else:
            parts.append("No pixel was invented (0 % synthetic).")
        if s["cloud"] + s["haze"] == 0:
            parts.append("The region looks clear; the output equals the input.")
        return " ".join(parts)

    def preview(self, region: PixelBox, clean_path: Any, mask_path: Any) -> Any:
        """Before (mask outlined: cloud red, haze yellow) | after, as a PNG artifact draft."""
        import cv2
        import numpy as np
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.errors import NotGeoreferencedWarning

        from zoomearth.scene.writing import write_png

        ctx = self.ctx
        scene = ctx.scene
        ow, oh = scene.output_size(region, PREVIEW_SIDE)
        rgb_bands = [b + 1 for b in self.layout.rgb]
        before = ctx.read(region, out_size=(ow, oh), bands=rgb_bands)
        with warnings.catch_warnings():
            # Outputs of a pixel-only scene have no geotransform, on purpose.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(clean_path) as ds:
                after = ds.read(rgb_bands, out_shape=(3, oh, ow), resampling=Resampling.average)
            with rasterio.open(mask_path) as ds:
                mask = ds.read(1, out_shape=(oh, ow), resampling=Resampling.nearest)
        valid = _valid(before, list(range(3)))
        b = np.ma.getdata(before).astype(np.float32)
        if scene.dtype == "uint8":
            lo, hi = 0.0, 255.0
        elif valid.any():
            lo, hi = (float(v) for v in np.percentile(b[:, valid], [2, 98]))
            hi = max(hi, lo + 1e-6)
        else:
            lo, hi = 0.0, float(self.white)

        def to8(a: np.ndarray) -> np.ndarray:
            v = (a.astype(np.float32) - lo) * (255.0 / (hi - lo))
            img = np.clip(np.nan_to_num(v), 0, 255).astype(np.uint8)
            img = np.ascontiguousarray(np.moveaxis(img, 0, -1))
            img[~valid] = 0
            return img

        left, right = to8(b), to8(after)
        for cls, colour in ((HAZE, (255, 220, 0)), (CLOUD, (255, 40, 40))):
            m = (mask == cls).astype(np.uint8)
            if m.any():
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(left, contours, -1, colour, 1)
        gap = np.full((oh, 4, 3), 255, dtype=np.uint8)
        png = write_png(
            ctx.output_path(f"{self.args.name}_preview.png"),
            np.concatenate([left, gap, right], axis=1),
            protect=ctx.protected_paths,
        )
        return ctx.artifact(
            png,
            ArtifactKind.PREVIEW,
            f"before (cloud outlined red, haze yellow) | after, region {region}",
        )


def _dtype_max(dt: Any) -> float:
    import numpy as np

    return float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else float(np.finfo(dt).max)
