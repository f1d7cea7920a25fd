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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from zoomearth.errors import SceneTooLargeError
from zoomearth.scene.writing import (
    TiledRasterWriter,
    atomic_path,
    check_free_space,
    estimate_output_bytes,
    sweep_stale_siblings,
)

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

MIN_SIZE = 64  # smallest scene side (px) the generator accepts
SIZE_TEMPLATE = "Scene size must be >= " + str(MIN_SIZE) + " px a side; got {width}x{height}."
CLOUDS_TEMPLATE = "clouds must be a fraction in [0, 1]; got {clouds}."
SEED_TEMPLATE = "seed must be a non-negative integer; got {seed}."
BANDS_TEMPLATE = "bands must be 3 (RGB) or 4 (RGB + NIR); got {bands}."
DTYPE_TEMPLATE = "dtype must be one of uint8, uint16, float32; got {dtype}."
WINDOW_TEMPLATE = "Window {window} is not inside the {width}x{height} px scene."
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
_CELL = 64  # coarse layout grid spacing (px); power of two so coordinates stay exact
_TAU = np.float32(2.0 * math.pi)

# Coarse-field channels.
_WATER, _URBAN, _FOREST, _TONE_A, _TONE_B, _CLOUD, _CLOUD_SHADOW = range(7)
_CLOUD_SHADOW_OFFSET = (140.0, 90.0)  # px; sun from the north-west casts shadows south-east
_SHADOW_OFFSET = (5, 5)  # px, building/object shadows

# Hash salts: independent streams of the same seed.
(_S_WATER, _S_URBAN, _S_FOREST, _S_TONE_A, _S_TONE_B, _S_CLOUD, _S_N4, _S_N16, _S_N64, _S_CN,
 _S_STREET_X, _S_STREET_Y, _S_BLOCK, _S_N6, _S_CN2, _S_CN3) = range(101, 117)  # fmt: skip
# Cloud field: fractal octaves (px), then detail octaves at non-harmonic spacings so that no
# lattice shows: (salt, spacing, weight).
_CLOUD_SPACINGS = (4096.0, 2048.0, 1024.0, 512.0, 256.0)
_CLOUD_DETAIL = ((_S_CN, 113.0, 0.07), (_S_CN2, 71.0, 0.045), (_S_CN3, 23.0, 0.02))
# The per-pixel cloud value stays within this distance of the coarse grid's node values.
_CLOUD_SLACK = 0.25

# Crop colours (RGB) of summer fields at 0.5 m, and their sampling weights.
_CROPS = np.array(
    [
        [92, 118, 60],  # green crop
        [66, 94, 50],  # dark green crop
        [186, 168, 112],  # ripe cereal
        [164, 146, 108],  # stubble
        [124, 102, 80],  # bare soil
        [118, 136, 82],  # grass
        [196, 184, 82],  # flowering rapeseed
        [142, 126, 92],  # dry soil
    ],
    dtype=np.float32,
)
_CROP_WEIGHTS = np.array([0.2, 0.14, 0.16, 0.12, 0.12, 0.14, 0.04, 0.08])
_ROOFS = np.array(
    [
        [156, 82, 64],
        [80, 82, 88],
        [176, 176, 172],
        [122, 98, 80],
        [212, 210, 204],
        [98, 110, 124],
        [138, 72, 60],
    ],
    dtype=np.float32,
)
_FOREST_RGB = np.array([44, 66, 38], dtype=np.float32)
_LAWN_RGB = np.array([98, 122, 70], dtype=np.float32)
_CONCRETE_RGB = np.array([152, 150, 142], dtype=np.float32)
_ASPHALT_RGB = np.array([86, 87, 91], dtype=np.float32)
_SIDEWALK_RGB = np.array([172, 169, 160], dtype=np.float32)
_SHALLOW_RGB = np.array([60, 86, 82], dtype=np.float32)
_DEEP_RGB = np.array([24, 45, 56], dtype=np.float32)
_SHORE_RGB = np.array([150, 140, 112], dtype=np.float32)

_STREET_SPACING = 210.0  # px between urban streets (105 m blocks)
_STREET_HALF = 6.0  # px, half width of the asphalt
_SIDEWALK = 3.0  # px each side


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Hashed noise (pure functions of global coordinates)
# --------------------------------------------------------------------------------------------

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_P1 = np.uint32(0x9E3779B1)
_P2 = np.uint32(0x85EBCA77)


def _key(seed: int, salt: int) -> np.uint32:
    k = (seed * 0x9E3779B97F4A7C15 + salt * 0xC2B2AE3D27D4EB4F) & 0xFFFFFFFFFFFFFFFF
    return np.uint32((k ^ (k >> 32)) & 0xFFFFFFFF)


def _mix(h: np.ndarray) -> np.ndarray:
    # lowbias32 finaliser (Wellons): cheap and well distributed.
    h ^= h >> np.uint32(16)
    h *= _M1
    h ^= h >> np.uint32(15)
    h *= _M2
    h ^= h >> np.uint32(16)
    return h


