"""Writing a synthetic scene: :func:`generate_scene` streams it to a GeoTIFF, mask and sidecar.

The scene is rendered in whole 512 px blocks (:func:`_render_chunk`), converted to the asked
pixel type and handed to :class:`~zoomearth.scene.writing.TiledRasterWriter`; the cloud mask goes
to a second writer and the per-object cloud counts are gathered on the way. Size and free space
are checked before anything is computed (:func:`_check_can_write`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from zoomearth.errors import SceneTooLargeError
from zoomearth.scene.gdal import cache_max
from zoomearth.scene.writing import (
    TiledRasterWriter,
    atomic_path,
    check_free_space,
    estimate_output_bytes,
    sweep_stale_siblings,
)
from zoomearth.synth.layout import MIN_SIZE, _as_size
from zoomearth.synth.render import SyntheticScene
from zoomearth.synth.sidecar import (
    COMPLETE_LABELS,
    LABELS,
    SYNTH_FORMAT,
    SynthObject,
    SynthResult,
    sidecar_path_for,
)

DTYPE_TEMPLATE = "dtype must be one of uint8, uint16, float32; got {dtype}."
TILE_TEMPLATE = "tile must be a positive multiple of 16; got {tile}."
TOO_MANY_PIXELS_TEMPLATE = (
    "A {width:,} x {height:,} px scene has {pixels:,} pixels, above the limit of {limit:,} "
    "(setting max_image_pixels; a larger scene could not be opened): choose a smaller --size, or "
    "raise the limit (e.g. --set max_image_pixels={pixels})."
)
#: Bound on compressed / raw bytes of the cloud mask (0/1, DEFLATE, overviews included) for the
#: free-space check: measured 0.005-0.008 on 4,096 px scenes with clouds 0.35 (seeds 0-2).
MASK_SPACE_RATIO = 0.05

_BLOCK = 512  # GeoTIFF block size of the outputs


def _tiles(width: int, height: int, tile: int) -> Iterator[Window]:
    """Row-major windows of ``tile`` px covering ``width`` x ``height`` (edge ones clipped)."""
    for r in range(0, height, tile):
        for c in range(0, width, tile):
            yield Window(c, r, min(tile, width - c), min(tile, height - r))


def _render_chunk(
    scene: SyntheticScene, chunk: Window, tile: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render a write chunk from ``tile``-px renders (one render when they coincide)."""
    if tile >= max(chunk.width, chunk.height):
        return scene.render(chunk)
    c0, r0 = int(chunk.col_off), int(chunk.row_off)
    pixels = np.empty((scene.bands, int(chunk.height), int(chunk.width)), dtype=np.uint8)
    mask = np.empty((int(chunk.height), int(chunk.width)), dtype=np.uint8)
    has_mask = False
    for sub in _tiles(int(chunk.width), int(chunk.height), tile):
        sl = (
            slice(int(sub.row_off), int(sub.row_off + sub.height)),
            slice(int(sub.col_off), int(sub.col_off + sub.width)),
        )
        p, m = scene.render(Window(c0 + sub.col_off, r0 + sub.row_off, sub.width, sub.height))
        pixels[(slice(None), *sl)] = p
        if m is not None:
            mask[sl] = m
            has_mask = True
    return pixels, (mask if has_mask else None)


