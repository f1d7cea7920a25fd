"""Built-in tool ``export_region``: the region at full resolution as a GeoTIFF, plus a preview.

The output keeps the source's bands (or a chosen subset), pixel type and nodata value, and is
aligned to the source window: same CRS, geotransform = the source transform of the window (a
pixel-only output for non-georeferenced sources). It is tiled, compressed and overviewed
(:class:`zoomearth.scene.writing.TiledRasterWriter`). Regions with a side above 2048 px are
streamed tile by tile, so memory stays bounded for any region size.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from zoomearth.artifacts import ArtifactKind
from zoomearth.errors import BandLayoutError
from zoomearth.tools.base import (
    BackendStatus,
    Capabilities,
    Tool,
    ToolContext,
    ToolInputError,
    ToolResult,
    output_name,
)

__all__ = ["ExportRegion"]

BAD_BANDS_TEMPLATE = (
    "Tool 'export_region': band(s) {bad} do not exist; this image has {count} band(s), "
    "numbered 1 to {count}."
)
NO_PREVIEW_TEMPLATE = "No preview was written: {reason}"


class ExportRegion(Tool):
    """Write the region at full resolution as an aligned, tiled GeoTIFF and a PNG preview."""

    name = "export_region"
    description = (
        "Save the region at full resolution as a GeoTIFF that keeps the image's bands, values "
        "and georeference, plus a small PNG preview. Use it when the user asks to export, save, "
        "clip or download an area."
    )

    class Args(BaseModel):
        """Arguments of ``export_region``."""

        model_config = ConfigDict(extra="forbid")

        bands: list[Annotated[int, Field(ge=1)]] | None = Field(
            None,
            min_length=1,
            max_length=256,
            description="1-based band numbers to keep, in order (default: all bands)",
        )
        name: str = output_name("region")
        preview: bool = Field(True, description="Also write a PNG preview (long side 512 px)")

    capabilities: ClassVar[Capabilities] = Capabilities(max_side=2048, streaming=True)

    @classmethod
    def backend_status(cls) -> list[BackendStatus]:
        """GDAL through rasterio (a core dependency)."""
        try:
            detail = f"rasterio {metadata.version('rasterio')} (GDAL)"
        except metadata.PackageNotFoundError:  # pragma: no cover - rasterio is a core dependency
            return [BackendStatus("gdal", False, "rasterio is not installed")]
        return [BackendStatus("gdal", True, detail)]

    def run(self, ctx: ToolContext, args: Args) -> ToolResult:  # type: ignore[override]
        """Stream the region into a GeoTIFF (one read per tile) and render a preview."""
        import numpy as np

        from zoomearth.scene.writing import SourceGeoref, TiledRasterWriter, write_png

        scene = ctx.scene
        bands = list(args.bands) if args.bands else list(range(1, scene.count + 1))
        bad = sorted({b for b in bands if b > scene.count})
        if bad:
            raise ToolInputError(
                BAD_BANDS_TEMPLATE.format(bad=", ".join(map(str, bad)), count=scene.count),
                tool=self.name,
            )
        region = ctx.box
        col, row, width, height = region.to_window()
        source = SourceGeoref(
            crs=scene.crs,
            transform=scene.transform,
            nodata=scene.nodata,
            dtype=scene.dtype,
            count=len(bands),
            path=scene.path,
        )
        out = ctx.output_path(f"{args.name}.tif")
        writer = TiledRasterWriter.for_window(
            out,
            source,
            (col, row, width, height),
            count=len(bands),
            tags={"ZOOMEARTH_TOOL": self.name, "ZOOMEARTH_BANDS": ",".join(map(str, bands))},
            protect=ctx.protected_paths,
        )
        tiles = ctx.tiles()
        valid = 0
        # Without a nodata value, invalid pixels (mask or alpha band) travel as a mask band.
        keep_mask = scene.nodata is None
        with writer:
            for tile in tiles:
                pixels = tile.crop(ctx.read(tile.read_box, bands=bands))
                ok = np.logical_not(np.ma.getmaskarray(pixels).any(axis=0))
                valid += int(ok.sum())
                writer.write(np.ma.getdata(pixels), tile.window, valid=ok if keep_mask else None)
                ctx.report(tile.index + 1, len(tiles), "export_region: writing tiles")

        total = width * height
        geo = source.is_georeferenced
        crs = scene.crs_string if geo else None
        desc = (
            f"{width} x {height} px, {len(bands)} band(s) {scene.dtype}"
            + (f", nodata {scene.nodata:g}" if scene.nodata is not None else "")
            + (f", {crs}" if crs and not crs.startswith(("PROJCS", "GEOGCS", "PROJCRS")) else "")
        )
        artifacts = [
            ctx.artifact(
                out,
                ArtifactKind.RASTER,
                f"GeoTIFF of region {region}: {desc}"
                if geo
                else f"pixel-only TIFF of {region}: {desc}",
                width=width,
                height=height,
                bands=len(bands),
                dtype=scene.dtype,
            )
        ]
        preview = None
        if args.preview:
            try:
                view = scene.render(region, max_side=512)
            except BandLayoutError as exc:
                ctx.note(NO_PREVIEW_TEMPLATE.format(reason=exc))
            else:
                png = write_png(
                    ctx.output_path(f"{args.name}.png"), view.rgb, protect=ctx.protected_paths
                )
                preview = ctx.artifact(
                    png,
                    ArtifactKind.PREVIEW,
                    f"preview of region {region} ({view.spec.width} x {view.spec.height} px)",
                )

        frac = valid / total if total else 0.0
        text = (
            f"Exported region {region} at full resolution ({desc}) as a "
            + ("georeferenced GeoTIFF" if geo else "GeoTIFF without georeference (pixel-only)")
            + (" with a PNG preview" if preview else "")
            + "."
        )
        if valid == 0:
            text += " The region holds only nodata pixels."
        elif valid < total:
            text += f" {frac:.1%} of its pixels are valid (the rest is nodata)."
        data: dict[str, Any] = {
            "window": [col, row, width, height],
            "bands": bands,
            "dtype": scene.dtype,
            "crs": crs,
            "valid_fraction": round(frac, 6),
            "tiles": len(tiles),
        }
        return ToolResult(text=text, artifacts=artifacts, preview=preview, data=data)
