"""Built-in tool ``denoise``: remove sensor noise from a region or a whole scene, tile by tile.

Backends
--------
* **classical** (default, needs no weights):

  - *optical* imagery: **decorrelated sliding-DCT shrinkage** (:func:`dct_denoise`), in the
    spirit of BM3D without its block matching. The bands are divided by their estimated noise
    std (so the noise is white with unit variance in every band) and rotated onto their
    principal components, computed once for the region (:func:`band_transform`): the first,
    luminance-like component carries the detail, the others (chroma, NIR contrast) are smooth
    and get shrunk hard -- all bands inform each other, NIR included. Each component is then
    filtered in two stages over every 8 x 8 block (stride 1): hard thresholding of the DCT
    coefficients at 2.7 sigma, then an empirical Wiener filter guided by the first estimate,
    blocks averaged back with BM3D's sparsity weights. Pixels are processed as floats in
    native units (no 8/16-bit mapping, so ``uint16``, ``int16`` and floats are filtered as
    they are). On the four NAIP years it is within 0.4 dB of colour BM3D (true sigma) at
    sigma 5-25 with the noise level estimated, about 75x faster
    (``benchmarks/tool_quality.py``). The previous default, joint non-local means
    (:func:`nlm_denoise`), stays importable for comparison.
  - *SAR* (single-band intensity): the Lee filter (7 x 7 window) with the speckle's squared
    coefficient of variation ``Cu^2`` estimated from the data as the median local ``var / mean^2``
    over the region (``1 / ENL`` for homogeneous areas).

  ``mode="auto"`` chooses SAR for a single-band floating-point image whose values are all
  non-negative (linear intensity or amplitude); anything else (including SAR in dB, which is not
  multiplicative noise) is treated as optical.

* **learned**: any image-to-image restoration checkpoint that `spandrel` loads (DnCNN, SwinIR,
  NAFNet, SCUNet, DRUNet ...), from the setting ``denoise_model``, loaded on first use through the
  shared model pool (:class:`~zoomearth.models.ModelSpec` keyed by the checkpoint path) on the
  setting ``tool_device``. Inputs are scaled to ``[0, 1]`` band-wise (``uint8``: ``/255``; other
  types: the region's value range); a 3-channel model sees bands 1-3 as RGB and every further
  band as grey replicated to three channels (the outputs averaged); a 1-channel model sees each
  band alone. Models with scale > 1 are resampled back to the input size (area interpolation).
  The model runs on 512 px sub-tiles with 32 px of context each side (crop, no seams for
  receptive fields up to 32 px).

Noise level
-----------
Estimated per band, never passed in: Immerkaer's 3 x 3 Laplacian-difference operator
``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]`` removes smooth image structure; its response to white
Gaussian noise of std ``sigma`` has std ``6 sigma``. The robust estimate
``sigma = 1.4826 median(|response|) / 6`` (median absolute deviation instead of Immerkaer's mean)
leaves out pixels next to the dtype's limits (clipped noise is smaller noise), the 10 % of pixels
with the strongest gradient (edges, texture) and, for integer data, interpolates the median
within its integer bin. It is taken over the valid pixels of the region, or for regions larger
than 1024 px over nine 512 x 512 full-resolution windows spread over it, so every tile of a
streamed scene uses the same strength (and the same band transform). On 256 px crops of the four
NAIP years with added noise of sigma 5-25 the estimate is within 0.9 of the truth on R, G, B and
1.7 on NIR (the benchmark prints it per tile and band).

Streaming and outputs
---------------------
Regions above 2048 px are streamed in tiles of the setting ``tool_tile_side`` (every region is
processed tile by tile, so memory is bounded by one tile whatever the scene size), each read with
16 px of context (the two 8 x 8 DCT stages need 14; the Lee radius is 3) and cropped,
so results are identical to one-piece processing. Tiles go straight into a
:class:`~zoomearth.scene.writing.TiledRasterWriter`: a tiled, compressed GeoTIFF with overviews,
aligned to the source window, with the source's bands, dtype and nodata (invalid pixels --
nodata, NaN, alpha 0 -- keep their source values; they are filled with the band median before
filtering so they do not bleed into their neighbours; alpha bands are copied unchanged). A
progress bar is shown for streamed regions. A separate PNG preview shows the region
before | after.

Tiles are independent (``Capabilities(independent_tiles=True)``): each is filtered with the
region-wide noise estimate and band transform computed before the tiles (part of the tile key), so
a stopped call resumed with the same arguments reuses its finished tiles
(:meth:`~zoomearth.tools.base.ToolContext.map_tiles`) and writes the same output bit for bit.

Invalid pixels are nodata, NaN, +-Inf (masked by ``ToolContext.read``) and alpha 0. A region
without a valid pixel is refused (``no_valid_pixels``); for regions above 1024 px the decision
also looks at a decimated read of the whole region, not only at the nine sample windows.

Module layout: the filters, the noise estimates and the learned backend are in
:mod:`zoomearth.tools._denoise_filters`; this module holds the tool and re-exports them (the tool
calls them through this module's globals).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from zoomearth.artifacts import ArtifactKind
from zoomearth.scene.gdal import cache_max
from zoomearth.tools._denoise_filters import CHANNELS_TEMPLATE as CHANNELS_TEMPLATE
from zoomearth.tools._denoise_filters import DCT_CONTEXT as DCT_CONTEXT
from zoomearth.tools._denoise_filters import IMMERKAER_KERNEL as IMMERKAER_KERNEL
from zoomearth.tools._denoise_filters import (
    LEE_WINDOW,
    BandTransform,
    _learned_denoise,
    _model_spec,
    band_transform,
    dct_denoise,
    estimate_noise_sigma,
    estimate_speckle_cu2,
    lee_filter,
    load_restoration_model,
    nlm_denoise,
)
from zoomearth.tools._denoise_filters import MODEL_PAD as MODEL_PAD
from zoomearth.tools._denoise_filters import MODEL_TILE as MODEL_TILE
from zoomearth.tools._denoise_filters import NLM_H_PER_SIGMA_L1 as NLM_H_PER_SIGMA_L1
from zoomearth.tools._denoise_filters import NLM_H_PER_SIGMA_L2 as NLM_H_PER_SIGMA_L2
from zoomearth.tools._denoise_filters import NLM_SEARCH_SIZE as NLM_SEARCH_SIZE
from zoomearth.tools._denoise_filters import NLM_TEMPLATE_SIZE as NLM_TEMPLATE_SIZE
from zoomearth.tools._denoise_filters import NOT_IMAGE_MODEL_TEMPLATE as NOT_IMAGE_MODEL_TEMPLATE
from zoomearth.tools._denoise_filters import _groups as _groups
from zoomearth.tools._denoise_filters import _h_factor as _h_factor
from zoomearth.tools._denoise_filters import _laplacian_response as _laplacian_response
from zoomearth.tools._denoise_filters import _local_stats as _local_stats
from zoomearth.tools._denoise_filters import _run_model_tiled as _run_model_tiled
from zoomearth.tools._outputs import before_after_preview, output_photometric
from zoomearth.tools.base import (
    BackendStatus,
    Capabilities,
    Tool,
    ToolContext,
    ToolInputError,
    ToolResult,
    output_name,
)

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.geometry import PixelBox
    from zoomearth.tools.base import Tile

__all__ = [
    "BandTransform",
    "Denoise",
    "band_transform",
    "dct_denoise",
    "estimate_noise_sigma",
    "lee_filter",
    "load_restoration_model",
    "nlm_denoise",
]

#: Context each tile reads on every side: the two DCT stages need 2 x 7 px (DCT_CONTEXT).
TILE_OVERLAP: Final = 16
MAX_SIDE: Final = 2048
#: Noise-estimation sampling: regions larger than this are sampled with 3 x 3 windows of 512 px.
ESTIMATE_FULL_SIDE: Final = 1024
ESTIMATE_WINDOW: Final = 512

SUPPORTED_DTYPES: Final = ("uint8", "uint16", "int16", "float32", "float64")

NO_MODEL_TEMPLATE = (
    "Tool 'denoise': backend 'learned' needs a restoration checkpoint, but the setting "
    "denoise_model is not set. Call it with backend 'classical' (non-local means / Lee), or set "
    "denoise_model to a checkpoint spandrel can load (e.g. ZOOMEARTH_DENOISE_MODEL=/models/"
    "SwinIR_denoise_15.pth)."
)
MODEL_MISSING_TEMPLATE = (
    "Tool 'denoise': the checkpoint {path} (setting denoise_model) does not exist. Call it with "
    "backend 'classical', or fix the setting denoise_model."
)
NO_VALID_TEMPLATE = (
    "Tool 'denoise': the region {box} has no valid pixels (all nodata/NaN/Inf); choose another "
    "region."
)
NO_PREVIEW_TEMPLATE = "No preview was written: {reason}"


# --------------------------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------------------------
def _sample_boxes(region: PixelBox) -> list[PixelBox]:
    """The whole region when small, else 3 x 3 full-resolution windows spread over it."""
    from zoomearth.geometry import PixelBox

    x0, y0, x1, y1 = (int(v) for v in region.as_list())
    w, h = x1 - x0, y1 - y0
    if max(w, h) <= ESTIMATE_FULL_SIDE:
        return [region]
    sw, sh = min(ESTIMATE_WINDOW, w), min(ESTIMATE_WINDOW, h)
    boxes = []
    for fy in (0.1, 0.5, 0.9):
        for fx in (0.1, 0.5, 0.9):
            cx = x0 + int(fx * (w - sw))
            cy = y0 + int(fy * (h - sh))
            boxes.append(PixelBox(cx, cy, cx + sw, cy + sh))
    return boxes


def _valid_of(data: np.ma.MaskedArray) -> np.ndarray:
    import numpy as np

    return np.asarray(~np.ma.getmaskarray(data).any(axis=0), dtype=bool)


def _fill_invalid(data: np.ma.MaskedArray, fill: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Float64 pixels with invalid ones replaced by ``fill`` per band, and the valid mask."""
    import numpy as np

    valid = _valid_of(data)
    work = np.ma.getdata(data).astype(np.float64)
    if not valid.all():
        for b in range(work.shape[0]):
            work[b][~valid] = fill[b]
    return work, valid


