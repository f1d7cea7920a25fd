"""The sidecar of a synthetic scene: labels, the JSON Schema, and the public result types.

:data:`SIDECAR_SCHEMA` describes ``scene.json`` (see :mod:`zoomearth.synth` for an example);
:class:`SynthObject` is one planted object as listed there and :class:`SynthResult` what
:func:`~zoomearth.synth.generate_scene` wrote. :func:`sidecar_path_for` and :func:`load_sidecar`
find and read a sidecar.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "COMPLETE_LABELS",
    "LABELS",
    "SIDECAR_SCHEMA",
    "SYNTH_FORMAT",
    "SynthObject",
    "SynthResult",
    "load_sidecar",
    "sidecar_path_for",
]

SYNTH_FORMAT = "zoomearth-synth/1"

#: Labels of planted objects.
LABELS: tuple[str, ...] = ("building", "storage_tank", "ship", "car", "airplane", "swimming_pool")
#: Labels whose every instance in the image is listed in the sidecar (the background has
#: unlabelled buildings but no tanks, ships, cars, airplanes or pools).
COMPLETE_LABELS: tuple[str, ...] = tuple(lb for lb in LABELS if lb != "building")

#: JSON Schema of the sidecar file.
SIDECAR_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://zoomearth.invalid/schemas/zoomearth-synth-1.json",
    "title": "zoomearth synthetic scene sidecar",
    "type": "object",
    "required": ["format", "image", "size", "seed", "crs", "transform", "objects", "clouds"],
    "properties": {
        "format": {"const": SYNTH_FORMAT},
        "image": {"type": "string", "minLength": 1, "description": "image file name"},
        "size": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "minItems": 2,
            "maxItems": 2,
            "description": "[width, height] in pixels",
        },
        "seed": {"type": "integer"},
        "crs": {"type": "string"},
        "transform": {
            "type": "array",
            "items": {"type": "number"},
            "minItems": 6,
            "maxItems": 6,
            "description": "affine a, b, c, d, e, f: x = a*col + b*row + c; y = d*col + e*row + f",
        },
        "bands": {"type": "array", "items": {"enum": ["red", "green", "blue", "nir"]}},
        "dtype": {"enum": ["uint8", "uint16", "float32"]},
        "labels": {"type": "array", "items": {"enum": list(LABELS)}},
        "complete_labels": {"type": "array", "items": {"enum": list(LABELS)}},
        "objects": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "label", "box_xyxy"],
                "properties": {
                    "id": {"type": "integer", "minimum": 0},
                    "label": {"enum": list(LABELS)},
                    "box_xyxy": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0},
                        "minItems": 4,
                        "maxItems": 4,
                        "description": "full-resolution pixels, half-open [x1, y1, x2, y2)",
                    },
                    "cloud_fraction": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "additionalProperties": False,
            },
        },
        "clouds": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["fraction", "mask"],
                    "properties": {
                        "fraction": {"type": "number", "minimum": 0, "maximum": 1},
                        "requested": {"type": "number", "minimum": 0, "maximum": 1},
                        "mask": {"type": "string", "minLength": 1},
                    },
                    "additionalProperties": False,
                },
            ]
        },
    },
}


@dataclass(frozen=True)
class SynthObject:
    """A planted object.

    Attributes:
        id: Index in the scene's object list.
        label: One of :data:`LABELS`.
        box_xyxy: Tight box of the drawn footprint, full-resolution pixels, half-open.
        cloud_fraction: Share of the box under the cloud mask (None without clouds).
    """

    id: int
    label: str
    box_xyxy: tuple[int, int, int, int]
    cloud_fraction: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The sidecar form of this object."""
        out: dict[str, Any] = {"id": self.id, "label": self.label, "box_xyxy": list(self.box_xyxy)}
        if self.cloud_fraction is not None:
            out["cloud_fraction"] = round(self.cloud_fraction, 4)
        return out


@dataclass(frozen=True)
class SynthResult:
    """What :func:`generate_scene` wrote.

    Attributes:
        image_path: The GeoTIFF.
        sidecar_path: The JSON sidecar.
        mask_path: The cloud mask GeoTIFF, or None without clouds.
        size: ``(width, height)`` in pixels.
        objects: Planted objects (as listed in the sidecar).
        cloud_fraction: Achieved cloud fraction (share of mask pixels), or None.
        seconds: Wall time of the generation.
        timings: Wall seconds by phase: ``layout`` (scene set-up and object placement),
            ``render`` (pixels), ``write`` (handing tiles to GDAL, compression included where
            GDAL's threads lag), ``overviews``, ``finish`` (closing, renaming, sidecar).
    """

    image_path: Path
    sidecar_path: Path
    mask_path: Path | None
    size: tuple[int, int]
    objects: tuple[SynthObject, ...]
    cloud_fraction: float | None
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def sidecar_path_for(image_path: str | os.PathLike[str]) -> Path:
    """The sidecar of a synthetic image: ``scene.tif`` -> ``scene.json`` (same folder)."""
    return Path(image_path).with_suffix(".json")


def load_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a synthetic scene's sidecar and validate it against :data:`SIDECAR_SCHEMA`.

    Args:
        path: The ``.json`` sidecar.

    Returns:
        The parsed document.

    Raises:
        jsonschema.ValidationError: The file does not follow the schema.
    """
    import jsonschema

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    jsonschema.validate(doc, SIDECAR_SCHEMA)
    return dict(doc)
