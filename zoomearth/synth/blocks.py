"""Urban blocks: the jittered street grid, block kinds and the buildings of each block.

Streets run on a jittered regular grid (:func:`_street_offsets`, :func:`_street_distance`);
each block between them is residential, commercial or a park (:func:`_block_kind`) and has its
building rectangles ``(x0, y0, x1, y1, roof_index, gable)`` (:func:`_block_rects`), kept only
where the block lies in the urban area, on dry land and off the main roads
(:func:`_block_buildings`). :func:`_fill` and :func:`_fill_mask` paint clipped rectangles.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from zoomearth.synth.noise import _S_BLOCK, _S_STREET_X, _S_STREET_Y, _hash2, _key, _unit

if TYPE_CHECKING:
    from zoomearth.synth.layout import _SceneLayout

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

_STREET_SPACING = 210.0  # px between urban streets (105 m blocks)
_STREET_HALF = 6.0  # px, half width of the asphalt
_SIDEWALK = 3.0  # px each side


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


def _block_buildings(scene: _SceneLayout, kx: int, ky: int) -> tuple[tuple[float, ...], ...]:
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
