"""Built-in tool ``segmentation``: masks and polygons of objects in a region.

Backends
--------
* **SAM** (segment-anything), used when the setting ``sam_checkpoint`` names a checkpoint. Box
  prompts, point prompts, and "segment everything" (the automatic mask generator). The model is
  loaded through the shared model pool (:func:`sam_model_spec`) on the setting ``tool_device``.
  The image embedding of a region is computed once and kept in a small LRU cache on the tool
  instance (key: model, scene file, band mapping, working window, view size), so further prompts
  on the same region, in the same or later calls, only run the light mask decoder.
* **GrabCut** (OpenCV), the default that needs no weights: seeded by the prompt box (pixels
  outside it are background, inside it "probably object") and by point prompts (sure object /
  sure background disks). ``mode="everything"`` needs SAM and is refused clearly without it.

Checkpoints and the architecture file
-------------------------------------
A checkpoint is a ``torch.save`` d state dict of ``segment_anything.modeling.Sam`` (the official
``sam_vit_b_01ec64.pth`` files are). Its architecture is the preset of the setting
``sam_model_type`` (``vit_b``/``vit_l``/``vit_h``, identical to ``sam_model_registry``), unless a
JSON file with the checkpoint's name and the suffix ``.json`` lies beside it (``tiny.pth`` ->
``tiny.json``): its ``model_type`` picks the preset and its other keys override fields of
:class:`SamArchitecture` (e.g. ``{"image_size": 256, "encoder_embed_dim": 64, ...}``). Real and
tiny test models are loaded by the same function, :func:`load_sam`. Nothing is ever downloaded.

Frames and the working view
---------------------------
``points`` and ``target_box`` are in **full-resolution pixels of the image** (the frame of the
``--box`` of ``zoomearth tool`` and of the graph's region), and must lie inside the region. The
prompt box is ``target_box``, or the region itself (the planner's box around the object). Both
backends look at a *working window*: the region grown by a context margin (10 % of its long side,
at least 16 px, clipped to the image), rendered as an RGB view whose long side is at most
512 px for GrabCut (its graph cut grows quickly with the pixel count: a 1024-px view took
8-22 s on this 2-core machine, a 512-px view 2-5 s) and the SAM encoder's input size (1024 for
the official models) for SAM; larger regions are seen downsampled and the result is upsampled
back (bilinear on the mask or the SAM logits, then thresholded at 0.5 / the model's threshold)
to the region's full-resolution grid, so edges are placed to about one view pixel. Regions with
a side above 4096 px are refused (zoom in first). Everything else (nodata, small specks and
holes, polygons, areas) is computed at full resolution.

Outputs (all aligned to the region, written atomically)
-------------------------------------------------------
* ``mask.tif``: one band ``uint8`` aligned to the source window (the source's CRS and window
  transform, pixel-only for images without georeference), 1 = object, 0 = background,
  255 = nodata (where the source is nodata); ``mode="everything"``: labels 1..N (``uint16`` above
  254 regions, nodata 65535).
* ``polygons.geojson``: a FeatureCollection, one 4-connected region per feature, holes kept,
  simplified by ``simplify_px`` (see :mod:`zoomearth.tools._polygons`): the scene's CRS with
  a ``"crs"`` member by default, EPSG:4326 with ``lonlat``, full-resolution pixel coordinates for
  images without georeference; properties ``id``, ``label``, ``area_px``, ``area_m2``.
* ``preview.png``: the region with the mask in colour, its outline, the prompt box and points.
* The text for the planner: ``"1 region, 12,400 m2, centroid (x, y) EPSG:26914 / pixel (c, r)"``.

Module layout: SAM (architecture, loading, model-pool spec, cached predictor) is in
:mod:`zoomearth.tools._sam_backend`, the working window, mask clean-up and summary text in
:mod:`zoomearth.tools._segmentation_helpers`; this module holds the tool and re-exports them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoomearth.artifacts import ArtifactKind
from zoomearth.errors import BandLayoutError, ModelFallbackRequired
from zoomearth.geometry import PixelBox
from zoomearth.tools._sam_backend import SAM_CONFIG_TEMPLATE as SAM_CONFIG_TEMPLATE
from zoomearth.tools._sam_backend import (
    SAM_MISSING_TEMPLATE,
    SAM_PRESETS,
    SamArchitecture,
    SamConfigError,
    _Embedding,
    _predictor_class,
    build_sam,
    load_sam,
    sam_architecture,
    sam_config_path,
    sam_model_spec,
)
from zoomearth.tools._sam_backend import SAM_STATE_TEMPLATE as SAM_STATE_TEMPLATE
from zoomearth.tools._segmentation_helpers import CONTEXT_FRACTION as CONTEXT_FRACTION
from zoomearth.tools._segmentation_helpers import CONTEXT_MIN_PX as CONTEXT_MIN_PX
from zoomearth.tools._segmentation_helpers import (
    _context_box,
    _num,
    _remove_small,
    _summary,
    _Work,
)
from zoomearth.tools._segmentation_helpers import _fmt_area as _fmt_area
from zoomearth.tools.base import (
    BackendStatus,
    Capabilities,
    Tool,
    ToolContext,
    ToolInputError,
    ToolResult,
)

if TYPE_CHECKING:
    from zoomearth.scene import Scene

__all__ = [
    "SAM_PRESETS",
    "SamArchitecture",
    "SamConfigError",
    "Segmentation",
    "build_sam",
    "load_sam",
    "sam_architecture",
    "sam_config_path",
    "sam_model_spec",
]

MAX_SIDE = 4096
GRABCUT_MAX_SIDE = 512
GRABCUT_ITERATIONS = 5
PREVIEW_SIDE = 768
PREVIEW_MIN_SIDE = 384
EMBEDDING_CACHE_SIZE = 4
MIN_PROMPT_PIXELS = 16

# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------
POINT_OUTSIDE_TEMPLATE = (
    "Tool 'segmentation': point {point} is outside the region {region}. Points are "
    "full-resolution pixel coordinates [x, y] of the image and must lie inside the region; "
    "move them onto the object, or give a region (bbox_2d) that contains them."
)
TARGET_BOX_OUTSIDE_TEMPLATE = (
    "Tool 'segmentation': target_box {box} does not overlap the region {region}. target_box is "
    "[x1, y1, x2, y2] in full-resolution pixels of the image and must lie inside the region; "
    "omit it to use the region itself as the box prompt."
)
TARGET_BOX_CLIPPED_TEMPLATE = "target_box {box} was clipped to the region: {clipped}."
PROMPT_TOO_SMALL_TEMPLATE = (
    "Tool 'segmentation': the box prompt {box} is too small to segment ({width:.0f} x "
    "{height:.0f} px at the working scale). Give a box around the whole object, at least "
    "4 x 4 pixels, or a larger region."
)
ALL_NODATA_TEMPLATE = (
    "Tool 'segmentation': the region {region} has no valid pixels (all nodata/NaN/Inf); choose "
    "another region."
)
EVERYTHING_NEEDS_SAM_TEMPLATE = (
    "Tool 'segmentation': mode 'everything' needs the SAM backend, which is not available "
    "({reason}). Use mode 'box' (the region or target_box around one object) or 'points'."
)
SAM_UNAVAILABLE_TEMPLATE = (
    "Tool 'segmentation': backend 'sam' was asked for but is not available ({reason}). Use "
    "backend 'auto' or 'grabcut'."
)
SAM_NOT_CONFIGURED = "the setting sam_checkpoint is not set"
SAM_FALLBACK_TEMPLATE = "SAM was not used ({reason}); GrabCut segmented the region instead."
SAM_OOM_FALLBACK_TEMPLATE = (
    "SAM ran out of memory ({reason}); GrabCut segmented the region instead."
)
BANDS_LAYOUT_TEMPLATE = "Tool 'segmentation' cannot choose which bands to show as RGB: {reason}"
NO_REGION_TEMPLATE = (
    "{what} found no region in {region}. Try a target_box tight around the object, points on it "
    "(mode 'points'), or a lower min_area_px."
)


# --------------------------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------------------------
Point = Annotated[list[float], Field(min_length=2, max_length=2)]


class Segmentation(Tool):
    """Segment the object in a region (box/point prompts) or everything in it (SAM)."""

    name = "segmentation"
    description = (
        "Outline objects in the region: a mask GeoTIFF, GeoJSON polygons with their area in "
        "square metres, and a preview. By default it segments the one object the region (or "
        "target_box) surrounds; give points on the object to guide it, or mode 'everything' "
        "to split the whole region into segments (needs SAM). Use it to delineate, measure or "
        "count things such as buildings, fields, ponds or clouds."
    )

    class Args(BaseModel):
        """Arguments of ``segmentation`` (coordinates in full-resolution image pixels)."""

        model_config = ConfigDict(extra="forbid")

        mode: Literal["box", "points", "everything"] = Field(
            "box",
            description="'box': the object inside target_box (default: the region); 'points': "
            "the object under the points; 'everything': all segments of the region (SAM only)",
        )
        points: list[Point] | None = Field(
            None,
            max_length=64,
            description="Point prompts [[x, y], ...] in full-resolution pixels of the image, "
            "inside the region",
        )
        point_labels: list[Literal[0, 1]] | None = Field(
            None,
            description="One label per point: 1 = on the object, 0 = background (default: all 1)",
        )
        target_box: list[float] | None = Field(
            None,
            min_length=4,
            max_length=4,
            description="Box prompt [x1, y1, x2, y2] in full-resolution pixels, inside the "
            "region (default: the region itself)",
        )
        backend: Literal["auto", "sam", "grabcut"] = Field(
            "auto", description="'auto': SAM when configured, else GrabCut"
        )
        lonlat: bool = Field(
            False, description="GeoJSON in lon/lat (EPSG:4326) instead of the image's CRS"
        )
        simplify_px: float = Field(
            1.0, ge=0, le=100, description="Polygon simplification tolerance in pixels"
        )
        min_area_px: int = Field(
            16, ge=0, description="Drop regions (and fill holes) smaller than this many pixels"
        )
        points_per_side: int = Field(
            32, ge=4, le=64, description="mode 'everything': prompt grid points per side"
        )

        @model_validator(mode="after")
        def _check_prompts(self) -> Segmentation.Args:
            if self.mode == "points" and not self.points:
                raise ValueError("mode 'points' needs at least one [x, y] in 'points'")
            if self.point_labels is not None:
                if not self.points:
                    raise ValueError("point_labels given without points")
                if len(self.point_labels) != len(self.points):
                    raise ValueError(
                        f"point_labels has {len(self.point_labels)} labels for "
                        f"{len(self.points)} points; give one label (1 or 0) per point"
                    )
            if self.points and self.point_labels is not None and 1 not in self.point_labels:
                if self.mode == "points" and self.target_box is None:
                    raise ValueError(
                        "mode 'points' needs at least one point labelled 1 (on the object)"
                    )
            if self.target_box is not None:
                x1, y1, x2, y2 = self.target_box
                if not all(np.isfinite(v) for v in self.target_box):
                    raise ValueError("target_box must hold four finite numbers")
                if x2 <= x1 or y2 <= y1:
                    raise ValueError(
                        f"target_box {self.target_box} is inverted or empty; give "
                        "[x1, y1, x2, y2] with x2 > x1 and y2 > y1"
                    )
            if self.points and not all(np.isfinite(v) for p in self.points for v in p):
                raise ValueError("points must hold finite numbers")
            if self.mode == "everything" and self.backend == "grabcut":
                raise ValueError("mode 'everything' needs backend 'sam' or 'auto'")
            return self

    capabilities: ClassVar[Capabilities] = Capabilities(
        bands=(1, 2, 3, 4), max_side=MAX_SIDE, streaming=False, device_memory_mb=4000
    )

    def __init__(self) -> None:
        self._embeddings: OrderedDict[tuple[Any, ...], _Embedding] = OrderedDict()
        self._lock = threading.Lock()
        #: Image embeddings computed by this instance (cache misses); tests and benchmarks read it.
        self.embeddings_computed = 0

    @classmethod
    def backend_status(cls) -> list[BackendStatus]:
        """SAM when a checkpoint is configured and exists; GrabCut always (OpenCV)."""
        from zoomearth.config import load_settings

        try:
            settings = load_settings()
            ckpt = settings.sam_checkpoint
        except Exception as exc:  # noqa: BLE001 - a broken config must not break listings
            sam = BackendStatus("sam", False, f"settings unreadable: {exc}")
        else:
            if ckpt is None:
                sam = BackendStatus("sam", False, SAM_NOT_CONFIGURED)
            elif not Path(ckpt).expanduser().is_file():
                sam = BackendStatus("sam", False, SAM_MISSING_TEMPLATE.format(path=ckpt))
            else:
                sam = BackendStatus("sam", True, f"{settings.sam_model_type}: {ckpt}")
        return [sam, BackendStatus("grabcut", True, "OpenCV GrabCut (no weights)")]

    # -- run ------------------------------------------------------------------------------------
    def run(self, ctx: ToolContext, args: Args) -> ToolResult:  # type: ignore[override]
        """Segment, then write the mask, the polygons and the preview."""
        scene = ctx.scene
        region = ctx.box
        prompt_box, points, labels = self._prompts(ctx, args, region)
        backend, reason = self._choose_backend(ctx, args)

        valid = self._region_valid(ctx)
        if not valid.any():
            raise ToolInputError(
                ALL_NODATA_TEMPLATE.format(region=region), code="no_valid_pixels", tool=self.name
            )
        ctx.report(1, 4, "segmentation: reading the region")

        cached = False
        if backend == "sam":
            try:
                labels_map, cached = self._run_sam(ctx, args, region, prompt_box, points, labels)
            except ModelFallbackRequired as exc:
                if args.mode == "everything":
                    raise
                ctx.note(SAM_OOM_FALLBACK_TEMPLATE.format(reason=exc))
                backend = "grabcut"
        if backend == "grabcut":
            if reason:
                ctx.note(SAM_FALLBACK_TEMPLATE.format(reason=reason))
            labels_map = self._run_grabcut(ctx, region, prompt_box, points, labels)
        ctx.report(2, 4, "segmentation: vectorising")

        labels_map = self._postprocess(labels_map, valid, args)
        return self._write_outputs(
            ctx,
            args,
            scene,
            region,
            labels_map,
            valid,
            backend,
            prompt_box,
            points,
            labels,
            cached,
        )

    # -- prompts and backend --------------------------------------------------------------------
    def _prompts(
        self, ctx: ToolContext, args: Args, region: PixelBox
    ) -> tuple[PixelBox, np.ndarray, np.ndarray]:
        points = np.asarray(args.points or [], dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(
            args.point_labels if args.point_labels is not None else [1] * len(points),
            dtype=np.int64,
        )
        for x, y in points:
            if not (region.x1 <= x <= region.x2 and region.y1 <= y <= region.y2):
                raise ToolInputError(
                    POINT_OUTSIDE_TEMPLATE.format(point=[_num(x), _num(y)], region=region),
                    tool=self.name,
                )
        prompt = region
        if args.target_box is not None:
            box = PixelBox(*args.target_box)
            clipped = box.intersection(region)
            if clipped is None or clipped.width <= 0 or clipped.height <= 0:
                raise ToolInputError(
                    TARGET_BOX_OUTSIDE_TEMPLATE.format(
                        box=[_num(v) for v in args.target_box], region=region
                    ),
                    tool=self.name,
                )
            if clipped != box:
                ctx.note(TARGET_BOX_CLIPPED_TEMPLATE.format(box=box, clipped=clipped))
            prompt = clipped
        return prompt, points, labels

    def _choose_backend(self, ctx: ToolContext, args: Args) -> tuple[str, str]:
        """``(backend, why SAM is not used)``; raises for requests that cannot be met."""
        if args.backend == "grabcut":
            return "grabcut", ""
        ckpt = getattr(ctx.settings, "sam_checkpoint", None)
        reason = ""
        if ckpt is None:
            reason = SAM_NOT_CONFIGURED
        elif not Path(ckpt).expanduser().is_file():
            reason = SAM_MISSING_TEMPLATE.format(path=ckpt)
        if not reason:
            return "sam", ""
        if args.mode == "everything":
            raise ToolInputError(
                EVERYTHING_NEEDS_SAM_TEMPLATE.format(reason=reason),
                code="backend_unavailable",
                tool=self.name,
            )
        if args.backend == "sam":
            raise ToolInputError(
                SAM_UNAVAILABLE_TEMPLATE.format(reason=reason),
                code="backend_unavailable",
                tool=self.name,
            )
        # Not configured is the normal default, not worth a note; a missing file is.
        return "grabcut", reason if ckpt is not None else ""

    # -- pixels ---------------------------------------------------------------------------------
    def _mapping_bands(self, scene: Scene) -> tuple[tuple[int, ...], int | None]:
        try:
            mapping = scene.band_mapping()
        except BandLayoutError as exc:
            raise ToolInputError(
                BANDS_LAYOUT_TEMPLATE.format(reason=exc), code="unsupported_image", tool=self.name
            ) from None
        return tuple(mapping.rgb), mapping.alpha

    def _region_valid(self, ctx: ToolContext) -> np.ndarray:
        """``(rh, rw)`` bool: True where the source pixel is valid (full resolution, tiled)."""
        rgb, alpha = self._mapping_bands(ctx.scene)
        bands = list(rgb) + ([alpha] if alpha else [])
        region = ctx.box
        valid = np.ones((int(region.height), int(region.width)), dtype=bool)
        for tile in ctx.tiles(side=1024, overlap=0):
            data = tile.crop(ctx.read(tile.read_box, bands=bands))
            ok = ~np.ma.getmaskarray(data[: len(rgb)]).any(axis=0)
            if alpha:
                ok &= np.ma.getdata(data[-1]) > 0
            col, row, w, h = tile.window
            valid[row : row + h, col : col + w] = ok
        return valid

    def _work(self, scene: Scene, region: PixelBox, max_side: int) -> _Work:
        work = _context_box(region, scene.width, scene.height)
        try:
            view = scene.render(work, max_side=max_side)
        except BandLayoutError as exc:
            raise ToolInputError(
                BANDS_LAYOUT_TEMPLATE.format(reason=exc), code="unsupported_image", tool=self.name
            ) from None
        work = view.spec.region
        return _Work(
            region=region,
            work=work,
            rgb=view.rgb,
            valid_view=view.valid,
            sx=view.spec.width / work.width,
            sy=view.spec.height / work.height,
        )

    # -- GrabCut --------------------------------------------------------------------------------
    def _run_grabcut(
        self,
        ctx: ToolContext,
        region: PixelBox,
        prompt: PixelBox,
        points: np.ndarray,
        labels: np.ndarray,
    ) -> np.ndarray:
        """GrabCut on the working view; returns ``(rh, rw)`` uint8 0/1 on the region grid."""
        import cv2

        w = self._work(ctx.scene, region, GRABCUT_MAX_SIDE)
        vh, vw = w.rgb.shape[:2]
        x1, y1 = w.to_view(prompt.x1, prompt.y1)
        x2, y2 = w.to_view(prompt.x2, prompt.y2)
        c1, r1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        c2, r2 = min(vw, int(np.ceil(x2))), min(vh, int(np.ceil(y2)))
        if (c2 - c1) * (r2 - r1) < MIN_PROMPT_PIXELS:
            raise ToolInputError(
                PROMPT_TOO_SMALL_TEMPLATE.format(box=prompt, width=x2 - x1, height=y2 - y1),
                tool=self.name,
            )
        seed = np.full((vh, vw), cv2.GC_BGD, dtype=np.uint8)
        seed[r1:r2, c1:c2] = cv2.GC_PR_FGD
        if (seed != cv2.GC_PR_FGD).sum() < MIN_PROMPT_PIXELS:
            # The box fills the whole view (a region at the image's edges): the view's rim is
            # the only background sample GrabCut can get.
            rim = max(2, round(0.03 * max(vh, vw)))
            seed[:rim] = seed[-rim:] = cv2.GC_PR_BGD
            seed[:, :rim] = seed[:, -rim:] = cv2.GC_PR_BGD
        radius = max(2, round(0.01 * max(vh, vw)))
        for (x, y), label in zip(points, labels, strict=True):
            vx, vy = w.to_view(x, y)
            value = cv2.GC_FGD if label == 1 else cv2.GC_BGD
            cv2.circle(seed, (int(vx), int(vy)), radius, int(value), thickness=-1)
        seed[~w.valid_view] = cv2.GC_BGD
        if not np.isin(seed, (cv2.GC_FGD, cv2.GC_PR_FGD)).any():
            return np.zeros((int(region.height), int(region.width)), dtype=np.uint8)
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        bgr = np.ascontiguousarray(w.rgb[..., ::-1])
        try:
            cv2.grabCut(  # type: ignore[call-overload]  # rect is unused with INIT_WITH_MASK
                bgr, seed, None, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK
            )
        except cv2.error:
            # GrabCut cannot fit its colour models to a uniform or nearly empty seed: then the
            # box itself is the best answer it has.
            pass
        ctx.check_cancelled()
        fg = np.isin(seed, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        return (w.to_region(fg) >= 0.5).astype(np.uint8)

    # -- SAM ------------------------------------------------------------------------------------
    def _cache_get(self, key: tuple[Any, ...]) -> _Embedding | None:
        with self._lock:
            emb = self._embeddings.get(key)
            if emb is not None:
                self._embeddings.move_to_end(key)
            return emb

    def _cache_put(self, key: tuple[Any, ...], emb: _Embedding) -> None:
        with self._lock:
            self._embeddings[key] = emb
            self._embeddings.move_to_end(key)
            while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
                self._embeddings.popitem(last=False)
            self.embeddings_computed += 1

    def _run_sam(
        self,
        ctx: ToolContext,
        args: Args,
        region: PixelBox,
        prompt: PixelBox,
        points: np.ndarray,
        labels: np.ndarray,
    ) -> tuple[np.ndarray, bool]:
        """SAM on the working view; returns ``(rh, rw)`` labels on the region grid + cache hit."""
        settings = ctx.settings
        assert settings is not None and settings.sam_checkpoint is not None
        checkpoint = Path(settings.sam_checkpoint).expanduser()
        model_type = settings.sam_model_type
        _label, arch = sam_architecture(checkpoint, model_type)  # SamConfigError -> ToolFailure
        spec = sam_model_spec(checkpoint, model_type)
        scene = ctx.scene
        w = self._work(scene, region, arch.image_size)
        vh, vw = w.rgb.shape[:2]
        rgb_bands, _alpha = self._mapping_bands(scene)
        key = (
            spec.key,
            str(scene.path),
            scene.mtime_ns,
            rgb_bands,
            tuple(w.work.as_list()),
            (vh, vw),
        )
        preset = self._cache_get(key)
        rgb = np.ascontiguousarray(w.rgb)
        rgb[~w.valid_view] = 0

        def infer(model: Any, device: str) -> Any:
            predictor = _predictor_class()(model, preset)
            if args.mode == "everything":
                from segment_anything import SamAutomaticMaskGenerator

                amg = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side)
                amg.predictor = predictor
                result: Any = amg.generate(rgb)
            else:
                predictor.set_image(rgb)
                coords = lab = box = None
                if len(points):
                    coords = np.array([w.to_view(x, y) for x, y in points], dtype=np.float32)
                    lab = labels.astype(np.int32)
                if args.mode == "box" or args.target_box is not None:
                    bx1, by1 = w.to_view(prompt.x1, prompt.y1)
                    bx2, by2 = w.to_view(prompt.x2, prompt.y2)
                    box = np.array([bx1, by1, bx2, by2], dtype=np.float32)
                multi = box is None and (coords is None or len(coords) == 1)
                masks, scores, _ = predictor.predict(
                    point_coords=coords,
                    point_labels=lab,
                    box=box,
                    multimask_output=multi,
                    return_logits=True,
                )
                best = int(np.argmax(scores))
                result = np.asarray(masks[best], dtype=np.float32)
            return result, predictor.computed, float(model.mask_threshold)

        result, computed, threshold = ctx.require_pool().run(
            spec, infer, getattr(settings, "tool_device", "auto")
        )
        if computed is not None:
            self._cache_put(key, computed)
        ctx.check_cancelled()
        if args.mode != "everything":
            logits = w.to_region(result)
            return (logits > threshold).astype(np.uint8), preset is not None
        # Larger segments first, so smaller ones painted later stay visible on top.
        records = sorted(result, key=lambda r: -int(r["area"]))
        label_view = np.zeros((vh, vw), dtype=np.int32)
        for i, rec in enumerate(records, start=1):
            label_view[np.asarray(rec["segmentation"], dtype=bool)] = i
        return w.to_region(label_view.astype(np.float32), nearest=True).astype(
            np.int32
        ), preset is not None

    # -- outputs --------------------------------------------------------------------------------
    def _postprocess(self, labels_map: np.ndarray, valid: np.ndarray, args: Args) -> np.ndarray:
        """Remove invalid pixels and specks; renumber labels 1..N (``int32`` ``(rh, rw)``)."""
        out = np.where(valid, labels_map, 0).astype(np.int32)
        if args.mode != "everything":
            return _remove_small(out > 0, args.min_area_px, valid).astype(np.int32)
        ids, counts = np.unique(out[out > 0], return_counts=True)
        keep = ids[counts >= max(1, args.min_area_px)]
        lut = np.zeros(int(out.max()) + 1, dtype=np.int32)
        lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
        return lut[out]

    def _write_outputs(
        self,
        ctx: ToolContext,
        args: Args,
        scene: Scene,
        region: PixelBox,
        labels_map: np.ndarray,
        valid: np.ndarray,
        backend: str,
        prompt: PixelBox,
        points: np.ndarray,
        labels: np.ndarray,
        cached: bool,
    ) -> ToolResult:
        from zoomearth.scene.writing import SourceGeoref, atomic_path, write_window_array
        from zoomearth.tools._polygons import mask_to_polygons, polygons_to_geojson

        col, row, width, height = region.to_window()
        n_labels = int(labels_map.max())
        dtype, nodata = ("uint8", 255) if n_labels < 255 else ("uint16", 65535)
        raster = np.where(valid, labels_map, nodata).astype(dtype)
        source = SourceGeoref(
            crs=scene.crs,
            transform=scene.transform,
            nodata=scene.nodata,
            dtype=scene.dtype,
            count=scene.count,
            path=scene.path,
        )
        mask_path = write_window_array(
            ctx.output_path("mask.tif"),
            raster,
            source=source,
            window=(col, row, width, height),
            dtype=dtype,
            nodata=nodata,
            overview_resampling="nearest",
            tags={"ZOOMEARTH_TOOL": self.name, "ZOOMEARTH_BACKEND": backend},
            protect=ctx.protected_paths,
        )

        polys = mask_to_polygons(
            labels_map,
            offset=(col, row),
            simplify_px=args.simplify_px,
            min_area_px=args.min_area_px,
            valid=valid,
        )
        georef = source.is_georeferenced and scene.crs is not None
        if args.lonlat and not georef:
            raise ToolInputError(
                "Tool 'segmentation': lonlat needs a georeferenced image; this one has no CRS, "
                "so polygons are in pixel coordinates. Call again without lonlat.",
                tool=self.name,
            )
        gj = polygons_to_geojson(
            polys,
            transform=scene.transform if georef else None,
            crs=scene.crs if georef else None,
            lonlat=args.lonlat,
            properties={"backend": backend},
        )
        gj_path = ctx.output_path("polygons.geojson")
        with atomic_path(gj_path, protect=ctx.protected_paths) as tmp:
            tmp.write_text(json.dumps(gj.collection, allow_nan=False), encoding="utf-8")

        ctx.report(3, 4, "segmentation: preview")
        preview = self._preview(ctx, scene, region, labels_map, prompt, points, labels, args)

        what = f"Segmentation ({'SAM' if backend == 'sam' else 'GrabCut'}, {args.mode} prompt)"
        if args.mode == "everything":
            what = "Segmentation (SAM, everything)"
        n = len(polys)
        fg = int((labels_map > 0).sum())
        coverage = fg / max(1, int(valid.sum()))
        if n == 0:
            text = NO_REGION_TEMPLATE.format(what=what, region=region)
        else:
            text = f"{what} of region {region}: " + _summary(gj, polys, coverage)
        if cached:
            text += " (image embedding reused)"
        crs_label = gj.crs if gj.crs and len(gj.crs) < 40 else ("scene CRS" if gj.crs else None)
        areas = [a for a in gj.areas_m2 if a is not None]
        data: dict[str, Any] = {
            "backend": backend,
            "mode": args.mode,
            "regions": n,
            "area_px_total": int(sum(p.area_px for p in polys)),
            "area_m2_total": round(sum(areas), 3) if areas and len(areas) == n else None,
            "coverage": round(coverage, 6),
            "frame": gj.frame,
            "crs": crs_label,
            "window": [col, row, width, height],
            "prompt_box_xyxy": [_num(v) for v in prompt.as_list()],
            "embedding_reused": cached,
        }
        if n:
            data["largest"] = {
                "area_px": polys[0].area_px,
                "area_m2": None if gj.areas_m2[0] is None else round(gj.areas_m2[0], 3),
                "centroid": [round(v, 8) for v in gj.centroids[0]],
                "centroid_px": [round(v, 2) for v in gj.pixel_centroids[0]],
            }
        kind_label = "label map" if args.mode == "everything" else "mask"
        artifacts = [
            ctx.artifact(
                mask_path,
                ArtifactKind.MASK,
                f"{kind_label} of {region} ({width} x {height} px, {dtype}, "
                f"{'1..N' if args.mode == 'everything' else '1'} = object, 0 = background, "
                f"{nodata} = nodata)",
                width=width,
                height=height,
                regions=n,
            ),
            ctx.artifact(
                gj_path,
                ArtifactKind.VECTOR,
                f"{n} polygon(s) in "
                + ("pixel coordinates" if gj.frame == "pixel" else (crs_label or "the scene CRS")),
                crs=gj.crs,
                media_type="application/geo+json",
                regions=n,
            ),
        ]
        return ToolResult(text=text, artifacts=artifacts, preview=preview, data=data)

    def _preview(
        self,
        ctx: ToolContext,
        scene: Scene,
        region: PixelBox,
        labels_map: np.ndarray,
        prompt: PixelBox,
        points: np.ndarray,
        labels: np.ndarray,
        args: Args,
    ) -> Any:
        import cv2

        from zoomearth.scene.writing import write_png

        try:
            view = scene.render(region, max_side=PREVIEW_SIDE)
        except BandLayoutError as exc:
            ctx.note(f"No preview was written: {exc}")
            return None
        img = view.rgb
        ph, pw = img.shape[:2]
        if max(ph, pw) < PREVIEW_MIN_SIDE:
            # Small regions are enlarged (pixel-exact) so the outline stays readable.
            k = -(-PREVIEW_MIN_SIDE // max(ph, pw))
            img = cv2.resize(img, (pw * k, ph * k), interpolation=cv2.INTER_NEAREST)
            ph, pw = img.shape[:2]
        img = img.copy()
        small = cv2.resize(labels_map.astype(np.float32), (pw, ph), interpolation=cv2.INTER_NEAREST)
        small = small.astype(np.int32)
        if args.mode == "everything":
            rng = np.random.default_rng(0)
            palette = rng.integers(40, 256, size=(int(small.max()) + 1, 3)).astype(np.uint8)
            colour = palette[small]
        else:
            colour = np.zeros_like(img)
            colour[...] = (255, 0, 255)
        on = small > 0
        img[on] = (0.55 * img[on] + 0.45 * colour[on]).astype(np.uint8)
        contours, _ = cv2.findContours(
            (on).astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(img, contours, -1, (255, 255, 0), 1)
        sx, sy = pw / region.width, ph / region.height
        if args.mode != "everything" and (prompt != region or args.target_box is not None):
            p1 = (int((prompt.x1 - region.x1) * sx), int((prompt.y1 - region.y1) * sy))
            p2 = (int((prompt.x2 - region.x1) * sx) - 1, int((prompt.y2 - region.y1) * sy) - 1)
            cv2.rectangle(img, p1, p2, (255, 215, 0), 1)
        for (x, y), lab in zip(points, labels, strict=True):
            centre = (int((x - region.x1) * sx), int((y - region.y1) * sy))
            cv2.circle(img, centre, 4, (0, 255, 0) if lab == 1 else (255, 0, 0), -1)
        png = write_png(ctx.output_path("preview.png"), img, protect=ctx.protected_paths)
        return ctx.artifact(
            png, ArtifactKind.PREVIEW, f"segmentation preview of {region} ({pw} x {ph} px)"
        )
