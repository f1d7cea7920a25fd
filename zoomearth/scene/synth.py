"""Compatibility module: the synthetic scene generator now lives in :mod:`zoomearth.synth`.

Re-exports every name this module had that other code imports (the public API in ``__all__``,
the validation templates and limits, and the noise helpers the tests compare), so
``from zoomearth.scene.synth import generate_scene`` keeps working. ``python -m
zoomearth.scene.synth OUT.tif --size N ...`` runs ``zoomearth synth`` (:func:`main`).
New code imports :mod:`zoomearth.synth`.
"""

from __future__ import annotations

import sys

from zoomearth.synth import BANDS_TEMPLATE as BANDS_TEMPLATE
from zoomearth.synth import CLOUDS_TEMPLATE as CLOUDS_TEMPLATE
from zoomearth.synth import (
    COMPLETE_LABELS,
    LABELS,
    SIDECAR_SCHEMA,
    SYNTH_FORMAT,
    SyntheticScene,
    SynthObject,
    SynthResult,
    generate_scene,
    load_sidecar,
    main,
    sidecar_path_for,
)
from zoomearth.synth import DTYPE_TEMPLATE as DTYPE_TEMPLATE
from zoomearth.synth import MASK_SPACE_RATIO as MASK_SPACE_RATIO
from zoomearth.synth import MIN_SIZE as MIN_SIZE
from zoomearth.synth import SEED_TEMPLATE as SEED_TEMPLATE
from zoomearth.synth import SIZE_TEMPLATE as SIZE_TEMPLATE
from zoomearth.synth import TILE_TEMPLATE as TILE_TEMPLATE
from zoomearth.synth import TOO_MANY_PIXELS_TEMPLATE as TOO_MANY_PIXELS_TEMPLATE
from zoomearth.synth import WINDOW_TEMPLATE as WINDOW_TEMPLATE
from zoomearth.synth.noise import _key as _key
from zoomearth.synth.noise import _noise_grid as _noise_grid
from zoomearth.synth.noise import _noise_points as _noise_points

__all__ = [
    "COMPLETE_LABELS",
    "LABELS",
    "SIDECAR_SCHEMA",
    "SYNTH_FORMAT",
    "SynthObject",
    "SynthResult",
    "SyntheticScene",
    "generate_scene",
    "load_sidecar",
    "main",
    "sidecar_path_for",
]

if __name__ == "__main__":
    sys.exit(main())