def _hash2(key: np.uint32, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint32 hash of integer coordinate arrays (broadcast), wrapping negatives."""
    h = (np.asarray(a).astype(np.uint32) * _P1) ^ (np.asarray(b).astype(np.uint32) * _P2)
    h = np.asarray(h ^ key, dtype=np.uint32)
    return _mix(h)


def _unit(h: np.ndarray) -> np.ndarray:
    """Map uint32 hashes to float32 in [0, 1)."""
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _lattice(key: np.uint32, jj: np.ndarray, ii: np.ndarray) -> np.ndarray:
    return _unit(_hash2(key, jj, ii)) * np.float32(2.0) - np.float32(1.0)


def _axis(coords: np.ndarray, spacing: float, fade: bool) -> tuple[np.ndarray, np.ndarray]:
    u = coords / spacing
    i = np.floor(u).astype(np.int64)
    f = (u - i).astype(np.float32)
    if fade:
        f = f * f * (np.float32(3.0) - np.float32(2.0) * f)
    return i, f


def _noise_grid(
    key: np.uint32, xs: np.ndarray, ys: np.ndarray, spacing: float, fade: bool = True
) -> np.ndarray:
    """Value noise in [-1, 1] on the grid ``ys x xs`` (increasing pixel-centre coordinates).

    Separable: one small lattice per call, interpolated along x then y -- the same float32
    operations as :func:`_noise_points`, so any tiling gives identical values.
    """
    i, fx = _axis(xs, spacing, fade)
    j, fy = _axis(ys, spacing, fade)
    i0, j0 = int(i[0]), int(j[0])
    ni, nj = int(i[-1]) - i0 + 2, int(j[-1]) - j0 + 2
    lat = _lattice(key, np.arange(j0, j0 + nj)[:, None], np.arange(i0, i0 + ni)[None, :])
    return _lerp_grid(lat, i - i0, fx, j - j0, fy)


def _lerp_grid(
    nodes: np.ndarray, li: np.ndarray, fx: np.ndarray, lj: np.ndarray, fy: np.ndarray
) -> np.ndarray:
    """Bilinear interpolation of ``nodes`` (nj, ni) at columns ``li + fx`` x rows ``lj + fy``.

    Written as ``a + (b - a) * f`` in x, then in y, exactly like :func:`_lerp_points`, so a pixel
    gets the same float32 value from either.
    """
    a = nodes[:, li]
    rows = a + (nodes[:, li + 1] - a) * fx  # (nj, w)
    step = rows[1:] - rows[:-1]
    out = np.take(step, lj, axis=0)
    out *= fy[:, None]
    out += np.take(rows, lj, axis=0)
    return out


def _lerp_points(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, fx: np.ndarray, fy: np.ndarray
) -> np.ndarray:
    """Bilinear interpolation of corner values a (x0, y0), b (x1, y0), c (x0, y1), d (x1, y1)."""
    ab = a + (b - a) * fx
    cd = c + (d - c) * fx
    return ab + (cd - ab) * fy


def _noise_points(
    key: np.uint32, xs: np.ndarray, ys: np.ndarray, spacing: float, fade: bool = True
) -> np.ndarray:
    """Value noise in [-1, 1] at points ``(xs[k], ys[k])`` (same values as the grid form)."""
    i, fx = _axis(np.asarray(xs, dtype=np.float64), spacing, fade)
    j, fy = _axis(np.asarray(ys, dtype=np.float64), spacing, fade)
    a, b = _lattice(key, j, i), _lattice(key, j, i + 1)
    c, d = _lattice(key, j + 1, i), _lattice(key, j + 1, i + 1)
    return _lerp_points(a, b, c, d, fx, fy)


def _fbm_grid(
    seed: int, salt: int, xs: np.ndarray, ys: np.ndarray, spacings: Sequence[float]
) -> np.ndarray:
    """Fractal value noise: octaves at ``spacings`` (px), weights halving, roughly in [-1, 1]."""
    total = np.zeros((len(ys), len(xs)), dtype=np.float32)
    wsum = 0.0
    for k, s in enumerate(spacings):
        w = 0.5**k
        total += np.float32(w) * _noise_grid(_key(seed, salt * 16 + k), xs, ys, s)
        wsum += w
    return total / np.float32(wsum)


def _fbm_points(
    seed: int, salt: int, xs: np.ndarray, ys: np.ndarray, spacings: Sequence[float]
) -> np.ndarray:
    """:func:`_fbm_grid` at points ``(xs[k], ys[k])``, same arithmetic."""
    total = np.zeros(np.shape(xs), dtype=np.float32)
    wsum = 0.0
    for k, s in enumerate(spacings):
        w = 0.5**k
        total += np.float32(w) * _noise_points(_key(seed, salt * 16 + k), xs, ys, s)
        wsum += w
    return total / np.float32(wsum)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - np.float32(e0)) * np.float32(1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


# --------------------------------------------------------------------------------------------
# Analytic curves (roads, river)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    """A gently curving line: signed distance ~ n.p - c + sum(A sin(2 pi f t + phi)), t = tan.p."""

    nx: float
    ny: float
    c: float
    amps: tuple[float, ...]
    freqs: tuple[float, ...]
    phases: tuple[float, ...]
    half_width: float

    def signed(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Approximate signed distance (px) at broadcastable coordinate arrays."""
        nx, ny = np.float32(self.nx), np.float32(self.ny)
        d = xs * nx + ys * ny - np.float32(self.c)
        t = ys * nx - xs * ny
        for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True):
            d = d + np.float32(a) * np.sin(np.float32(2 * math.pi * f) * t + np.float32(p))
        return d

    def near(self, cx: float, cy: float, radius: float) -> bool:
        """Whether the curve may pass within ``radius`` px of the point (cheap bound)."""
        d = abs(cx * self.nx + cy * self.ny - self.c)
        return d <= radius + sum(self.amps) + self.half_width + 4

    def point(self, t: float, offset: float = 0.0) -> tuple[float, float, float]:
        """Point at tangent coordinate ``t`` and signed offset; returns ``(x, y, angle)``."""
        s = self.c - sum(
            a * math.sin(2 * math.pi * f * t + p)
            for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True)
        )
        ds = -sum(
            a * 2 * math.pi * f * math.cos(2 * math.pi * f * t + p)
            for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True)
        )
        s += offset
        # p = t * tangent + s * normal with tangent = (-ny, nx).
        x = -t * self.ny + s * self.nx
        y = t * self.nx + s * self.ny
        dx, dy = -self.ny + ds * self.nx, self.nx + ds * self.ny
        return x, y, math.atan2(dy, dx)


def _random_curve(
    rng: np.random.Generator, width: int, height: int, vertical: bool, half_width: float,
    wiggle: float,
) -> _Curve:  # fmt: skip
    theta = rng.uniform(-0.35, 0.35) + (0.0 if vertical else math.pi / 2)
    nx, ny = math.cos(theta), math.sin(theta)
    px, py = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
    n_terms = 2
    amps = tuple(float(a) for a in rng.uniform(0.2, 1.0, n_terms) * wiggle * np.array([1, 0.3]))
    wavelengths = rng.uniform(2500, 7000, n_terms) * np.array([1.0, 0.37])
    freqs = tuple(float(1.0 / w) for w in wavelengths)
    phases = tuple(float(p) for p in rng.uniform(0, 2 * math.pi, n_terms))
    return _Curve(nx, ny, px * nx + py * ny, amps, freqs, phases, half_width)


# --------------------------------------------------------------------------------------------
# Planted objects: footprints in the object frame (u along the heading, v across)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Planted:
    label: str
    cx: float
    cy: float
    angle: float  # radians, heading of the u axis in the pixel frame
    length: float  # px, along u
    width: float  # px, across (span for airplanes, radius*2 for tanks)
    colour: tuple[float, float, float]
    box: tuple[int, int, int, int] = (0, 0, 0, 0)


