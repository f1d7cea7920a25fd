"""The per-call work of the built-in ``cloud_removal`` tool (:mod:`zoomearth.tools.cloud_removal`).

:class:`_Job` holds what is fixed once per call (atmospheric light and radiometric matching from
the region's overview) and processes one tile: mask, multi-temporal composite, dehazing,
inpainting (Telea, or diffusion through the model pool), the tile's statistics, the summary and
the preview.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import warnings
from typing import TYPE_CHECKING, Any, Final

from zoomearth.artifacts import ArtifactKind
from zoomearth.tools._cloud_inputs import TOOL_NAME
from zoomearth.tools._cloudmask import CLOUD, HAZE, MASK_NODATA, MaskThresholds, cloud_mask
from zoomearth.tools.base import ToolFailure

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.geometry import PixelBox
    from zoomearth.tools._cloud_inputs import _Layout, _Other, _StackOther
    from zoomearth.tools.base import Tile, ToolContext
    from zoomearth.tools.cloud_removal import CloudRemoval

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
MODEL_LOAD_TEMPLATE = (
    "the diffusion inpainting model {model!r} (setting inpaint_model) could not be loaded or "
    "run: {reason}. Fix the setting (a directory written by save_pretrained, or a hub id in "
    "the local cache), or unset it to use classical inpainting."
)
NO_HAZE_LINE_NOTE = (
    "thin_haze: the scene has too little clear ground (or no blue-red trend) to fit the haze "
    "optimized transform's clear line; only haze next to clouds was looked for."
)
FALLBACK_NOTE_TEMPLATE = (
    "Diffusion inpainting ran out of memory ({reason}); thick cloud was filled with classical "
    "(Telea) inpainting instead."
)


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
        others: list[_Other | _StackOther],
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
        # Tiles run in parallel threads: one GDAL handle per other raster is read by one at a time.
        self.read_lock = threading.Lock()
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
        self,
        x: np.ndarray,
        valid: np.ndarray,
        quality: np.ndarray | None = None,
        *,
        other_date: bool = False,
    ) -> np.ndarray:
        """Cloud mask of a scaled read.

        ``other_date``: the read is another date's; the HOT test is left out, because the clear
        line was fitted on this image's radiometry.
        """
        lay = self.layout
        t = self.thresholds
        if other_date and t.hot is not None:
            t = dataclasses.replace(t, hot=None)
        return cloud_mask(
            x[list(lay.rgb_w)],
            valid,
            t,
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
        if self.args.thin_haze:
            self._fit_haze_line(region, (x, valid, raw))
        if not self.others or not self.args.normalize:
            return
        clear = valid & (self._mask_of(x, valid, self._quality(raw, region, (oh, ow))) == 0)
        for other in self.others:
            od = other.read(scene, region, (oh, ow))
            ovalid = _valid(od, self.layout.work)
            oraw = np.ma.getdata(od)
            ox = self._scaled(oraw)
            both = clear & ovalid
            both &= self._mask_of(ox, ovalid, self._band_flags(oraw), other_date=True) == 0
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

    def _fit_haze_line(
        self, region: PixelBox, region_overview: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> None:
        """Fit the HOT clear line on the whole scene's overview (the region's when it is all).

        The scene's, not the region's: a small region can be hazy all over, and the mask of a
        place should not depend on the box asked about.
        """
        import numpy as np

        from zoomearth.geometry import PixelBox
        from zoomearth.tools._cloudmask import fit_haze_line
        from zoomearth.tools._haze import fill_invalid

        scene = self.ctx.scene
        full = PixelBox(0, 0, scene.width, scene.height)
        if (int(region.width), int(region.height)) == (scene.width, scene.height):
            x, valid, raw = region_overview
        else:
            ow, oh = scene.output_size(full, OVERVIEW_SIDE)
            data = self.ctx.read(full, out_size=(ow, oh))
            raw = np.ma.getdata(data)
            valid = _valid(data, self.layout.work)
            x = fill_invalid(self._scaled(raw), valid)
        h, w = valid.shape
        clear = valid & (self._mask_of(x, valid, self._band_flags(raw)) == 0)
        red, blue = (x[self.layout.rgb_w[i]] for i in (0, 2))
        line = fit_haze_line(red, blue, clear, scale=max(scene.width / w, scene.height / h))
        if line is None:
            self.ctx.note(NO_HAZE_LINE_NOTE)
        else:
            self.thresholds = dataclasses.replace(self.thresholds, hot=line)

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
            with self.read_lock:
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
            with self.read_lock:
                od = other.read(self.ctx.scene, box, shape)
            ovalid = _valid(od, lay.work)
            oraw = np.ma.getdata(od)
            ox = self._scaled(oraw)
            ok = ovalid & (self._mask_of(ox, ovalid, self._band_flags(oraw), other_date=True) == 0)
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
                MODEL_LOAD_TEMPLATE.format(model=self.model, reason=exc), tool=TOOL_NAME
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

        # A copy per tile keeps the per-tile state (last_*) apart when tiles run in parallel.
        job = copy.copy(self)
        cleaned, mask, synthetic = job.process(tile)
        own_mask, own_synth = tile.crop(mask), tile.crop(synthetic)
        return {
            "cleaned": tile.crop(cleaned),
            "mask": own_mask,
            "synthetic": own_synth,
            "n_valid": int(np.count_nonzero(own_mask != MASK_NODATA)),
            "n_cloud": int(np.count_nonzero(own_mask == CLOUD)),
            "n_haze": int(np.count_nonzero(own_mask == HAZE)),
            "n_synthetic": int(np.count_nonzero(own_synth == 1)),
            "n_replaced": int(np.count_nonzero(tile.crop(job.last_replaced))),
            "n_dehazed": int(np.count_nonzero(tile.crop(job.last_dehazed))),
            "inpaint": job.last_inpaint,
            "windows": job.last_windows,
            "notes": "\n".join(job.last_notes),
        }

    def tile_key(self) -> dict[str, Any]:
        """What every tile depends on besides the arguments, region and input files."""
        return {
            "white": float(self.white),
            "haze_line": None
            if self.thresholds.hot is None
            else dataclasses.asdict(self.thresholds.hot),
            "light": None if self.light is None else [float(v) for v in self.light],
            "others": [_source_stamp(o.path) for o in self.others],
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
        if self.thresholds.hot is not None:
            mask_how += " + haze optimized transform"
        if self.layout.quality is not None or self.qmask is not None:
            mask_how += " + quality flags"
        parts = [
            f"{head}: cloud {pct(s['cloud'])} and haze {pct(s['haze'])} of the valid pixels "
            f"(mask: {mask_how})."
        ]
        if method == "composite":
            labels = [str(o.label) for o in self.others if o.label]
            parts.append(
                f"{len(self.others)} other date(s) composited"
                + (f" from the time stack ({', '.join(labels)})" if labels else "")
                + " (median of clear observations"
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


def _source_stamp(source: Any) -> list[Any]:
    """``[source, size, mtime_ns]`` of another date (a replaced file changes the tile key)."""
    import os

    try:
        st = os.stat(source)
    except (OSError, TypeError, ValueError):  # a URL, or gone
        return [str(source), None, None]
    return [str(source), st.st_size, st.st_mtime_ns]


def _dtype_max(dt: Any) -> float:
    import numpy as np

    return float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else float(np.finfo(dt).max)
