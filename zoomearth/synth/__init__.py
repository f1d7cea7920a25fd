"""Synthetic UHR scene generator: a plausible 0.5 m landscape with planted, labelled objects.

``zoomearth synth OUT.tif --size N [--seed S] [--clouds FRACTION]`` (and :func:`generate_scene`)
writes a georeferenced, tiled (512 px), JPEG-YCbCr compressed GeoTIFF with internal overviews --
agricultural parcels with crop rows, forests, lakes and a river, a road network, built-up blocks
with houses and larger buildings -- plus a sidecar JSON listing the planted objects and, when
clouds are asked for, a cloud mask GeoTIFF.

Streaming. Every pixel is a pure function of its global coordinates and the seed: low-frequency
layout fields live on a coarse grid (one value per 64x64 px; 1,566 x 1,566 x 7 float32 values, 69
MB, for a 100,000 px scene) interpolated per tile; textures are hashed lattice noise; roads and the
river are analytic curves; buildings and objects are drawn per tile from the lists that intersect
it. So tiles can be rendered in any order and with any tile size with identical pixels (the file
too: writes always cover whole 512 px JPEG blocks), and memory stays bounded whatever the scene
size (the coarse grid, the object list, one write chunk and GDAL's 256 MB block cache). Measured on
2 cores: 20,000 px in about 70 s (render ~30 s, GDAL overviews ~30 s), 106 MB, 185 MB peak RSS.

Planted objects: about one per million pixels (at least 6 tried, at most 2,000), 12-200 px:
``building`` (isolated, among fields), ``storage_tank``, ``ship`` (on water, with a wake),
``car`` (on main roads, along the lane), ``airplane`` (on fields), ``swimming_pool`` (in town).

Sidecar ``scene.json`` beside ``scene.tif`` (:func:`sidecar_path_for`; schema:
:data:`SIDECAR_SCHEMA`, JSON Schema 2020-12)::

    {
      "format": "zoomearth-synth/1",
      "image": "scene.tif",                 # file name, relative to the sidecar's folder
      "size": [W, H],                       # full-resolution pixels
      "seed": 0,
      "crs": "EPSG:32633",
      "transform": [a, b, c, d, e, f],      # x = a*col + b*row + c; y = d*col + e*row + f
      "bands": ["red", "green", "blue"],    # + "nir" for 4-band scenes
      "dtype": "uint8",
      "labels": [...],                      # every label that may occur
      "complete_labels": [...],             # labels for which *every* instance is listed
      "objects": [
        {"id": 0, "label": "ship", "box_xyxy": [x1, y1, x2, y2], "cloud_fraction": 0.0}
      ],
      "clouds": {"fraction": 0.21, "requested": 0.2, "mask": "scene.clouds.tif"} | null
    }

Boxes are full-resolution pixels, ``xyxy`` with half-open edges (``x2``, ``y2`` exclusive), tight
around the object's drawn footprint (shadows and ship wakes excluded). ``cloud_fraction`` (only
with clouds) is the share of the box's pixels under the cloud mask. The background contains many
unlabelled buildings, so ``"building"`` objects are the planted (large, isolated) ones only; for
the other labels the list is complete. The cloud mask is ``uint8`` (1 = cloud, 0 = clear), tiled,
DEFLATE-compressed, same grid as the image; cloud shadows are drawn but not in the mask.

Pixel types: ``uint8`` (0-255); ``uint16`` = the 8-bit rendering x 16 (a 12-bit-like range);
``float32`` = the 8-bit rendering / 255. JPEG applies to 3-band ``uint8`` only; other layouts fall
back to DEFLATE.

Modules: :mod:`~zoomearth.synth.noise` (hashed value noise), :mod:`~zoomearth.synth.layout`
(coarse fields, parcels, roads and river, object placement), :mod:`~zoomearth.synth.objects`
(object footprints and painting), :mod:`~zoomearth.synth.blocks` (streets and urban blocks),
:mod:`~zoomearth.synth.render` (:class:`SyntheticScene`, pixels of any window),
:mod:`~zoomearth.synth.writer` (:func:`generate_scene`) and :mod:`~zoomearth.synth.sidecar` (the
sidecar's schema and the result types). The command line is ``zoomearth synth``
(:mod:`zoomearth.cli`); :func:`main` runs it. ``zoomearth.scene.synth`` re-exports this package
for older imports.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from zoomearth.synth.layout import (
    BANDS_TEMPLATE,
    CLOUDS_TEMPLATE,
    MIN_SIZE,
    SEED_TEMPLATE,
    SIZE_TEMPLATE,
)
from zoomearth.synth.render import WINDOW_TEMPLATE, SyntheticScene
from zoomearth.synth.sidecar import (
    COMPLETE_LABELS,
    LABELS,
    SIDECAR_SCHEMA,
    SYNTH_FORMAT,
    SynthObject,
    SynthResult,
    load_sidecar,
    sidecar_path_for,
)
from zoomearth.synth.writer import (
    DTYPE_TEMPLATE,
    MASK_SPACE_RATIO,
    TILE_TEMPLATE,
    TOO_MANY_PIXELS_TEMPLATE,
    generate_scene,
)

__all__ = [
    "BANDS_TEMPLATE",
    "CLOUDS_TEMPLATE",
    "COMPLETE_LABELS",
    "DTYPE_TEMPLATE",
    "LABELS",
    "MASK_SPACE_RATIO",
    "MIN_SIZE",
    "SEED_TEMPLATE",
    "SIDECAR_SCHEMA",
    "SIZE_TEMPLATE",
    "SYNTH_FORMAT",
    "SynthObject",
    "SynthResult",
    "SyntheticScene",
    "TILE_TEMPLATE",
    "TOO_MANY_PIXELS_TEMPLATE",
    "WINDOW_TEMPLATE",
    "generate_scene",
    "load_sidecar",
    "main",
    "sidecar_path_for",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m zoomearth.scene.synth OUT.tif --size N [--seed S] ...``.

    The same command as ``zoomearth synth OUT.tif --size N ...`` (:mod:`zoomearth.cli`, the one
    parser of the ``synth`` options), run with ``argv``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    from zoomearth.cli import main as cli_main

    return cli_main(["synth", *(sys.argv[1:] if argv is None else argv)])
