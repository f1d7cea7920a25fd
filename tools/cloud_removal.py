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
   mask); pixels they flag (non-zero, or one of ``quality_values``) are cloud. ``thin_haze``
   adds the haze optimized transform (HOT): haze anywhere, not only next to clouds, from the
   scene's blue-red clear line, fitted once per call on the scene's overview.
2. **Multi-temporal composite** (``others``: paths of other acquisitions of the same place; CRS,
   grids and pixel sizes may differ; without ``others``, the other dates of the scene's **time
   stack** (``--stack``, a folder of dates), closest date first). Each is read on the image's own
   pixel grid through the stack's windowed, warped reads (bilinear), masked the same way,
   radiometrically matched to the image (per band gain/offset matching the mean and standard
   deviation of the pixels clear in both, fitted once on the region's overview), and every
   cloud/haze pixel is replaced by the **median of the clear observations** -- the composite
   analysts trust. Edges are feathered over 2 px.
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
fixed for the call (atmospheric light, radiometric matching, the HOT clear line), which is part
of the tile key, so a stopped call resumes from its finished tiles
(:meth:`~zoomearth.tools.base.ToolContext.map_tiles`).
A region without a valid pixel (all nodata, NaN or +-Inf) is refused (``no_valid_pixels``).

Reflectance scale: pixel values are divided by a white level before the thresholds apply --
255 for ``uint8``, 10000 for 16-bit (the reflectance x 10,000 convention of Sentinel-2 and
Landsat surface reflectance), 1.0 for floats; set ``white_level`` for other scalings.

Module layout: band roles and the other dates' inputs are in :mod:`zoomearth.tools._cloud_inputs`,
the per-call work (:class:`_Job`) in :mod:`zoomearth.tools._cloud_job`; this module holds the
tool and re-exports them.
"""

from __future__ import annotations

import contextlib
from importlib import util
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoomearth.artifacts import ArtifactKind
from zoomearth.tools._cloud_inputs import BAD_BANDS_TEMPLATE as BAD_BANDS_TEMPLATE
from zoomearth.tools._cloud_inputs import CRS_TEMPLATE as CRS_TEMPLATE
from zoomearth.tools._cloud_inputs import NO_GEOREF_TEMPLATE as NO_GEOREF_TEMPLATE
from zoomearth.tools._cloud_inputs import OTHER_BANDS_TEMPLATE as OTHER_BANDS_TEMPLATE
from zoomearth.tools._cloud_inputs import OTHER_NO_GEOREF_TEMPLATE as OTHER_NO_GEOREF_TEMPLATE
from zoomearth.tools._cloud_inputs import OVERLAP_TEMPLATE as OVERLAP_TEMPLATE
from zoomearth.tools._cloud_inputs import RGB_TEMPLATE as RGB_TEMPLATE
from zoomearth.tools._cloud_inputs import ROLE_CLASH_TEMPLATE as ROLE_CLASH_TEMPLATE
from zoomearth.tools._cloud_inputs import SAME_AS_INPUT_TEMPLATE as SAME_AS_INPUT_TEMPLATE
from zoomearth.tools._cloud_inputs import UNREADABLE_TEMPLATE as UNREADABLE_TEMPLATE
from zoomearth.tools._cloud_inputs import _Layout, _Other, open_other_date, stack_others
from zoomearth.tools._cloud_inputs import _map_bounds as _map_bounds
from zoomearth.tools._cloud_inputs import _same_file as _same_file
from zoomearth.tools._cloud_job import FALLBACK_NOTE_TEMPLATE as FALLBACK_NOTE_TEMPLATE
from zoomearth.tools._cloud_job import FEATHER_SIGMA as FEATHER_SIGMA
from zoomearth.tools._cloud_job import INPAINT_RADIUS as INPAINT_RADIUS
from zoomearth.tools._cloud_job import MIN_MATCH_PIXELS as MIN_MATCH_PIXELS
from zoomearth.tools._cloud_job import MODEL_LOAD_TEMPLATE as MODEL_LOAD_TEMPLATE
from zoomearth.tools._cloud_job import OVERVIEW_SIDE as OVERVIEW_SIDE
from zoomearth.tools._cloud_job import PREVIEW_SIDE as PREVIEW_SIDE
from zoomearth.tools._cloud_job import TELEA_SCALE as TELEA_SCALE
from zoomearth.tools._cloud_job import _dtype_max as _dtype_max
from zoomearth.tools._cloud_job import _feather as _feather
from zoomearth.tools._cloud_job import _Job
from zoomearth.tools._cloud_job import _valid as _valid
from zoomearth.tools._cloudmask import MASK_NODATA, MaskThresholds
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

__all__ = ["CloudRemoval"]

#: Context pixels around each streamed tile (morphology, haze search, guided filter, inpainting).
TILE_OVERLAP: Final = 64

COMPOSITE_NEEDS_OTHERS_TEMPLATE = (
    "Tool 'cloud_removal': method 'composite' needs other acquisitions of the same place: give "
    "their paths in 'others', run on a time stack (--stack PATH, or a folder of dated images), "
    "or use method 'single'."
)
SINGLE_WITH_OTHERS_TEMPLATE = (
    "method 'single' ignores the {n} image(s) in 'others'; use method 'auto' or 'composite' "
    "to fill clouds from them."
)
THRESHOLDS_TEMPLATE = (
    "haze_brightness ({haze}) must not exceed brightness ({thick}): haze is thinner, hence "
    "darker, than thick cloud"
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
        "pixels with the median of other dates of the same place -- the scene's time stack, or "
        "the images 'others' lists -- (the trusted method), else dehazes thin cloud and inpaints "
        "thick cloud "
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
                "Paths of other acquisitions of the same place to composite from (any CRS or "
                "grid; default: the other dates of the scene's time stack)"
            ),
        )
        method: Literal["auto", "composite", "single"] = Field(
            "auto",
            description=(
                "'composite': fill from 'others' or the stack's dates; 'single': dehaze + "
                "inpaint this image only; 'auto': composite when other dates are available"
            ),
        )
        brightness: float = Field(
            MaskThresholds.brightness,
            gt=0,
            le=1,
            description="Least mean RGB brightness of thick cloud (0-1 of white)",
        )
        haze_brightness: float = Field(
            MaskThresholds.haze_brightness,
            gt=0,
            le=1,
            description="Least mean RGB brightness of haze (0-1 of white)",
        )
        saturation: float = Field(
            MaskThresholds.saturation,
            ge=0,
            le=1,
            description="Largest colour saturation of cloud and haze (0-1)",
        )
        whiteness: float = Field(
            MaskThresholds.whiteness,
            ge=0,
            le=2,
            description="Largest whiteness (spread of R, G, B over their mean)",
        )
        nir_min: float | None = Field(
            MaskThresholds.nir_min,
            ge=0,
            le=1,
            description="Least NIR brightness of cloud (images with a NIR band; null: no test)",
        )
        dilate_px: int = Field(
            MaskThresholds.dilate_px,
            ge=0,
            le=16,
            description="Grow the cloud mask by this many pixels (soft edges)",
        )
        haze_px: int | None = Field(
            MaskThresholds.haze_px,
            ge=0,
            le=32,
            description="Look for haze within this distance (px) of thick cloud; null: anywhere",
        )
        thin_haze: bool = Field(
            False,
            description=(
                "Also find thin haze away from clouds: pixels lifted above the scene's "
                "blue-red clear line (haze optimized transform). For hazy scenes; pale, "
                "bluish fields can be taken for haze"
            ),
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
        name: str = output_name("cloudfree")
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
        parallel_tiles="threads",  # OpenCV and numpy release the GIL: tiles on every core
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
        # Without explicit others, a time stack's other dates are the composite's inputs.
        stack = ctx.stack if not args.others and method != "single" else None
        from_stack = (
            stack_others(stack, layout, ctx.note) if stack is not None and len(stack) > 1 else []
        )
        if method == "auto":
            method = "composite" if args.others or from_stack else "single"
        if method == "composite" and not (args.others or from_stack):
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

        with contextlib.ExitStack() as opened:
            others: list[Any] = list(from_stack)
            if method == "composite" and args.others:
                others = [
                    opened.enter_context(open_other_date(p, scene, region, layout))
                    for p in args.others
                ]
            qmask = (
                opened.enter_context(
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
            "stack_dates": [o.label for o in others if o.label],
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