def _convert(pixels: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint16":
        return pixels.astype(np.uint16) * np.uint16(16)
    if dtype == "float32":
        return pixels.astype(np.float32) / np.float32(255.0)
    return pixels


def generate_scene(
    out_path: str | os.PathLike[str],
    size: int | tuple[int, int],
    *,
    seed: int = 0,
    clouds: float = 0.0,
    tile: int = 512,
    crs: str = "EPSG:32633",
    pixel_size: float = 0.5,
    origin: tuple[float, float] = (500000.0, 5000000.0),
    bands: int = 3,
    dtype: str = "uint8",
    compress: str = "jpeg",
    quality: int = 90,
    progress: bool = False,
    draw_objects: bool = True,
    cache_mb: int = 256,
    max_pixels: int | None = None,
) -> SynthResult:
    """Write a synthetic scene GeoTIFF, its sidecar JSON and (with clouds) its cloud mask.

    The image is tiled (512 px blocks), compressed (JPEG YCbCr for 3-band uint8, else DEFLATE)
    with internal overviews, north-up in ``crs`` with its top-left corner at ``origin`` (CRS
    units) and square pixels of ``pixel_size`` CRS units. All files are written atomically;
    the sidecar is written last. Memory is bounded by the coarse layout grid, one tile and
    GDAL's block cache (``cache_mb``).

    Before anything is computed or written, the size is checked against ``max_pixels`` and the
    free space of the output's device against an upper estimate of the files
    (:func:`~zoomearth.scene.writing.estimate_output_bytes`: raw bytes x the codec's ratio bound
    -- 0.35 for JPEG, 1.0 lossless; measured 0.07 for JPEG scenes -- x 4/3 for overviews x 1.1,
    plus the mask at :data:`MASK_SPACE_RATIO`). A run stopped by an error, Ctrl-C or SIGTERM
    leaves no file; one killed with SIGKILL leaves owner-named temporaries that the next run
    writing the same outputs removes.

    Args:
        out_path: Image path (``.tif``). The sidecar is ``<out_path>.json`` with the suffix
            replaced (``scene.tif`` -> ``scene.json``); the mask ``scene.clouds.tif``.
        size: ``N`` (square) or ``(width, height)`` in pixels.
        seed: Seed; the same seed and size give identical files' pixels.
        clouds: Cloud fraction to aim at, 0-1 (0: no clouds, no mask).
        tile: Rendering tile (multiple of 16). Pixels do not depend on it; writes always cover
            whole 512 px blocks.
        crs: CRS of the image.
        pixel_size: Ground sampling distance, CRS units per pixel.
        origin: ``(x, y)`` of the top-left corner in CRS units.
        bands: 3 (RGB) or 4 (RGB + NIR).
        dtype: ``"uint8"``, ``"uint16"`` or ``"float32"``.
        compress: ``"jpeg"`` (3-band uint8 only; otherwise DEFLATE is used), ``"deflate"`` ...
        quality: JPEG quality 1-100.
        progress: Show a progress bar.
        draw_objects: Draw the planted objects (False: landscape only, empty object list).
        cache_mb: GDAL block cache in MB.
        max_pixels: Refuse scenes of more pixels (the CLI passes the setting
            ``max_image_pixels``, above which the scene could not be opened); None: no limit.

    Returns:
        Paths, object list and achieved cloud fraction.

    Raises:
        ValueError: Bad size, clouds, bands, dtype, tile or seed.
        SceneTooLargeError: More pixels than ``max_pixels`` (a ``ValueError``).
        OutputWriteError: Not enough free space for the estimate, or the disk filled up while
            writing (nothing is left behind).
    """
    t_start = time.perf_counter()
    if dtype not in ("uint8", "uint16", "float32"):
        raise ValueError(DTYPE_TEMPLATE.format(dtype=dtype))
    if tile <= 0 or tile % 16:
        raise ValueError(TILE_TEMPLATE.format(tile=tile))
    out = Path(out_path)
    comp = compress.lower()
    if comp == "jpeg" and not (bands == 3 and dtype == "uint8"):
        comp = "deflate"
    req_w, req_h = _as_size(size)
    if min(req_w, req_h) >= MIN_SIZE:  # smaller sizes are refused by SyntheticScene
        _check_can_write(out, req_w, req_h, bands, dtype, comp, quality, clouds, max_pixels)
    scene = SyntheticScene(size, seed=seed, clouds=clouds, bands=bands, draw_objects=draw_objects)
    timings = {"layout": time.perf_counter() - t_start, "render": 0.0, "write": 0.0}
    width, height = scene.width, scene.height
    # North-up; built directly (rasterio's from_origin warns about affine's `*` operator).
    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])
    sidecar = sidecar_path_for(out)
    mask_name = out.with_name(out.stem + ".clouds.tif")
    mask_path = mask_name if clouds > 0 else None
    # Litter of a killed earlier run on these outputs (the mask's even if this run has none).
    for final in (out, mask_name, sidecar):
        sweep_stale_siblings(final)

    n_obj = len(scene._planted)
    cloud_px = np.zeros(n_obj, dtype=np.int64)
    mask_total = 0
    img_w: TiledRasterWriter | None = None
    mask_w: TiledRasterWriter | None = None
    try:
        with rasterio.Env(GDAL_CACHEMAX=cache_max(cache_mb), GDAL_NUM_THREADS="ALL_CPUS"):
            img_w = TiledRasterWriter(
                out,
                width=width,
                height=height,
                count=bands,
                dtype=dtype,
                crs=crs,
                transform=transform,
                compress=comp,
                quality=quality,
                blocksize=_BLOCK,
                overview_resampling="average",
                tags={"ZOOMEARTH_SYNTH": SYNTH_FORMAT, "ZOOMEARTH_SEED": str(seed)},
                progress=progress,
                progress_desc=f"synth {out.name}",
            )
            mask_w = (
                TiledRasterWriter(
                    mask_path,
                    width=width,
                    height=height,
                    count=1,
                    dtype="uint8",
                    crs=crs,
                    transform=transform,
                    compress="deflate",
                    blocksize=_BLOCK,
                    overview_resampling="nearest",
                    tags={"ZOOMEARTH_MASK": "1=cloud 0=clear"},
                    space_ratio=MASK_SPACE_RATIO,
                )
                if mask_path is not None
                else None
            )
            with contextlib.ExitStack() as stack:
                stack.enter_context(img_w)
                if mask_w is not None:
                    stack.enter_context(mask_w)
                # Writes cover whole 512 px blocks: GDAL compresses a JPEG block it has left
                # before it is complete, and re-encoding it would make pixels depend on `tile`.
                chunk = -(-tile // _BLOCK) * _BLOCK
                for win in _tiles(width, height, chunk):
                    t0 = time.perf_counter()
                    pixels, mask = _render_chunk(scene, win, tile)
                    t1 = time.perf_counter()
                    img_w.write(_convert(pixels, dtype), win)
                    if mask_w is not None and mask is not None:
                        mask_w.write(mask, win)
                        mask_total += int(mask.sum(dtype=np.int64))
                        _count_object_clouds(scene, mask, win, cloud_px)
                    timings["render"] += t1 - t0
                    timings["write"] += time.perf_counter() - t1
                t_close = time.perf_counter()
        timings["overviews"] = img_w.overview_seconds + (mask_w.overview_seconds if mask_w else 0)
        cloud_fraction = mask_total / (width * height) if mask_path is not None else None
        objects = tuple(
            SynthObject(
                ob.id,
                ob.label,
                ob.box_xyxy,
                (float(cloud_px[ob.id]) / _box_area(ob.box_xyxy)) if mask_path else None,
            )
            for ob in scene.objects
        )
        doc = {
            "format": SYNTH_FORMAT,
            "image": out.name,
            "size": [width, height],
            "seed": int(seed),
            "crs": str(crs),
            "transform": [float(x) for x in tuple(transform)[:6]],
            "bands": ["red", "green", "blue", "nir"][:bands],
            "dtype": dtype,
            "labels": list(LABELS),
            "complete_labels": list(COMPLETE_LABELS),
            "objects": [o.to_json() for o in objects],
            "clouds": (
                {
                    "fraction": round(float(cloud_fraction or 0.0), 6),
                    "requested": float(clouds),
                    "mask": mask_path.name,
                }
                if mask_path is not None
                else None
            ),
        }
        with atomic_path(sidecar) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    except BaseException:
        # Do not leave a half set of outputs (an image without its mask or sidecar).
        for wr in (img_w, mask_w):
            if wr is not None and wr.finished:
                wr.path.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - t_start
    timings["finish"] = time.perf_counter() - t_close - timings["overviews"]
    return SynthResult(
        image_path=out,
        sidecar_path=sidecar,
        mask_path=mask_path,
        size=(width, height),
        objects=objects,
        cloud_fraction=cloud_fraction,
        seconds=seconds,
        timings={k: round(v, 3) for k, v in timings.items()},
    )


def _check_can_write(
    out: Path,
    width: int,
    height: int,
    bands: int,
    dtype: str,
    compress: str,
    quality: int,
    clouds: float,
    max_pixels: int | None,
) -> None:
    """Refuse a scene above ``max_pixels`` or one the output's device has no room for."""
    pixels = width * height
    if max_pixels is not None and pixels > max_pixels:
        raise SceneTooLargeError(
            TOO_MANY_PIXELS_TEMPLATE.format(
                width=width, height=height, pixels=pixels, limit=max_pixels
            )
        )
    need = estimate_output_bytes(width, height, bands, dtype, compress=compress, quality=quality)
    if clouds > 0:
        need += estimate_output_bytes(width, height, 1, "uint8", ratio=MASK_SPACE_RATIO)
    check_free_space(out, need)


def _box_area(box: tuple[int, int, int, int]) -> int:
    return max(1, (box[2] - box[0]) * (box[3] - box[1]))


def _count_object_clouds(
    scene: SyntheticScene, mask: np.ndarray, win: Window, counts: np.ndarray
) -> None:
    c0, r0 = int(win.col_off), int(win.row_off)
    h, w = mask.shape
    for k in scene._object_ids_in(c0, r0, w, h):
        x1, y1, x2, y2 = scene.objects[k].box_xyxy
        a, b = max(x1, c0), min(x2, c0 + w)
        c, d = max(y1, r0), min(y2, r0 + h)
        if a < b and c < d:
            counts[k] += int(mask[c - r0 : d - r0, a - c0 : b - c0].sum(dtype=np.int64))
