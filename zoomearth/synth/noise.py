"""Hashed value noise: pure functions of global pixel coordinates and the seed.

Every random texture and layout field of a synthetic scene comes from here. Values depend only
on the coordinates, the seed and a salt (one independent stream per use), never on the tiling:
the grid forms (:func:`_noise_grid`, :func:`_fbm_grid`, used to render tiles) and the point forms
(:func:`_noise_points`, :func:`_fbm_points`, used to place objects) do the same float32
arithmetic, so a pixel gets the same value from either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Hash salts: independent streams of the same seed.
(_S_WATER, _S_URBAN, _S_FOREST, _S_TONE_A, _S_TONE_B, _S_CLOUD, _S_N4, _S_N16, _S_N64, _S_CN,
 _S_STREET_X, _S_STREET_Y, _S_BLOCK, _S_N6, _S_CN2, _S_CN3) = range(101, 117)  # fmt: skip

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
