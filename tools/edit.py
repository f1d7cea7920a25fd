"""Built-in tool ``edit``: remove objects (classical inpainting) or edit a region generatively.

What is edited (the *edit mask*, full-resolution pixels of the region)
----------------------------------------------------------------------
1. ``mask``: an earlier mask artifact (``"artifact:N"``, e.g. from ``segmentation``): its pixels
   with a value above 0 (and not its nodata value) are edited. The mask is placed by the source
   window recorded in the file (tag ``ZOOMEARTH_SOURCE_WINDOW``, else the artifact's region) and
   resampled (nearest) onto the region's grid; the part outside the region is ignored.
2. else ``target_box``: a full-resolution pixel box ``[x1, y1, x2, y2]`` inside the region.
3. else the region itself, inset by a margin (12.5 % of each side, at least 4 px): the planner's
   box drawn around an object holds the object in its middle and context around it. An
   InstructPix2Pix edit without a mask or target box changes the whole region.

Backends
--------
* **classical** (default for removal, needs no weights): OpenCV inpainting (Telea's fast
  marching method, or Navier-Stokes with ``method="ns"``) of every band of the edit mask
  (dilated by 2 px so object fringes go too), band by band in ``float32`` so every dtype keeps its
  values. Instructions that ask for a removal (``remove``, ``erase``, ``delete``, ``get rid of``,
  ``clear``, ``take out``, ``eliminate``) select it in ``mode="auto"``.
* **learned** (diffusers, loaded lazily through the shared model pool on the setting
  ``tool_device``, seeded with a CPU ``torch.Generator`` so results do not depend on the device):

  - ``StableDiffusionInpaintPipeline`` from the setting ``inpaint_model`` fills the edit mask
    with the instruction as prompt, window by window at the pipeline's native size (the shared
    helper :mod:`zoomearth.tools._sd_inpaint`, same pool entry as cloud removal); removals with
    ``backend="learned"`` use a neutral background prompt and the instruction as negative
    prompt;
  - ``StableDiffusionInstructPix2PixPipeline`` from the setting ``instruct_edit_model`` (used for
    generative edits when set) edits the whole region resized to its native long side (a
    multiple of 8) and back; only the edit-mask pixels are kept.

  Generative edits without a configured model are refused, naming the settings. The model sees
  bands 1-3 as RGB (scaled to 8 bits with the region's value range for non-``uint8`` data); any
  further band (e.g. NIR), which the model cannot invent, is filled by classical inpainting in
  the same mask for diffusion inpainting and kept unchanged for InstructPix2Pix (whose edit may
  cover the whole region, leaving nothing to inpaint from). Single-band images are edited as
  grey.

Outputs (new files, never the input; aligned to the region, written atomically)
------------------------------------------------------------------------------
* ``edited.tif``: the region with the source's bands, dtype and nodata; nodata pixels are never
  edited. Tag ``ZOOMEARTH_SYNTHETIC`` names the mask file that flags the invented pixels.
* ``edited_mask.tif``: ``uint8``, 1 where pixels were invented, 0 elsewhere.
* ``edit.png``: a preview, region before | after.

The tool is marked ``needs_approval``: the graph asks the user before it runs -- after
:meth:`Edit.check` passed, which refuses what ``run`` would refuse (an unavailable backend, a
target box outside the region, a region without valid pixels, an edit mask that selects nothing
or covers the whole region: code ``mask_covers_region``), so the user is never asked about an edit
that cannot run.

Module layout: mask placement and the classical and learned backends are in
:mod:`zoomearth.tools._edit_backends`; this module holds the tool and re-exports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from zoomearth.artifacts import ArtifactKind
from zoomearth.tools._edit_backends import INPAINT_RADIUS as INPAINT_RADIUS
from zoomearth.tools._edit_backends import INSET_FRACTION as INSET_FRACTION
from zoomearth.tools._edit_backends import INSET_MIN_PX as INSET_MIN_PX
from zoomearth.tools._edit_backends import MASK_PLACEMENT_TEMPLATE as MASK_PLACEMENT_TEMPLATE
from zoomearth.tools._edit_backends import MASK_READ_TEMPLATE as MASK_READ_TEMPLATE
from zoomearth.tools._edit_backends import PIX2PIX_BYTES as PIX2PIX_BYTES
from zoomearth.tools._edit_backends import (
    _avoid_nodata,
    _inset_box,
    _instruct_edit,
    classical_inpaint,
    instruct_edit_spec,
    load_mask_for_region,
)
from zoomearth.tools._edit_backends import _working_size as _working_size
from zoomearth.tools.base import (
    BackendStatus,
    Capabilities,
    Tool,
    ToolContext,
    ToolInputError,
    ToolResult,
    artifact_ref,
    output_name,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Edit",
    "classical_inpaint",
    "instruct_edit_spec",
    "is_removal",
    "load_mask_for_region",
]

MAX_SIDE: Final = 2048
DILATE_PX: Final = 2
REMOVAL_PROMPT: Final = (
    "seamless background of the surrounding aerial scene, natural ground texture"
)

_REMOVAL_RE = re.compile(
    r"\b(remove|removing|erase|erasing|delete|deleting|get rid of|clear|take out|eliminate)\b",
    re.IGNORECASE,
)

GENERATIVE_REFUSED_TEMPLATE = (
    "Tool 'edit': {what} needs a generative model, and none is configured. Set the setting "
    "inpaint_model (a diffusers inpainting model id or path) or instruct_edit_model (an "
    "InstructPix2Pix model id or path), e.g. ZOOMEARTH_INPAINT_MODEL=/models/sd-inpainting; "
    "without one, only removals work (instruction 'remove ...' with mode 'remove')."
)
CLASSICAL_GENERATIVE_TEMPLATE = (
    "Tool 'edit': backend 'classical' only removes objects (inpainting from the surroundings); "
    "{instruction!r} is a generative edit. Call it with backend 'auto', or with mode 'remove' if "
    "the object should simply disappear."
)
LEARNED_REMOVAL_TEMPLATE = (
    "Tool 'edit': backend 'learned' for a removal needs the setting inpaint_model (a diffusers "
    "inpainting model id or path); call it with backend 'classical' (Telea inpainting) instead."
)
EMPTY_MASK_TEMPLATE = (
    "Tool 'edit': the edit mask ({source}) selects no valid pixel of region {region}; give a "
    "mask that overlaps the region (e.g. segment the object first and pass mask='artifact:N'), "
    "or a target_box inside the region."
)
ALL_MASKED_TEMPLATE = (
    "Tool 'edit': the edit mask ({source}) covers the whole region {region}, so there is no "
    "surrounding image to inpaint from; choose a larger region around the object."
)
TARGET_BOX_TEMPLATE = (
    "Tool 'edit': target_box {box} is not inside the region {region} (full-resolution pixels "
    "x1, y1, x2, y2 with x1 < x2 and y1 < y2); give a box inside the region or omit it."
)
NO_VALID_TEMPLATE = (
    "Tool 'edit': the region {region} has no valid pixels (all nodata/NaN/Inf); choose another "
    "region."
)
NO_PREVIEW_TEMPLATE = "No preview was written: {reason}"


@dataclass(frozen=True)
class _EditPlan:
    """What :meth:`Edit._plan` decided for a call (all arrays in the region's pixel frame).

    Attributes:
        removal: The instruction asks for a removal.
        backend: ``telea``, ``ns``, ``sd_inpaint`` or ``instruct_pix2pix``.
        raw: ``(bands, h, w)`` source pixels, native dtype.
        valid: ``(h, w)`` bool, True where every band is valid.
        fill: ``(h, w)`` bool, the pixels to invent (edit mask, dilated, valid only).
        source_text: Where the edit mask came from, for messages.
    """

    removal: bool
    backend: str
    raw: np.ndarray
    valid: np.ndarray
    fill: np.ndarray
    source_text: str


def is_removal(instruction: str) -> bool:
    """Whether an instruction asks to remove something ('remove the cars', 'erase the boat')."""
    return bool(_REMOVAL_RE.search(instruction))
# --------------------------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------------------------
class Edit(Tool):
    """Remove objects by inpainting, or apply a generative edit (diffusers), in a region."""

    name = "edit"
    description = (
        "Edit the region and save the result as a new GeoTIFF (never the input) with a mask of "
        "the changed pixels and a before|after preview. 'remove ...' instructions inpaint the "
        "object (give a segmentation mask as mask='artifact:N', or a box around the object); "
        "other edits ('make the roofs red') need a configured diffusion model."
    )
    needs_approval = True

    class Args(BaseModel):
        """Arguments of ``edit``."""

        model_config = ConfigDict(extra="forbid")

        instruction: str = Field(
            ...,
            min_length=1,
            max_length=500,
            description="What to change, e.g. 'remove the cars' or 'make the roofs red'",
        )
        mask: artifact_ref("mask") | None = Field(  # type: ignore[valid-type]
            None, description="Mask of the pixels to edit, e.g. from segmentation"
        )
        target_box: list[int] | None = Field(
            None,
            min_length=4,
            max_length=4,
            description="Without a mask: full-resolution pixel box [x1, y1, x2, y2] inside the "
            "region to edit (default: the region minus a 12.5 % margin of context)",
        )
        mode: Literal["auto", "remove", "generate"] = Field(
            "auto",
            description="'remove' inpaints from the surroundings, 'generate' follows the "
            "instruction with a diffusion model, 'auto' decides from the instruction",
        )
        backend: Literal["auto", "classical", "learned"] = Field(
            "auto",
            description="Removals: 'auto'/'classical' = Telea inpainting, 'learned' = diffusion "
            "inpainting; generative edits always use the configured model",
        )
        method: Literal["telea", "ns"] = Field(
            "telea", description="Classical inpainting: Telea or Navier-Stokes"
        )
        seed: int = Field(0, ge=0, le=2**31 - 1, description="Random seed of generative edits")
        steps: int = Field(25, ge=1, le=150, description="Diffusion steps of generative edits")
        guidance: float = Field(7.5, ge=0.0, le=30.0, description="Text guidance scale")
        image_guidance: float = Field(
            1.5, ge=0.0, le=10.0, description="InstructPix2Pix image guidance scale"
        )
        name: str = output_name("edited")

    capabilities: ClassVar[Capabilities] = Capabilities(
        bands=None,
        dtypes=("uint8", "uint16", "int16", "float32", "float64"),
        max_side=MAX_SIDE,
        streaming=False,
        device_memory_mb=4000,
    )

    @classmethod
    def backend_status(cls) -> list[BackendStatus]:
        """Telea/NS inpainting through OpenCV; diffusers pipelines when configured."""
        return [
            BackendStatus.of_package("telea_ns", "opencv-python-headless", "OpenCV"),
            BackendStatus.of_package(
                "diffusers",
                "diffusers",
                "diffusers",
                "models from settings inpaint_model / instruct_edit_model",
            ),
        ]

    # ------------------------------------------------------------------------------------------
    def _edit_mask(
        self, ctx: ToolContext, args: Args, width: int, height: int, *, instruct: bool
    ) -> tuple[np.ndarray, str]:
        import numpy as np

        region = ctx.box
        x0, y0 = int(region.x1), int(region.y1)
        if args.mask is not None:
            art = ctx.get_artifact(args.mask)
            sel = load_mask_for_region(art, region, (ctx.scene.width, ctx.scene.height))
            return sel, f"mask {art.ref}"
        sel = np.zeros((height, width), bool)
        if args.target_box is not None:
            bx1, by1, bx2, by2 = args.target_box
            if not (x0 <= bx1 < bx2 <= x0 + width and y0 <= by1 < by2 <= y0 + height):
                raise ToolInputError(
                    TARGET_BOX_TEMPLATE.format(box=args.target_box, region=region),
                    code="bad_box",
                    tool=self.name,
                )
            sel[by1 - y0 : by2 - y0, bx1 - x0 : bx2 - x0] = True
            return sel, f"target box {args.target_box}"
        if instruct:
            sel[:] = True
            return sel, "the whole region"
        ix1, iy1, ix2, iy2 = _inset_box(width, height)
        sel[iy1:iy2, ix1:ix2] = True
        return sel, "the region without its 12.5 % margin"

    def check(self, ctx: ToolContext, args: Args) -> None:  # type: ignore[override]
        """Refuse, before the user is asked to approve it, an edit that could not run.

        The backend must be available (a generative edit needs a configured model), the target
        box must lie inside the region, the region must hold valid pixels, and the edit mask must
        select some of them while leaving some to inpaint from. Reads the region once (at most
        2,048 px a side) and the mask artifact, if any; writes nothing.
        """
        self._plan(ctx, args)

    def _plan(self, ctx: ToolContext, args: Args) -> _EditPlan:
        """Backend, pixels and edit mask of a call; raises ToolInputError when it cannot run."""
        import cv2
        import numpy as np

        settings = ctx.settings
        region = ctx.box
        _, _, width, height = region.to_window()

        removal = args.mode == "remove" or (args.mode == "auto" and is_removal(args.instruction))
        inpaint_model = getattr(settings, "inpaint_model", None)
        instruct_model = getattr(settings, "instruct_edit_model", None)
        backend: str
        if removal:
            learned = args.backend == "learned"
            if learned and not inpaint_model:
                raise ToolInputError(
                    LEARNED_REMOVAL_TEMPLATE, code="backend_unavailable", tool=self.name
                )
            backend = "sd_inpaint" if learned else args.method
        else:
            if args.backend == "classical":
                raise ToolInputError(
                    CLASSICAL_GENERATIVE_TEMPLATE.format(instruction=args.instruction),
                    code="invalid_arguments",
                    tool=self.name,
                )
            if instruct_model:
                backend = "instruct_pix2pix"
            elif inpaint_model:
                backend = "sd_inpaint"
            else:
                raise ToolInputError(
                    GENERATIVE_REFUSED_TEMPLATE.format(
                        what=f"the generative edit {args.instruction!r}"
                    ),
                    code="backend_unavailable",
                    tool=self.name,
                )

        data = ctx.read()
        raw = np.ma.getdata(data)
        valid = np.asarray(~np.ma.getmaskarray(data).any(axis=0), dtype=bool)
        if not valid.any():
            raise ToolInputError(
                NO_VALID_TEMPLATE.format(region=region), code="no_valid_pixels", tool=self.name
            )
        sel, source_text = self._edit_mask(
            ctx, args, width, height, instruct=backend == "instruct_pix2pix"
        )
        if backend != "instruct_pix2pix" and sel.any():
            # Object fringes (shadows, anti-aliased edges) go with the object.
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * DILATE_PX + 1,) * 2)
            sel = cv2.dilate(sel.astype(np.uint8), kernel) > 0
        fill = sel & valid
        if not fill.any():
            raise ToolInputError(
                EMPTY_MASK_TEMPLATE.format(source=source_text, region=region),
                code="empty_mask",
                tool=self.name,
            )
        if backend != "instruct_pix2pix" and not (valid & ~fill).any():
            raise ToolInputError(
                ALL_MASKED_TEMPLATE.format(source=source_text, region=region),
                code="mask_covers_region",
                tool=self.name,
            )
        return _EditPlan(removal, backend, raw, valid, fill, source_text)

    def run(self, ctx: ToolContext, args: Args) -> ToolResult:  # type: ignore[override]
        """Build the edit mask, inpaint or generate, write the edited raster, mask and preview."""
        import numpy as np

        from zoomearth.errors import BandLayoutError
        from zoomearth.scene.writing import SourceGeoref, write_png, write_window_array
        from zoomearth.tools._outputs import before_after_preview, output_photometric

        scene = ctx.scene
        settings = ctx.settings
        region = ctx.box
        col, row, width, height = region.to_window()
        plan = self._plan(ctx, args)
        removal, backend, raw, valid = plan.removal, plan.backend, plan.raw, plan.valid
        fill, source_text = plan.fill, plan.source_text
        ctx.check_cancelled()

        # Working copy: invalid pixels get the band median so they do not leak into the fill.
        work = raw.astype(np.float32)
        for b in range(work.shape[0]):
            band_valid = work[b][valid]
            work[b][~valid] = float(np.median(band_valid))
        rgb_bands = list(range(min(3, scene.count)))
        if backend in ("telea", "ns"):
            edited = classical_inpaint(work, fill, method=backend)
        else:
            edited = self._generative(ctx, args, work, fill, valid, backend, rgb_bands)
        ctx.check_cancelled()

        out = _to_dtype(edited, scene.dtype)
        _avoid_nodata(out, fill, scene.nodata)  # an invented pixel must not read as missing
        keep = ~fill
        out[:, keep] = raw[:, keep]  # untouched pixels (and nodata) keep their exact values

        source = SourceGeoref(
            crs=scene.crs,
            transform=scene.transform,
            nodata=scene.nodata,
            dtype=scene.dtype,
            count=scene.count,
            path=scene.path,
        )
        window = (col, row, width, height)
        mask_path = ctx.output_path(f"{args.name}_mask.tif")
        edited_path = ctx.output_path(f"{args.name}.tif")
        how = {
            "telea": "Telea inpainting",
            "ns": "Navier-Stokes inpainting",
            "sd_inpaint": "diffusion inpainting",
            "instruct_pix2pix": "InstructPix2Pix",
        }[backend]
        write_window_array(
            edited_path,
            out,
            source=source,
            window=window,
            photometric=output_photometric(scene),
            tags={
                "ZOOMEARTH_TOOL": self.name,
                "ZOOMEARTH_EDIT": f"{args.instruction[:200]} ({how})",
                "ZOOMEARTH_SYNTHETIC": f"invented pixels flagged in {mask_path.name}",
            },
            protect=ctx.protected_paths,
        )
        mask_source = SourceGeoref(
            crs=scene.crs,
            transform=scene.transform,
            nodata=None,
            dtype="uint8",
            count=1,
            path=scene.path,
        )
        write_window_array(
            mask_path,
            fill.astype(np.uint8),
            source=mask_source,
            window=window,
            dtype="uint8",
            nodata=None,
            overview_resampling="nearest",
            tags={"ZOOMEARTH_TOOL": self.name, "ZOOMEARTH_MASK": "1 = edited (synthetic) pixel"},
            protect=ctx.protected_paths,
        )

        n_fill = int(fill.sum())
        pct = 100.0 * n_fill / (width * height)
        seeded = backend in ("sd_inpaint", "instruct_pix2pix")
        verb = "Removed" if removal else "Edited"
        text = (
            f"{verb} {pct:.1f} % of region {region} ({n_fill} px, {source_text}) by {how}"
            + (f" (seed {args.seed}, {args.steps} steps)" if seeded else "")
            + f" for {args.instruction!r}. The edited image is a new GeoTIFF ({scene.count} "
            f"band(s) {scene.dtype}); the invented pixels are flagged in the edit mask."
        )
        if scene.count > 3 and backend == "sd_inpaint":
            text += " Bands beyond RGB were filled by classical inpainting."
        elif scene.count > 3 and backend == "instruct_pix2pix":
            text += " Bands beyond RGB were kept unchanged."
        artifacts = [
            ctx.artifact(
                edited_path,
                ArtifactKind.RASTER,
                f"edited region {region} ({how}; synthetic pixels in the edit mask)",
                backend=backend,
                edited_pixels=n_fill,
            ),
            ctx.artifact(
                mask_path,
                ArtifactKind.MASK,
                f"edit mask of region {region}: 1 = synthetic pixel ({n_fill} px)",
            ),
        ]
        preview = None
        try:
            img = before_after_preview(scene, region, edited_path, settings)
        except BandLayoutError as exc:
            ctx.note(NO_PREVIEW_TEMPLATE.format(reason=exc))
        else:
            png = write_png(ctx.output_path(f"{args.name}.png"), img, protect=ctx.protected_paths)
            preview = ctx.artifact(
                png, ArtifactKind.PREVIEW, f"before | after the edit of region {region}"
            )
        return ToolResult(
            text=text,
            artifacts=artifacts,
            preview=preview,
            data={
                "backend": backend,
                "removal": removal,
                "edited_pixels": n_fill,
                "edited_fraction": round(n_fill / (width * height), 6),
                "mask_source": source_text,
                "seed": args.seed if seeded else None,
                "window": [col, row, width, height],
            },
        )

    def _generative(
        self,
        ctx: ToolContext,
        args: Args,
        work: np.ndarray,
        fill: np.ndarray,
        valid: np.ndarray,
        backend: str,
        rgb_bands: list[int],
    ) -> np.ndarray:
        """Diffusion on bands 1-3 as 8-bit RGB; other bands by Telea in the same mask."""
        import numpy as np

        from zoomearth.tools._sd_inpaint import diffusion_fill, inpaint_spec

        settings = ctx.settings
        device = str(getattr(settings, "tool_device", "auto") or "auto")
        scene = ctx.scene
        lo = [float(work[b][valid].min()) for b in rgb_bands]
        hi = [float(work[b][valid].max()) for b in rgb_bands]
        if scene.dtype == "uint8":
            lo, hi = [0.0] * len(rgb_bands), [255.0] * len(rgb_bands)
        rgb = np.stack(
            [
                np.clip((work[b] - lo[i]) / max(hi[i] - lo[i], 1e-12) * 255.0, 0, 255)
                for i, b in enumerate(rgb_bands)
            ]
        )
        if rgb.shape[0] == 1:
            rgb = np.repeat(rgb, 3, axis=0)
        rgb8 = np.ascontiguousarray(np.moveaxis(np.rint(rgb).astype(np.uint8), 0, -1))
        pool = ctx.require_pool()
        removal = backend == "sd_inpaint" and (
            args.mode == "remove" or (args.mode == "auto" and is_removal(args.instruction))
        )
        if backend == "sd_inpaint":
            spec = inpaint_spec(str(settings.inpaint_model))  # type: ignore[union-attr]

            def run_inpaint(pipe: Any, dev: str) -> np.ndarray:
                filled, _ = diffusion_fill(
                    pipe,
                    rgb8,
                    fill,
                    prompt=REMOVAL_PROMPT if removal else args.instruction,
                    negative_prompt=args.instruction if removal else "",
                    steps=args.steps,
                    seed=args.seed,
                    check=ctx.check_cancelled,
                )
                return filled

            result = pool.run(spec, run_inpaint, device)
        else:
            spec = instruct_edit_spec(str(settings.instruct_edit_model))  # type: ignore[union-attr]

            def run_pix2pix(pipe: Any, dev: str) -> np.ndarray:
                return _instruct_edit(
                    pipe,
                    rgb8,
                    instruction=args.instruction,
                    steps=args.steps,
                    guidance=args.guidance,
                    image_guidance=args.image_guidance,
                    seed=args.seed,
                )

            result = pool.run(spec, run_pix2pix, device)
        res = np.moveaxis(result.astype(np.float32), -1, 0)
        out = work.copy()
        if len(rgb_bands) == 1:
            out[0] = res.mean(axis=0) / 255.0 * (hi[0] - lo[0]) + lo[0]
        else:
            for i, b in enumerate(rgb_bands):
                out[b] = res[i] / 255.0 * (hi[i] - lo[i]) + lo[i]
        extra = list(range(len(rgb_bands), work.shape[0]))
        if extra and backend == "sd_inpaint":
            out[extra] = classical_inpaint(work[extra], fill, method=args.method)
        return out


def _to_dtype(work: np.ndarray, dtype: str) -> np.ndarray:
    import numpy as np

    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(work), info.min, info.max).astype(dt)
    return work.astype(dt)