def _footprint(ob: _Planted, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean footprint of an object at object-frame coordinates ``u``, ``v`` (px)."""
    hl, hw = ob.length / 2, ob.width / 2
    au, av = np.abs(u), np.abs(v)
    if ob.label == "storage_tank":
        return u * u + v * v <= hl * hl
    if ob.label in ("car", "swimming_pool"):
        r = hw * (0.45 if ob.label == "car" else 0.3)
        du = np.maximum(au - (hl - r), 0)
        dv = np.maximum(av - (hw - r), 0)
        return (au <= hl) & (av <= hw) & (du * du + dv * dv <= r * r)
    if ob.label == "ship":
        taper = np.clip((hl - u) / (0.32 * ob.length), 0.0, 1.0)
        return (au <= hl) & (av <= hw * np.sqrt(taper))
    if ob.label == "airplane":
        return _airplane_parts(ob, u, v)[0]
    return (au <= hl) & (av <= hw)  # building


def _airplane_parts(
    ob: _Planted, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(footprint, fuselage, engines) masks of a swept-wing airliner seen from above."""
    hl, span = ob.length / 2, ob.width
    fw = 0.055 * ob.length
    au, av = np.abs(u), np.abs(v)
    nose = np.clip((hl - u) / (0.08 * ob.length), 0.0, 1.0)
    fus = (au <= hl) & (av <= fw * np.sqrt(nose))
    sweep = 0.55
    root = 0.2 * ob.length
    lead = 0.12 * ob.length - av * sweep
    chord = root * (1.0 - 0.65 * av / (span / 2))
    wing = (av <= span / 2) & (u <= lead) & (u >= lead - chord)
    tspan = 0.19 * span
    tlead = -hl + 0.16 * ob.length - av * sweep
    tail = (av <= tspan) & (u <= tlead) & (u >= tlead - 0.09 * ob.length * (1 - 0.5 * av / tspan))
    ex = 0.05 * ob.length - 0.3 * span * sweep * 0.5
    eng = (np.abs(av - 0.3 * span / 2 * 1.0) <= fw * 0.55) & (np.abs(u - ex - 0.04 * ob.length) <=
                                                              0.05 * ob.length)  # fmt: skip
    return fus | wing | tail | eng, fus, eng


def _object_frame(ob: _Planted, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates of pixel centres ``xs`` (w,) x ``ys`` (h,) -> (h, w) each."""
    dx = (xs + 0.5 - ob.cx)[None, :]
    dy = (ys + 0.5 - ob.cy)[:, None]
    ca, sa = math.cos(ob.angle), math.sin(ob.angle)
    return dx * ca + dy * sa, -dx * sa + dy * ca


def _tight_box(ob: _Planted) -> tuple[int, int, int, int] | None:
    r = int(math.ceil(math.hypot(ob.length, ob.width) / 2)) + 2
    x0, y0 = int(math.floor(ob.cx)) - r, int(math.floor(ob.cy)) - r
    xs = np.arange(x0, x0 + 2 * r + 2, dtype=np.float64)
    ys = np.arange(y0, y0 + 2 * r + 2, dtype=np.float64)
    u, v = _object_frame(ob, xs, ys)
    m = _footprint(ob, u, v)
    if not m.any():
        return None
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    return (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)


# --------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------


class _CoarseTile:
    """Bilinear interpolation of the coarse layout grid over one tile, channel by channel.

    The arithmetic matches :meth:`SyntheticScene._coarse_points` and depends only on global
    coordinates, so values do not depend on the tiling.
    """

    def __init__(self, coarse: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> None:
        # Coarse node k sits at pixel (k - 1 + 0.5) * _CELL (one padding node).
        self.i, self.fx = _axis(xs / _CELL + 0.5, 1.0, False)
        self.j, self.fy = _axis(ys / _CELL + 0.5, 1.0, False)
        self.i0, self.j0 = int(self.i[0]), int(self.j[0])
        self.block = coarse[:, self.j0 : int(self.j[-1]) + 2, self.i0 : int(self.i[-1]) + 2]

    def bounds(self, chan: int) -> tuple[float, float]:
        """Min and max of a channel over the tile (exact bounds of the interpolated values)."""
        b = self.block[chan]
        return float(b.min()), float(b.max())

    def get(self, chan: int) -> np.ndarray:
        """Interpolated channel, (h, w) float32."""
        return _lerp_grid(self.block[chan], self.i - self.i0, self.fx, self.j - self.j0, self.fy)


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    w, h = size
    return int(w), int(h)


class SyntheticScene:
    """A deterministic synthetic landscape; render any window of it.

    Attributes:
        width: Width in pixels.
        height: Height in pixels.
        seed: Seed of everything random.
        clouds: Requested cloud fraction.
        bands: 3 (RGB) or 4 (RGB + NIR).
        objects: Planted objects (boxes in full-resolution pixels), in id order.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        seed: int = 0,
        clouds: float = 0.0,
        bands: int = 3,
        draw_objects: bool = True,
        objects_per_mpx: float = 1.0,
        max_objects: int = 2000,
    ) -> None:
        """Lay out the scene (coarse fields, parcels, curves, objects); renders nothing.

        Args:
            size: ``N`` for a square scene or ``(width, height)`` in pixels.
            seed: Seed (non-negative integer).
            clouds: Fraction of pixels to cover with cloud, 0-1.
            bands: 3 for RGB, 4 for RGB + near infrared.
            draw_objects: Draw the planted objects (False renders the landscape alone with the
                same layout, e.g. to compare against; :attr:`objects` is then empty).
            objects_per_mpx: Planted objects per million pixels (at least 6 are attempted).
            max_objects: Cap on the number of planted objects.

        Raises:
            ValueError: Bad size, cloud fraction, band count or seed.
        """
        self.width, self.height = _as_size(size)
        if min(self.width, self.height) < MIN_SIZE:
            raise ValueError(SIZE_TEMPLATE.format(width=self.width, height=self.height))
        if not 0.0 <= clouds <= 1.0:
            raise ValueError(CLOUDS_TEMPLATE.format(clouds=clouds))
        if bands not in (3, 4):
            raise ValueError(BANDS_TEMPLATE.format(bands=bands))
        if int(seed) < 0:
            raise ValueError(SEED_TEMPLATE.format(seed=seed))
        self.seed = int(seed)
        self.clouds = float(clouds)
        self.bands = bands
        self._build_coarse()
        self._build_parcels()
        self._build_curves()
        # Per-scene memo of built blocks (bounded: a row of tiles needs a few hundred).
        self._blocks = lru_cache(maxsize=16384)(self._block_buildings_uncached)
        self._cloud_t = self._cloud_threshold()
        planted = self._plant_objects(objects_per_mpx, max_objects) if draw_objects else []
        self._planted: list[_Planted] = planted
        self._buckets: dict[tuple[int, int], list[int]] | None = None
        self.objects: tuple[SynthObject, ...] = tuple(
            SynthObject(i, ob.label, ob.box) for i, ob in enumerate(planted)
        )

    # ---- layout ---------------------------------------------------------------------------

    def _build_coarse(self) -> None:
        # One padding cell each side so bilinear interpolation never leaves the grid.
        wc = math.ceil(self.width / _CELL) + 3
        hc = math.ceil(self.height / _CELL) + 3
        xs = (np.arange(wc) - 1 + 0.5) * _CELL
        ys = (np.arange(hc) - 1 + 0.5) * _CELL
        s = self.seed
        chans = [
            _fbm_grid(s, _S_WATER, xs, ys, (6144, 3072, 1536, 768)),
            _fbm_grid(s, _S_URBAN, xs, ys, (5120, 2560, 1280, 640)),
            _fbm_grid(s, _S_FOREST, xs, ys, (4096, 2048, 1024, 512, 256)),
            _fbm_grid(s, _S_TONE_A, xs, ys, (4096, 2048, 1024)),
            _fbm_grid(s, _S_TONE_B, xs, ys, (3072, 1536, 768)),
        ]
        if self.clouds > 0:
            sx, sy = _CLOUD_SHADOW_OFFSET
            chans.append(_fbm_grid(s, _S_CLOUD, xs, ys, _CLOUD_SPACINGS))
            chans.append(_fbm_grid(s, _S_CLOUD, xs - sx, ys - sy, _CLOUD_SPACINGS))
        self._coarse = np.ascontiguousarray(np.stack(chans), dtype=np.float32)  # (k, hc, wc)
        inner = self._coarse[:, 1:-2, 1:-2]
        # Quantile thresholds: every scene gets about the same share of each cover type.
        self._t_water = float(np.quantile(inner[_WATER], 0.93))
        self._t_urban = float(np.quantile(inner[_URBAN], 0.84))
        self._t_forest = float(np.quantile(inner[_FOREST], 0.74))

    def _build_parcels(self) -> None:
        rng = np.random.default_rng([self.seed, 1])
        edges_y = [-float(rng.uniform(0, 500))]
        while edges_y[-1] < self.height:
            edges_y.append(edges_y[-1] + float(rng.uniform(180, 720)))
        self._band_edges = np.array(edges_y)
        col_edges: list[np.ndarray] = []
        starts = [0]
        for _ in range(len(edges_y) - 1):
            e = [-float(rng.uniform(0, 600))]
            while e[-1] < self.width:
                e.append(e[-1] + float(rng.uniform(160, 900)))
            col_edges.append(np.array(e))
            starts.append(starts[-1] + len(e) - 1)
        self._col_edges = col_edges
        self._band_start = np.array(starts)
        n = starts[-1]
        kind = rng.choice(len(_CROPS), size=n, p=_CROP_WEIGHTS)
        self._p_rgb = _CROPS[kind] * rng.uniform(0.9, 1.1, (n, 1)).astype(np.float32)
        self._p_rgb *= rng.uniform(0.96, 1.04, (n, 3)).astype(np.float32)
        orient = rng.choice([0.0, math.pi / 2, -1.0], size=n, p=[0.4, 0.4, 0.2])
        angle = np.where(orient < 0, rng.uniform(0, math.pi, n), orient)
        period = rng.uniform(5.0, 13.0, n)
        self._p_kx = (np.cos(angle) / period).astype(np.float32)
        self._p_ky = (np.sin(angle) / period).astype(np.float32)
        amp = rng.uniform(0.04, 0.16, n)
        amp[np.isin(kind, (4, 5))] *= 0.25  # bare soil and grass show few rows
        self._p_amp = amp.astype(np.float32)
        self._p_tex = rng.uniform(0.02, 0.07, n).astype(np.float32)

    def _build_curves(self) -> None:
        rng = np.random.default_rng([self.seed, 2])
        w, h = self.width, self.height
        n_v = max(1, round(w / 3500 + rng.uniform(-0.3, 0.3)))
        n_h = max(1, round(h / 3500 + rng.uniform(-0.3, 0.3)))
        self._roads = [
            _random_curve(rng, w, h, vertical=k < n_v, half_width=float(rng.uniform(7, 10)),
                          wiggle=float(rng.uniform(0, 160)))
            for k in range(n_v + n_h)
        ]  # fmt: skip
        self._river = None
        if rng.random() < 0.8:
            self._river = _random_curve(
                rng, w, h, vertical=bool(rng.random() < 0.5),
                half_width=float(rng.uniform(24, 60)), wiggle=float(rng.uniform(150, 450)),
            )  # fmt: skip

    def _cloud_threshold(self) -> float:
        if self.clouds <= 0.0:
            return math.inf
        if self.clouds >= 1.0:
            return -math.inf
        rng = np.random.default_rng([self.seed, 3])
        n = 200_000
        xs = rng.uniform(0, self.width, n)
        ys = rng.uniform(0, self.height, n)
        v = self._cloud_value_points(xs, ys)
        return float(np.quantile(v, 1.0 - self.clouds))

    # ---- sampling -------------------------------------------------------------------------

    def _coarse_points(self, xs: np.ndarray, ys: np.ndarray, chan: int) -> np.ndarray:
        i, fx = _axis(np.asarray(xs) / _CELL + 0.5, 1.0, False)
        j, fy = _axis(np.asarray(ys) / _CELL + 0.5, 1.0, False)
        c = self._coarse[chan]
        # Points may lie a little outside the scene (block centres near its edges): clamp.
        i = np.clip(i, 0, c.shape[1] - 2)
        j = np.clip(j, 0, c.shape[0] - 2)
        return _lerp_points(c[j, i], c[j, i + 1], c[j + 1, i], c[j + 1, i + 1], fx, fy)

    def _cloud_value_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        s = self.seed
        v = _fbm_points(s, _S_CLOUD, xs, ys, _CLOUD_SPACINGS)
        for salt, spacing, weight in _CLOUD_DETAIL:
            v += np.float32(weight) * _noise_points(_key(s, salt), xs, ys, spacing)
        return v

    def _lake_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n64 = _noise_points(_key(self.seed, _S_N64), xs, ys, 64.0)
        return self._coarse_points(xs, ys, _WATER) + np.float32(0.03) * n64 - self._t_water

    def _urban_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n64 = _noise_points(_key(self.seed, _S_N64), xs, ys, 64.0)
        return self._coarse_points(xs, ys, _URBAN) + np.float32(0.03) * n64 - self._t_urban

    def _forest_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n64 = _noise_points(_key(self.seed, _S_N64), xs, ys, 64.0)
        return self._coarse_points(xs, ys, _FOREST) + np.float32(0.05) * n64 - self._t_forest

    def _cover_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Cover class at points: 0 field, 1 forest, 2 urban, 3 water, 4 road/street."""
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        xf, yf = xs.astype(np.float32), ys.astype(np.float32)
        water = self._lake_points(xs, ys) > 0
        if self._river is not None:
            water |= np.abs(self._river.signed(xf, yf)) < self._river.half_width
        urban = self._urban_points(xs, ys) > 0
        forest = self._forest_points(xs, ys) > 0
        road = np.zeros(xs.shape, dtype=bool)
        for r in self._roads:
            road |= np.abs(r.signed(xf, yf)) < r.half_width + 3
        sx = _street_distance(self.seed, _S_STREET_X, xs)
        sy = _street_distance(self.seed, _S_STREET_Y, ys)
        road |= urban & (np.minimum(sx, sy) < _STREET_HALF + _SIDEWALK + 1)
        out = np.zeros(xs.shape, dtype=np.uint8)
        out[forest] = 1
        out[urban] = 2
        out[water] = 3
        out[road] = 4
        return out

    # ---- objects --------------------------------------------------------------------------

    def _plant_objects(self, per_mpx: float, cap: int) -> list[_Planted]:
        rng = np.random.default_rng([self.seed, 4])
        w, h = self.width, self.height
        n = int(min(cap, max(6, round(w * h / 1e6 * per_mpx))))
        weights = np.array([0.16, 0.16, 0.2, 0.22, 0.08, 0.18])
        labels = rng.choice(len(LABELS), size=n, p=weights / weights.sum())
        placed: list[_Planted] = []
        grid: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
        for li in labels:
            ob = self._try_place(rng, LABELS[int(li)], grid)
            if ob is None:
                continue
            placed.append(ob)
            x1, y1, x2, y2 = ob.box
            for gy in range(y1 // 256, (y2 - 1) // 256 + 1):
                for gx in range(x1 // 256, (x2 - 1) // 256 + 1):
                    grid.setdefault((gx, gy), []).append(ob.box)
        return placed

    def _try_place(
        self,
        rng: np.random.Generator,
        label: str,
        grid: dict[tuple[int, int], list[tuple[int, int, int, int]]],
    ) -> _Planted | None:
        w, h = self.width, self.height
        for _attempt in range(6):
            k = 48
            if label == "car":
                cands = self._car_candidates(rng, k)
            else:
                length, width = _object_size(rng, label, k)
                cx = rng.uniform(0, w, k)
                cy = rng.uniform(0, h, k)
                ang = rng.uniform(0, 2 * math.pi, k)
                if label in ("building", "swimming_pool"):
                    ang = rng.choice([0.0, math.pi / 2], k) + rng.uniform(-0.25, 0.25, k)
                cands = list(zip(cx, cy, ang, length, width, strict=True))
            arr = np.asarray(cands, dtype=np.float64).reshape(-1, 5)
            for idx in np.flatnonzero(self._sites_ok(label, arr)):
                px, py, pa, pl, pw = (float(v) for v in arr[idx])
                ob = _Planted(label, px, py, pa, pl, pw, (0.0, 0.0, 0.0))
                if label in ("swimming_pool", "storage_tank") and self._hits_building(ob):
                    continue
                box = _tight_box(ob)
                if box is None:
                    continue
                margin = 12
                if box[0] < margin or box[1] < margin or box[2] > w - margin or box[3] > h - margin:
                    continue
                if _overlaps(box, grid, pad=8):
                    continue
                return _Planted(label, px, py, pa, pl, pw, _object_colour(rng, label), box)
        return None

    def _car_candidates(
        self, rng: np.random.Generator, k: int
    ) -> list[tuple[float, float, float, float, float]]:
        out = []
        for _ in range(k):
            road = self._roads[int(rng.integers(len(self._roads)))]
            span = float(self.width + self.height)
            t = float(rng.uniform(-span, span))
            side = 1.0 if rng.random() < 0.5 else -1.0
            x, y, ang = road.point(t, side * road.half_width * 0.5)
            if side < 0:
                ang += math.pi  # the opposite lane drives the other way
            length = float(rng.uniform(12, 20))
            out.append((x, y, ang, length, length * rng.uniform(0.42, 0.5)))
        return out

    def _sites_ok(self, label: str, cands: np.ndarray) -> np.ndarray:
        """Whether candidate sites suit ``label`` by the land cover under them.

        Args:
            label: Object label.
            cands: ``(k, 5)`` rows of centre x, centre y, heading (rad), length, width (px).

        Returns:
            ``(k,)`` bool: the centre, ends, sides and corners lie on the right cover.
        """
        cx, cy, ang, length, width = (cands[:, i : i + 1] for i in range(5))
        pu = np.array([0, 1, -1, 0, 0, 1, -1, 1, -1], dtype=np.float64)[None, :]
        pv = np.array([0, 0, 0, 1, -1, 1, 1, -1, -1], dtype=np.float64)[None, :]
        if label == "ship":  # keep clear water around the hull
            pu, pv = pu * 1.5, pv * 2.5
        u, v = pu * length / 2, pv * width / 2
        ca, sa = np.cos(ang), np.sin(ang)
        xs, ys = cx + u * ca - v * sa, cy + u * sa + v * ca  # (k, 9)
        inside = (
            (xs.min(axis=1) >= 0)
            & (ys.min(axis=1) >= 0)
            & (xs.max(axis=1) < self.width)
            & (ys.max(axis=1) < self.height)
        )
        cover = self._cover_points(xs.ravel(), ys.ravel()).reshape(xs.shape)
        if label == "ship":
            ok = (cover == 3).all(axis=1)
        elif label == "car":
            ok = cover[:, 0] == 4
        elif label == "swimming_pool":
            ok = (cover == 2).all(axis=1)
        elif label == "storage_tank":
            ok = np.isin(cover, (0, 2)).all(axis=1)
        else:  # airplanes and buildings: among fields
            ok = (cover == 0).all(axis=1)
        return np.asarray(inside & ok)

    def _hits_building(self, ob: _Planted) -> bool:
        r = math.hypot(ob.length, ob.width) / 2 + 4
        x0, x1, y0, y1 = ob.cx - r, ob.cx + r, ob.cy - r, ob.cy + r
        for rect in self._buildings_in(int(x0), int(y0), int(x1) + 1, int(y1) + 1):
            bx0, by0, bx1, by1 = rect[:4]
            if bx0 < x1 and x0 < bx1 and by0 < y1 and y0 < by1:
                return True
        return False

    # ---- urban blocks ---------------------------------------------------------------------

    def _buildings_in(self, x0: int, y0: int, x1: int, y1: int) -> list[tuple[float, ...]]:
        """Building rectangles ``(x0, y0, x1, y1, roof_index, gable)`` near a region."""
        kx0 = math.floor(x0 / _STREET_SPACING) - 1
        kx1 = math.floor(x1 / _STREET_SPACING) + 1
        ky0 = math.floor(y0 / _STREET_SPACING) - 1
        ky1 = math.floor(y1 / _STREET_SPACING) + 1
        out: list[tuple[float, ...]] = []
        for ky in range(ky0, ky1 + 1):
            for kx in range(kx0, kx1 + 1):
                for rect in self._blocks(kx, ky):
                    if rect[0] < x1 and x0 < rect[2] and rect[1] < y1 and y0 < rect[3]:
                        out.append(rect)
        return out

    def _block_buildings_uncached(self, kx: int, ky: int) -> tuple[tuple[float, ...], ...]:
        return _block_buildings(self, kx, ky)

    # ---- rendering ------------------------------------------------------------------------

    def render(self, window: Window | Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Render one window of the scene.

        Args:
            window: ``Window`` or ``(col_off, row_off, width, height)`` in full-resolution
                pixels, inside the scene.

        Returns:
            ``(pixels, cloud_mask)``: pixels ``(bands, h, w)`` uint8 (R, G, B[, NIR]); the cloud
            mask ``(h, w)`` uint8 0/1, or None when the scene has no clouds.

        Raises:
            ValueError: The window is empty or not inside the scene.
        """
        win = window if isinstance(window, Window) else Window(*window)
        c0, r0 = int(win.col_off), int(win.row_off)
        w, h = int(win.width), int(win.height)
        if c0 < 0 or r0 < 0 or w < 1 or h < 1 or c0 + w > self.width or r0 + h > self.height:
            raise ValueError(
                WINDOW_TEMPLATE.format(window=win, width=self.width, height=self.height)
            )
        xs = c0 + np.arange(w, dtype=np.float64) + 0.5
        ys = r0 + np.arange(h, dtype=np.float64) + 0.5
        xf = xs.astype(np.float32)
        yf = ys.astype(np.float32)
        s = self.seed
        one = np.float32(1.0)
        ct = _CoarseTile(self._coarse, xs, ys)
        n64 = _noise_grid(_key(s, _S_N64), xs, ys, 64.0)
        n16 = _noise_grid(_key(s, _S_N16), xs, ys, 16.0)
        n4 = _noise_grid(_key(s, _S_N4), xs, ys, 4.0)

        # Fields: parcels with crop rows, lit by slow regional tone changes.
        rgb, border = self._fields(xs, ys, xf, yf, n64, n16, n4)
        rgb *= (one + np.float32(0.10) * ct.get(_TONE_A))[..., None]
        rgb[..., 1] *= one + np.float32(0.06) * ct.get(_TONE_B)
        if border.any():
            rgb[border] = rgb[border] * np.float32(0.4) + _SHORE_RGB * np.float32(0.85 * 0.6)

        crowns: np.ndarray | None = None
        forest = urban = water = None
        # Each cover type is skipped per tile when the coarse values (which bound the bilinear
        # interpolation) plus the noise amplitude cannot reach its threshold.
        if ct.bounds(_FOREST)[1] + 0.08 > self._t_forest:
            fv = ct.get(_FOREST) + np.float32(0.05) * n64 + np.float32(0.02) * n16
            forest = fv > np.float32(self._t_forest)
            if forest.any():
                crowns = self._crowns(xs, ys, n4, n16)
                rgb[forest] = _FOREST_RGB * crowns[forest][:, None]
        if ct.bounds(_URBAN)[1] + 0.04 > self._t_urban:
            urban = ct.get(_URBAN) + np.float32(0.03) * n64 > np.float32(self._t_urban)
            if urban.any():
                if crowns is None:
                    crowns = self._crowns(xs, ys, n4, n16)
                self._urban(rgb, urban, xs, ys, c0, r0, n16, crowns)

        # Water: lakes from the coarse field, plus the river; a light shore band on land.
        depth = None
        if ct.bounds(_WATER)[1] + 0.04 > self._t_water - 0.01:
            lake = ct.get(_WATER) + np.float32(0.03) * n64 - np.float32(self._t_water)
            depth = lake * np.float32(12.0)
        river = self._river
        if river is not None and river.near(c0 + w / 2, r0 + h / 2, math.hypot(w, h) / 2):
            rd = river.half_width - np.abs(river.signed(xf[None, :], yf[:, None]))
            rd = (rd + np.float32(3.0) * n16) * np.float32(0.03)
            depth = rd if depth is None else np.maximum(depth, rd)
        if depth is not None:
            water = depth > 0
            shore = (depth > np.float32(-0.06)) & ~water
            if urban is not None:
                shore &= ~urban
            if shore.any():
                rgb[shore] = rgb[shore] * np.float32(0.3) + _SHORE_RGB * np.float32(0.7)
            if water.any():
                d = np.clip(depth[water] * np.float32(0.35), 0.0, 1.0)[:, None]
                wcol = _SHALLOW_RGB * (one - d) + _DEEP_RGB * d
                ripple = one + np.float32(0.025) * n16[water] + np.float32(0.02) * n4[water]
                rgb[water] = wcol * ripple[:, None]

        # Major roads (over everything: bridges cross the river).
        for road in self._roads:
            if not road.near(c0 + w / 2, r0 + h / 2, math.hypot(w, h) / 2):
                continue
            ad = np.abs(road.signed(xf[None, :], yf[:, None]))
            hw = np.float32(road.half_width)
            on = ad < hw + 2
            if not on.any():
                continue
            tarmac = on & (ad < hw)
            rgb[on & ~tarmac] = _SIDEWALK_RGB
            rgb[tarmac] = _ASPHALT_RGB * (one + np.float32(0.03) * n16[tarmac])[:, None]
            rgb[on & ((np.abs(ad - (hw - 2.0)) < 0.7) | (ad < 0.6))] = np.float32(200.0)

        if self._planted:
            self._draw_objects(rgb, c0, r0, w, h, water)

        if self.bands == 4:
            # NIR is derived from the ground, then clouds cover all four bands alike.
            rgb = np.concatenate([rgb, self._nir(rgb, water, forest)[..., None]], axis=-1)
        mask = None
        if self.clouds > 0:
            rgb, mask = self._clouds(rgb, xs, ys, ct)

        rgb8 = cv2.convertScaleAbs(rgb)  # rounds and saturates to 0..255 (values are >= 0)
        return np.ascontiguousarray(np.moveaxis(rgb8, -1, 0)), mask

    def _fields(
        self,
        xs: np.ndarray,
        ys: np.ndarray,
        xf: np.ndarray,
        yf: np.ndarray,
        n64: np.ndarray,
        n16: np.ndarray,
        n4: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = len(ys), len(xs)
        rgb = np.empty((h, w, 3), dtype=np.float32)
        border = np.empty((h, w), dtype=bool)
        band = np.searchsorted(self._band_edges, ys, side="right") - 1
        dy = np.minimum(ys - self._band_edges[band], self._band_edges[band + 1] - ys)
        one = np.float32(1.0)
        # Rows are sorted, so each parcel band is a run of rows in which every per-parcel
        # attribute depends on x only: no per-pixel gathers.
        starts = np.flatnonzero(np.diff(band, prepend=band[0] - 1))
        for k, ra in enumerate(starts):
            rb = starts[k + 1] if k + 1 < len(starts) else h
            b = band[ra]
            e = self._col_edges[b]
            c = np.searchsorted(e, xs, side="right") - 1
            pid = self._band_start[b] + c
            dx = np.minimum(xs - e[c], e[c + 1] - xs)
            kx, ky = self._p_kx[pid], self._p_ky[pid]
            phase = xf[None, :] * kx[None, :] + yf[ra:rb, None] * ky[None, :]
            tex = (
                np.float32(1.2) * n16[ra:rb]
                + np.float32(0.8) * n4[ra:rb]
                + np.float32(0.8) * n64[ra:rb]
            )
            fac = one + self._p_amp[pid] * np.sin(_TAU * phase) + self._p_tex[pid] * tex
            rgb[ra:rb] = self._p_rgb[pid][None, :, :] * fac[..., None]
            border[ra:rb] = (dx[None, :] < 1.6) | (dy[ra:rb, None] < 1.6)
        return rgb, border

    def _crowns(
        self, xs: np.ndarray, ys: np.ndarray, n4: np.ndarray, n16: np.ndarray
    ) -> np.ndarray:
        n6 = _noise_grid(_key(self.seed, _S_N6), xs, ys, 6.0)
        c = np.float32(0.6) * n6 + np.float32(0.4) * n4
        # Bright crowns, dark gaps between them.
        return (
            np.float32(0.95)
            + np.float32(0.55) * np.tanh(np.float32(2.2) * c)
            + np.float32(0.08) * n16
        )

    def _urban(
        self,
        rgb: np.ndarray,
        urban: np.ndarray,
        xs: np.ndarray,
        ys: np.ndarray,
        c0: int,
        r0: int,
        n16: np.ndarray,
        crowns: np.ndarray,
    ) -> None:
        """Paint streets, block grounds and buildings where ``urban`` (in place)."""
        s = self.seed
        h, w = urban.shape
        one = np.float32(1.0)
        g = np.empty_like(rgb)
        bx = _block_index(s, _S_STREET_X, xs)
        by = _block_index(s, _S_STREET_Y, ys)
        xcuts = np.flatnonzero(np.diff(bx, prepend=bx[0] - 1))
        ycuts = np.flatnonzero(np.diff(by, prepend=by[0] - 1))
        for yi, ya in enumerate(ycuts):
            yb = ycuts[yi + 1] if yi + 1 < len(ycuts) else h
            for xi, xa in enumerate(xcuts):
                xb = xcuts[xi + 1] if xi + 1 < len(xcuts) else w
                kind = int(_block_kind(s, np.array(bx[xa]), np.array(by[ya])))
                n = n16[ya:yb, xa:xb]
                blk = g[ya:yb, xa:xb]
                if kind == 1:
                    blk[:] = _CONCRETE_RGB * (one + np.float32(0.04) * n)[..., None]
                    continue
                blk[:] = _LAWN_RGB * (one + np.float32(0.06) * n)[..., None]
                trees = n > np.float32(-0.15 if kind == 2 else 0.35)
                blk[trees] = _FOREST_RGB * np.float32(1.1) * crowns[ya:yb, xa:xb][trees][:, None]
        sx = _street_distance(s, _S_STREET_X, xs)
        sy = _street_distance(s, _S_STREET_Y, ys)
        g[:, sx < _STREET_HALF + _SIDEWALK] = _SIDEWALK_RGB
        g[sy < _STREET_HALF + _SIDEWALK] = _SIDEWALK_RGB
        asphalt = _ASPHALT_RGB * (one + np.float32(0.03) * n16)[..., None]
        cols, rows = sx < _STREET_HALF, sy < _STREET_HALF
        g[:, cols] = asphalt[:, cols]
        g[rows] = asphalt[rows]

        rects = self._buildings_in(c0, r0, c0 + w, r0 + h)
        if rects:
            shadow = np.zeros((h, w), dtype=bool)
            ox, oy = _SHADOW_OFFSET
            for bx0, by0, bx1, by1, *_ in rects:
                _fill_mask(shadow, bx0 + ox - c0, by0 + oy - r0, bx1 + ox - c0, by1 + oy - r0)
            g[shadow] *= np.float32(0.55)
            for bx0, by0, bx1, by1, roof, gable in rects:
                col = _ROOFS[int(roof)]
                if gable:
                    # Two roof planes lit differently, split along the long side.
                    if bx1 - bx0 >= by1 - by0:
                        mid = (by0 + by1) // 2
                        _fill(g, bx0 - c0, by0 - r0, bx1 - c0, mid - r0, col * 1.12)
                        _fill(g, bx0 - c0, mid - r0, bx1 - c0, by1 - r0, col * 0.86)
                    else:
                        mid = (bx0 + bx1) // 2
                        _fill(g, bx0 - c0, by0 - r0, mid - c0, by1 - r0, col * 1.12)
                        _fill(g, mid - c0, by0 - r0, bx1 - c0, by1 - r0, col * 0.86)
                else:
                    _fill(g, bx0 - c0, by0 - r0, bx1 - c0, by1 - r0, col)
                    # Flat roof: a darker parapet and a rooftop unit.
                    _fill(g, bx0 - c0, by0 - r0, bx1 - c0, by0 + 2 - r0, col * 0.8)
                    _fill(g, bx0 - c0, by0 - r0, bx0 + 2 - c0, by1 - r0, col * 0.8)
                    ux, uy = (bx0 + bx1) // 2, (by0 + by1) // 2
                    _fill(g, ux - c0, uy - r0, ux + 8 - c0, uy + 6 - r0, col * 0.7)
        if urban.all():
            rgb[:] = g
        else:
            rgb[urban] = g[urban]

    def _draw_objects(
        self, rgb: np.ndarray, c0: int, r0: int, w: int, h: int, water: np.ndarray | None
    ) -> None:
        sx, sy = _SHADOW_OFFSET
        for ob in self._objects_in(c0, r0, w, h):
            pad = 2 * max(sx, sy)
            wake = int(ob.length * 1.2) if ob.label == "ship" else 0
            x0 = max(ob.box[0] - pad - wake, c0)
            y0 = max(ob.box[1] - pad - wake, r0)
            x1 = min(ob.box[2] + pad + wake, c0 + w)
            y1 = min(ob.box[3] + pad + wake, r0 + h)
            if x0 >= x1 or y0 >= y1:
                continue
            xs = np.arange(x0, x1, dtype=np.float64)
            ys = np.arange(y0, y1, dtype=np.float64)
            region = rgb[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
            u, v = _object_frame(ob, xs, ys)
            fp = _footprint(ob, u, v)
            if ob.label == "ship" and water is not None:
                # A faint wake behind the stern, on water only.
                behind = -u - ob.length / 2
                wk = (behind > 0) & (np.abs(v) < ob.width * 0.25 + behind * 0.12)
                strength = np.clip(1.0 - behind / (ob.length * 1.2), 0, 1) * 0.22
                wmask = wk & water[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] & ~fp
                st = strength[wmask][:, None].astype(np.float32)
                region[wmask] = region[wmask] * (np.float32(1.0) - st) + np.float32(200.0) * st
            if ob.label not in ("swimming_pool", "ship"):
                us, vs = _object_frame(ob, xs - sx, ys - sy)
                sh = _footprint(ob, us, vs) & ~fp
                region[sh] *= np.float32(0.5)
            _paint_object(region, ob, u, v, fp)

    def _object_buckets(self, tile: int) -> dict[tuple[int, int], list[int]]:
        """Object indices by ``tile``-px grid cell of their drawing extent (built once)."""
        if self._buckets is not None:
            return self._buckets
        buckets: dict[tuple[int, int], list[int]] = {}
        pad = 2 * max(_SHADOW_OFFSET) + 2
        for k, ob in enumerate(self._planted):
            wake = int(ob.length * 1.2) + 1 if ob.label == "ship" else 0
            x0, y0 = ob.box[0] - pad - wake, ob.box[1] - pad - wake
            x1, y1 = ob.box[2] + pad + wake, ob.box[3] + pad + wake
            for ty in range(max(y0, 0) // tile, (y1 - 1) // tile + 1):
                for tx in range(max(x0, 0) // tile, (x1 - 1) // tile + 1):
                    buckets.setdefault((tx, ty), []).append(k)
        self._buckets = buckets
        return buckets

    def _object_ids_in(self, c0: int, r0: int, w: int, h: int) -> list[int]:
        """Ids of the objects whose drawing extent may touch a window, in id order."""
        b = self._object_buckets(256)
        seen: set[int] = set()
        for ty in range(r0 // 256, (r0 + h - 1) // 256 + 1):
            for tx in range(c0 // 256, (c0 + w - 1) // 256 + 1):
                seen.update(b.get((tx, ty), ()))
        return sorted(seen)  # a fixed drawing order whatever the tiling

    def _objects_in(self, c0: int, r0: int, w: int, h: int) -> Iterator[_Planted]:
        for k in self._object_ids_in(c0, r0, w, h):
            yield self._planted[k]

    def _clouds(
        self, rgb: np.ndarray, xs: np.ndarray, ys: np.ndarray, ct: _CoarseTile
    ) -> tuple[np.ndarray, np.ndarray]:
        t = self._cloud_t
        h, w = len(ys), len(xs)
        one = np.float32(1.0)
        if math.isinf(t) and t < 0:  # fully overcast
            return np.full_like(rgb, 236.0), np.ones((h, w), dtype=np.uint8)
        haze = 0.16
        # Shadows of clouds fall south-east of them (sun from the north-west).
        if ct.bounds(_CLOUD_SHADOW)[1] > t - 0.05:
            sa = _smoothstep(t - 0.05, t + 0.10, ct.get(_CLOUD_SHADOW))
            sa *= np.float32(-0.4)
            sa += one
            rgb *= sa[..., None]
        if ct.bounds(_CLOUD)[1] + _CLOUD_SLACK < t - haze:
            return rgb, np.zeros((h, w), dtype=np.uint8)
        s = self.seed
        # Evaluated per pixel, not interpolated from the coarse grid: thick cloud shows every
        # kink of a bilinear surface.
        v = _fbm_grid(s, _S_CLOUD, xs, ys, _CLOUD_SPACINGS)
        for salt, spacing, weight in _CLOUD_DETAIL:
            v += np.float32(weight) * _noise_grid(_key(s, salt), xs, ys, spacing)
        mask = (v >= np.float32(t)).astype(np.uint8)
        sel = v > np.float32(t - haze)
        n_sel = int(np.count_nonzero(sel))
        if n_sel == 0:
            return rgb, mask
        # Dense arithmetic beats boolean gathers once most of the tile is (hazy) cloud.
        dense = n_sel > sel.size // 2
        vs = v if dense else v[sel]
        # About 80 % opaque where the mask starts, a thin haze outside it.
        alpha = _smoothstep(t - haze, t + 0.06, vs)[..., None]
        thick = _smoothstep(t, t + 0.25, vs)[..., None]
        nb = rgb.shape[-1]  # 3, or 4 with NIR (clouds are bright in the near infrared too)
        grey = np.array([196, 200, 208, 204][:nb], dtype=np.float32)
        white = np.array([246, 246, 244, 246][:nb], dtype=np.float32)
        col = grey + (white - grey) * thick
        col *= (one - np.float32(0.06) * (vs - np.float32(t)))[..., None]
        if dense:
            rgb += (col - rgb) * alpha
        else:
            px = rgb[sel]
            rgb[sel] = px + (col - px) * alpha
        return rgb, mask

    def _nir(
        self, rgb: np.ndarray, water: np.ndarray | None, forest: np.ndarray | None
    ) -> np.ndarray:
        """Near-infrared reflectance (h, w) float32, 0-255 scale, from the ground colours."""
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        # Vegetation (green over red) reflects strongly in the near infrared, water hardly.
        veg = np.clip((g - r) / (g + r + np.float32(1.0)) * np.float32(6.0), 0.0, 1.0)
        nir = np.float32(0.45) * r + np.float32(0.35) * g + np.float32(0.2) * b
        nir += veg * np.float32(110.0)
        if forest is not None:
            nir[forest] *= np.float32(1.15)
        if water is not None:
            nir[water] = np.float32(0.25) * b[water]
        return nir


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _fill(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, col: np.ndarray) -> None:
    h, w = img.shape[:2]
    a, b = max(int(x0), 0), min(int(x1), w)
    c, d = max(int(y0), 0), min(int(y1), h)
    if a < b and c < d:
        img[c:d, a:b] = col


def _fill_mask(mask: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> None:
    h, w = mask.shape
    a, b = max(int(x0), 0), min(int(x1), w)
    c, d = max(int(y0), 0), min(int(y1), h)
    if a < b and c < d:
        mask[c:d, a:b] = True


def _street_offsets(seed: int, salt: int, k: np.ndarray) -> np.ndarray:
    """Street centre line positions (px) for street indices ``k`` (jittered regular grid)."""
    j = _unit(_hash2(_key(seed, salt), k, np.zeros_like(k))).astype(np.float64)
    return k * _STREET_SPACING + (j - 0.5) * 0.3 * _STREET_SPACING


def _street_distance(seed: int, salt: int, coords: np.ndarray) -> np.ndarray:
    """Distance (px) from coordinates along one axis to the nearest street on that axis."""
    k = np.floor(np.asarray(coords) / _STREET_SPACING).astype(np.int64)
    best = np.full(np.shape(coords), np.inf)
    for dk in (-1, 0, 1, 2):
        best = np.minimum(best, np.abs(coords - _street_offsets(seed, salt, k + dk)))
    return best.astype(np.float32)


def _block_index(seed: int, salt: int, coords: np.ndarray) -> np.ndarray:
    """Index k of the block between streets k and k + 1 containing each coordinate (sorted)."""
    k0 = math.floor(float(coords[0]) / _STREET_SPACING) - 1
    k1 = math.floor(float(coords[-1]) / _STREET_SPACING) + 2
    ks = np.arange(k0, k1 + 1)
    offs = _street_offsets(seed, salt, ks)
    return ks[np.searchsorted(offs, coords, side="right") - 1]


def _block_kind(seed: int, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """Kind of urban block ``(kx, ky)``: 0 residential, 1 commercial, 2 park."""
    u = _unit(_hash2(_key(seed, _S_BLOCK), kx, ky))
    return np.where(u < 0.62, 0, np.where(u < 0.92, 1, 2)).astype(np.uint8)


@lru_cache(maxsize=8192)
def _block_rects(seed: int, kx: int, ky: int) -> tuple[tuple[float, ...], ...]:
    """Building rectangles of urban block (kx, ky) before the urban test."""
    kind = int(_block_kind(seed, np.array(kx), np.array(ky)))
    if kind == 2:
        return ()
    xs = _street_offsets(seed, _S_STREET_X, np.array([kx, kx + 1]))
    ys = _street_offsets(seed, _S_STREET_Y, np.array([ky, ky + 1]))
    m = _STREET_HALF + _SIDEWALK + 3
    bx0, bx1 = float(xs[0]) + m, float(xs[1]) - m
    by0, by1 = float(ys[0]) + m, float(ys[1]) - m
    rng = np.random.default_rng([seed, 5, kx + (1 << 30), ky + (1 << 30)])
    rects: list[tuple[float, ...]] = []
    if kind == 0:
        # Two rows of houses facing the streets above and below.
        for row in range(2):
            x = bx0 + rng.uniform(0, 8)
            while True:
                wd, dp = rng.uniform(18, 34), rng.uniform(16, 26)
                if x + wd > bx1:
                    break
                y = by0 + rng.uniform(2, 10) if row == 0 else by1 - rng.uniform(2, 10) - dp
                if rng.random() < 0.9:
                    rects.append(
                        (int(x), int(y), int(x + wd), int(y + dp), int(rng.integers(len(_ROOFS))),
                         1)
                    )  # fmt: skip
                x += wd + rng.uniform(8, 22)
    else:
        n = int(rng.integers(1, 4))
        for _ in range(n):
            wd = rng.uniform(0.25, 0.6) * (bx1 - bx0)
            dp = rng.uniform(0.25, 0.6) * (by1 - by0)
            x = rng.uniform(bx0, bx1 - wd)
            y = rng.uniform(by0, by1 - dp)
            if any(x < r[2] + 6 and r[0] - 6 < x + wd and y < r[3] + 6 and r[1] - 6 < y + dp
                   for r in rects):  # fmt: skip
                continue
            roof = int(rng.choice([1, 2, 4, 5]))
            rects.append((int(x), int(y), int(x + wd), int(y + dp), roof, 0))
    return tuple(rects)


def _block_buildings(scene: SyntheticScene, kx: int, ky: int) -> tuple[tuple[float, ...], ...]:
    """Building rectangles of block (kx, ky) if the block is built (urban, dry, off main roads)."""
    rects = _block_rects(scene.seed, kx, ky)
    if not rects:
        return ()
    # A block is built only where its centre lies in the urban area and on dry land.
    cx = np.array([(kx + 0.5) * _STREET_SPACING])
    cy = np.array([(ky + 0.5) * _STREET_SPACING])
    if scene._urban_points(cx, cy)[0] <= 0.01 or scene._lake_points(cx, cy)[0] > -0.1:
        return ()
    river = scene._river
    if river is not None:
        # Corners of every house must stay off the river.
        xs = np.array([v for r in rects for v in (r[0], r[2], r[0], r[2])], dtype=np.float32)
        ys = np.array([v for r in rects for v in (r[1], r[1], r[3], r[3])], dtype=np.float32)
        if (np.abs(river.signed(xs, ys)) < river.half_width + 8).any():
            return ()
    for road in scene._roads:
        d = abs(float(road.signed(cx.astype(np.float32), cy.astype(np.float32))[0]))
        if d < 0.6 * _STREET_SPACING + road.half_width:  # a main road runs through the block
            return ()
    return rects


def _overlaps(
    box: tuple[int, int, int, int],
    grid: dict[tuple[int, int], list[tuple[int, int, int, int]]],
    pad: int,
) -> bool:
    x1, y1, x2, y2 = box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad
    for gy in range(max(y1, 0) // 256, (y2 - 1) // 256 + 1):
        for gx in range(max(x1, 0) // 256, (x2 - 1) // 256 + 1):
            for b in grid.get((gx, gy), ()):
                if b[0] < x2 and x1 < b[2] and b[1] < y2 and y1 < b[3]:
                    return True
    return False


def _object_size(rng: np.random.Generator, label: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    if label == "storage_tank":
        d = rng.uniform(16, 80, k)
        return d, d
    if label == "ship":
        length = np.exp(rng.uniform(math.log(36), math.log(200), k))
        return length, length * rng.uniform(0.14, 0.2, k)
    if label == "airplane":
        length = rng.uniform(60, 150, k)
        return length, length * rng.uniform(0.9, 1.05, k)
    if label == "swimming_pool":
        length = rng.uniform(16, 40, k)
        return length, length * rng.uniform(0.4, 0.7, k)
    length = rng.uniform(50, 200, k)  # building
    return length, length * rng.uniform(0.35, 0.8, k)


def _object_colour(rng: np.random.Generator, label: str) -> tuple[float, float, float]:
    palettes = {
        "car": [(200, 30, 30), (235, 235, 235), (30, 60, 170), (230, 200, 40), (190, 190, 196),
                (40, 140, 70), (250, 120, 20)],
        "ship": [(232, 232, 228), (200, 60, 50), (60, 80, 120), (220, 220, 210)],
        "storage_tank": [(226, 226, 222), (206, 208, 204), (236, 234, 226)],
        "airplane": [(238, 238, 240), (222, 224, 228)],
        "swimming_pool": [(56, 176, 206), (70, 190, 214), (40, 150, 196)],
        "building": [(228, 226, 220), (170, 60, 50), (92, 120, 160), (200, 202, 206),
                     (60, 110, 90)],
    }  # fmt: skip
    pal = palettes[label]
    c = pal[int(rng.integers(len(pal)))]
    return (float(c[0]), float(c[1]), float(c[2]))


def _paint_object(
    region: np.ndarray, ob: _Planted, u: np.ndarray, v: np.ndarray, fp: np.ndarray
) -> None:
    """Paint an object's footprint ``fp`` into ``region`` (h, w, 3 float32, in place)."""
    col = np.array(ob.colour, dtype=np.float32)
    hl, hw = ob.length / 2, ob.width / 2
    if ob.label == "car":
        region[fp] = col
        glass = fp & (((u > hl * 0.2) & (u < hl * 0.55)) | ((u < -hl * 0.45) & (u > -hl * 0.7)))
        glass &= np.abs(v) < hw * 0.8
        region[glass] = np.float32(35.0)
    elif ob.label == "ship":
        region[fp] = col
        deck = fp & (u > -hl * 0.85) & (u < -hl * 0.35) & (np.abs(v) < hw * 0.6)
        region[deck] = np.float32(245.0)
        hatch = fp & (u > -hl * 0.2) & (u < hl * 0.5) & (np.abs(v) < hw * 0.45)
        region[hatch] = col * np.float32(0.7) + np.float32(20.0)
    elif ob.label == "storage_tank":
        rr = np.sqrt(u * u + v * v) / max(hl, 1e-3)
        shade = np.float32(1.0) - np.float32(0.12) * rr
        region[fp] = col * shade[fp][:, None]
        rim = fp & (rr > 1.0 - 2.5 / max(hl, 1e-3))
        region[rim] = col * np.float32(0.72)
    elif ob.label == "airplane":
        _, fus, eng = _airplane_parts(ob, u, v)
        region[fp] = col * np.float32(0.93)
        region[fus] = col
        region[eng] = np.float32(120.0)
    elif ob.label == "swimming_pool":
        region[fp] = np.float32(226.0)  # coping
        inner = fp & (np.abs(u) < hl - 2) & (np.abs(v) < hw - 2)
        depth = np.clip((u + hl) / (2 * hl), 0, 1)
        region[inner] = col * (np.float32(1.05) - np.float32(0.2) * depth[inner])[:, None]
    else:  # building
        region[fp] = col
        ridge = fp & (np.abs(v) < 1.2)
        region[ridge] = col * np.float32(0.75)
        half = fp & (v > 0)
        region[half] = region[half] * np.float32(0.9)
        # Rooftop units along the ridge.
        units = fp & (np.abs(v - hw * 0.45) < 3) & ((np.floor((u + hl) / 14) % 3) == 1)
        region[units] = col * np.float32(0.6)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


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
        with rasterio.Env(GDAL_CACHEMAX=int(cache_mb), GDAL_NUM_THREADS="ALL_CPUS"):
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m zoomearth.scene.synth OUT.tif --size N [--seed S] ...``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    p = argparse.ArgumentParser(prog="zoomearth synth", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="output GeoTIFF path")
    p.add_argument("--size", type=int, required=True, help="width in pixels (and height)")
    p.add_argument("--height", type=int, default=None, help="height if not square")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clouds", type=float, default=0.0, help="cloud fraction 0-1")
    p.add_argument("--bands", type=int, default=3, choices=(3, 4))
    p.add_argument("--dtype", default="uint8", choices=("uint8", "uint16", "float32"))
    p.add_argument("--compress", default="jpeg")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    size = (a.size, a.height) if a.height else a.size
    res = generate_scene(
        a.out, size, seed=a.seed, clouds=a.clouds, bands=a.bands, dtype=a.dtype,
        compress=a.compress, quality=a.quality, tile=a.tile, progress=not a.no_progress,
    )  # fmt: skip
    mb = res.image_path.stat().st_size / 1e6
    frac = "" if res.cloud_fraction is None else f", clouds {res.cloud_fraction:.3f}"
    phases = ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items())
    print(
        f"{res.image_path}: {res.size[0]}x{res.size[1]} px, {mb:.1f} MB, "
        f"{len(res.objects)} objects{frac}, {res.seconds:.1f} s ({phases})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
