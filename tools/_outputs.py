"""Helpers shared by tools that write a raster for a region: photometric tag and preview.

Kept out of any one tool so that tools depend on this module, not on each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.geometry import PixelBox
    from zoomearth.scene import Scene

__all__ = ["before_after_preview", "output_photometric"]


def output_photometric(scene: Scene) -> str | None:
    """Photometric tag for an output with the scene's bands.

    GDAL would tag a 4-band ``uint8`` output RGBA, turning an NIR band into alpha; outputs of
    scenes without an alpha band are written ``MINISBLACK`` unless they have exactly 3 bands
    (RGB). None keeps the writer's default.
    """
    if "alpha" in scene.colorinterp or scene.count == 3:
        return None
    return "MINISBLACK"


def before_after_preview(
    scene: Scene, region: PixelBox, output: Path, settings: Any, max_side: int = 512
) -> np.ndarray:
    """A ``before | after`` RGB preview of a region and the raster a tool wrote for it.

    Args:
        scene: The source scene.
        region: Full-resolution region the output covers.
        output: The output GeoTIFF (same size as ``region``).
        settings: Settings used to open the output.
        max_side: Long side of each half, pixels.

    Returns:
        ``(h, 2 w + 4, 3)`` uint8 image: the source view, a 4 px white gap, the output view.

    Raises:
        BandLayoutError: The band layout cannot be shown as RGB.
    """
    import numpy as np

    from zoomearth.scene import Scene

    before = scene.render(region, max_side=max_side).rgb
    with Scene.open(output, settings=settings, progress=False, prepare=False) as out_scene:
        if scene.band_mapping_override is not None:
            out_scene.band_mapping_override = scene.band_mapping_override
        after = out_scene.render(None, max_side=max_side).rgb
    h = min(before.shape[0], after.shape[0])
    gap = np.full((h, 4, 3), 255, np.uint8)
    return np.concatenate([before[:h], gap, after[:h]], axis=1)
