"""Rendered views and how they are written: :class:`View`, the output formats, :func:`write_view`.

A :class:`View` is what :meth:`zoomearth.scene.Scene.render` returns: RGB uint8 pixels, their
validity mask and the exact frame (:class:`~zoomearth.geometry.ViewSpec`). :func:`write_view`
writes one as PNG, JPEG or a georeferenced GeoTIFF, atomically, chosen by the output's
extension (:data:`VIEW_FORMATS`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoomearth.errors import OutputWriteError
from zoomearth.geometry import ViewSpec
from zoomearth.scene.gdal import quiet_gdal

__all__ = [
    "FEW_VALID_FRACTION",
    "FEW_VALID_PIXELS_TEMPLATE",
    "NO_VALID_PIXELS_TEMPLATE",
    "VIEW_FORMATS",
    "VIEW_FORMAT_TEMPLATE",
    "VIEW_JPEG_QUALITY",
    "View",
    "view_format",
    "write_view",
]

VIEW_FORMAT_TEMPLATE = (
    "Cannot tell the image format from {path!r}: name the output with one of the extensions "
    "{supported} (e.g. -o view.png)."
)
NO_VALID_PIXELS_TEMPLATE = (
    "{path} has no valid pixels in the requested region {region} (all NaN / Inf / nodata / "
    "transparent); nothing to show. Choose another region (--box), or check the nodata value "
    "with 'zoomearth info'."
)
FEW_VALID_PIXELS_TEMPLATE = (
    "only {percent} of the pixels in region {region} are valid; the rest (NaN / Inf / nodata / "
    "transparent) are black in the output."
)

#: ``zoomearth view`` warns when fewer than this fraction of a view's pixels are valid. Nodata
#: collars of reprojected scenes commonly take 10-40 % of an overview, which needs no warning;
#: a view that is mostly black does.
FEW_VALID_FRACTION = 0.5

#: Output formats of a rendered view, by lower-case file extension -> GDAL/Pillow format name.
VIEW_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "GTiff",
    ".tiff": "GTiff",
}
#: JPEG quality of views written as .jpg (Pillow's scale 1-95; 90 keeps edges crisp).
VIEW_JPEG_QUALITY = 90

def view_format(path: str | os.PathLike[str]) -> str:
    """The format a view is written in, from the output's extension (case-insensitive).

    Returns:
        ``"PNG"``, ``"JPEG"`` or ``"GTiff"`` (see :data:`VIEW_FORMATS`).

    Raises:
        OutputWriteError: The extension names no supported format (nothing is written).
    """
    fmt = VIEW_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OutputWriteError(
            VIEW_FORMAT_TEMPLATE.format(path=str(path), supported=", ".join(VIEW_FORMATS))
        )
    return fmt

@dataclass
class View:
    """One rendered view.

    Attributes:
        spec: Frame of the view: the full-resolution region shown and the pixel size.
        rgb: Pixels, shape ``(height, width, 3)``, dtype uint8, 0-255. Invalid pixels are 0.
        valid: Shape ``(height, width)``, bool; False where the source is nodata, NaN, +-Inf or
            transparent.
        warnings: Human-readable notes (for example a box that was clipped).
    """

    spec: ViewSpec
    rgb: np.ndarray
    valid: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def valid_fraction(self) -> float:
        """Fraction of the view's pixels that are valid, in [0, 1] (0.0 for an empty view)."""
        return float(self.valid.mean()) if self.valid.size else 0.0

    def to_pil(self) -> Any:
        """The view as a ``PIL.Image.Image`` (RGB)."""
        from PIL import Image

        return Image.fromarray(self.rgb, mode="RGB")



def write_view(
    view: View,
    path: str | os.PathLike[str],
    *,
    protect: Iterable[Any] = (),
    crs: Any = None,
    transform: Any = None,
) -> Path:
    """Write a rendered view in the format its extension names (:data:`VIEW_FORMATS`).

    * ``.png``: the RGB pixels, lossless.
    * ``.jpg``/``.jpeg``: the RGB pixels, lossy (quality :data:`VIEW_JPEG_QUALITY`).
    * ``.tif``/``.tiff``: a 3-band uint8 GeoTIFF (DEFLATE) georeferenced to the view: ``crs`` and
      ``transform`` (the scene's pixel->map transform) of ``view.spec.region`` scaled to the view's
      pixel size (map units per view pixel), with a mask that is 0 where ``view.valid`` is False.
      Without a transform (a scene without georeference) it is a pixel-only TIFF.

    Invalid pixels are black in every format. The file is written atomically
    (:func:`~zoomearth.scene.writing.atomic_path`): a failure leaves nothing at ``path``.

    Args:
        view: A rendered view.
        path: Output file; its extension chooses the format.
        protect: Inputs that must not be overwritten (e.g. the scene's own file).
        crs: The scene's ``rasterio.crs.CRS`` (or None), used with ``transform``.
        transform: The scene's pixel->map ``affine.Affine``; None when it is not georeferenced.

    Returns:
        The path written.

    Raises:
        OutputWriteError: Unsupported extension (before anything is written).
        ProtectedPathError: ``path`` is a protected input.
    """
    from zoomearth.scene.writing import atomic_path, write_png

    fmt = view_format(path)
    guarded = list(protect)
    if fmt == "PNG":
        return write_png(path, view.rgb, protect=guarded)
    if fmt == "JPEG":
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(view.rgb, mode="RGB").save(
            buffer, format="JPEG", quality=VIEW_JPEG_QUALITY
        )
        with atomic_path(path, protect=guarded) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return Path(path)
    return _write_view_tiff(view, Path(path), guarded, crs, transform)


def _write_view_tiff(
    view: View, path: Path, protect: list[Any], crs: Any, transform: Any
) -> Path:
    """The GeoTIFF branch of :func:`write_view`."""
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning

    from zoomearth.scene.writing import atomic_path, tiff_block_problem, write_failure

    spec = view.spec
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": spec.width,
        "height": spec.height,
        "count": 3,
        "dtype": "uint8",
        "photometric": "RGB",
        "compress": "deflate",
        "predictor": 2,
    }
    if transform is not None:
        region = spec.region
        profile["crs"] = crs
        profile["transform"] = (
            transform
            @ Affine.translation(region.x1, region.y1)
            @ Affine.scale(spec.scale_x, spec.scale_y)
        )
    with atomic_path(path, protect=protect) as tmp:
        with warnings.catch_warnings(), quiet_gdal():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(np.moveaxis(view.rgb, -1, 0))
                if not view.valid.all():
                    dst.write_mask(np.where(view.valid, 255, 0).astype(np.uint8))
        # GDAL reports an incomplete write (full disk, file size limit) on stderr only.
        problem = tiff_block_problem(tmp)
        if problem is not None:
            raise write_failure(path, reason=problem, temp=tmp)
    return path