def _to_dtype(work: np.ndarray, dtype: str) -> np.ndarray:
    import numpy as np

    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(work), info.min, info.max).astype(dt)
    return work.astype(dt)


class Denoise(Tool):
    """Denoise a region (non-local means / Lee filter, or a spandrel restoration model)."""

    name = "denoise"
    description = (
        "Remove sensor noise or SAR speckle from the region (or the whole image, streamed tile "
        "by tile) and save the result as a GeoTIFF with the same bands and values range, plus a "
        "before|after preview. The noise level is measured from the image. Use it when the "
        "image looks grainy or speckled."
    )

    class Args(BaseModel):
        """Arguments of ``denoise``."""

        model_config = ConfigDict(extra="forbid")

        mode: Literal["auto", "optical", "sar"] = Field(
            "auto",
            description="Image type: 'optical' (decorrelated DCT shrinkage), 'sar' (Lee filter "
            "for single-band intensity), 'auto' (SAR for one-band non-negative float images)",
        )
        backend: Literal["auto", "classical", "learned"] = Field(
            "auto",
            description="'learned' uses the restoration model of the setting denoise_model; "
            "'classical' never does; 'auto' uses the model when one is configured",
        )
        strength: float = Field(
            1.0,
            ge=0.25,
            le=4.0,
            description="Multiplier of the filter strength derived from the measured noise "
            "(classical backend): below 1 keeps more detail, above 1 smooths more",
        )
        name: str = output_name("denoised")
        preview: bool = Field(True, description="Also write a before|after PNG preview")

    capabilities: ClassVar[Capabilities] = Capabilities(
        bands=None,
        dtypes=SUPPORTED_DTYPES,
        max_side=MAX_SIDE,
        streaming=True,
        tile_overlap=TILE_OVERLAP,
        device_memory_mb=1500,
        independent_tiles=True,
        parallel_tiles="threads",  # OpenCV and numpy release the GIL: tiles on every core
    )

    @classmethod
    def backend_status(cls) -> list[BackendStatus]:
        """DCT shrinkage / Lee through OpenCV; spandrel restoration models when configured."""
        return [
            BackendStatus.of_package("dct_lee", "opencv-python-headless", "OpenCV"),
            BackendStatus.of_package(
                "spandrel", "spandrel", "spandrel", "checkpoint from setting denoise_model"
            ),
        ]

    # ------------------------------------------------------------------------------------------
    def run(self, ctx: ToolContext, args: Args) -> ToolResult:  # type: ignore[override]
        """Estimate the noise, stream the region through the filter, write GeoTIFF + preview."""
        import numpy as np
        import rasterio

        from zoomearth.errors import BandLayoutError
        from zoomearth.scene.writing import SourceGeoref, TiledRasterWriter, write_png

        scene = ctx.scene
        settings = ctx.settings
        region = ctx.box
        col, row, width, height = region.to_window()
        model_path = getattr(settings, "denoise_model", None)
        if args.backend == "learned" or (args.backend == "auto" and args.mode != "sar"):
            use_model = args.backend == "learned" or model_path is not None
        else:
            use_model = False
        if use_model:
            if model_path is None:
                raise ToolInputError(NO_MODEL_TEMPLATE, code="backend_unavailable", tool=self.name)
            model_path = Path(model_path).expanduser()
            if not model_path.is_file():
                raise ToolInputError(
                    MODEL_MISSING_TEMPLATE.format(path=model_path),
                    code="backend_unavailable",
                    tool=self.name,
                )

        # ---- region-wide statistics (bounded: whole region <= 1024 px, else 9 windows) ----
        samples = []
        for box in _sample_boxes(region):
            data = ctx.read(box)
            samples.append((np.ma.getdata(data).astype(np.float64), _valid_of(data)))
            ctx.check_cancelled()
        valid_values = [
            np.concatenate([s[0][b][s[1]] for s in samples]) for b in range(scene.count)
        ]
        fill = [float(np.median(v)) if v.size else 0.0 for v in valid_values]
        lo = [float(v.min()) if v.size else 0.0 for v in valid_values]
        hi = [float(v.max()) if v.size else 1.0 for v in valid_values]
        any_valid = any(v.size for v in valid_values)
        if len(samples) > 1:
            # The windows miss most of a large region: widen the value range with a cheap
            # decimated read of the whole of it, so values outside the windows are not clipped
            # (and a region valid only outside the windows is not taken for an empty one).
            ov = ctx.read(region, out_size=scene.output_size(region, ESTIMATE_WINDOW))
            ov_valid = _valid_of(ov)
            ov_data = np.ma.getdata(ov).astype(np.float64)
            for b in range(scene.count):
                v = ov_data[b][ov_valid]
                v = v[np.isfinite(v)]
                if v.size:
                    any_valid = True
                    if valid_values[b].size:
                        lo[b], hi[b] = min(lo[b], float(v.min())), max(hi[b], float(v.max()))
                    else:
                        lo[b], hi[b] = float(v.min()), float(v.max())
                        fill[b] = float(np.median(v))
            del ov, ov_data
            ctx.check_cancelled()
        if not any_valid:
            raise ToolInputError(
                NO_VALID_TEMPLATE.format(box=region), code="no_valid_pixels", tool=self.name
            )
        for i, s in enumerate(samples):
            samples[i] = (_fill_for_stats(s[0], s[1], fill), s[1])

        mode = args.mode
        if mode == "auto":
            is_float = np.dtype(scene.dtype).kind == "f"
            mode = "sar" if (scene.count == 1 and is_float and min(lo) >= 0) else "optical"
            if mode == "sar" and args.backend == "auto":
                use_model = False  # the learned models are optical restorers

        # Band-wise maps onto [0, 1] (learned model), fixed for all tiles.
        unit_lo, unit_span = [], []
        for b in range(scene.count):
            if scene.dtype == "uint8":
                unit_lo.append(0.0)
                unit_span.append(255.0)
            else:
                unit_lo.append(lo[b])
                unit_span.append(max(hi[b] - lo[b], 1e-12))

        sigmas: list[float] = []
        cu2: list[float] = []
        transform = BandTransform((), (), (), ())
        backend_label: str
        # Integer pixels at the dtype's limits are clipped, their noise is not measurable.
        kind = np.dtype(scene.dtype).kind
        limits = None
        if kind in "iu":
            dinfo = np.iinfo(np.dtype(scene.dtype))
            limits = (float(dinfo.min), float(dinfo.max))
        if use_model:
            backend_label = "learned"
            sigmas = estimate_noise_sigma(samples, limits=limits)
        elif mode == "sar":
            backend_label = "lee"
            cu2 = [c * args.strength for c in estimate_speckle_cu2(samples)]
        else:
            backend_label = "dct"
            sigmas = estimate_noise_sigma(samples, limits=limits)
            alpha = {i for i, c in enumerate(scene.colorinterp) if c == "alpha"}
            # Alpha bands are copied unchanged: keep them out of the band decorrelation.
            transform = band_transform(
                samples, [0.0 if b in alpha else s for b, s in enumerate(sigmas)]
            )
        del samples, valid_values

        source = SourceGeoref(
            crs=scene.crs,
            transform=scene.transform,
            nodata=scene.nodata,
            dtype=scene.dtype,
            count=scene.count,
            path=scene.path,
        )
        out = ctx.output_path(f"{args.name}.tif")
        limit = self.capabilities.max_side or MAX_SIDE
        tile_side = min(int(getattr(settings, "tool_tile_side", 1024) or 1024), limit)
        tiles = ctx.tiles(side=tile_side)
        writer = TiledRasterWriter.for_window(
            out,
            source,
            (col, row, width, height),
            tags={"ZOOMEARTH_TOOL": self.name, "ZOOMEARTH_BACKEND": backend_label},
            protect=ctx.protected_paths,
            progress=ctx.streamed,
            progress_desc="denoise",
            photometric=output_photometric(scene),
        )
        spec = _model_spec(Path(str(model_path))) if use_model else None
        device = str(getattr(settings, "tool_device", "auto") or "auto")
        pool = ctx.require_pool() if use_model else None
        alpha_bands = [i for i, c in enumerate(scene.colorinterp) if c == "alpha"]

        def denoise_tile(tile: Tile) -> dict[str, Any]:
            """Filter one tile; its own part comes back with the statistics of the change.

            Returns ``final`` (bands, h, w) in the source dtype, the sum of squared changes over
            its valid pixels and their count (``changed_sq``, ``changed_n``), and ``arch``.
            """
            data = ctx.read(tile.read_box)
            work, valid = _fill_invalid(data, fill)
            arch = ""
            if not valid.any():
                result = work
            elif use_model:
                assert pool is not None and spec is not None
                unit = np.stack(
                    [
                        np.clip((work[b] - unit_lo[b]) / unit_span[b], 0.0, 1.0)
                        for b in range(scene.count)
                    ]
                ).astype(np.float32)

                def infer(model: Any, dev: str, unit: np.ndarray = unit) -> np.ndarray:
                    nonlocal arch
                    arch = str(model.architecture.id)
                    return _learned_denoise(model, unit, dev)

                res = pool.run(spec, infer, device)
                result = np.stack(
                    [
                        res[b].astype(np.float64) * unit_span[b] + unit_lo[b]
                        for b in range(scene.count)
                    ]
                )
                # Values outside the mapped range (missed by the statistics) keep their
                # source value rather than being clipped.
                for b in range(scene.count):
                    outside = (work[b] < unit_lo[b]) | (work[b] > unit_lo[b] + unit_span[b])
                    if outside.any():
                        result[b][outside] = work[b][outside]
            elif mode == "sar":
                result = np.stack([lee_filter(work[b], cu2[b]) for b in range(scene.count)])
            else:
                result = dct_denoise(work, transform, strength=args.strength)
            raw = tile.crop(np.ma.getdata(data))
            result = tile.crop(result)
            inner_valid = tile.crop(valid)
            final = _to_dtype(result, scene.dtype)
            # Invalid pixels (nodata, NaN, Inf, alpha 0) and alpha bands keep the source values.
            if not inner_valid.all():
                final[:, ~inner_valid] = raw[:, ~inner_valid]
            for b in alpha_bands:
                final[b] = raw[b]
            diff = final[:, inner_valid].astype(np.float64) - tile.crop(work)[
                :, inner_valid
            ].astype(np.float64)
            return {
                "final": final,
                "changed_sq": float(np.sum(diff * diff)),
                "changed_n": int(diff.size),
                "arch": arch,
            }

        # What the tiles depend on besides the call's arguments, region and input files.
        tile_key = {
            "backend": backend_label,
            "mode": mode,
            "sigmas": sigmas,
            "cu2": cu2,
            "fill": fill,
            "transform": transform.as_key(),
            "unit": [unit_lo, unit_span],
            "model": _file_stamp(Path(str(model_path))) if use_model else None,
            "device": device if use_model else None,
        }
        arch = ""
        changed_sq = 0.0
        changed_n = 0
        with rasterio.Env(GDAL_CACHEMAX=cache_max(256)), writer:
            for tile, done in ctx.map_tiles(
                denoise_tile, tiles, key=tile_key, message="denoise: filtering tiles"
            ):
                writer.write(done["final"], tile.window)
                changed_sq += float(done["changed_sq"])
                changed_n += int(done["changed_n"])
                arch = str(done["arch"]) or arch

        rms_change = math.sqrt(changed_sq / changed_n) if changed_n else 0.0
        geo = source.is_georeferenced
        if backend_label == "learned":
            how = f"the {arch or 'spandrel'} model {Path(str(model_path)).name} (spandrel)"
        elif backend_label == "lee":
            enl = ", ".join(f"{1.0 / c:.1f}" if c > 0 else "inf" for c in cu2)
            how = f"a {LEE_WINDOW}x{LEE_WINDOW} Lee filter (estimated ENL {enl})"
        else:
            how = "decorrelated sliding-DCT shrinkage (2 stages)"
        sig_text = ", ".join(f"{s:.3g}" for s in sigmas)
        text = (
            f"Denoised region {region} ({width} x {height} px, {scene.count} band(s) "
            f"{scene.dtype}) with {how}"
            + (f"; estimated noise sigma per band: {sig_text}" if sigmas else "")
            + f"; RMS change {rms_change:.3g}. Wrote a "
            + ("georeferenced GeoTIFF" if geo else "pixel-only GeoTIFF")
        )
        if backend_label == "dct" and not transform.bands:
            text += " (no measurable noise: the output equals the input)"
        artifacts = [
            ctx.artifact(
                out,
                ArtifactKind.RASTER,
                f"denoised region {region} ({backend_label}), {scene.count} band(s) {scene.dtype}",
                width=width,
                height=height,
                bands=scene.count,
                dtype=scene.dtype,
                backend=backend_label,
            )
        ]
        preview = None
        if args.preview:
            try:
                img = before_after_preview(scene, region, out, settings)
            except BandLayoutError as exc:
                ctx.note(NO_PREVIEW_TEMPLATE.format(reason=exc))
            else:
                png = write_png(
                    ctx.output_path(f"{args.name}.png"), img, protect=ctx.protected_paths
                )
                preview = ctx.artifact(
                    png, ArtifactKind.PREVIEW, f"before | after denoising of region {region}"
                )
                text += " and a before|after preview"
        text += "."
        info: dict[str, Any] = {
            "backend": backend_label,
            "mode": mode,
            "noise_sigma": [round(s, 4) for s in sigmas],
            "speckle_cu2": [round(c, 6) for c in cu2],
            "rms_change": round(rms_change, 4),
            "tiles": len(tiles),
            "window": [col, row, width, height],
        }
        if arch:
            info["architecture"] = arch
        return ToolResult(text=text, artifacts=artifacts, preview=preview, data=info)


def _file_stamp(path: Path) -> list[Any]:
    """``[path, size, mtime_ns]`` of a file (a replaced checkpoint changes the tile key)."""
    try:
        st = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _fill_for_stats(pixels: np.ndarray, valid: np.ndarray, fill: list[float]) -> np.ndarray:
    """Replace invalid pixels by the band fill value (statistics use only valid pixels anyway)."""
    if valid.all():
        return pixels
    out = pixels.copy()
    for b in range(out.shape[0]):
        out[b][~valid] = fill[b]
    return out
